using static SuperQuant.Models.Gguf.KQuantMath;

namespace SuperQuant.Models.Gguf;

/// <summary>
/// <code>block_iq3_xxs { ggml_half d; uint8_t qs[96]; }  // 98 bytes per 256, 3.0625 bits/weight</code>
/// qs[0..63]: one grid index (256-point lattice) per 4 weights; qs[64..95]: per 32-block a uint32 of four 7-bit sign
/// groups (the 8th sign is their parity, ksigns_iq2xs) and a 4-bit scale s in the top bits: weight = d (0.5 + s) / 2
/// * grid * sign, grid values 4, 12, ..., 52, 62 (iq3xxs_grid, derived here from the levels: 8l + 4, 62 for l = 7).
/// An odd number of negative weights in a group of 8 flips the one of least weighted magnitude.
/// </summary>
public sealed class IQ3_XXSFormat : GgmlFormat
{
    public const int QK = 256;
    const float GroupMaxEps = 1e-8f;
    public override GgmlType Type => GgmlType.IQ3_XXS;
    public override int BlockSize => QK;
    public override int BlockBytes => 2 + 3 * QK / 8;
    public override bool UsesImportance => true;

    internal override IQLattice? Lattice => IQLattice.IQ3_XXS;
    internal override float[] LatticeValues { get; } = { 4, 12, 20, 28, 36, 44, 52, 62 };
    internal override int LatticeMaxLevel => 7;
    internal override bool EvenSignParity => true;
    internal override void ReadOctetScales(ReadOnlySpan<byte> b, Span<float> scale)
    {
        float d = ReadHalf(b);
        for (int ib = 0; ib < QK / 32; ++ib)
        {
            uint aux = BitConverter.ToUInt32(b.Slice(2 + QK / 4 + 4 * ib, 4));
            scale.Slice(4 * ib, 4).Fill(d * (0.5f + (aux >> 28)) * 0.5f);
        }
    }
    internal override void WriteOctet(Span<byte> b, int octet, ReadOnlySpan<int> gridIndices, int signs)
    {
        int ib = octet / 4, l = octet % 4;
        b[2 + 8 * ib + 2 * l] = (byte)gridIndices[0];
        b[2 + 8 * ib + 2 * l + 1] = (byte)gridIndices[1];
        var at = b.Slice(2 + QK / 4 + 4 * ib, 4);
        uint aux = BitConverter.ToUInt32(at);
        aux = (aux & ~(127u << (7 * l))) | ((uint)(signs & 127) << (7 * l));
        BitConverter.TryWriteBytes(at, aux);
    }

    static readonly byte[][] DequantGrid = IQLattice.PackedGrid(GgmlType.IQ3_XXS)
        .Select(k => Enumerable.Range(0, 4).Select(i => { int l = (k >> (3 * i)) & 7; return (byte)(l == 7 ? 62 : 8 * l + 4); }).ToArray()).ToArray();

    public override void QuantizeRow(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> importance)
    {
        var lattice = IQLattice.IQ3_XXS;
        Span<float> scales = stackalloc float[QK / 32];
        Span<float> weight = stackalloc float[32], waux = stackalloc float[32], xval = stackalloc float[32];
        Span<sbyte> L = stackalloc sbyte[32];
        Span<byte> blockSigns = stackalloc byte[4];
        Span<uint> scalesAndSigns = stackalloc uint[QK / 32];
        for (int ibl = 0; ibl < x.Length / QK; ++ibl)
        {
            var blk = y.Slice(ibl * BlockBytes, BlockBytes);
            blk.Clear();
            scalesAndSigns.Clear();
            var q3 = blk.Slice(2, QK / 4);
            float maxScale = 0;
            var xbl = x.Slice(QK * ibl, QK);
            float sumx2 = 0;
            for (int i = 0; i < QK; ++i) sumx2 += xbl[i] * xbl[i];
            float sigma2 = 2 * sumx2 / QK;
            for (int ib = 0; ib < QK / 32; ++ib)
            {
                var xb = xbl.Slice(32 * ib, 32);
                IQLattice.Weights(xb, importance.IsEmpty ? ReadOnlySpan<float>.Empty : importance.Slice(QK * ibl + 32 * ib, 32), sigma2, weight, waux);
                for (int k = 0; k < 4; ++k)
                {
                    int nflip = 0;
                    int s = 0;
                    for (int i = 0; i < 8; ++i)
                    {
                        if (xb[8 * k + i] >= 0) xval[8 * k + i] = xb[8 * k + i];
                        else { xval[8 * k + i] = -xb[8 * k + i]; ++nflip; s |= 1 << i; }
                    }
                    if (nflip % 2 != 0)
                    {
                        int imin = 0;
                        float min = weight[8 * k + imin] * xb[8 * k + imin] * xb[8 * k + imin];
                        for (int i = 1; i < 8; ++i)
                        {
                            float ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                            if (ax < min) { min = ax; imin = i; }
                        }
                        xval[8 * k + imin] = -xval[8 * k + imin];
                        s ^= 1 << imin;
                    }
                    blockSigns[k] = (byte)(s & 127);
                }
                float max = xval[0];
                for (int i = 1; i < 32; ++i) max = Math.Max(max, xval[i]);
                L.Clear();
                if (max < GroupMaxEps) { scales[ib] = 0; continue; }
                float scale = lattice.SearchBlock(xval, weight, waux, L, kMaxQ: 8, steps: 15, stepSize: 0.2f, initialOnGrid: true, refitAll: false);
                if (scale < 0)
                {
                    scale = -scale;
                    for (int k = 0; k < 4; ++k) blockSigns[k] = (byte)(~blockSigns[k] & 127);
                }
                for (int k = 0; k < 8; ++k) q3[8 * ib + k] = (byte)lattice.IndexOf(L.Slice(4 * k, 4));
                scalesAndSigns[ib] = (uint)(blockSigns[0] | (blockSigns[1] << 7) | (blockSigns[2] << 14) | (blockSigns[3] << 21));
                scales[ib] = scale;
                maxScale = Math.Max(maxScale, scale);
            }
            if (maxScale == 0)
            {
                blk.Clear();
                continue;
            }
            float d = maxScale / 31;
            WriteHalf(blk, d * 1.0125f); // ggml's fudge factor
            float id = 1 / d;
            for (int ib = 0; ib < QK / 32; ++ib)
            {
                int l = NearestInt(0.5f * (id * scales[ib] - 1));
                l = Math.Max(0, Math.Min(15, l));
                scalesAndSigns[ib] |= (uint)l << 28;
                BitConverter.TryWriteBytes(blk.Slice(2 + QK / 4 + 4 * ib, 4), scalesAndSigns[ib]);
            }
        }
    }

    public override void DequantizeRow(ReadOnlySpan<byte> y, Span<float> x)
    {
        for (int i = 0; i < x.Length / QK; i++)
        {
            var blk = y.Slice(i * BlockBytes, BlockBytes);
            float d = ReadHalf(blk);
            var qs = blk.Slice(2, QK / 4);
            for (int ib = 0; ib < QK / 32; ++ib)
            {
                uint aux = BitConverter.ToUInt32(blk.Slice(2 + QK / 4 + 4 * ib, 4));
                float db = d * (0.5f + (aux >> 28)) * 0.5f;
                for (int l = 0; l < 4; ++l)
                {
                    byte signs = IQLattice.Signs((int)((aux >> (7 * l)) & 127));
                    var g1 = DequantGrid[qs[8 * ib + 2 * l]];
                    var g2 = DequantGrid[qs[8 * ib + 2 * l + 1]];
                    int o = i * QK + 32 * ib + 8 * l;
                    for (int j = 0; j < 4; ++j)
                    {
                        x[o + j] = db * g1[j] * ((signs & (1 << j)) != 0 ? -1f : 1f);
                        x[o + j + 4] = db * g2[j] * ((signs & (1 << (j + 4))) != 0 ? -1f : 1f);
                    }
                }
            }
        }
    }
}
