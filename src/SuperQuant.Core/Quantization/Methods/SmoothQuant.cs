using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Quantization.Methods;

/// <summary>
/// SmoothQuant (Xiao et al., 2023, section 4, eq. 4): per input channel j, s_j = max|X_j|^alpha / max|W_j|^(1 - alpha);
/// the input is divided by s and the weight multiplied by s, so X W^T = (X diag(s)^-1)(W diag(s))^T exactly while the
/// activation outliers move into the weights. DuQuant (section 3.1) smooths the same way before its rotations (alpha 0.6).
/// </summary>
public static class SmoothQuant
{
    /// <summary>Floor for both maxima and for s (an all-zero channel would otherwise give 0/0).</summary>
    public const float Floor = 1e-5f;

    /// <param name="activationAbsMax">max |X_j| over calibration tokens, [in].</param>
    /// <param name="weights">Every weight that reads this input ([out, in] each): q/k/v share one input.</param>
    public static Tensor Scales(Tensor activationAbsMax, IEnumerable<Tensor> weights, double alpha)
    {
        using var scope = torch.NewDisposeScope();
        Tensor wMax = weights.Select(w => w.abs().amax(new long[] { 0 })).Aggregate((a, b) => torch.maximum(a, b));
        Tensor s = (activationAbsMax.clamp(min: Floor).pow(alpha) / wMax.clamp(min: Floor).pow(1 - alpha)).clamp(min: Floor);
        return s.MoveToOuterDisposeScope();
    }
}
