using System.Text.Json;
using System.Text.RegularExpressions;
using SuperQuant.Core;

namespace SuperQuant.Models.Text;

/// <summary>The two kinds of Hugging Face <c>tokenizer.json</c> the families we ship use.</summary>
public enum TokenizerJsonKind
{
    /// <summary>GPT-2-style byte-level BPE with a Split regex (Llama 3, Qwen2/3, OLMo, SmolLM3).</summary>
    ByteLevelBpe,
    /// <summary>A SentencePiece BPE model converted to json: spaces as '▁', byte fallback to &lt;0xXX&gt; pieces (Gemma 3,
    /// whose repository ships no tokenizer.model).</summary>
    SentencePieceBpe,
}

/// <summary>An added token of tokenizer.json (special: control tokens such as &lt;bos&gt;).</summary>
public sealed record AddedToken(int Id, string Content, bool Special);

/// <summary>
/// What a <c>tokenizer.json</c> says, read once and checked field by field: a malformed file is SQ2006 naming the file
/// and the field (never an exception from the JSON accessors, never a regex that can hang: split regexes get a match
/// timeout). The tokenizer (<see cref="TokenizerLoader"/>) and the GGUF vocabulary (<c>GgufVocabulary</c>) are both
/// built from it, so they cannot disagree about a token.
/// </summary>
public sealed record TokenizerJson
{
    /// <summary>How long one split-regex match may take: the families' regexes match a word in microseconds; a
    /// pathological (catastrophically backtracking) one fails with SQ2006 instead of hanging the build.</summary>
    public static readonly TimeSpan RegexTimeout = TimeSpan.FromSeconds(1);

    public required string Path { get; init; }
    public required TokenizerJsonKind Kind { get; init; }
    public required IReadOnlyDictionary<string, int> Vocab { get; init; }
    /// <summary>Merges in rank order.</summary>
    public required IReadOnlyList<(string Left, string Right)> Merges { get; init; }
    public required IReadOnlyList<AddedToken> Added { get; init; }
    /// <summary>The Split pre-tokenizer's regex (byte-level BPE), or null for GPT-2's default.</summary>
    public string? SplitRegex { get; init; }
    /// <summary>The normalizer applies Unicode NFC (Qwen).</summary>
    public bool Nfc { get; init; }
    /// <summary>Ids the post-processor puts before and after every single sequence (TemplateProcessing), e.g. Llama 3's
    /// &lt;|begin_of_text|&gt; and Gemma's &lt;bos&gt;; empty for Qwen, which adds nothing.</summary>
    public IReadOnlyList<int> Prefix { get; init; } = Array.Empty<int>();
    public IReadOnlyList<int> Suffix { get; init; } = Array.Empty<int>();
    public string? UnknownToken { get; init; }
    public bool ByteFallback { get; init; }
    /// <summary>BPE "ignore_merges": a pre-token found whole in the vocabulary is one token (Llama 3).</summary>
    public bool IgnoreMerges { get; init; }

    /// <summary>Largest id + 1 over the vocabulary and the added tokens.</summary>
    public int Count => Math.Max(Vocab.Count == 0 ? 0 : Vocab.Values.Max() + 1, Added.Count == 0 ? 0 : Added.Max(a => a.Id) + 1);

    /// <summary>Reads <paramref name="path"/>; null when it is a kind we do not read (WordPiece, Unigram, ...), SQ2006
    /// when it claims a supported kind but a field is missing or malformed.</summary>
    public static TokenizerJson? TryRead(string path)
    {
        try { return Read(path); }
        // System.Text.Json decodes escapes lazily: "\ud800" alone surfaces here, from a name or a string value.
        catch (InvalidOperationException e) when (e.Message.Contains("surrogate", StringComparison.OrdinalIgnoreCase)
            || e.Message.Contains("UTF", StringComparison.Ordinal))
        {
            throw new SuperQuantException(ErrorCodes.TokenizerUnsupported,
                $"{path}: a string in 'model.vocab', 'model.merges' or 'added_tokens' is not valid Unicode (a lone surrogate escape): {e.Message}", path, e);
        }
    }

    static TokenizerJson? Read(string path)
    {
        using var doc = JsonInput.Parse(path, ErrorCodes.TokenizerUnsupported);
        JsonElement root = doc.RootElement;
        SuperQuantException Bad(string field, string what) =>
            new(ErrorCodes.TokenizerUnsupported, $"{path}: '{field}' {what}", path);
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object) throw Bad("model", "is missing or not an object");
        if (Str(model, "type") is not string type) throw Bad("model.type", "is missing or not a string");
        if (type != "BPE") return null;
        bool byteLevel = Contains(root, "pre_tokenizer", "ByteLevel") || Contains(root, "decoder", "ByteLevel");
        bool byteFallback = model.TryGetProperty("byte_fallback", out var bf) && bf.ValueKind == JsonValueKind.True;
        bool spaceReplace = root.TryGetProperty("normalizer", out var norm) && Replaces(norm, " ", "\u2581");
        TokenizerJsonKind kind = byteLevel ? TokenizerJsonKind.ByteLevelBpe
            : byteFallback || spaceReplace ? TokenizerJsonKind.SentencePieceBpe
            : throw Bad("pre_tokenizer", "is neither byte-level (ByteLevel) nor SentencePiece-style ('▁' for spaces with byte_fallback): this BPE " +
                "tokenizer is not supported");

        if (!model.TryGetProperty("vocab", out var vocabJson) || vocabJson.ValueKind != JsonValueKind.Object) throw Bad("model.vocab",
            "is missing or not an object");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in vocabJson.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id) || id < 0 || id >= 1 << 24)
                throw Bad("model.vocab", $"maps '{Excerpt(p.Name)}' to {Excerpt(p.Value.GetRawText())}, not an id in [0, 2^24)");
            if (!WellFormed(p.Name)) throw Bad("model.vocab", $"has a token that is not valid Unicode (a lone surrogate) at id {id}");
            vocab[p.Name] = id;
        }
        if (vocab.Count == 0) throw Bad("model.vocab", "is empty");
        if (!model.TryGetProperty("merges", out var mergesJson) || mergesJson.ValueKind != JsonValueKind.Array) throw Bad("model.merges",
            "is missing or not an array");
        var merges = new List<(string, string)>(mergesJson.GetArrayLength());
        int index = 0;
        foreach (var m in mergesJson.EnumerateArray())
        {
            (string, string)? pair = m.ValueKind switch
            {
                // Older files store "a b", newer ones ["a", "b"].
                JsonValueKind.String when m.GetString()!.Split(' ') is { Length: 2 } parts => (parts[0], parts[1]),
                JsonValueKind.Array when m.GetArrayLength() == 2 && m[0].ValueKind == JsonValueKind.String
                    && m[1].ValueKind == JsonValueKind.String => (m[0].GetString()!, m[1].GetString()!),
                _ => null,
            };
            if (pair is not { } p) throw Bad($"model.merges[{index}]", $"is {Excerpt(m.GetRawText())}: expected \"a b\" or [\"a\", \"b\"]");
            merges.Add(p);
            index++;
        }

        var added = new List<AddedToken>();
        if (root.TryGetProperty("added_tokens", out var addedJson) && addedJson.ValueKind != JsonValueKind.Null)
        {
            if (addedJson.ValueKind != JsonValueKind.Array) throw Bad("added_tokens", "is not an array");
            int i = 0;
            foreach (var a in addedJson.EnumerateArray())
            {
                if (a.ValueKind != JsonValueKind.Object || Str(a, "content") is not string content
                    || !a.TryGetProperty("id", out var idJson) || idJson.ValueKind != JsonValueKind.Number || !idJson.TryGetInt32(out int id)
                        || id < 0 || id >= 1 << 24)
                    throw Bad($"added_tokens[{i}]", "needs a string 'content' and an 'id' in [0, 2^24)");
                if (!WellFormed(content)) throw Bad($"added_tokens[{i}].content", "is not valid Unicode (a lone surrogate)");
                added.Add(new AddedToken(id, content, a.TryGetProperty("special", out var sp) && sp.ValueKind == JsonValueKind.True));
                i++;
            }
        }

        string? split = SplitPattern(root, Bad);
        var (prefix, suffix) = Template(root, vocab, added, Bad);
        return new TokenizerJson
        {
            Path = path, Kind = kind, Vocab = vocab, Merges = merges, Added = added, SplitRegex = split,
            Nfc = root.TryGetProperty("normalizer", out var n) && Contains(n, "NFC"),
            Prefix = prefix, Suffix = suffix,
            UnknownToken = Str(model, "unk_token"), ByteFallback = byteFallback,
            IgnoreMerges = model.TryGetProperty("ignore_merges", out var im) && im.ValueKind == JsonValueKind.True,
        };
    }

    /// <summary>The Split pre-tokenizer's regex, compiled once here with a match timeout: an invalid pattern is SQ2006.</summary>
    static string? SplitPattern(JsonElement root, Func<string, string, SuperQuantException> bad)
    {
        if (!root.TryGetProperty("pre_tokenizer", out var pt) || pt.ValueKind != JsonValueKind.Object) return null;
        IEnumerable<JsonElement> all = pt.TryGetProperty("pretokenizers", out var list) && list.ValueKind == JsonValueKind.Array
            ? list.EnumerateArray() : new[] { pt };
        foreach (var p in all)
        {
            if (Str(p, "type") != "Split" || !p.TryGetProperty("pattern", out var pat) || pat.ValueKind != JsonValueKind.Object
                || !pat.TryGetProperty("Regex", out var rx)) continue;
            if (rx.ValueKind != JsonValueKind.String) throw bad("pre_tokenizer.pattern.Regex", "is not a string");
            string pattern = rx.GetString()!;
            try { _ = new Regex(pattern, RegexOptions.None, RegexTimeout); }
            catch (ArgumentException e) { throw bad("pre_tokenizer.pattern.Regex", $"is not a valid regular expression: {e.Message}"); }
            return pattern;
        }
        return null;
    }

    /// <summary>The TemplateProcessing post-processor's special tokens around a single sequence ("$A").</summary>
    static (int[] Prefix, int[] Suffix) Template(JsonElement root, Dictionary<string, int> vocab, List<AddedToken> added, Func<string, string,
        SuperQuantException> bad)
    {
        if (!root.TryGetProperty("post_processor", out var pp) || pp.ValueKind != JsonValueKind.Object) return (Array.Empty<int>(), Array.Empty<int>());
        IEnumerable<JsonElement> all = pp.TryGetProperty("processors", out var list) && list.ValueKind == JsonValueKind.Array ? list.EnumerateArray()
            : new[] { pp };
        foreach (var p in all)
        {
            if (Str(p, "type") != "TemplateProcessing") continue;
            if (!p.TryGetProperty("single", out var single) || single.ValueKind != JsonValueKind.Array) throw bad("post_processor.single",
                "is missing or not an array");
            var prefix = new List<int>();
            var suffix = new List<int>();
            bool seenSequence = false;
            foreach (var piece in single.EnumerateArray())
            {
                if (piece.ValueKind == JsonValueKind.Object && piece.TryGetProperty("Sequence", out _)) { seenSequence = true; continue; }
                if (piece.ValueKind != JsonValueKind.Object || !piece.TryGetProperty("SpecialToken", out var st) || Str(st, "id") is not string name)
                    throw bad("post_processor.single", "has an item that is neither a Sequence nor a SpecialToken with an id");
                int id = IdOfSpecial(p, name, vocab, added) ?? throw bad("post_processor.special_tokens", $"does not give an id for '{Excerpt(name)}'");
                (seenSequence ? suffix : prefix).Add(id);
            }
            return (prefix.ToArray(), suffix.ToArray());
        }
        return (Array.Empty<int>(), Array.Empty<int>());
    }

    static int? IdOfSpecial(JsonElement processor, string name, Dictionary<string, int> vocab, List<AddedToken> added)
    {
        if (processor.TryGetProperty("special_tokens", out var sts) && sts.ValueKind == JsonValueKind.Object && sts.TryGetProperty(name, out var st)
            && st.TryGetProperty("ids", out var ids) && ids.ValueKind == JsonValueKind.Array && ids.GetArrayLength() == 1
            && ids[0].ValueKind == JsonValueKind.Number && ids[0].TryGetInt32(out int id))
            return id;
        if (added.FirstOrDefault(a => a.Content == name) is { } a) return a.Id;
        return vocab.TryGetValue(name, out int v) ? v : null;
    }

    static bool Replaces(JsonElement normalizer, string from, string to)
    {
        if (normalizer.ValueKind != JsonValueKind.Object) return false;
        if (Str(normalizer, "type") == "Replace" && normalizer.TryGetProperty("pattern", out var p) && Str(p, "String") == from
            && Str(normalizer, "content") == to) return true;
        return normalizer.TryGetProperty("normalizers", out var list) && list.ValueKind == JsonValueKind.Array
            && list.EnumerateArray().Any(n => Replaces(n, from, to));
    }

    static bool Contains(JsonElement root, string key, string type)
    {
        if (!root.TryGetProperty(key, out var e)) return false;
        return Contains(e, type);
    }

    static bool Contains(JsonElement e, string type)
    {
        if (e.ValueKind != JsonValueKind.Object) return false;
        if (Str(e, "type") == type) return true;
        foreach (string list in new[] { "pretokenizers", "decoders", "normalizers", "processors" })
            if (e.TryGetProperty(list, out var items) && items.ValueKind == JsonValueKind.Array)
                foreach (var item in items.EnumerateArray()) if (Contains(item, type)) return true;
        return false;
    }

    static bool WellFormed(string s)
    {
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { i++; continue; }
            if (char.IsSurrogate(s[i])) return false;
        }
        return true;
    }

    static string Excerpt(string s) => s.Length <= 40 ? s : s[..40] + "...";

    static string? Str(JsonElement e, string key) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;
}
