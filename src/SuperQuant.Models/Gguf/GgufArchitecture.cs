using SuperQuant.Core;
using SuperQuant.Core.Llama;

namespace SuperQuant.Models.Gguf;

/// <summary>How RoPE pairs a head's dimensions in llama.cpp: NORM rotates consecutive pairs (our rotate-half rows are
/// permuted on export, as convert_hf_to_gguf.py's LlamaModel.permute does), NEOX rotates (i, i + d/2) as Hugging Face
/// does (rows written as they are).</summary>
public enum RopePairing { Norm, Neox }

/// <summary>
/// One family as llama.cpp knows it (llama.cpp's convert_hf_to_gguf.py, gguf-py/gguf/constants.py, src/llama-arch.cpp,
/// src/llama-model.cpp are the specification): the architecture name that prefixes its metadata keys, how its RoPE pairs
/// dimensions, whether its norm scales are stored as w - 1 (Gemma: the converter adds the 1 back), which projections it
/// fuses, and the family's own keys. The tensors themselves come from the model's description (<see cref="LlamaConfig"/>:
/// biases, q/k norms, post-norms), so one writer serves every family.
/// </summary>
public sealed record GgufArchitecture
{
    public required string Name { get; init; }
    public required RopePairing Rope { get; init; }
    /// <summary>Added to every norm scale on export (Gemma's RMSNorm computes (1 + w); llama.cpp multiplies by w).</summary>
    public float NormShift { get; init; }
    /// <summary>Phi-3: q, k and v as one attn_qkv tensor; gate and up as one ffn_up tensor (gate rows first).</summary>
    public bool Fused { get; init; }
    /// <summary>The LLaMA converter family (llama, mistral, smollm3) also writes vocab_size and rope.dimension_count.</summary>
    public bool LlamaKeys { get; init; }

    /// <summary>The family of <paramref name="c"/>, or SQ4001 naming the architecture.</summary>
    public static GgufArchitecture For(LlamaConfig c) => c.Architecture switch
    {
        "llama" or "mistral" or "llama2.c" => new() { Name = "llama", Rope = RopePairing.Norm, LlamaKeys = true },
        "smollm3" => new() { Name = "smollm3", Rope = RopePairing.Norm, LlamaKeys = true },
        "olmo" => new() { Name = "olmo", Rope = RopePairing.Norm },
        "qwen2" => new() { Name = "qwen2", Rope = RopePairing.Neox },
        "qwen3" => new() { Name = "qwen3", Rope = RopePairing.Neox },
        "olmo2" => new() { Name = "olmo2", Rope = RopePairing.Neox },
        "phi3" => new() { Name = "phi3", Rope = RopePairing.Neox, Fused = true },
        "gemma2" => new() { Name = "gemma2", Rope = RopePairing.Neox, NormShift = 1f },
        "gemma3_text" => new() { Name = "gemma3", Rope = RopePairing.Neox, NormShift = 1f },
        _ => throw new SuperQuantException(ErrorCodes.UnsupportedQuantization,
            $"GGUF export of model_type '{c.Architecture}' is not supported (supported: llama, mistral, qwen2, qwen3, phi3, olmo, olmo2, gemma2, " +
                $"gemma3_text, smollm3, llama2.c)"),
    };

    /// <summary>Llama 3.1's RoPE scaling as llama.cpp takes it: rope_freqs.weight, one divisor per frequency
    /// (convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors); null without llama3 scaling.</summary>
    public static float[]? RopeFrequencyFactors(LlamaConfig c)
    {
        if (c.RopeScaling is not { } s) return null;
        int hd = c.HeadDim;
        var factors = new float[hd / 2];
        double lowWavelen = s.OriginalMaxPositionEmbeddings / s.LowFreqFactor, highWavelen = s.OriginalMaxPositionEmbeddings / s.HighFreqFactor;
        for (int i = 0; i < hd / 2; i++)
        {
            double freq = 1.0 / Math.Pow(c.RopeTheta, 2.0 * i / hd), wavelen = 2 * Math.PI / freq;
            if (wavelen < highWavelen) factors[i] = 1f;
            else if (wavelen > lowWavelen) factors[i] = (float)s.Factor;
            else
            {
                double smooth = (s.OriginalMaxPositionEmbeddings / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                factors[i] = (float)(1 / ((1 - smooth) / s.Factor + smooth));
            }
        }
        return factors;
    }

    /// <summary>LongRoPE's factor lists as llama.cpp takes them: rope_factors_long.weight and rope_factors_short.weight,
    /// F32 [rope dims / 2] (convert_hf_to_gguf.py's Phi3MiniModel.generate_extra_tensors); null without LongRoPE.</summary>
    public static (float[] Long, float[] Short)? LongRopeFactors(LlamaConfig c) =>
        c.LongRope is { } lr ? (lr.LongFactors.Select(f => (float)f).ToArray(), lr.ShortFactors.Select(f => (float)f).ToArray()) : null;

    /// <summary>The attention factor llama.cpp's converter writes: sqrt(1 + ln(s) / ln(original)) for s = context /
    /// original context, 1 when s &lt;= 1; it reads no attention_factor from the config (a checkpoint that sets another
    /// one is reported as a runtime difference).</summary>
    static double ConverterAttentionFactor(LlamaConfig c, LongRopeScaling lr)
    {
        double scale = (double)c.MaxPositionEmbeddings / lr.OriginalMaxPositionEmbeddings;
        return scale > 1 ? Math.Sqrt(1 + Math.Log(scale) / Math.Log(lr.OriginalMaxPositionEmbeddings)) : 1.0;
    }

    /// <summary>The family's hyperparameters as llama.cpp's converter writes them (prefix "{Name}.").</summary>
    public IEnumerable<(string Key, GgufValueType Type, object Value)> Keys(LlamaConfig c)
    {
        string a = Name + ".";
        (string, GgufValueType, object) U(string k, long v) => (a + k, GgufValueType.UInt32, (uint)v);
        (string, GgufValueType, object) F(string k, double v) => (a + k, GgufValueType.Float32, (float)v);
        yield return U("context_length", c.MaxPositionEmbeddings);
        yield return U("embedding_length", c.HiddenSize);
        yield return U("block_count", c.NumLayers);
        yield return U("feed_forward_length", c.IntermediateSize);
        yield return U("attention.head_count", c.NumHeads);
        yield return U("attention.head_count_kv", c.NumKvHeads);
        yield return F("rope.freq_base", c.RopeTheta);
        // OLMo's LayerNorm has no scale and a fixed eps (the converter writes 1e-5); the others are RMSNorm.
        yield return c.Norm == NormKind.NonParametricLayerNorm ? F("attention.layer_norm_epsilon", c.NormEps)
            : F("attention.layer_norm_rms_epsilon", c.NormEps);
        if (c.HeadDimOverride is not null || NormShift != 0)
        {
            yield return U("attention.key_length", c.HeadDim);
            yield return U("attention.value_length", c.HeadDim);
        }
        if (LlamaKeys || Fused) yield return U("rope.dimension_count", c.RopeDims);
        if (LlamaKeys) yield return U("vocab_size", c.VocabSize);
        if (c.RopeLinearFactor is double linear)
        {
            yield return (a + "rope.scaling.type", GgufValueType.String, "linear");
            yield return F("rope.scaling.factor", linear);
        }
        if (c.ClipQkv is double clip) yield return F("attention.clamp_kqv", clip);
        if (Fused)
        {
            yield return U("rope.scaling.original_context_length", c.LongRope?.OriginalMaxPositionEmbeddings ?? c.OriginalMaxPositionEmbeddings
                ?? c.MaxPositionEmbeddings);
            yield return U("attention.sliding_window", c.SlidingWindow ?? 0);
            if (c.LongRope is { } lr) yield return F("rope.scaling.attn_factor", ConverterAttentionFactor(c, lr));
        }
        if (Name is "gemma2" or "gemma3")
        {
            yield return U("attention.sliding_window", c.SlidingWindow ?? 0);
            if (c.AttnLogitSoftcap is double attnCap) yield return F("attn_logit_softcapping", attnCap);
            if (c.FinalLogitSoftcap is double finalCap) yield return F("final_logit_softcapping", finalCap);
        }
    }

    /// <summary>What llama.cpp will compute differently from the checkpoint, because neither its GGUF keys nor its
    /// graph for the family can say it (each measured by the gate anyway, as llama.cpp runs the file). Empty for a
    /// faithful export.</summary>
    public IReadOnlyList<string> RuntimeDifferences(LlamaConfig c, int? context = null)
    {
        var notes = new List<string>();
        bool windowMatters = c.SlidingWindow is int w && (context ?? c.MaxPositionEmbeddings) > w;
        if (windowMatters && Name is "llama" or "phi3" or "qwen2" or "qwen3" or "smollm3" or "olmo2")
            notes.Add($"{c.Architecture}: llama.cpp runs this architecture without its sliding window ({c.SlidingWindow} tokens): positions further " +
                $"back than that are attended to in the runtime, unlike the checkpoint");
        if (Name is "gemma2" or "gemma3")
        {
            // llama.cpp scales queries by 1/sqrt(head_dim) (27B: 1/sqrt(hidden/heads)); the checkpoint by 1/sqrt(query_pre_attn_scalar).
            if (c.QueryPreAttnScalar is double q && Math.Abs(q - c.HeadDim) > 1e-9 && Math.Abs(q - (double)c.HiddenSize / c.NumHeads) > 1e-9)
                notes.Add($"{c.Architecture}: query_pre_attn_scalar {q} is neither head_dim ({c.HeadDim}) nor hidden/heads: llama.cpp scales " +
                    $"attention by 1/sqrt(head_dim)");
            int pattern = Name == "gemma2" ? 2 : 6;
            bool[] expected = Enumerable.Range(0, c.NumLayers).Select(i => i % pattern < pattern - 1).ToArray();
            bool[] actual = Enumerable.Range(0, c.NumLayers).Select(i => c.WindowOf(i) is not null).ToArray();
            if (c.SlidingWindow is not null && !expected.SequenceEqual(actual))
                notes.Add($"{c.Architecture}: llama.cpp puts the sliding window on {pattern - 1} of every {pattern} layers; this checkpoint's layer " +
                    $"pattern differs");
            if (Name == "gemma3" && c.RopeLocalTheta is double local && local != 10000)
                notes.Add($"{c.Architecture}: rope_local_base_freq {local}: llama.cpp uses 10000 for the sliding-window layers");
        }
        if (c.LongRope is { } lr && Math.Abs(ConverterAttentionFactor(c, lr) / lr.AttentionFactor - 1) > 1e-6)
            notes.Add($"{c.Architecture}: rope_scaling.attention_factor {lr.AttentionFactor} differs from the one llama.cpp derives from the context " +
                $"lengths ({ConverterAttentionFactor(c, lr):G6}): cos/sin are scaled by that one in the runtime");
        // llama.cpp picks LongRoPE's list by its context size, which it rounds up to a multiple of 256.
        if (c.LongRope is { } l2 && context is int ctx && ctx <= l2.OriginalMaxPositionEmbeddings && (ctx + 255) / 256 * 256 > l2.OriginalMaxPositionEmbeddings)
            notes.Add($"{c.Architecture}: at context {ctx} the checkpoint uses LongRoPE's short factors (original context " +
                $"{l2.OriginalMaxPositionEmbeddings}); llama.cpp rounds its context up to {(ctx + 255) / 256 * 256} and uses the long ones");
        if (Name == "smollm3" && c.RopeLayers is bool[] rope && !rope.Select((r, i) => r == ((i + 1) % 4 != 0)).All(x => x))
            notes.Add($"{c.Architecture}: llama.cpp leaves RoPE out of every 4th layer; this checkpoint's no_rope_layers differ");
        return notes;
    }
}
