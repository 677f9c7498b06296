namespace SuperQuant.Manifest;

/// <summary>A parsed, validated quantize.yaml. Paths are absolute (resolved against the manifest's folder).</summary>
public sealed record QuantizeManifest(string Path, int Version, string Device, IReadOnlyList<ModelEntry> Models)
{
    /// <summary>auto | model | layers: hold the whole model, or one decoder block at a time (models larger than RAM).</summary>
    public string Memory { get; init; } = "auto";
}

/// <summary>A position in the manifest, for messages.</summary>
public readonly record struct Position(int Line, int Column);

/// <summary>A zero-shot task file (JSONL) the gate scores with the `accuracy` metric.</summary>
public sealed record TaskEntry(string Name, string Path, Position At);

/// <summary>One file a model writes: the packed artifact, or a GGUF of a named type.</summary>
public sealed record ExportEntry(GgufFileType? GgufType, string Path, Position At)
{
    /// <summary>A GGUF whose per-tensor types are chosen for this size (gguf_target); <see cref="GgufType"/> is null.</summary>
    public GgufTarget? Target { get; init; }
    public bool IsPacked => GgufType is null && Target is null;
    public string Kind => Target is { } target ? $"gguf target {target}" : GgufType is GgufFileType t ? "gguf " + t.Name() : "packed";
}

public sealed record ModelEntry
{
    public required string Id { get; init; }
    public required string Checkpoint { get; init; }
    /// <summary>The packed artifact's path; GGUF exports default to its name with ".TYPE.gguf".</summary>
    public required string Output { get; init; }
    public QuantMethod Method { get; init; } = QuantMethod.SuperAware;
    public int WeightBits { get; init; } = 4;
    public int ActivationBits { get; init; } = 16;
    /// <summary>0 = per-channel; <see cref="Names.TensorBlock"/> = the whole tensor (variant paper).</summary>
    public int BlockSize { get; init; } = 128;
    /// <summary><see cref="Names.VariantNames"/>, <see cref="Names.ClipNames"/>, <see cref="Names.LevelNames"/>.</summary>
    public WeightVariant Variant { get; init; } = WeightVariant.Packed;
    public ClipMethod Clip { get; init; } = ClipMethod.ZScore;
    public LevelKind Levels { get; init; } = LevelKind.Integer;
    /// <summary>W/A runs: per-token | per-tensor; symmetric | asymmetric (null = the method's default); channel | scalar.</summary>
    public string ActivationScale { get; init; } = "per-token";
    public string? ActivationQuantizer { get; init; }
    public string SuperActivation { get; init; } = "channel";
    /// <summary>null = auto (tuned on calibration data); +Infinity = none.</summary>
    public double? Z { get; init; }
    public string? CalibrationText { get; init; }
    public string? CalibrationTokens { get; init; }
    public string? EvaluationText { get; init; }
    public string? EvaluationTokens { get; init; }
    public int[]? PromptTokens { get; init; }
    public int Context { get; init; } = 512;
    public IReadOnlyList<ExportEntry> Exports { get; init; } = Array.Empty<ExportEntry>();
    /// <summary>Zero-shot tasks (`tasks: {piqa: data/piqa.jsonl}`), scored on every artifact; gated with metric accuracy.</summary>
    public IReadOnlyList<TaskEntry> Tasks { get; init; } = Array.Empty<TaskEntry>();
    public required QualityGate Gate { get; init; }
    /// <summary>Line of the entry in the manifest, for messages.</summary>
    public int Line { get; init; }
    /// <summary>Where each key of the entry was written (for errors found later, e.g. a prompt id outside the vocabulary).</summary>
    public IReadOnlyDictionary<string, Position> Positions { get; init; } = new Dictionary<string, Position>();

    public Position PositionOf(string key) => Positions.TryGetValue(key, out var p) ? p : new Position(Line, 1);

    /// <summary>Every file this model's result depends on besides the manifest, the checkpoint and the tool.</summary>
    public IEnumerable<string> DataFiles => new[] { CalibrationText, CalibrationTokens, EvaluationText,
        EvaluationTokens }.Where(f => f != null).Concat(Tasks.Select(t => t.Path))!;

    /// <summary>The settings that decide this model's artifacts (positions excluded: moving a line changes nothing).</summary>
    public string SettingsKey => string.Join("|", Id, Checkpoint, Output, Method.Name(), WeightBits, ActivationBits, BlockSize, Variant.Name(), Clip.Name(),
        Levels.Name(), ActivationScale, ActivationQuantizer, SuperActivation,
        Z?.ToString("R", System.Globalization.CultureInfo.InvariantCulture) ?? "auto", CalibrationText, CalibrationTokens, EvaluationText, EvaluationTokens,
        PromptTokens is null ? "" : string.Join(",", PromptTokens), Context, string.Join(",", Exports.Select(e => e.Kind + "=" + e.Path)),
            string.Join(",", Tasks.Select(t => t.Name + "=" + t.Path)), Gate);
}
