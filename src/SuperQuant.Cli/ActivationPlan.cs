using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Core.Quantization;
using SuperQuant.Core.SuperWeights;

namespace SuperQuant.Cli;

/// <summary>The W/A side of a method name, shared by `quantize` and `gate`: which methods fuse activation transforms
/// into the weights, and the calibrated hooks that quantize activations at run time.</summary>
public static class ActivationPlan
{
    public static readonly string[] Methods = { "rtn", "super-aware", "smoothquant", "hadamard", "duquant" };

    /// <summary>Methods whose weights are rewritten by calibrated transforms before rounding.</summary>
    public static bool Transforms(string method) => method is "smoothquant" or "hadamard" or "duquant";

    /// <summary>Methods whose statistics come from calibration data.</summary>
    public static bool NeedsCalibration(string method) => method is "smoothquant" or "duquant";

    /// <summary>The weight rounding that follows: super-aware keeps its clipping and restored super weights; after a
    /// rotation the super weights are spread over whole rows, so the W/A methods use plain RTN, as their papers do.</summary>
    public static WeightMethod WeightMethodFor(string method) => method == "super-aware" ? WeightMethod.SuperAware : WeightMethod.Rtn;

    /// <summary>Calibrates and fuses the method's transforms into <paramref name="model"/>'s weights and returns the hooks
    /// to install after the weights are quantized; null for a weight-only run (rtn/super-aware at 16-bit activations).</summary>
    public static ActivationQuantizer? Prepare(LlamaModel model, string method, int weightBits, int activationBits, IReadOnlyList<int> calibration, DetectionReport? detection)
    {
        if (!Transforms(method) && activationBits >= 16) return null;
        var m = method switch
        {
            "smoothquant" => ActivationMethod.SmoothQuant,
            "hadamard" => ActivationMethod.Hadamard,
            "duquant" => ActivationMethod.DuQuant,
            "super-aware" => ActivationMethod.SuperAware,
            "rtn" => ActivationMethod.Rtn,
            _ => throw new SuperQuantException(ErrorCodes.InvalidArgument, $"method '{method}' (expected {string.Join(", ", Methods)})"),
        };
        var o = m == ActivationMethod.DuQuant
            ? ActivationQuantizationOptions.DuQuantDefaults(weightBits, activationBits)
            : new ActivationQuantizationOptions { Method = m, WeightBits = weightBits, ActivationBits = activationBits };
        return ActivationQuantizer.Prepare(model, o, calibration, detection);
    }
}
