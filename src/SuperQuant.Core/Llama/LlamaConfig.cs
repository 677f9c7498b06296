namespace SuperQuant.Core.Llama;

/// <summary>How each block normalizes its input.</summary>
public enum NormKind
{
    /// <summary>RMSNorm with a learned scale (Llama, Mistral, Qwen2, Phi-3, llama2.c).</summary>
    RmsNorm,
    /// <summary>LayerNorm without weight or bias (OLMo's non-parametric LayerNorm).</summary>
    NonParametricLayerNorm,
}

/// <summary>The MLP's gate activation: SwiGLU (silu) or GeGLU with the tanh approximation of GELU (Gemma).</summary>
public enum Activation { Silu, GeluTanh }

/// <summary>Where q and k are RMS-normalized before RoPE: not at all, per head over head_dim (Qwen3, Gemma 3), or over the
/// whole projection (OLMo 2).</summary>
public enum QkNormKind { None, PerHead, Whole }

/// <summary>Llama 3.1's frequency-dependent RoPE scaling ("rope_type": "llama3").</summary>
public sealed record Llama3RopeScaling(double Factor, double LowFreqFactor, double HighFreqFactor, int OriginalMaxPositionEmbeddings);

/// <summary>Phi-3's LongRoPE ("rope_type": "longrope", formerly "su"): each rotated frequency is divided by a per-frequency
/// factor, the short list while the sequence fits the original context, the long list past it (Hugging Face switches on
/// the sequence length, llama.cpp on its context size: the same choice for a perplexity at that context), and cos/sin
/// are multiplied by <see cref="AttentionFactor"/>.</summary>
public sealed record LongRopeScaling(double[] ShortFactors, double[] LongFactors, int OriginalMaxPositionEmbeddings, double AttentionFactor)
{
    public double[] FactorsFor(long sequenceLength) => sequenceLength > OriginalMaxPositionEmbeddings ? LongFactors : ShortFactors;
}

/// <summary>Shape and numerics of a LLaMA-family decoder. Weights are always held in Hugging Face convention
/// ([out, in] matrices, rotate-half RoPE); readers of other layouts convert on load.</summary>
public sealed record LlamaConfig
{
    public required string Architecture { get; init; }
    public required int HiddenSize { get; init; }
    public required int IntermediateSize { get; init; }
    public required int NumLayers { get; init; }
    public required int NumHeads { get; init; }
    public required int NumKvHeads { get; init; }
    public required int VocabSize { get; init; }
    public int MaxPositionEmbeddings { get; init; } = 2048;
    public int? HeadDimOverride { get; init; }
    public double RopeTheta { get; init; } = 10000.0;
    public Llama3RopeScaling? RopeScaling { get; init; }
    public LongRopeScaling? LongRope { get; init; }
    /// <summary>Dimensions of each head RoPE rotates, when fewer than head_dim (Phi-4-mini's partial_rotary_factor 0.75:
    /// the first RopeDims dimensions rotate in rotate-half pairs, the rest pass through).</summary>
    public int? RopeDimsOverride { get; init; }
    /// <summary>The context the model was pretrained at, when the config names it (Phi-3's original_max_position_embeddings).</summary>
    public int? OriginalMaxPositionEmbeddings { get; init; }
    public double NormEps { get; init; } = 1e-5;
    public NormKind Norm { get; init; } = NormKind.RmsNorm;
    public bool TieWordEmbeddings { get; init; }
    /// <summary>Qwen2 (and Llama with attention_bias) add biases to q, k and v.</summary>
    public bool QkvBias { get; init; }
    /// <summary>OLMo clamps q, k and v to [-clip, clip] when set.</summary>
    public double? ClipQkv { get; init; }
    /// <summary>Mistral's sliding-window attention; null = full causal attention.</summary>
    public int? SlidingWindow { get; init; }

    /// <summary>Gemma stores RMSNorm scales as w and applies (1 + w); 0 elsewhere.</summary>
    public double NormWeightOffset { get; init; }
    /// <summary>Norms on each sub-block's input (every family but OLMo 2).</summary>
    public bool PreNorms { get; init; } = true;
    /// <summary>Norms on each sub-block's output before the residual add (Gemma 2/3, OLMo 2).</summary>
    public bool PostNorms { get; init; }
    public QkNormKind QkNorm { get; init; }
    /// <summary>Multiplies the token embedding (Gemma: sqrt(hidden_size), rounded to the model's dtype).</summary>
    public double EmbeddingScale { get; init; } = 1.0;
    public Activation Activation { get; init; } = Activation.Silu;
    /// <summary>Gemma 2: attention scores become cap * tanh(scores / cap).</summary>
    public double? AttnLogitSoftcap { get; init; }
    /// <summary>Gemma 2: logits become cap * tanh(logits / cap).</summary>
    public double? FinalLogitSoftcap { get; init; }
    /// <summary>Gemma: attention scores are scaled by 1/sqrt(this) instead of 1/sqrt(head_dim).</summary>
    public double? QueryPreAttnScalar { get; init; }
    /// <summary>Per layer, whether <see cref="SlidingWindow"/> applies (Gemma's local/global interleave); null = every layer.</summary>
    public bool[]? SlidingLayers { get; init; }
    /// <summary>RoPE base of the sliding-window layers when it differs from <see cref="RopeTheta"/> (Gemma 3's 10000).</summary>
    public double? RopeLocalTheta { get; init; }
    /// <summary>Per layer, whether RoPE is applied (SmolLM3 leaves every 4th layer without); null = every layer.</summary>
    public bool[]? RopeLayers { get; init; }
    /// <summary>Linear RoPE scaling (positions divided by this) on the full-attention layers (Gemma 3's rope_scaling).</summary>
    public double? RopeLinearFactor { get; init; }

    /// <summary>Beginning-of-sequence token, prepended to tokenized text when the tokenizer does not add it.</summary>
    public int? BosTokenId { get; init; }

    public int HeadDim => HeadDimOverride ?? HiddenSize / NumHeads;
    public int RopeDims => RopeDimsOverride ?? HeadDim;
    /// <summary>The attention window of layer <paramref name="l"/>, or null for full causal attention.</summary>
    public int? WindowOf(int l) => SlidingLayers is null || SlidingLayers[l] ? SlidingWindow : null;
    public bool UsesRope(int l) => RopeLayers is null || RopeLayers[l];
    /// <summary>Layer <paramref name="l"/>'s RoPE base and linear position scale.</summary>
    public (double Theta, double LinearFactor) RopeOf(int l) =>
        WindowOf(l) is not null && SlidingLayers is not null ? (RopeLocalTheta ?? RopeTheta, 1.0) : (RopeTheta, RopeLinearFactor ?? 1.0);
    /// <summary>The multiplier of q·k: 1/sqrt(query_pre_attn_scalar or head_dim).</summary>
    public double AttentionScale => 1.0 / Math.Sqrt(QueryPreAttnScalar ?? HeadDim);
    public int KvDim => NumKvHeads * HeadDim;

    /// <summary>[rows, cols] (out, in) of a decoder block's linear layer, or of the output head.</summary>
    public (long Rows, long Cols) MatrixShape(Projection p)
    {
        long d = HiddenSize, h = IntermediateSize, qd = (long)NumHeads * HeadDim, kv = KvDim;
        return p switch
        {
            Projection.Q => (qd, d),
            Projection.K or Projection.V => (kv, d),
            Projection.O => (d, qd),
            Projection.Gate or Projection.Up => (h, d),
            Projection.Down => (d, h),
            Projection.LmHead => (VocabSize, d),
            _ => throw new ArgumentOutOfRangeException(nameof(p)),
        };
    }

    public void Validate()
    {
        void Require(bool ok, string what)
        {
            if (!ok) throw new InvalidDataException($"invalid model config: {what}");
        }
        Require(HiddenSize > 0 && IntermediateSize > 0 && NumLayers > 0 && VocabSize > 0, "sizes must be positive");
        Require(NumHeads > 0 && NumKvHeads > 0 && NumHeads % NumKvHeads == 0,
            $"num_attention_heads ({NumHeads}) must be a multiple of num_key_value_heads ({NumKvHeads})");
        Require(HeadDim % 2 == 0, $"head dim ({HeadDim}) must be even for RoPE");
        Require(HeadDimOverride != null || HiddenSize % NumHeads == 0, $"hidden_size ({HiddenSize}) must be divisible by num_attention_heads ({NumHeads})");
        Require(HeadDimOverride is null or > 0, $"head_dim ({HeadDimOverride}) must be positive");
        Require(double.IsFinite(RopeTheta) && RopeTheta > 1, $"rope_theta ({RopeTheta}) must be a finite number above 1");
        Require(double.IsFinite(NormEps) && NormEps > 0 && NormEps < 1, $"rms_norm_eps ({NormEps}) must be a finite number in (0, 1)");
        Require(MaxPositionEmbeddings > 0, $"max_position_embeddings ({MaxPositionEmbeddings}) must be positive");
        Require(SlidingWindow is null or > 0, $"sliding_window ({SlidingWindow}) must be positive");
        Require(ClipQkv is null || (double.IsFinite(ClipQkv.Value) && ClipQkv > 0), $"clip_qkv ({ClipQkv}) must be a positive finite number");
        Require(RopeScaling is null || (RopeScaling.Factor > 0 && RopeScaling.LowFreqFactor > 0 && RopeScaling.HighFreqFactor > RopeScaling.LowFreqFactor
            && RopeScaling.OriginalMaxPositionEmbeddings > 0 && double.IsFinite(RopeScaling.Factor)), "rope_scaling needs factor > 0, 0 < " +
                "low_freq_factor < high_freq_factor and original_max_position_embeddings > 0");
        Require(RopeDims > 0 && RopeDims <= HeadDim && RopeDims % 2 == 0, $"rotary dimensions ({RopeDims}) must be even and within head_dim ({HeadDim})");
        Require(RopeScaling is null || LongRope is null, "rope_scaling is either llama3 or longrope, not both");
        if (LongRope is { } lr)
        {
            Require(lr.ShortFactors.Length == RopeDims / 2 && lr.LongFactors.Length == RopeDims / 2,
                $"rope_scaling.short_factor and long_factor need {RopeDims / 2} entries each (rotary dimensions / 2), not {lr.ShortFactors.Length} " +
                    $"and {lr.LongFactors.Length}");
            Require(lr.ShortFactors.Concat(lr.LongFactors).All(f => double.IsFinite(f) && f > 0),
                "rope_scaling.short_factor and long_factor must be positive finite numbers");
            Require(lr.OriginalMaxPositionEmbeddings > 0, $"original_max_position_embeddings ({lr.OriginalMaxPositionEmbeddings}) must be positive");
            Require(double.IsFinite(lr.AttentionFactor) && lr.AttentionFactor > 0,
                $"rope_scaling.attention_factor ({lr.AttentionFactor}) must be a positive finite number");
        }
        Require(SlidingLayers is null || SlidingLayers.Length == NumLayers,
            $"the sliding-window layer pattern has {SlidingLayers?.Length} entries for {NumLayers} layers");
        Require(RopeLayers is null || RopeLayers.Length == NumLayers, $"the RoPE layer list has {RopeLayers?.Length} entries for {NumLayers} layers");
        Require(SlidingLayers is null || SlidingWindow is not null, "a sliding-window layer pattern needs sliding_window");
        foreach (var (name, v) in new[] { ("attn_logit_softcapping", AttnLogitSoftcap), ("final_logit_softcapping", FinalLogitSoftcap),
            ("query_pre_attn_scalar", QueryPreAttnScalar), ("rope_local_base_freq", RopeLocalTheta), ("rope_scaling.factor", RopeLinearFactor) })
            Require(v is null || (double.IsFinite(v.Value) && v > 0), $"{name} ({v}) must be a positive finite number");
        Require(double.IsFinite(EmbeddingScale) && EmbeddingScale > 0, $"embedding scale ({EmbeddingScale}) must be a positive finite number");
        // Bounds far above any real model: a corrupt header must fail here, not in a terabyte allocation.
        Require(HiddenSize <= 1 << 18 && IntermediateSize <= 1 << 20 && NumLayers <= 4096 && VocabSize <= 1 << 24 && NumHeads <= 4096,
            $"sizes beyond any real model (hidden {HiddenSize}, intermediate {IntermediateSize}, layers {NumLayers}, vocabulary {VocabSize}, heads " +
                $"{NumHeads})");
    }

    /// <summary>Number of parameters, counting a tied embedding once.</summary>
    public long ParameterCount
    {
        get
        {
            long d = HiddenSize, h = IntermediateSize, qd = (long)NumHeads * HeadDim, kv = KvDim;
            long norms = Norm == NormKind.RmsNorm ? (PreNorms ? 2 * d : 0) + (PostNorms ? 2 * d : 0) : 0;
            long qkNorms = QkNorm switch { QkNormKind.PerHead => 2L * HeadDim, QkNormKind.Whole => qd + kv, _ => 0 };
            long perLayer = d * qd + 2 * d * kv + qd * d + 3 * d * h + norms + qkNorms + (QkvBias ? qd + 2 * kv : 0);
            return VocabSize * d * (TieWordEmbeddings ? 1 : 2) + NumLayers * perLayer + (Norm == NormKind.RmsNorm ? d : 0);
        }
    }
}
