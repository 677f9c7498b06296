using LLama;
using LLama.Common;
using LLama.Exceptions;
using LLama.Native;

namespace SuperQuant.LlamaCpp;

/// <summary>
/// A GGUF file loaded by llama.cpp, evaluated the way an app runs it (its CPU kernels, including the 8-bit rounding of
/// activations its quantized matmuls do). <see cref="Logits"/> runs one window from an empty KV cache and returns the
/// logits of every position.
/// </summary>
public sealed class LlamaCppModel : IDisposable
{
    readonly LLamaWeights _weights;
    readonly LLamaContext _context;
    readonly LLamaBatch _batch = new();

    public int VocabSize { get; }
    public int ContextSize { get; }
    public string Path { get; }
    /// <summary>The file type llama.cpp reports (e.g. MOSTLY_Q4_K_M).</summary>
    public string FileType => _weights.NativeHandle.FileType.ToString();
    public IReadOnlyDictionary<string, string> Metadata => _weights.Metadata;

    LlamaCppModel(string path, LLamaWeights weights, LLamaContext context)
    {
        Path = path; _weights = weights; _context = context;
        VocabSize = weights.Vocab.Count;
        ContextSize = (int)context.ContextSize;
    }

    /// <param name="contextSize">The longest window that will be evaluated.</param>
    /// <summary>Set once by the process (the CLI: Models' GgufPreflight): checks a file before llama.cpp opens it, since
    /// llama.cpp aborts the process on some malformed headers instead of returning an error.</summary>
    public static Action<string>? Preflight { get; set; }

    public static LlamaCppModel Load(string ggufPath, int contextSize, int? threads = null)
    {
        Preflight?.Invoke(ggufPath);
        LlamaCppRuntime.EnsureLoaded();
        int t = threads ?? LlamaCppRuntime.DefaultThreads;
        var p = new ModelParams(ggufPath)
        {
            ContextSize = (uint)contextSize, BatchSize = (uint)contextSize, UBatchSize = (uint)Math.Min(contextSize, 512),
            Threads = t, BatchThreads = t, GpuLayerCount = 0, SeqMax = 1,
        };
        LLamaWeights? weights = null;
        try
        {
            weights = LLamaWeights.LoadFromFile(p);
            var context = weights.CreateContext(p);
            return new LlamaCppModel(ggufPath, weights, context);
        }
        catch (Exception e) when (e is LoadWeightsFailedException or RuntimeError or ArgumentException or FormatException)
        {
            weights?.Dispose();
            throw new LlamaCppException($"llama.cpp could not load {ggufPath}: {e.Message} {LlamaCppRuntime.RecentLog()}".TrimEnd(), e);
        }
    }

    /// <summary>Logits of every position of <paramref name="tokens"/> (row-major [tokens, vocab]) for one window
    /// decoded from an empty cache.</summary>
    public void Logits(ReadOnlySpan<int> tokens, Span<float> output)
    {
        if (tokens.Length > ContextSize) throw new ArgumentException($"{tokens.Length} tokens exceed the context of {ContextSize}");
        if (output.Length < (long)tokens.Length * VocabSize) throw new ArgumentException("output too small");
        _context.NativeHandle.MemoryClear(true);
        int batchSize = (int)_context.BatchSize;
        for (int start = 0; start < tokens.Length; start += batchSize)
        {
            int n = Math.Min(batchSize, tokens.Length - start);
            _batch.Clear();
            for (int i = 0; i < n; i++) _batch.Add((LLamaToken)tokens[start + i], start + i, (LLamaSeqId)0, true);
            DecodeResult r = _context.NativeHandle.Decode(_batch);
            if (r != DecodeResult.Ok) throw new LlamaCppException($"llama.cpp failed to decode {Path}: {r} {LlamaCppRuntime.RecentLog()}".TrimEnd());
            for (int i = 0; i < n; i++)
                _context.NativeHandle.GetLogitsIth(i).CopyTo(output.Slice((start + i) * VocabSize, VocabSize));
        }
    }

    /// <summary>Greedy or sampled continuation is the app's business; this is the one-token step the sample's
    /// generation loop and <see cref="Logits"/> share: logits of the last of <paramref name="tokens"/> appended at
    /// position <paramref name="position"/> after whatever the cache holds.</summary>
    public ReadOnlySpan<float> Append(ReadOnlySpan<int> tokens, int position)
    {
        _batch.Clear();
        for (int i = 0; i < tokens.Length; i++) _batch.Add((LLamaToken)tokens[i], position + i, (LLamaSeqId)0, i == tokens.Length - 1);
        DecodeResult r = _context.NativeHandle.Decode(_batch);
        if (r != DecodeResult.Ok) throw new LlamaCppException($"llama.cpp failed to decode: {r}");
        return _context.NativeHandle.GetLogitsIth(tokens.Length - 1);
    }

    public void ResetCache() => _context.NativeHandle.MemoryClear(true);

    /// <summary>Token ids of <paramref name="text"/> by the GGUF's own vocabulary (llama.cpp's tokenizer).</summary>
    /// <summary>Messages formatted by llama.cpp with the file's own chat template (tokenizer.chat_template), as
    /// LLamaSharp's chat session does; throws when the file has no template llama.cpp recognizes.</summary>
    public string ApplyChatTemplate(IEnumerable<(string Role, string Content)> messages, bool addAssistant = true)
    {
        var template = new LLamaTemplate(_weights, strict: true) { AddAssistant = addAssistant };
        foreach (var (role, content) in messages) template.Add(role, content);
        return System.Text.Encoding.UTF8.GetString(template.Apply());
    }

    /// <summary>Text of <paramref name="ids"/> by the GGUF's own vocabulary (llama.cpp's detokenizer; multi-token
    /// characters joined).</summary>
    public string Detokenize(IEnumerable<int> ids)
    {
        var decoder = new StreamingTokenDecoder(System.Text.Encoding.UTF8, _weights);
        foreach (int id in ids) decoder.Add((LLamaToken)id);
        return decoder.Read();
    }

    /// <summary>The tokens that end a generation (end of sequence, end of turn), as the file's vocabulary marks them.</summary>
    public IReadOnlySet<int> EndOfGeneration => new[] { _weights.Vocab.EOS,
        _weights.Vocab.EOT }.Where(t => t is not null).Select(t => (int)t!.Value).ToHashSet();

    public int[] Tokenize(string text, bool addBos) => _weights.Tokenize(text, addBos, special: false, System.Text.Encoding.UTF8).Select(t => (int)t).ToArray();

    public void Dispose()
    {
        _context.Dispose();
        _weights.Dispose();
    }
}
