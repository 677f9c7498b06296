using SuperQuant.LlamaCpp;
using SuperQuant.Models.Gguf;

namespace SuperQuant.Tests;

/// <summary>
/// Every GGUF block format against llama.cpp's own code (libggml-base.so as LLamaSharp loads it): our quantizer's
/// bytes equal ggml_quantize_chunk's on the same floats, with and without importance weights, and our dequantizer
/// equals dequantize_row_* on the same bytes, bit for bit. The data covers what breaks scale searches: Gaussian and
/// heavy-tailed rows, planted outliers (a super weight in a block), all-zero and constant blocks, tiny magnitudes.
/// </summary>
[TestClass]
public sealed class GgmlFormatTests
{
    public static IEnumerable<object[]> Types => new[]
    {
        GgmlType.F16, GgmlType.BF16, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.Q8_0,
        GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.IQ4_NL, GgmlType.IQ4_XS, GgmlType.IQ3_XXS,
            GgmlType.IQ3_S, GgmlType.IQ2_S,
    }.Select(t => new object[] { t });

    const int RowLength = 1024, Rows = 24;

    /// <summary>Rows of different character, deterministic.</summary>
    public static float[] TestMatrix(int seed, int rows = Rows, int rowLength = RowLength)
    {
        var rng = new Random(seed);
        var x = new float[rows * rowLength];
        double Gauss() => Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
        static double Square(double v) => v * v;
        for (int r = 0; r < rows; r++)
        {
            var row = x.AsSpan(r * rowLength, rowLength);
            int kind = r % 8;
            for (int i = 0; i < rowLength; i++)
            {
                double g = Gauss();
                row[i] = kind switch
                {
                    0 => (float)(0.02 * g),
                    1 => (float)Math.Clamp(0.02 * g / Math.Sqrt((Square(Gauss()) + Square(Gauss()) + Square(Gauss())) / 3), -1, 1), // Student-t(3)
                    2 => (float)(0.02 * g + 0.05),                      // all positive-ish: min > 0 paths
                    3 => (float)(1e-6 * g),                              // tiny
                    4 => i < 300 ? 0f : (float)(0.03 * g),               // whole zero blocks
                    5 => (i / 64) % 2 == 0 ? 0.0123f : (float)(-0.5 * g),// constant blocks
                    6 => (float)(0.02 * g),
                    _ => (float)(-0.02 * Math.Abs(g)),                   // all negative
                };
            }
            if (kind == 6) { row[37] = 2.5f; row[rowLength * 700 / 1024] = -3.1f; }          // super-weight-like outliers
        }
        return x;
    }

    static float[] Importance(int seed, int n)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(i => (float)(rng.NextDouble() * rng.NextDouble() * 10 + (i % 97 == 0 ? 50 : 0))).ToArray();
    }

    [TestMethod]
    [DynamicData(nameof(Types))]
    public void QuantizeMatchesLlamaCppBytes(GgmlType type)
    {
        foreach (int seed in new[] { 1, 2, 3 })
        {
            float[] x = TestMatrix(seed);
            byte[] ours = GgmlQuants.Quantize(type, x, RowLength);
            byte[] theirs = new byte[ours.Length];
            Assert.AreEqual(ours.Length, GgmlReference.Quantize((int)type, x, theirs, Rows, RowLength));
            AssertSameBytes(type, theirs, ours, $"reference path, seed {seed}");
        }
    }

    [TestMethod]
    [DynamicData(nameof(Types))]
    public void ImportanceWeightedQuantizeMatchesLlamaCppBytes(GgmlType type)
    {
        float[] x = TestMatrix(7);
        float[] w = Importance(8, RowLength);
        byte[] ours = GgmlQuants.Quantize(type, x, RowLength, w);
        byte[] theirs = new byte[ours.Length];
        GgmlReference.Quantize((int)type, x, theirs, Rows, RowLength, w);
        AssertSameBytes(type, theirs, ours, "imatrix path");
        if (GgmlFormat.Of(type).UsesImportance)
            CollectionAssert.AreNotEqual(GgmlQuants.Quantize(type, x, RowLength), ours, "importance weights changed nothing: the weighted path did not run");
    }

    /// <summary>The vector scale searches (eight trial scales a vector, the lanes after a winning trial redone because
    /// ggml moves the min there) write the line-by-line port's bytes, on more rows than llama.cpp is asked for above:
    /// all eight row kinds, a range of magnitudes, with and without importance.</summary>
    [TestMethod]
    [DynamicData(nameof(Types))]
    public void FastSearchWritesTheReferenceBytes(GgmlType type)
    {
        foreach (int seed in new[] { 21, 22, 23, 24 })
        {
            float[] x = TestMatrix(seed, rows: 64, rowLength: 512);
            float scale = MathF.Pow(10, seed - 23); // 0.01 .. 10
            for (int i = 0; i < x.Length; i++) x[i] *= scale;
            foreach (float[]? w in new[] { null, Importance(seed, 512) })
            {
                byte[] fast = GgmlQuants.Quantize(type, x, 512, w);
                byte[] reference = new byte[fast.Length];
                GgmlQuants.QuantizeReference(type, x, 512, reference, w);
                AssertSameBytes(type, reference, fast, $"seed {seed}, importance {w is not null}");
            }
        }
    }

    [TestMethod]
    [DynamicData(nameof(Types))]
    public void DequantizeMatchesLlamaCpp(GgmlType type)
    {
        float[] x = TestMatrix(11);
        Assert.IsTrue(x.All(float.IsFinite));
        byte[] bytes = new byte[GgmlQuants.RowBytes(type, RowLength) * Rows];
        GgmlReference.Quantize((int)type, x, bytes, Rows, RowLength);   // llama.cpp's bytes
        float[] ours = GgmlQuants.Dequantize(type, bytes, x.Length);
        var theirs = new float[x.Length];
        GgmlReference.Dequantize(type switch
        {
            GgmlType.F16 => "f16",
            GgmlType.BF16 => "bf16",
            _ => type.ToString().ToLowerInvariant().Replace("_k", "_K")
        }, bytes, theirs);
        for (int i = 0; i < x.Length; i++)
            if (BitConverter.SingleToInt32Bits(ours[i]) != BitConverter.SingleToInt32Bits(theirs[i]))
                Assert.Fail($"{type}: element {i}: ours {ours[i]:R}, llama.cpp {theirs[i]:R}");
        // And the format is a quantizer, not a copy: the round trip error is bounded by the format's bits.
        double err = 0, norm = 0;
        for (int i = 0; i < x.Length; i++) { err += (ours[i] - x[i]) * (double)(ours[i] - x[i]); norm += x[i] * (double)x[i]; }
        Assert.IsTrue(err / norm < 0.15, $"{type}: relative squared error {err / norm:G3}");
    }

    static void AssertSameBytes(GgmlType type, byte[] expected, byte[] actual, string what)
    {
        Assert.AreEqual(expected.Length, actual.Length);
        var f = GgmlFormat.Of(type);
        for (int i = 0; i < expected.Length; i++)
            if (expected[i] != actual[i])
            {
                long block = i / f.BlockBytes;
                Assert.Fail($"{type} {what}: first difference at byte {i} (block {block}, row {block * f.BlockSize / RowLength}, offset " +
                    $"{i % f.BlockBytes} in the block): llama.cpp {expected[i]}, ours {actual[i]}");
            }
    }
}
