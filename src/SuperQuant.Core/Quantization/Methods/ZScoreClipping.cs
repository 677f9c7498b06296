using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Quantization.Methods;

/// <summary>
/// The Super Weight paper's z-score clipping (Yu et al., 2024, section 4.2): before round-to-nearest, weights beyond
/// mean +/- z * std of the matrix are clamped, which narrows the quantization range for everything else; the super
/// weights themselves are restored exactly afterwards. Here the gate/up rows that produce a super activation can be
/// exempted too (see <see cref="ModelQuantizer.SuperActivationRows"/>). The authors' code computes the threshold per
/// block from |W| (mean(|W|) + z * std(|W|)); this is the whole-matrix form the paper's text describes.
/// </summary>
public static class ZScoreClipping
{
    public static Tensor Clip(Tensor w, double z, IReadOnlyCollection<long>? exemptRows = null)
    {
        if (double.IsPositiveInfinity(z)) return w.alias();
        var (mean, std) = Statistics(w);
        return Clip(w, z, mean, std, exemptRows);
    }

    /// <summary>The matrix mean and (unbiased) standard deviation the threshold is built from.</summary>
    public static (double Mean, double Std) Statistics(Tensor w)
    {
        using var mean = w.mean();
        using var std = w.std();
        return (mean.item<float>(), std.item<float>());
    }

    /// <summary>Clip with precomputed <see cref="Statistics"/> (a z search reuses them for every candidate).</summary>
    public static Tensor Clip(Tensor w, double z, double mean, double std, IReadOnlyCollection<long>? exemptRows = null)
    {
        if (double.IsPositiveInfinity(z)) return w.alias();
        using var scope = torch.NewDisposeScope();
        Tensor clipped = w.clamp(mean - z * std, mean + z * std);
        foreach (long row in exemptRows ?? Array.Empty<long>()) clipped[row] = w[row];
        return clipped.MoveToOuterDisposeScope();
    }
}
