using TorchSharp;
using static TorchSharp.torch;

// host-only: callers move the matrix to the model's device.
namespace SuperQuant.Core.Quantization.Methods;

/// <summary>
/// The rotation baseline of DuQuant's comparison (QuaRot, Ashkboos et al., 2024, section 3): an orthogonal Q with
/// X W^T = (X Q)(W Q)^T, spreading every channel's outliers over all channels. QuaRot uses a randomized Hadamard
/// matrix: for n a power of two Q = D H_n / sqrt(n), H_n the Sylvester Hadamard matrix (H_2n = [[H, H], [H, -H]]) and
/// D a seeded random diagonal of ±1 (random signs on the input channels); otherwise a seeded random orthogonal matrix
/// (QR of a Gaussian matrix with the sign of R's diagonal folded in, which makes it Haar-distributed).
/// </summary>
public static class HadamardRotation
{
    public static Tensor Create(long n, int seed)
    {
        if ((n & (n - 1)) == 0)
        {
            Tensor h = Sylvester(n) / (float)Math.Sqrt(n);
            var rng = new Random(seed);
            float[] signs = Enumerable.Range(0, (int)n).Select(_ => rng.Next(2) == 0 ? -1f : 1f).ToArray();
            return torch.tensor(signs).unsqueeze(1) * h; // D H: row i of H times the sign of input channel i
        }
        return RandomOrthogonal(n, seed);
    }

    /// <summary>The unnormalized Sylvester Hadamard matrix (entries ±1) for n a power of two.</summary>
    public static Tensor Sylvester(long n)
    {
        Tensor h = torch.ones(1, 1);
        while (h.shape[0] < n) h = torch.cat(new[] { torch.cat(new[] { h, h }, 1), torch.cat(new[] { h, -h }, 1) }, 0);
        return h;
    }

    public static Tensor RandomOrthogonal(long n, int seed)
    {
        var g = new Generator((ulong)seed + 1);
        var (q, r) = torch.linalg.qr(torch.randn(new[] { n, n }, generator: g));
        return q * torch.sign(torch.diagonal(r)).unsqueeze(0);
    }
}
