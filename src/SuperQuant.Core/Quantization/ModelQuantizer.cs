using SuperQuant.Core.Llama;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Manifest;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Quantization;

public sealed record WeightQuantizationOptions
{
    public QuantMethod Method { get; init; } = QuantMethod.SuperAware;
    public WeightVariant Variant { get; init; } = WeightVariant.Packed;
    public int Bits { get; init; } = 4;
    /// <summary>0 = per-channel; <see cref="Methods.PaperQuantizerSettings.TensorBlock"/> = the whole tensor (paper variant).</summary>
    public int BlockSize { get; init; } = 128;
    /// <summary>How outliers are clipped (super-aware method only; rtn never clips). The packed variant supports
    /// z-score (whole-matrix) and none; the paper variant every <see cref="ClipMethod"/>.</summary>
    public ClipMethod Clip { get; init; } = ClipMethod.ZScore;
    /// <summary>Paper variant: integer grid, the reference's shifted grid, or normal-float poles.</summary>
    public LevelKind Levels { get; init; } = LevelKind.Integer;
    /// <summary>The clip threshold (z for z-score, a fraction for the percentage methods, a multiple of the IQR);
    /// null = tune on calibration data; +Infinity = no clipping.</summary>
    public double? Z { get; init; }
    /// <summary>Candidates for tuning; null = <see cref="DefaultCandidates"/> of the clip method.</summary>
    public IReadOnlyList<double>? ZCandidates { get; init; }

    public IReadOnlyList<double> Candidates => ZCandidates ?? DefaultCandidates(Clip);

    /// <summary>The thresholds tried by z = auto, loosest first (+Infinity = no clipping).</summary>
    public static IReadOnlyList<double> DefaultCandidates(ClipMethod clip) => clip switch
    {
        ClipMethod.BlockPercentage or ClipMethod.TensorPercentage => new[] { double.PositiveInfinity, 1e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2 },
        ClipMethod.Iqr => new[] { double.PositiveInfinity, 20, 10, 6, 4, 3, 1.5 },
        ClipMethod.None => new[] { double.PositiveInfinity },
        _ => new[] { double.PositiveInfinity, 12, 10, 8, 6, 5, 4, 3.5, 3, 2.5 },
    };

    /// <summary>The paper quantizer's settings for threshold <paramref name="threshold"/>.</summary>
    public Methods.PaperQuantizerSettings Paper(double threshold) => new()
    {
        Bits = Bits, BlockSize = BlockSize, Levels = Levels,
        Clip = Method == QuantMethod.SuperAware ? Clip : ClipMethod.None, Threshold = threshold,
    };

    public void Validate()
    {
        if (Variant == WeightVariant.Paper) Methods.PaperBlockQuantizer.Validate(Paper(double.PositiveInfinity));
        else
        {
            BlockRtnQuantizer.Validate(Bits, BlockSize);
            if (Clip is not (ClipMethod.ZScore or ClipMethod.None) || Levels != LevelKind.Integer)
                throw new SuperQuantException(ErrorCodes.UnsupportedQuantization,
                    "clip methods other than zscore/no, and shifted or normal-float levels, are the paper variant's (variant: paper)");
        }
    }
}

/// <summary>What quantizing a model produced: per linear layer its quantized matrix, and the settings used.</summary>
public sealed class QuantizationResult : IDisposable
{
    public required WeightQuantizationOptions Options { get; init; }
    /// <summary>The z actually used (+Infinity when not clipping).</summary>
    public required double Z { get; init; }
    /// <summary>Reconstruction error per candidate z when z was tuned.</summary>
    public IReadOnlyList<(double Z, double Error)> ZSearch { get; init; } = Array.Empty<(double, double)>();
    public required IReadOnlyList<SuperWeight> SuperWeights { get; init; }
    public required Dictionary<LinearSite, QuantizedMatrix> Matrices { get; init; }

    public double BitsPerWeight
    {
        get
        {
            double bits = Matrices.Values.Sum(m => m.BitsPerWeight * m.Rows * m.Cols);
            return bits / Matrices.Values.Sum(m => (double)m.Rows * m.Cols);
        }
    }

    public void Dispose()
    {
        foreach (var m in Matrices.Values) m.Dispose();
    }
}

/// <summary>
/// Quantizes every linear layer of the decoder blocks (q, k, v, o, gate, up, down) one at a time and puts the
/// dequantized weights back into the model, so the model evaluates as the quantized artifact will. The token
/// embedding and the output head stay in floating point (stored as fp16 in artifacts), as is usual for
/// weight-only quantization.
/// </summary>
public static class ModelQuantizer
{
    public static IEnumerable<LinearSite> QuantizedSites(LlamaWeights w) => w.LinearSites.Where(s => s.Projection != Projection.LmHead);

    /// <summary>The paper's z-score clipping (<see cref="Methods.ZScoreClipping"/>).</summary>
    public static Tensor ZScoreClip(Tensor w, double z, IReadOnlyCollection<long>? exemptRows = null) => Methods.ZScoreClipping.Clip(w, z, exemptRows);

    /// <summary>
    /// The rows of gate_proj and up_proj that feed the super weights' input channels (row k of both for a super
    /// weight W_down[j, k] of the same layer). Their products make the super activation, and clipping their
    /// outliers shrinks it: on the planted benchmark model z = 2.5 clipped them and cost KL 0.08, which the tuner's
    /// per-layer reconstruction error cannot see. So the super-aware method leaves them unclipped (they are still
    /// quantized); the paper clips everything and restores only the super weights.
    /// </summary>
    public static IReadOnlyCollection<long> SuperActivationRows(LinearSite site, IReadOnlyList<SuperWeight> superWeights) =>
        site.Projection is Projection.Gate or Projection.Up
            ? superWeights.Where(s => s.Layer == site.Layer).Select(s => (long)s.Column).Distinct().ToList()
            : Array.Empty<long>();

    /// <summary>Quantizes one matrix with the method's clipping and super-weight restoration.</summary>
    public static QuantizedMatrix QuantizeMatrix(Tensor w, LinearSite site, WeightQuantizationOptions o, double z, IReadOnlyList<SuperWeight> superWeights) =>
        QuantizeMatrix(w, site, o, z, superWeights, dequantizeInPlace: false, out _);

    /// <summary>As above; with <paramref name="dequantizeInPlace"/> the fast path also overwrites <paramref name="w"/>
    /// with the dequantized matrix (super weights restored) in the same pass, and <paramref name="dequantized"/> says
    /// whether it did (else the caller dequantizes).</summary>
    public static QuantizedMatrix QuantizeMatrix(Tensor w, LinearSite site, WeightQuantizationOptions o, double z, IReadOnlyList<SuperWeight> superWeights,
        bool dequantizeInPlace, out bool dequantized)
    {
        bool aware = o.Method == QuantMethod.SuperAware;
        dequantized = false;
        var mine = aware && site.Projection == Projection.Down ? superWeights.Where(s => s.Layer == site.Layer).ToList() : new List<SuperWeight>();
        var originals = mine.Select(s => ReadOriginal(w, s)).ToArray(); // read before a write-back overwrites them
        QuantizedMatrix q;
        if (o.Variant == WeightVariant.Paper)
            q = Methods.PaperBlockQuantizer.Quantize(w, o.Paper(aware ? z : double.PositiveInfinity)); // the paper clips every row
        else
        {
            using Tensor clipped = ZScoreClip(w, aware && o.Clip == ClipMethod.ZScore ? z : double.PositiveInfinity, aware
                ? SuperActivationRows(site, superWeights) : null);
            dequantized = dequantizeInPlace && FastBlockRtn.Applies(clipped) && FastBlockRtn.Applies(w);
            q = FastBlockRtn.Applies(clipped) ? FastBlockRtn.Quantize(clipped, o.Bits, o.BlockSize, dequantized ? w : null)
                : BlockRtnQuantizer.Quantize(clipped, o.Bits, o.BlockSize);
        }
        if (mine.Count == 0) return q;
        // host: outlier coordinates and values are artifact data (written to disk); Dequantize moves them.
        var idx = torch.tensor(mine.SelectMany(s => new long[] { s.Row, s.Column }).ToArray(), new long[] { mine.Count, 2 });
        // The super weights' original values, rounded to fp16 (they are stored in fp16).
        var values = torch.tensor(originals).to_type(ScalarType.Float16); // host: as above
        if (dequantized)
            using (torch.no_grad())
                for (int k = 0; k < mine.Count; k++)
                {
                    using var v = torch.tensor((float)(Half)originals[k]); // host: w is a CPU matrix here
                    w[mine[k].Row, mine[k].Column] = v;
                }
        return new QuantizedMatrix
        {
            Bits = q.Bits, BlockSize = q.BlockSize, Rows = q.Rows, Cols = q.Cols, PackedCodes = q.PackedCodes, Scales = q.Scales, Zeros = q.Zeros,
            Layout = q.Layout, FlatBlock = q.FlatBlock, OutlierIndices = idx, OutlierValues = values,
        };
    }

    /// <summary>What <see cref="QuantizeMatrix"/> will produce for a [rows, cols] matrix at <paramref name="site"/>,
    /// without reading it (tested equal to the produced matrix's <see cref="QuantizedMatrix.Plan"/>).</summary>
    public static MatrixPlan PlanMatrix(LinearSite site, long rows, long cols, WeightQuantizationOptions o, IReadOnlyList<SuperWeight> superWeights)
    {
        int outliers = o.Method == QuantMethod.SuperAware && site.Projection == Projection.Down ? superWeights.Count(s => s.Layer == site.Layer) : 0;
        if (o.Variant == WeightVariant.Paper)
        {
            var s = o.Paper(double.PositiveInfinity);
            long block = Methods.PaperBlockQuantizer.EffectiveBlock(s, rows, cols);
            var layout = s.Levels switch
            {
                LevelKind.ShiftedInteger => MatrixLayout.PaperShifted,
                LevelKind.NormalFloat => MatrixLayout.PaperNormalFloat,
                _ => MatrixLayout.Paper
            };
            return new MatrixPlan(rows, cols, o.Bits, (int)Math.Min(block, int.MaxValue), layout, block, new[] { rows * cols / block }, outliers);
        }
        int b = o.BlockSize == 0 ? (int)cols : (int)Math.Min(o.BlockSize, cols);
        return new MatrixPlan(rows, cols, o.Bits, b, MatrixLayout.Row, 0, new[] { rows, (cols + b - 1) / b }, outliers);
    }

    /// <summary>Quantizes one decoder block of a layer-streamed model (the block just read from its source, fp32) as
    /// <see cref="Quantize"/> quantizes each matrix; the block's floats are left as read (a writer stores only the codes).</summary>
    public static Dictionary<LinearSite, QuantizedMatrix> QuantizeLayer(LlamaLayerWeights layer, int l, WeightQuantizationOptions o, double z,
        IReadOnlyList<SuperWeight> superWeights)
    {
        var result = new Dictionary<LinearSite, QuantizedMatrix>();
        try
        {
            foreach (var p in new[] { Projection.Q, Projection.K, Projection.V, Projection.O, Projection.Gate, Projection.Up, Projection.Down })
            {
                Tensor original = layer.Matrix(p);
                result[new LinearSite(l, p)] = QuantizeMatrix(original, new LinearSite(l, p), o, z, superWeights);
            }
            return result;
        }
        catch
        {
            foreach (var q in result.Values) q.Dispose();
            throw;
        }
    }

    /// <summary>In place, 4096 rows at a time: a 32000 x 4096 embedding would otherwise need another 0.75x of
    /// itself while it is rounded.</summary>
    public static Tensor RoundToHalf(Tensor t)
    {
        using var _ = torch.no_grad();
        for (long row = 0; row < t.shape[0]; row += 4096)
        {
            using Tensor slice = t.narrow(0, row, Math.Min(4096, t.shape[0] - row));
            using Tensor half = slice.to_type(ScalarType.Float16);
            slice.copy_(half);
        }
        return t;
    }

    static float ReadOriginal(Tensor w, SuperWeight s)
    {
        using var v = w[s.Row, s.Column];
        return v.item<float>();
    }

    /// <summary>The clip threshold: the given one, none (rtn, clip no), or tuned on the calibration tokens
    /// (<see cref="ZTuner"/>; a layer-streamed model is read once for it, block by block).</summary>
    public static (double Z, IReadOnlyList<(double Z, double Error)> Search) ChooseZ(LlamaModel model, WeightQuantizationOptions o,
        IReadOnlyList<SuperWeight> superWeights,
        IReadOnlyList<int>? calibrationTokens, CancellationToken cancel = default, Action<int, int>? searchProgress = null)
    {
        o.Validate();
        if (o.Method != QuantMethod.SuperAware) return (double.PositiveInfinity, Array.Empty<(double, double)>());
        if (o.Z is double fixedZ) return (fixedZ, Array.Empty<(double, double)>());
        if (o.Clip == ClipMethod.None) return (double.PositiveInfinity, Array.Empty<(double, double)>());
        if (calibrationTokens is null || calibrationTokens.Count < 2)
            throw new SuperQuantException(ErrorCodes.InvalidArgument, "z = auto needs calibration tokens (a calibration text or token-id file)");
        return ZTuner.Choose(model, calibrationTokens, o, superWeights, searchProgress, cancel);
    }

    /// <summary>Quantizes the model in place. With <c>Z = null</c> and the super-aware method, z is tuned on
    /// <paramref name="calibrationTokens"/> first.</summary>
    public static QuantizationResult Quantize(LlamaModel model, WeightQuantizationOptions o, IReadOnlyList<SuperWeight> superWeights,
        IReadOnlyList<int>? calibrationTokens = null, Action<int, int>? progress = null, CancellationToken cancel = default,
        Action<int, int>? searchProgress = null, bool fusedDequantize = true)
    {
        o.Validate();
        var (z, search) = ChooseZ(model, o, superWeights, calibrationTokens, cancel, searchProgress);
        var sites = QuantizedSites(model.Weights).ToList();
        var matrices = new Dictionary<LinearSite, QuantizedMatrix>();
        progress?.Invoke(0, sites.Count); // starts the ETA clock here, not before the z search
        for (int i = 0; i < sites.Count; i++)
        {
            cancel.ThrowIfCancellationRequested(); // between matrices: Ctrl+C / MSBuild cancel stop within one matrix
            LinearSite site = sites[i];
            Tensor original = model.Weights[site];
            // fusedDequantize: false keeps the separate dequantize pass (for `bench quant`'s side-by-side; same result).
            QuantizedMatrix q = QuantizeMatrix(original, site, o, z, superWeights, dequantizeInPlace: fusedDequantize, out bool dequantized);
            matrices[site] = q;
            if (dequantized) { } // written back by the kernel, row by row, while the codes were in cache
            else if (q.IsPaperLayout)
                using (var dq = BlockRtnQuantizer.Dequantize(q)) original.copy_(dq);
            else if (FastBlockRtn.Applies(original)) FastBlockRtn.DequantizeInto(q, original); // in place: no second copy of the matrix
            else
            {
                model.Weights[site] = BlockRtnQuantizer.Dequantize(q);
                original.Dispose();
            }
            progress?.Invoke(i + 1, sites.Count);
        }
        // Artifacts store the embedding and the head in fp16: round them here too, so what is evaluated (and gated)
        // is exactly what ships.
        RoundToHalf(model.Weights.TokenEmbedding);
        if (model.Weights.LmHead is { } head) RoundToHalf(head);
        return new QuantizationResult { Options = o, Z = z, ZSearch = search, SuperWeights = superWeights, Matrices = matrices };
    }
}
