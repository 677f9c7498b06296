namespace SuperQuant.Manifest;

/// <summary>The quantization methods, by the name users write (manifest `method:`, CLI `--method`, artifact metadata).</summary>
public enum QuantMethod
{
    /// <summary>Plain block round-to-nearest.</summary>
    Rtn,
    /// <summary>The Super Weight paper: detect super weights, clip at a tuned z, round, keep the super weights exact.</summary>
    SuperAware,
    /// <summary>SmoothQuant: activation outliers migrated into the weights by per-channel scales (W/A).</summary>
    SmoothQuant,
    /// <summary>QuaRot-style Hadamard rotation of every linear input (W/A).</summary>
    Hadamard,
    /// <summary>DuQuant: smoothing, greedy block rotations and a zigzag permutation (W/A).</summary>
    DuQuant,
}

/// <summary>
/// GGUF file types as llama.cpp's quantizer names them (llama-quantize's TYPE argument): a named mix of per-tensor ggml
/// types. <see cref="Names"/> is the one table of their spellings, nominal bits and llama_ftype numbers.
/// </summary>
public enum GgufFileType
{
    F16, BF16, Q8_0, Q6_K, Q5_K_M, Q5_K_S, Q5_1, Q5_0, Q4_K_M, Q4_K_S, Q4_1, Q4_0, Q3_K_L, Q3_K_M, Q3_K_S, Q2_K,
    /// <summary>The importance-matrix types: they need calibration data (an imatrix) to be written.</summary>
    IQ4_XS, IQ4_NL, IQ3_M, IQ3_S, IQ3_XXS, IQ2_M,
}

/// <summary>Which weight quantizer: ours (the packed default) or the Super Weight paper's reference code.</summary>
public enum WeightVariant
{
    /// <summary>Row blocks, fp16 scale + integer zero point, z-score clip over the whole matrix with the gate/up rows
    /// that feed a super activation exempted (BlockRtnQuantizer, ZScoreClipping).</summary>
    Packed,
    /// <summary>The paper's code: flattened blocks (up to the whole tensor), per-block clipping of |W| with any of the
    /// reference's clip methods, float min offset, fp32 block statistics (PaperBlockQuantizer).</summary>
    Paper,
}


/// <summary>How outliers are clipped before rounding, with the Super Weight reference code's names
/// (LLMSuperWeight <c>quantize_blockwise(..., clip_method, clip_threshold)</c>).</summary>
public enum ClipMethod
{
    /// <summary>"no": nothing is clipped.</summary>
    None,
    /// <summary>"zscore": threshold = mean(|W|) + t * std(|W|) per block (paper variant) or signed mean +/- t * std
    /// over the whole matrix (packed variant).</summary>
    ZScore,
    /// <summary>"block_percentage": per block, the (int(block * t) + 1)-th largest |W| is the threshold.</summary>
    BlockPercentage,
    /// <summary>"tensor_percentage": the max(int(numel * t), 1)-th largest |W| of the tensor is the threshold.</summary>
    TensorPercentage,
    /// <summary>"iqr": threshold = Q3 + t * (Q3 - Q1) of |W| per block (t = 1.5 is Tukey's fence).</summary>
    Iqr,
}

/// <summary>How one block's values are turned into levels.</summary>
public enum LevelKind
{
    /// <summary>Uniform integers 0..2^bits-1 over [min, max] of the block: w_q = round((w - min) * s) / s + min,
    /// s = (2^bits - 1) / (max - min).</summary>
    Integer,
    /// <summary>The reference's "scale_shift": s = (2^bits - 0.01) / (max - min), code = round((w - min) * s - 0.49),
    /// w_q = (code + 0.49) / s + min (the grid is shifted half a step so both ends get a full bin).</summary>
    ShiftedInteger,
    /// <summary>Normal-float poles (NF4 for 4 bits, NF3 for 3): the block is mapped onto [-1, 1] by its min and max
    /// and each value goes to the nearest pole (QLoRA's levels, as the reference lists them).</summary>
    NormalFloat,
}


/// <summary>How much of the model a run holds. The artifacts are the same either way (tested byte for byte); only
/// memory and time differ.</summary>
public enum MemoryMode
{
    /// <summary>Layers for a Hugging Face checkpoint of at least 1 GiB in fp32 (or over
    /// 60 % of the memory available now) unless the method is W/A; else the whole
    /// model.</summary>
    Auto,
    /// <summary>The whole fp32 model in memory (fastest; every method and task).</summary>
    Model,
    /// <summary>Layer-streamed: the embedding, head and one decoder block in memory, each block read from disk when a
    /// pass reaches it and evaluation run layer-major over batches of windows. For models larger than RAM.</summary>
    Layers,
}

/// <summary>How the super-aware GGUF export decides what ships.</summary>
public enum GgufChoice
{
    /// <summary>The held-out choice up to <c>SuperAwareGguf.HeldOutChoiceMaxParameters</c>, one build above it.</summary>
    Auto,
    /// <summary>Four candidate files, each built from one calibration half and measured by llama.cpp on the other; the
    /// best rebuilt from all of it (about eight builds and eight llama.cpp runs).</summary>
    HeldOut,
    /// <summary>One build: per row the lowest layer-output error among llama.cpp's rows, importance-weighted rows and
    /// GPTQ's, with the calibration inputs read back one matrix group at a time.</summary>
    OneBuild,
}

/// <summary>The single name table for methods and GGUF file types: CLI parsing, the manifest reader, artifact metadata
/// and the JSON schema (tested to list exactly these) all read it.</summary>
public static class Names
{
    static readonly (QuantMethod Method, string Name)[] MethodTable =
    {
        (QuantMethod.Rtn, "rtn"), (QuantMethod.SuperAware, "super-aware"), (QuantMethod.SmoothQuant, "smoothquant"),
        (QuantMethod.Hadamard, "hadamard"), (QuantMethod.DuQuant, "duquant"),
    };

    /// <summary>name, nominal weight bits (16 for the float types), llama_ftype number.</summary>
    static readonly (GgufFileType Type, string Name, int Bits, int LlamaFtype)[] GgufTable =
    {
        (GgufFileType.F16, "f16", 16, 1), (GgufFileType.BF16, "bf16", 16, 32), (GgufFileType.Q8_0, "q8_0", 8, 7),
        (GgufFileType.Q6_K, "q6_k", 6, 18), (GgufFileType.Q5_K_M, "q5_k_m", 5, 17), (GgufFileType.Q5_K_S, "q5_k_s", 5, 16),
        (GgufFileType.Q5_1, "q5_1", 5, 9), (GgufFileType.Q5_0, "q5_0", 5, 8), (GgufFileType.Q4_K_M, "q4_k_m", 4, 15),
        (GgufFileType.Q4_K_S, "q4_k_s", 4, 14), (GgufFileType.Q4_1, "q4_1", 4, 3), (GgufFileType.Q4_0, "q4_0", 4, 2),
        (GgufFileType.Q3_K_L, "q3_k_l", 3, 13), (GgufFileType.Q3_K_M, "q3_k_m", 3, 12), (GgufFileType.Q3_K_S, "q3_k_s", 3, 11),
        (GgufFileType.Q2_K, "q2_k", 2, 10), (GgufFileType.IQ4_XS, "iq4_xs", 4, 30), (GgufFileType.IQ4_NL, "iq4_nl", 4, 25),
        (GgufFileType.IQ3_M, "iq3_m", 3, 27), (GgufFileType.IQ3_S, "iq3_s", 3, 26), (GgufFileType.IQ3_XXS, "iq3_xxs", 3, 23),
            (GgufFileType.IQ2_M, "iq2_m", 2, 29),
    };

    static readonly (WeightVariant Variant, string Name)[] VariantTable = { (WeightVariant.Packed, "packed"), (WeightVariant.Paper, "paper") };
    static readonly (MemoryMode Mode, string Name)[] MemoryTable = { (MemoryMode.Auto, "auto"), (MemoryMode.Model, "model"), (MemoryMode.Layers, "layers") };
    static readonly (GgufChoice Choice, string Name)[] ChoiceTable =
        { (GgufChoice.Auto, "auto"), (GgufChoice.HeldOut, "held-out"), (GgufChoice.OneBuild, "one-build") };
    /// <summary>The reference code's clip_method names.</summary>
    static readonly (ClipMethod Method, string Name)[] ClipTable =
    {
        (ClipMethod.None, "no"), (ClipMethod.ZScore, "zscore"), (ClipMethod.BlockPercentage, "block_percentage"),
        (ClipMethod.TensorPercentage, "tensor_percentage"), (ClipMethod.Iqr, "iqr"),
    };
    /// <summary>The reference's use_normal_float and scale_shift flags as level names.</summary>
    static readonly (LevelKind Kind, string Name)[] LevelTable =
        { (LevelKind.Integer, "int"), (LevelKind.ShiftedInteger, "int-shifted"), (LevelKind.NormalFloat, "normal-float") };

    public static IReadOnlyList<string> MethodNames { get; } = MethodTable.Select(m => m.Name).ToArray();

    /// <summary>Weight quantizer variants: ours (`packed`, the default) or the Super Weight paper's code (`paper`).</summary>
    public static IReadOnlyList<string> VariantNames { get; } = VariantTable.Select(v => v.Name).ToArray();
    /// <summary>The manifest's top-level memory: whole model, one decoder block at a time, or chosen by size.</summary>
    public static IReadOnlyList<string> MemoryNames { get; } = MemoryTable.Select(m => m.Name).ToArray();
    /// <summary>How the super-aware GGUF export chooses what ships (<see cref="GgufChoice"/>).</summary>
    public static IReadOnlyList<string> GgufChoiceNames { get; } = ChoiceTable.Select(c => c.Name).ToArray();
    /// <summary>Clip methods with the reference code's names (its clip_method); all but zscore/no need variant paper.</summary>
    public static IReadOnlyList<string> ClipNames { get; } = ClipTable.Select(c => c.Name).ToArray();
    /// <summary>Quantization levels: integers, the reference's shifted grid (scale_shift), normal-float poles (use_normal_float).</summary>
    public static IReadOnlyList<string> LevelNames { get; } = LevelTable.Select(l => l.Name).ToArray();

    public static string Name(this WeightVariant v) => VariantTable.First(x => x.Variant == v).Name;
    public static string Name(this MemoryMode m) => MemoryTable.First(x => x.Mode == m).Name;
    public static string Name(this ClipMethod m) => ClipTable.First(x => x.Method == m).Name;
    public static string Name(this LevelKind k) => LevelTable.First(x => x.Kind == k).Name;

    public static WeightVariant ParseVariant(string s) => Parse(VariantTable, s, "variant");
    public static MemoryMode ParseMemory(string s) => Parse(MemoryTable, s, "memory");
    public static GgufChoice ParseGgufChoice(string s) => Parse(ChoiceTable, s, "GGUF choice");
    public static ClipMethod ParseClip(string s) => Parse(ClipTable, s, "clip method");
    public static LevelKind ParseLevels(string s) => Parse(LevelTable, s, "levels");

    static T Parse<T>((T Value, string Name)[] table, string s, string what)
    {
        foreach (var (value, name) in table)
            if (Is(s, name)) return value;
        throw new FormatException($"unknown {what} '{s}' (expected one of {string.Join(", ", table.Select(t => t.Name))})");
    }
    /// <summary>Zero-shot tasks a manifest may list under `tasks:` (the reader of their files is Models' TaskFile,
    /// whose table a test keeps equal to this one).</summary>
    public static IReadOnlyList<string> TaskNames { get; } = new[] { "arc_easy", "arc_challenge", "hellaswag", "piqa", "sciq", "winogrande", "lambada" };

    /// <summary>Block size of the whole tensor as one block (variant paper).</summary>
    public const int TensorBlock = -1;
    public const int MaxPaperBlock = 1 << 30;

    /// <summary>Checks a block size against a variant: packed takes 32..4096 or channel (0); paper takes a power of two
    /// from 32, channel or tensor. Returns the reason it is not accepted, or null.</summary>
    public static string? BlockSizeProblem(int block, WeightVariant variant) => variant == WeightVariant.Paper
        ? block == 0 || block == TensorBlock || (block >= 32 && (block & (block - 1)) == 0) ? null
            : $"block size {block}: the paper variant takes a power of two from 32, channel or tensor"
        : block == 0 || (block >= 32 && block <= 4096) ? null
        : block == TensorBlock ? "block size tensor needs variant: paper (flattened blocks)"
            : $"block size {block} (supported: 32..4096 or channel; larger power-of-two blocks and tensor need variant: paper)";

    /// <summary>"channel" -> 0, "tensor" -> <see cref="TensorBlock"/>, an integer 32..2^30 -> itself; else null.</summary>
    public static int? ParseBlockSize(string? s) => Is(s, "channel") || Is(s, "per-channel") ? 0 : Is(s, "tensor") ? TensorBlock
        : int.TryParse(s, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int b) && b >= 32
            && b <= MaxPaperBlock ? b : null;

    /// <summary>z as users write it (manifest `z:`, CLI `--z`): auto -> null (tuned), none -> +Infinity (no clipping), else a
    /// positive finite number.</summary>
    public static bool TryParseZ(string? s, out double? z)
    {
        z = null;
        if (Is(s, "auto")) return true;
        if (Is(s, "none")) { z = double.PositiveInfinity; return true; }
        if (double.TryParse(s, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double v)
            && double.IsFinite(v) && v > 0) { z = v; return true; }
        return false;
    }

    public static string BlockSizeName(int block) => block == 0 ? "channel" : block == TensorBlock ? "tensor"
        : block.ToString(System.Globalization.CultureInfo.InvariantCulture);
    public static IReadOnlyList<string> GgufTypeNames { get; } = GgufTable.Select(t => t.Name).ToArray();

    public static string Name(this QuantMethod m) => MethodTable.First(x => x.Method == m).Name;
    public static string Name(this GgufFileType t) => GgufTable.First(x => x.Type == t).Name;

    /// <summary>Whether a name the user wrote is <paramref name="name"/>: ordinal, ignoring case, never in the current
    /// culture (a tr-TR culture lowers "I" to dotless "ı"). Every name in the manifest, the CLI and MSBuild compares here.</summary>
    public static bool Is(string? written, string name) => string.Equals(written, name, StringComparison.OrdinalIgnoreCase);

    public static bool TryParseMethod(string? s, out QuantMethod method)
    {
        foreach (var (m, n) in MethodTable)
            if (Is(s, n)) { method = m; return true; }
        method = default;
        return false;
    }

    public static bool TryParseGgufType(string? s, out GgufFileType type)
    {
        foreach (var t in GgufTable)
            if (Is(s, t.Name)) { type = t.Type; return true; }
        type = default;
        return false;
    }

    public static QuantMethod ParseMethod(string s) => TryParseMethod(s, out var m) ? m
        : throw new FormatException($"unknown method '{s}' (expected one of {string.Join(", ", MethodNames)})");

    public static GgufFileType ParseGgufType(string s) => TryParseGgufType(s, out var t) ? t
        : throw new FormatException($"unknown GGUF type '{s}' (expected one of {string.Join(", ", GgufTypeNames)})");

    /// <summary>Nominal weight bits of a GGUF file type (16 for F16/BF16): what `weight_bits` must say.</summary>
    public static int NominalBits(this GgufFileType t) => GgufTable.First(x => x.Type == t).Bits;

    public static bool IsFloat(this GgufFileType t) => t is GgufFileType.F16 or GgufFileType.BF16;

    /// <summary>The importance-matrix (IQ) types: written only with calibration data, whose importance weights are
    /// their reference rows (what llama-quantize --imatrix writes).</summary>
    public static bool NeedsImportance(this GgufFileType t) => t >= GgufFileType.IQ4_XS;

    /// <summary>llama.cpp's llama_ftype number, written as general.file_type.</summary>
    public static int LlamaFtype(this GgufFileType t) => GgufTable.First(x => x.Type == t).LlamaFtype;

    /// <summary>Methods whose weights are rewritten by calibrated transforms before rounding (W/A methods).</summary>
    public static bool Transforms(this QuantMethod m) => m is QuantMethod.SmoothQuant or QuantMethod.Hadamard or QuantMethod.DuQuant;

    /// <summary>Methods whose statistics come from calibration data (smoothing scales).</summary>
    public static bool NeedsCalibration(this QuantMethod m) => m is QuantMethod.SmoothQuant or QuantMethod.DuQuant;

    /// <summary>Methods that need run-time activation handling, which only the packed artifact carries.</summary>
    public static bool NeedsRuntimeTransforms(this QuantMethod m, int activationBits) => activationBits < 16
        || m is QuantMethod.Hadamard or QuantMethod.DuQuant;
}
