using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Manifest;

namespace SuperQuant.Pipeline.Stages;

/// <summary>The token streams of a run: evaluation, calibration and the detection prompt, with the window plan.</summary>
sealed record RunData(string Tokenizer, int Context, int Stride, int[]? Evaluation, int[]? Calibration, int[] Prompt, bool Detects);

/// <summary>Data: read the evaluation and calibration tokens and choose the detection prompt.</summary>
static class DataStage
{
    public static RunData Run(QuantizationRequest r, LlamaConfig c)
    {
        string tokenizer = r.TokenizerFolder ?? Tokens.CheckpointFolder(r.Checkpoint);
        int ctx = Math.Min(r.Context, c.MaxPositionEmbeddings), stride = Math.Max(1, ctx / 2);
        int[]? eval = r.Evaluation is { } ev ? Tokens.Load(ev, tokenizer, c.VocabSize, minimum: 2) : null;
        int[]? calibration = r.Calibration is { } cal ? Tokens.Load(cal, tokenizer, c.VocabSize, minimum: 2) : null;
        // Detection needs a prompt; an export that quantizes nothing by super weights (rtn, or only F16/BF16
        // GGUF files) needs neither, so a checkpoint without a tokenizer needs no --prompt-tokens for it.
        bool detect = (r.Method == QuantMethod.SuperAware && (r.Packed is not null || r.Ggufs.Any(g => !g.Type.IsFloat())))
            || r.Method.Transforms() || r.ActivationBits < 16;
        int[] prompt = detect ? Prompt(r, c, tokenizer, calibration, eval) : Array.Empty<int>();
        return new RunData(tokenizer, ctx, stride, eval, calibration, prompt, detect);
    }

    /// <summary>The detection prompt: given ids (checked against the vocabulary), text, or the first tokens of the
    /// calibration (else evaluation) stream; at most the model's context (a longer prompt adds nothing to detection).</summary>
    static int[] Prompt(QuantizationRequest r, LlamaConfig c, string tokenizer, int[]? calibration, int[]? eval)
    {
        int[] ids;
        if (r.PromptTokens is { } given)
        {
            int bad = Array.FindIndex(given, i => i < 0 || i >= c.VocabSize);
            if (given.Length == 0 || bad >= 0)
                throw r.PromptOrigin.Error(given.Length == 0 ? "the prompt has no token ids"
                    : $"token id {given[bad]} is outside the model's vocabulary [0, {c.VocabSize})");
            ids = given;
        }
        else if (r.PromptText is string text) ids = Tokens.Tokenize(text, tokenizer, c.VocabSize, "the prompt");
        else if ((calibration ?? eval) is { } stream) ids = stream[..Math.Min(10, stream.Length)];
        else
        {
            try { ids = Tokens.Tokenize(SuperWeightDetector.PaperPrompt, tokenizer, c.VocabSize, "the prompt"); }
            catch (SuperQuantException e) when (e.Code == ErrorCodes.TokenizerUnsupported)
            {
                throw r.PromptOrigin.Error("the checkpoint has no tokenizer: give the detection prompt as token ids, or calibration data");
            }
        }
        return ids.Length > c.MaxPositionEmbeddings ? ids[..c.MaxPositionEmbeddings] : ids;
    }
}
