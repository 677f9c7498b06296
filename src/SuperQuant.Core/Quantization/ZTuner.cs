using SuperQuant.Core.Llama;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Manifest;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Quantization;

/// <summary>
/// Picks the z-score clipping threshold for a model by reconstruction error on calibration data: for every linear
/// layer, a sample of its real inputs X is recorded from passes over the calibration tokens (up to
/// <see cref="MaxCalibrationTokens"/>, window by window), and each candidate z
/// is scored by the mean over layers of ||X (W - W_q)^T||^2 / ||X W^T||^2, with W_q the clipped, quantized and
/// super-weight-restored matrix. The lowest mean wins.
/// </summary>
public static class ZTuner
{
    /// <summary>Rows of X kept per layer (evenly spaced tokens): bounds memory on long calibration streams.</summary>
    public const int RowsPerLayer = 256;

    public static (double Z, IReadOnlyList<(double Z, double Error)> Search) Choose(LlamaModel model, IReadOnlyList<int> calibration,
        WeightQuantizationOptions o, IReadOnlyList<SuperWeight> superWeights,
        Action<int, int>? progress = null, CancellationToken cancel = default)
    {
        var inputs = RecordInputs(model, calibration);
        try
        {
            var candidates = o.Candidates.ToList();
            var totals = new double[candidates.Count];
            // Site-major: the reference output, the matrix statistics and one scratch matrix are made once per layer
            // and shared by every candidate (the candidate-major loop made all of them again per candidate).
            int done = 0;
            progress?.Invoke(0, inputs.Count);
            foreach (var (site, x) in inputs)
            {
                cancel.ThrowIfCancellationRequested();
                Tensor w = model.Weights[site];
                var errors = SiteErrors(w, x, site, o, candidates, superWeights);
                for (int c = 0; c < candidates.Count; c++) totals[c] += errors[c];
                progress?.Invoke(++done, inputs.Count);
            }
            var search = candidates.Select((z, c) => (z, totals[c] / inputs.Count)).ToList();
            var best = search.OrderBy(s => s.Item2).First();
            return (best.z, search);
        }
        finally
        {
            foreach (var x in inputs.Values) x.Dispose();
        }
    }

    /// <summary>||X (W - W_q(z))^T||^2 / ||X W^T||^2 for each candidate z, W_q(z) being exactly what
    /// <see cref="ModelQuantizer.QuantizeMatrix"/> followed by dequantization gives (the test pins the two equal).</summary>
    public static double[] SiteErrors(Tensor w, Tensor x, LinearSite site, WeightQuantizationOptions o, IReadOnlyList<double> candidates,
        IReadOnlyList<SuperWeight> superWeights)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        bool aware = o.Method == QuantMethod.SuperAware;
        var exempt = aware && o.Variant == WeightVariant.Packed ? ModelQuantizer.SuperActivationRows(site, superWeights) : Array.Empty<long>();
        var restored = aware && site.Projection == Projection.Down ? superWeights.Where(s => s.Layer == site.Layer).ToList() : new List<SuperWeight>();
        // Restored values go through fp16, as they are stored.
        var restoredValues = restored.Select(s => { using var v = w[s.Row, s.Column]; return (float)(Half)v.item<float>(); }).ToArray();
        double referenceNorm = Math.Max(x.matmul(w.t()).pow(2).sum().item<float>(), 1e-30);
        var (mean, std) = Methods.ZScoreClipping.Statistics(w);
        double min, max;
        using (var mn = w.min()) min = mn.item<float>();
        using (var mx = w.max()) max = mx.item<float>();
        bool fast = FastBlockRtn.Applies(w);
        bool paper = o.Variant == WeightVariant.Paper;
        Tensor wq = torch.empty_like(w);
        var errors = new double[candidates.Count];
        double? unclipped = null; // the error without clipping, shared by every z whose bounds clip nothing
        for (int c = 0; c < candidates.Count; c++)
        {
            using var inner = torch.NewDisposeScope();
            double z = aware ? candidates[c] : double.PositiveInfinity;
            // Bounds beyond the matrix's own range leave it unchanged: same matrix, same error (compared as the
            // float32 bounds clamp uses).
            bool clipsNothing = double.IsPositiveInfinity(z) || (!paper && (float)(mean - z * std) <= min && (float)(mean + z * std) >= max);
            if (clipsNothing && unclipped is double known) { errors[c] = known; continue; }
            if (clipsNothing) z = double.PositiveInfinity;
            if (paper)
            {
                using QuantizedMatrix pq = Methods.PaperBlockQuantizer.Quantize(w, o.Paper(z));
                wq.copy_(BlockRtnQuantizer.Dequantize(pq));
            }
            else
            {
                Tensor clipped = Methods.ZScoreClipping.Clip(w, z, mean, std, exempt);
                if (fast && FastBlockRtn.Applies(clipped)) FastBlockRtn.QuantizeDequantizeInto(clipped, o.Bits, o.BlockSize, wq);
                else
                {
                    using QuantizedMatrix q = BlockRtnQuantizer.Quantize(clipped, o.Bits, o.BlockSize);
                    wq.copy_(BlockRtnQuantizer.Dequantize(q));
                }
            }
            for (int k = 0; k < restored.Count; k++)
            {
                using Tensor e = wq[restored[k].Row, restored[k].Column];
                e.fill_(restoredValues[k]); // a scalar fill: no host tensor meets the device's
            }
            wq.sub_(w);
            errors[c] = x.matmul(wq.t()).pow(2).sum().item<float>() / referenceNorm;
            if (clipsNothing) unclipped = errors[c];
        }
        return errors;
    }

    /// <summary>Calibration tokens read at most (in windows of the model's context): the paper tunes on many samples,
    /// not one window; this bounds the passes to a few for long calibration files.</summary>
    public const int MaxCalibrationTokens = 4096;

    /// <summary>Records each linear layer's inputs over up to <see cref="MaxCalibrationTokens"/> calibration tokens,
    /// cut into windows of the model's context; each window contributes an even share of the
    /// <see cref="RowsPerLayer"/> rows, taken at evenly spaced tokens.</summary>
    public static Dictionary<LinearSite, Tensor> RecordInputs(LlamaModel model, IReadOnlyList<int> tokens)
    {
        int window = Math.Min(tokens.Count, model.Config.MaxPositionEmbeddings);
        int total = Math.Min(tokens.Count, Math.Max(window, MaxCalibrationTokens));
        var starts = new List<int>();
        for (int s = 0; s + window <= total || starts.Count == 0; s += window) starts.Add(s);
        var recorder = new InputSampler((RowsPerLayer + starts.Count - 1) / starts.Count);
        IForwardHooks? previous = model.Hooks;
        model.Hooks = recorder;
        try
        {
            foreach (int start in starts)
                model.Forward(tokens.Skip(start).Take(window).ToArray()).Dispose();
        }
        finally { model.Hooks = previous; }
        return recorder.Concatenate();
    }

    sealed class InputSampler(int rows) : IForwardHooks
    {
        readonly Dictionary<LinearSite, List<Tensor>> _inputs = new();

        public Dictionary<LinearSite, Tensor> Concatenate()
        {
            var result = new Dictionary<LinearSite, Tensor>();
            foreach (var (site, parts) in _inputs)
            {
                result[site] = parts.Count == 1 ? parts[0] : torch.cat(parts, 0).DetachFromDisposeScope();
                if (parts.Count > 1) foreach (var p in parts) p.Dispose();
            }
            return result;
        }

        public Tensor OnLinearInput(LinearSite site, Tensor input)
        {
            if (site.Projection == Projection.LmHead) return input;
            Tensor x = input[0];
            long t = x.shape[0];
            Tensor kept;
            if (t > rows)
            {
                using var idx = torch.linspace(0, t - 1, rows, device: x.device).round().to_type(ScalarType.Int64);
                kept = x.index_select(0, idx).DetachFromDisposeScope();
            }
            else kept = x.clone().DetachFromDisposeScope();
            if (!_inputs.TryGetValue(site, out var list)) _inputs[site] = list = new List<Tensor>();
            list.Add(kept);
            return input;
        }
    }
}
