using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Core.Quantization;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Manifest;

namespace SuperQuant.Pipeline;

/// <summary>The W/A side of a method: which weight rounding follows its transforms, and the calibrated hooks that
/// quantize activations at run time (null for a weight-only run).</summary>
public static class ActivationPlan
{
    /// <summary>Super-aware keeps its clipping and restored super weights; after a rotation the super weights are
    /// spread over whole rows, so the W/A methods use plain RTN, as their papers do.</summary>
    public static QuantMethod WeightMethodFor(QuantMethod method) => method == QuantMethod.SuperAware ? QuantMethod.SuperAware : QuantMethod.Rtn;

    /// <summary>Calibrates and fuses the method's transforms into <paramref name="model"/>'s weights and returns the
    /// hooks to install after the weights are quantized; null for rtn/super-aware at 16-bit activations.</summary>
    public static ActivationQuantizer? Prepare(LlamaModel model, QuantMethod method, int weightBits, int activationBits,
        IReadOnlyList<int> calibration, DetectionReport? detection,
        ActivationSettings? settings = null)
    {
        if (!method.Transforms() && activationBits >= 16) return null;
        var m = method switch
        {
            QuantMethod.SmoothQuant => QuantMethod.SmoothQuant,
            QuantMethod.Hadamard => QuantMethod.Hadamard,
            QuantMethod.DuQuant => QuantMethod.DuQuant,
            QuantMethod.SuperAware => QuantMethod.SuperAware,
            _ => QuantMethod.Rtn,
        };
        var o = m == QuantMethod.DuQuant
            ? ActivationQuantizationOptions.DuQuantDefaults(weightBits, activationBits)
            : new ActivationQuantizationOptions { Method = m, WeightBits = weightBits, ActivationBits = activationBits };
        if (settings is not null)
            o = o with
            {
                PerTensor = settings.Scale == "per-tensor",
                Asymmetric = settings.Quantizer is null ? o.Asymmetric : settings.Quantizer == "asymmetric",
                SuperActivationScalar = settings.SuperActivation == "scalar",
            };
        return ActivationQuantizer.Prepare(model, o, calibration, detection);
    }
}

/// <summary>How activations are quantized (W/A runs): scale per token or per tensor, symmetric or asymmetric (null =
/// the method's default: asymmetric for DuQuant, as its code; symmetric otherwise), and the super-aware method's
/// handling of super activations (whole fp32 channels, or the paper's one fp16 scalar).</summary>
public sealed record ActivationSettings(string Scale = "per-token", string? Quantizer = null, string SuperActivation = "channel")
{
    public static readonly IReadOnlyList<string> Scales = new[] { "per-token", "per-tensor" };
    public static readonly IReadOnlyList<string> Quantizers = new[] { "symmetric", "asymmetric" };
    public static readonly IReadOnlyList<string> SuperActivations = new[] { "channel", "scalar" };

    public override string ToString() => $"{Scale}, {Quantizer ?? "method default"}, super activation {SuperActivation}";
}
