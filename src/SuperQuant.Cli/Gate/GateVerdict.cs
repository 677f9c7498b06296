using System.Globalization;
using SuperQuant.Cli.Reports;
using SuperQuant.Core;
using SuperQuant.Core.Evaluation;
using SuperQuant.Manifest;
using SuperQuant.Pipeline;

namespace SuperQuant.Cli.Gate;

/// <summary>The gate's verdict on each file: the rule (<see cref="QualityGate"/>, read from the manifest's `gate:`)
/// applied to what the file's runtime measured, and the line the build prints for it.</summary>
public static class GateVerdict
{
    /// <summary>The row of one measured file: its statistics and, under <paramref name="gate"/>, the verdict (null:
    /// no gate, passed). Accuracy gates judge every task against its original accuracy; the task with the least room
    /// left gives the row's headline numbers.</summary>
    public static ArtifactRow Judge(ArtifactResult a, QualityGate? gate, IReadOnlyList<TaskScore>? baselines = null)
    {
        var tasks = a.Tasks.Select(t =>
        {
            var b = baselines?.FirstOrDefault(x => x.Task == t.Task);
            double baseline = b?.Accuracy.Value ?? double.NaN;
            double limit = gate is { Metric: "accuracy" } && b is not null ? gate.Limit(baseline) : double.NaN;
            bool passed = gate is not { Metric: "accuracy" } || (b is not null && gate.Passes(t.Accuracy.Value, baseline));
            return new TaskRow(t.Task, t.Documents, t.Accuracy.Value, t.Accuracy.StandardError, t.AccuracyNorm?.Value, t.Perplexity?.Value,
                baseline, b?.Accuracy.StandardError ?? double.NaN, limit, passed);
        }).ToList();
        var row = new ArtifactRow
        {
            Kind = a.Spec.Kind, Path = a.File.FinalPath, Engine = a.Engine, Bytes = a.Bytes, BitsPerWeight = a.BitsPerWeight, Layout = a.Layout, Tasks = tasks,
        };
        if (gate is { Metric: "accuracy" })
        {
            // The task with the least room left decides the row's headline numbers; every task must pass.
            var worst = tasks.OrderBy(t => t.Accuracy - t.Limit).FirstOrDefault();
            row = worst is null ? row with { Metric = "accuracy", Passed = false }
                : row with
                {
                    Metric = $"accuracy ({worst.Task})",
                    Baseline = worst.Baseline,
                    Value = worst.Accuracy,
                    Limit = worst.Limit,
                    Passed = tasks.All(t => t.Passed),
                    NearMiss = tasks.All(t => t.Passed) && tasks.Any(t => gate.NearMiss(t.Accuracy, t.Baseline)),
                };
        }
        if (a.Quality is not DivergenceResult d) return gate is { Metric: "accuracy" } ? row : row with { Passed = true };
        row = row with
        {
            TokensScored = d.TokensScored,
            Perplexity = d.ModifiedPerplexity.Value,
            PerplexitySe = d.ModifiedPerplexity.StandardError,
            ReferencePerplexity = d.ReferencePerplexity.Value,
            ReferencePerplexitySe = d.ReferencePerplexity.StandardError,
            PerplexityDelta = d.PerplexityDelta.Value,
            PerplexityDeltaSe = d.PerplexityDelta.StandardError,
            LnPerplexityRatio = d.LnPerplexityRatio.Value,
            LnPerplexityRatioSe = d.LnPerplexityRatio.StandardError,
            KlMean = d.KlDivergence.Value,
            KlMeanSe = d.KlDivergence.StandardError,
            KlMedian = d.KlMedian,
            KlP90 = d.KlP90,
            KlP99 = d.KlP99,
            KlP999 = d.KlP999,
            KlMax = d.KlMax,
            SameTop = d.Top1Agreement.Value,
            SameTopSe = d.Top1Agreement.StandardError,
            RmsDeltaP = d.RmsDeltaP.Value,
            RmsDeltaPSe = d.RmsDeltaP.StandardError,
        };
        if (gate is { Metric: "accuracy" }) return row;
        if (gate is null) return row with { Passed = true };
        (double baseline, double value) = gate.Metric switch
        {
            "perplexity" => (d.ReferencePerplexity.Value, d.ModifiedPerplexity.Value),
            "top1" => (1.0, d.Top1Agreement.Value),
            _ => (0.0, d.KlDivergence.Value),
        };
        if (gate.FixedBaseline is double fixedBaseline) baseline = fixedBaseline;
        return row with
        {
            Metric = gate.Metric,
            Baseline = baseline,
            Value = value,
            Limit = gate.Limit(baseline),
            Passed = gate.Passes(value, baseline),
            NearMiss = gate.NearMiss(value, baseline),
        };
    }

    /// <summary>The line a build prints for one row: an MSBuild-style error (SQ1001) or warning naming the manifest
    /// line, model, artifact, metric, value and limit; a near miss (SQ1002, within 20 % of the limit); or "passed".</summary>
    public static string Message(QuantizeManifest m, ModelEntry e, ArtifactRow a, bool warnOnly)
    {
        var at = e.Exports.FirstOrDefault(x => Path.GetFullPath(x.Path) == a.Path)?.At ?? new Position(e.Line, 1);
        string where = $"{m.Path}({at.Line},{at.Column})";
        string what = $"model '{e.Id}', artifact {Path.GetRelativePath(Path.GetDirectoryName(m.Path)!, a.Path)} ({a.Kind}, measured by {a.Engine} on " +
            $"{a.TokensScored} tokens)";
        string numbers = e.Gate.Metric == "accuracy"
            ? string.Join("; ", a.Tasks.Select(t => $"accuracy {t.Task} {t.Accuracy:P2} +/- {t.AccuracySe:P2} {(t.Passed ? "within" : "below")} the " +
                $"limit {t.Limit:P2} (original {t.Baseline:P2}, max_drop {Fmt(e.Gate.MaxIncrease)} points, {t.Documents} documents)"))
            : $"{a.Metric} {Fmt(a.Value)} {(a.Passed ? "within" : "exceeds")} the limit {Fmt(a.Limit)} (baseline {Fmt(a.Baseline)}, max_increase " +
                $"{Fmt(e.Gate.MaxIncrease)}{(e.Gate.Percent ? "%" : "")})";
        if (!a.Passed)
            return warnOnly ? $"{where}: warning {ErrorCodes.GateFailed}: {what}: {numbers} (SuperQuantGate=warn)"
                : $"{where}: error {ErrorCodes.GateFailed}: {what}: {numbers}";
        if (a.NearMiss) return $"{where}: warning SQ1002: {what}: {numbers}, within 20% of it";
        return $"{e.Id}: {a.Kind} {Path.GetFileName(a.Path)}: {numbers}: passed";
    }

    static string Fmt(double v) => v.ToString("G5", CultureInfo.InvariantCulture);
}
