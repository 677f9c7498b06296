using System.Text.Json;
using Google.Protobuf;
using SuperQuant.Core.Llama;
using SuperQuant.Models.Text;

namespace SuperQuant.Models.Gguf;

/// <summary>llama.cpp's token types; the same numbers as SentencePiece's piece types.</summary>
public enum GgufTokenType { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 }

/// <summary>
/// The tokenizer part of a GGUF file ("tokenizer.ggml.*"), so llama.cpp / LLamaSharp can tokenize text. Two sources,
/// as in llama.cpp's convert_hf_to_gguf.py: a SentencePiece <c>tokenizer.model</c> (Llama 1/2, Mistral: model "llama",
/// with each piece's score and type), or a byte-level BPE <c>tokenizer.json</c> (Llama 3: model "gpt2" with its merges
/// and pre-tokenizer "llama-bpe"). A vocabulary shorter than the embedding is padded with unused "[PAD{id}]" tokens,
/// as the converter does. Anything else (no tokenizer, llama2.c, SentencePiece-style BPE json without its .model) gives
/// null and the writer declares "no_vocab".
/// </summary>
public sealed record GgufVocabulary
{
    /// <summary>One line for logs: what was found.</summary>
    public override string ToString() => $"{Model}{(Pre is null ? "" : "/" + Pre)} vocabulary, {Tokens.Count} " +
        $"tokens{(Merges is null ? "" : $", {Merges.Count} merges")}";

    /// <summary>"llama" (SentencePiece) or "gpt2" (byte-level BPE).</summary>
    public required string Model { get; init; }
    public string? Pre { get; init; }
    public required IReadOnlyList<string> Tokens { get; init; }
    public float[]? Scores { get; init; }
    public required int[] TokenTypes { get; init; }
    public IReadOnlyList<string>? Merges { get; init; }
    public int? BosId { get; init; }
    public int? EosId { get; init; }
    public int? UnknownId { get; init; }
    public int? PaddingId { get; init; }
    public bool AddBos { get; init; }
    public bool AddEos { get; init; }
    /// <summary>What llama.cpp will tokenize differently from the checkpoint's tokenizer (no GGUF key can say it).</summary>
    public IReadOnlyList<string> RuntimeDifferences { get; init; } = Array.Empty<string>();
    /// <summary>SentencePiece's dummy prefix (a '▁' before the text); null leaves llama.cpp's default (true).</summary>
    public bool? AddSpacePrefix { get; init; }
    /// <summary>Chat templates (Jinja) by name; "" is the default (tokenizer.chat_template), others are written as
    /// tokenizer.chat_template.NAME, as llama.cpp's converter does. LLamaSharp and llama.cpp apply the default one.</summary>
    public IReadOnlyDictionary<string, string> ChatTemplates { get; init; } = new Dictionary<string, string>();

    /// <summary>Largest chat template read: real ones are a few KB.</summary>
    const long MaxTemplateBytes = 1 << 20;

    /// <summary>The vocabulary of a checkpoint folder (or of the folder holding a checkpoint file), or null.</summary>
    public static GgufVocabulary? FromCheckpoint(string checkpoint, LlamaConfig config)
    {
        string folder = Directory.Exists(checkpoint) ? checkpoint : Path.GetDirectoryName(Path.GetFullPath(checkpoint))!;
        string spm = Path.Combine(folder, "tokenizer.model"), json = Path.Combine(folder, "tokenizer.json");
        try
        {
            GgufVocabulary? v = File.Exists(spm) ? FromSentencePiece(spm) : File.Exists(json) ? FromTokenizerJson(json) : null;
            if (v is null) return null;
            v = Settings(folder, v);
            if (v.Tokens.Count > config.VocabSize)
                throw new InvalidDataException($"the tokenizer has {v.Tokens.Count} tokens but the model's vocabulary is {config.VocabSize}");
            return Pad(v, config.VocabSize);
        }
        catch (Exception e) when (e is InvalidDataException or JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw new SuperQuant.Core.SuperQuantException(SuperQuant.Core.ErrorCodes.TokenizerUnsupported,
                $"cannot export the tokenizer in {folder} to GGUF: {e.Message}", folder, e);
        }
    }

    /// <summary>
    /// Reads a SentencePiece ModelProto with Google.Protobuf's wire-format reader (no generated classes: three fields
    /// of one message are all we need): pieces (field 1: piece = 1, score = 2, type = 3) and the trainer spec's
    /// special ids (field 2: unk_id = 40, bos_id = 41, eos_id = 42, pad_id = 43).
    /// </summary>
    public static GgufVocabulary FromSentencePiece(string path)
    {
        var tokens = new List<string>();
        var scores = new List<float>();
        var types = new List<int>();
        int unk = 0, bos = 1, eos = 2, pad = -1;
        DataFile.Require(path, "tokenizer model", SuperQuant.Core.ErrorCodes.TokenizerUnsupported);
        try
        {
            using var input = new CodedInputStream(File.OpenRead(path));
            uint tag;
            while ((tag = input.ReadTag()) != 0)
            {
                int field = WireFormat.GetTagFieldNumber(tag);
                if (field == 1 && WireFormat.GetTagWireType(tag) == WireFormat.WireType.LengthDelimited)
                {
                    var piece = new CodedInputStream(input.ReadBytes().ToByteArray());
                    string text = ""; float score = 0; int type = (int)GgufTokenType.Normal;
                    uint t;
                    while ((t = piece.ReadTag()) != 0)
                        switch (WireFormat.GetTagFieldNumber(t))
                        {
                            case 1: text = piece.ReadString(); break;
                            case 2: score = piece.ReadFloat(); break;
                            case 3: type = piece.ReadEnum(); break;
                            default: piece.SkipLastField(); break;
                        }
                    tokens.Add(text); scores.Add(score); types.Add(type);
                }
                else if (field == 2 && WireFormat.GetTagWireType(tag) == WireFormat.WireType.LengthDelimited)
                {
                    var spec = new CodedInputStream(input.ReadBytes().ToByteArray());
                    uint t;
                    while ((t = spec.ReadTag()) != 0)
                        switch (WireFormat.GetTagFieldNumber(t))
                        {
                            case 40: unk = spec.ReadInt32(); break;
                            case 41: bos = spec.ReadInt32(); break;
                            case 42: eos = spec.ReadInt32(); break;
                            case 43: pad = spec.ReadInt32(); break;
                            default: spec.SkipLastField(); break;
                        }
                }
                else input.SkipLastField();
            }
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new InvalidDataException($"{path} is not a SentencePiece model: {e.Message}", e);
        }
        if (tokens.Count == 0) throw new InvalidDataException($"{path} has no pieces");
        int? Id(int id) => id >= 0 && id < tokens.Count ? id : null;
        return new GgufVocabulary
        {
            Model = "llama", Tokens = tokens, Scores = scores.ToArray(), TokenTypes = types.ToArray(),
            UnknownId = Id(unk), BosId = Id(bos), EosId = Id(eos), PaddingId = Id(pad), AddBos = true,
        };
    }

    /// <summary>A tokenizer.json as llama.cpp's converter writes it: byte-level BPE as model "gpt2" with its merges and
    /// the pre-tokenizer its split regex is (llama.cpp picks its regex by that name); SentencePiece-style BPE (Gemma 3,
    /// no tokenizer.model) as model "llama" with pieces, merge-ordered scores and types
    /// (<see cref="TokenizerLoader.SentencePiecePieces"/>: the same pieces our own tokenizer runs). BOS/EOS are added
    /// as the post-processor adds them (the converter's SpecialVocab reads the same TemplateProcessing). Null for kinds
    /// llama.cpp cannot run from this file (the reason is <see cref="MissingReason"/>).</summary>
    public static GgufVocabulary? FromTokenizerJson(string path)
    {
        if (TokenizerJson.TryRead(path) is not { } t) return null;
        int? bos = t.Prefix.Count > 0 ? t.Prefix[0] : null, eos = t.Suffix.Count > 0 ? t.Suffix[^1] : null;
        if (t.Kind == TokenizerJsonKind.SentencePieceBpe)
        {
            var pieces = TokenizerLoader.SentencePiecePieces(t);
            int? Id(string? token) => token is not null && t.Vocab.TryGetValue(token, out int id) ? id : null;
            int? pad = t.Added.FirstOrDefault(a => a.Content is "<pad>" or "[PAD]")?.Id;
            return new GgufVocabulary
            {
                Model = "llama", Tokens = pieces.Select(p => p.Text).ToList(), Scores = pieces.Select(p => p.Score).ToArray(),
                TokenTypes = pieces.Select(p => p.Type).ToArray(),
                UnknownId = Id(t.UnknownToken), BosId = bos, EosId = eos, PaddingId = pad, AddBos = bos is not null, AddEos = eos is not null,
                AddSpacePrefix = false, // '▁' only where the text has a space: no dummy prefix (no Prepend normalizer)
            };
        }
        var byId = new SortedDictionary<int, (string Text, GgufTokenType Type)>();
        foreach (var (text, id) in t.Vocab) byId[id] = (text, GgufTokenType.Normal);
        foreach (var a in t.Added) byId[a.Id] = (a.Content, a.Special ? GgufTokenType.Control : GgufTokenType.UserDefined);
        int count = t.Count;
        var tokens = new string[count];
        var types = new int[count];
        for (int i = 0; i < count; i++)
        {
            var (text, type) = byId.TryGetValue(i, out var e) ? e : ($"[PAD{i}]", GgufTokenType.Unused);
            tokens[i] = text; types[i] = (int)type;
        }
        string pre = PreTokenizerName(t.SplitRegex);
        var differences = new List<string>();
        if (t.Nfc)
            differences.Add($"{path} normalizes text to Unicode NFC, llama.cpp does not: text with decomposed characters (combining accents) " +
                $"tokenizes differently there unless the app passes string.Normalize() text");
        if (pre == "gpt-4o")
            differences.Add($"llama.cpp's gpt-4o split approximates the o200k regex of {path} (letter case by ASCII ranges): text mixing combining " +
                $"marks or non-Latin letters with punctuation or newlines can tokenize differently there");
        if (pre == "default")
            differences.Add($"llama.cpp has no pre-tokenizer for the split regex of {path}: it splits text with its default rules");
        return new GgufVocabulary
        {
            Model = "gpt2", Pre = pre, Tokens = tokens, TokenTypes = types, RuntimeDifferences = differences,
            Merges = t.Merges.Select(m => $"{m.Left} {m.Right}").ToList(),
            BosId = bos, EosId = eos, AddBos = bos is not null, AddEos = eos is not null,
        };
    }

    /// <summary>llama.cpp's pre-tokenizer names (src/llama-vocab.cpp) for the split regexes of the families we read. Its
    /// converter identifies them by hashing a tokenization; the regex is what that hash stands for.</summary>
    static readonly Dictionary<string, string> PreTokenizers = new(StringComparer.Ordinal)
    {
        [@"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"] = "llama-bpe",
        [@"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"] = "qwen2",
        // o200k (Phi-4-mini): llama.cpp's LLAMA_VOCAB_PRE_TYPE_GPT4O.
        [@"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|" +
            @"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|" +
            @"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"] = "gpt-4o",
    };

    /// <summary>The pre-tokenizer name llama.cpp knows for <paramref name="regex"/> (null: GPT-2's own ByteLevel regex).</summary>
    public static string PreTokenizerName(string? regex) =>
        regex is null ? "gpt-2" : PreTokenizers.TryGetValue(regex, out var name) ? name : "default";

    /// <summary>Why a checkpoint folder's tokenizer cannot travel in a GGUF (for the export's warning), or null when it can
    /// or there is none.</summary>
    public static string? MissingReason(string checkpoint)
    {
        string folder = Directory.Exists(checkpoint) ? checkpoint : Path.GetDirectoryName(Path.GetFullPath(checkpoint))!;
        string spm = Path.Combine(folder, "tokenizer.model"), json = Path.Combine(folder, "tokenizer.json");
        if (File.Exists(spm)) return null;
        if (File.Exists(json))
            return TokenizerJson.TryRead(json) is null ? $"{json} is a kind llama.cpp's GGUF vocabulary cannot carry (not BPE)" : null;
        return checkpoint.EndsWith(".bin", StringComparison.OrdinalIgnoreCase) ? "a llama2.c checkpoint has no tokenizer"
            : $"no tokenizer.model or tokenizer.json in {folder}";
    }

    /// <summary>Special ids and add_bos/add_eos from config.json / tokenizer_config.json where they say so.</summary>
    static GgufVocabulary Settings(string folder, GgufVocabulary v)
    {
        int? Int(JsonElement e) => e.ValueKind == JsonValueKind.Number ? e.GetInt32() : e.ValueKind == JsonValueKind.Array && e.GetArrayLength() > 0
            ? Int(e[0]) : null;
        string config = Path.Combine(folder, "config.json"), tokenizerConfig = Path.Combine(folder, "tokenizer_config.json");
        if (File.Exists(config))
        {
            using var d = JsonInput.Parse(config, SuperQuant.Core.ErrorCodes.TokenizerUnsupported);
            if (d.RootElement.TryGetProperty("bos_token_id", out var b) && Int(b) is int bos) v = v with { BosId = bos };
            if (d.RootElement.TryGetProperty("eos_token_id", out var e) && Int(e) is int eos) v = v with { EosId = eos };
        }
        if (File.Exists(tokenizerConfig))
        {
            using var d = JsonInput.Parse(tokenizerConfig, SuperQuant.Core.ErrorCodes.TokenizerUnsupported);
            if (d.RootElement.TryGetProperty("add_bos_token", out var ab)
                && ab.ValueKind is JsonValueKind.True or JsonValueKind.False) v = v with { AddBos = ab.GetBoolean() };
            if (d.RootElement.TryGetProperty("add_eos_token", out var ae)
                && ae.ValueKind is JsonValueKind.True or JsonValueKind.False) v = v with { AddEos = ae.GetBoolean() };
        }
        return v with { ChatTemplates = ChatTemplatesIn(folder, tokenizerConfig) };
    }

    /// <summary>chat_template.jinja (newer transformers save the template there), else tokenizer_config.json's
    /// "chat_template": a string, or a list of {name, template} (the one named "default" becomes the default).</summary>
    static Dictionary<string, string> ChatTemplatesIn(string folder, string tokenizerConfig)
    {
        var templates = new Dictionary<string, string>(StringComparer.Ordinal);
        string jinja = Path.Combine(folder, "chat_template.jinja");
        if (File.Exists(jinja))
        {
            using var reader = DataFile.OpenUtf8(jinja, "chat template", SuperQuant.Core.ErrorCodes.TokenizerUnsupported);
            if (reader.BaseStream.Length > MaxTemplateBytes) throw new InvalidDataException($"{jinja} is larger than {MaxTemplateBytes >> 20} MiB");
            templates[""] = reader.ReadToEnd();
            return templates;
        }
        if (!File.Exists(tokenizerConfig)) return templates;
        using var d = JsonInput.Parse(tokenizerConfig, SuperQuant.Core.ErrorCodes.TokenizerUnsupported);
        if (!d.RootElement.TryGetProperty("chat_template", out var t)) return templates;
        if (t.ValueKind == JsonValueKind.String) templates[""] = t.GetString()!;
        else if (t.ValueKind == JsonValueKind.Array)
            foreach (var item in t.EnumerateArray())
            {
                if (item.ValueKind != JsonValueKind.Object || !item.TryGetProperty("name", out var n) || n.ValueKind != JsonValueKind.String
                    || !item.TryGetProperty("template", out var body) || body.ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"{tokenizerConfig}: a chat_template list item needs string 'name' and 'template'");
                string name = n.GetString()!;
                if (name.Length == 0 || name.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '_' or '-')))
                    throw new InvalidDataException($"{tokenizerConfig}: chat template name '{name}' (letters, digits, '_' and '-')");
                templates[name == "default" ? "" : name] = body.GetString()!;
            }
        else if (t.ValueKind != JsonValueKind.Null) throw new InvalidDataException($"{tokenizerConfig}: chat_template is a JSON {t.ValueKind}, " +
            $"expected a string or a list");
        return templates;
    }

    static GgufVocabulary Pad(GgufVocabulary v, int size)
    {
        if (v.Tokens.Count == size) return v;
        int n = v.Tokens.Count;
        return v with
        {
            Tokens = v.Tokens.Concat(Enumerable.Range(n, size - n).Select(i => $"[PAD{i}]")).ToList(),
            Scores = v.Scores?.Concat(Enumerable.Repeat(-1000f, size - n)).ToArray(),
            TokenTypes = v.TokenTypes.Concat(Enumerable.Repeat((int)GgufTokenType.Unused, size - n)).ToArray(),
        };
    }

    /// <summary>The GGUF key/value pairs (llama.cpp's names).</summary>
    public IEnumerable<(string Key, GgufValueType Type, object Value)> Metadata()
    {
        yield return ("tokenizer.ggml.model", GgufValueType.String, Model);
        if (Pre is not null) yield return ("tokenizer.ggml.pre", GgufValueType.String, Pre);
        yield return ("tokenizer.ggml.tokens", GgufValueType.Array, new GgufArray(GgufValueType.String, Tokens.Cast<object>().ToArray()));
        if (Scores is not null) yield return ("tokenizer.ggml.scores", GgufValueType.Array,
            new GgufArray(GgufValueType.Float32, Scores.Cast<object>().ToArray()));
        yield return ("tokenizer.ggml.token_type", GgufValueType.Array, new GgufArray(GgufValueType.Int32, TokenTypes.Cast<object>().ToArray()));
        if (Merges is not null) yield return ("tokenizer.ggml.merges", GgufValueType.Array,
            new GgufArray(GgufValueType.String, Merges.Cast<object>().ToArray()));
        if (BosId is int b) yield return ("tokenizer.ggml.bos_token_id", GgufValueType.UInt32, (uint)b);
        if (EosId is int e) yield return ("tokenizer.ggml.eos_token_id", GgufValueType.UInt32, (uint)e);
        if (UnknownId is int u) yield return ("tokenizer.ggml.unknown_token_id", GgufValueType.UInt32, (uint)u);
        if (PaddingId is int p) yield return ("tokenizer.ggml.padding_token_id", GgufValueType.UInt32, (uint)p);
        yield return ("tokenizer.ggml.add_bos_token", GgufValueType.Bool, AddBos);
        yield return ("tokenizer.ggml.add_eos_token", GgufValueType.Bool, AddEos);
        if (AddSpacePrefix is bool prefix) yield return ("tokenizer.ggml.add_space_prefix", GgufValueType.Bool, prefix);
        foreach (var (name, template) in ChatTemplates.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            yield return (name.Length == 0 ? "tokenizer.chat_template" : "tokenizer.chat_template." + name, GgufValueType.String, template);
    }
}

/// <summary>A typed GGUF array value.</summary>
public sealed record GgufArray(GgufValueType ElementType, object[] Items);
