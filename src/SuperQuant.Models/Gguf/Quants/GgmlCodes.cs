using static SuperQuant.Models.Gguf.KQuantMath;

namespace SuperQuant.Models.Gguf;

// Each quantized format's code grid: where its codes sit in the block and the step/offset that turn a code into a
// value, written to match DequantizeRow's float arithmetic exactly (value = scale * (code + CodeShift) - min).
// Tested: reading a quantized block's codes and grid reproduces DequantizeRow bit for bit, and writing the codes back
// reproduces the block's bytes (GgmlCodeTests).

public sealed partial class Q4_0Format
{
    public override int Levels => 16;
    public override int CodeShift => -8;
    public override void ReadGrid(ReadOnlySpan<byte> b, Span<float> scale, Span<float> min)
    {
        scale[..QK].Fill(ReadHalf(b));
        min[..QK].Clear();
    }
    public override void ReadCodes(ReadOnlySpan<byte> b, Span<byte> c) => LegacyCodes.ReadNibbles(b[2..], c);
    public override void WriteCodes(Span<byte> b, ReadOnlySpan<byte> c) => LegacyCodes.WriteNibbles(b[2..], c);
}

public sealed partial class Q4_1Format
{
    public override int Levels => 16;
    public override void ReadGrid(ReadOnlySpan<byte> b, Span<float> scale, Span<float> min)
    {
        scale[..QK].Fill(ReadHalf(b));
        min[..QK].Fill(-ReadHalf(b[2..]));
    }
    public override void ReadCodes(ReadOnlySpan<byte> b, Span<byte> c) => LegacyCodes.ReadNibbles(b[4..], c);
    public override void WriteCodes(Span<byte> b, ReadOnlySpan<byte> c) => LegacyCodes.WriteNibbles(b[4..], c);
}

public sealed partial class Q5_0Format
{
    public override int Levels => 32;
    public override int CodeShift => -16;
    public override void ReadGrid(ReadOnlySpan<byte> b, Span<float> scale, Span<float> min)
    {
        scale[..QK].Fill(ReadHalf(b));
        min[..QK].Clear();
    }
    public override void ReadCodes(ReadOnlySpan<byte> b, Span<byte> c) => LegacyCodes.ReadFiveBit(b[2..], b[6..], c);
    public override void WriteCodes(Span<byte> b, ReadOnlySpan<byte> c) => LegacyCodes.WriteFiveBit(b[2..], b[6..], c);
}

public sealed partial class Q5_1Format
{
    public override int Levels => 32;
    public override void ReadGrid(ReadOnlySpan<byte> b, Span<float> scale, Span<float> min)
    {
        scale[..QK].Fill(ReadHalf(b));
        min[..QK].Fill(-ReadHalf(b[2..]));
    }
    public override void ReadCodes(ReadOnlySpan<byte> b, Span<byte> c) => LegacyCodes.ReadFiveBit(b[4..], b[8..], c);
    public override void WriteCodes(Span<byte> b, ReadOnlySpan<byte> c) => LegacyCodes.WriteFiveBit(b[4..], b[8..], c);
}

public sealed partial class Q8_0Format
{
    public override int Levels => 256;
    public override int CodeShift => -128;
    /// <summary>-128 is left out: llama.cpp's quantizer never writes it, and its SIMD dot products negate codes with
    /// sign_epi8, where -(-128) wraps; keeping to ±127 stays inside what every kernel was written for.</summary>
    public override int LowestCode => 1;
    public override void ReadGrid(ReadOnlySpan<byte> b, Span<float> scale, Span<float> min)
    {
        scale[..QK].Fill(ReadHalf(b));
        min[..QK].Clear();
    }
    public override void ReadCodes(ReadOnlySpan<byte> b, Span<byte> c)
    {
        for (int j = 0; j < QK; j++) c[j] = (byte)((sbyte)b[2 + j] + 128);
    }
    public override void WriteCodes(Span<byte> b, ReadOnlySpan<byte> c)
    {
        for (int j = 0; j < QK; j++) b[2 + j] = unchecked((byte)(sbyte)(c[j] - 128));
    }
}

/// <summary>The legacy formats' 32-element code layouts: element j in the low nibble of qs[j], j + 16 in the high
/// nibble; Q5's fifth bit of element j is bit j of qh (little-endian uint32).</summary>
static class LegacyCodes
{
    public static void ReadNibbles(ReadOnlySpan<byte> qs, Span<byte> c)
    {
        for (int j = 0; j < 16; j++) { c[j] = (byte)(qs[j] & 0xF); c[j + 16] = (byte)(qs[j] >> 4); }
    }
    public static void WriteNibbles(Span<byte> qs, ReadOnlySpan<byte> c)
    {
        for (int j = 0; j < 16; j++) qs[j] = (byte)((c[j] & 0xF) | ((c[j + 16] & 0xF) << 4));
    }
    public static void ReadFiveBit(ReadOnlySpan<byte> qhBytes, ReadOnlySpan<byte> qs, Span<byte> c)
    {
        uint qh = BitConverter.ToUInt32(qhBytes);
        ReadNibbles(qs, c);
        for (int j = 0; j < 32; j++) c[j] |= (byte)(((qh >> j) & 1) << 4);
    }
    public static void WriteFiveBit(Span<byte> qhBytes, Span<byte> qs, ReadOnlySpan<byte> c)
    {
        uint qh = 0;
        for (int j = 0; j < 32; j++) qh |= (uint)((c[j] >> 4) & 1) << j;
        BitConverter.TryWriteBytes(qhBytes, qh);
        WriteNibbles(qs, c);
    }
}

public sealed partial class Q2_KFormat
{
    public override int Levels => 4;
    public override void ReadGrid(ReadOnlySpan<byte> y, Span<float> scale, Span<float> min)
    {
        float d = ReadHalf(y[80..]), dmin = ReadHalf(y[82..]);
        for (int s = 0; s < 16; s++)
        {
            scale.Slice(16 * s, 16).Fill(d * (y[s] & 0xF));
            min.Slice(16 * s, 16).Fill(dmin * (y[s] >> 4));
        }
    }
    // Element n*128 + 32*j + l (l < 32) sits in bits 2j of qs[32n + l].
    public override void ReadCodes(ReadOnlySpan<byte> y, Span<byte> c)
    {
        for (int k = 0; k < QK_K; k++) c[k] = (byte)((y[16 + 32 * (k / 128) + k % 32] >> (2 * (k % 128 / 32))) & 3);
    }
    public override void WriteCodes(Span<byte> y, ReadOnlySpan<byte> c)
    {
        y.Slice(16, 64).Clear();
        for (int k = 0; k < QK_K; k++) y[16 + 32 * (k / 128) + k % 32] |= (byte)((c[k] & 3) << (2 * (k % 128 / 32)));
    }
}

public sealed partial class Q3_KFormat
{
    public override int Levels => 8;
    public override int CodeShift => -4;
    public override void ReadGrid(ReadOnlySpan<byte> y, Span<float> scale, Span<float> min)
    {
        float dAll = ReadHalf(y[108..]);
        ReadOnlySpan<byte> sc = y.Slice(96, 12);
        for (int s = 0; s < 16; s++) scale.Slice(16 * s, 16).Fill(dAll * UnpackScale(sc, s));
        min[..QK_K].Clear();
    }
    // Low two bits as Q2_K's (qs from byte 32); the third bit of element n*128 + 32*j + l is bit 4n + j of hmask[l].
    public override void ReadCodes(ReadOnlySpan<byte> y, Span<byte> c)
    {
        for (int k = 0; k < QK_K; k++)
        {
            int n = k / 128, j = k % 128 / 32, l = k % 32;
            int low = (y[32 + 32 * n + l] >> (2 * j)) & 3, high = (y[l] >> (4 * n + j)) & 1;
            c[k] = (byte)(low | (high << 2));
        }
    }
    public override void WriteCodes(Span<byte> y, ReadOnlySpan<byte> c)
    {
        y[..96].Clear();
        for (int k = 0; k < QK_K; k++)
        {
            int n = k / 128, j = k % 128 / 32, l = k % 32;
            y[32 + 32 * n + l] |= (byte)((c[k] & 3) << (2 * j));
            y[l] |= (byte)(((c[k] >> 2) & 1) << (4 * n + j));
        }
    }
}

public sealed partial class Q4_KFormat
{
    public override int Levels => 16;
    public override void ReadGrid(ReadOnlySpan<byte> y, Span<float> scale, Span<float> min) => AsymmetricKQuant.ReadGrid(y, scale, min);
    // Element 64g + l: low nibble of qs[32g + l] for l < 32, high nibble of qs[32g + l - 32] otherwise.
    public override void ReadCodes(ReadOnlySpan<byte> y, Span<byte> c)
    {
        for (int k = 0; k < QK_K; k++)
        {
            int g = k / 64, l = k % 64;
            c[k] = (byte)(l < 32 ? y[16 + 32 * g + l] & 0xF : y[16 + 32 * g + l - 32] >> 4);
        }
    }
    public override void WriteCodes(Span<byte> y, ReadOnlySpan<byte> c)
    {
        for (int g = 0; g < 4; g++)
            for (int l = 0; l < 32; l++) y[16 + 32 * g + l] = (byte)((c[64 * g + l] & 0xF) | ((c[64 * g + l + 32] & 0xF) << 4));
    }
}

public sealed partial class Q5_KFormat
{
    public override int Levels => 32;
    public override void ReadGrid(ReadOnlySpan<byte> y, Span<float> scale, Span<float> min) => AsymmetricKQuant.ReadGrid(y, scale, min);
    // As Q4_K's nibbles (ql from byte 48), the fifth bit of element 64g + l in qh[l % 32], bit 2g (l < 32) or 2g + 1.
    public override void ReadCodes(ReadOnlySpan<byte> y, Span<byte> c)
    {
        for (int k = 0; k < QK_K; k++)
        {
            int g = k / 64, l = k % 64, lo = l % 32, bit = 2 * g + (l < 32 ? 0 : 1);
            int nibble = l < 32 ? y[48 + 32 * g + lo] & 0xF : y[48 + 32 * g + lo] >> 4;
            c[k] = (byte)(nibble | (((y[16 + lo] >> bit) & 1) << 4));
        }
    }
    public override void WriteCodes(Span<byte> y, ReadOnlySpan<byte> c)
    {
        y.Slice(16, 32).Clear();
        for (int g = 0; g < 4; g++)
            for (int l = 0; l < 32; l++)
            {
                int a = c[64 * g + l], b = c[64 * g + l + 32];
                y[48 + 32 * g + l] = (byte)((a & 0xF) | ((b & 0xF) << 4));
                y[16 + l] |= (byte)((((a >> 4) & 1) << (2 * g)) | (((b >> 4) & 1) << (2 * g + 1)));
            }
    }
}

internal static partial class AsymmetricKQuant
{
    /// <summary>Q4_K/Q5_K: sub-block j's step d * scale_j and offset dmin * min_j, as their dequantizers compute them.</summary>
    public static void ReadGrid(ReadOnlySpan<byte> y, Span<float> scale, Span<float> min)
    {
        float d = ReadHalf(y), dmin = ReadHalf(y[2..]);
        for (int j = 0; j < 8; j++)
        {
            GetScaleMinK4(j, y.Slice(4, 12), out byte sc, out byte m);
            scale.Slice(32 * j, 32).Fill(d * sc);
            min.Slice(32 * j, 32).Fill(dmin * m);
        }
    }
}

public sealed partial class Q6_KFormat
{
    public override int Levels => 64;
    public override int CodeShift => -32;
    public override void ReadGrid(ReadOnlySpan<byte> y, Span<float> scale, Span<float> min)
    {
        float d = ReadHalf(y[208..]);
        for (int s = 0; s < 16; s++) scale.Slice(16 * s, 16).Fill(d * (sbyte)y[192 + s]);
        min[..QK_K].Clear();
    }
    // Element 128n + 32q + l: low four bits in ql[64n + l (+32 for q odd)] (high nibble for q >= 2), top two bits in
    // bits 2q of qh[32n + l].
    public override void ReadCodes(ReadOnlySpan<byte> y, Span<byte> c)
    {
        for (int k = 0; k < QK_K; k++)
        {
            int n = k / 128, q = k % 128 / 32, l = k % 32;
            byte lowByte = y[64 * n + l + (q % 2) * 32];
            int low = q < 2 ? lowByte & 0xF : lowByte >> 4;
            c[k] = (byte)(low | (((y[128 + 32 * n + l] >> (2 * q)) & 3) << 4));
        }
    }
    public override void WriteCodes(Span<byte> y, ReadOnlySpan<byte> c)
    {
        y[..192].Clear();
        for (int k = 0; k < QK_K; k++)
        {
            int n = k / 128, q = k % 128 / 32, l = k % 32;
            y[64 * n + l + (q % 2) * 32] |= (byte)((c[k] & 0xF) << (q < 2 ? 0 : 4));
            y[128 + 32 * n + l] |= (byte)(((c[k] >> 4) & 3) << (2 * q));
        }
    }
}
