namespace SuperQuant.Manifest;

/// <summary>A parsed, validated quantize.yaml. Paths are absolute (resolved against the manifest's folder).</summary>
public sealed record QuantizeManifest(string Path, int Version, string Device, IReadOnlyList<ModelEntry> Models);

public sealed record ModelEntry
{
    public required string Id { get; init; }
    public required string Checkpoint { get; init; }
    public required string Output { get; init; }
    public string Method { get; init; } = "super-aware";
    public int WeightBits { get; init; } = 4;
    public int ActivationBits { get; init; } = 16;
    /// <summary>0 = per-channel.</summary>
    public int BlockSize { get; init; } = 128;
    /// <summary>"auto", "none" or a number.</summary>
    public string Z { get; init; } = "auto";
    public string? CalibrationText { get; init; }
    public string? CalibrationTokens { get; init; }
    public string? EvaluationText { get; init; }
    public string? EvaluationTokens { get; init; }
    public string? PromptTokens { get; init; }
    public int Context { get; init; } = 512;
    public IReadOnlyList<string> Export { get; init; } = new[] { "packed" };
    public required QualityGate Gate { get; init; }
    /// <summary>Line of the entry in the manifest, for messages.</summary>
    public int Line { get; init; }

    /// <summary>The artifact needs run-time activation handling (quantized activations or online rotations).</summary>
    public bool UsesActivationTransforms => ActivationBits < 16 || Method is "hadamard" or "duquant";

    /// <summary>Every file this model's result depends on besides the manifest and the tool.</summary>
    public IEnumerable<string> DataFiles => new[] { CalibrationText, CalibrationTokens, EvaluationText, EvaluationTokens }.Where(f => f != null)!;
}

/// <summary>metric: perplexity | kl | top1; max_increase: absolute ("0.5") or relative ("5%") change allowed against
/// the baseline (the unquantized checkpoint, or a fixed number). For top1 the allowed change is a decrease.</summary>
public sealed record QualityGate(string Metric, double MaxIncrease, bool Percent, double? FixedBaseline)
{
    public double Limit(double baseline) => Metric == "top1"
        ? baseline - (Percent ? baseline * MaxIncrease / 100 : MaxIncrease)
        : baseline + (Percent ? Math.Abs(baseline) * MaxIncrease / 100 : MaxIncrease);

    public bool Passes(double value, double baseline) => Metric == "top1" ? value >= Limit(baseline) : value <= Limit(baseline);

    /// <summary>Within 80% of the allowed change: a warning, not a failure.</summary>
    public bool NearMiss(double value, double baseline) => Passes(value, baseline) && Math.Abs(value - baseline) > 0.8 * Math.Abs(Limit(baseline) - baseline);
}
