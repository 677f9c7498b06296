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

public sealed record NextTokenResult(IReadOnlyList<(int Id, double P)> Original, IReadOnlyList<(int Id, double P)> Zeroed, double OriginalTopAfterZeroing);

/// <summary>The super activation's spike on one prompt: its token and value.</summary>
public sealed record PromptSpike(int Token, float Value);

/// <summary>A super activation across prompts (prompt invariance) and the mean |residual| at its channel and token
/// after every block (propagation).</summary>
public sealed record SuperActivationTrace(int Layer, int Channel, List<PromptSpike> Prompts, double[] ResidualMagnitude);

public sealed record ControlResult(int Count, double SmallestMagnitudeZeroed, DivergenceResult Quality, ControlScope Scope = ControlScope.AllLinear);

/// <summary>Where the control's "largest other weights" are taken from.</summary>
public enum ControlScope
{
    /// <summary>Every linear layer of the decoder blocks (the paper's control).</summary>
    AllLinear,
    /// <summary>Every mlp.down_proj matrix.</summary>
    AllDownProj,
    /// <summary>Only the down_proj matrices that hold super weights.</summary>
    SuperWeightMatrices,
}

public sealed record AblationOptions
{
    public int Context { get; init; } = 512;
    public int Stride { get; init; } = 256;
    public IReadOnlyList<double> Scales { get; init; } = new[] { 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0 };
    /// <summary>The paper's control: zero this many of the largest non-super weights.</summary>
    public int ControlCount { get; init; } = 7000;
    /// <summary>Never zero more than this fraction of the control's matrices (tiny models).</summary>
    public double ControlMaxFraction { get; init; } = 0.01;
    public ControlScope ControlScope { get; init; } = ControlScope.AllLinear;
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

    float Read(LinearSite site, int row, int col)
    {
        using var v = _model.Weights[site][row, col];
        return v.item<float>();
    }

    void Write(LinearSite site, int row, int col, float value)
    {
        using var _ = torch.no_grad();
        using var v = _model.Weights[site][row, col];
        v.fill_(value);
    }

    /// <summary>Runs a forward pass with element edits applied to linear weights, then puts the originals back.</summary>
    Tensor WithEdits(Tensor tokens, IReadOnlyList<(LinearSite Site, int Row, int Col, float Value)> edits, IForwardHooks? hooks = null)
    {
        var originals = edits.Select(e => Read(e.Site, e.Row, e.Col)).ToArray();
        IForwardHooks? previous = _model.Hooks;
        try
        {
            foreach (var e in edits) Write(e.Site, e.Row, e.Col, e.Value);
            _model.Hooks = hooks;
            return _model.Forward(tokens);
        }
        finally
        {
            _model.Hooks = previous;
            for (int i = edits.Count - 1; i >= 0; i--) Write(edits[i].Site, edits[i].Row, edits[i].Col, originals[i]);
        }
    }

    IReadOnlyList<(LinearSite, int, int, float)> Scaled(double s)
        => _weights.Select(w => (new LinearSite(w.Layer, Projection.Down), w.Row, w.Column, (float)(w.Value * s))).ToList();

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

    /// <summary>Zero-shot accuracy with the super weights scaled by <paramref name="scale"/> (the paper's Fig. 6 reports
    /// the scaling sweep by accuracy: KL against the original is minimal at 1x by construction).</summary>
    public TaskScore TaskAccuracy(string task, bool lastWord, IReadOnlyList<ScoredDocument> docs, double scale, int maxContext) =>
        TaskScorer.Score(task, lastWord, docs, t => WithEdits(t, Scaled(scale)), maxContext);

    /// <summary>The paper's control: zero the N largest-magnitude weights other than the super weights, over every
    /// linear layer (the paper), every down_proj, or only the super weights' own matrices (<see cref="ControlScope"/>);
    /// N is capped at a fraction of those matrices for tiny models.</summary>
    public ControlResult Control(IReadOnlyList<int> tokens, AblationOptions o, EvalProgress? progress = null)
    {
        var superLayers = _weights.Select(w => w.Layer).ToHashSet();
        var sites = ModelSites().Where(s => o.ControlScope switch
        {
            ControlScope.AllLinear => true,
            ControlScope.AllDownProj => s.Projection == Projection.Down,
            _ => s.Projection == Projection.Down && superLayers.Contains(s.Layer),
        }).ToList();
        long total = sites.Sum(s => _model.Weights[s].numel());
        int n = (int)Math.Min(o.ControlCount, Math.Max(1, total * o.ControlMaxFraction));
        var candidates = new List<(LinearSite Site, int Row, int Col, float Value)>();
        foreach (var site in sites)
        {
            using var scope = torch.NewDisposeScope();
            Tensor w = _model.Weights[site];
            long cols = w.shape[1];
            var (_, indices) = w.abs().flatten().topk((int)Math.Min(n + _weights.Count, w.numel()));
            long[] idx = indices.cpu().data<long>().ToArray();
            float[] vals = w.flatten().index_select(0, indices).cpu().data<float>().ToArray();
            for (int k = 0; k < idx.Length; k++)
            {
                int r = (int)(idx[k] / cols), c = (int)(idx[k] % cols);
                if (site.Projection == Projection.Down && _weights.Any(s => s.Layer == site.Layer && s.Row == r && s.Column == c)) continue;
                candidates.Add((site, r, c, vals[k]));
            }
        }
        var chosen = candidates.OrderByDescending(c => Math.Abs(c.Value)).Take(n).ToList();
        var edits = chosen.Select(c => (c.Site, c.Row, c.Col, 0f)).ToList();
        var quality = Evaluator.Divergence(Plain, t => WithEdits(t, edits), tokens, o.Context, o.Stride, progress);
        return new ControlResult(chosen.Count, chosen.Count > 0 ? Math.Abs(chosen[^1].Value) : 0, quality, o.ControlScope);
    }

    IEnumerable<LinearSite> ModelSites() => _model.Weights.LinearSites.Where(s => s.Projection != Projection.LmHead);

    /// <summary>Mean next-token probability of each stopword, with and without the super weights: at the last token
    /// of each prompt (the paper, over LAMBADA prompts), or with <paramref name="everyPosition"/> over every position.</summary>
    public IReadOnlyList<StopwordProbability> Stopwords(IReadOnlyList<int[]> prompts, IReadOnlyList<(int Id, string Label)> stopwords,
        bool everyPosition = false)
    {
        var ids = stopwords.Select(s => (long)s.Id).ToArray();
        double[] original = new double[ids.Length], zeroed = new double[ids.Length];
        long positions = 0;
        foreach (int[] prompt in prompts)
        {
            using var scope = torch.NewDisposeScope();
            Tensor input = torch.tensor(prompt.Select(i => (long)i).ToArray()).unsqueeze(0); // host: Forward moves the ids
            Tensor idx = torch.tensor(ids, device: _model.Device);
            Tensor Rows(Tensor logits) => everyPosition ? logits[0] : logits[0].narrow(0, logits.shape[1] - 1, 1);
            double[] a = F.softmax(Rows(Plain(input)).to_type(ScalarType.Float64), -1).index_select(1,
                idx).sum(new long[] { 0 }).cpu().data<double>().ToArray();
            double[] b = F.softmax(Rows(Zeroed(input)).to_type(ScalarType.Float64), -1).index_select(1,
                idx).sum(new long[] { 0 }).cpu().data<double>().ToArray();
            for (int i = 0; i < ids.Length; i++) { original[i] += a[i]; zeroed[i] += b[i]; }
            positions += everyPosition ? prompt.Length : 1;
        }
        return stopwords.Select((s, i) => new StopwordProbability(s.Id, s.Label, original[i] / positions, zeroed[i] / positions)).ToList();
    }

    /// <summary>The top-<paramref name="k"/> next tokens after <paramref name="prompt"/> with their probabilities, for
    /// the original model and with the super weights zeroed (the paper's "Summer is hot. Winter is" example), and the
    /// probability the zeroed model gives the original's top token.</summary>
    public NextTokenResult NextToken(int[] prompt, int k = 5)
    {
        using var scope = torch.NewDisposeScope();
        Tensor input = torch.tensor(prompt.Select(i => (long)i).ToArray()).unsqueeze(0); // host: Forward moves the ids
        Tensor q = F.softmax(Zeroed(input)[0, -1].to_type(ScalarType.Float64), -1).cpu();
        var original = TopNextTokens(_model, prompt, k);
        return new NextTokenResult(original, Top(q, k), q[original[0].Id].item<double>());
    }

    /// <summary>The model's top-<paramref name="k"/> next tokens after <paramref name="prompt"/>, with probabilities.</summary>
    public static IReadOnlyList<(int Id, double P)> TopNextTokens(LlamaModel model, int[] prompt, int k)
    {
        using var scope = torch.NewDisposeScope();
        Tensor input = torch.tensor(prompt.Select(i => (long)i).ToArray()).unsqueeze(0); // host: Forward moves the ids
        return Top(F.softmax(model.Forward(input)[0, -1].to_type(ScalarType.Float64), -1).cpu(), k);
    }

    static List<(int Id, double P)> Top(Tensor probs, int k)
    {
        var (values, indices) = probs.topk(Math.Min(k, (int)probs.shape[0]));
        double[] v = values.cpu().data<double>().ToArray();
        long[] i = indices.cpu().data<long>().ToArray();
        return i.Select((id, j) => ((int)id, v[j])).ToList();
    }

    /// <summary>For each super activation (layer, output channel): its token and value on each prompt, and the
    /// residual stream's |value| at that channel and token after every later block (how it propagates).</summary>
    public IReadOnlyList<SuperActivationTrace> Trace(IReadOnlyList<int[]> prompts)
    {
        var keys = _weights.Select(w => (w.Layer, Channel: w.Row)).Distinct().ToList();
        var traces = keys.Select(k => new SuperActivationTrace(k.Layer, k.Channel, new List<PromptSpike>(), new double[_model.Config.NumLayers])).ToList();
        foreach (int[] prompt in prompts)
        {
            var spikes = new ChannelRecorder(keys);
            var residual = new ResidualRecorder(keys.Select(k => k.Channel).Distinct().ToList());
            var both = new BothHooks(spikes, residual);
            IForwardHooks? previous = _model.Hooks;
            _model.Hooks = both;
            try { _model.Forward(prompt).Dispose(); }
            finally { _model.Hooks = previous; }
            foreach (var t in traces)
            {
                float[] values = spikes.Values[(t.Layer, t.Channel)];
                int token = 0;
                for (int i = 1; i < values.Length; i++) if (Math.Abs(values[i]) > Math.Abs(values[token])) token = i;
                t.Prompts.Add(new PromptSpike(token, values[token]));
                for (int l = 0; l < _model.Config.NumLayers; l++)
                    t.ResidualMagnitude[l] += Math.Abs(residual.Values[(l, t.Channel)][token]) / prompts.Count;
            }
        }
        return traces;
    }

    sealed class BothHooks(IForwardHooks a, IForwardHooks b) : IForwardHooks
    {
        public Tensor OnLinearOutput(LinearSite site, Tensor output) => b.OnLinearOutput(site, a.OnLinearOutput(site, output));
        public void OnBlockOutput(int layer, Tensor hidden) { a.OnBlockOutput(layer, hidden); b.OnBlockOutput(layer, hidden); }
    }

    sealed class ResidualRecorder(IReadOnlyList<int> channels) : IForwardHooks
    {
        public Dictionary<(int Layer, int Channel), float[]> Values { get; } = new();

        public void OnBlockOutput(int layer, Tensor hidden)
        {
            foreach (int c in channels)
            {
                using var column = hidden[0, TensorIndex.Colon, c];
                Values[(layer, c)] = column.to_type(ScalarType.Float32).cpu().data<float>().ToArray();
            }
        }
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
