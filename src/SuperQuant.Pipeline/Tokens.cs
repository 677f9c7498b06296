using SuperQuant.Core;
using SuperQuant.Models.Text;

namespace SuperQuant.Pipeline;

/// <summary>Token streams for evaluation, calibration and prompts: token-id files, or text through the checkpoint's
/// own tokenizer, with exactly the special tokens its family's tokenizer adds (Llama 3 and Gemma: BOS; Qwen: none).</summary>
public static class Tokens
{
    public static string CheckpointFolder(string modelPath) =>
        Directory.Exists(modelPath) ? modelPath : Path.GetDirectoryName(Path.GetFullPath(modelPath))!;

    /// <param name="minimum">Fewer tokens is an error naming the file (evaluation needs 2).</param>
    public static int[] Load(TokenSource source, string tokenizerFolder, int vocabSize, int minimum = 1)
    {
        int[] ids = source.IsText ? Tokenize(ReadText(source.Path), tokenizerFolder, vocabSize, source.Path)
            : TokenIdFile.Read(source.Path, vocabSize, minimum);
        if (ids.Length < minimum)
            throw new SuperQuantException(ErrorCodes.TokenFileInvalid,
                $"{source.Path}: {ids.Length} token{(ids.Length == 1 ? "" : "s")} after tokenizing; at least {minimum} needed", source.Path);
        return ids;
    }

    static string ReadText(string path)
    {
        using var reader = SuperQuant.Models.DataFile.OpenUtf8(path, "text file", ErrorCodes.TokenFileInvalid);
        if (reader.BaseStream.Length > TokenIdFile.MaxBytes)
            throw new SuperQuantException(ErrorCodes.TokenFileInvalid, $"{path}: larger than {TokenIdFile.MaxBytes >> 20} MiB", path);
        try { return reader.ReadToEnd(); }
        catch (System.Text.DecoderFallbackException) { throw new SuperQuantException(ErrorCodes.TokenFileInvalid, $"{path}: not valid UTF-8 text", path); }
    }

    /// <summary>Tokenizes with the checkpoint's tokenizer.</summary>
    public static int[] Tokenize(string text, string tokenizerFolder, int vocabSize, string? what = null) =>
        Encode(TokenizerLoader.Load(tokenizerFolder), text, tokenizerFolder, vocabSize, what);

    /// <summary>The checkpoint's tokenizer loaded once, as a function (many short texts: task prompts).</summary>
    public static Func<string, int[]> Encoder(string tokenizerFolder, int vocabSize)
    {
        var tok = TokenizerLoader.Load(tokenizerFolder);
        return text => Encode(tok, text, tokenizerFolder, vocabSize, null);
    }

    static int[] Encode(TextTokenizer tok, string text, string tokenizerFolder, int vocabSize, string? what)
    {
        int[] ids = tok.Encode(text);
        int bad = Array.FindIndex(ids, i => i < 0 || i >= vocabSize);
        if (bad >= 0)
            throw new SuperQuantException(ErrorCodes.TokenizerUnsupported,
                $"the tokenizer in {tokenizerFolder} produced id {ids[bad]}{(what is null ? "" : " for " + what)}, outside the model's vocabulary of " +
                $"{vocabSize}", tokenizerFolder);
        return ids;
    }
}
