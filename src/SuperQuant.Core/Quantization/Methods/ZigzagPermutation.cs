using TorchSharp;
using static TorchSharp.torch;

// host-only: callers move the matrix to the model's device.
namespace SuperQuant.Core.Quantization.Methods;

/// <summary>
/// DuQuant's zigzag permutation (section 3.2, "channel permutation"): channels sorted by their largest |x|, descending,
/// are dealt to the blocks back and forth (block 0, 1, ..., B-1, B-1, ..., 0, 0, 1, ...) so every block receives a
/// similar share of large and small channels and the block means' variance falls. Returned as a permutation matrix P
/// (x P moves channel <see cref="Order"/>[i] to column i).
/// </summary>
public static class ZigzagPermutation
{
    /// <summary>The channel that lands in each column, in order.</summary>
    public static long[] Order(float[] channelMax, int block)
    {
        long n = channelMax.Length;
        long blocks = (n + block - 1) / block;
        long[] sorted = Enumerable.Range(0, (int)n).OrderByDescending(i => channelMax[i]).ThenBy(i => i).Select(i => (long)i).ToArray();
        var buckets = Enumerable.Range(0, (int)blocks).Select(_ => new List<long>()).ToList();
        int b = 0, dir = 1;
        foreach (long c in sorted)
        {
            while (buckets[b].Count >= Math.Min(block, n - (long)b * block)) Advance();
            buckets[b].Add(c);
            Advance();
        }
        return buckets.SelectMany(x => x).ToArray();

        void Advance()
        {
            b += dir;
            if (b < 0 || b >= blocks) { dir = -dir; b += dir; }
        }
    }

    public static Tensor Matrix(Tensor channelMax, int block)
    {
        long[] order = Order(channelMax.to(ScalarType.Float32).cpu().data<float>().ToArray(), block);
        Tensor p = torch.zeros(order.Length, order.Length);
        for (int i = 0; i < order.Length; i++) p[order[i], i] = torch.tensor(1f);
        return p;
    }
}
