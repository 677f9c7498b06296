using static SuperQuant.Models.Gguf.KQuantMath;

namespace SuperQuant.Models.Gguf;

/// <summary>
/// <code>block_iq2_s { ggml_half d; uint8_t qs[64]; uint8_t qh[8]; uint8_t scales[8]; }  // 82 bytes per 256, 2.5625 bpw</code>
/// Per 8 weights a 10-bit index into the 1024-point lattice (low 8 bits in qs[0..31], the top 2 in qh, four per byte)
/// and 8 explicit sign bits (qs[32..63]); per 16 weights a 4-bit scale s (two per byte): weight = d (0.5 + s) / 4 *
/// grid * sign, grid values 8, 25, 43 for levels 0..2 (iq2s_grid). quantize_row_iq2_s_impl ported: blocks of 16,
/// weights sigma2 / 4 + x^2 without an imatrix, 19 candidate scales a tenth apart.
/// </summary>
public sealed class IQ2_SFormat : GgmlFormat
{
    public const int QK = 256;
    const float GroupMaxEps = 1e-8f;
    public override GgmlType Type => GgmlType.IQ2_S;
    public override int BlockSize => QK;
    public override int BlockBytes => 2 + QK / 4 + QK / 32 + QK / 32;
    public override bool UsesImportance => true;
    const int Qs = 2, SignsAt = Qs + QK / 8, Qh = 2 + QK / 4, ScalesAt = Qh + QK / 32;
    static readonly byte[] GridValues = { 8, 25, 43 };

    internal override IQLattice? Lattice => IQLattice.IQ2_S;
    internal override float[] LatticeValues { get; } = { 8, 25, 43 };
    internal override int LatticeMaxLevel => 2;
    internal override void ReadOctetScales(ReadOnlySpan<byte> b, Span<float> scale)
    {
        float d = ReadHalf(b);
        for (int ib32 = 0; ib32 < QK / 32; ++ib32)
        {
            scale.Slice(4 * ib32, 2).Fill(d * (0.5f + (b[ScalesAt + ib32] & 0xf)) * 0.25f);
            scale.Slice(4 * ib32 + 2, 2).Fill(d * (0.5f + (b[ScalesAt + ib32] >> 4)) * 0.25f);
        }
    }
    internal override void WriteOctet(Span<byte> b, int octet, ReadOnlySpan<int> gridIndices, int signs)
    {
        b[Qs + octet] = (byte)(gridIndices[0] & 255);
        int shift = 2 * (octet % 4);
        b[Qh + octet / 4] = (byte)((b[Qh + octet / 4] & ~(3 << shift)) | ((gridIndices[0] >> 8) << shift));
        b[SignsAt + octet] = (byte)signs;
    }

    public override void QuantizeRow(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> importance)
    {
        var lattice = IQLattice.IQ2_S;
        Span<float> scales = stackalloc float[QK / 16];
        Span<float> weight = stackalloc float[16], waux = stackalloc float[16], xval = stackalloc float[16];
        Span<sbyte> L = stackalloc sbyte[16];
        Span<byte> blockSigns = stackalloc byte[2];
        for (int ibl = 0; ibl < x.Length / QK; ++ibl)
        {
            var blk = y.Slice(ibl * BlockBytes, BlockBytes);
            blk.Clear();
            float maxScale = 0;
            var xbl = x.Slice(QK * ibl, QK);
            float sumx2 = 0;
            for (int i = 0; i < QK; ++i) sumx2 += xbl[i] * xbl[i];
            float sigma2 = 2 * sumx2 / QK;
            for (int ib = 0; ib < QK / 16; ++ib)
            {
                var xb = xbl.Slice(16 * ib, 16);
                IQLattice.Weights(xb, importance.IsEmpty ? ReadOnlySpan<float>.Empty : importance.Slice(QK * ibl + 16 * ib, 16), sigma2, weight,
                    waux, plainSigma2Share: 0.25f);
                IQLattice.SplitSigns(xb, xval, blockSigns);
                float max = xval[0];
                for (int i = 1; i < 16; ++i) max = Math.Max(max, xval[i]);
                L.Clear();
                if (max < GroupMaxEps) { scales[ib] = 0; continue; }
                float scale = lattice.SearchBlock(xval, weight, waux, L, kMaxQ: 3, steps: 9, stepSize: 0.1f, initialOnGrid: true, refitAll: false);
                if (scale < 0)
                {
                    scale = -scale;
                    for (int k = 0; k < 2; ++k) blockSigns[k] = (byte)~blockSigns[k];
                }
                for (int k = 0; k < 2; ++k)
                {
                    int index = lattice.IndexOf(L.Slice(8 * k, 8));
                    int i8 = 2 * ib + k;
                    blk[Qs + i8] = (byte)(index & 255);
                    blk[Qh + i8 / 4] |= (byte)((index >> 8) << (2 * (i8 % 4)));
                    blk[SignsAt + i8] = blockSigns[k];
                }
                scales[ib] = scale;
                maxScale = Math.Max(maxScale, scale);
            }
            if (maxScale == 0) continue;
            float d = maxScale / 31;
            WriteHalf(blk, d * 0.9875f); // ggml's fudge factor
            float id = 1 / d;
            for (int ib = 0; ib < QK / 16; ++ib)
            {
                int l = Math.Max(0, Math.Min(15, NearestInt(0.5f * (id * scales[ib] - 1))));
                if (ib % 2 == 0) blk[ScalesAt + ib / 2] = (byte)l;
                else blk[ScalesAt + ib / 2] |= (byte)(l << 4);
            }
        }
    }

    public override void DequantizeRow(ReadOnlySpan<byte> y, Span<float> x)
    {
        var lattice = IQLattice.IQ2_S;
        for (int i = 0; i < x.Length / QK; i++)
        {
            var blk = y.Slice(i * BlockBytes, BlockBytes);
            float d = ReadHalf(blk);
            for (int ib32 = 0; ib32 < QK / 32; ++ib32)
            {
                float db0 = d * (0.5f + (blk[ScalesAt + ib32] & 0xf)) * 0.25f;
                float db1 = d * (0.5f + (blk[ScalesAt + ib32] >> 4)) * 0.25f;
                for (int l = 0; l < 4; ++l)
                {
                    float dl = l < 2 ? db0 : db1;
                    int index = blk[Qs + 4 * ib32 + l] | ((blk[Qh + ib32] << (8 - 2 * l)) & 0x300);
                    var levels = lattice.Levels[index];
                    byte signs = blk[SignsAt + 4 * ib32 + l];
                    int o = i * QK + 32 * ib32 + 8 * l;
                    for (int j = 0; j < 8; ++j) x[o + j] = dl * GridValues[levels[j]] * ((signs & (1 << j)) != 0 ? -1f : 1f);
                }
            }
        }
    }
}
