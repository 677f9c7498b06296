using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Quantization;

/// <summary>
/// Block layout of an asymmetric round-to-nearest matrix ("sqrtn"): a [rows, cols] fp32 matrix is cut, row by row,
/// into blocks of <see cref="BlockSize"/> consecutive input columns (the last block of a row is shorter when the
/// block size does not divide cols). Each block has an fp16 scale and an fp16 zero point (an integer in
/// [0, 2^bits - 1]); each weight an unsigned code in [0, 2^bits - 1]. Dequantized value = (code - zero) * scale.
/// Sparse fp16 outliers (super weights) overwrite their positions after dequantization.
/// The <see cref="MatrixLayout.Paper"/> layouts (the Super Weight paper's quantizer, <see cref="Methods.PaperBlockQuantizer"/>)
/// cut the flattened matrix into blocks of <see cref="FlatBlock"/> elements instead, and keep each block's fp32 min
/// in <see cref="Scales"/> and fp32 max in <see cref="Zeros"/> ([blocks]).
/// </summary>
public enum MatrixLayout
{
    /// <summary>Row blocks, fp16 scale and integer zero point per block (the packed default).</summary>
    Row,
    /// <summary>Flattened blocks, fp32 min and max per block, w = code / ((2^bits - 1) / (max - min)) + min.</summary>
    Paper,
    /// <summary>As <see cref="Paper"/> with the reference's scale_shift grid.</summary>
    PaperShifted,
    /// <summary>As <see cref="Paper"/> with normal-float poles (codes index NF4/NF3 levels over [min, max]).</summary>
    PaperNormalFloat,
}

/// <summary>The storage shape of a quantized matrix, known before it is quantized (<see cref="ModelQuantizer.PlanMatrix"/>):
/// what a layer-streamed writer lays out in the file header before any weight is read.</summary>
public sealed record MatrixPlan(long Rows, long Cols, int Bits, int BlockSize, MatrixLayout Layout, long FlatBlock, long[] StatShape, int Outliers)
{
    public bool IsPaperLayout => Layout != MatrixLayout.Row;
    public long BlocksPerRow => (Cols + BlockSize - 1) / BlockSize;
    /// <summary>As <see cref="QuantizedMatrix.BitsPerWeight"/>.</summary>
    public double BitsPerWeight => (IsPaperLayout ? Bits + 64.0 / FlatBlock : Bits + 32.0 * BlocksPerRow / Cols) + Outliers * (16.0 + 64.0) / (Rows * Cols);
}

/// <summary>One quantized matrix: see <see cref="MatrixLayout"/> for the layouts.</summary>
public sealed class QuantizedMatrix : IDisposable
{
    public required int Bits { get; init; }
    /// <summary>Columns per block; equals <see cref="Cols"/> for per-channel quantization.</summary>
    public required int BlockSize { get; init; }
    public required long Rows { get; init; }
    public required long Cols { get; init; }
    /// <summary>The codes of the whole matrix, row-major, packed by <see cref="BitPacking"/> (LSB first, 8 codes per
    /// <c>Bits</c> bytes): the artifact's layout, so writing an artifact copies it as is.</summary>
    public required Tensor PackedCodes { get; init; }
    /// <summary>Row layout: [rows, blocks] float16 scales. Paper layouts: [blocks] float32 block minima.</summary>
    public required Tensor Scales { get; init; }
    /// <summary>Row layout: [rows, blocks] float16 zero points. Paper layouts: [blocks] float32 block maxima.</summary>
    public required Tensor Zeros { get; init; }
    public MatrixLayout Layout { get; init; } = MatrixLayout.Row;
    /// <summary>Paper layouts: elements per block of the flattened matrix (it divides Rows * Cols).</summary>
    public long FlatBlock { get; init; }
    public bool IsPaperLayout => Layout != MatrixLayout.Row;
    /// <summary>[k, 2] int64 (row, col) of weights kept in fp16, or null.</summary>
    public Tensor? OutlierIndices { get; init; }
    /// <summary>[k] float16 values of those weights, or null.</summary>
    public Tensor? OutlierValues { get; init; }

    /// <summary>[rows, cols] uint8 codes, unpacked (a new tensor; callers dispose it).</summary>
    public Tensor UnpackCodes() => BitPacking.Unpack(PackedCodes, Bits, Rows * Cols).view(Rows, Cols);

    public long BlocksPerRow => (Cols + BlockSize - 1) / BlockSize;
    public int OutlierCount => OutlierValues is null ? 0 : (int)OutlierValues.shape[0];

    /// <summary>Storage cost in bits per weight: codes + fp16 scale and zero per block + fp16 value and two int32
    /// coordinates per outlier.</summary>
    public double BitsPerWeight => (IsPaperLayout ? Bits + 64.0 / FlatBlock : Bits + 32.0 * BlocksPerRow / Cols) + OutlierCount * (16.0 + 64.0) / (Rows * Cols);

    public MatrixPlan Plan => new(Rows, Cols, Bits, BlockSize, Layout, FlatBlock, Scales.shape, OutlierCount);

    public void Dispose()
    {
        PackedCodes.Dispose(); Scales.Dispose(); Zeros.Dispose(); OutlierIndices?.Dispose(); OutlierValues?.Dispose();
    }
}
