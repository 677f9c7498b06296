using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;
using SuperQuant.Core;

namespace SuperQuant.Models.Text;

/// <summary>
/// Loads a checkpoint folder's tokenizer with Microsoft.ML.Tokenizers.
/// Supported: SentencePiece <c>tokenizer.model</c> (Llama 1/2, Mistral, Phi-3 ship one) and byte-level BPE
/// <c>tokenizer.json</c> (Llama 3, Qwen2, OLMo/GPT-NeoX). Not supported: tokenizer.json files of other model types
/// (WordPiece, Unigram) or SentencePiece-style BPE json without its tokenizer.model; those give SQ2006.
/// </summary>
public static class TokenizerLoader
{
    /// <summary>GPT-2's pre-tokenization regex, used when a ByteLevel pre-tokenizer has use_regex true.</summary>
    const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    public static Tokenizer Load(string checkpointFolder)
    {
        string model = Path.Combine(checkpointFolder, "tokenizer.model");
        string json = Path.Combine(checkpointFolder, "tokenizer.json");
        if (File.Exists(json) && IsByteLevelBpe(json)) return LoadByteLevelBpe(json);
        if (File.Exists(model))
        {
            DataFile.Require(model, "tokenizer model", ErrorCodes.TokenizerUnsupported);
            using var s = File.OpenRead(model);
            try { return LlamaTokenizer.Create(s, addBeginOfSentence: true, addEndOfSentence: false); }
            // Microsoft.ML.Tokenizers dereferences missing optional parts of a malformed model (e.g. no normalizer spec):
            // that is bad input, not a bug of ours, so it becomes the coded error too.
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException or InvalidDataException or NullReferenceException
                or Google.Protobuf.InvalidProtocolBufferException)
            {
                throw new SuperQuantException(ErrorCodes.TokenizerUnsupported, $"cannot read SentencePiece model {model}: {e.Message}", model, e);
            }
        }
        if (File.Exists(json))
            throw new SuperQuantException(ErrorCodes.TokenizerUnsupported,
                $"{json} is not a byte-level BPE tokenizer and no tokenizer.model is present; supported: SentencePiece tokenizer.model, byte-level BPE tokenizer.json. Use --tokens with a token-id file instead.", json);
        throw new SuperQuantException(ErrorCodes.TokenizerUnsupported,
            $"no tokenizer.model or tokenizer.json in {checkpointFolder}; evaluate with a token-id file (--tokens) instead", checkpointFolder);
    }

    static bool IsByteLevelBpe(string path)
    {
        using var doc = ParseJson(path);
        JsonElement root = doc.RootElement;
        if (!root.TryGetProperty("model", out var m) || Str(m, "type") != "BPE") return false;
        return ContainsType(root, "pre_tokenizer", "ByteLevel") || ContainsType(root, "decoder", "ByteLevel");
    }

    static bool ContainsType(JsonElement root, string key, string type)
    {
        if (!root.TryGetProperty(key, out var e) || e.ValueKind != JsonValueKind.Object) return false;
        if (Str(e, "type") == type) return true;
        foreach (string list in new[] { "pretokenizers", "decoders" })
            if (e.TryGetProperty(list, out var items) && items.ValueKind == JsonValueKind.Array)
                foreach (var item in items.EnumerateArray()) if (Str(item, "type") == type) return true;
        return false;
    }

    static Tokenizer LoadByteLevelBpe(string path)
    {
        using var doc = ParseJson(path);
        JsonElement root = doc.RootElement, model = root.GetProperty("model");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in model.GetProperty("vocab").EnumerateObject()) vocab[p.Name] = p.Value.GetInt32();
        var merges = new List<string>();
        foreach (var m in model.GetProperty("merges").EnumerateArray())
            // Older files store "a b", newer ones ["a", "b"].
            merges.Add(m.ValueKind == JsonValueKind.Array ? $"{m[0].GetString()} {m[1].GetString()}" : m.GetString()!);
        var special = new Dictionary<string, int>(StringComparer.Ordinal);
        if (root.TryGetProperty("added_tokens", out var added) && added.ValueKind == JsonValueKind.Array)
            foreach (var t in added.EnumerateArray())
                if (t.TryGetProperty("special", out var sp) && sp.ValueKind == JsonValueKind.True)
                    special[t.GetProperty("content").GetString()!] = t.GetProperty("id").GetInt32();

        var options = new BpeOptions(vocab)
        {
            Merges = merges,
            ByteLevel = true,
            SpecialTokens = special.Count > 0 ? special : null,
            PreTokenizer = new RegexPreTokenizer(new Regex(SplitPattern(root) ?? Gpt2Pattern, RegexOptions.Compiled), special.Count > 0 ? special : null),
        };
        try { return BpeTokenizer.Create(options); }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException)
        {
            throw new SuperQuantException(ErrorCodes.TokenizerUnsupported, $"cannot build a BPE tokenizer from {path}: {e.Message}", path, e);
        }
    }

    /// <summary>The regex of a "Split" pre-tokenizer (Llama 3, Qwen2 use one inside a Sequence), if any.</summary>
    static string? SplitPattern(JsonElement root)
    {
        if (!root.TryGetProperty("pre_tokenizer", out var pt) || pt.ValueKind != JsonValueKind.Object) return null;
        IEnumerable<JsonElement> all = pt.TryGetProperty("pretokenizers", out var list) && list.ValueKind == JsonValueKind.Array
            ? list.EnumerateArray() : new[] { pt };
        foreach (var p in all)
            if (Str(p, "type") == "Split" && p.TryGetProperty("pattern", out var pat) && pat.TryGetProperty("Regex", out var rx))
                return rx.GetString();
        return null;
    }

    static JsonDocument ParseJson(string path) => JsonInput.Parse(path, ErrorCodes.TokenizerUnsupported);

    static string? Str(JsonElement e, string key) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;
}
