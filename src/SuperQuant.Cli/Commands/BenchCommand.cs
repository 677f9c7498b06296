using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using SuperQuant.Core.Llama;
using SuperQuant.Models.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Cli.Commands;

/// <summary>`superquant bench`: measurements printed side by side with the baseline they are judged against.
/// Timings live here, never in unit tests.</summary>
public static class BenchCommand
{
    public static Command Create()
    {
        var cmd = new Command("bench", "Benchmarks that print ratios measured side by side in one run.\n" + ExitCodes.HelpText);
        cmd.Subcommands.Add(Forward());
        cmd.Subcommands.Add(Detect());
        cmd.Subcommands.Add(BenchQuantCommand.Create());
        cmd.Subcommands.Add(Scale());
        cmd.Subcommands.Add(Generate());
        return cmd;
    }

    static LlamaConfig BenchConfig(int dim, int layers, int ffn, int vocab, int context) => new()
    {
        Architecture = "llama", HiddenSize = dim, IntermediateSize = ffn, NumLayers = layers,
        NumHeads = Math.Max(1, dim / 64), NumKvHeads = Math.Max(1, dim / 64), VocabSize = vocab,
        MaxPositionEmbeddings = Math.Max(context, 2048), TieWordEmbeddings = true,
    };

    static Command Detect()
    {
        var prompt = new Option<int>("--prompt-length") { Description = "prompt tokens (the paper's prompt is ~10)", DefaultValueFactory = _ => 10 };
        var reps = new Option<int>("--reps") { Description = "timed passes of each kind (interleaved, after warm-up)", DefaultValueFactory = _ => 20 };
        var checkpoint = new Option<string?>("--checkpoint") { Description = "benchmark this checkpoint instead of a generated ~110M-parameter one" };
        var cmd = new Command("detect", "Time of one super-weight detection pass (down_proj hooks recording max |input|/|output|) over the time of a plain forward pass on the same prompt; target <= 1.2x.")
        {
            prompt, reps, checkpoint,
        };
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            string? temp = null;
            string ckpt = r.GetValue(checkpoint) ?? "";
            try
            {
                if (string.IsNullOrEmpty(ckpt))
                {
                    temp = Directory.CreateTempSubdirectory("superquant-bench-").FullName;
                    ckpt = temp;
                    RandomCheckpoint.Write(temp, BenchConfig(768, 12, 2048, 32000, 512), ScalarType.Float32, seed: 1, progress: new ConsoleProgress("generating random checkpoint").Report);
                }
                using LlamaModel model = ModelLoader.Load(ckpt);
                var rng = new Random(3);
                int[] ids = Enumerable.Range(0, Math.Max(1, r.GetValue(prompt))).Select(_ => rng.Next(model.Config.VocabSize)).ToArray();
                int n = Math.Max(3, r.GetValue(reps));
                var plain = new List<double>();
                var recorded = new List<double>();
                for (int i = -2; i < n; i++) // two warm-up rounds; plain and recording passes alternate so drift hits both
                {
                    var sw = Stopwatch.StartNew();
                    model.Forward(ids).Dispose();
                    double a = sw.Elapsed.TotalSeconds;
                    sw.Restart();
                    SuperQuant.Core.SuperWeights.SuperWeightDetector.RecordPass(model, ids);
                    double b = sw.Elapsed.TotalSeconds;
                    if (i >= 0) { plain.Add(a); recorded.Add(b); }
                }
                plain.Sort(); recorded.Sort();
                double mp = plain[n / 2], mr = recorded[n / 2];
                Console.WriteLine($"model                  {model.Config.ParameterCount / 1e6:F1}M parameters, prompt {ids.Length} tokens, {n} passes each");
                Console.WriteLine($"plain forward          {mp * 1000,8:F2} ms (median)");
                Console.WriteLine($"detection pass         {mr * 1000,8:F2} ms (median; hooks on every down_proj)");
                Console.WriteLine($"ratio                  {mr / mp,8:F3}x  (target <= 1.2x)");
                return ExitCodes.Success;
            }
            finally
            {
                if (temp != null) Directory.Delete(temp, recursive: true);
            }
        }));
        return cmd;
    }

    static Command Forward()
    {
        var dim = new Option<int>("--dim") { Description = "hidden size of the generated model", DefaultValueFactory = _ => 768 };
        var layers = new Option<int>("--layers") { Description = "decoder layers", DefaultValueFactory = _ => 12 };
        var hidden = new Option<int>("--ffn") { Description = "MLP intermediate size", DefaultValueFactory = _ => 2048 };
        var vocab = new Option<int>("--vocab") { Description = "vocabulary size", DefaultValueFactory = _ => 32000 };
        var context = new Option<int>("--context") { Description = "tokens per forward pass", DefaultValueFactory = _ => 512 };
        var reps = new Option<int>("--reps") { Description = "timed forward passes (after one warm-up)", DefaultValueFactory = _ => 5 };
        var checkpoint = new Option<string?>("--checkpoint") { Description = "benchmark this checkpoint instead of generating a random one" };
        var json = new Option<bool>("--json") { Description = "print one JSON object" };
        var cmd = new Command("forward", "Forward-pass tokens/s of a ~100M-parameter random LLaMA at context 512, beside this machine's fp32 matmul GFLOP/s (roofline: FLOPs/token = 2 x parameters), and peak RSS beside the checkpoint size.")
        {
            dim, layers, hidden, vocab, context, reps, checkpoint, json,
        };
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            bool asJson = r.GetValue(json);
            void Say(string s) { if (!asJson) Console.Error.WriteLine(s); }
            int ctx = r.GetValue(context), n = Math.Max(1, r.GetValue(reps));

            string? tempDir = null;
            string ckpt = r.GetValue(checkpoint) ?? "";
            try
            {
                if (string.IsNullOrEmpty(ckpt))
                {
                    var config = BenchConfig(r.GetValue(dim), r.GetValue(layers), r.GetValue(hidden), r.GetValue(vocab), ctx);
                    tempDir = Directory.CreateTempSubdirectory("superquant-bench-").FullName;
                    ckpt = tempDir;
                    var gen = new ConsoleProgress("generating random checkpoint", !asJson);
                    RandomCheckpoint.Write(tempDir, config, ScalarType.Float32, seed: 1, progress: gen.Report);
                    // Measure in a fresh process so the generator's memory does not blur the RSS figures.
                    var args = new List<string> { "bench", "forward", "--checkpoint", tempDir, "--context", ctx.ToString(), "--reps", n.ToString() };
                    if (asJson) args.Add("--json");
                    return RunSelf(args);
                }
                long ckptBytes = Directory.Exists(ckpt)
                    ? Directory.GetFiles(ckpt, "*.safetensors").Sum(f => new FileInfo(f).Length)
                    : new FileInfo(ckpt).Length;

                Say("measuring fp32 matmul roofline (2048x2048x2048)...");
                double gflops = MatmulGflops();
                WarmUpKernels(ctx);
                GC.Collect();
                bool peakReset = ProcessMemory.ResetPeak();
                long rssBefore = ProcessMemory.Current;
                var loadClock = Stopwatch.StartNew();
                using LlamaModel model = ModelLoader.Load(ckpt);
                double loadSeconds = loadClock.Elapsed.TotalSeconds;
                long parameters = model.Config.ParameterCount;
                ctx = Math.Min(ctx, model.Config.MaxPositionEmbeddings);

                var rng = new Random(7);
                long[] ids = Enumerable.Range(0, ctx).Select(_ => (long)rng.Next(model.Config.VocabSize)).ToArray();
                using Tensor input = torch.tensor(ids).unsqueeze(0);
                Say($"model: {parameters / 1e6:F1}M parameters, {model.Config.NumLayers} layers, dim {model.Config.HiddenSize}; context {ctx}");
                model.Forward(input).Dispose(); // warm-up
                var times = new List<double>();
                for (int i = 0; i < n; i++)
                {
                    var sw = Stopwatch.StartNew();
                    model.Forward(input).Dispose();
                    times.Add(sw.Elapsed.TotalSeconds);
                    Say($"  pass {i + 1}/{n}: {times[^1] * 1000:F0} ms");
                }
                times.Sort();
                double median = times[times.Count / 2];
                double tokensPerSecond = ctx / median;
                double achieved = tokensPerSecond * 2.0 * parameters / 1e9;
                long peak = ProcessMemory.Peak;
                var result = new
                {
                    parameters, context = ctx, checkpoint_bytes = ckptBytes, load_seconds = loadSeconds,
                    forward_ms_median = median * 1000, tokens_per_second = tokensPerSecond,
                    matmul_gflops = gflops, achieved_gflops = achieved, roofline_fraction = achieved / gflops,
                    rss_before_load_bytes = rssBefore, peak_rss_bytes = peak, peak_rss_is_for_load_and_forward = peakReset,
                    peak_rss_over_checkpoint = (double)peak / ckptBytes, rss_added_over_checkpoint = (double)(peak - rssBefore) / ckptBytes,
                    threads = torch.get_num_threads(),
                };
                if (asJson) Console.WriteLine(JsonSerializer.Serialize(result, CliSupport.Json));
                else
                {
                    Console.WriteLine($"fp32 matmul (roofline)    {gflops,10:F1} GFLOP/s   ({torch.get_num_threads()} threads)");
                    Console.WriteLine($"forward, context {ctx,-8} {tokensPerSecond,10:F1} tokens/s  (median of {n}: {median * 1000:F0} ms)");
                    Console.WriteLine($"achieved (2 x {parameters / 1e6:F1}M/token) {achieved,10:F1} GFLOP/s");
                    Console.WriteLine($"fraction of roofline      {achieved / gflops,10:P1}   (target >= 50%)");
                    Console.WriteLine($"checkpoint size           {ckptBytes / 1048576.0,10:F1} MiB  (load {loadSeconds:F1} s)");
                    Console.WriteLine($"RSS before load           {rssBefore / 1048576.0,10:F1} MiB  (runtime + libtorch, kernels warmed on a tiny model)");
                    Console.WriteLine($"peak RSS (load+forward)   {peak / 1048576.0,10:F1} MiB  = {(double)peak / ckptBytes:F2}x checkpoint; added by load+forward {(double)(peak - rssBefore) / ckptBytes:F2}x (target <= 1.3x)");
                }
                return ExitCodes.Success;
            }
            finally
            {
                if (tempDir != null) Directory.Delete(tempDir, recursive: true);
            }
        }));
        return cmd;
    }

    static Command Generate()
    {
        var checkpoint = new Option<string?>("--checkpoint") { Description = "benchmark this checkpoint instead of a generated ~110M-parameter random one" };
        var prompt = new Option<int>("--prompt-length") { Description = "prompt tokens", DefaultValueFactory = _ => 32 };
        var count = new Option<int>("--tokens") { Description = "tokens to generate", DefaultValueFactory = _ => 64 };
        var cmd = new Command("generate", "Greedy generation tokens/s with the KV cache beside recomputing the prefix every step, same model and prompt, and whether both chose the same tokens.")
        {
            checkpoint, prompt, count,
        };
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            string? temp = null;
            string ckpt = r.GetValue(checkpoint) ?? "";
            try
            {
                if (string.IsNullOrEmpty(ckpt))
                {
                    temp = ckpt = Directory.CreateTempSubdirectory("superquant-bench-").FullName;
                    RandomCheckpoint.Write(temp, BenchConfig(768, 12, 2048, 32000, 512), ScalarType.Float32, seed: 1, progress: new ConsoleProgress("generating random checkpoint").Report);
                }
                using LlamaModel model = ModelLoader.Load(ckpt);
                var rng = new Random(5);
                int[] ids = Enumerable.Range(0, Math.Max(1, r.GetValue(prompt))).Select(_ => rng.Next(model.Config.VocabSize)).ToArray();
                int n = Math.Max(1, r.GetValue(count));
                Sampler.Generate(model, ids, 2, 0, 0); // warm-up
                var sw = Stopwatch.StartNew();
                int[] cached = Sampler.Generate(model, ids, n, 0, 0);
                double withCache = sw.Elapsed.TotalSeconds;
                sw.Restart();
                int[] recomputed = Sampler.Generate(model, ids, n, 0, 0, useCache: false);
                double without = sw.Elapsed.TotalSeconds;
                Console.WriteLine($"model                 {model.Config.ParameterCount / 1e6:F1}M parameters; prompt {ids.Length} tokens, {n} generated (greedy), {torch.get_num_threads()} threads");
                Console.WriteLine($"KV cache              {n / withCache,8:F1} tokens/s");
                Console.WriteLine($"recompute each step   {n / without,8:F1} tokens/s");
                Console.WriteLine($"speed-up              {without / withCache,8:F2}x; same tokens: {(cached.SequenceEqual(recomputed) ? "yes" : "NO")}");
                return ExitCodes.Success;
            }
            finally
            {
                if (temp != null) Directory.Delete(temp, recursive: true);
            }
        }));
        return cmd;
    }

    static Command Scale()
    {
        var size = new Option<double>("--size-gb") { Description = "size of the generated fp32 checkpoint in GB (10^9 bytes)", DefaultValueFactory = _ => 6 };
        var dir = new Option<string?>("--dir") { Description = "folder to generate the checkpoint in (default: a new temp folder; needs about 1.2x the size free)" };
        var keep = new Option<bool>("--keep") { Description = "keep the generated checkpoint and artifact" };
        var gguf = new Option<bool>("--gguf") { Description = "also write GGUF (super-aware mixed Q4_0/Q8_0)" };
        var gate = new Option<bool>("--gate") { Description = "also run `superquant gate` on it (quantize + evaluate against the original on 512 tokens) and report its peak RSS" };
        var cmd = new Command("scale", "Generates a large random LLaMA checkpoint (default 6 GB fp32, written one tensor at a time), runs `superquant quantize` on it in a fresh process and reports that process's peak RSS beside the checkpoint size and beside a run on a tiny checkpoint (the runtime's own footprint). Target: peak RSS <= 1.5x the checkpoint. Not part of the tests: it takes minutes and disk space.")
        {
            size, dir, keep, gguf, gate,
        };
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            string root = r.GetValue(dir) is { } d ? Path.GetFullPath(d) : Directory.CreateTempSubdirectory("superquant-scale-").FullName;
            Directory.CreateDirectory(root);
            try
            {
                // TinyLlama-1.1B-like layer shapes (GQA, 8 KV heads); the layer count sets the size.
                const int dim = 2048, ffn = 5632, vocab = 32000;
                LlamaConfig Config(int n) => BenchConfig(dim, n, ffn, vocab, 512) with { TieWordEmbeddings = false, NumKvHeads = 8 };
                long Bytes(int n) => RandomCheckpoint.Layout(Config(n), ScalarType.Float32).Sum(t => 4 * t.Shape.Aggregate(1L, (a, b) => a * b));
                int layers = 1;
                while (Bytes(layers + 1) <= r.GetValue(size) * 1e9) layers++;
                var config = Config(layers);
                string big = Path.Combine(root, "checkpoint"), tiny = Path.Combine(root, "tiny");
                var clock = Stopwatch.StartNew();
                RandomCheckpoint.Write(big, config, ScalarType.Float32, seed: 5, progress: new ConsoleProgress($"generating {layers}-layer checkpoint").Report,
                    superWeight: (layers / 4, 100, 300));
                long bytes = new FileInfo(Path.Combine(big, "model.safetensors")).Length;
                Console.WriteLine($"generated {bytes / 1e9:F2} GB ({config.ParameterCount / 1e9:F2}B parameters, {layers} layers) in {clock.Elapsed.TotalSeconds:F0} s");
                RandomCheckpoint.Write(tiny, BenchConfig(64, 1, 128, 256, 512), superWeight: (0, 10, 20));

                (long Peak, double Seconds) Quantize(string ckpt, string name)
                {
                    string peakFile = Path.Combine(root, name + ".peak");
                    var args = new List<string> { "quantize", "-m", ckpt, "--z", "4", "--prompt-tokens", "1 5 9 200 31 7 64 12 90 3", "-o", Path.Combine(root, name + ".sqpk.safetensors") };
                    if (r.GetValue(gguf)) args.AddRange(new[] { "--gguf", Path.Combine(root, name + ".gguf") });
                    if (name.EndsWith("-gate", StringComparison.Ordinal))
                    {
                        string model = name[..^5];
                        var rng = new Random(1);
                        SuperQuant.Models.Text.TokenIdFile.Write(Path.Combine(root, "eval.txt"), new[] { 1 }.Concat(Enumerable.Range(0, 511).Select(_ => rng.Next(2, 256))));
                        File.WriteAllText(Path.Combine(root, name + ".yaml"), $"version: 1\ndevice: cpu\nmodels:\n  - id: {model}\n    checkpoint: checkpoint\n" +
                            $"    output: {name}.sqpk.safetensors\n    z: 4\n    evaluation_tokens: eval.txt\n    prompt_tokens: \"1 5 9 200 31 7 64 12 90 3\"\n    context: 512\n" +
                            "    gate:\n      metric: kl\n      max_increase: 1000\n");
                        args = new List<string> { "gate", "--manifest", Path.Combine(root, name + ".yaml"), "--report-dir", Path.Combine(root, name + "-report") };
                    }
                    var sw = Stopwatch.StartNew();
                    int code = RunSelf(args, new Dictionary<string, string> { ["SUPERQUANT_PEAK_RSS_FILE"] = peakFile });
                    if (code != 0) throw new SuperQuant.Core.SuperQuantException(SuperQuant.Core.ErrorCodes.InvalidArgument, $"superquant quantize exited with {code} on {ckpt}");
                    return (long.Parse(File.ReadAllText(peakFile), System.Globalization.CultureInfo.InvariantCulture), sw.Elapsed.TotalSeconds);
                }
                var (runtime, _) = Quantize(tiny, "tiny");
                var (peak, seconds) = Quantize(big, "big");
                (long Peak, double Seconds)? gated = r.GetValue(gate) ? Quantize(big, "big-gate") : null;
                Console.WriteLine();
                Console.WriteLine($"checkpoint                 {bytes / 1048576.0,10:F0} MiB  fp32 safetensors");
                Console.WriteLine($"quantize (INT4, block 128) {seconds,10:F0} s    load, detect, quantize tensor by tensor, write packed{(r.GetValue(gguf) ? " + GGUF" : "")}");
                Console.WriteLine($"peak RSS, tiny checkpoint  {runtime / 1048576.0,10:F0} MiB  (the runtime and libtorch alone)");
                Console.WriteLine($"peak RSS, this checkpoint  {peak / 1048576.0,10:F0} MiB  = {(double)peak / bytes:F2}x checkpoint (target <= 1.5x); {(double)(peak - runtime) / bytes:F2}x over the runtime");
                if (gated is var (gatePeak, gateSeconds))
                    Console.WriteLine($"gate (quantize + evaluate on 512 tokens vs recorded reference logits) {gateSeconds:F0} s; peak RSS {gatePeak / 1048576.0:F0} MiB = {(double)gatePeak / bytes:F2}x checkpoint");
                return ExitCodes.Success;
            }
            finally
            {
                if (!r.GetValue(keep)) Directory.Delete(root, recursive: true);
                else Console.WriteLine($"kept: {root}");
            }
        }));
        return cmd;
    }

    /// <summary>Loads and runs a tiny model through the same code paths first, so the libtorch code pages those
    /// kernels touch are resident before the baseline RSS is taken: the figure then measures the model, not the
    /// first use of a 461 MB shared library.</summary>
    static void WarmUpKernels(int context)
    {
        string dir = Directory.CreateTempSubdirectory("superquant-warmup-").FullName;
        try
        {
            var tiny = new LlamaConfig
            {
                Architecture = "llama", HiddenSize = 64, IntermediateSize = 128, NumLayers = 1, NumHeads = 1, NumKvHeads = 1,
                VocabSize = 256, MaxPositionEmbeddings = Math.Max(context, 2048), TieWordEmbeddings = true,
            };
            RandomCheckpoint.Write(dir, tiny);
            using LlamaModel m = ModelLoader.Load(dir);
            using Tensor ids = torch.zeros(1, context, ScalarType.Int64);
            m.Forward(ids).Dispose();
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    /// <summary>Runs this tool again with <paramref name="args"/>, sharing the console; returns its exit code.</summary>
    static int RunSelf(IEnumerable<string> args, IDictionary<string, string>? environment = null)
    {
        var psi = new ProcessStartInfo(Environment.ProcessPath!) { UseShellExecute = false };
        foreach (var (k, v) in environment ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        string entry = Environment.GetCommandLineArgs()[0];
        if (entry.EndsWith(".dll", StringComparison.OrdinalIgnoreCase)) psi.ArgumentList.Add(entry); // `dotnet superquant.dll`
        foreach (string a in args) psi.ArgumentList.Add(a);
        using var child = Process.Start(psi)!;
        child.WaitForExit();
        return child.ExitCode;
    }

    /// <summary>Best-of-5 fp32 2048^3 matmul throughput on the CPU, the roofline the forward pass is judged against.</summary>
    public static double MatmulGflops(int size = 2048, int reps = 5)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.inference_mode();
        Tensor a = torch.randn(size, size), b = torch.randn(size, size);
        torch.matmul(a, b).Dispose();
        double best = double.MaxValue;
        for (int i = 0; i < reps; i++)
        {
            var sw = Stopwatch.StartNew();
            torch.matmul(a, b).Dispose();
            best = Math.Min(best, sw.Elapsed.TotalSeconds);
        }
        return 2.0 * size * size * size / best / 1e9;
    }
}
