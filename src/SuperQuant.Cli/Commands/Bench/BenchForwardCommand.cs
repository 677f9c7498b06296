using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Gguf;
using SuperQuant.Pipeline;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Cli.Commands.Bench;

/// <summary>`superquant bench forward`: Forward-pass throughput against the machine's fp32 matmul roofline, and peak memory against the checkpoint
/// size.</summary>
public static class BenchForwardCommand
{
    public static Command Create()
    {
        var dim = new Option<int>("--dim") { Description = "hidden size of the generated model", DefaultValueFactory = _ => 768 };
        var layers = new Option<int>("--layers") { Description = "decoder layers", DefaultValueFactory = _ => 12 };
        var hidden = new Option<int>("--ffn") { Description = "MLP intermediate size", DefaultValueFactory = _ => 2048 };
        var vocab = new Option<int>("--vocab") { Description = "vocabulary size", DefaultValueFactory = _ => 32000 };
        var context = new Option<int>("--context") { Description = "tokens per forward pass", DefaultValueFactory = _ => 512 };
        var reps = new Option<int>("--reps") { Description = "timed forward passes (after one warm-up)", DefaultValueFactory = _ => 5 };
        var checkpoint = new Option<string?>("--checkpoint") { Description = "benchmark this checkpoint instead of generating a random one" };
        var json = new Option<bool>("--json") { Description = "print one JSON object" };
        var llamaCpp = new Option<string>("--llama-cpp")
        {
            Description = "also run llama.cpp (LLamaSharp) on the same tokens from GGUF exports of " +
            "the same weights, side by side: comma-separated types, or 'none'", DefaultValueFactory = _ => "f16,q8_0"
        };
        var cmd = new Command("forward", "Forward-pass tokens/s of a ~100M-parameter random LLaMA at context 512, beside this machine's fp32 matmul " +
            "GFLOP/s (roofline: FLOPs/token = 2 x parameters), and peak RSS beside the checkpoint size.")
        {
            dim, layers, hidden, vocab, context, reps, checkpoint, json, llamaCpp,
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
                    var config = BenchSupport.Config(r.GetValue(dim), r.GetValue(layers), r.GetValue(hidden), r.GetValue(vocab), ctx);
                    tempDir = Directory.CreateTempSubdirectory("superquant-bench-").FullName;
                    ckpt = tempDir;
                    var gen = new ConsoleProgress("generating random checkpoint", !asJson);
                    RandomCheckpoint.Write(tempDir, config, ScalarType.Float32, seed: 1, progress: gen.Report);
                    // Measure in a fresh process so the generator's memory does not blur the RSS figures.
                    var args = new List<string> { "bench", "forward", "--checkpoint", tempDir, "--context", ctx.ToString(), "--reps", n.ToString(),
                        "--llama-cpp", r.GetValue(llamaCpp)! };
                    if (asJson) args.Add("--json");
                    return BenchSupport.RunSelf(args);
                }
                long ckptBytes = Directory.Exists(ckpt)
                    ? Directory.GetFiles(ckpt, "*.safetensors").Sum(f => new FileInfo(f).Length)
                    : new FileInfo(ckpt).Length;

                Say("measuring fp32 matmul roofline (2048x2048x2048)...");
                double gflops = BenchSupport.MatmulGflops();
                BenchSupport.WarmUpKernels(ctx);
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
                long peak = ProcessMemory.Peak; // before llama.cpp runs in this process
                var sideBySide = LlamaCppSideBySide(model, ids.Select(i => (int)i).ToArray(), n, r.GetValue(llamaCpp)!, Say);
                var result = new
                {
                    parameters, context = ctx, checkpoint_bytes = ckptBytes, load_seconds = loadSeconds,
                    forward_ms_median = median * 1000, tokens_per_second = tokensPerSecond,
                    matmul_gflops = gflops, achieved_gflops = achieved, roofline_fraction = achieved / gflops,
                    rss_before_load_bytes = rssBefore, peak_rss_bytes = peak, peak_rss_is_for_load_and_forward = peakReset,
                    peak_rss_over_checkpoint = (double)peak / ckptBytes, rss_added_over_checkpoint = (double)(peak - rssBefore) / ckptBytes,
                    threads = torch.get_num_threads(),
                    llama_cpp = sideBySide.Select(s => new
                    {
                        type = s.Type, tokens_per_second = s.TokensPerSecond,
                        ours_over_llama_cpp = tokensPerSecond / s.TokensPerSecond
                    }).ToList(),
                };
                if (asJson) Console.WriteLine(JsonSerializer.Serialize(result, CliSupport.Json));
                else
                {
                    Console.WriteLine($"fp32 matmul (roofline)    {gflops,10:F1} GFLOP/s   ({torch.get_num_threads()} threads)");
                    Console.WriteLine($"forward, context {ctx,-8} {tokensPerSecond,10:F1} tokens/s  (median of {n}: {median * 1000:F0} ms)");
                    Console.WriteLine($"achieved (2 x {parameters / 1e6:F1}M/token) {achieved,10:F1} GFLOP/s");
                    Console.WriteLine($"fraction of roofline      {achieved / gflops,10:P1}   (target >= 50%)");
                    foreach (var s in sideBySide)
                        Console.WriteLine($"llama.cpp {s.Type,-15} {s.TokensPerSecond,10:F1} tokens/s  (same tokens, {torch.get_num_threads()} " +
                            $"threads; ours fp32 = {tokensPerSecond / s.TokensPerSecond:F2}x)");
                    Console.WriteLine($"checkpoint size           {ckptBytes / 1048576.0,10:F1} MiB  (load {loadSeconds:F1} s)");
                    Console.WriteLine($"RSS before load           {rssBefore / 1048576.0,10:F1} MiB  (runtime + libtorch, kernels warmed on a tiny model)");
                    Console.WriteLine($"peak RSS (load+forward)   {peak / 1048576.0,10:F1} MiB  = {(double)peak / ckptBytes:F2}x checkpoint; added " +
                        $"by load+forward {(double)(peak - rssBefore) / ckptBytes:F2}x (target <= 1.3x)");
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

    /// <summary>llama.cpp's forward pass over the same tokens, from GGUF exports of the same weights, timed as ours is
    /// (one warm-up, median of n passes, all logits returned).</summary>
    static List<(string Type, double TokensPerSecond)> LlamaCppSideBySide(LlamaModel model, int[] ids, int n, string types, Action<string> say)
    {
        var rows = new List<(string, double)>();
        if (types.Trim().Equals("none", StringComparison.OrdinalIgnoreCase)) return rows;
        string dir = Directory.CreateTempSubdirectory("superquant-bench-llamacpp-").FullName;
        try
        {
            foreach (string name in types.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                SuperQuant.Manifest.GgufFileType type = SuperQuant.Manifest.Names.ParseGgufType(name);
                string path = Path.Combine(dir, $"model.{name}.gguf");
                GgufExporter.Write(path, model, new GgufExport { FileType = type, Name = "bench" });
                using var engine = LlamaCppEngine.Open(path, ids.Length, torch.get_num_threads());
                engine.Logits(ids).Dispose(); // warm-up
                var times = new List<double>();
                for (int i = 0; i < n; i++)
                {
                    var sw = Stopwatch.StartNew();
                    engine.Logits(ids).Dispose();
                    times.Add(sw.Elapsed.TotalSeconds);
                }
                times.Sort();
                rows.Add((name, ids.Length / times[times.Count / 2]));
                say($"  llama.cpp {name}: {times[times.Count / 2] * 1000:F0} ms");
            }
        }
        finally { Directory.Delete(dir, recursive: true); }
        return rows;
    }
}
