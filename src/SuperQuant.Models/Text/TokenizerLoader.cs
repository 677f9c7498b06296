using System.Text;
using System.Text.RegularExpressions;
using Google.Protobuf;
using Microsoft.ML.Tokenizers;
using SuperQuant.Core;

namespace SuperQuant.Models.Text;

/// <summary>
/// A checkpoint's tokenizer as its family uses it: Microsoft.ML.Tokenizers does the splitting and merging; this adds
/// what the Hugging Face post-processor and normalizer say around it (BOS/EOS from TemplateProcessing, Qwen's NFC),
/// so the ids are the reference implementation's ids.
/// </summary>
public sealed class TextTokenizer
{
    readonly Tokenizer _inner;
    readonly int[] _prefix, _suffix;
    readonly bool _nfc;

    internal TextTokenizer(Tokenizer inner, IReadOnlyList<int> prefix, IReadOnlyList<int> suffix, bool nfc, int? endOfSequence)
    {
        _inner = inner; _prefix = prefix.ToArray(); _suffix = suffix.ToArray(); _nfc = nfc; EndOfSequenceId = endOfSequence;
    }

    /// <summary>The token generation stops at, when the tokenizer knows one.</summary>
    public int? EndOfSequenceId { get; }

    /// <summary>The ids of <paramref name="text"/>, with the family's special tokens around them (Llama 3 and Gemma:
    /// BOS; Qwen: none).</summary>
    public int[] Encode(string text)
    {
        if (_nfc) text = text.Normalize(NormalizationForm.FormC);
        IReadOnlyList<int> ids;
        try { ids = _inner.EncodeToIds(text); }
        catch (RegexMatchTimeoutException e)
        {
            throw new SuperQuantException(ErrorCodes.TokenizerUnsupported,
                $"the tokenizer's split regex took longer than {TokenizerJson.RegexTimeout.TotalSeconds:F0} s on one match: it backtracks " +
                $"catastrophically ({e.Pattern})");
        }
        return _prefix.Concat(ids).Concat(_suffix).ToArray();
    }

    /// <summary>The ids of <paramref name="text"/> without the special tokens the post-processor adds.</summary>
    public int[] EncodeWithoutSpecials(string text)
    {
        int[] all = Encode(text);
        return all[_prefix.Length..(all.Length - _suffix.Length)];
    }

    public string Decode(IEnumerable<int> ids) => _inner.Decode(ids) ?? "";
}

/// <summary>
/// Loads a checkpoint folder's tokenizer. Supported: SentencePiece <c>tokenizer.model</c> (Llama 1/2, Mistral, Phi-3),
/// byte-level BPE <c>tokenizer.json</c> (Llama 3, Qwen2/3, OLMo, SmolLM3) and SentencePiece-style BPE
/// <c>tokenizer.json</c> without its .model (Gemma 3). Others (WordPiece, Unigram) give SQ2006, as does any malformed
/// file (naming the field).
/// </summary>
public static class TokenizerLoader
{
    /// <summary>GPT-2's pre-tokenization regex, used when a ByteLevel pre-tokenizer has use_regex true.</summary>
    const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    public static TextTokenizer Load(string checkpointFolder)
    {
        string model = Path.Combine(checkpointFolder, "tokenizer.model");
        string json = Path.Combine(checkpointFolder, "tokenizer.json");
        // tokenizer.json first: it carries the post-processor (which special tokens are added) that .model lacks.
        if (File.Exists(json) && TokenizerJson.TryRead(json) is { } t)
            return t.Kind == TokenizerJsonKind.ByteLevelBpe ? ByteLevelBpe(t) : SentencePieceBpe(t);
        if (File.Exists(model))
        {
            DataFile.Require(model, "tokenizer model", ErrorCodes.TokenizerUnsupported);
            using var s = File.OpenRead(model);
            try
            {
                var spm = LlamaTokenizer.Create(s, addBeginOfSentence: true, addEndOfSentence: false);
                return new TextTokenizer(spm, Array.Empty<int>(), Array.Empty<int>(), nfc: false, spm.EndOfSentenceId);
            }
            // Microsoft.ML.Tokenizers dereferences missing optional parts of a malformed model (e.g. no normalizer spec):
            // that is bad input, not a bug of ours, so it becomes the coded error too.
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException or InvalidDataException or NullReferenceException
                or InvalidProtocolBufferException)
            {
                throw new SuperQuantException(ErrorCodes.TokenizerUnsupported, $"cannot read SentencePiece model {model}: {e.Message}", model, e);
            }
        }
        if (File.Exists(json))
            throw new SuperQuantException(ErrorCodes.TokenizerUnsupported,
                $"{json} is not a BPE tokenizer (byte-level or SentencePiece-style) and no tokenizer.model is present. Use --tokens with a token-id " +
                    $"file instead.", json);
        throw new SuperQuantException(ErrorCodes.TokenizerUnsupported,
            $"no tokenizer.model or tokenizer.json in {checkpointFolder}; evaluate with a token-id file (--tokens) instead", checkpointFolder);
    }

    static TextTokenizer ByteLevelBpe(TokenizerJson t)
    {
        // Every added token is matched in the text before BPE, special or not (Hugging Face's default).
        var added = AddedByLength(t);
        var options = new BpeOptions(t.Vocab)
        {
            Merges = t.Merges.Select(m => $"{m.Left} {m.Right}"),
            ByteLevel = true,
            SpecialTokens = added.Count > 0 ? added : null,
            PreTokenizer = new RegexPreTokenizer(new Regex(t.SplitRegex ?? Gpt2Pattern, RegexOptions.Compiled, TokenizerJson.RegexTimeout),
                added.Count > 0 ? added : null),
        };
        Tokenizer bpe;
        try { bpe = BpeTokenizer.Create(options); }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or KeyNotFoundException)
        {
            throw new SuperQuantException(ErrorCodes.TokenizerUnsupported, $"cannot build a BPE tokenizer from {t.Path}: {e.Message}", t.Path, e);
        }
        return new TextTokenizer(bpe, t.Prefix, t.Suffix, t.Nfc, EndOfSequence(t));
    }

    /// <summary>
    /// A SentencePiece-style BPE tokenizer.json (Gemma 3 ships no tokenizer.model): its pieces are written back as the
    /// SentencePiece model they were converted from (<see cref="SentencePiecePieces"/>) and read by
    /// Microsoft.ML.Tokenizers' SentencePiece BPE, whose merge-by-score is the algorithm llama.cpp's "llama" vocabulary
    /// runs too. Microsoft.ML.Tokenizers has no byte fallback in its json BPE, hence the detour through a model proto.
    /// </summary>
    static TextTokenizer SentencePieceBpe(TokenizerJson t)
    {
        // Added tokens are matched in the raw text before the model (Hugging Face): in the proto they are ordinary pieces
        // with their merge scores (SentencePiece would match user-defined pieces in the normalized text, where Gemma's
        // "▁▁" would swallow the spaces before a word).
        var pieces = SentencePiecePieces(t).Select(p => p.Type == 4 ? p with { Type = 1 } : p).ToArray();
        var specials = AddedByLength(t);
        int Id(string? token) => token is not null && t.Vocab.TryGetValue(token, out int id) ? id : -1;
        byte[] proto = ModelProto(pieces, unk: Id(t.UnknownToken), byteFallback: t.ByteFallback);
        try
        {
            var spm = LlamaTokenizer.Create(new MemoryStream(proto), addBeginOfSentence: false, addEndOfSentence: false,
                specialTokens: specials.Count > 0 ? specials : null);
            return new TextTokenizer(spm, t.Prefix, t.Suffix, nfc: t.Nfc, EndOfSequence(t));
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException or InvalidProtocolBufferException)
        {
            throw new SuperQuantException(ErrorCodes.TokenizerUnsupported, $"cannot build a SentencePiece tokenizer from {t.Path}: {e.Message}", t.Path, e);
        }
    }

    /// <summary>The added tokens, longest first: Microsoft.ML.Tokenizers tries them in this order, Hugging Face matches
    /// the longest ("\n\n" before "\n").</summary>
    static Dictionary<string, int> AddedByLength(TokenizerJson t)
    {
        var d = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var a in t.Added.OrderByDescending(a => a.Content.Length).ThenBy(a => a.Id)) d.TryAdd(a.Content, a.Id);
        return d;
    }

    static int? EndOfSequence(TokenizerJson t) => t.Suffix.Count > 0 ? t.Suffix[^1] : null;

    /// <summary>
    /// The SentencePiece pieces of a SentencePiece-style BPE tokenizer.json, id by id: text, score and type (SentencePiece's
    /// numbering, which llama.cpp's token types share). Scores order merges as the json's ranks do: a piece made by
    /// merge rank r scores -r, so "merge the adjacent pair whose result scores highest" (SentencePiece, llama.cpp)
    /// merges what "merge the adjacent pair of lowest rank" (Hugging Face BPE) merges. Pieces no merge makes score
    /// below every merge.
    /// </summary>
    public static (string Text, float Score, int Type)[] SentencePiecePieces(TokenizerJson t)
    {
        var rank = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int r = 0; r < t.Merges.Count; r++)
            rank.TryAdd(t.Merges[r].Left + t.Merges[r].Right, r);
        var pieces = new (string Text, float Score, int Type)[t.Count];
        var filled = new bool[t.Count];
        foreach (var (text, id) in t.Vocab)
        {
            int type = text == t.UnknownToken ? 2 : t.ByteFallback && IsBytePiece(text) ? 6 : 1;
            float score = rank.TryGetValue(text, out int r) ? -r : -(t.Merges.Count + 1f);
            pieces[id] = (text, type == 1 ? score : 0f, type);
            filled[id] = true;
        }
        foreach (var a in t.Added)
        {
            // A non-special added token that is also a merged piece keeps its merge score (Gemma's "▁▁", "\n\n").
            float score = !a.Special && rank.TryGetValue(a.Content, out int r) ? -r : 0f;
            pieces[a.Id] = (a.Content, score, a.Content == t.UnknownToken ? 2 : a.Special ? 3 : 4);
            filled[a.Id] = true;
        }
        for (int i = 0; i < pieces.Length; i++)
            if (!filled[i]) pieces[i] = ($"[PAD{i}]", -(t.Merges.Count + 1f), 5);
        return pieces;
    }

    static bool IsBytePiece(string s) => s.Length == 6 && s.StartsWith("<0x", StringComparison.Ordinal) && s[5] == '>'
        && Uri.IsHexDigit(s[3]) && Uri.IsHexDigit(s[4]);

    /// <summary>A SentencePiece ModelProto (sentencepiece_model.proto, written field by field): BPE, byte fallback,
    /// spaces escaped as '▁' with no dummy prefix and no whitespace folding (what Gemma's json normalizer does).</summary>
    static byte[] ModelProto((string Text, float Score, int Type)[] pieces, int unk, bool byteFallback)
    {
        using var ms = new MemoryStream();
        var o = new CodedOutputStream(ms);
        foreach (var (text, score, type) in pieces)
        {
            var p = new MemoryStream();
            var po = new CodedOutputStream(p);
            po.WriteTag(1, WireFormat.WireType.LengthDelimited); po.WriteString(text);
            po.WriteTag(2, WireFormat.WireType.Fixed32); po.WriteFloat(score);
            po.WriteTag(3, WireFormat.WireType.Varint); po.WriteEnum(type);
            po.Flush();
            o.WriteTag(1, WireFormat.WireType.LengthDelimited); o.WriteBytes(ByteString.CopyFrom(p.ToArray()));
        }
        var spec = new MemoryStream();
        var so = new CodedOutputStream(spec);
        so.WriteTag(3, WireFormat.WireType.Varint); so.WriteEnum(2);                 // model_type: BPE
        so.WriteTag(35, WireFormat.WireType.Varint); so.WriteBool(byteFallback);     // byte_fallback
        so.WriteTag(40, WireFormat.WireType.Varint); so.WriteInt32(unk);             // unk_id
        so.WriteTag(41, WireFormat.WireType.Varint); so.WriteInt32(-1);              // bos_id: the post-processor adds it
        so.WriteTag(42, WireFormat.WireType.Varint); so.WriteInt32(-1);              // eos_id
        so.WriteTag(43, WireFormat.WireType.Varint); so.WriteInt32(-1);              // pad_id
        so.Flush();
        o.WriteTag(2, WireFormat.WireType.LengthDelimited); o.WriteBytes(ByteString.CopyFrom(spec.ToArray()));
        var norm = new MemoryStream();
        var no = new CodedOutputStream(norm);
        no.WriteTag(1, WireFormat.WireType.LengthDelimited); no.WriteString("identity");
        no.WriteTag(3, WireFormat.WireType.Varint); no.WriteBool(false);             // add_dummy_prefix
        no.WriteTag(4, WireFormat.WireType.Varint); no.WriteBool(false);             // remove_extra_whitespaces
        no.WriteTag(5, WireFormat.WireType.Varint); no.WriteBool(true);              // escape_whitespaces
        no.Flush();
        o.WriteTag(3, WireFormat.WireType.LengthDelimited); o.WriteBytes(ByteString.CopyFrom(norm.ToArray()));
        o.Flush();
        return ms.ToArray();
    }
}
