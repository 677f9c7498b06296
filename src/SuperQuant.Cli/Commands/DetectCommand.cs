using System.CommandLine;
using System.Text.Json;
using SuperQuant.Cli.Reports;
using SuperQuant.Core.Llama;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Models.Checkpoints;

namespace SuperQuant.Cli.Commands;

/// <summary>`superquant detect`: locate super weights and super activations with one prompt.</summary>
public static class DetectCommand
{
    public static Command Create()
    {
        var o = new DetectionOptions();
        var json = new Option<bool>("--json") { Description = "print the detection section of analysis.json" };
        var cmd = new Command("detect", "Find super weights (Yu et al. 2024): max |input|/|output| of every mlp.down_proj over one prompt, zero the " +
            "culprit, repeat. Reports none when no spike passes the rule.\n" + ExitCodes.HelpText);
        foreach (var opt in o.All) cmd.Options.Add(opt);
        cmd.Options.Add(json);
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            bool asJson = r.GetValue(json);
            var dev = CliSupport.ResolveDevice(r.GetValue(o.Device), asJson);
            string path = r.GetValue(o.Model)!;
            using LlamaModel model = ModelLoader.Load(path, dev);
            var (ids, text) = o.PromptFor(r, model, path);
            DetectionReport report = o.Detector(r).Detect(model, ids);
            var section = DetectionSection.From(report, text, KnownSuperWeights.For(model.Config));
            if (asJson) { Console.WriteLine(JsonSerializer.Serialize(section, AnalysisReport.Json)); return ExitCodes.Success; }
            Print(section);
            return ExitCodes.Success;
        }));
        return cmd;
    }

    public static void Print(DetectionSection d)
    {
        Console.WriteLine($"rule: {d.Rule} (threshold {d.Threshold:G5}); {d.Iterations} " +
            $"pass(es){(d.StoppedAtMaxIterations ? ", stopped at the iteration limit" : "")}");
        Console.WriteLine($"prompt: {d.PromptText ?? string.Join(' ', d.PromptTokens)} ({d.PromptTokens.Count} tokens)");
        Console.WriteLine();
        Console.WriteLine("layer  max|in|      ch    tok   max|out|     ch    tok");
        foreach (var s in d.Spikes)
            Console.WriteLine($"{s.Layer,5}  {s.InputMagnitude,10:G5} {s.InputChannel,5} {s.InputToken,5}   {s.OutputMagnitude,10:G5} " +
                $"{s.OutputChannel,5} {s.OutputToken,5}{(s.OutputMagnitude > d.Threshold ? "  <- spike" : "")}");
        Console.WriteLine();
        Console.WriteLine(d.Summary);
        foreach (var a in d.SuperActivations)
            Console.WriteLine($"  super activation: layer {a.Layer}, channel {a.Channel}, token {a.Token}: {a.Value:G5} (down_proj input channel " +
                $"{a.InputChannel} = {a.InputValue:G5})");
        foreach (var h in d.KnownModelHints)
            Console.WriteLine($"hint: published for {h.Model} (same shape): " +
                $"{string.Join(", ", h.Coordinates.Select(c => $"({c[0]}, {c[1]}, {c[2]})"))}: {(h.AllDetected ? "all detected" : "NOT all detected")}");
    }
}
