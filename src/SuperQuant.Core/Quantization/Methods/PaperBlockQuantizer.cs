using SuperQuant.Manifest;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Quantization.Methods;

/// <summary>The paper's weight quantizer settings; <see cref="TensorBlock"/> as block size is the whole tensor.</summary>
public sealed record PaperQuantizerSettings
{
    public const int TensorBlock = -1;
    public int Bits { get; init; } = 4;
    /// <summary>Elements per block of the flattened tensor: a power of two from 32, <see cref="TensorBlock"/>, or 0 for
    /// one block per row (the reference's "channel").</summary>
    public int BlockSize { get; init; } = 128;
    public ClipMethod Clip { get; init; } = ClipMethod.ZScore;
    /// <summary>The reference's clip_threshold: z, a fraction, or an IQR multiple; +Infinity (or Clip None) = no clip.</summary>
    public double Threshold { get; init; } = double.PositiveInfinity;
    public LevelKind Levels { get; init; } = LevelKind.Integer;
}

/// <summary>
/// The Super Weight paper's block quantizer as its authors' code computes it (LLMSuperWeight
/// <c>outliers/functional/quantization.py</c>, <c>quantize_blockwise</c>), for reproducing the paper: the tensor is
/// flattened and cut into blocks of <c>BlockSize</c> consecutive elements (blocks may span rows; the whole tensor can
/// be one block); when the block size does not divide the tensor, the whole tensor is one block and thresholds are
/// tensor-wide, as in the reference. Each block is clipped to +/- its threshold, then quantized with a float offset
/// (the block minimum, no integer zero point, 0 not forced into the range); scales and minima stay fp32.
/// Two differences, on purpose: a block whose max equals its min (the reference divides by zero and writes NaN) is
/// stored as its constant value; and with the shifted grid the block maximum maps to 2^bits - 0.5 (+/- an ulp), which
/// the reference rounds half-to-even to code 2^bits, one level more than the bits hold: we clamp it to 2^bits - 1.
/// Arithmetic is fp32 (the reference runs in the model's dtype, usually fp16).
/// Unlike <see cref="BlockRtnQuantizer"/> this is a tensor-op reference path only: it is for reproducing the paper, and
/// its codes are stored in the packed artifact's "paper" layout (codes + per-block fp32 min and max).
/// </summary>
public static class PaperBlockQuantizer
{
    /// <summary>QLoRA's NF4 levels and the reference's NF3 levels (as listed in its code).</summary>
    public static readonly float[] Nf4 =
    {
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f, -0.18477343022823334f,
        -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
    };
    public static readonly float[] Nf3 = { -1f, -0.5350227355957031f, -0.2469314038753510f, 0f, 0.1833375245332718f, 0.3819939494132996f,
        0.6229856610298157f, 1f };

    public static void Validate(PaperQuantizerSettings s)
    {
        if (s.Bits < BlockRtnQuantizer.MinBits || s.Bits > BlockRtnQuantizer.MaxBits)
            throw new SuperQuantException(ErrorCodes.UnsupportedQuantization,
                $"{s.Bits}-bit weights are not supported (supported: {BlockRtnQuantizer.MinBits}..{BlockRtnQuantizer.MaxBits})");
        if (s.BlockSize != 0 && s.BlockSize != PaperQuantizerSettings.TensorBlock && (s.BlockSize < 32 || (s.BlockSize & (s.BlockSize - 1)) != 0))
            throw new SuperQuantException(ErrorCodes.UnsupportedQuantization,
                $"paper block size {s.BlockSize}: expected a power of two from 32, channel or tensor");
        if (s.Levels == LevelKind.NormalFloat && s.Bits is not (3 or 4))
            throw new SuperQuantException(ErrorCodes.UnsupportedQuantization, "normal-float levels exist for 3 and 4 bits only (NF3, NF4)");
        if (s.Clip is ClipMethod.BlockPercentage or ClipMethod.TensorPercentage && double.IsFinite(s.Threshold) && !(s.Threshold >= 0 && s.Threshold < 1))
            throw new SuperQuantException(ErrorCodes.UnsupportedQuantization, $"a percentage clip threshold is a fraction in [0, 1), not {s.Threshold}");
    }

    /// <summary>The block length actually used for a tensor of <paramref name="rows"/> x <paramref name="cols"/>.</summary>
    public static long EffectiveBlock(PaperQuantizerSettings s, long rows, long cols)
    {
        long numel = rows * cols;
        long block = s.BlockSize == 0 ? cols : s.BlockSize == PaperQuantizerSettings.TensorBlock ? numel : s.BlockSize;
        return numel % block == 0 ? block : numel; // the reference's fallback: one block, tensor-wide thresholds
    }

    public static QuantizedMatrix Quantize(Tensor weight, PaperQuantizerSettings s)
    {
        Validate(s);
        if (weight.dim() != 2) throw new ArgumentException("expected a [rows, cols] matrix");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        long rows = weight.shape[0], cols = weight.shape[1];
        long block = EffectiveBlock(s, rows, cols);
        long requested = s.BlockSize == 0 ? cols : s.BlockSize == PaperQuantizerSettings.TensorBlock ? rows * cols : s.BlockSize;
        Tensor w = Clip(weight.to_type(ScalarType.Float32).reshape(-1, block), s, tensorWide: (rows * cols) % requested != 0);
        Tensor min = w.amin(new long[] { 1 }, keepdim: true);
        Tensor max = w.amax(new long[] { 1 }, keepdim: true);
        Tensor codes = Codes(w, min, max, s);
        return new QuantizedMatrix
        {
            Bits = s.Bits, BlockSize = (int)Math.Min(block, int.MaxValue), Rows = rows, Cols = cols,
            Layout = s.Levels switch
            {
                LevelKind.ShiftedInteger => MatrixLayout.PaperShifted,
                LevelKind.NormalFloat => MatrixLayout.PaperNormalFloat,
                _ => MatrixLayout.Paper
            },
            FlatBlock = block,
            PackedCodes = BitPacking.Pack(codes.view(rows, cols).to_type(ScalarType.Byte), s.Bits).MoveToOuterDisposeScope(),
            Scales = min.view(-1).MoveToOuterDisposeScope(),
            Zeros = max.view(-1).MoveToOuterDisposeScope(),
        };
    }

    /// <summary>Clamps each block (a row of <paramref name="w"/>) to +/- its threshold. <paramref name="tensorWide"/>:
    /// the block size did not divide the tensor, so, as in the reference, percentage thresholds come from the whole
    /// tensor (they already do for one block).</summary>
    static Tensor Clip(Tensor w, PaperQuantizerSettings s, bool tensorWide)
    {
        if (s.Clip == ClipMethod.None || double.IsPositiveInfinity(s.Threshold)) return w;
        Tensor a = w.abs();
        long n = w.shape[1];
        Tensor threshold;
        switch (s.Clip)
        {
            case ClipMethod.ZScore:
                threshold = a.std(1, unbiased: true, keepdim: true) * s.Threshold + a.mean(new long[] { 1 }, keepdim: true);
                break;
            case ClipMethod.BlockPercentage when !tensorWide:
                {
                    long k = Math.Max((long)(n * s.Threshold + 1), 1);
                    threshold = a.topk((int)Math.Min(k, n), 1).values.narrow(1, Math.Min(k, n) - 1, 1);
                    break;
                }
            case ClipMethod.BlockPercentage:
            case ClipMethod.TensorPercentage:
                {
                    long numel = a.numel();
                    long k = Math.Max((long)(numel * s.Threshold), 1);
                    threshold = a.view(-1).topk((int)k).values.narrow(0, k - 1, 1).view(1, 1);
                    break;
                }
            case ClipMethod.Iqr:
                {
                    Tensor sorted = a.sort(1).Values;
                    Tensor q1 = Quantile(sorted, 0.25), q3 = Quantile(sorted, 0.75);
                    threshold = q3 + (q3 - q1) * s.Threshold;
                    break;
                }
            default: throw new ArgumentOutOfRangeException(nameof(s));
        }
        return torch.minimum(torch.maximum(w, -threshold), threshold);
    }

    /// <summary>torch.quantile's default ('linear') on rows already sorted ascending.</summary>
    static Tensor Quantile(Tensor sorted, double q)
    {
        long n = sorted.shape[1];
        double pos = q * (n - 1);
        long lo = (long)Math.Floor(pos), hi = Math.Min(lo + 1, n - 1);
        Tensor a = sorted.narrow(1, lo, 1), b = sorted.narrow(1, hi, 1);
        return a + (b - a) * (pos - lo);
    }

    static Tensor Codes(Tensor w, Tensor min, Tensor max, PaperQuantizerSettings s)
    {
        Tensor range = max - min;
        Tensor flat = range.eq(0); // constant block: code 0 decodes to min exactly
        Tensor safe = torch.where(flat, torch.ones_like(range, device: range.device), range);
        double top = (1 << s.Bits) - 1;
        switch (s.Levels)
        {
            case LevelKind.Integer:
                {
                    Tensor scale = top / safe;
                    return ((w - min) * scale).round().clamp(0, top).masked_fill(flat, 0);
                }
            case LevelKind.ShiftedInteger:
                {
                    Tensor scale = ((1 << s.Bits) - 0.01) / safe;
                    return ((w - min) * scale - 0.49).round().clamp(0, top).masked_fill(flat, 0);
                }
            default:
                {
                    Tensor scale = 2.0 / safe;
                    Tensor x = (w - min) * scale - 1.0;
                    Tensor poles = torch.tensor(s.Bits == 4 ? Nf4 : Nf3, device: w.device);
                    // argmin picks the first of two equally near poles, as the reference's torch.argmin does.
                    return (x.unsqueeze(-1) - poles).abs().argmin(-1).masked_fill(flat, 0);
                }
        }
    }

    /// <summary>The dequantized [rows, cols] fp32 matrix (outliers not applied; <see cref="BlockRtnQuantizer.Dequantize"/>
    /// dispatches here and applies them).</summary>
    public static Tensor DequantizeBlocks(QuantizedMatrix q)
    {
        using var scope = torch.NewDisposeScope();
        long block = q.FlatBlock;
        Tensor codes = q.UnpackCodes().to_type(ScalarType.Float32).view(-1, block);
        Tensor min = q.Scales.to_type(ScalarType.Float32).view(-1, 1), max = q.Zeros.to_type(ScalarType.Float32).view(-1, 1);
        Tensor range = max - min;
        Tensor flat = range.eq(0);
        Tensor safe = torch.where(flat, torch.ones_like(range, device: range.device), range);
        Tensor w = q.Layout switch
        {
            MatrixLayout.Paper => codes / (((1 << q.Bits) - 1) / safe) + min,
            MatrixLayout.PaperShifted => (codes + 0.49) / (((1 << q.Bits) - 0.01) / safe) + min,
            _ => (torch.tensor(q.Bits == 4 ? Nf4 : Nf3, device: codes.device).index_select(0,
                codes.view(-1).to_type(ScalarType.Int64)).view(codes.shape) + 1.0) / (2.0 / safe) + min,
        };
        w = torch.where(flat, min.expand_as(w), w);
        return w.view(q.Rows, q.Cols).MoveToOuterDisposeScope();
    }
}
