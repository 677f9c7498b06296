using SuperQuant.Core;
using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Llama;
using SuperQuant.Core.Quantization;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Manifest;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Tests;

[TestClass]
public sealed class QuantizationTests
{
    static Tensor RandomMatrix(long rows, long cols, int seed)
    {
        var g = new Generator((ulong)seed);
        return torch.randn(new[] { rows, cols }, generator: g) * 0.1f;
    }

    /// <summary>Plain-loop reference of the block RTN formula, to check the tensor implementation code by code.</summary>
    static (byte[] codes, float[] dequant) ReferenceRtn(float[] w, int rows, int cols, int bits, int block)
    {
        var codes = new byte[w.Length];
        var deq = new float[w.Length];
        int maxCode = (1 << bits) - 1;
        for (int r = 0; r < rows; r++)
            for (int b0 = 0; b0 < cols; b0 += block)
            {
                int b1 = Math.Min(cols, b0 + block);
                float min = 0, max = 0;
                for (int c = b0; c < b1; c++) { min = Math.Min(min, w[r * cols + c]); max = Math.Max(max, w[r * cols + c]); }
                float scale = (float)(Half)Math.Max((max - min) / maxCode, BlockRtnQuantizer.MinScale);
                float zero = Math.Clamp(MathF.Round(-min / scale, MidpointRounding.ToEven), 0, maxCode);
                for (int c = b0; c < b1; c++)
                {
                    float q = Math.Clamp(MathF.Round(w[r * cols + c] / scale, MidpointRounding.ToEven) + zero, 0, maxCode);
                    codes[r * cols + c] = (byte)q;
                    deq[r * cols + c] = (q - zero) * scale;
                }
            }
        return (codes, deq);
    }

    [TestMethod]
    [DataRow(4, 128, 64L, 256L)]
    [DataRow(3, 32, 7L, 100L)]   // rows share bytes: the unpacked-codes path
    [DataRow(2, 0, 5L, 70L)]
    [DataRow(8, 64, 3L, 200L)]
    [DataRow(4, 4096, 9L, 172L)] // block larger than the row
    public void DequantizingWhileQuantizingEqualsTheSeparatePass(int bits, int block, long rows, long cols)
    {
        using var w = torch.randn(rows, cols, generator: torch.manual_seed(11)).mul_(0.05); // host
        using var apart = FastBlockRtn.Quantize(w, bits, block);
        using var expected = BlockRtnQuantizer.Dequantize(apart);
        using var into = torch.empty(rows, cols); // host
        using var fused = FastBlockRtn.Quantize(w, bits, block, into);
        Assert.IsTrue(into.equal(expected).all().item<bool>(), "into another buffer");
        Assert.IsTrue(fused.PackedCodes.equal(apart.PackedCodes).all().item<bool>() && fused.Scales.equal(apart.Scales).all().item<bool>()
            && fused.Zeros.equal(apart.Zeros).all().item<bool>());
        using var inPlace = w.clone();
        using var _ = FastBlockRtn.Quantize(inPlace, bits, block, inPlace);
        Assert.IsTrue(inPlace.equal(expected).all().item<bool>(), "in place (each row read whole before it is overwritten)");
        // The model quantizer's fused path, with a super weight restored: the same matrix the artifact loader makes.
        using var m = w.clone();
        var o = new WeightQuantizationOptions { Bits = bits, BlockSize = block, Z = double.PositiveInfinity };
        var sws = new[] { new SuperWeight(0, (int)rows - 1, 3, 0f, 1) };
        using var q = ModelQuantizer.QuantizeMatrix(m, new LinearSite(0, Projection.Down), o, double.PositiveInfinity, sws, dequantizeInPlace: true,
            out bool done);
        Assert.IsTrue(done);
        using var loaded = BlockRtnQuantizer.Dequantize(q);
        Assert.IsTrue(m.equal(loaded).all().item<bool>(), "written back = what the loader dequantizes, super weight included");
    }

    [TestMethod]
    [DataRow(4, 32)]
    [DataRow(3, 64)]
    [DataRow(4, 48 * 0 + 0)]   // per-channel
    [DataRow(8, 128)]
    [DataRow(2, 32)]
    public void BlockRtnMatchesThePlainLoopReference(int bits, int block)
    {
        const int rows = 6, cols = 100; // 100 is not a multiple of 32/64/128: ragged last blocks
        using Tensor w = RandomMatrix(rows, cols, 5);
        using QuantizedMatrix q = BlockRtnQuantizer.Quantize(w, bits, block);
        var (codes, deq) = ReferenceRtn(w.data<float>().ToArray(), rows, cols, bits, block == 0 ? cols : block);
        using (Tensor unpacked = q.UnpackCodes()) CollectionAssert.AreEqual(codes, unpacked.data<byte>().ToArray());
        using Tensor d = BlockRtnQuantizer.Dequantize(q);
        float[] got = d.data<float>().ToArray();
        for (int i = 0; i < got.Length; i++) Assert.AreEqual(deq[i], got[i], 1e-6f, $"element {i}");
        Assert.AreEqual(block == 0 ? 1 : (cols + block - 1) / block, q.BlocksPerRow);
    }

    [TestMethod]
    [DataRow(8)]
    [DataRow(4)]
    public void ZeroAndConstantBlocksDequantizeExactly(int bits)
    {
        using Tensor w = torch.zeros(3, 64);
        w[1] = torch.full(64, 0.25f);
        w[2, 0] = torch.tensor(1.5f);
        using QuantizedMatrix q = BlockRtnQuantizer.Quantize(w, bits, 32);
        using Tensor d = BlockRtnQuantizer.Dequantize(q);
        Assert.IsTrue(d.isfinite().all().item<bool>(), "no NaN from all-zero blocks");
        Assert.AreEqual(0f, d[0].abs().max().item<float>());
        Assert.AreEqual(0f, d[2, 1].item<float>());
        Assert.AreEqual(0.25f, d[1, 5].item<float>(), 0.25f / ((1 << bits) - 1));
    }

    [TestMethod]
    [DataRow(4, 128, 64, 1000)]
    [DataRow(3, 64, 7, 100)]
    [DataRow(8, 32, 5, 77)]
    [DataRow(2, 0, 9, 300)]
    [DataRow(5, 4096, 3, 5000)]
    [DataRow(4, 32, 5, 77)]     // rows share a byte: codes first, then one pack
    [DataRow(3, 128, 4, 256)]
    public void FastPathIsIdenticalToTheTensorReference(int bits, int block, int rows, int cols)
    {
        using Tensor w = RandomMatrix(rows, cols, bits * 100 + rows);
        w[0, 3] = torch.tensor(0.9f); // an outlier
        w[rows - 1] = torch.zeros(cols); // an all-zero row
        using QuantizedMatrix reference = BlockRtnQuantizer.Quantize(w, bits, block);
        using QuantizedMatrix fast = FastBlockRtn.Quantize(w, bits, block);
        Assert.IsTrue(fast.PackedCodes.equal(reference.PackedCodes).all().item<bool>(), "packed codes");
        Assert.IsTrue(fast.Scales.equal(reference.Scales).all().item<bool>(), "scales");
        Assert.IsTrue(fast.Zeros.equal(reference.Zeros).all().item<bool>(), "zeros");
    }

    [TestMethod]
    [DataRow(4, 128, 64, 1000)]
    [DataRow(3, 64, 7, 100)]    // rows do not end on a byte
    [DataRow(8, 32, 5, 77)]
    [DataRow(2, 0, 9, 300)]
    [DataRow(5, 4096, 3, 5000)]
    [DataRow(7, 32, 3, 33)]     // codes straddle bytes; the last code ends inside the padding
    public void FastDequantizationIsIdenticalToTheTensorReference(int bits, int block, int rows, int cols)
    {
        using Tensor w = RandomMatrix(rows, cols, bits * 10 + cols);
        w[0, 3] = torch.tensor(-1.7f);
        using QuantizedMatrix plain = BlockRtnQuantizer.Quantize(w, bits, block);
        // With outliers kept exactly (as the super-aware method stores super weights).
        using QuantizedMatrix q = new()
        {
            Bits = plain.Bits, BlockSize = plain.BlockSize, Rows = plain.Rows, Cols = plain.Cols,
            PackedCodes = plain.PackedCodes.clone(), Scales = plain.Scales.clone(), Zeros = plain.Zeros.clone(),
            OutlierIndices = torch.tensor(new long[] { 0, 3, rows - 1, cols - 1 }, new long[] { 2, 2 }),
            OutlierValues = torch.tensor(new[] { -1.7f, 2.5f }).to_type(ScalarType.Float16),
        };
        using Tensor reference = BlockRtnQuantizer.Dequantize(q);
        using Tensor into = torch.full(rows, cols, float.NaN);
        FastBlockRtn.DequantizeInto(q, into);
        Assert.IsTrue(into.equal(reference).all().item<bool>(), "DequantizeInto, bit for bit");
        using Tensor roundTrip = torch.full(rows, cols, float.NaN);
        FastBlockRtn.QuantizeDequantizeInto(w, bits, block, roundTrip);
        using Tensor plainReference = BlockRtnQuantizer.Dequantize(plain);
        Assert.IsTrue(roundTrip.equal(plainReference).all().item<bool>(), "QuantizeDequantizeInto, bit for bit");
    }

    [TestMethod]
    [DataRow(4, 172)]   // stories260K's down_proj width: 172 = 21 whole groups of 8 + 4 codes
    [DataRow(2, 300)]
    [DataRow(6, 100)]
    [DataRow(3, 100)]   // rows do not end on a byte: packed as one stream
    public void PackingWritesOnlyTheBytesARowOwns(int bits, int cols)
    {
        const int rows = 64;
        using Tensor w = RandomMatrix(rows, cols, 21);
        long bytes = BitPacking.PackedBytes((long)rows * cols, bits);
        using Tensor buffer = torch.full(bytes + 16, 0xAB, ScalarType.Byte);
        using Tensor packed = buffer.narrow(0, 0, bytes);
        long blocks = (cols + 31) / 32;
        using Tensor scales = torch.empty(rows, blocks, ScalarType.Float16), zeros = torch.empty(rows, blocks, ScalarType.Float16);
        FastBlockRtn.QuantizeInto(w, bits, 32, packed, scales, zeros);
        using Tensor tail = buffer.narrow(0, bytes, 16);
        Assert.IsTrue((tail == 0xAB).all().item<bool>(), "nothing written past the end");
        using QuantizedMatrix reference = BlockRtnQuantizer.Quantize(w, bits, 32);
        Assert.IsTrue(packed.equal(reference.PackedCodes).all().item<bool>(), "every row intact (no neighbour overwrote it)");
        for (int run = 0; run < 5; run++)
        {
            using QuantizedMatrix again = FastBlockRtn.Quantize(w, bits, 32);
            Assert.IsTrue(again.PackedCodes.equal(reference.PackedCodes).all().item<bool>(), $"run {run}: same bytes every time");
        }
    }

    [TestMethod]
    public void QuantizeIntoReusedBuffersLeavesNothingFromThePreviousMatrix()
    {
        using Tensor a = RandomMatrix(32, 256, 1), b = RandomMatrix(32, 256, 2) * 3f;
        using Tensor packed = torch.full(BitPacking.PackedBytes(32 * 256, 4), 0xAB, ScalarType.Byte);
        using Tensor scales = torch.empty(32, 2, ScalarType.Float16), zeros = torch.empty(32, 2, ScalarType.Float16);
        FastBlockRtn.QuantizeInto(a, 4, 128, packed, scales, zeros);
        FastBlockRtn.QuantizeInto(b, 4, 128, packed, scales, zeros);
        using QuantizedMatrix fresh = BlockRtnQuantizer.Quantize(b, 4, 128);
        Assert.IsTrue(packed.equal(fresh.PackedCodes).all().item<bool>(), "codes");
        Assert.IsTrue(scales.equal(fresh.Scales).all().item<bool>(), "scales");
        Assert.IsTrue(zeros.equal(fresh.Zeros).all().item<bool>(), "zeros");
        Assert.ThrowsExactly<ArgumentException>(() => FastBlockRtn.QuantizeInto(b, 3, 128, packed, scales, zeros));
    }

    [TestMethod]
    [DataRow(Projection.Down, 4, 32)]
    [DataRow(Projection.Gate, 3, 64)]
    [DataRow(Projection.Q, 2, 0)]
    public void ZSearchErrorsEqualTheSlowQuantizeThenDequantizePath(Projection projection, int bits, int block)
    {
        // The tuner's fast site-major search must score each z exactly as quantizing the matrix for real would:
        // plain loop here over QuantizeMatrix -> Dequantize, the code path the shipped weights take.
        using Tensor w = RandomMatrix(24, 96, 5);
        w[7, 5] = torch.tensor(3.1f);   // super weight of layer 1 (down_proj [7, 5])
        w[5, 40] = torch.tensor(-2.2f); // gate/up row 5 feeds it: exempt from clipping
        using Tensor x = RandomMatrix(40, 96, 6) * 4f;
        var site = new LinearSite(1, projection);
        var supers = new[] { new SuperWeight(1, 7, 5, 3.1f, 0) };
        var o = new WeightQuantizationOptions { Bits = bits, BlockSize = block };
        var candidates = new[] { double.PositiveInfinity, 6, 3, 2, 1.5 };
        double[] fast = ZTuner.SiteErrors(w, x, site, o, candidates, supers);
        for (int c = 0; c < candidates.Length; c++)
        {
            using QuantizedMatrix q = ModelQuantizer.QuantizeMatrix(w, site, o, candidates[c], supers);
            using Tensor wq = BlockRtnQuantizer.Dequantize(q);
            using Tensor reference = x.matmul(w.t()), diff = x.matmul((w - wq).t());
            double slow = diff.pow(2).sum().item<float>() / reference.pow(2).sum().item<float>();
            Assert.AreEqual(slow, fast[c], slow * 1e-5, $"z = {candidates[c]}");
        }
        Assert.IsTrue(fast.Distinct().Count() >= 3, "the candidates' errors differ: clipping really happened");
    }

    [TestMethod]
    public void SuperAwareClippingSparesTheRowsThatFeedTheSuperWeight()
    {
        // Layer 2's super weight W_down[7, 5] reads down_proj input 5 = silu(gate row 5 . x) * (up row 5 . x).
        var superWeights = new[] { new SuperWeight(2, 7, 5, 1f, 1) };
        using Tensor gate = RandomMatrix(16, 128, 3);
        gate[5, 0] = torch.tensor(4f);   // the row that creates the super activation
        gate[9, 0] = torch.tensor(4f);   // an ordinary outlier
        var o = new WeightQuantizationOptions { Method = QuantMethod.SuperAware, Bits = 8, BlockSize = 0 };
        float Dequantized(LinearSite site, int row)
        {
            using QuantizedMatrix q = ModelQuantizer.QuantizeMatrix(gate, site, o, 2.5, superWeights);
            using Tensor d = BlockRtnQuantizer.Dequantize(q);
            return d[row, 0].item<float>();
        }
        Assert.AreEqual(4f, Dequantized(new LinearSite(2, Projection.Gate), 5), 0.02f, "gate row 5 is not clipped");
        Assert.IsLessThan(1f, Dequantized(new LinearSite(2, Projection.Gate), 9), "other rows are clipped");
        Assert.AreEqual(4f, Dequantized(new LinearSite(2, Projection.Up), 5), 0.02f, "up row 5 is not clipped");
        Assert.IsLessThan(1f, Dequantized(new LinearSite(1, Projection.Gate), 5), "another layer's row 5 is clipped");
        Assert.IsLessThan(1f, Dequantized(new LinearSite(2, Projection.Q), 5), "q_proj is clipped");
    }

    [TestMethod]
    [DataRow(3)]
    [DataRow(4)]
    public void SmallerBlocksReconstructHeavyTailedWeightsBetter(int bits)
    {
        // Student-t(3) rows, like the synthetic benchmark model: nested blocks can only narrow each range.
        var g = new Generator(11);
        using Tensor chi2 = torch.randn(new long[] { 256, 512 }, generator: g).pow(2) + torch.randn(new long[] { 256, 512 }, generator: g).pow(2)
            + torch.randn(new long[] { 256, 512 }, generator: g).pow(2);
        using Tensor w = (torch.randn(new long[] { 256, 512 }, generator: g) / (chi2 / 3).sqrt() * 0.02f).contiguous();
        double previous = 0;
        foreach (int block in new[] { 32, 64, 128, 256, 512 })
        {
            using QuantizedMatrix q = FastBlockRtn.Quantize(w, bits, block);
            using Tensor d = BlockRtnQuantizer.Dequantize(q);
            double mse = (w - d).pow(2).mean().item<float>();
            Assert.IsGreaterThan(previous, mse, $"block {block}");
            previous = mse;
        }
    }

    [TestMethod]
    public void RtnErrorIsAtMostHalfAStepPerBlock()
    {
        using Tensor w = RandomMatrix(16, 256, 9);
        using QuantizedMatrix q = BlockRtnQuantizer.Quantize(w, 4, 64);
        using Tensor d = BlockRtnQuantizer.Dequantize(q);
        using Tensor err = (w - d).abs().view(16, 4, 64).amax(new long[] { -1 });
        using Tensor halfStep = q.Scales.to_type(ScalarType.Float32) / 2 + 1e-6f;
        Assert.IsTrue((err <= halfStep).all().item<bool>());
    }

    [TestMethod]
    public void PackingRoundTripsEveryWidthAndInt4IsLowNibbleFirst()
    {
        var rng = new Random(3);
        for (int bits = 2; bits <= 8; bits++)
        {
            foreach (int n in new[] { 1, 7, 8, 9, 1001 })
            {
                byte[] codes = Enumerable.Range(0, n).Select(_ => (byte)rng.Next(1 << bits)).ToArray();
                using Tensor c = torch.tensor(codes);
                using Tensor packed = BitPacking.Pack(c, bits);
                Assert.AreEqual(BitPacking.PackedBytes(n, bits), packed.numel(), $"{bits} bits, {n} codes");
                using Tensor back = BitPacking.Unpack(packed, bits, n);
                CollectionAssert.AreEqual(codes, back.data<byte>().ToArray(), $"{bits} bits, {n} codes");
            }
        }
        using Tensor two = BitPacking.Pack(torch.tensor(new byte[] { 1, 2, 15, 0 }), 4);
        CollectionAssert.AreEqual(new byte[] { 0x21, 0x0F, 0, 0 }, two.data<byte>().ToArray());
        using Tensor three = BitPacking.Pack(torch.tensor(new byte[] { 7, 0, 0, 0, 0, 0, 0, 5 }), 3);
        CollectionAssert.AreEqual(new byte[] { 0x07, 0x00, 0xA0 }, three.data<byte>().ToArray()); // 5 << 21
    }

    [TestMethod]
    public void UnsupportedBitsAndBlocksAreCodedErrors()
    {
        using Tensor w = RandomMatrix(4, 64, 1);
        foreach (var (bits, block) in new[] { (1, 32), (9, 32), (4, 16), (4, 8192) })
        {
            var e = Assert.ThrowsExactly<SuperQuantException>(() => BlockRtnQuantizer.Quantize(w, bits, block).Dispose());
            Assert.AreEqual(ErrorCodes.UnsupportedQuantization, e.Code);
        }
    }

    [TestMethod]
    public void SuperAwareQuantizationKeepsTheSuperWeightExactlyAndClipsTheRest()
    {
        using Tensor w = RandomMatrix(8, 128, 2);
        w[3, 77] = torch.tensor(4.0f); // a super weight far outside the distribution
        var site = new LinearSite(0, Projection.Down);
        var sw = new[] { new SuperWeight(0, 3, 77, 4.0f, 1) };
        var rtn = new WeightQuantizationOptions { Method = QuantMethod.Rtn, Bits = 4, BlockSize = 128 };
        var aware = rtn with { Method = QuantMethod.SuperAware };
        using var qr = ModelQuantizer.QuantizeMatrix(w, site, rtn, double.PositiveInfinity, sw);
        using var qa = ModelQuantizer.QuantizeMatrix(w, site, aware, 3.0, sw);
        using Tensor dr = BlockRtnQuantizer.Dequantize(qr), da = BlockRtnQuantizer.Dequantize(qa);
        Assert.AreEqual(4.0f, da[3, 77].item<float>(), "restored in fp16");
        Assert.AreEqual(1, qa.OutlierCount);
        // Without the outlier stretching its block, the rest of row 3 is reconstructed far better.
        using Tensor mask = torch.ones(8, 128, dtype: ScalarType.Bool);
        mask[3, 77] = torch.tensor(false);
        double errRtn = (w - dr).masked_select(mask).pow(2).sum().item<float>();
        double errAware = (w - da).masked_select(mask).pow(2).sum().item<float>();
        Assert.IsTrue(errAware < errRtn / 2, $"aware {errAware} vs rtn {errRtn}");
    }

    [TestMethod]
    public void ModelQuantizationDegradesGracefullyWithBitsAndTunesZ()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 3, Hidden = 64, Intermediate = 128, Heads = 4, KvHeads = 2 };
        var w = TinyCheckpointFactory.RandomWeights(spec);
        SuperWeightPlanter.BoostEmbeddingChannel(w, spec);
        SuperWeightPlanter.Plant(w, spec, 1, 17, 45);
        TinyCheckpointFactory.Write(dir.Path, spec, w);
        using var original = ModelLoader.Load(dir.Path);
        var detection = new SuperWeightDetector().Detect(original, new[] { 1, 2, 3, 4, 5 });
        var rng = new Random(1);
        int[] calib = Enumerable.Range(0, 64).Select(_ => rng.Next(48)).ToArray();
        int[] eval = Enumerable.Range(0, 96).Select(_ => rng.Next(48)).ToArray();
        var kl = new Dictionary<int, double>();
        foreach (int bits in new[] { 8, 3 })
        {
            using var model = ModelLoader.Load(dir.Path);
            using var result = ModelQuantizer.Quantize(model, new WeightQuantizationOptions { Bits = bits, BlockSize = 64 }, detection.SuperWeights, calib);
            Assert.AreEqual(21, result.Matrices.Count);
            Assert.AreEqual(bits == 8 ? 10 : 10, result.ZSearch.Count, "every candidate z scored");
            Assert.IsTrue(result.ZSearch.Any(s => s.Z == result.Z) && result.ZSearch.All(s => s.Error >= result.ZSearch.Min(x => x.Error)));
            Assert.AreEqual(5f, SuperWeightDetector.ReadWeight(model, 1, 17, 45), "super weight restored in the model");
            kl[bits] = Evaluator.Divergence(t => original.Forward(t), t => model.Forward(t), eval, 32, 16).KlDivergence.Value;
        }
        Assert.IsTrue(kl[8] < kl[3], $"8-bit KL {kl[8]} < 3-bit KL {kl[3]}");
        Assert.IsTrue(kl[8] < 1e-3, $"8-bit KL {kl[8]}");
    }
}
