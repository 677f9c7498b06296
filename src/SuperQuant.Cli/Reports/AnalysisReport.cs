using System.Text.Json;
using System.Text.Json.Serialization;
using SuperQuant.Core.Evaluation;
using SuperQuant.Core.SuperWeights;

namespace SuperQuant.Cli.Reports;

/// <summary>analysis.json: everything `superquant analyze` measured. Versioned: readers check <see cref="SchemaVersion"/>.</summary>
public sealed record AnalysisReport
{
    public const string SchemaName = "superquant.analysis";
    public const int CurrentSchemaVersion = 1;

    public string Schema { get; init; } = SchemaName;
    public int SchemaVersion { get; init; } = CurrentSchemaVersion;
    public required string Model { get; init; }
    public required string Architecture { get; init; }
    public required DetectionSection Detection { get; init; }
    public EvaluationSection? Evaluation { get; init; }
    public List<QualityRow> Conditions { get; init; } = new();
    public List<ScalingRow> Scaling { get; init; } = new();
    public StopwordSection? Stopwords { get; init; }
    public ControlRow? Control { get; init; }
    /// <summary>Share of the perplexity loss from zeroing the super weights that restoring the super activation
    /// recovers: (ppl zeroed - ppl restored) / (ppl zeroed - ppl original).</summary>
    public double? RestoredShare { get; init; }
    public NextTokenSection? NextToken { get; init; }
    /// <summary>Each super activation across prompts (same channel, its token and value per prompt) and the mean
    /// |residual| at its channel and token after every block.</summary>
    public List<SuperActivationTrace> Traces { get; init; } = new();
    /// <summary>Why the ablations are absent, when they are.</summary>
    public string? AblationsSkipped { get; init; }

    public static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };
}

public sealed record SpikeRow(int Layer, double InputMagnitude, int InputChannel, int InputToken, double OutputMagnitude, int OutputChannel, int OutputToken);

public sealed record SuperWeightRow(int Layer, int Row, int Column, float Value, int Iteration);

public sealed record SuperActivationRow(int Layer, int Channel, int Token, float Value, int InputChannel, float InputValue);

public sealed record HintRow(string Model, List<int[]> Coordinates, bool AllDetected);

public sealed record DetectionSection
{
    public required string Rule { get; init; }
    public required double Threshold { get; init; }
    public required List<int> PromptTokens { get; init; }
    public string? PromptText { get; init; }
    public required List<SuperWeightRow> SuperWeights { get; init; }
    public required List<SuperActivationRow> SuperActivations { get; init; }
    public required List<SpikeRow> Spikes { get; init; }
    public required int Iterations { get; init; }
    public required bool StoppedAtMaxIterations { get; init; }
    public required string Summary { get; init; }
    public List<HintRow> KnownModelHints { get; init; } = new();

    public static DetectionSection From(DetectionReport r, string? promptText, IReadOnlyList<KnownSuperWeights.Entry> hints)
    {
        var found = r.SuperWeights.Select(s => (s.Layer, s.Row, s.Column)).ToHashSet();
        string summary = r.Found
            ? $"{r.SuperWeights.Count} super weight(s) found: "
                + string.Join(", ", r.SuperWeights.Select(s => $"layer {s.Layer} [{s.Row}, {s.Column}] = {s.Value:G4}"))
            : $"no super weight above threshold {r.FirstPassThreshold:G4}; largest down_proj output spike " +
                $"{r.OriginalSpikes.Max(s => s.Output.Magnitude):G4} (layer {r.OriginalSpikes.MaxBy(s => s.Output.Magnitude)!.Layer})";
        return new DetectionSection
        {
            Rule = r.Rule.ToString(),
            Threshold = r.FirstPassThreshold,
            PromptTokens = r.PromptTokens.ToList(),
            PromptText = promptText,
            SuperWeights = r.SuperWeights.Select(s => new SuperWeightRow(s.Layer, s.Row, s.Column, s.Value, s.Iteration)).ToList(),
            SuperActivations = r.SuperActivations.Select(a => new SuperActivationRow(a.Layer, a.Channel, a.Token, a.Value, a.InputChannel,
                a.InputValue)).ToList(),
            Spikes = r.OriginalSpikes.Select(s => new SpikeRow(s.Layer, s.Input.Magnitude, s.Input.Channel, s.Input.Token, s.Output.Magnitude,
                s.Output.Channel, s.Output.Token)).ToList(),
            Iterations = r.Iterations,
            StoppedAtMaxIterations = r.StoppedAtMaxIterations,
            Summary = summary,
            KnownModelHints = hints.Select(h => new HintRow(h.Model, h.Coordinates.Select(c => new[] { c.Layer, c.Row, c.Column }).ToList(),
                h.Coordinates.All(c => found.Contains(c)))).ToList(),
        };
    }
}

public sealed record EvaluationSection(string Source, int Tokens, int Context, int Stride, double Perplexity, double PerplexitySe);

public sealed record QualityRow(string Name, string Description, double Perplexity, double PerplexitySe, double KlDivergence, double KlDivergenceSe,
    double Top1Agreement, double Top1AgreementSe)
{
    public static QualityRow From(string name, string description, DivergenceResult d) =>
        new(name, description, d.ModifiedPerplexity.Value, d.ModifiedPerplexity.StandardError, d.KlDivergence.Value, d.KlDivergence.StandardError,
            d.Top1Agreement.Value, d.Top1Agreement.StandardError);
}

public sealed record ScalingRow(double Scale, double Perplexity, double PerplexitySe, double KlDivergence, double Top1Agreement)
{
    /// <summary>Zero-shot accuracy per task (analyze --task) at this scale.</summary>
    public Dictionary<string, double>? Accuracy { get; init; }
}

public sealed record StopwordRow(int TokenId, string Label, double Original, double Zeroed, double Ratio);

public sealed record StopwordSection(string Source, int Prompts, List<StopwordRow> Tokens);

public sealed record TokenProbability(int Id, string Text, double Probability);

/// <summary>Zeroed and OriginalTopAfterZeroing are null when no super weight was detected.</summary>
public sealed record NextTokenSection(string Prompt, List<TokenProbability> Original, List<TokenProbability>? Zeroed, double? OriginalTopAfterZeroing);

public sealed record ControlRow(int WeightsZeroed, double SmallestMagnitudeZeroed, double Perplexity, double PerplexitySe, double KlDivergence,
    double Top1Agreement);
