using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Llama;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SuperQuant.Core.SuperWeights;

public sealed record ConditionResult(string Name, string Description, DivergenceResult Quality);

public sealed record ScalingPoint(double Scale, DivergenceResult Quality);

public sealed record StopwordProbability(int TokenId, string Label, double Original, double Zeroed)
{
    public double Ratio => Original > 0 ? Zeroed / Original : double.NaN;
}

public sealed record ControlResult(int Count, double SmallestMagnitudeZeroed, DivergenceResult Quality);

public sealed record AblationOptions
{
    public int Context { get; init; } = 512;
    public int Stride { get; init; } = 256;
    public IReadOnlyList<double> Scales { get; init; } = new[] { 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0 };
    /// <summary>The paper's control: zero this many of the largest non-super weights of the same matrices.</summary>
    public int ControlCount { get; init; } = 7000;
    /// <summary>Never zero more than this fraction of those matrices in the control (tiny models).</summary>
    public double ControlMaxFraction { get; init; } = 0.01;
}

/// <summary>
/// The Super Weight paper's ablations on one model, evaluated over a token stream: super weights zeroed; zeroed with
/// the super activation restored; the super weights scaled; a control that zeroes the largest other weights of the
/// same matrices; and stopword probabilities with and without the super weights. Every variant is applied in place
/// and reverted around each forward pass, so the model holds one copy of its weights throughout.
/// </summary>
public sealed class SuperWeightAblation
{
    readonly LlamaModel _model;
    readonly IReadOnlyList<SuperWeight> _weights;
    readonly double _activationThreshold;

    public SuperWeightAblation(LlamaModel model, DetectionReport report)
    {
        if (!report.Found) throw new ArgumentException("no super weight was detected: there is nothing to ablate");
        _model = model;
        _weights = report.SuperWeights;
        _activationThreshold = report.FirstPassThreshold;
    }

    Tensor Plain(Tensor t) => _model.Forward(t);

    /// <summary>Runs a forward pass with element edits applied to down_proj weights, then puts the originals back.</summary>
    Tensor WithEdits(Tensor tokens, IReadOnlyList<(int Layer, int Row, int Col, float Value)> edits, IForwardHooks? hooks = null)
    {
        var originals = edits.Select(e => SuperWeightDetector.ReadWeight(_model, e.Layer, e.Row, e.Col)).ToArray();
        IForwardHooks? previous = _model.Hooks;
        try
        {
            foreach (var e in edits) SuperWeightDetector.WriteWeight(_model, e.Layer, e.Row, e.Col, e.Value);
            _model.Hooks = hooks;
            return _model.Forward(tokens);
        }
        finally
        {
            _model.Hooks = previous;
            for (int i = edits.Count - 1; i >= 0; i--) SuperWeightDetector.WriteWeight(_model, edits[i].Layer, edits[i].Row, edits[i].Col, originals[i]);
        }
    }

    IReadOnlyList<(int, int, int, float)> Scaled(double s) => _weights.Select(w => (w.Layer, w.Row, w.Column, (float)(w.Value * s))).ToList();

    Tensor Zeroed(Tensor t) => WithEdits(t, Scaled(0));

    /// <summary>Super weights zeroed, but at the tokens where the original model's super activation fired
    /// (|down_proj output[j]| above the detection threshold) the original activation value is written back.</summary>
    Tensor ZeroedWithActivationRestored(Tensor tokens)
    {
        var channels = new ChannelRecorder(_weights.Select(w => (w.Layer, w.Row)).Distinct().ToList());
        IForwardHooks? previous = _model.Hooks;
        _model.Hooks = channels;
        try { _model.Forward(tokens).Dispose(); }
        finally { _model.Hooks = previous; }

        var restore = new DownProjSpikeRecorder(_model.Config.NumLayers);
        foreach (var ((layer, channel), values) in channels.Values)
        {
            int strongest = 0;
            for (int t = 0; t < values.Length; t++)
            {
                if (Math.Abs(values[t]) > _activationThreshold) restore.OutputOverrides[(layer, t, channel)] = values[t];
                if (Math.Abs(values[t]) > Math.Abs(values[strongest])) strongest = t;
            }
            // A window where the activation stays under the threshold still has its spike token restored.
            restore.OutputOverrides.TryAdd((layer, strongest, channel), values[strongest]);
        }
        return WithEdits(tokens, Scaled(0), restore);
    }

    public IReadOnlyList<ConditionResult> Conditions(IReadOnlyList<int> tokens, AblationOptions o, EvalProgress? progress = null) => new[]
    {
        new ConditionResult("zeroed", "super weights set to 0",
            Evaluator.Divergence(Plain, Zeroed, tokens, o.Context, o.Stride, progress)),
        new ConditionResult("zeroed+activation-restored", "super weights 0, original super activation written back where it fired",
            Evaluator.Divergence(Plain, ZeroedWithActivationRestored, tokens, o.Context, o.Stride, progress)),
    };

    public IReadOnlyList<ScalingPoint> Scaling(IReadOnlyList<int> tokens, AblationOptions o, EvalProgress? progress = null) =>
        o.Scales.Select(s => new ScalingPoint(s, Evaluator.Divergence(Plain, t => WithEdits(t, Scaled(s)), tokens, o.Context, o.Stride, progress))).ToList();

    /// <summary>The paper's control: zero the N largest-magnitude weights of the same down_proj matrices other than
    /// the super weights (N capped at a fraction of those matrices for tiny models).</summary>
    public ControlResult Control(IReadOnlyList<int> tokens, AblationOptions o, EvalProgress? progress = null)
    {
        var layers = _weights.Select(w => w.Layer).Distinct().ToList();
        long total = layers.Sum(l => _model.Weights.Layers[l].WDown.numel());
        int n = (int)Math.Min(o.ControlCount, Math.Max(1, total * o.ControlMaxFraction));
        var candidates = new List<(int Layer, int Row, int Col, float Value)>();
        foreach (int l in layers)
        {
            using var scope = torch.NewDisposeScope();
            Tensor w = _model.Weights.Layers[l].WDown;
            long cols = w.shape[1];
            var (values, indices) = w.abs().flatten().topk(Math.Min(n + _weights.Count, (int)w.numel()));
            long[] idx = indices.cpu().data<long>().ToArray();
            foreach (long i in idx)
            {
                int r = (int)(i / cols), c = (int)(i % cols);
                if (_weights.Any(s => s.Layer == l && s.Row == r && s.Column == c)) continue;
                candidates.Add((l, r, c, SuperWeightDetector.ReadWeight(_model, l, r, c)));
            }
        }
        var chosen = candidates.OrderByDescending(c => Math.Abs(c.Value)).Take(n).ToList();
        var edits = chosen.Select(c => (c.Layer, c.Row, c.Col, 0f)).ToList();
        var quality = Evaluator.Divergence(Plain, t => WithEdits(t, edits), tokens, o.Context, o.Stride, progress);
        return new ControlResult(chosen.Count, chosen.Count > 0 ? Math.Abs(chosen[^1].Value) : 0, quality);
    }

    /// <summary>Mean next-token probability of each stopword over every position of every prompt, with and without
    /// the super weights.</summary>
    public IReadOnlyList<StopwordProbability> Stopwords(IReadOnlyList<int[]> prompts, IReadOnlyList<(int Id, string Label)> stopwords)
    {
        var ids = stopwords.Select(s => (long)s.Id).ToArray();
        double[] original = new double[ids.Length], zeroed = new double[ids.Length];
        long positions = 0;
        foreach (int[] prompt in prompts)
        {
            using var scope = torch.NewDisposeScope();
            Tensor input = torch.tensor(prompt.Select(i => (long)i).ToArray()).unsqueeze(0); // host: Forward moves the ids
            Tensor idx = torch.tensor(ids, device: _model.Device);
            double[] a = F.softmax(Plain(input)[0].to_type(ScalarType.Float64), -1).index_select(1, idx).sum(new long[] { 0 }).cpu().data<double>().ToArray();
            double[] b = F.softmax(Zeroed(input)[0].to_type(ScalarType.Float64), -1).index_select(1, idx).sum(new long[] { 0 }).cpu().data<double>().ToArray();
            for (int i = 0; i < ids.Length; i++) { original[i] += a[i]; zeroed[i] += b[i]; }
            positions += prompt.Length;
        }
        return stopwords.Select((s, i) => new StopwordProbability(s.Id, s.Label, original[i] / positions, zeroed[i] / positions)).ToList();
    }

    /// <summary>Records down_proj output channel values over all tokens of batch 0 for a few (layer, channel) pairs.</summary>
    sealed class ChannelRecorder(IReadOnlyList<(int Layer, int Channel)> wanted) : IForwardHooks
    {
        public Dictionary<(int Layer, int Channel), float[]> Values { get; } = new();

        public Tensor OnLinearOutput(LinearSite site, Tensor output)
        {
            if (site.Projection != Projection.Down) return output;
            foreach (var (layer, channel) in wanted)
                if (layer == site.Layer)
                {
                    using var column = output[0, TensorIndex.Colon, channel];
                    Values[(layer, channel)] = column.to_type(ScalarType.Float32).cpu().data<float>().ToArray();
                }
            return output;
        }
    }
}
