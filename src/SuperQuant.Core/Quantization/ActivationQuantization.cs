using SuperQuant.Core.Llama;
using SuperQuant.Core.Quantization.Methods;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Manifest;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Quantization;

public sealed record ActivationQuantizationOptions
{
    public QuantMethod Method { get; init; } = QuantMethod.Rtn;
    public int WeightBits { get; init; } = 8;
    public int ActivationBits { get; init; } = 8;
    /// <summary>One activation scale per tensor instead of one per token. With per-token scales a super activation
    /// spoils only its own token's scale, which hides the effect the Super Weight paper measures (it uses per-tensor).</summary>
    public bool PerTensor { get; init; }
    /// <summary>Asymmetric activation quantization with an integer zero point (DuQuant's quantizer: scale =
    /// (max - min) / (2^bits - 1), zero = round(-min / scale), codes in 0..2^bits - 1); false = symmetric.</summary>
    public bool Asymmetric { get; init; }
    /// <summary>Super-aware activations: true = the paper's handling, only the super activation scalar (the channel's
    /// largest |x| token) is replaced by the median before quantizing and restored in fp16 after; false = the whole
    /// channel at every token is kept in fp32.</summary>
    public bool SuperActivationScalar { get; init; }
    /// <summary>SmoothQuant's / DuQuant's migration strength (DuQuant's script uses 0.6, SmoothQuant's paper 0.5).</summary>
    public double Alpha { get; init; } = 0.5;
    /// <summary>Fraction of the per-token max used as the activation range (DuQuant: 0.9).</summary>
    public double ActivationClip { get; init; } = 1.0;
    /// <summary>Fraction of the per-channel max used as the weight range (DuQuant: 0.8).</summary>
    public double WeightClip { get; init; } = 1.0;
    /// <summary>DuQuant rotation block size (128) and greedy steps per block (256).</summary>
    public int RotationBlock { get; init; } = 128;
    public int RotationSteps { get; init; } = 256;
    public int Seed { get; init; } = 0;

    public static ActivationQuantizationOptions DuQuantDefaults(int wBits, int aBits) => new()
    {
        // The reference script's clip ratios are tuned for 4 bits; at 8 bits clipping costs more than rounding.
        Method = QuantMethod.DuQuant, WeightBits = wBits, ActivationBits = aBits, Alpha = 0.6, Asymmetric = true,
        ActivationClip = aBits <= 4 ? 0.9 : 1.0, WeightClip = wBits <= 4 ? 0.8 : 1.0,
    };
}

/// <summary>
/// Simulated weight-and-activation quantization (fake-quant in fp32, as the papers evaluate it). Every group of linear
/// layers that reads the same input (q/k/v, o, gate/up, down) gets one invertible input transform T: the weights are
/// replaced offline by W T^-T and the input is multiplied online by T, so x W^T = (x T)(W T^-T)^T exactly before
/// quantization. Then the transformed input is quantized per token (symmetric) and the transformed weight with block RTN (per
/// output channel by default), the packed artifact's format, so an artifact evaluates exactly as measured here.
/// SmoothQuant's T is diagonal (the online scale stands for the fold into the previous norm); Hadamard's and
/// DuQuant's are orthogonal after the diagonal smoothing.
/// </summary>
public sealed class ActivationQuantizer : IForwardHooks
{
    readonly Dictionary<(int Layer, InputGroup Group), Tensor> _transforms = new();
    readonly Dictionary<(int Layer, InputGroup Group), int[]> _superChannels = new();
    readonly ActivationQuantizationOptions _o;

    public enum InputGroup { Attention, Output, Mlp, Down }

    public static InputGroup GroupOf(Projection p) => p switch
    {
        Projection.Q or Projection.K or Projection.V => InputGroup.Attention,
        Projection.O => InputGroup.Output,
        Projection.Gate or Projection.Up => InputGroup.Mlp,
        Projection.Down => InputGroup.Down,
        _ => throw new ArgumentOutOfRangeException(nameof(p)),
    };

    static IEnumerable<Projection> Members(InputGroup g) => g switch
    {
        InputGroup.Attention => new[] { Projection.Q, Projection.K, Projection.V },
        InputGroup.Output => new[] { Projection.O },
        InputGroup.Mlp => new[] { Projection.Gate, Projection.Up },
        _ => new[] { Projection.Down },
    };

    ActivationQuantizer(ActivationQuantizationOptions o) { _o = o; }

    public ActivationQuantizationOptions Options => _o;
    /// <summary>The online input transform T of each (layer, group) that has one (Hadamard, DuQuant).</summary>
    public IReadOnlyDictionary<(int Layer, InputGroup Group), Tensor> Transforms => _transforms;
    /// <summary>Channels kept out of activation quantization (super-activation-aware method).</summary>
    public IReadOnlyDictionary<(int Layer, InputGroup Group), int[]> SuperChannels => _superChannels;
    /// <summary>The quantized weights when <see cref="Apply"/> quantized them (null for 16-bit weights).</summary>
    public QuantizationResult? Weights { get; private set; }

    /// <summary>Rebuilds the hooks from stored state (a packed artifact).</summary>
    public static ActivationQuantizer FromState(ActivationQuantizationOptions o, IReadOnlyDictionary<(int, InputGroup), Tensor> transforms,
        IReadOnlyDictionary<(int, InputGroup), int[]> superChannels)
    {
        var q = new ActivationQuantizer(o);
        foreach (var (k, t) in transforms) q._transforms[k] = t;
        foreach (var (k, c) in superChannels) q._superChannels[k] = c;
        return q;
    }

    /// <summary>Calibrates on <paramref name="calibration"/>, transforms the weights (folds and rotations, then the
    /// method's weight clipping), quantizes them with per-channel block RTN (the packed artifact's format) unless
    /// <c>WeightBits</c> is 16, and returns the hooks to install as <see cref="LlamaModel.Hooks"/>.</summary>
    public static ActivationQuantizer Apply(LlamaModel model, ActivationQuantizationOptions o, IReadOnlyList<int> calibration,
        DetectionReport? detection = null)
    {
        var q = Prepare(model, o, calibration, detection);
        if (o.WeightBits < 16)
            q.Weights = ModelQuantizer.Quantize(model, new WeightQuantizationOptions
            {
                Method = QuantMethod.Rtn, Bits = o.WeightBits,
                BlockSize = 0
            }, Array.Empty<SuperWeight>());
        return q;
    }

    /// <summary>Everything but the weight rounding: calibration, folds into norms, rotations fused into the weights
    /// (x W^T = (x T)(W T^-T)^T), the weight clip, and the super-activation channels. The caller quantizes the
    /// weights (any block size) and installs the returned hooks.</summary>
    public static ActivationQuantizer Prepare(LlamaModel model, ActivationQuantizationOptions o, IReadOnlyList<int> calibration,
        DetectionReport? detection = null)
    {
        if (o.Method == QuantMethod.SmoothQuant && model.Config.Norm == NormKind.NonParametricLayerNorm)
            throw new SuperQuantException(ErrorCodes.UnsupportedQuantization,
                $"SmoothQuant folds its scales into the preceding norm's weight; {model.Config.Architecture} uses a non-parametric LayerNorm, which " +
                    $"has none (use hadamard or duquant)");
        if (o.Method == QuantMethod.SmoothQuant && !model.Config.PreNorms)
            throw new SuperQuantException(ErrorCodes.UnsupportedQuantization,
                $"SmoothQuant folds its scales into the norm before q/k/v and gate/up; {model.Config.Architecture} normalizes after each sub-block " +
                    $"instead, so there is none to fold into (use hadamard or duquant)");
        var q = new ActivationQuantizer(o);
        var stats = InputStatistics.Record(model, calibration);
        using var _ = torch.no_grad();
        for (int l = 0; l < model.Config.NumLayers; l++)
            foreach (InputGroup g in Enum.GetValues<InputGroup>())
            {
                var sites = Members(g).Select(p => new LinearSite(l, p)).ToList();
                Tensor absMax = stats.AbsMax[(l, g)];
                if (o.Method == QuantMethod.SmoothQuant && g is InputGroup.Attention or InputGroup.Mlp)
                {
                    // Fold: the norm's weight divides by s (so its output is x / s) and the weights multiply by s.
                    // Only inputs that come out of a parametric norm can take this; o_proj/down_proj stay plain.
                    Tensor s = SmoothQuant.Scales(absMax, sites.Select(site => model.Weights[site]), o.Alpha);
                    var layer = model.Weights.Layer(l);
                    // Gemma's norms scale by (offset + w): the folded weight is (offset + w) / s - offset.
                    double offset = model.Config.NormWeightOffset;
                    Tensor Fold(Tensor w) => offset == 0 ? w / s : (w + offset) / s - offset;
                    if (g == InputGroup.Attention) layer.AttnNorm = Fold(layer.AttnNorm!); else layer.FfnNorm = Fold(layer.FfnNorm!);
                    foreach (var site in sites) model.Weights[site] = model.Weights[site] * s;
                }
                Tensor? t = o.Method switch
                {
                    QuantMethod.Hadamard => HadamardRotation.Create(absMax.shape[0], o.Seed + 31 * l + (int)g).to(absMax.device),
                    QuantMethod.DuQuant => DuQuantTransform(model, sites, absMax, stats.Samples[(l, g)], o),
                    _ => null,
                };
                if (t is not null)
                {
                    q._transforms[(l, g)] = t;
                    using Tensor inverseT = torch.linalg.inv(t).t(); // W' = W T^-T
                    foreach (var site in sites) model.Weights[site] = model.Weights[site].matmul(inverseT);
                }
                if (o.WeightClip < 1 && o.WeightBits < 16)
                    foreach (var site in sites)
                    {
                        // Each row clipped to clip x its max |w| (DuQuant's weight clip ratio), before rounding.
                        Tensor w = model.Weights[site];
                        Tensor bound = w.abs().amax(new long[] { 1 }, keepdim: true) * o.WeightClip;
                        model.Weights[site] = torch.minimum(torch.maximum(w, -bound), bound);
                    }
            }
        if (o.Method == QuantMethod.SuperAware && detection is { Found: true })
            foreach (var sw in detection.SuperWeights)
            {
                // The spike entering down_proj (channel k) and the super activation it writes into the residual
                // stream (channel j), which every later block's q/k/v and gate/up inputs carry after RMSNorm.
                q.AddSuperChannel((sw.Layer, InputGroup.Down), sw.Column);
                for (int l = sw.Layer + 1; l < model.Config.NumLayers; l++)
                {
                    q.AddSuperChannel((l, InputGroup.Attention), sw.Row);
                    q.AddSuperChannel((l, InputGroup.Mlp), sw.Row);
                }
            }
        foreach (var t in stats.AbsMax.Values.Concat(stats.Samples.Values)) t.Dispose();
        return q;
    }

    readonly Dictionary<((int, InputGroup), ScalarType), Tensor> _castTransforms = new();

    /// <summary>The transform in the activations' dtype (a model run with eval --dtype bf16 meets fp32 transforms),
    /// converted once per dtype.</summary>
    Tensor InDtype((int, InputGroup) key, Tensor t, ScalarType dtype)
    {
        if (t.dtype == dtype) return t;
        if (!_castTransforms.TryGetValue((key, dtype), out var cast))
            _castTransforms[(key, dtype)] = cast = t.to_type(dtype).DetachFromDisposeScope();
        return cast;
    }

    void AddSuperChannel((int, InputGroup) key, int channel) =>
        _superChannels[key] = (_superChannels.TryGetValue(key, out var a) ? a : Array.Empty<int>()).Append(channel).Distinct().ToArray();

    public Tensor OnLinearInput(LinearSite site, Tensor input)
    {
        if (site.Projection == Projection.LmHead) return input;
        var key = (site.Layer, GroupOf(site.Projection));
        Tensor x = _transforms.TryGetValue(key, out var t) ? input.matmul(InDtype(key, t, input.dtype)) : input;
        if (!_superChannels.TryGetValue(key, out var channels)) return FakeQuant(x);
        // Super-activation-aware: median in, quantize, exact value back.
        using var idx = torch.tensor(channels.Select(c => (long)c).ToArray(), device: x.device);
        Tensor saved = x.index_select(-1, idx);
        float median = x.flatten().median().to_type(ScalarType.Float32).item<float>(); // any dtype (eval --dtype bf16)
        if (_o.SuperActivationScalar)
        {
            // The paper: only the super activation itself (the channel's largest |x|, per sequence) is replaced and
            // restored, in fp16; the channel's other tokens are quantized like everything else.
            Tensor at = saved.abs().argmax(-2, keepdim: true);                               // [B, 1, k] token index
            Tensor mask = torch.zeros_like(saved, dtype: ScalarType.Bool, device: saved.device).scatter_(-2, at,
                torch.ones_like(at, dtype: ScalarType.Bool, device: at.device));
            Tensor scalar = saved.gather(-2, at).to_type(ScalarType.Float16).to_type(saved.dtype); // stored in fp16
            Tensor qs = FakeQuant(x.index_copy(-1, idx, saved.masked_fill(mask, median)));
            return qs.index_copy(-1, idx, torch.where(mask, scalar.expand_as(saved), qs.index_select(-1, idx)));
        }
        Tensor replaced = x.index_fill(-1, idx, median);
        Tensor q = FakeQuant(replaced);
        return q.index_copy(-1, idx, saved);
    }

    Tensor FakeQuant(Tensor x) => _o.Asymmetric
        ? FakeQuantAsymmetric(x, _o.ActivationBits, _o.ActivationClip, _o.PerTensor)
        : _o.PerTensor ? FakeQuantPerTensor(x, _o.ActivationBits, _o.ActivationClip) : FakeQuantPerToken(x, _o.ActivationBits, _o.ActivationClip);

    /// <summary>DuQuant's asymmetric quantizer (quantize/quantizer.py, per_token_dynamic_calibration + fake_quant):
    /// min and max (times the clip ratio) per token, or over the tensor; scale = (max - min) / (2^bits - 1) clamped to
    /// [1e-5, 1e4]; zero = round(-min / scale); x_q = (clamp(round(x / scale) + zero, 0, 2^bits - 1) - zero) * scale.</summary>
    public static Tensor FakeQuantAsymmetric(Tensor x, int bits, double clip, bool perTensor)
    {
        if (bits >= 16) return x;
        double qmax = (1 << bits) - 1;
        Tensor min = (perTensor ? x.min() : x.amin(new long[] { -1 }, keepdim: true)) * clip;
        Tensor max = (perTensor ? x.max() : x.amax(new long[] { -1 }, keepdim: true)) * clip;
        Tensor scale = ((max - min) / qmax).clamp(1e-5, 1e4);
        Tensor zero = (-min / scale).clamp(-1e4, 1e4).round();
        return (((x / scale).round() + zero).clamp(0, qmax) - zero) * scale;
    }

    /// <summary>Symmetric quantize/dequantize with one scale for the whole tensor.</summary>
    public static Tensor FakeQuantPerTensor(Tensor x, int bits, double clip)
    {
        if (bits >= 16) return x;
        double qmax = (1 << (bits - 1)) - 1;
        double scale = Math.Max(x.abs().max().to_type(ScalarType.Float32).item<float>() * clip / qmax, 1e-8);
        return (x / scale).round().clamp(-qmax - 1, qmax) * scale;
    }

    /// <summary>Symmetric per-token quantize/dequantize of the last dimension.</summary>
    public static Tensor FakeQuantPerToken(Tensor x, int bits, double clip)
    {
        if (bits >= 16) return x; // 16 = keep floating point
        double qmax = (1 << (bits - 1)) - 1;
        Tensor scale = (x.abs().amax(new long[] { -1 }, keepdim: true) * clip / qmax).clamp(min: 1e-8);
        return (x / scale).round().clamp(-qmax - 1, qmax) * scale;
    }

    /// <summary>
    /// DuQuant's input transform for one group: smoothing (alpha), a block-diagonal rotation built greedily from the
    /// largest-outlier channel of each block, a zigzag permutation that deals channels (sorted by outlier size) to
    /// blocks back and forth so every block gets a similar share, and a second greedy block rotation.
    /// </summary>
    static Tensor DuQuantTransform(LlamaModel model, IReadOnlyList<LinearSite> sites, Tensor absMax, Tensor samples, ActivationQuantizationOptions o)
    {
        long n = absMax.shape[0];
        // Built on the host (n x n matrices, one item() per greedy step) and moved to the model's device once.
        Tensor s = SmoothQuant.Scales(absMax, sites.Select(site => model.Weights[site]), o.Alpha).cpu();
        Tensor t = torch.diag(1.0f / s);
        Tensor x = samples.cpu().matmul(t);
        int block = (int)Math.Min(o.RotationBlock, n);
        var rng = new Random(o.Seed + (int)n);
        Tensor r1 = DuQuantRotation.Greedy(x, block, o.RotationSteps, rng);
        t = t.matmul(r1);
        x = x.matmul(r1);
        Tensor perm = ZigzagPermutation.Matrix(x.abs().amax(new long[] { 0 }), block);
        t = t.matmul(perm);
        x = x.matmul(perm);
        Tensor r2 = DuQuantRotation.Greedy(x, block, o.RotationSteps, rng);
        return t.matmul(r2).to(absMax.device);
    }

    /// <summary>Per input group: max |x| per channel and a sample of input rows, from one calibration pass.</summary>
    sealed class InputStatistics : IForwardHooks
    {
        public Dictionary<(int, InputGroup), Tensor> AbsMax { get; } = new();
        public Dictionary<(int, InputGroup), Tensor> Samples { get; } = new();

        public static InputStatistics Record(LlamaModel model, IReadOnlyList<int> tokens)
        {
            var s = new InputStatistics();
            IForwardHooks? previous = model.Hooks;
            model.Hooks = s;
            try { model.Forward(tokens.Take(model.Config.MaxPositionEmbeddings).ToArray()).Dispose(); }
            finally { model.Hooks = previous; }
            return s;
        }

        public Tensor OnLinearInput(LinearSite site, Tensor input)
        {
            if (site.Projection == Projection.LmHead) return input;
            var key = (site.Layer, GroupOf(site.Projection));
            if (AbsMax.ContainsKey(key)) return input;
            Tensor x = input[0];
            AbsMax[key] = x.abs().amax(new long[] { 0 }).clone().DetachFromDisposeScope();
            Samples[key] = (x.shape[0] > 256 ? x.narrow(0, 0, 256) : x).clone().DetachFromDisposeScope();
            return input;
        }
    }
}
