using TorchSharp;
using static TorchSharp.torch;

// host-only: its callers pass host samples and move the rotation to the model's device.
namespace SuperQuant.Core.Quantization.Methods;

/// <summary>
/// DuQuant's block-diagonal rotation (Lin et al., NeurIPS 2024, section 3.2, eq. 5-6): within each block of
/// <c>block</c> channels, greedily find the channel holding the block's largest |x|, swap it to the front and apply an
/// orthogonal matrix that spreads it over the block; repeat while the block's max falls (at most <c>steps</c> times).
/// The product R = R_1 R_2 ... is orthogonal, and by construction the block's max |x R| never exceeds max |x|
/// (a step is kept only when it lowers it).
/// </summary>
public static class DuQuantRotation
{
    /// <param name="x">Calibration samples of the input, [tokens, n].</param>
    public static Tensor Greedy(Tensor x, int block, int steps, Random rng)
    {
        long n = x.shape[1];
        Tensor full = torch.eye(n);
        for (long start = 0; start < n; start += block)
        {
            long size = Math.Min(block, n - start);
            Tensor xb = x.narrow(1, start, size);
            Tensor r = torch.eye(size);
            double best = xb.abs().max().item<float>();
            Tensor basis = HadamardRotation.Create(size, rng.Next());
            for (int step = 0; step < steps; step++)
            {
                // Swap the channel holding the block's largest magnitude to the front, then spread it.
                long outlier = xb.matmul(r).abs().amax(new long[] { 0 }).argmax().item<long>();
                Tensor swap = torch.eye(size);
                swap[0, 0] = torch.tensor(0f); swap[outlier, outlier] = torch.tensor(0f);
                swap[0, outlier] = torch.tensor(1f); swap[outlier, 0] = torch.tensor(1f);
                Tensor candidate = r.matmul(swap).matmul(basis);
                double m = xb.matmul(candidate).abs().max().item<float>();
                if (m >= best) break;
                best = m;
                r = candidate;
            }
            full[TensorIndex.Slice(start, start + size), TensorIndex.Slice(start, start + size)] = r;
        }
        return full;
    }
}
