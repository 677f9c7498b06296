using System.CommandLine;
using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Core.SuperWeights;

namespace SuperQuant.Cli.Commands;

/// <summary>Options shared by `detect` and `analyze`: the prompt and the spike rule.</summary>
public sealed class DetectionOptions
{
    public readonly Option<string> Model = new("--model", "-m") { Description = "checkpoint (folder, .safetensors or llama2.c .bin)", Required = true };
    public readonly Option<string?> Prompt = new("--prompt")
    {
        Description = $"detection prompt text (default: " +
        $"\"{SuperWeightDetector.PaperPrompt}\", the paper's)"
    };
    public readonly Option<string?> PromptTokens = new("--prompt-tokens")
    {
        Description = "detection prompt as token ids (for models without a " +
        "tokenizer, e.g. llama2.c)"
    };
    public readonly Option<double?> Threshold = new Option<double?>("--threshold")
    {
        Description = "absolute spike threshold on |down_proj output| " +
        "(the paper's rule: 50)"
    }.InRange(0, 1e30);
    public readonly Option<double?> Relative = new Option<double?>("--relative")
    {
        Description = "relative rule: spike > N x median of per-layer " +
        "maxima (for small models); with --threshold both must hold"
    }.InRange(0, 1e30);
    public readonly Option<int> MaxIterations = new Option<int>("--max-iterations")
    {
        Description = "zero-and-repeat passes at most",
        DefaultValueFactory = _ => 10
    }.InRange(1, 100);
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
            int[] parsed = CliSupport.ParseIds(ids, "--prompt-tokens")!;
            if (parsed.Any(i => i >= model.Config.VocabSize))
                throw new SuperQuantException(ErrorCodes.InvalidArgument,
                    $"--prompt-tokens: id {parsed.First(i => i >= model.Config.VocabSize)} is outside the model's vocabulary [0, {model.Config.VocabSize})");
            // Detection looks at one prompt; longer than the context adds nothing and only costs memory.
            return (parsed.Length > model.Config.MaxPositionEmbeddings ? parsed[..model.Config.MaxPositionEmbeddings] : parsed, null);
        }
        string text = r.GetValue(Prompt) ?? SuperWeightDetector.PaperPrompt;
        try
        {
            int[] tokens = SuperQuant.Pipeline.Tokens.Tokenize(text, SuperQuant.Pipeline.Tokens.CheckpointFolder(modelPath), model.Config.VocabSize);
            return (tokens.Length > model.Config.MaxPositionEmbeddings ? tokens[..model.Config.MaxPositionEmbeddings] : tokens, text);
        }
        catch (SuperQuantException e) when (e.Code == ErrorCodes.TokenizerUnsupported)
        {
            throw new SuperQuantException(ErrorCodes.TokenizerUnsupported,
                $"{e.Message}. Without a tokenizer give the prompt as ids with --prompt-tokens.", e.FilePath, e);
        }
    }
}
