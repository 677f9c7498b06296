using static SuperQuant.Models.Gguf.KQuantMath;

namespace SuperQuant.Models.Gguf;

/// <summary>
/// <code>block_q4_0 { ggml_half d; uint8_t qs[16]; }  // 18 bytes, 4.5 bits/weight: x[j] = (q - 8) * d</code>
/// Element j in the low nibble of qs[j], element j + 16 in the high nibble. Reference: d = max / -8 where max is the
/// value of largest magnitude; with importance weights (quantize_row_q4_0_impl) a weighted make_qx_quants search.
/// </summary>
public sealed partial class Q4_0Format : GgmlFormat
{
    public const int QK = 32;
    public override GgmlType Type => GgmlType.Q4_0;
    public override int BlockSize => QK;
    public override int BlockBytes => 2 + QK / 2;
    public override bool UsesImportance => true;

    public override void QuantizeRow(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> importance)
    {
        int nb = x.Length / QK;
        if (!importance.IsEmpty)
        {
            float sigma2 = SumSquares(x) / x.Length;
            Span<float> weight = stackalloc float[QK];
            Span<sbyte> L = stackalloc sbyte[QK];
            for (int ib = 0; ib < nb; ++ib)
            {
                var xb = x.Slice(QK * ib, QK);
                var qw = importance.Slice(QK * ib, QK);
                for (int j = 0; j < QK; ++j) weight[j] = qw[j] * MathF.Sqrt(sigma2 + xb[j] * xb[j]);
                float d = MakeQxQuants(QK, 8, xb, L, 1, weight);
                var blk = y.Slice(ib * BlockBytes, BlockBytes);
                WriteHalf(blk, d);
                for (int j = 0; j < 16; ++j) blk[2 + j] = (byte)((byte)L[j] | ((byte)L[j + 16] << 4));
            }
            return;
        }
        for (int i = 0; i < nb; i++)
        {
            var v = x.Slice(i * QK, QK);
            float amax = 0, max = 0;
            for (int j = 0; j < QK; j++)
                if (amax < MathF.Abs(v[j])) { amax = MathF.Abs(v[j]); max = v[j]; }
            float d = max / -8;
            float id = d != 0 ? 1.0f / d : 0.0f;
            var blk = y.Slice(i * BlockBytes, BlockBytes);
            WriteHalf(blk, d);
            for (int j = 0; j < QK / 2; ++j)
            {
                float x0 = v[j] * id, x1 = v[QK / 2 + j] * id;
                int xi0 = Math.Min(15, (int)(sbyte)(int)(x0 + 8.5f));
                int xi1 = Math.Min(15, (int)(sbyte)(int)(x1 + 8.5f));
                blk[2 + j] = (byte)(xi0 | (xi1 << 4));
            }
        }
    }

    public override void DequantizeRow(ReadOnlySpan<byte> y, Span<float> x)
    {
        for (int i = 0; i < x.Length / QK; i++)
        {
            var blk = y.Slice(i * BlockBytes, BlockBytes);
            float d = ReadHalf(blk);
            for (int j = 0; j < QK / 2; ++j)
            {
                x[i * QK + j] = ((blk[2 + j] & 0x0F) - 8) * d;
                x[i * QK + j + QK / 2] = ((blk[2 + j] >> 4) - 8) * d;
            }
        }
    }

    internal static float SumSquares(ReadOnlySpan<float> x)
    {
        float s = 0;
        for (int j = 0; j < x.Length; ++j) s += x[j] * x[j];
        return s;
    }
}

/// <summary><code>block_q4_1 { ggml_half d; ggml_half m; uint8_t qs[16]; }  // 20 bytes: x = q * d + m</code></summary>
public sealed partial class Q4_1Format : GgmlFormat
{
    const int QK = 32;
    public override GgmlType Type => GgmlType.Q4_1;
    public override int BlockSize => QK;
    public override int BlockBytes => 4 + QK / 2;
    public override bool UsesImportance => true;

    public override void QuantizeRow(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> importance)
    {
        int nb = x.Length / QK;
        if (!importance.IsEmpty)
        {
            float sigma2 = Q4_0Format.SumSquares(x) / x.Length;
            Span<float> weight = stackalloc float[QK];
            Span<byte> L = stackalloc byte[QK], Laux = stackalloc byte[QK];
            for (int ib = 0; ib < nb; ++ib)
            {
                var xb = x.Slice(QK * ib, QK);
                var qw = importance.Slice(QK * ib, QK);
                for (int j = 0; j < QK; ++j) weight[j] = qw[j] * MathF.Sqrt(sigma2 + xb[j] * xb[j]);
                float d = MakeQkx3Quants(QK, 15, xb, weight, L, out float min, Laux, -0.9f, 0.05f, 36, false);
                var blk = y.Slice(ib * BlockBytes, BlockBytes);
                WriteHalf(blk, d); WriteHalf(blk[2..], -min);
                for (int j = 0; j < 16; ++j) blk[4 + j] = (byte)(L[j] | (L[j + 16] << 4));
            }
            return;
        }
        for (int i = 0; i < nb; i++)
        {
            var v = x.Slice(i * QK, QK);
            float min = float.MaxValue, max = -float.MaxValue;
            for (int j = 0; j < QK; j++) { if (v[j] < min) min = v[j]; if (v[j] > max) max = v[j]; }
            float d = (max - min) / ((1 << 4) - 1);
            float id = d != 0 ? 1.0f / d : 0.0f;
            var blk = y.Slice(i * BlockBytes, BlockBytes);
            WriteHalf(blk, d); WriteHalf(blk[2..], min);
            for (int j = 0; j < QK / 2; ++j)
            {
                float x0 = (v[j] - min) * id, x1 = (v[QK / 2 + j] - min) * id;
                int xi0 = Math.Min(15, (int)(sbyte)(int)(x0 + 0.5f));
                int xi1 = Math.Min(15, (int)(sbyte)(int)(x1 + 0.5f));
                blk[4 + j] = (byte)(xi0 | (xi1 << 4));
            }
        }
    }

    public override void DequantizeRow(ReadOnlySpan<byte> y, Span<float> x)
    {
        for (int i = 0; i < x.Length / QK; i++)
        {
            var blk = y.Slice(i * BlockBytes, BlockBytes);
            float d = ReadHalf(blk), m = ReadHalf(blk[2..]);
            for (int j = 0; j < QK / 2; ++j)
            {
                x[i * QK + j] = (blk[4 + j] & 0x0F) * d + m;
                x[i * QK + j + QK / 2] = (blk[4 + j] >> 4) * d + m;
            }
        }
    }
}

/// <summary>
/// <code>block_q5_0 { ggml_half d; uint8_t qh[4]; uint8_t qs[16]; }  // 22 bytes: x = (q - 16) * d</code>
/// The fifth bit of element j is bit j of qh (little-endian uint32); llama.cpp's fallback for Q4_K rows that are not
/// a multiple of 256.
/// </summary>
public sealed partial class Q5_0Format : GgmlFormat
{
    const int QK = 32;
    public override GgmlType Type => GgmlType.Q5_0;
    public override int BlockSize => QK;
    public override int BlockBytes => 2 + 4 + QK / 2;
    public override bool UsesImportance => true;

    public override void QuantizeRow(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> importance)
    {
        int nb = x.Length / QK;
        Span<sbyte> L = stackalloc sbyte[QK];
        if (!importance.IsEmpty)
        {
            float sigma2 = Q4_0Format.SumSquares(x) / x.Length;
            Span<float> weight = stackalloc float[QK];
            for (int ib = 0; ib < nb; ++ib)
            {
                var xb = x.Slice(QK * ib, QK);
                var qw = importance.Slice(QK * ib, QK);
                for (int j = 0; j < QK; ++j) weight[j] = qw[j] * MathF.Sqrt(sigma2 + xb[j] * xb[j]);
                float d = MakeQxQuants(QK, 16, xb, L, 1, weight);
                Pack(y.Slice(ib * BlockBytes, BlockBytes), d, L);
            }
            return;
        }
        for (int i = 0; i < nb; i++)
        {
            var v = x.Slice(i * QK, QK);
            float amax = 0, max = 0;
            for (int j = 0; j < QK; j++)
                if (amax < MathF.Abs(v[j])) { amax = MathF.Abs(v[j]); max = v[j]; }
            float d = max / -16;
            float id = d != 0 ? 1.0f / d : 0.0f;
            for (int j = 0; j < QK; ++j) L[j] = (sbyte)Math.Min(31, (int)(sbyte)(int)(v[j] * id + 16.5f));
            Pack(y.Slice(i * BlockBytes, BlockBytes), d, L);
        }
    }

    static void Pack(Span<byte> blk, float d, ReadOnlySpan<sbyte> L)
    {
        WriteHalf(blk, d);
        uint qh = 0;
        for (int j = 0; j < 16; ++j)
        {
            byte xi0 = (byte)L[j], xi1 = (byte)L[j + 16];
            blk[6 + j] = (byte)((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
            qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
            qh |= ((xi1 & 0x10u) >> 4) << (j + 16);
        }
        BitConverter.TryWriteBytes(blk[2..], qh);
    }

    public override void DequantizeRow(ReadOnlySpan<byte> y, Span<float> x)
    {
        for (int i = 0; i < x.Length / QK; i++)
        {
            var blk = y.Slice(i * BlockBytes, BlockBytes);
            float d = ReadHalf(blk);
            uint qh = BitConverter.ToUInt32(blk[2..]);
            for (int j = 0; j < QK / 2; ++j)
            {
                int xh0 = (int)(((qh >> (j + 0)) << 4) & 0x10);
                int xh1 = (int)((qh >> (j + 12)) & 0x10);
                x[i * QK + j] = (((blk[6 + j] & 0x0F) | xh0) - 16) * d;
                x[i * QK + j + QK / 2] = (((blk[6 + j] >> 4) | xh1) - 16) * d;
            }
        }
    }
}

/// <summary><code>block_q5_1 { ggml_half d; ggml_half m; uint8_t qh[4]; uint8_t qs[16]; }  // 24 bytes: x = q * d + m</code>
/// llama.cpp's fallback for Q5_K rows that are not a multiple of 256.</summary>
public sealed partial class Q5_1Format : GgmlFormat
{
    const int QK = 32;
    public override GgmlType Type => GgmlType.Q5_1;
    public override int BlockSize => QK;
    public override int BlockBytes => 4 + 4 + QK / 2;
    public override bool UsesImportance => true;

    public override void QuantizeRow(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> importance)
    {
        int nb = x.Length / QK;
        Span<byte> L = stackalloc byte[QK];
        if (!importance.IsEmpty)
        {
            float sigma2 = Q4_0Format.SumSquares(x) / x.Length;
            Span<float> weight = stackalloc float[QK];
            Span<byte> Laux = stackalloc byte[QK];
            for (int ib = 0; ib < nb; ++ib)
            {
                var xb = x.Slice(QK * ib, QK);
                var qw = importance.Slice(QK * ib, QK);
                for (int j = 0; j < QK; ++j) weight[j] = qw[j] * MathF.Sqrt(sigma2 + xb[j] * xb[j]);
                float d = MakeQkx3Quants(QK, 31, xb, weight, L, out float min, Laux, -0.9f, 0.05f, 36, false);
                Pack(y.Slice(ib * BlockBytes, BlockBytes), d, -min, L);
            }
            return;
        }
        for (int i = 0; i < nb; i++)
        {
            var v = x.Slice(i * QK, QK);
            float min = float.MaxValue, max = -float.MaxValue;
            for (int j = 0; j < QK; j++) { if (v[j] < min) min = v[j]; if (v[j] > max) max = v[j]; }
            float d = (max - min) / ((1 << 5) - 1);
            float id = d != 0 ? 1.0f / d : 0.0f;
            for (int j = 0; j < QK; ++j) L[j] = (byte)(int)((v[j] - min) * id + 0.5f);
            Pack(y.Slice(i * BlockBytes, BlockBytes), d, min, L);
        }
    }

    static void Pack(Span<byte> blk, float d, float m, ReadOnlySpan<byte> L)
    {
        WriteHalf(blk, d); WriteHalf(blk[2..], m);
        uint qh = 0;
        for (int j = 0; j < 16; ++j)
        {
            byte xi0 = L[j], xi1 = L[j + 16];
            blk[8 + j] = (byte)((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
            qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
            qh |= ((xi1 & 0x10u) >> 4) << (j + 16);
        }
        BitConverter.TryWriteBytes(blk[4..], qh);
    }

    public override void DequantizeRow(ReadOnlySpan<byte> y, Span<float> x)
    {
        for (int i = 0; i < x.Length / QK; i++)
        {
            var blk = y.Slice(i * BlockBytes, BlockBytes);
            float d = ReadHalf(blk), m = ReadHalf(blk[2..]);
            uint qh = BitConverter.ToUInt32(blk[4..]);
            for (int j = 0; j < QK / 2; ++j)
            {
                int xh0 = (int)(((qh >> (j + 0)) << 4) & 0x10);
                int xh1 = (int)((qh >> (j + 12)) & 0x10);
                x[i * QK + j] = ((blk[8 + j] & 0x0F) | xh0) * d + m;
                x[i * QK + j + QK / 2] = ((blk[8 + j] >> 4) | xh1) * d + m;
            }
        }
    }
}

/// <summary><code>block_q8_0 { ggml_half d; int8_t qs[32]; }  // 34 bytes, 8.5 bits/weight: x = q * d, d = amax / 127</code>
/// Importance weights are ignored, as in llama.cpp.</summary>
public sealed partial class Q8_0Format : GgmlFormat
{
    const int QK = 32;
    public override GgmlType Type => GgmlType.Q8_0;
    public override int BlockSize => QK;
    public override int BlockBytes => 2 + QK;

    public override void QuantizeRow(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> importance)
    {
        for (int i = 0; i < x.Length / QK; i++)
        {
            var v = x.Slice(i * QK, QK);
            float amax = 0;
            for (int j = 0; j < QK; j++) amax = Math.Max(amax, MathF.Abs(v[j]));
            float d = amax / ((1 << 7) - 1);
            float id = d != 0 ? 1.0f / d : 0.0f;
            var blk = y.Slice(i * BlockBytes, BlockBytes);
            WriteHalf(blk, d);
            for (int j = 0; j < QK; ++j) blk[2 + j] = unchecked((byte)(sbyte)MathF.Round(v[j] * id, MidpointRounding.AwayFromZero));
        }
    }

    public override void DequantizeRow(ReadOnlySpan<byte> y, Span<float> x)
    {
        for (int i = 0; i < x.Length / QK; i++)
        {
            var blk = y.Slice(i * BlockBytes, BlockBytes);
            float d = ReadHalf(blk);
            for (int j = 0; j < QK; j++) x[i * QK + j] = (sbyte)blk[2 + j] * d;
        }
    }
}

/// <summary>F32: raw little-endian floats.</summary>
public sealed class F32Format : GgmlFormat
{
    public override GgmlType Type => GgmlType.F32;
    public override int BlockSize => 1;
    public override int BlockBytes => 4;
    public override void QuantizeRow(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> importance) =>
        System.Runtime.InteropServices.MemoryMarshal.AsBytes(x).CopyTo(y);
    public override void DequantizeRow(ReadOnlySpan<byte> y, Span<float> x) =>
        y[..(4 * x.Length)].CopyTo(System.Runtime.InteropServices.MemoryMarshal.AsBytes(x));
}

/// <summary>F16: IEEE half, round to nearest even (ggml's GGML_FP32_TO_FP16).</summary>
public sealed class F16Format : GgmlFormat
{
    public override GgmlType Type => GgmlType.F16;
    public override int BlockSize => 1;
    public override int BlockBytes => 2;
    public override void QuantizeRow(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> importance)
    {
        for (int i = 0; i < x.Length; i++) BitConverter.TryWriteBytes(y[(2 * i)..], (Half)x[i]);
    }
    public override void DequantizeRow(ReadOnlySpan<byte> y, Span<float> x)
    {
        for (int i = 0; i < x.Length; i++) x[i] = (float)BitConverter.ToHalf(y[(2 * i)..]);
    }
}

/// <summary>BF16: the top 16 bits of an fp32, rounded to nearest even, NaN kept quiet (ggml_compute_fp32_to_bf16).</summary>
public sealed class BF16Format : GgmlFormat
{
    public override GgmlType Type => GgmlType.BF16;
    public override int BlockSize => 1;
    public override int BlockBytes => 2;

    public static ushort FromFloat(float s)
    {
        uint u = BitConverter.SingleToUInt32Bits(s);
        if ((u & 0x7fffffff) > 0x7f800000) return (ushort)((u >> 16) | 64);
        return (ushort)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
    }

    public static float ToFloat(ushort b) => BitConverter.UInt32BitsToSingle((uint)b << 16);

    public override void QuantizeRow(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> importance)
    {
        for (int i = 0; i < x.Length; i++) BitConverter.TryWriteBytes(y[(2 * i)..], FromFloat(x[i]));
    }
    public override void DequantizeRow(ReadOnlySpan<byte> y, Span<float> x)
    {
        for (int i = 0; i < x.Length; i++) x[i] = ToFloat(BitConverter.ToUInt16(y[(2 * i)..]));
    }
}
