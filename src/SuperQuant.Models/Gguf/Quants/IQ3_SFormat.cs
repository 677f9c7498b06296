using static SuperQuant.Models.Gguf.KQuantMath;

namespace SuperQuant.Models.Gguf;

/// <summary>
/// <code>block_iq3_s { ggml_half d; uint8_t qs[64]; uint8_t qh[8]; uint8_t signs[32]; uint8_t scales[4]; }  // 110 bytes, 3.4375 bpw</code>
/// One 9-bit grid index (512-point lattice; low 8 bits in qs, the 9th in qh) per 4 weights, one explicit sign bit per
/// weight, a 4-bit scale s per 32-block (two per byte): weight = d (1 + 2s) * grid * sign, grid values 2l + 1.
/// </summary>
public sealed class IQ3_SFormat : GgmlFormat
{
    public const int QK = 256;
    public override GgmlType Type => GgmlType.IQ3_S;
    public override int BlockSize => QK;
    public override int BlockBytes => 2 + QK / 4 + QK / 32 + QK / 8 + QK / 64;
    public override bool UsesImportance => true;
    const int Qs = 2, Qh = 2 + QK / 4, SignsAt = Qh + QK / 32, ScalesAt = SignsAt + QK / 8;

    internal override IQLattice? Lattice => IQLattice.IQ3_S;
    internal override float[] LatticeValues { get; } = { 1, 3, 5, 7, 9, 11, 13, 15 };
    internal override int LatticeMaxLevel => 7;
    internal override void ReadOctetScales(ReadOnlySpan<byte> b, Span<float> scale)
    {
        float d = ReadHalf(b);
        for (int ib = 0; ib < QK / 32; ++ib)
        {
            int sc = b[ScalesAt + ib / 2];
            scale.Slice(4 * ib, 4).Fill(d * (1 + 2 * (ib % 2 == 0 ? sc & 0xf : sc >> 4)));
        }
    }
    internal override void WriteOctet(Span<byte> b, int octet, ReadOnlySpan<int> gridIndices, int signs)
    {
        // Octet o holds grid points 2o and 2o + 1; their 9th bits are bits (2o) % 8 and (2o + 1) % 8 of qh[o / 4].
        for (int k = 0; k < 2; ++k)
        {
            int point = 2 * octet + k;
            b[Qs + point] = (byte)(gridIndices[k] & 255);
            byte mask = (byte)(1 << (point % 8));
            b[Qh + point / 8] = (byte)((b[Qh + point / 8] & ~mask) | ((gridIndices[k] >> 8) << (point % 8)));
        }
        b[SignsAt + octet] = (byte)signs;
    }

    public override void QuantizeRow(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> importance)
    {
        var lattice = IQLattice.IQ3_S;
        Span<float> scales = stackalloc float[QK / 32];
        Span<float> weight = stackalloc float[32], waux = stackalloc float[32], xval = stackalloc float[32];
        Span<sbyte> L = stackalloc sbyte[32];
        Span<byte> blockSigns = stackalloc byte[4];
        for (int ibl = 0; ibl < x.Length / QK; ++ibl)
        {
            var blk = y.Slice(ibl * BlockBytes, BlockBytes);
            blk.Clear();
            float maxScale = 0;
            var xbl = x.Slice(QK * ibl, QK);
            float sumx2 = 0;
            for (int i = 0; i < QK; ++i) sumx2 += xbl[i] * xbl[i];
            float sigma2 = 2 * sumx2 / QK;
            // As in ggml, the index and sign positions advance only past blocks that are not all zero (a zero block's
            // slots are taken by the next block's); the 9th index bits go by block number.
            int qsAt = Qs, signsAt = SignsAt;
            for (int ib = 0; ib < QK / 32; ++ib)
            {
                var xb = xbl.Slice(32 * ib, 32);
                IQLattice.Weights(xb, importance.IsEmpty ? ReadOnlySpan<float>.Empty : importance.Slice(QK * ibl + 32 * ib, 32), sigma2, weight, waux);
                IQLattice.SplitSigns(xb, xval, blockSigns);
                float max = xval[0];
                for (int i = 1; i < 32; ++i) max = Math.Max(max, xval[i]);
                L.Clear();
                if (max == 0) { scales[ib] = 0; continue; }
                float scale = lattice.SearchBlock(xval, weight, waux, L, kMaxQ: 8, steps: 9, stepSize: 0.2f, initialOnGrid: false, refitAll: true);
                if (scale < 0)
                {
                    scale = -scale;
                    for (int k = 0; k < 4; ++k) blockSigns[k] = (byte)~blockSigns[k];
                }
                for (int k = 0; k < 8; ++k)
                {
                    int index = lattice.IndexOf(L.Slice(4 * k, 4));
                    blk[qsAt + k] = (byte)(index & 255);
                    blk[Qh + (ib * 8 + k) / 8] |= (byte)((index >> 8) << ((ib * 8 + k) % 8));
                }
                qsAt += 8;
                for (int k = 0; k < 4; ++k) blk[signsAt + k] = blockSigns[k];
                signsAt += 4;
                scales[ib] = scale;
                maxScale = Math.Max(maxScale, scale);
            }
            if (maxScale == 0) continue;
            float d = maxScale / 31;
            WriteHalf(blk, d * 1.033f); // ggml's fudge factor
            float id = 1 / d;
            for (int ib = 0; ib < QK / 32; ib += 2)
            {
                int l1 = Math.Max(0, Math.Min(15, NearestInt(0.5f * (id * scales[ib] - 1))));
                int l2 = Math.Max(0, Math.Min(15, NearestInt(0.5f * (id * scales[ib + 1] - 1))));
                blk[ScalesAt + ib / 2] = (byte)(l1 | (l2 << 4));
            }
        }
    }

    public override void DequantizeRow(ReadOnlySpan<byte> y, Span<float> x)
    {
        var levels = IQLattice.PackedGrid(GgmlType.IQ3_S);
        for (int i = 0; i < x.Length / QK; i++)
        {
            var blk = y.Slice(i * BlockBytes, BlockBytes);
            float d = ReadHalf(blk);
            for (int ib = 0; ib < QK / 32; ++ib)
            {
                int sc = blk[ScalesAt + ib / 2];
                float db = d * (1 + 2 * (ib % 2 == 0 ? sc & 0xf : sc >> 4));
                byte qh = blk[Qh + ib];
                for (int l = 0; l < 4; ++l)
                {
                    int i1 = blk[Qs + 8 * ib + 2 * l] | ((qh << (8 - 2 * l)) & 256);
                    int i2 = blk[Qs + 8 * ib + 2 * l + 1] | ((qh << (7 - 2 * l)) & 256);
                    byte signs = blk[SignsAt + 4 * ib + l];
                    int o = i * QK + 32 * ib + 8 * l;
                    for (int j = 0; j < 4; ++j)
                    {
                        x[o + j] = db * (2 * ((levels[i1] >> (3 * j)) & 7) + 1) * ((signs & (1 << j)) != 0 ? -1f : 1f);
                        x[o + j + 4] = db * (2 * ((levels[i2] >> (3 * j)) & 7) + 1) * ((signs & (1 << (j + 4))) != 0 ? -1f : 1f);
                    }
                }
            }
        }
    }
}
