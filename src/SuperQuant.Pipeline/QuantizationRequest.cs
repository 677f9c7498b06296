using SuperQuant.Core;
using SuperQuant.Manifest;

namespace SuperQuant.Pipeline;

/// <summary>Where a request's value came from, for error messages: a manifest position ("quantize.yaml(12,5)",
/// code SQ3001) or a command-line option ("--prompt-tokens", code SQ2009).</summary>
public sealed record Origin(string Where, string Code, string? File = null)
{
    public static Origin Option(string name) => new(name, ErrorCodes.InvalidArgument);
    public static Origin Manifest(string file, int line, int column, string key) => new($"{file}({line},{column}): '{key}'", ManifestException.Code, file);

    public SuperQuantException Error(string message) => new(Code, $"{Where}: {message}", File);
}

/// <summary>Tokens from a text file (tokenized with the checkpoint's tokenizer) or a token-id file.</summary>
public sealed record TokenSource(string Path, bool IsText, Origin Origin);

/// <summary>A zero-shot task file scored on the original model and on every artifact.</summary>
public sealed record TaskSource(string Name, string Path, Origin Origin);

/// <summary>One file the pipeline writes.</summary>
public abstract record ArtifactSpec(string Path, Origin Origin)
{
    public abstract string Kind { get; }
}

/// <summary>The packed artifact (<c>.sqpk.safetensors</c>), run by our loader and forward pass.</summary>
public sealed record PackedSpec(string Path, Origin Origin) : ArtifactSpec(Path, Origin)
{
    public override string Kind => "packed";
}

/// <summary>A GGUF file of a named type, run by llama.cpp.</summary>
public sealed record GgufSpec(string Path, GgufFileType Type, Origin Origin) : ArtifactSpec(Path, Origin)
{
    /// <summary>A size budget: per-tensor types chosen for it (<see cref="GgufBudget"/>); <see cref="Type"/> is then
    /// unused.</summary>
    public GgufTarget? Target { get; init; }
    public override string Kind => Target is { } t ? $"gguf target {t}" : "gguf " + Type.Name();
}

/// <summary>
/// Everything one quantization run needs, validated once (<see cref="Validate"/>): `superquant quantize` builds it
/// from options, `superquant gate` from a manifest entry (<see cref="RequestFromManifest"/>). Immutable.
/// </summary>
public sealed record QuantizationRequest
{
    public required string Id { get; init; }
    public required string Checkpoint { get; init; }
    public QuantMethod Method { get; init; } = QuantMethod.SuperAware;
    public int WeightBits { get; init; } = 4;
    public int ActivationBits { get; init; } = 16;
    /// <summary>0 = per channel; <see cref="Names.TensorBlock"/> = whole tensor (variant paper).</summary>
    public int BlockSize { get; init; } = 128;
    /// <summary>Ours (packed) or the paper's quantizer; clip method and levels as the reference code names them.</summary>
    public WeightVariant Variant { get; init; } = WeightVariant.Packed;
    public ClipMethod Clip { get; init; } = ClipMethod.ZScore;
    public LevelKind Levels { get; init; } = LevelKind.Integer;
    /// <summary>Activation quantizer settings for W/A runs (activation bits below 16 or a rotation method).</summary>
    public ActivationSettings Activations { get; init; } = new();
    /// <summary>null = tune on calibration data; +Infinity = no clipping.</summary>
    public double? Z { get; init; }
    public TokenSource? Calibration { get; init; }
    public TokenSource? Evaluation { get; init; }
    /// <summary>Detection prompt as ids (checked against the vocabulary once the model is loaded) or text.</summary>
    public int[]? PromptTokens { get; init; }
    public string? PromptText { get; init; }
    public Origin PromptOrigin { get; init; } = Origin.Option("--prompt-tokens");
    public int Context { get; init; } = 512;
    public Origin ContextOrigin { get; init; } = Origin.Option("--context");
    public required IReadOnlyList<ArtifactSpec> Artifacts { get; init; }
    public Origin MethodOrigin { get; init; } = Origin.Option("--method");
    /// <summary>Where a setting came from, by manifest key (the manifest gives its line; the CLI its option).</summary>
    public Func<string, Origin> OriginOf { get; init; } = key => Origin.Option(key switch
    {
        "checkpoint" => "--model",
        "block_size" => "--block",
        "weight_bits" => "--bits",
        "activation_bits" => "--activation-bits",
        "z" => "--z",
        _ => "--" + key.Replace('_', '-'),
    });
    /// <summary>Zero-shot tasks (manifest `tasks:`), scored with the checkpoint's tokenizer.</summary>
    public IReadOnlyList<TaskSource> Tasks { get; init; } = Array.Empty<TaskSource>();
    /// <summary>Where the tokenizer for text files lives (default: the checkpoint's folder).</summary>
    public string? TokenizerFolder { get; init; }

    public PackedSpec? Packed => Artifacts.OfType<PackedSpec>().SingleOrDefault();
    public IEnumerable<GgufSpec> Ggufs => Artifacts.OfType<GgufSpec>();

    /// <summary>The combination checks that do not need the model; each error names where the value came from.</summary>
    public QuantizationRequest Validate()
    {
        if (Artifacts.Count == 0) throw MethodOrigin.Error("nothing to write: give a packed artifact and/or a GGUF export");
        if (WeightBits < 2 || WeightBits > 8) throw OriginOf("weight_bits").Error($"weight bits {WeightBits} (supported: 2..8)");
        if (ActivationBits < 4 || ActivationBits > 16) throw OriginOf("activation_bits").Error($"activation bits {ActivationBits} (supported: 4..16)");
        if (!ActivationSettings.Scales.Contains(Activations.Scale)
            || (Activations.Quantizer is string aq && !ActivationSettings.Quantizers.Contains(aq))
            || !ActivationSettings.SuperActivations.Contains(Activations.SuperActivation))
            throw OriginOf("activation_scale").Error($"activation settings '{Activations}' (scale: {string.Join("|", ActivationSettings.Scales)}; " +
                $"quantizer: {string.Join("|", ActivationSettings.Quantizers)}; super activation: {string.Join("|", ActivationSettings.SuperActivations)})");
        if (Names.BlockSizeProblem(BlockSize, Variant) is string blockProblem) throw OriginOf("block_size").Error(blockProblem);
        if (Variant != WeightVariant.Paper && (Clip is not (ClipMethod.ZScore or ClipMethod.None) || Levels != LevelKind.Integer))
            throw OriginOf(Clip is not (ClipMethod.ZScore or ClipMethod.None) ? "clip"
                : "levels").Error($"clip {Clip.Name()} / levels {Levels.Name()} are the paper's reference code: use variant paper");
        if (Levels == LevelKind.NormalFloat && WeightBits is not (3 or 4)) throw OriginOf("levels").Error($"normal-float levels exist for 3 and 4 bits " +
            $"(NF3, NF4), not {WeightBits}");
        if (Variant == WeightVariant.Paper && Method is not (QuantMethod.SuperAware or QuantMethod.Rtn))
            throw OriginOf("variant").Error($"variant paper is the Super Weight paper's weight quantizer: method rtn or super-aware, not {Method.Name()}");
        if (Clip is ClipMethod.BlockPercentage or ClipMethod.TensorPercentage && Z is double fraction && double.IsFinite(fraction) && fraction >= 1)
            throw OriginOf("z").Error($"clip {Clip.Name()}: the threshold is the fraction of weights clipped, in (0, 1), not {fraction}");
        if (Z is double z && !(z > 0)) throw OriginOf("z").Error($"z {z} must be a positive number");
        if (Context < 2 || Context > 1 << 20) throw ContextOrigin.Error($"context {Context} must be in 2..{1 << 20}");
        bool calibrated = Calibration is not null;
        if (Method.NeedsCalibration() && !calibrated)
            throw MethodOrigin.Error($"{Method.Name()} calibrates its smoothing scales: it needs calibration data " +
                $"(calibration_text/calibration_tokens, --calibration-text/--calibration-tokens)");
        if (Method == QuantMethod.SuperAware && Z is null && !calibrated)
            throw MethodOrigin.Error("z: auto tunes the clipping threshold on calibration data: give calibration_text/calibration_tokens " +
                "(--calibration-*), or a fixed z (a number, or none)");
        foreach (var g in Ggufs)
        {
            if (Method == QuantMethod.SuperAware && Clip is not (ClipMethod.ZScore or ClipMethod.None))
                throw g.Origin.Error($"the super-aware GGUF search clips by z-score; clip {Clip.Name()} applies to the packed artifact only: export the " +
                    $"GGUF from a zscore entry");
            if (Method.NeedsRuntimeTransforms(ActivationBits))
                throw g.Origin.Error($"GGUF holds weights only: {Method.Name()} with activation bits {ActivationBits} needs run-time activation " +
                    $"transforms, which only the packed artifact carries");
            if (Method.Transforms())
                throw g.Origin.Error($"GGUF export of {Method.Name()} is not supported: its smoothing is folded into the norms for a run-time " +
                    $"activation quantizer that llama.cpp does not have; use rtn or super-aware for GGUF");
            if (g.Target is not null)
            {
                if (!calibrated)
                    throw g.Origin.Error($"a GGUF size budget ({g.Target}) chooses each tensor's type from its measured sensitivity on calibration " +
                        $"data: give calibration_text/calibration_tokens (--calibration-*), or a named type (gguf: TYPE, --gguf-type)");
                continue;
            }
            if (g.Type.NeedsImportance() && !calibrated)
                throw g.Origin.Error($"GGUF type {g.Type.Name()} is an importance-matrix type: its rows are weighted by the mean squared inputs on " +
                    $"calibration data (llama-quantize --imatrix); give calibration_text/calibration_tokens (--calibration-*), or export a type that " +
                    $"needs none at about that size (q4_k_s, q4_0; q4_k_m is a little larger)");
            if (!g.Type.IsFloat() && g.Type.NominalBits() != WeightBits)
                throw g.Origin.Error($"GGUF type {g.Type.Name()} stores {g.Type.NominalBits()}-bit weights but weight_bits is {WeightBits}: make " +
                    $"them agree (or export f16/bf16)");
        }
        return this;
    }
}
