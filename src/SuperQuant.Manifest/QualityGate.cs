namespace SuperQuant.Manifest;

/// <summary>metric: perplexity | kl | top1 | accuracy; max_increase: absolute ("0.5") or relative ("5%") change allowed
/// against the baseline (the unquantized checkpoint, or a fixed number). For top1 the allowed change is a decrease.
/// For accuracy (zero-shot tasks) <see cref="MaxIncrease"/> holds max_drop, in accuracy points (2 = 2 percentage
/// points), applied to every task.</summary>
public sealed record QualityGate(string Metric, double MaxIncrease, bool Percent, double? FixedBaseline)
{
    public static readonly IReadOnlyList<string> Metrics = new[] { "kl", "perplexity", "top1", "accuracy" };

    bool Decrease => Metric is "top1" or "accuracy";

    public double Limit(double baseline) => Metric == "accuracy" ? baseline - MaxIncrease / 100
        : Metric == "top1"
        ? baseline - (Percent ? baseline * MaxIncrease / 100 : MaxIncrease)
        : baseline + (Percent ? Math.Abs(baseline) * MaxIncrease / 100 : MaxIncrease);

    /// <summary>A measured value that is not a number never passes.</summary>
    public bool Passes(double value, double baseline) => double.IsFinite(value) && (Decrease ? value >= Limit(baseline) - 1e-12 : value <= Limit(baseline));

    /// <summary>Within 80% of the allowed change: a warning, not a failure.</summary>
    public bool NearMiss(double value, double baseline) => Passes(value, baseline) && Math.Abs(value - baseline) > 0.8 * Math.Abs(Limit(baseline) - baseline);
}
