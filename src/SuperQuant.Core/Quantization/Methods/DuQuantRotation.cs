using TorchSharp;
using static TorchSharp.torch;

// host-only: its callers pass host samples and move the rotation to the model's device.
namespace SuperQuant.Core.Quantization.Methods;

/// <summary>
/// DuQuant's block-diagonal rotation (Lin et al., NeurIPS 2024, section 3.2, eq. 5-6): within each block of
/// <c>block</c> channels, each greedy step finds the channel holding the block's largest |x R|, swaps it to the front
/// (E, a permutation) and applies R̂ = E R̃ Q: R̃ an orthogonal matrix whose first row is uniform (1/√n each), so the
/// outlier is spread evenly over the block, and Q = diag(1, Q′) with Q′ a random orthogonal matrix that mixes the other
/// channels. As in the authors' code, all <c>steps</c> steps run and the prefix R_1 ... R_t with the lowest block max
/// is kept (t = 0, the identity, when no step helps), so the block's max |x R| never exceeds max |x|. R is orthogonal.
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
            using var scope = torch.NewDisposeScope();
            long size = Math.Min(block, n - start);
            Tensor xb = x.narrow(1, start, size);
            Tensor basis = UniformFirstRow(size).matmul(OtherChannels(size, rng.Next()));
            Tensor r = torch.eye(size), bestR = r;
            double best = xb.abs().max().item<float>();
            for (int step = 0; step < steps && size > 1; step++)
            {
                long outlier = xb.matmul(r).abs().amax(new long[] { 0 }).argmax().item<long>();
                Tensor swap = torch.eye(size);
                swap[0, 0] = torch.tensor(0f); swap[outlier, outlier] = torch.tensor(0f);
                swap[0, outlier] = torch.tensor(1f); swap[outlier, 0] = torch.tensor(1f);
                r = r.matmul(swap).matmul(basis);
                double m = xb.matmul(r).abs().max().item<float>();
                if (m < best) { best = m; bestR = r; }
            }
            full[TensorIndex.Slice(start, start + size), TensorIndex.Slice(start, start + size)] = bestR;
        }
        return full;
    }

    /// <summary>R̃: the Householder reflection that maps e1 to the uniform vector u = 1/√n (1, ..., 1). It is symmetric
    /// and orthogonal, so its first row and first column are both u, for every n (not only powers of two, where a
    /// normalized Hadamard matrix would also do).</summary>
    public static Tensor UniformFirstRow(long n)
    {
        if (n == 1) return torch.ones(1, 1);
        Tensor u = torch.full(n, 1.0 / Math.Sqrt(n), ScalarType.Float64);
        Tensor v = -u;
        v[0] += 1.0;                                      // v = e1 - u
        Tensor h = torch.eye(n, dtype: ScalarType.Float64) - 2.0 * torch.outer(v, v) / v.dot(v);
        return h.to(ScalarType.Float32);
    }

    /// <summary>Q = diag(1, Q′), Q′ a seeded random orthogonal matrix on the other n-1 channels.</summary>
    public static Tensor OtherChannels(long n, int seed)
    {
        Tensor q = torch.eye(n);
        if (n > 2) q[TensorIndex.Slice(1, n), TensorIndex.Slice(1, n)] = HadamardRotation.RandomOrthogonal(n - 1, seed);
        return q;
    }
}
