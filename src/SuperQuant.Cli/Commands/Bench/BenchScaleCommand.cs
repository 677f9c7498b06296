using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Manifest;
using SuperQuant.Models.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Cli.Commands.Bench;

/// <summary>`superquant bench scale`: A multi-GB random checkpoint through quantize (and gate) in fresh processes: peak RSS against the checkpoint
/// size.</summary>
public static class BenchScaleCommand
{
    public static Command Create()
    {
        var size = new Option<double>("--size-gb") { Description = "size of the generated fp32 checkpoint in GB (10^9 bytes)", DefaultValueFactory = _ => 6 };
        var dir = new Option<string?>("--dir")
        {
            Description = "folder to generate the checkpoint in (default: a new temp folder; needs about 1.2x " +
            "the size free)"
        };
        var keep = new Option<bool>("--keep") { Description = "keep the generated checkpoint and artifact" };
        var gguf = new Option<bool>("--gguf") { Description = "also write a GGUF (q4_k_m; with --gate it is evaluated by llama.cpp)" };
        var gate = new Option<bool>("--gate")
        {
            Description = "also run `superquant gate` on it (quantize + evaluate against the original on 512 " +
            "tokens) and report its peak RSS"
        };
        var memory = CliSupport.MemoryOption();
        var zAuto = new Option<bool>("--z-auto") { Description = "tune z on 1,024 calibration tokens (default: z 4)" };
        var llamaCpp = new Option<string?>("--llama-cpp")
        {
            Description = "folder with llama.cpp's llama-imatrix and llama-quantize (e.g. ../shared/tools/llama.cpp/bin): instead of the packed " +
            "run, time and peak RSS of our super-aware GGUF (--gguf-type, --calibration-count tokens) beside llama-imatrix + llama-quantize " +
            "--imatrix on the same tokens, in one run"
        };
        var ggufType = new Option<string>("--gguf-type") { Description = "GGUF type for --llama-cpp", DefaultValueFactory = _ => "q4_k_m" };
        var calibCount = new Option<int>("--calibration-count")
        {
            Description = "calibration tokens for --llama-cpp (random ids, BOS first)", DefaultValueFactory = _ => 512,
        }.InRange(32, 1 << 16);
        var cmd = new Command("scale", "Generates a large random LLaMA checkpoint (default 6 GB fp32, written one tensor at a time), runs " +
            "`superquant quantize` on it in a fresh process and reports that process's peak RSS beside the checkpoint size and beside a run on a " +
            "tiny checkpoint (the runtime's own footprint). Targets: peak RSS <= 1.1x the checkpoint + 300 MB when it fits in RAM; under 8 GB with " +
            "--memory layers whatever its size (--size-gb 32 makes one larger than this machine's 24 GiB). Not part of the tests: it takes minutes " +
            "and disk space.")
        {
            size, dir, keep, gguf, gate, memory, zAuto, llamaCpp, ggufType, calibCount,
        };
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            string root = r.GetValue(dir) is { } d ? Path.GetFullPath(d) : Directory.CreateTempSubdirectory("superquant-scale-").FullName;
            Directory.CreateDirectory(root);
            try
            {
                // TinyLlama-1.1B-like layer shapes (GQA, 8 KV heads); the layer count sets the size.
                const int dim = 2048, ffn = 5632, vocab = 32000;
                LlamaConfig Config(int n) => BenchSupport.Config(dim, n, ffn, vocab, 512) with { TieWordEmbeddings = false, NumKvHeads = 8 };
                long Bytes(int n) => RandomCheckpoint.Layout(Config(n), ScalarType.Float32).Sum(t => 4 * t.Shape.Aggregate(1L, (a, b) => a * b));
                int layers = 1;
                while (Bytes(layers + 1) <= r.GetValue(size) * 1e9) layers++;
                var config = Config(layers);
                string big = Path.Combine(root, "checkpoint"), tiny = Path.Combine(root, "tiny");
                var clock = Stopwatch.StartNew();
                RandomCheckpoint.Write(big, config, ScalarType.Float32, seed: 5, progress: new ConsoleProgress($"generating {layers}-layer checkpoint").Report,
                    superWeight: (layers / 4, 100, 300));
                long bytes = new FileInfo(Path.Combine(big, "model.safetensors")).Length;
                Console.WriteLine($"generated {bytes / 1e9:F2} GB ({config.ParameterCount / 1e9:F2}B parameters, {layers} layers) in " +
                    $"{clock.Elapsed.TotalSeconds:F0} s");
                RandomCheckpoint.Write(tiny, BenchSupport.Config(64, 1, 128, 256, 512), superWeight: (0, 10, 20));
                if (r.GetValue(llamaCpp) is string bin)
                {
                    VersusLlamaCpp(root, big, bin, Names.ParseGgufType(r.GetValue(ggufType)!), r.GetValue(calibCount), vocab, bytes);
                    return ExitCodes.Success;
                }

                (long Peak, double Seconds) Quantize(string ckpt, string name)
                {
                    string peakFile = Path.Combine(root, name + ".peak");
                    string mem = r.GetValue(memory) ?? "auto";
                    string calib = Path.Combine(root, "calib.txt");
                    var crng = new Random(2);
                    SuperQuant.Models.Text.TokenIdFile.Write(calib, new[] { 1 }.Concat(Enumerable.Range(0, 1023).Select(_ => crng.Next(2, 256))));
                    var zArgs = r.GetValue(zAuto) ? new[] { "--calibration-tokens", calib } : new[] { "--z", "4" };
                    var args = new List<string> { "quantize", "-m", ckpt, "--memory", mem, "--prompt-tokens", "1 5 9 200 31 7 64 12 90 3", "-o",
                        Path.Combine(root, name + ".sqpk.safetensors") };
                    args.AddRange(zArgs);
                    if (r.GetValue(gguf)) args.AddRange(new[] { "--gguf", Path.Combine(root, name + ".gguf") });
                    if (name.EndsWith("-gate", StringComparison.Ordinal))
                    {
                        string model = name[..^5];
                        var rng = new Random(1);
                        SuperQuant.Models.Text.TokenIdFile.Write(Path.Combine(root, "eval.txt"),
                            new[] { 1 }.Concat(Enumerable.Range(0, 511).Select(_ => rng.Next(2, 256))));
                        File.WriteAllText(Path.Combine(root, name + ".yaml"),
                            $"version: 1\ndevice: cpu\nmemory: {mem}\nmodels:\n  - id: {model}\n    checkpoint: checkpoint\n" +
                            $"    output: {name}.sqpk.safetensors\n    {(r.GetValue(zAuto) ? "calibration_tokens: calib.txt" : "z: 4")}\n " +
                                $"   evaluation_tokens: eval.txt\n    prompt_tokens: \"1 5 9 200 31 7 64 12 90 3\"\n    context: 512\n" +
                            (r.GetValue(gguf) ? "    export: [packed, {gguf: q4_k_m}]\n" : "") +
                            "    gate:\n      metric: kl\n      max_increase: 1000\n");
                        args = new List<string> { "gate", "--manifest", Path.Combine(root, name + ".yaml"), "--report-dir",
                            Path.Combine(root, name + "-report") };
                    }
                    var sw = Stopwatch.StartNew();
                    int code = BenchSupport.RunSelf(args, new Dictionary<string, string> { ["SUPERQUANT_PEAK_RSS_FILE"] = peakFile });
                    if (code != 0) throw new SuperQuant.Core.SuperQuantException(SuperQuant.Core.ErrorCodes.InvalidArgument,
                        $"superquant quantize exited with {code} on {ckpt}");
                    return (long.Parse(File.ReadAllText(peakFile), System.Globalization.CultureInfo.InvariantCulture), sw.Elapsed.TotalSeconds);
                }
                Console.WriteLine($"memory mode: {r.GetValue(memory) ?? "auto"}");
                var (runtime, _) = Quantize(tiny, "tiny");
                var (peak, seconds) = Quantize(big, "big");
                (long Peak, double Seconds)? gated = r.GetValue(gate) ? Quantize(big, "big-gate") : null;
                Console.WriteLine();
                Console.WriteLine($"checkpoint                 {bytes / 1048576.0,10:F0} MiB  fp32 safetensors");
                Console.WriteLine($"quantize (INT4, block 128) {seconds,10:F0} s    load, detect, {(r.GetValue(zAuto) ? "tune z, " : "")}quantize, " +
                    $"write packed{(r.GetValue(gguf) ? " + GGUF" : "")} (memory: {r.GetValue(memory) ?? "auto"})");
                Console.WriteLine($"peak RSS, tiny checkpoint  {runtime / 1048576.0,10:F0} MiB  (the runtime and libtorch alone)");
                Console.WriteLine($"peak RSS, this checkpoint  {peak / 1048576.0,10:F0} MiB  = {(double)peak / bytes:F2}x checkpoint; " +
                    $"{(double)(peak - runtime) / bytes:F2}x over the runtime");
                if (gated is var (gatePeak, gateSeconds))
                    Console.WriteLine($"gate (quantize + evaluate on 512 tokens vs recorded reference logits) {gateSeconds:F0} s; peak RSS " +
                        $"{gatePeak / 1048576.0:F0} MiB = {(double)gatePeak / bytes:F2}x checkpoint");
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

    /// <summary>Our super-aware GGUF (one process: load, detect, calibrate, write) against llama-imatrix + llama-quantize
    /// --imatrix from our F16 export (llama.cpp's converter is a Python step not counted), same calibration tokens and
    /// windows; each side's seconds and peak RSS.</summary>
    static void VersusLlamaCpp(string root, string checkpoint, string bin, GgufFileType type, int count, int vocab, long checkpointBytes)
    {
        string calib = Path.Combine(root, "calib.txt"), f16 = Path.Combine(root, "f16.gguf"), imatrix = Path.Combine(root, "imatrix.gguf");
        var rng = new Random(2);
        SuperQuant.Models.Text.TokenIdFile.Write(calib, new[] { 1 }.Concat(Enumerable.Range(0, count - 1).Select(_ => rng.Next(2, vocab))));
        int ctx = Math.Min(512, count / 2); // llama-imatrix wants at least two windows
        string ctxText = ctx.ToString(System.Globalization.CultureInfo.InvariantCulture);
        string peakFile = Path.Combine(root, "ours.peak");
        var sw = Stopwatch.StartNew();
        int code = BenchSupport.RunSelf(new[] { "quantize", "-m", checkpoint, "--calibration-tokens", calib, "--gguf", Path.Combine(root, "ours.gguf"),
            "--gguf-type", type.Name(), "--context", ctxText, "--prompt-tokens", "1 5 9 200 31 7 64 12 90 3" },
            new Dictionary<string, string> { ["SUPERQUANT_PEAK_RSS_FILE"] = peakFile });
        double ours = sw.Elapsed.TotalSeconds;
        if (code != 0) throw new SuperQuantException(ErrorCodes.InvalidArgument, $"superquant quantize exited with {code}");
        long oursPeak = long.Parse(File.ReadAllText(peakFile), System.Globalization.CultureInfo.InvariantCulture);
        string[] f16Args = { "quantize", "-m", checkpoint, "--method", "rtn", "--gguf", f16, "--gguf-type", "f16", "--prompt-tokens", "1 2 3" };
        if (BenchSupport.RunSelf(f16Args) != 0)
            throw new SuperQuantException(ErrorCodes.InvalidArgument, "the F16 export failed");
        var (imatrixSeconds, imatrixPeak) = Timed(Path.Combine(bin, "llama-imatrix"), new Dictionary<string, string> { ["LLAMA_TOKEN_IDS"] = "1" },
            "-m", f16, "-f", calib, "-c", ctxText, "-b", ctxText, "-o", imatrix, "--no-ppl");
        var (quantizeSeconds, quantizePeak) = Timed(Path.Combine(bin, "llama-quantize"), null, "--imatrix", imatrix, f16,
            Path.Combine(root, "llama.gguf"), type.Name());
        double theirs = imatrixSeconds + quantizeSeconds;
        Console.WriteLine();
        Console.WriteLine($"CPU: {BenchSupport.CpuModel()}; checkpoint {checkpointBytes / 1e9:F2} GB fp32; {count} calibration tokens, windows of {ctx}; " +
            $"{type.Name()}");
        Console.WriteLine($"superquant super-aware GGUF     {ours,8:F1} s  peak RSS {oursPeak / 1048576.0,7:F0} MiB");
        Console.WriteLine($"llama-imatrix                   {imatrixSeconds,8:F1} s  peak RSS {imatrixPeak / 1048576.0,7:F0} MiB");
        Console.WriteLine($"llama-quantize --imatrix        {quantizeSeconds,8:F1} s  peak RSS {quantizePeak / 1048576.0,7:F0} MiB");
        Console.WriteLine($"ours / (llama-imatrix + llama-quantize) = {ours / theirs:F2}x");
    }

    /// <summary>Runs a program to its end: seconds, and its peak RSS (VmHWM, polled while it runs).</summary>
    static (double Seconds, long Peak) Timed(string program, IDictionary<string, string>? environment, params string[] args)
    {
        var psi = new ProcessStartInfo(program) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in environment ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var output = p.StandardOutput.ReadToEndAsync();
        var errors = p.StandardError.ReadToEndAsync();
        long peak = 0;
        while (!p.WaitForExit(100))
            try { p.Refresh(); peak = Math.Max(peak, p.PeakWorkingSet64); } catch (InvalidOperationException) { }
        double seconds = sw.Elapsed.TotalSeconds;
        if (p.ExitCode != 0)
        {
            string last = errors.Result.Split('\n').LastOrDefault(l => l.Length > 0) ?? "";
            throw new SuperQuantException(ErrorCodes.InvalidArgument, $"{program} exited with {p.ExitCode}: {last}");
        }
        _ = output.Result;
        return (seconds, peak);
    }
}
