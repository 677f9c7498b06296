using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Models.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Cli.Commands.Bench;

/// <summary>`superquant bench detect`: One super-weight detection pass against a plain forward pass.</summary>
public static class BenchDetectCommand
{
    public static Command Create()
    {
        var prompt = new Option<int>("--prompt-length") { Description = "prompt tokens (the paper's prompt is ~10)", DefaultValueFactory = _ => 10 };
        var reps = new Option<int>("--reps") { Description = "timed passes of each kind (interleaved, after warm-up)", DefaultValueFactory = _ => 20 };
        var checkpoint = new Option<string?>("--checkpoint") { Description = "benchmark this checkpoint instead of a generated ~110M-parameter one" };
        var cmd = new Command("detect", "Time of one super-weight detection pass (down_proj hooks recording max |input|/|output|) over the time of a " +
            "plain forward pass on the same prompt; target <= 1.2x.")
        {
            prompt, reps, checkpoint,
        };
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            using var source = BenchSupport.CheckpointOrGenerate(r.GetValue(checkpoint));
            using LlamaModel model = ModelLoader.Load(source.Path);
            int[] ids = BenchSupport.RandomIds(model, r.GetValue(prompt), seed: 3);
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
        }));
        return cmd;
    }
}
