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
    public static WeightMethod WeightMethodFor(QuantMethod method) => method == QuantMethod.SuperAware ? WeightMethod.SuperAware : WeightMethod.Rtn;

    /// <summary>Calibrates and fuses the method's transforms into <paramref name="model"/>'s weights and returns the
    /// hooks to install after the weights are quantized; null for rtn/super-aware at 16-bit activations.</summary>
    public static ActivationQuantizer? Prepare(LlamaModel model, QuantMethod method, int weightBits, int activationBits, IReadOnlyList<int> calibration, DetectionReport? detection)
    {
        if (!method.Transforms() && activationBits >= 16) return null;
        var m = method switch
        {
            QuantMethod.SmoothQuant => ActivationMethod.SmoothQuant,
            QuantMethod.Hadamard => ActivationMethod.Hadamard,
            QuantMethod.DuQuant => ActivationMethod.DuQuant,
            QuantMethod.SuperAware => ActivationMethod.SuperAware,
            _ => ActivationMethod.Rtn,
        };
        var o = m == ActivationMethod.DuQuant
            ? ActivationQuantizationOptions.DuQuantDefaults(weightBits, activationBits)
            : new ActivationQuantizationOptions { Method = m, WeightBits = weightBits, ActivationBits = activationBits };
        return ActivationQuantizer.Prepare(model, o, calibration, detection);
    }
}
