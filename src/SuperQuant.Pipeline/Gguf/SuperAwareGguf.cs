using SuperQuant.Core.Llama;
using SuperQuant.Core.Quantization;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Manifest;
using SuperQuant.Models.Gguf;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Pipeline;

/// <summary>
/// The Super Weight paper's ideas carried into llama.cpp's k-quants, at the same per-tensor types as the named mix
/// unless <see cref="RaiseSuperWeightTensors"/> says otherwise:
/// 1. each matrix's scale search is weighted by the calibration activations entering its columns (llama.cpp's
///    imatrix): the super activation's input channel dominates, so the super weight's column is kept accurately;
/// 2. z-score clipping of outliers before the block scales are chosen (the paper's clipping), never clipping a super
///    weight or the gate/up rows that produce the super activation, at the given z or, for z auto, at 6 and 4;
/// 3. per row, the candidate (llama.cpp's reference quantization, importance-weighted, clipped) with the lowest
///    importance-weighted reconstruction error is written (<see cref="GgufExport.Variants"/>): the data chooses where
///    clipping and weighting help, and no row is worse than llama.cpp's by that measure;
/// 4. optionally, the matrices holding super weights one type higher.
/// Plain `rtn` exports none of this: their bytes equal llama.cpp's quantizer's.
/// </summary>
public sealed record SuperAwareGguf
{
    public IReadOnlyDictionary<LinearSite, float[]>? Importance { get; init; }
    /// <summary>X^T X / n per linear input, for choosing each row's candidate by its layer-output error.</summary>
    public IReadOnlyDictionary<LinearSite, Tensor>? Covariance { get; init; }
    /// <summary>Clipping thresholds tried per row (a fixed z from the request); empty: no clipping. Measured: on k-quants
    /// (sub-blocks of 16 or 32 already isolate outliers) clipping candidates did not lower KLD, so z auto tries none.</summary>
    public IReadOnlyList<double> ZCandidates { get; init; } = Array.Empty<double>();
    public bool RaiseSuperWeightTensors { get; init; }
    public IReadOnlyList<SuperWeight> SuperWeights { get; init; } = Array.Empty<SuperWeight>();

    public GgufExport Export(GgufFileType type, string name, GgufVocabulary? vocabulary) => new()
    {
        FileType = type, Name = name, Vocabulary = vocabulary, Method = QuantMethod.SuperAware, SuperWeights = SuperWeights,
        Importance = Importance, Covariance = Covariance,
        Variants = ZCandidates.Where(double.IsFinite).Select(z => (Func<LinearSite, Tensor, Tensor>)((site, w) => Clip(site, w, z))).ToList(),
        TypeOverrides = RaiseSuperWeightTensors && !type.IsFloat()
            ? SuperWeights.Select(s => s.Layer).Distinct().ToDictionary(l => $"blk.{l}.ffn_down.weight", _ => GgufTensorTypes.RaisedOneStep(type))
            : null,
    };

    /// <summary>A fixed z tries just that one; auto and none try no clipping.</summary>
    public static IReadOnlyList<double> ZFor(double? z) => z is double v && double.IsFinite(v) ? new[] { v } : Array.Empty<double>();

    /// <summary>The files worth measuring for one type, each a complete export: llama.cpp's reference quantization (the
    /// bytes llama.cpp's quantizer writes), rows chosen by the diagonal importance error, and, when covariances were
    /// recorded, rows chosen by the layer-output error and error-compensated (GPTQ) rows. Which one ships is decided
    /// on held-out calibration halves (<see cref="CalibrationFolds"/>); llama.cpp's rows ship unless beaten there.</summary>
    public IReadOnlyList<(string Label, GgufExport Export)> Candidates(GgufFileType type, string name, GgufVocabulary? vocabulary)
    {
        // An imatrix type's reference rows are llama.cpp's with the importance weights (llama-quantize --imatrix):
        // the plain and the weighted candidate are one file there. GPTQ chooses codes on every grid: scalar (the
        // k-quants, IQ4's non-linear one) or lattice (IQ3/IQ2, a group of weights at a time).
        bool imatrixType = type.NeedsImportance();
        var main = GgmlFormat.Of(GgufMix.DefaultType(type));
        bool codeGrid = main.Levels > 0 || main.IsLattice;
        var list = new List<(string, GgufExport)>
        {
            ("llama.cpp reference rows", Export(type, name, vocabulary) with { Importance = imatrixType ? Importance : null, Covariance = null,
                Variants = Array.Empty<Func<LinearSite, Tensor, Tensor>>() }),
        };
        if (!imatrixType) list.Add(("importance-weighted rows", Export(type, name, vocabulary) with { Covariance = null }));
        if (Covariance is not null)
        {
            list.Add(("output-error-chosen rows", Export(type, name, vocabulary)));
            if (codeGrid) list.Add(("error-compensated rows", Export(type, name, vocabulary) with { ErrorCompensation = true }));
        }
        return list;
    }

    /// <summary>Models above this many parameters get one build under <see cref="GgufChoice.Auto"/>: the held-out choice
    /// builds about eight files and runs llama.cpp eight times, measured at 3 min 29 s for a 110M model where llama.cpp's
    /// own quantizer takes a second.</summary>
    public const long HeldOutChoiceMaxParameters = 300_000_000;

    /// <summary>Whether <paramref name="choice"/> means one build for a model of <paramref name="parameters"/>.</summary>
    public static bool IsOneBuild(GgufChoice choice, long parameters) =>
        choice == GgufChoice.OneBuild || (choice == GgufChoice.Auto && parameters > HeldOutChoiceMaxParameters);

    /// <summary>The one-build export: the last (richest) candidate, each row the lowest layer-output error among
    /// llama.cpp's reference rows, the clipped variants and GPTQ's rows (where the grid takes them), measured through
    /// the spilled inputs' rows when the calibration is shorter than an input is wide, with each H shrunk toward its
    /// diagonal by its tokens per column (<see cref="Gptq.Shrinkage"/>); without the importance-weighted rows
    /// (<see cref="GgufExport.ImportanceCandidate"/>).</summary>
    public GgufExport OneBuild(GgufFileType type, string name, GgufVocabulary? vocabulary, SpilledInputs inputs) =>
        Candidates(type, name, vocabulary)[^1].Export with { InputRows = inputs.Rows, CalibrationTokens = inputs.Tokens, ImportanceCandidate = false };

    Tensor Clip(LinearSite site, Tensor w, double z)
    {
        if (site.Projection == Projection.LmHead) return w;
        Tensor clipped = ModelQuantizer.ZScoreClip(w, z, ModelQuantizer.SuperActivationRows(site, SuperWeights));
        if (site.Projection == Projection.Down)
            foreach (var s in SuperWeights.Where(s => s.Layer == site.Layer))
                clipped[s.Row, s.Column] = w[s.Row, s.Column]; // the super weight itself is never clipped
        return clipped;
    }
}
