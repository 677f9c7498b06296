using static SuperQuant.Models.Gguf.KQuantMath;

namespace SuperQuant.Models.Gguf;

/// <summary>Shared by the k-quants: super-blocks of <see cref="QK_K"/> weights.</summary>
public abstract class KQuantFormat : GgmlFormat
{
    public const int QK_K = 256;
    public override int BlockSize => QK_K;
    public override bool UsesImportance => true;
}

/// <summary>
/// <code>block_q2_K { uint8_t scales[16]; uint8_t qs[64]; ggml_half d; ggml_half dmin; }  // 84 bytes, 2.625 bits/weight</code>
/// 16 sub-blocks of 16: x = d * (scales[j] &amp; 0xF) * q - dmin * (scales[j] &gt;&gt; 4), q in 0..3; four 2-bit codes
/// per byte, element l + 32k of each 128 in bits 2k of qs[l].
/// </summary>
public sealed partial class Q2_KFormat : KQuantFormat
{
    public override GgmlType Type => GgmlType.Q2_K;
    public override int BlockBytes => 16 + 64 + 4;

    public override void QuantizeRow(ReadOnlySpan<float> row, Span<byte> yRow, ReadOnlySpan<float> importance)
    {
        Span<byte> L = stackalloc byte[QK_K], Laux = stackalloc byte[16], Ls = stackalloc byte[16], Lm = stackalloc byte[16];
        Span<float> weights = stackalloc float[16], mins = stackalloc float[16], scales = stackalloc float[16], sw = stackalloc float[16];
        for (int i = 0; i < row.Length / QK_K; i++)
        {
            var x = row.Slice(i * QK_K, QK_K);
            var y = yRow.Slice(i * BlockBytes, BlockBytes);
            Span<byte> sc = y[..16], qs = y.Slice(16, 64);
            float d, dmin;
            if (importance.IsEmpty)
            {
                // quantize_row_q2_K_ref
                float maxScale = 0, maxMin = 0;
                for (int j = 0; j < 16; ++j)
                {
                    for (int l = 0; l < 16; ++l) weights[l] = MathF.Abs(x[16 * j + l]);
                    scales[j] = MakeQkx2Quants(16, 3, x.Slice(16 * j, 16), weights, L.Slice(16 * j, 16), out mins[j], Laux, -0.5f, 0.1f, 15, true);
                    if (scales[j] > maxScale) maxScale = scales[j];
                    if (mins[j] > maxMin) maxMin = mins[j];
                }
                const float q4scale = 15f;
                if (maxScale > 0)
                {
                    float iscale = q4scale / maxScale;
                    for (int j = 0; j < 16; ++j) sc[j] = (byte)NearestInt(iscale * scales[j]);
                    d = maxScale / q4scale;
                }
                else
                {
                    sc.Clear();
                    d = 0f;
                }
                if (maxMin > 0)
                {
                    float iscale = q4scale / maxMin;
                    for (int j = 0; j < 16; ++j) sc[j] |= (byte)(NearestInt(iscale * mins[j]) << 4);
                    dmin = maxMin / q4scale;
                }
                else dmin = 0f;
            }
            else
            {
                // quantize_row_q2_K_impl
                sw.Clear();
                float sumx2 = 0;
                for (int j = 0; j < QK_K; ++j) sumx2 += x[j] * x[j];
                float sigma2 = sumx2 / QK_K;
                for (int j = 0; j < 16; ++j)
                {
                    var qw = importance.Slice(QK_K * i + 16 * j, 16);
                    for (int l = 0; l < 16; ++l) weights[l] = qw[l] * MathF.Sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
                    for (int l = 0; l < 16; ++l) sw[j] += weights[l];
                    scales[j] = MakeQkx3Quants(16, 3, x.Slice(16 * j, 16), weights, L.Slice(16 * j, 16), out mins[j], Laux, -0.9f, 0.05f, 36, false);
                }
                d = MakeQpQuants(16, 15, scales, Ls, sw);
                dmin = MakeQpQuants(16, 15, mins, Lm, sw);
                for (int j = 0; j < 16; ++j) sc[j] = (byte)(Ls[j] | (Lm[j] << 4));
            }
            WriteHalf(y[80..], d);
            WriteHalf(y[82..], dmin);
            float dh = ReadHalf(y[80..]), mh = ReadHalf(y[82..]);
            for (int j = 0; j < 16; ++j)
            {
                float dd = dh * (sc[j] & 0xF);
                if (dd == 0) continue;
                float dm = mh * (sc[j] >> 4);
                for (int ii = 0; ii < 16; ++ii)
                {
                    int l = NearestInt((x[16 * j + ii] + dm) / dd);
                    L[16 * j + ii] = (byte)Math.Max(0, Math.Min(3, l));
                }
            }
            for (int j = 0; j < QK_K; j += 128)
                for (int l = 0; l < 32; ++l)
                    qs[j / 4 + l] = (byte)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
        }
    }

    public override void DequantizeRow(ReadOnlySpan<byte> yRow, Span<float> xRow)
    {
        for (int i = 0; i < xRow.Length / QK_K; i++)
        {
            var y = yRow.Slice(i * BlockBytes, BlockBytes);
            var o = xRow.Slice(i * QK_K, QK_K);
            float d = ReadHalf(y[80..]), min = ReadHalf(y[82..]);
            int qOff = 16, k = 0, @is = 0;
            for (int n = 0; n < QK_K; n += 128)
            {
                int shift = 0;
                for (int j = 0; j < 4; ++j)
                {
                    byte sc = y[@is++];
                    float dl = d * (sc & 0xF), ml = min * (sc >> 4);
                    for (int l = 0; l < 16; ++l) o[k++] = dl * ((sbyte)((y[qOff + l] >> shift) & 3)) - ml;
                    sc = y[@is++];
                    dl = d * (sc & 0xF); ml = min * (sc >> 4);
                    for (int l = 0; l < 16; ++l) o[k++] = dl * ((sbyte)((y[qOff + l + 16] >> shift) & 3)) - ml;
                    shift += 2;
                }
                qOff += 32;
            }
        }
    }
}

/// <summary>
/// <code>block_q3_K { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; ggml_half d; }  // 110 bytes, 3.4375 bits/weight</code>
/// 16 sub-blocks of 16 with signed 6-bit scales (4 low bits in scales[0..7] nibbles, 2 high bits in scales[8..11]);
/// x = d * (scale - 32) * (q - 4), q in 0..7 with its third bit in hmask.
/// </summary>
public sealed partial class Q3_KFormat : KQuantFormat
{
    public override GgmlType Type => GgmlType.Q3_K;
    public override int BlockBytes => 32 + 64 + 12 + 2;

    public override void QuantizeRow(ReadOnlySpan<float> row, Span<byte> yRow, ReadOnlySpan<float> importance)
    {
        Span<sbyte> L = stackalloc sbyte[QK_K], Ls = stackalloc sbyte[16];
        Span<float> scales = stackalloc float[16], weight = stackalloc float[16], sw = stackalloc float[16];
        for (int i = 0; i < row.Length / QK_K; i++)
        {
            var x = row.Slice(i * QK_K, QK_K);
            var y = yRow.Slice(i * BlockBytes, BlockBytes);
            Span<byte> hmask = y[..32], qs = y.Slice(32, 64), sc = y.Slice(96, 12);
            sc.Clear();
            if (importance.IsEmpty)
            {
                // quantize_row_q3_K_ref
                float maxScale = 0, amax = 0;
                for (int j = 0; j < 16; ++j)
                {
                    scales[j] = MakeQ3Quants(16, 4, x.Slice(16 * j, 16), L.Slice(16 * j, 16), true);
                    float scale = MathF.Abs(scales[j]);
                    if (scale > amax) { amax = scale; maxScale = scales[j]; }
                }
                if (maxScale != 0)
                {
                    float iscale = -32f / maxScale;
                    for (int j = 0; j < 16; ++j)
                    {
                        sbyte l = (sbyte)NearestInt(iscale * scales[j]);
                        l = (sbyte)(Math.Max(-32, Math.Min(31, (int)l)) + 32);
                        PackScale(sc, j, l);
                    }
                    WriteHalf(y[108..], 1 / iscale);
                }
                else WriteHalf(y[108..], 0f);
            }
            else
            {
                // quantize_row_q3_K_impl
                float sumx2 = 0;
                for (int j = 0; j < QK_K; ++j) sumx2 += x[j] * x[j];
                float sigma2 = 2 * sumx2 / QK_K;
                for (int j = 0; j < 16; ++j)
                {
                    var qw = importance.Slice(QK_K * i + 16 * j, 16);
                    for (int l = 0; l < 16; ++l) weight[l] = qw[l] * MathF.Sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
                    float sumw = 0;
                    for (int l = 0; l < 16; ++l) sumw += weight[l];
                    sw[j] = sumw;
                    scales[j] = MakeQxQuants(16, 4, x.Slice(16 * j, 16), L.Slice(16 * j, 16), 1, weight);
                }
                float dBlock = MakeQxQuants(16, 32, scales, Ls, 1, sw);
                for (int j = 0; j < 16; ++j) PackScale(sc, j, Ls[j]);
                WriteHalf(y[108..], dBlock);
            }
            float dAll = ReadHalf(y[108..]);
            for (int j = 0; j < 16; ++j)
            {
                float d = dAll * UnpackScale(sc, j);
                if (d == 0) continue;
                for (int ii = 0; ii < 16; ++ii)
                {
                    int l = NearestInt(x[16 * j + ii] / d);
                    L[16 * j + ii] = (sbyte)(Math.Max(-4, Math.Min(3, l)) + 4);
                }
            }
            hmask.Clear();
            int m = 0;
            byte hm = 1;
            for (int j = 0; j < QK_K; ++j)
            {
                if (L[j] > 3) { hmask[m] |= hm; L[j] -= 4; }
                if (++m == QK_K / 8) { m = 0; hm <<= 1; }
            }
            for (int j = 0; j < QK_K; j += 128)
                for (int l = 0; l < 32; ++l)
                    qs[j / 4 + l] = (byte)((byte)L[j + l] | ((byte)L[j + l + 32] << 2) | ((byte)L[j + l + 64] << 4) | ((byte)L[j + l + 96] << 6));
        }
    }

    static void PackScale(Span<byte> sc, int j, int l)
    {
        if (j < 8) sc[j] = (byte)(l & 0xF);
        else sc[j - 8] |= (byte)((l & 0xF) << 4);
        l >>= 4;
        sc[j % 4 + 8] |= (byte)(l << (2 * (j / 4)));
    }

    /// <summary>Sub-block j's signed scale (-32..31).</summary>
    static int UnpackScale(ReadOnlySpan<byte> sc, int j)
    {
        int s = j < 8 ? sc[j] & 0xF : sc[j - 8] >> 4;
        return (sbyte)((s | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
    }

    public override void DequantizeRow(ReadOnlySpan<byte> yRow, Span<float> xRow)
    {
        for (int i = 0; i < xRow.Length / QK_K; i++)
        {
            var y = yRow.Slice(i * BlockBytes, BlockBytes);
            var o = xRow.Slice(i * QK_K, QK_K);
            ReadOnlySpan<byte> hm = y[..32], sc = y.Slice(96, 12);
            float dAll = ReadHalf(y[108..]);
            int qOff = 32, k = 0, @is = 0;
            byte m = 1;
            for (int n = 0; n < QK_K; n += 128)
            {
                int shift = 0;
                for (int j = 0; j < 4; ++j)
                {
                    float dl = dAll * UnpackScale(sc, @is++);
                    for (int l = 0; l < 16; ++l) o[k++] = dl * ((sbyte)((y[qOff + l] >> shift) & 3) - ((hm[l] & m) != 0 ? 0 : 4));
                    dl = dAll * UnpackScale(sc, @is++);
                    for (int l = 0; l < 16; ++l) o[k++] = dl * ((sbyte)((y[qOff + l + 16] >> shift) & 3) - ((hm[l + 16] & m) != 0 ? 0 : 4));
                    shift += 2;
                    m <<= 1;
                }
                qOff += 32;
            }
        }
    }
}

/// <summary>
/// <code>block_q4_K { ggml_half d; ggml_half dmin; uint8_t scales[12]; uint8_t qs[128]; }  // 144 bytes, 4.5 bits/weight</code>
/// 8 sub-blocks of 32 with 6-bit scales and mins (<see cref="KQuantMath.GetScaleMinK4"/>): x = d * sc * q - dmin * m,
/// q in 0..15; each 64 weights share 32 bytes, the first 32 in the low nibbles.
/// </summary>
public sealed partial class Q4_KFormat : KQuantFormat
{
    public override GgmlType Type => GgmlType.Q4_K;
    public override int BlockBytes => 4 + 12 + 128;

    public override void QuantizeRow(ReadOnlySpan<float> row, Span<byte> yRow, ReadOnlySpan<float> importance) =>
        AsymmetricKQuant.Quantize(row, yRow, importance, nmax: 15, BlockBytes, refRmin: -1f, refNstep: 20, (L, y) =>
        {
            Span<byte> q = y[16..];
            for (int j = 0, o = 0; j < QK_K; j += 64, o += 32)
                for (int l = 0; l < 32; ++l) q[o + l] = (byte)(L[j + l] | (L[j + l + 32] << 4));
        });

    public override void DequantizeRow(ReadOnlySpan<byte> yRow, Span<float> xRow)
    {
        for (int i = 0; i < xRow.Length / QK_K; i++)
        {
            var y = yRow.Slice(i * BlockBytes, BlockBytes);
            var o = xRow.Slice(i * QK_K, QK_K);
            float d = ReadHalf(y), min = ReadHalf(y[2..]);
            ReadOnlySpan<byte> scales = y.Slice(4, 12);
            int qOff = 16, k = 0, @is = 0;
            for (int j = 0; j < QK_K; j += 64)
            {
                GetScaleMinK4(@is + 0, scales, out byte sc, out byte m);
                float d1 = d * sc, m1 = min * m;
                GetScaleMinK4(@is + 1, scales, out sc, out m);
                float d2 = d * sc, m2 = min * m;
                for (int l = 0; l < 32; ++l) o[k++] = d1 * (y[qOff + l] & 0xF) - m1;
                for (int l = 0; l < 32; ++l) o[k++] = d2 * (y[qOff + l] >> 4) - m2;
                qOff += 32; @is += 2;
            }
        }
    }
}

/// <summary>
/// <code>block_q5_K { ggml_half d; ggml_half dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; }  // 176 bytes, 5.5 bits/weight</code>
/// As Q4_K with q in 0..31: the fifth bit of element l + 64n (+32) is bit 2n (2n+1) of qh[l].
/// </summary>
public sealed partial class Q5_KFormat : KQuantFormat
{
    public override GgmlType Type => GgmlType.Q5_K;
    public override int BlockBytes => 4 + 12 + 32 + 128;

    public override void QuantizeRow(ReadOnlySpan<float> row, Span<byte> yRow, ReadOnlySpan<float> importance) =>
        AsymmetricKQuant.Quantize(row, yRow, importance, nmax: 31, BlockBytes, refRmin: -0.5f, refNstep: 15, (L, y) =>
        {
            Span<byte> qh = y.Slice(16, 32), ql = y[48..];
            qh.Clear();
            byte m1 = 1, m2 = 2;
            int qOff = 0;
            for (int n = 0; n < QK_K; n += 64)
            {
                for (int j = 0; j < 32; ++j)
                {
                    int l1 = L[n + j];
                    if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
                    int l2 = L[n + j + 32];
                    if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
                    ql[qOff + j] = (byte)(l1 | (l2 << 4));
                }
                m1 <<= 2; m2 <<= 2;
                qOff += 32;
            }
        });

    public override void DequantizeRow(ReadOnlySpan<byte> yRow, Span<float> xRow)
    {
        for (int i = 0; i < xRow.Length / QK_K; i++)
        {
            var y = yRow.Slice(i * BlockBytes, BlockBytes);
            var o = xRow.Slice(i * QK_K, QK_K);
            float d = ReadHalf(y), min = ReadHalf(y[2..]);
            ReadOnlySpan<byte> scales = y.Slice(4, 12), qh = y.Slice(16, 32);
            int qlOff = 48, k = 0, @is = 0;
            byte u1 = 1, u2 = 2;
            for (int j = 0; j < QK_K; j += 64)
            {
                GetScaleMinK4(@is + 0, scales, out byte sc, out byte m);
                float d1 = d * sc, m1 = min * m;
                GetScaleMinK4(@is + 1, scales, out sc, out m);
                float d2 = d * sc, m2 = min * m;
                for (int l = 0; l < 32; ++l) o[k++] = d1 * ((y[qlOff + l] & 0xF) + ((qh[l] & u1) != 0 ? 16 : 0)) - m1;
                for (int l = 0; l < 32; ++l) o[k++] = d2 * ((y[qlOff + l] >> 4) + ((qh[l] & u2) != 0 ? 16 : 0)) - m2;
                qlOff += 32; @is += 2;
                u1 <<= 2; u2 <<= 2;
            }
        }
    }
}

/// <summary>The scale/min search Q4_K and Q5_K share (quantize_row_q4_K_ref/_impl, quantize_row_q5_K_ref/_impl);
/// only the level count, the reference search grid and the code packing differ.</summary>
internal static partial class AsymmetricKQuant
{
    const int QK_K = KQuantFormat.QK_K;

    public delegate void PackCodes(ReadOnlySpan<byte> L, Span<byte> block);

    public static void Quantize(ReadOnlySpan<float> row, Span<byte> yRow, ReadOnlySpan<float> importance, int nmax, int blockBytes,
        float refRmin, int refNstep, PackCodes pack)
    {
        Span<byte> L = stackalloc byte[QK_K], Laux = stackalloc byte[32], Ls = stackalloc byte[8], Lm = stackalloc byte[8];
        Span<float> weights = stackalloc float[32], mins = stackalloc float[8], scales = stackalloc float[8], sw = stackalloc float[8];
        for (int i = 0; i < row.Length / QK_K; i++)
        {
            var x = row.Slice(i * QK_K, QK_K);
            var y = yRow.Slice(i * blockBytes, blockBytes);
            float d, dmin;
            if (importance.IsEmpty)
            {
                float maxScale = 0, maxMin = 0;
                for (int j = 0; j < 8; ++j)
                {
                    float sumX2 = 0;
                    for (int l = 0; l < 32; ++l) sumX2 += x[32 * j + l] * x[32 * j + l];
                    float avX = MathF.Sqrt(sumX2 / 32);
                    for (int l = 0; l < 32; ++l) weights[l] = avX + MathF.Abs(x[32 * j + l]);
                    scales[j] = MakeQkx2Quants(32, nmax, x.Slice(32 * j, 32), weights, L.Slice(32 * j, 32), out mins[j], Laux, refRmin, 0.1f, refNstep, false);
                    if (scales[j] > maxScale) maxScale = scales[j];
                    if (mins[j] > maxMin) maxMin = mins[j];
                }
                float invScale = maxScale > 0 ? 63f / maxScale : 0f;
                float invMin = maxMin > 0 ? 63f / maxMin : 0f;
                for (int j = 0; j < 8; ++j)
                {
                    Ls[j] = Math.Min((byte)63, (byte)NearestInt(invScale * scales[j]));
                    Lm[j] = Math.Min((byte)63, (byte)NearestInt(invMin * mins[j]));
                }
                d = maxScale / 63f;
                dmin = maxMin / 63f;
            }
            else
            {
                float sumX2 = 0;
                for (int l = 0; l < QK_K; ++l) sumX2 += x[l] * x[l];
                float sigma2 = 2 * sumX2 / QK_K;
                for (int j = 0; j < 8; ++j)
                {
                    var qw = importance.Slice(QK_K * i + 32 * j, 32);
                    for (int l = 0; l < 32; ++l) weights[l] = qw[l] * MathF.Sqrt(sigma2 + x[32 * j + l] * x[32 * j + l]);
                    float sumw = 0;
                    for (int l = 0; l < 32; ++l) sumw += weights[l];
                    sw[j] = sumw;
                    scales[j] = MakeQkx3Quants(32, nmax, x.Slice(32 * j, 32), weights, L.Slice(32 * j, 32), out mins[j], Laux, -0.9f, 0.05f, 36, false);
                }
                d = MakeQpQuants(8, 63, scales, Ls, sw);
                dmin = MakeQpQuants(8, 63, mins, Lm, sw);
            }
            PackScaleMinK4(y.Slice(4, 12), Ls, Lm);
            WriteHalf(y, d);
            WriteHalf(y[2..], dmin);
            float dh = ReadHalf(y), mh = ReadHalf(y[2..]);
            for (int j = 0; j < 8; ++j)
            {
                GetScaleMinK4(j, y.Slice(4, 12), out byte sc, out byte m);
                float dd = dh * sc;
                if (dd == 0) continue;
                float dm = mh * m;
                for (int ii = 0; ii < 32; ++ii)
                {
                    int l = NearestInt((x[32 * j + ii] + dm) / dd);
                    L[32 * j + ii] = (byte)Math.Max(0, Math.Min(nmax, l));
                }
            }
            pack(L, y);
        }
    }
}

/// <summary>
/// <code>block_q6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; ggml_half d; }  // 210 bytes, 6.5625 bits/weight</code>
/// 16 sub-blocks of 16 with signed 8-bit scales: x = d * scale * (q - 32), q in 0..63 (4 low bits in ql, 2 high in qh).
/// </summary>
public sealed partial class Q6_KFormat : KQuantFormat
{
    public override GgmlType Type => GgmlType.Q6_K;
    public override int BlockBytes => 128 + 64 + 16 + 2;

    public override void QuantizeRow(ReadOnlySpan<float> row, Span<byte> yRow, ReadOnlySpan<float> importance)
    {
        Span<sbyte> L = stackalloc sbyte[QK_K];
        Span<float> scales = stackalloc float[16];
        for (int i = 0; i < row.Length / QK_K; i++)
        {
            var x = row.Slice(i * QK_K, QK_K);
            var y = yRow.Slice(i * BlockBytes, BlockBytes);
            float maxScale = 0, maxAbsScale = 0;
            for (int ib = 0; ib < 16; ++ib)
            {
                var qw = importance.IsEmpty ? ReadOnlySpan<float>.Empty : importance.Slice(QK_K * i + 16 * ib, 16);
                float scale = MakeQxQuants(16, 32, x.Slice(16 * ib, 16), L.Slice(16 * ib, 16), 1, qw);
                scales[ib] = scale;
                float absScale = MathF.Abs(scale);
                if (absScale > maxAbsScale) { maxAbsScale = absScale; maxScale = scale; }
            }
            if (maxAbsScale < GroupMaxEps)
            {
                y.Clear();
                continue;
            }
            float iscale = -128f / maxScale;
            WriteHalf(y[208..], 1 / iscale);
            Span<byte> sc = y.Slice(192, 16);
            for (int ib = 0; ib < 16; ++ib) sc[ib] = unchecked((byte)(sbyte)Math.Min(127, NearestInt(iscale * scales[ib])));
            float dh = ReadHalf(y[208..]);
            for (int j = 0; j < 16; ++j)
            {
                float d = dh * (sbyte)sc[j];
                if (d == 0) continue;
                for (int ii = 0; ii < 16; ++ii)
                {
                    int l = NearestInt(x[16 * j + ii] / d);
                    L[16 * j + ii] = (sbyte)(Math.Max(-32, Math.Min(31, l)) + 32);
                }
            }
            Span<byte> ql = y[..128], qh = y.Slice(128, 64);
            for (int j = 0, qlo = 0, qho = 0; j < QK_K; j += 128, qlo += 64, qho += 32)
                for (int l = 0; l < 32; ++l)
                {
                    int q1 = L[j + l + 0] & 0xF, q2 = L[j + l + 32] & 0xF, q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
                    ql[qlo + l + 0] = (byte)(q1 | (q3 << 4));
                    ql[qlo + l + 32] = (byte)(q2 | (q4 << 4));
                    qh[qho + l] = (byte)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
                }
        }
    }

    public override void DequantizeRow(ReadOnlySpan<byte> yRow, Span<float> xRow)
    {
        for (int i = 0; i < xRow.Length / QK_K; i++)
        {
            var y = yRow.Slice(i * BlockBytes, BlockBytes);
            var o = xRow.Slice(i * QK_K, QK_K);
            float d = ReadHalf(y[208..]);
            int ql = 0, qh = 128, sc = 192, k = 0;
            for (int n = 0; n < QK_K; n += 128)
            {
                for (int l = 0; l < 32; ++l)
                {
                    int @is = l / 16;
                    int q1 = (sbyte)((y[ql + l + 0] & 0xF) | (((y[qh + l] >> 0) & 3) << 4)) - 32;
                    int q2 = (sbyte)((y[ql + l + 32] & 0xF) | (((y[qh + l] >> 2) & 3) << 4)) - 32;
                    int q3 = (sbyte)((y[ql + l + 0] >> 4) | (((y[qh + l] >> 4) & 3) << 4)) - 32;
                    int q4 = (sbyte)((y[ql + l + 32] >> 4) | (((y[qh + l] >> 6) & 3) << 4)) - 32;
                    o[k + l + 0] = d * (sbyte)y[sc + @is + 0] * q1;
                    o[k + l + 32] = d * (sbyte)y[sc + @is + 2] * q2;
                    o[k + l + 64] = d * (sbyte)y[sc + @is + 4] * q3;
                    o[k + l + 96] = d * (sbyte)y[sc + @is + 6] * q4;
                }
                k += 128; ql += 64; qh += 32; sc += 8;
            }
        }
    }
}
