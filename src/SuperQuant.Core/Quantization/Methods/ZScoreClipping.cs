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
        using var scope = torch.NewDisposeScope();
        double mean = w.mean().item<float>(), std = w.std().item<float>();
        Tensor clipped = w.clamp(mean - z * std, mean + z * std);
        foreach (long row in exemptRows ?? Array.Empty<long>()) clipped[row] = w[row];
        return clipped.MoveToOuterDisposeScope();
    }
}
