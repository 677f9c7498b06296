using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Models.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Cli.Commands.Bench;

/// <summary>`superquant bench generate`: Greedy generation with the KV cache against recomputing the prefix.</summary>
public static class BenchGenerateCommand
{
    public static Command Create()
    {
        var checkpoint = new Option<string?>("--checkpoint") { Description = "benchmark this checkpoint instead of a generated ~110M-parameter random one" };
        var prompt = new Option<int>("--prompt-length") { Description = "prompt tokens", DefaultValueFactory = _ => 32 };
        var count = new Option<int>("--tokens") { Description = "tokens to generate", DefaultValueFactory = _ => 64 };
        var cmd = new Command("generate", "Greedy generation tokens/s with the KV cache beside recomputing the prefix every step, same model and " +
            "prompt, and whether both chose the same tokens.")
        {
            checkpoint, prompt, count,
        };
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            using var source = BenchSupport.CheckpointOrGenerate(r.GetValue(checkpoint));
            using LlamaModel model = ModelLoader.Load(source.Path);
            int[] ids = BenchSupport.RandomIds(model, r.GetValue(prompt), seed: 5);
            int n = Math.Max(1, r.GetValue(count));
            Sampler.Generate(model, ids, 2, 0, 0); // warm-up
            var sw = Stopwatch.StartNew();
            int[] cached = Sampler.Generate(model, ids, n, 0, 0);
            double withCache = sw.Elapsed.TotalSeconds;
            sw.Restart();
            int[] recomputed = Sampler.Generate(model, ids, n, 0, 0, useCache: false);
            double without = sw.Elapsed.TotalSeconds;
            Console.WriteLine($"model                 {model.Config.ParameterCount / 1e6:F1}M parameters; prompt {ids.Length} tokens, {n} generated " +
                $"(greedy), {torch.get_num_threads()} threads");
            Console.WriteLine($"KV cache              {n / withCache,8:F1} tokens/s");
            Console.WriteLine($"recompute each step   {n / without,8:F1} tokens/s");
            Console.WriteLine($"speed-up              {without / withCache,8:F2}x; same tokens: {(cached.SequenceEqual(recomputed) ? "yes" : "NO")}");
            return ExitCodes.Success;
        }));
        return cmd;
    }
}
