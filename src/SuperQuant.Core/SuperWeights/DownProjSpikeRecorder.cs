using SuperQuant.Core.Llama;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.SuperWeights;

/// <summary>The largest |value| of one activation tensor: where it is and how big.</summary>
public readonly record struct Spike(double Magnitude, double Value, int Channel, int Token);

/// <summary>Per layer: the largest |input| and |output| of mlp.down_proj in one forward pass, and the largest |input|
/// at the output spike's token (<paramref name="PairedInput"/>): Y[t, j] = sum_k X[t, k] W[j, k], so the weight that makes
/// the output spike at (t, j) is W[j, k] for the k where X[t, k] spikes at that same token.</summary>
public sealed record LayerSpikes(int Layer, Spike Input, Spike Output, Spike PairedInput);

/// <summary>
/// Hooks that record, for every mlp.down_proj, the max-magnitude input and output element. Each hook reduces the
/// activation to one max and one index (no copy of the activation survives the call), so a recording pass costs
/// little more than a plain one. Optionally overrides single output elements: that is how a zeroed super weight's
/// super activation is restored.
/// </summary>
public sealed class DownProjSpikeRecorder : IForwardHooks
{
    readonly Spike?[] _inputs, _outputs, _paired;
    // The current down_proj input, held (not copied) from OnLinearInput to OnLinearOutput of the same call.
    Tensor? _pendingInput;

    /// <summary>(layer, token, channel) -> value written into the down_proj output (super-activation restore).</summary>
    public Dictionary<(int Layer, int Token, int Channel), float> OutputOverrides { get; } = new();

    public DownProjSpikeRecorder(int layers)
    {
        _inputs = new Spike?[layers];
        _outputs = new Spike?[layers];
        _paired = new Spike?[layers];
    }

    public IReadOnlyList<LayerSpikes> Layers =>
        Enumerable.Range(0, _inputs.Length)
            .Select(l => new LayerSpikes(l, _inputs[l] ?? throw new InvalidOperationException("no forward pass was recorded"), _outputs[l]!.Value,
                _paired[l]!.Value))
            .ToList();

    public Tensor OnLinearInput(LinearSite site, Tensor input)
    {
        if (site.Projection == Projection.Down)
        {
            _inputs[site.Layer] = MaxOf(input);
            _pendingInput = input;
        }
        return input;
    }

    public Tensor OnLinearOutput(LinearSite site, Tensor output)
    {
        if (site.Projection != Projection.Down) return output;
        foreach (var ((layer, token, channel), value) in OutputOverrides)
        {
            if (layer != site.Layer || token >= output.shape[1]) continue;
            // F.linear's result belongs to this pass alone, so writing into it is safe.
            using Tensor element = output[0, token, channel];
            element.fill_(value);
        }
        Spike o = MaxOf(output);
        _outputs[site.Layer] = o;
        if (_pendingInput is { } x)
        {
            using var scope = torch.NewDisposeScope();
            float[] row = x[0].select(0, o.Token).to(ScalarType.Float32).cpu().data<float>().ToArray(); // one row: a few KB
            int channel = 0;
            for (int k = 1; k < row.Length; k++) if (Math.Abs(row[k]) > Math.Abs(row[channel])) channel = k;
            _paired[site.Layer] = new Spike(Math.Abs(row[channel]), row[channel], channel, o.Token);
        }
        _pendingInput = null;
        return output;
    }

    /// <summary>Max |x| over batch 0 of a [batch, tokens, channels] activation.</summary>
    static Spike MaxOf(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        Tensor first = x[0];                       // [tokens, channels], a view
        long channels = first.shape[1];
        Tensor flatIndex = first.abs().flatten().argmax();
        long idx = flatIndex.item<long>();
        int token = (int)(idx / channels), channel = (int)(idx % channels);
        double value = first[token, channel].item<float>();
        return new Spike(Math.Abs(value), value, channel, token);
    }
}
