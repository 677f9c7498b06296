using static SuperQuant.Models.Gguf.KQuantMath;

namespace SuperQuant.Models.Gguf;

/// <summary>
/// <code>block_iq4_nl { ggml_half d; uint8_t qs[16]; }  // 18 bytes, 4.5 bits/weight: x = d * kvalues_iq4nl[q]</code>
/// Element j in the low nibble of qs[j], element j + 16 in the high nibble (as Q4_0). What llama.cpp's quantizer
/// writes (quantize_iq4_nl, ntry 7) with or without importance weights; IQ4_XS falls back to it on rows that are not
/// a multiple of 256.
/// </summary>
public sealed class IQ4_NLFormat : GgmlFormat
{
    public const int QK = 32;
    public override GgmlType Type => GgmlType.IQ4_NL;
    public override int BlockSize => QK;
    public override int BlockBytes => 2 + QK / 2;
    public override bool UsesImportance => true;

    public override void QuantizeRow(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> importance)
    {
        for (int ib = 0; ib < x.Length / QK; ++ib)
        {
            var blk = y.Slice(ib * BlockBytes, BlockBytes);
            IQ4Grid.QuantizeSuperBlock(x.Slice(ib * QK, QK), blk[..2], blk[2..], out _, Span<byte>.Empty,
                importance.IsEmpty ? ReadOnlySpan<float>.Empty : importance.Slice(ib * QK, QK));
        }
    }

    // The code grid (for error-compensated rows): one scale d per block, values kvalues_iq4nl, nibbles as Q4_0's.
    public override int Levels => 16;
    public override float CodeValue(int code) => IQ4Grid.Values[code];
    public override bool EvenGrid => false;
    public override void ReadGrid(ReadOnlySpan<byte> b, Span<float> scale, Span<float> min)
    {
        scale[..QK].Fill(ReadHalf(b));
        min[..QK].Clear();
    }
    public override void ReadCodes(ReadOnlySpan<byte> b, Span<byte> c) => LegacyCodes.ReadNibbles(b[2..], c);
    public override void WriteCodes(Span<byte> b, ReadOnlySpan<byte> c) => LegacyCodes.WriteNibbles(b[2..], c);

    public override void DequantizeRow(ReadOnlySpan<byte> y, Span<float> x)
    {
        for (int i = 0; i < x.Length / QK; i++)
        {
            var blk = y.Slice(i * BlockBytes, BlockBytes);
            float d = ReadHalf(blk);
            for (int j = 0; j < QK / 2; ++j)
            {
                x[i * QK + j] = d * IQ4Grid.Values[blk[2 + j] & 0xf];
                x[i * QK + j + QK / 2] = d * IQ4Grid.Values[blk[2 + j] >> 4];
            }
        }
    }
}
