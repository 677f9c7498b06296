using SuperQuant.Core.Llama;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Manifest;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Models.Gguf;

/// <summary>What to write: the named file type and, for the super-aware export, how to steer each matrix's quantization.</summary>
public sealed record GgufExport
{
    public required GgufFileType FileType { get; init; }
    public string Name { get; init; } = "model";
    /// <summary>The context the file will be run (and gated) at, for <see cref="GgufWriteResult.RuntimeDifferences"/>
    /// (a sliding window only matters past it); null: the model's maximum.</summary>
    public int? Context { get; init; }
    /// <summary>The tokenizer (<see cref="GgufVocabulary.FromCheckpoint"/>); null writes "no_vocab".</summary>
    public GgufVocabulary? Vocabulary { get; init; }
    /// <summary>Per linear layer, one importance weight per input column (llama.cpp's imatrix: the mean squared
    /// activation entering that column on calibration data). Null: the reference quantization, byte-identical to
    /// llama.cpp's quantizer without an imatrix.
    /// With an imatrix file type (<see cref="Names.NeedsImportance"/>) they are the reference itself: every row is
    /// importance-weighted as llama-quantize --imatrix weights it, and the mix plans as it does with an imatrix.</summary>
    public IReadOnlyDictionary<LinearSite, float[]>? Importance { get; init; }
    /// <summary>Other value sets to try for a matrix (z-score clipping at several thresholds), each quantized with the
    /// importance weights. With <see cref="Importance"/>, every row is written as the candidate (reference quantization,
    /// importance-weighted, or a variant) with the lowest importance-weighted error sum_j imp_j (w_j - q_j)^2 against the
    /// original row: rows are independent in every ggml format, and the reference is always a candidate, so no row is
    /// worse than llama.cpp's quantizer's by that measure.</summary>
    public IReadOnlyList<Func<LinearSite, Tensor, Tensor>> Variants { get; init; } = Array.Empty<Func<LinearSite, Tensor, Tensor>>();
    /// <summary>Per linear layer, the second moment H = X^T X / n of its calibration inputs. When present, candidates
    /// are compared by the layer-output error dw H dw^T (cross-channel terms included) instead of the diagonal
    /// sum_j imp_j dw_j^2.</summary>
    public IReadOnlyDictionary<LinearSite, Tensor>? Covariance { get; init; }
    /// <summary>Per linear layer, X/√n [tokens, columns] of its calibration inputs when there are fewer tokens than
    /// columns (null otherwise): the layer-output error of a row change Δw is then ‖Δw Xᵀ‖²/n, at tokens × columns per
    /// row instead of columns² (<see cref="Covariance"/>'s Δw H Δwᵀ, the same number).</summary>
    public Func<LinearSite, Tensor?>? InputRows { get; init; }
    /// <summary>Per linear layer, how many calibration tokens <see cref="Covariance"/> was estimated from; with it, H is
    /// shrunk toward its diagonal for GPTQ and the row choice (<see cref="Gptq.Shrinkage"/>: the fewer tokens per
    /// column, the more). Null: H as recorded.</summary>
    public Func<LinearSite, long>? CalibrationTokens { get; init; }
    /// <summary>With <see cref="Covariance"/>: also a GPTQ candidate per row (<see cref="Gptq"/>:
    /// codes chosen column by column with each rounding error compensated on the later columns through H⁻¹), compared
    /// with the others by the same layer-output error.</summary>
    public bool ErrorCompensation { get; init; }
    /// <summary>With <see cref="Importance"/> on a type whose reference rows are unweighted: also the importance-weighted
    /// rows as a candidate. The one build leaves it out: beside GPTQ's rows it changed nothing measurable (demo model,
    /// 512 calibration tokens: q4_k_m KLD 0.001632 with it, 0.001633 without) and cost a sixth of the write.</summary>
    public bool ImportanceCandidate { get; init; } = true;
    /// <summary>Per tensor name, a type that replaces the mix's choice (e.g. a higher type for a super weight's matrix).</summary>
    public IReadOnlyDictionary<string, GgmlType>? TypeOverrides { get; init; }
    /// <summary>Why <see cref="TypeOverrides"/> chose (for the report); null: a super weight's raised matrix.</summary>
    public string? OverrideReason { get; init; }
    /// <summary>With <see cref="Importance"/>: every row importance-weighted, as llama-quantize --imatrix writes it,
    /// for every type (the imatrix types always are); no candidates are compared.</summary>
    public bool ImatrixRows { get; init; }
    /// <summary>Recorded in the metadata (superquant.*).</summary>
    public QuantMethod Method { get; init; } = QuantMethod.Rtn;
    public IReadOnlyList<SuperWeight> SuperWeights { get; init; } = Array.Empty<SuperWeight>();
}

/// <summary>What was written: each tensor's type (and why), and the totals.</summary>
public sealed record GgufWriteResult(IReadOnlyList<GgufTensorType> Tensors, long FileBytes, long Parameters)
{
    /// <summary>What llama.cpp will compute differently from the checkpoint (<see cref="GgufArchitecture.RuntimeDifferences"/>).</summary>
    public IReadOnlyList<string> RuntimeDifferences { get; init; } = Array.Empty<string>();
    /// <summary>File size in bits over the parameter count, as llama.cpp reports "BPW".</summary>
    public double BitsPerWeight => 8.0 * FileBytes / Parameters;
    public string TypeSummary => string.Join(", ", Tensors.Where(t => t.Type != GgmlType.F32).GroupBy(t => t.Type).Select(g => $"{g.Count()} {g.Key}"));
}
