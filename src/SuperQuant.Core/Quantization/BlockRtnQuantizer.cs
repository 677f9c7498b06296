using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Quantization;

/// <summary>
/// Asymmetric min-max round-to-nearest in blocks along each row (the input dimension):
/// scale = (max - min) / (2^bits - 1), zero = round(-min / scale), code = clamp(round(w / scale) + zero, 0, 2^bits - 1),
/// with the range widened to include 0 (as GPTQ/AWQ do, so an integer zero point exists). The scale is rounded to fp16
/// before codes are computed, so dequantizing a stored artifact (fp16 scales and zeros) gives exactly the values the
/// quantizer measured its error on.
/// How this differs from the Super Weight paper's code (LLMSuperWeight `outliers/functional/quantization.py`): there the
/// blocks cut the flattened tensor (a block may span rows, and the whole tensor can be one block), the offset is the
/// float block minimum (w_q = round((w - min) / scale) * scale + min, no integer zero point, 0 not forced into the
/// range) and nothing is rounded to fp16. Ours is the packed format's default layout; the paper's quantizer is
/// <see cref="Methods.PaperBlockQuantizer"/> (`--variant paper`), stored in the packed format's paper layout.
/// </summary>
public static class BlockRtnQuantizer
{
    public const int MinBits = 2, MaxBits = 8, MinBlock = 32, MaxBlock = 4096;
    public const float MinScale = 1e-7f;

    /// <summary>Block size 0 means per-channel (one block per row).</summary>
    public static void Validate(int bits, int blockSize)
    {
        if (bits < MinBits || bits > MaxBits)
            throw new SuperQuantException(ErrorCodes.UnsupportedQuantization, $"{bits}-bit weights are not supported (supported: {MinBits}..{MaxBits})");
        if (blockSize != 0 && (blockSize < MinBlock || blockSize > MaxBlock))
            throw new SuperQuantException(ErrorCodes.UnsupportedQuantization,
                $"block size {blockSize} is not supported (supported: {MinBlock}..{MaxBlock}, or 0 = per-channel)");
    }

    public static QuantizedMatrix Quantize(Tensor weight, int bits, int blockSize)
    {
        Validate(bits, blockSize);
        if (weight.dim() != 2) throw new ArgumentException("expected a [rows, cols] matrix");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        long rows = weight.shape[0], cols = weight.shape[1];
        int block = blockSize == 0 ? (int)cols : (int)Math.Min(blockSize, cols);
        long blocks = (cols + block - 1) / block;
        Tensor w = weight.to_type(ScalarType.Float32);
        Tensor padded = Pad(w, blocks * block).view(rows, blocks, block);

        double maxCode = (1 << bits) - 1;
        Tensor min = padded.amin(new long[] { -1 }, keepdim: true).clamp(max: 0);  // ranges include 0, as in GPTQ/AWQ
        Tensor max = padded.amax(new long[] { -1 }, keepdim: true).clamp(min: 0);
        // Floor above fp16's smallest subnormal: an all-zero block would otherwise get scale 0 and a 0/0 zero point.
        Tensor scale = ((max - min) / maxCode).clamp(min: MinScale).to_type(ScalarType.Float16).to_type(ScalarType.Float32);
        Tensor zero = (-min / scale).round().clamp(0, maxCode);
        Tensor codes = ((padded / scale).round() + zero).clamp(0, maxCode).to_type(ScalarType.Byte)
            .view(rows, blocks * block).narrow(1, 0, cols).contiguous();

        return new QuantizedMatrix
        {
            Bits = bits, BlockSize = block, Rows = rows, Cols = cols,
            PackedCodes = BitPacking.Pack(codes, bits).MoveToOuterDisposeScope(),
            Scales = scale.squeeze(-1).to_type(ScalarType.Float16).MoveToOuterDisposeScope(),
            Zeros = zero.squeeze(-1).to_type(ScalarType.Float16).MoveToOuterDisposeScope(),
        };
    }

    public static Tensor Dequantize(QuantizedMatrix q)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        long blocks = q.BlocksPerRow, block = q.BlockSize;
        Tensor w = q.IsPaperLayout ? Methods.PaperBlockQuantizer.DequantizeBlocks(q)
            : ((Pad(q.UnpackCodes().to_type(ScalarType.Float32), blocks * block).view(q.Rows, blocks,
                block) - q.Zeros.to_type(ScalarType.Float32).unsqueeze(-1)) * q.Scales.to_type(ScalarType.Float32).unsqueeze(-1))
                .view(q.Rows, blocks * block).narrow(1, 0, q.Cols).contiguous();
        if (q.OutlierIndices is not null && q.OutlierValues is not null && q.OutlierCount > 0)
        {
            Tensor flat = w.view(-1);
            Tensor index = (q.OutlierIndices[TensorIndex.Colon, 0] * q.Cols + q.OutlierIndices[TensorIndex.Colon, 1]).to(w.device);
            flat.index_put_(q.OutlierValues.to_type(ScalarType.Float32).to(w.device), index);
        }
        return w.MoveToOuterDisposeScope();
    }

    /// <summary>Pads columns to <paramref name="width"/> by repeating each row's last value, which leaves every
    /// block's min and max unchanged (a ragged last block is quantized on its own values only).</summary>
    static Tensor Pad(Tensor w, long width)
    {
        long extra = width - w.shape[1];
        if (extra == 0) return w;
        return torch.cat(new[] { w, w.narrow(1, w.shape[1] - 1, 1).expand(w.shape[0], extra) }, 1);
    }
}
