namespace SuperQuant.Core.Llama;

/// <summary>How each block normalizes its input.</summary>
public enum NormKind
{
    /// <summary>RMSNorm with a learned scale (Llama, Mistral, Qwen2, Phi-3, llama2.c).</summary>
    RmsNorm,
    /// <summary>LayerNorm without weight or bias (OLMo's non-parametric LayerNorm).</summary>
    NonParametricLayerNorm,
}

/// <summary>Llama 3.1's frequency-dependent RoPE scaling ("rope_type": "llama3").</summary>
public sealed record Llama3RopeScaling(double Factor, double LowFreqFactor, double HighFreqFactor, int OriginalMaxPositionEmbeddings);

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
    public double NormEps { get; init; } = 1e-5;
    public NormKind Norm { get; init; } = NormKind.RmsNorm;
    public bool TieWordEmbeddings { get; init; }
    /// <summary>Qwen2 (and Llama with attention_bias) add biases to q, k and v.</summary>
    public bool QkvBias { get; init; }
    /// <summary>OLMo clamps q, k and v to [-clip, clip] when set.</summary>
    public double? ClipQkv { get; init; }
    /// <summary>Mistral's sliding-window attention; null = full causal attention.</summary>
    public int? SlidingWindow { get; init; }

    /// <summary>Beginning-of-sequence token, prepended to tokenized text when the tokenizer does not add it.</summary>
    public int? BosTokenId { get; init; }

    public int HeadDim => HeadDimOverride ?? HiddenSize / NumHeads;
    public int KvDim => NumKvHeads * HeadDim;

    /// <summary>[rows, cols] (out, in) of a decoder block's linear layer, or of the output head.</summary>
    public (long Rows, long Cols) MatrixShape(Projection p)
    {
        long d = HiddenSize, h = IntermediateSize, qd = (long)NumHeads * HeadDim, kv = KvDim;
        return p switch
        {
            Projection.Q => (qd, d), Projection.K or Projection.V => (kv, d), Projection.O => (d, qd),
            Projection.Gate or Projection.Up => (h, d), Projection.Down => (d, h), Projection.LmHead => (VocabSize, d),
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
        Require(NumHeads > 0 && NumKvHeads > 0 && NumHeads % NumKvHeads == 0, $"num_attention_heads ({NumHeads}) must be a multiple of num_key_value_heads ({NumKvHeads})");
        Require(HeadDim % 2 == 0, $"head dim ({HeadDim}) must be even for RoPE");
        Require(HeadDimOverride != null || HiddenSize % NumHeads == 0, $"hidden_size ({HiddenSize}) must be divisible by num_attention_heads ({NumHeads})");
        Require(HeadDimOverride is null or > 0, $"head_dim ({HeadDimOverride}) must be positive");
        Require(double.IsFinite(RopeTheta) && RopeTheta > 1, $"rope_theta ({RopeTheta}) must be a finite number above 1");
        Require(double.IsFinite(NormEps) && NormEps > 0 && NormEps < 1, $"rms_norm_eps ({NormEps}) must be a finite number in (0, 1)");
        Require(MaxPositionEmbeddings > 0, $"max_position_embeddings ({MaxPositionEmbeddings}) must be positive");
        Require(SlidingWindow is null or > 0, $"sliding_window ({SlidingWindow}) must be positive");
        Require(ClipQkv is null || (double.IsFinite(ClipQkv.Value) && ClipQkv > 0), $"clip_qkv ({ClipQkv}) must be a positive finite number");
        Require(RopeScaling is null || (RopeScaling.Factor > 0 && RopeScaling.LowFreqFactor > 0 && RopeScaling.HighFreqFactor > RopeScaling.LowFreqFactor
            && RopeScaling.OriginalMaxPositionEmbeddings > 0 && double.IsFinite(RopeScaling.Factor)), "rope_scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0");
        // Bounds far above any real model: a corrupt header must fail here, not in a terabyte allocation.
        Require(HiddenSize <= 1 << 18 && IntermediateSize <= 1 << 20 && NumLayers <= 4096 && VocabSize <= 1 << 24 && NumHeads <= 4096,
            $"sizes beyond any real model (hidden {HiddenSize}, intermediate {IntermediateSize}, layers {NumLayers}, vocabulary {VocabSize}, heads {NumHeads})");
    }

    /// <summary>Number of parameters, counting a tied embedding once.</summary>
    public long ParameterCount
    {
        get
        {
            long d = HiddenSize, h = IntermediateSize, qd = (long)NumHeads * HeadDim, kv = KvDim;
            long perLayer = d * qd + 2 * d * kv + qd * d + 3 * d * h + (Norm == NormKind.RmsNorm ? 2 * d : 0) + (QkvBias ? qd + 2 * kv : 0);
            return VocabSize * d * (TieWordEmbeddings ? 1 : 2) + NumLayers * perLayer + (Norm == NormKind.RmsNorm ? d : 0);
        }
    }
}
