using System.CommandLine;
using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Core.SuperWeights;

namespace SuperQuant.Cli.Commands;

/// <summary>Options shared by `detect` and `analyze`: the prompt and the spike rule.</summary>
public sealed class DetectionOptions
{
    public readonly Option<string> Model = new("--model", "-m") { Description = "checkpoint (folder, .safetensors or llama2.c .bin)", Required = true };
    public readonly Option<string?> Prompt = new("--prompt") { Description = $"detection prompt text (default: \"{SuperWeightDetector.PaperPrompt}\", the paper's)" };
    public readonly Option<string?> PromptTokens = new("--prompt-tokens") { Description = "detection prompt as token ids (for models without a tokenizer, e.g. llama2.c)" };
    public readonly Option<double?> Threshold = new("--threshold") { Description = "absolute spike threshold on |down_proj output| (the paper's rule: 50)" };
    public readonly Option<double?> Relative = new("--relative") { Description = "relative rule: spike > N x median of per-layer maxima (for small models); with --threshold both must hold" };
    public readonly Option<int> MaxIterations = new("--max-iterations") { Description = "zero-and-repeat passes at most", DefaultValueFactory = _ => 10 };
    public readonly Option<string> Device = CliSupport.DeviceOption();

    public IEnumerable<Option> All => new Option[] { Model, Prompt, PromptTokens, Threshold, Relative, MaxIterations, Device };

    public SuperWeightDetector Detector(ParseResult r)
    {
        double? abs = r.GetValue(Threshold), rel = r.GetValue(Relative);
        var rule = abs is null && rel is null ? SpikeRule.Paper : new SpikeRule { Absolute = abs, TimesMedian = rel };
        return new SuperWeightDetector { Rule = rule, MaxIterations = Math.Max(1, r.GetValue(MaxIterations)) };
    }

    /// <summary>The prompt as ids, and its text when it was given as text.</summary>
    public (int[] Ids, string? Text) PromptFor(ParseResult r, LlamaModel model, string modelPath)
    {
        if (r.GetValue(PromptTokens) is string ids)
        {
            int[] parsed;
            try { parsed = ids.Split(new[] { ' ', ',' }, StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray(); }
            catch (FormatException) { throw new SuperQuantException(ErrorCodes.InvalidArgument, "--prompt-tokens must be integers separated by spaces or commas"); }
            if (parsed.Length == 0 || parsed.Any(i => i < 0 || i >= model.Config.VocabSize))
                throw new SuperQuantException(ErrorCodes.InvalidArgument, $"--prompt-tokens must hold 1+ ids in [0, {model.Config.VocabSize})");
            return (parsed, null);
        }
        string text = r.GetValue(Prompt) ?? SuperWeightDetector.PaperPrompt;
        try
        {
            return (EvalCommand.Tokenize(text, EvalCommand.CheckpointFolder(modelPath), model.Config.VocabSize, model.Config.BosTokenId), text);
        }
        catch (SuperQuantException e) when (e.Code == ErrorCodes.TokenizerUnsupported)
        {
            throw new SuperQuantException(ErrorCodes.TokenizerUnsupported, $"{e.Message}. Without a tokenizer give the prompt as ids with --prompt-tokens.", e.FilePath, e);
        }
    }
}
