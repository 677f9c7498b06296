namespace SuperQuant.Models.Gguf;

/// <summary>ggml tensor types this project writes and reads (values from ggml.h; the gaps are types we do not handle).</summary>
public enum GgmlType : uint
{
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, IQ3_XXS = 18, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23, BF16 = 30,
}

/// <summary>
/// One ggml block format: how many weights a block holds, how many bytes it takes, and one quantize and one
/// dequantize function over whole rows (ggml's type traits). Each format is its own class beside this one,
/// ported from ggml-quants.c line by line, with the same float arithmetic in the same order so the bytes equal
/// llama.cpp's (tests compare them with llama.cpp's own functions). Hand-written: no .NET package implements them.
/// </summary>
public abstract class GgmlFormat
{
    public abstract GgmlType Type { get; }
    /// <summary>Weights per block (32 for the legacy types, 256 for the k-quants, 1 for the float types).</summary>
    public abstract int BlockSize { get; }
    public abstract int BlockBytes { get; }
    /// <summary>Whether <see cref="QuantizeRow"/> uses importance weights (llama.cpp's imatrix) when given.</summary>
    public virtual bool UsesImportance => false;

    /// <summary>Quantizes one row. <paramref name="importance"/> (one weight per column, or empty) steers the
    /// scale search as llama.cpp's imatrix does; empty selects the reference path (<c>quantize_row_*_ref</c>).</summary>
    public abstract void QuantizeRow(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> importance);

    public abstract void DequantizeRow(ReadOnlySpan<byte> y, Span<float> x);

    /// <summary>Codes per weight (0: not a grid format, e.g. F16). Every quantized format dequantizes element e of a
    /// block as <c>scale[e] * (code + CodeShift) - min[e]</c> with code in 0..Levels-1, in exactly that float
    /// arithmetic; searches that choose the codes themselves (<see cref="Gptq"/>) read a block's
    /// grid, pick codes, and write them back without touching its scales (GgmlCodes.cs).</summary>
    public virtual int Levels => 0;
    public virtual int CodeShift => 0;
    /// <summary>The grid value of a code: code + CodeShift on the evenly spaced grids; a table on the non-linear ones
    /// (IQ4's kvalues_iq4nl), where a block element is scale[e] * CodeValue(code) - min[e].</summary>
    public virtual float CodeValue(int code) => code + CodeShift;
    public virtual bool EvenGrid => true;

    /// <summary>Lattice formats (IQ3_XXS, IQ3_S, IQ2_S): weights come in octets of 8 sharing a scale and sign bits, each
    /// octet one or two grid points. For error-compensated rows: the octets' scales, the dequantized value of a level,
    /// and writing one octet's choice (nearest grid point and signs) into a block, keeping its scales.</summary>
    internal virtual IQLattice? Lattice => null;
    public bool IsLattice => Lattice is not null;
    internal virtual float[] LatticeValues => Array.Empty<float>();
    internal virtual int LatticeMaxLevel => 0;
    /// <summary>Whether an octet's 8 signs must have even parity (IQ3_XXS stores 7 and derives the 8th).</summary>
    internal virtual bool EvenSignParity => false;
    internal virtual void ReadOctetScales(ReadOnlySpan<byte> block, Span<float> scale) => throw new NotSupportedException($"{Type} is not a lattice format");
    internal virtual void WriteOctet(Span<byte> block, int octet, ReadOnlySpan<int> gridIndices, int signs)
        => throw new NotSupportedException($"{Type} is not a lattice format");
    /// <summary>The lowest code a search may choose (0 but for Q8_0: see there).</summary>
    public virtual int LowestCode => 0;
    /// <summary>Per element of one block: the grid's step and offset.</summary>
    public virtual void ReadGrid(ReadOnlySpan<byte> block, Span<float> scale, Span<float> min) => throw new NotSupportedException($"{Type} has no code grid");
    public virtual void ReadCodes(ReadOnlySpan<byte> block, Span<byte> codes) => throw new NotSupportedException($"{Type} has no code grid");
    /// <summary>Replaces one block's codes, keeping its scales.</summary>
    public virtual void WriteCodes(Span<byte> block, ReadOnlySpan<byte> codes) => throw new NotSupportedException($"{Type} has no code grid");

    public long RowBytes(long n) => n / BlockSize * BlockBytes;
    public bool Supports(long rowLength) => rowLength % BlockSize == 0;
    public double BitsPerWeight => 8.0 * BlockBytes / BlockSize;
    public string Name => Type.ToString();

    static readonly Dictionary<GgmlType, GgmlFormat> All = new GgmlFormat[]
    {
        new F32Format(), new F16Format(), new BF16Format(), new Q4_0Format(), new Q4_1Format(), new Q5_0Format(), new Q5_1Format(),
        new Q8_0Format(), new Q2_KFormat(), new Q3_KFormat(), new Q4_KFormat(), new Q5_KFormat(), new Q6_KFormat(),
        new IQ4_NLFormat(), new IQ4_XSFormat(), new IQ3_XXSFormat(), new IQ3_SFormat(), new IQ2_SFormat(),
    }.ToDictionary(f => f.Type);

    public static GgmlFormat Of(GgmlType type) => All.TryGetValue(type, out var f) ? f
        : throw new ArgumentOutOfRangeException(nameof(type), type, "unsupported ggml type");
    public static bool IsKnown(uint type) => All.ContainsKey((GgmlType)type);
}

/// <summary>Whole-tensor helpers over <see cref="GgmlFormat"/>: rows quantized in parallel (each row is independent,
/// as in llama.cpp's quantizer, so the bytes do not depend on the thread count).</summary>
public static class GgmlQuants
{
    public static long RowBytes(GgmlType type, long n) => GgmlFormat.Of(type).RowBytes(n);

    public static bool Supports(GgmlType type, long rowLength) => GgmlFormat.Of(type).Supports(rowLength);

    /// <summary>Quantizes <paramref name="x"/> (rows of <paramref name="rowLength"/>) into <paramref name="y"/>.</summary>
    public static unsafe void Quantize(GgmlType type, ReadOnlySpan<float> x, long rowLength, Span<byte> y, ReadOnlySpan<float> importance = default)
    {
        var f = GgmlFormat.Of(type);
        if (!f.Supports(rowLength)) throw new ArgumentException($"{type} needs rows that are a multiple of {f.BlockSize}; got {rowLength}");
        if (x.Length % rowLength != 0) throw new ArgumentException("the data is not a whole number of rows");
        if (!importance.IsEmpty && importance.Length != rowLength) throw new ArgumentException("importance needs one weight per column");
        long rows = x.Length / rowLength, rowBytes = f.RowBytes(rowLength);
        if (y.Length != rows * rowBytes) throw new ArgumentException("output size does not match");
        int n = (int)rowLength, nb = (int)rowBytes, nw = importance.Length;
        fixed (float* px = x) fixed (byte* py = y) fixed (float* pw = importance)
        {
            nint X = (nint)px, Y = (nint)py, W = (nint)pw;
            // Chunks of rows rather than single rows: thread hand-off costs more than a short row.
            long chunk = Math.Max(1, 65536 / rowLength);
            Parallel.For(0, (rows + chunk - 1) / chunk, c =>
            {
                var w = nw == 0 ? ReadOnlySpan<float>.Empty : new ReadOnlySpan<float>((float*)W, nw);
                for (long r = c * chunk; r < Math.Min(rows, (c + 1) * chunk); r++)
                    f.QuantizeRow(new ReadOnlySpan<float>((float*)X + r * n, n), new Span<byte>((byte*)Y + r * nb, nb), w);
            });
        }
    }

    /// <summary><see cref="Quantize(GgmlType, ReadOnlySpan{float}, long, Span{byte}, ReadOnlySpan{float})"/> with the
    /// scale searches in their line-by-line form (one trial scale at a time, one thread): the specification the vector
    /// searches are tested against.</summary>
    public static void QuantizeReference(GgmlType type, ReadOnlySpan<float> x, long rowLength, Span<byte> y, ReadOnlySpan<float> importance = default)
    {
        var f = GgmlFormat.Of(type);
        long rows = x.Length / rowLength, rowBytes = f.RowBytes(rowLength);
        if (x.Length % rowLength != 0 || y.Length != rows * rowBytes) throw new ArgumentException("sizes do not match");
        bool was = KQuantMath.t_referenceSearch;
        KQuantMath.t_referenceSearch = true;
        try
        {
            for (long r = 0; r < rows; r++)
                f.QuantizeRow(x.Slice((int)(r * rowLength), (int)rowLength), y.Slice((int)(r * rowBytes), (int)rowBytes), importance);
        }
        finally { KQuantMath.t_referenceSearch = was; }
    }

    public static byte[] Quantize(GgmlType type, float[] x, long rowLength, float[]? importance = null)
    {
        var y = new byte[x.Length / rowLength * RowBytes(type, rowLength)];
        Quantize(type, x, rowLength, y, importance);
        return y;
    }

    public static float[] Dequantize(GgmlType type, ReadOnlySpan<byte> y, long n)
    {
        var f = GgmlFormat.Of(type);
        var x = new float[n];
        long blocks = n / f.BlockSize;
        f.DequantizeRow(y[..(int)(blocks * f.BlockBytes)], x);
        return x;
    }
}
