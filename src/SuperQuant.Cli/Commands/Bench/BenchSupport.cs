using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Models.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Cli.Commands.Bench;

/// <summary>What the benchmarks share: generated model shapes, a checkpoint that is either given or generated (and
/// deleted), running this tool again in a fresh process, and the matmul roofline.</summary>
public static class BenchSupport
{
    public static LlamaConfig Config(int dim, int layers, int ffn, int vocab, int context) => new()
    {
        Architecture = "llama", HiddenSize = dim, IntermediateSize = ffn, NumLayers = layers,
        NumHeads = Math.Max(1, dim / 64), NumKvHeads = Math.Max(1, dim / 64), VocabSize = vocab,
        MaxPositionEmbeddings = Math.Max(context, 2048), TieWordEmbeddings = true,
    };

    /// <summary>The checkpoint to measure: <paramref name="given"/>, or a random ~110M-parameter LLaMA generated into a
    /// temp folder that disposing deletes.</summary>
    public static TempCheckpoint CheckpointOrGenerate(string? given, LlamaConfig? config = null, (int Layer, int Row, int Column)? superWeight = null)
    {
        if (!string.IsNullOrEmpty(given)) return new TempCheckpoint(given, null);
        string temp = Directory.CreateTempSubdirectory("superquant-bench-").FullName;
        RandomCheckpoint.Write(temp, config ?? Config(768, 12, 2048, 32000, 512), ScalarType.Float32, seed: 1,
            progress: new ConsoleProgress("generating random checkpoint").Report, superWeight: superWeight);
        return new TempCheckpoint(temp, temp);
    }

    public sealed record TempCheckpoint(string Path, string? Owned) : IDisposable
    {
        public void Dispose() { if (Owned is not null) Directory.Delete(Owned, recursive: true); }
    }

    /// <summary>Loads and runs a tiny model through the same code paths first, so the libtorch code pages those
    /// kernels touch are resident before the baseline RSS is taken: the figure then measures the model, not the
    /// first use of a 461 MB shared library.</summary>
    /// <summary><paramref name="length"/> (at least 1) uniform random token ids of <paramref name="model"/>'s vocabulary.</summary>
    public static int[] RandomIds(SuperQuant.Core.Llama.LlamaModel model, int length, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, Math.Max(1, length)).Select(_ => rng.Next(model.Config.VocabSize)).ToArray();
    }

    public static void WarmUpKernels(int context)
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
    public static int RunSelf(IEnumerable<string> args, IDictionary<string, string>? environment = null)
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

    /// <summary>The CPU's model name (/proc/cpuinfo), printed beside every benchmark's ratios.</summary>
    public static string CpuModel()
    {
        try
        {
            return File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim()
                ?? "unknown CPU";
        }
        catch (IOException) { return "unknown CPU"; }
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
