namespace SuperQuant.Models.Gguf;

/// <summary>ggml tensor types written and read here (values from ggml.h).</summary>
public enum GgmlType : uint { F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8 }

/// <summary>
/// ggml's reference block formats, as in ggml-quants.c, one quantize and one dequantize function each. Both work on
/// rows whose length is a multiple of <see cref="QK"/>.
/// <code>
/// block_q8_0 { ggml_half d; int8_t  qs[32]; }  // 34 bytes: x = qs[i] * d
/// block_q4_0 { ggml_half d; uint8_t qs[16]; }  // 18 bytes: x[j] = ((qs[j] &amp; 0xF) - 8) * d, x[j+16] = ((qs[j] &gt;&gt; 4) - 8) * d
/// </code>
/// Written by hand because no .NET package implements ggml's block formats.
/// </summary>
public static class GgmlQuants
{
    public const int QK = 32;
    public const int Q8_0BlockBytes = 2 + QK;
    public const int Q4_0BlockBytes = 2 + QK / 2;

    public static long RowBytes(GgmlType type, long n) => type switch
    {
        GgmlType.F32 => 4 * n,
        GgmlType.F16 => 2 * n,
        GgmlType.Q8_0 => n / QK * Q8_0BlockBytes,
        GgmlType.Q4_0 => n / QK * Q4_0BlockBytes,
        _ => throw new ArgumentOutOfRangeException(nameof(type)),
    };

    public static bool Supports(GgmlType type, long rowLength) => type is GgmlType.F32 or GgmlType.F16 || rowLength % QK == 0;

    /// <summary>quantize_row_q8_0_ref: d = amax / 127, q = round(x / d).</summary>
    public static void QuantizeQ8_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        for (int b = 0; b < x.Length / QK; b++)
        {
            ReadOnlySpan<float> v = x.Slice(b * QK, QK);
            float amax = 0;
            foreach (float f in v) amax = Math.Max(amax, Math.Abs(f));
            float d = amax / 127f, id = d != 0 ? 1f / d : 0f;
            Span<byte> blk = y.Slice(b * Q8_0BlockBytes, Q8_0BlockBytes);
            BitConverter.TryWriteBytes(blk, (Half)d);
            for (int j = 0; j < QK; j++) blk[2 + j] = unchecked((byte)(sbyte)MathF.Round(v[j] * id, MidpointRounding.AwayFromZero));
        }
    }

    public static void DequantizeQ8_0(ReadOnlySpan<byte> y, Span<float> x)
    {
        for (int b = 0; b < x.Length / QK; b++)
        {
            ReadOnlySpan<byte> blk = y.Slice(b * Q8_0BlockBytes, Q8_0BlockBytes);
            float d = (float)BitConverter.ToHalf(blk);
            for (int j = 0; j < QK; j++) x[b * QK + j] = (sbyte)blk[2 + j] * d;
        }
    }

    /// <summary>quantize_row_q4_0_ref: d = max / -8 where max is the signed value of largest magnitude;
    /// q = min(15, (int8)(x / d + 8.5)); two codes per byte, element j in the low nibble, j + 16 in the high one.</summary>
    public static void QuantizeQ4_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        for (int b = 0; b < x.Length / QK; b++)
        {
            ReadOnlySpan<float> v = x.Slice(b * QK, QK);
            float amax = 0, max = 0;
            foreach (float f in v)
                if (Math.Abs(f) > amax) { amax = Math.Abs(f); max = f; }
            float d = max / -8f, id = d != 0 ? 1f / d : 0f;
            Span<byte> blk = y.Slice(b * Q4_0BlockBytes, Q4_0BlockBytes);
            BitConverter.TryWriteBytes(blk, (Half)d);
            for (int j = 0; j < QK / 2; j++)
            {
                int q0 = Math.Min(15, (int)(sbyte)(v[j] * id + 8.5f));
                int q1 = Math.Min(15, (int)(sbyte)(v[j + QK / 2] * id + 8.5f));
                blk[2 + j] = (byte)(q0 | (q1 << 4));
            }
        }
    }

    public static void DequantizeQ4_0(ReadOnlySpan<byte> y, Span<float> x)
    {
        for (int b = 0; b < x.Length / QK; b++)
        {
            ReadOnlySpan<byte> blk = y.Slice(b * Q4_0BlockBytes, Q4_0BlockBytes);
            float d = (float)BitConverter.ToHalf(blk);
            for (int j = 0; j < QK / 2; j++)
            {
                x[b * QK + j] = ((blk[2 + j] & 0x0F) - 8) * d;
                x[b * QK + j + QK / 2] = ((blk[2 + j] >> 4) - 8) * d;
            }
        }
    }

    public static byte[] Quantize(GgmlType type, float[] x)
    {
        var y = new byte[RowBytes(type, x.Length)];
        switch (type)
        {
            case GgmlType.F32: Buffer.BlockCopy(x, 0, y, 0, y.Length); break;
            case GgmlType.F16: for (int i = 0; i < x.Length; i++) BitConverter.TryWriteBytes(y.AsSpan(2 * i), (Half)x[i]); break;
            case GgmlType.Q8_0: QuantizeQ8_0(x, y); break;
            case GgmlType.Q4_0: QuantizeQ4_0(x, y); break;
        }
        return y;
    }

    public static float[] Dequantize(GgmlType type, ReadOnlySpan<byte> y, long n)
    {
        var x = new float[n];
        switch (type)
        {
            case GgmlType.F32: y[..(int)(4 * n)].CopyTo(System.Runtime.InteropServices.MemoryMarshal.AsBytes(x.AsSpan())); break;
            case GgmlType.F16: for (int i = 0; i < n; i++) x[i] = (float)BitConverter.ToHalf(y[(2 * i)..]); break;
            case GgmlType.Q8_0: DequantizeQ8_0(y, x); break;
            case GgmlType.Q4_0: DequantizeQ4_0(y, x); break;
        }
        return x;
    }
}
