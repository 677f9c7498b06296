using static SuperQuant.Models.Gguf.KQuantMath;

namespace SuperQuant.Models.Gguf;

/// <summary>
/// <code>block_iq4_xs { ggml_half d; uint16_t scales_h; uint8_t scales_l[4]; uint8_t qs[128]; }  // 136 bytes, 4.25 bpw</code>
/// Eight blocks of 32 share d; block ib's 6-bit scale ls = low nibble of scales_l[ib/2] (ib odd: high nibble) | 2 bits
/// of scales_h at 2*ib, and its weights are d * (ls - 32) * kvalues_iq4nl[q], nibbles packed as IQ4_NL's.
/// </summary>
public sealed class IQ4_XSFormat : GgmlFormat
{
    public const int QK = 256;
    public override GgmlType Type => GgmlType.IQ4_XS;
    public override int BlockSize => QK;
    public override int BlockBytes => 2 + 2 + QK / 64 + QK / 2;
    public override bool UsesImportance => true;

    public override void QuantizeRow(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> importance)
    {
        for (int ib = 0; ib < x.Length / QK; ++ib)
        {
            var blk = y.Slice(ib * BlockBytes, BlockBytes);
            IQ4Grid.QuantizeSuperBlock(x.Slice(ib * QK, QK), blk[..2], blk[8..], out ushort scalesH, blk.Slice(4, 4),
                importance.IsEmpty ? ReadOnlySpan<float>.Empty : importance.Slice(ib * QK, QK));
            BitConverter.TryWriteBytes(blk.Slice(2, 2), scalesH);
        }
    }

    // The code grid: per 32 weights the scale d * (ls - 32), values kvalues_iq4nl; each 32's nibbles as IQ4_NL's.
    public override int Levels => 16;
    public override float CodeValue(int code) => IQ4Grid.Values[code];
    public override bool EvenGrid => false;
    public override void ReadGrid(ReadOnlySpan<byte> b, Span<float> scale, Span<float> min)
    {
        float d = ReadHalf(b);
        ushort scalesH = BitConverter.ToUInt16(b.Slice(2, 2));
        for (int ib = 0; ib < QK / 32; ++ib)
        {
            int ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xf) | (((scalesH >> (2 * ib)) & 3) << 4);
            scale.Slice(32 * ib, 32).Fill(d * (ls - 32));
        }
        min[..QK].Clear();
    }
    public override void ReadCodes(ReadOnlySpan<byte> b, Span<byte> c)
    {
        for (int ib = 0; ib < QK / 32; ++ib) LegacyCodes.ReadNibbles(b.Slice(8 + 16 * ib, 16), c.Slice(32 * ib, 32));
    }
    public override void WriteCodes(Span<byte> b, ReadOnlySpan<byte> c)
    {
        for (int ib = 0; ib < QK / 32; ++ib) LegacyCodes.WriteNibbles(b.Slice(8 + 16 * ib, 16), c.Slice(32 * ib, 32));
    }

    public override void DequantizeRow(ReadOnlySpan<byte> y, Span<float> x)
    {
        for (int i = 0; i < x.Length / QK; i++)
        {
            var blk = y.Slice(i * BlockBytes, BlockBytes);
            float d = ReadHalf(blk);
            ushort scalesH = BitConverter.ToUInt16(blk.Slice(2, 2));
            for (int ib = 0; ib < QK / 32; ++ib)
            {
                int ls = ((blk[4 + ib / 2] >> (4 * (ib % 2))) & 0xf) | (((scalesH >> (2 * ib)) & 3) << 4);
                float dl = d * (ls - 32);
                var qs = blk.Slice(8 + 16 * ib, 16);
                for (int j = 0; j < 16; ++j)
                {
                    x[i * QK + 32 * ib + j] = dl * IQ4Grid.Values[qs[j] & 0xf];
                    x[i * QK + 32 * ib + j + 16] = dl * IQ4Grid.Values[qs[j] >> 4];
                }
            }
        }
    }
}
