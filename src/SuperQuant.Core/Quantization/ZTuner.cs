using SuperQuant.Core.Llama;
using SuperQuant.Core.SuperWeights;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Quantization;

/// <summary>
/// Picks the z-score clipping threshold for a model by reconstruction error on calibration data: for every linear
/// layer, a sample of its real inputs X is recorded from one pass over the calibration tokens, and each candidate z
/// is scored by the mean over layers of ||X (W - W_q)^T||^2 / ||X W^T||^2, with W_q the clipped, quantized and
/// super-weight-restored matrix. The lowest mean wins.
/// </summary>
public static class ZTuner
{
    /// <summary>Rows of X kept per layer (evenly spaced tokens): bounds memory on long calibration streams.</summary>
    public const int RowsPerLayer = 256;

    public static (double Z, IReadOnlyList<(double Z, double Error)> Search) Choose(LlamaModel model, IReadOnlyList<int> calibration, WeightQuantizationOptions o, IReadOnlyList<SuperWeight> superWeights)
    {
        var inputs = RecordInputs(model, calibration);
        try
        {
            var search = new List<(double, double)>();
            foreach (double z in o.ZCandidates)
            {
                double total = 0;
                foreach (var (site, x) in inputs)
                {
                    using var scope = torch.NewDisposeScope();
                    Tensor w = model.Weights[site];
                    using QuantizedMatrix q = ModelQuantizer.QuantizeMatrix(w, site, o, z, superWeights);
                    Tensor wq = BlockRtnQuantizer.Dequantize(q);
                    Tensor reference = x.matmul(w.t());
                    double err = (x.matmul((w - wq).t())).pow(2).sum().item<float>();
                    total += err / Math.Max(reference.pow(2).sum().item<float>(), 1e-30);
                }
                search.Add((z, total / inputs.Count));
            }
            var best = search.OrderBy(s => s.Item2).First();
            return (best.Item1, search);
        }
        finally
        {
            foreach (var x in inputs.Values) x.Dispose();
        }
    }

    static Dictionary<LinearSite, Tensor> RecordInputs(LlamaModel model, IReadOnlyList<int> tokens)
    {
        int window = Math.Min(tokens.Count, model.Config.MaxPositionEmbeddings);
        var recorder = new InputSampler(RowsPerLayer);
        IForwardHooks? previous = model.Hooks;
        model.Hooks = recorder;
        try { model.Forward(tokens.Take(window).ToArray()).Dispose(); }
        finally { model.Hooks = previous; }
        return recorder.Inputs;
    }

    sealed class InputSampler(int rows) : IForwardHooks
    {
        public Dictionary<LinearSite, Tensor> Inputs { get; } = new();

        public Tensor OnLinearInput(LinearSite site, Tensor input)
        {
            if (site.Projection == Projection.LmHead) return input;
            Tensor x = input[0];
            long t = x.shape[0];
            if (t > rows)
            {
                using var idx = torch.linspace(0, t - 1, rows).round().to_type(ScalarType.Int64);
                Inputs[site] = x.index_select(0, idx).DetachFromDisposeScope();
            }
            else Inputs[site] = x.clone().DetachFromDisposeScope();
            return input;
        }
    }
}
