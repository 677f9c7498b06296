using SuperQuant.Core.Llama;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.SuperWeights;

/// <summary>When a down_proj output spike counts as a super activation.</summary>
public sealed record SpikeRule
{
    /// <summary>The Super Weight paper's rule: |output| above this absolute value (50 in the reference code).</summary>
    public double? Absolute { get; init; }

    /// <summary>Relative rule for small models: |output| above this many times the median of the per-layer maxima.</summary>
    public double? TimesMedian { get; init; }

    public static SpikeRule Paper => new() { Absolute = 50 };

    public double ThresholdFor(IReadOnlyList<LayerSpikes> layers)
    {
        double t = 0;
        if (Absolute is double a) t = Math.Max(t, a);
        if (TimesMedian is double f)
        {
            var sorted = layers.Select(l => l.Output.Magnitude).OrderBy(v => v).ToList();
            double median = sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[sorted.Count / 2 - 1] + sorted[sorted.Count / 2]) / 2;
            t = Math.Max(t, f * median);
        }
        if (Absolute is null && TimesMedian is null) throw new ArgumentException("a spike rule needs an absolute threshold, a relative one, or both");
        return t;
    }

    public override string ToString() => (Absolute, TimesMedian) switch
    {
        (double a, double f) => $"|down_proj output| > max({a}, {f} x median of layer maxima)",
        (double a, null) => $"|down_proj output| > {a}",
        (null, double f) => $"|down_proj output| > {f} x median of layer maxima",
        _ => "none",
    };
}

/// <summary>A located super weight: model.layers[Layer].mlp.down_proj.weight[Row, Column].</summary>
public sealed record SuperWeight(int Layer, int Row, int Column, float Value, int Iteration)
{
    public string Name => $"model.layers.{Layer}.mlp.down_proj.weight[{Row}, {Column}]";
}

/// <summary>The huge activation a super weight creates: down_proj output channel (= the row) at a token.</summary>
public sealed record SuperActivation(int Layer, int Channel, int Token, float Value, float InputValue, int InputChannel);

public sealed record DetectionReport(
    SpikeRule Rule,
    IReadOnlyList<int> PromptTokens,
    IReadOnlyList<SuperWeight> SuperWeights,
    IReadOnlyList<SuperActivation> SuperActivations,
    IReadOnlyList<IReadOnlyList<LayerSpikes>> Passes,
    double FirstPassThreshold,
    int Iterations,
    bool StoppedAtMaxIterations)
{
    public bool Found => SuperWeights.Count > 0;
    /// <summary>Spikes of the first (unmodified) pass.</summary>
    public IReadOnlyList<LayerSpikes> OriginalSpikes => Passes[0];
}

/// <summary>
/// Finds super weights as in Yu et al. 2024: one forward pass over one prompt records, per layer, the max |input| and
/// max |output| of mlp.down_proj; a layer whose output spike passes the rule yields the candidate W_down[j, k] (j =
/// output channel of the spike, k = input channel of the input spike). Candidates are zeroed and the pass repeated
/// until no new spike passes or <c>maxIterations</c> is reached. The model's weights are restored before returning.
/// A model with no spike above the rule gets an empty list, never an invented one.
/// </summary>
public sealed class SuperWeightDetector
{
    public const string PaperPrompt = "Apple Inc. is a worldwide tech company.";

    public SpikeRule Rule { get; init; } = SpikeRule.Paper;
    public int MaxIterations { get; init; } = 10;

    public DetectionReport Detect(LlamaModel model, IReadOnlyList<int> promptTokens)
    {
        if (promptTokens.Count == 0) throw new ArgumentException("the detection prompt is empty");
        var found = new List<SuperWeight>();
        var activations = new List<SuperActivation>();
        var passes = new List<IReadOnlyList<LayerSpikes>>();
        var saved = new List<(SuperWeight w, float original)>();
        IForwardHooks? previousHooks = model.Hooks;
        double firstThreshold = 0;
        bool hitLimit = false;
        int iteration = 0;
        try
        {
            while (true)
            {
                if (iteration == MaxIterations) { hitLimit = true; break; }
                iteration++;
                var spikes = RecordPass(model, promptTokens);
                passes.Add(spikes);
                double threshold = Rule.ThresholdFor(spikes);
                if (iteration == 1) firstThreshold = threshold;
                var fresh = new List<SuperWeight>();
                foreach (var layer in spikes)
                {
                    if (layer.Output.Magnitude <= threshold) continue;
                    // The input channel at the output spike's own token (the paper's Y_ij ~ X_ik W_jk), not the largest
                    // input anywhere in the prompt, which can sit at another token.
                    int row = layer.Output.Channel, col = layer.PairedInput.Channel;
                    if (found.Any(f => f.Layer == layer.Layer && f.Row == row && f.Column == col)) continue;
                    float value = ReadWeight(model, layer.Layer, row, col);
                    fresh.Add(new SuperWeight(layer.Layer, row, col, value, iteration));
                    activations.Add(new SuperActivation(layer.Layer, row, layer.Output.Token, (float)layer.Output.Value, (float)layer.PairedInput.Value, col));
                }
                if (fresh.Count == 0) break;
                foreach (var w in fresh)
                {
                    saved.Add((w, w.Value));
                    WriteWeight(model, w.Layer, w.Row, w.Column, 0f);
                }
                found.AddRange(fresh);
            }
        }
        finally
        {
            foreach (var (w, original) in Enumerable.Reverse(saved)) WriteWeight(model, w.Layer, w.Row, w.Column, original);
            model.Hooks = previousHooks;
        }
        return new DetectionReport(Rule, promptTokens.ToList(), found, activations, passes, firstThreshold, passes.Count, hitLimit);
    }

    /// <summary>One forward pass with the spike recorder attached; returns per-layer spikes.</summary>
    public static IReadOnlyList<LayerSpikes> RecordPass(LlamaModel model, IReadOnlyList<int> tokens, DownProjSpikeRecorder? recorder = null)
    {
        recorder ??= new DownProjSpikeRecorder(model.Config.NumLayers);
        IForwardHooks? previous = model.Hooks;
        model.Hooks = recorder;
        try { model.Forward(tokens.ToArray()).Dispose(); }
        finally { model.Hooks = previous; }
        return recorder.Layers;
    }

    public static float ReadWeight(LlamaModel model, int layer, int row, int col)
    {
        return model.Weights.GetElement(new LinearSite(layer, Projection.Down), row, col);
    }

    /// <summary>Sets one element of a down_proj weight in place (the tensor is the model's own).</summary>
    public static void WriteWeight(LlamaModel model, int layer, int row, int col, float value)
    {
        model.Weights.SetElement(new LinearSite(layer, Projection.Down), row, col, value);
    }
}
