using System.Globalization;
using System.Text;
using SuperQuant.Core;
using SuperQuant.Core.Evaluation;
using SuperQuant.Manifest;
using SuperQuant.Pipeline;

namespace SuperQuant.Cli.Reports;

/// <summary>One zero-shot task on one artifact: its accuracy (measured by the artifact's runtime), the original
/// model's, and the accuracy gate's verdict when the gate metric is accuracy.</summary>
public sealed record TaskRow(string Task, int Documents, double Accuracy, double AccuracySe, double? AccuracyNorm, double? Perplexity,
    double Baseline, double BaselineSe, double Limit, bool Passed);

/// <summary>One shipped (or refused) file: how it was measured, its llama.cpp-style statistics and its gate verdict.</summary>
public sealed record ArtifactRow
{
    public required string Kind { get; init; }
    public required string Path { get; init; }
    public required string Engine { get; init; }
    public required long Bytes { get; init; }
    public required double BitsPerWeight { get; init; }
    public required string Layout { get; init; }
    public string? Metric { get; init; }
    public double Baseline { get; init; }
    public double Value { get; init; }
    public double Limit { get; init; }
    public bool Passed { get; init; }
    public bool NearMiss { get; init; }
    public long TokensScored { get; init; }
    public double Perplexity { get; init; }
    public double PerplexitySe { get; init; }
    public double ReferencePerplexity { get; init; }
    public double ReferencePerplexitySe { get; init; }
    public double PerplexityDelta { get; init; }
    public double PerplexityDeltaSe { get; init; }
    public double LnPerplexityRatio { get; init; }
    public double LnPerplexityRatioSe { get; init; }
    public double KlMean { get; init; }
    public double KlMeanSe { get; init; }
    public double KlMedian { get; init; }
    public double KlP90 { get; init; }
    public double KlP99 { get; init; }
    public double KlP999 { get; init; }
    public double KlMax { get; init; }
    public double SameTop { get; init; }
    public double SameTopSe { get; init; }
    public double RmsDeltaP { get; init; }
    public double RmsDeltaPSe { get; init; }
    public List<TaskRow> Tasks { get; init; } = new();
}

/// <summary>One model of a gate run.</summary>
public sealed record ModelReport
{
    public required string Id { get; init; }
    /// <summary>quantized | up-to-date | failed</summary>
    public required string Status { get; init; }
    public required string Settings { get; init; }
    public required string Detection { get; init; }
    public required List<int[]> SuperWeights { get; init; }
    public double? Z { get; init; }
    public bool ReferenceFromCache { get; init; }
    public int TokensEvaluated { get; init; }
    public required List<ArtifactRow> Artifacts { get; init; }
    public List<StepTiming> Steps { get; init; } = new();
    public required string InputHash { get; init; }
    public double Seconds { get; init; }
    public bool Passed => Artifacts.All(a => a.Passed);
    public bool NearMiss => Passed && Artifacts.Any(a => a.NearMiss);
}

public static class ArtifactReport
{
    static string F(double v) => v.ToString("G5", CultureInfo.InvariantCulture);

    /// <summary>The console line `quantize` prints per artifact.</summary>
    public static string Line(ArtifactResult a)
    {
        string head = $"{a.Spec.Kind}: {a.File.FinalPath} ({a.Bytes / 1048576.0:F2} MiB, {a.BitsPerWeight:F2} bits/weight; {a.Layout})";
        string tasks = string.Concat(a.Tasks.Select(t => $"\n  {t.Task}: accuracy {t.Accuracy.Value:P2} +/- {t.Accuracy.StandardError:P2} over " +
            $"{t.Documents} documents" +
            (t.AccuracyNorm is Estimate n ? $", acc_norm {n.Value:P2}" : "") + (t.Perplexity is Estimate p ? $", perplexity {p.Value:F3}" : "")
                + $" ({a.Engine})"));
        if (a.Quality is not DivergenceResult d) return head + $"; loaded and run by {a.Engine} (no evaluation data)" + tasks;
        return head + $"\n  measured by {a.Engine} on {d.TokensScored} tokens: KL {d.KlDivergence.Value:F6} +/- {d.KlDivergence.StandardError:F6} " +
            $"(median {F(d.KlMedian)}, p99 {F(d.KlP99)}, max {F(d.KlMax)}), " +
            $"same top {d.Top1Agreement.Value:P2}, perplexity {d.ModifiedPerplexity.Value:F4} +/- {d.ModifiedPerplexity.StandardError:F4} (original " +
                $"{d.ReferencePerplexity.Value:F4}), RMS dp {d.RmsDeltaP.Value:P3}" + tasks;
    }

    public static object Json(ArtifactResult a) => SuperQuant.Cli.Gate.GateVerdict.Judge(a, null);

    /// <summary>superquant-report.md: one row per artifact, the numbers llama-perplexity --kl-divergence prints.</summary>
    public static string Markdown(string manifest, IReadOnlyList<ModelReport> models)
    {
        var sb = new StringBuilder("# SuperQuant quality gate\n\n").Append($"Manifest: `{manifest}`\n\n");
        foreach (var m in models)
        {
            sb.Append($"## {m.Id}: {(m.Passed ? (m.NearMiss ? "near miss" : "passed") : "**FAILED**")} ({m.Status})\n\n")
              .Append($"{m.Settings}. Super weights: {m.Detection}.{(m.Z is double z ? $" z = {F(z)}." : "")} Evaluated on {m.TokensEvaluated} tokens" +
                      $"{(m.ReferenceFromCache ? " (baseline from cache)" : "")}.\n\n")
              .Append("| artifact | engine | size | bits/weight | gate | value | limit | PPL(Q) | PPL(base) | ΔPPL | KLD mean | KLD median | KLD p99 " +
                  "| KLD p99.9 | KLD max | same top | RMS Δp |\n")
              .Append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
            foreach (var a in m.Artifacts)
                sb.Append($"| {a.Kind} `{System.IO.Path.GetFileName(a.Path)}` | {a.Engine} | {a.Bytes / 1048576.0:F2} MiB | {a.BitsPerWeight:F3} | " +
                          $"{(a.Passed ? (a.NearMiss ? "near miss" : "passed") : "**FAILED**")} ({a.Metric}) | {F(a.Value)} | {F(a.Limit)} | " +
                              $"{F(a.Perplexity)} ± {F(a.PerplexitySe)} | " +
                          $"{F(a.ReferencePerplexity)} | {F(a.PerplexityDelta)} ± {F(a.PerplexityDeltaSe)} | {F(a.KlMean)} ± {F(a.KlMeanSe)} | " +
                              $"{F(a.KlMedian)} | {F(a.KlP99)} | {F(a.KlP999)} | " +
                          $"{F(a.KlMax)} | {a.SameTop:P2} ± {a.SameTopSe:P2} | {a.RmsDeltaP:P3} |\n");
            if (m.Artifacts.Any(a => a.Tasks.Count > 0))
            {
                sb.Append("\n| artifact | task | documents | accuracy | original | limit | acc_norm | perplexity | gate " +
                    "|\n|---|---|---|---|---|---|---|---|---|\n");
                foreach (var a in m.Artifacts)
                    foreach (var t in a.Tasks)
                        sb.Append($"| {a.Kind} | {t.Task} | {t.Documents} | {t.Accuracy:P2} ± {t.AccuracySe:P2} | {t.Baseline:P2} ± " +
                            $"{t.BaselineSe:P2} | {(double.IsNaN(t.Limit) ? "-" : t.Limit.ToString("P2", CultureInfo.InvariantCulture))} | " +
                                  $"{(t.AccuracyNorm is double n ? n.ToString("P2", CultureInfo.InvariantCulture) : "-")} | " +
                                      $"{(t.Perplexity is double pp ? F(pp) : "-")} | {(t.Passed ? "passed" : "**FAILED**")} |\n");
            }
            if (m.Steps.Count > 0)
            {
                sb.Append("\n| step | seconds | peak memory |\n|---|---|---|\n");
                foreach (var s in m.Steps) sb.Append($"| {s.Step} | {s.Seconds:F2} | {s.PeakBytes / 1048576.0:F0} MiB |\n");
            }
            sb.Append('\n');
        }
        return sb.ToString();
    }
}
