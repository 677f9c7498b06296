using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Core.Quantization;
using SuperQuant.Core.Quantization.Methods;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Manifest;
using SuperQuant.Models.Artifacts;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Tests;

/// <summary>
/// The paper variant (<see cref="PaperBlockQuantizer"/>) against a plain-loop port of the Super Weight reference
/// code's <c>quantize_blockwise</c> (written here from its Python, element by element, in float arithmetic with
/// sorting for the order statistics), and hand-computed cases.
/// </summary>
[TestClass]
public sealed class PaperQuantizerTests
{
    /// <summary>quantize_blockwise, one element at a time: returns the dequantized flat weights.</summary>
    static float[] ReferenceLoop(float[] w, int bits, long blockArg, ClipMethod clip, double t, LevelKind levels)
    {
        var x = (float[])w.Clone();
        long n = x.Length;
        bool divisible = n % blockArg == 0;
        long block = divisible ? blockArg : n;
        for (long start = 0; start < n; start += block)
        {
            var a = Enumerable.Range(0, (int)block).Select(i => Math.Abs(x[start + i])).ToArray();
            float threshold = float.PositiveInfinity;
            if (clip != ClipMethod.None)
            {
                if (clip == ClipMethod.BlockPercentage && divisible)
                {
                    int k = Math.Max((int)(block * t + 1), 1);
                    threshold = a.OrderByDescending(v => v).ElementAt(k - 1);
                }
                else if (clip is ClipMethod.BlockPercentage or ClipMethod.TensorPercentage)
                {
                    int k = Math.Max((int)(n * t), 1);
                    threshold = x.Select(Math.Abs).OrderByDescending(v => v).ElementAt(k - 1);
                }
                else if (clip == ClipMethod.ZScore)
                {
                    double mean = a.Average(v => (double)v);
                    double std = Math.Sqrt(a.Sum(v => (v - mean) * (v - mean)) / (a.Length - 1));
                    threshold = (float)(t * std + mean);
                }
                else
                {
                    var s = a.OrderBy(v => v).ToArray();
                    float Q(double q)
                    {
                        double pos = q * (s.Length - 1); int lo = (int)Math.Floor(pos); int hi = Math.Min(lo + 1,
                        s.Length - 1); return (float)(s[lo] + (s[hi] - s[lo]) * (pos - lo));
                    }
                    threshold = (float)(Q(0.75) + t * (Q(0.75) - Q(0.25)));
                }
                for (long i = start; i < start + block; i++) x[i] = Math.Clamp(x[i], -threshold, threshold);
            }
            float min = float.MaxValue, max = float.MinValue;
            for (long i = start; i < start + block; i++) { min = Math.Min(min, x[i]); max = Math.Max(max, x[i]); }
            for (long i = start; i < start + block; i++)
            {
                if (max == min) { x[i] = min; continue; }
                if (levels == LevelKind.NormalFloat)
                {
                    float scale = 2f / (max - min);
                    float v = (x[i] - min) * scale - 1f;
                    var poles = bits == 4 ? PaperBlockQuantizer.Nf4 : PaperBlockQuantizer.Nf3;
                    int best = 0;
                    for (int p = 1; p < poles.Length; p++) if (Math.Abs(v - poles[p]) < Math.Abs(v - poles[best])) best = p;
                    x[i] = (poles[best] + 1f) / scale + min;
                }
                else if (levels == LevelKind.ShiftedInteger)
                {
                    // The reference does not clamp: at the block max (w - min) * s - 0.49 is 2^bits - 0.5 give or
                    // take an ulp, which rounds half-to-even to 2^bits, a code the bits cannot hold. We clamp.
                    float scale = (float)((1 << bits) - 0.01) / (max - min);
                    float code = Math.Min(MathF.Round((x[i] - min) * scale - 0.49f, MidpointRounding.ToEven), (1 << bits) - 1);
                    x[i] = (code + 0.49f) / scale + min;
                }
                else
                {
                    float scale = ((1 << bits) - 1) / (max - min);
                    float code = MathF.Round((x[i] - min) * scale, MidpointRounding.ToEven);
                    x[i] = code / scale + min;
                }
            }
        }
        return x;
    }

    static float[] Weights(int rows, int cols, int seed)
    {
        var rng = new Random(seed);
        var w = new float[rows * cols];
        for (int i = 0; i < w.Length; i++) w[i] = (float)((rng.NextDouble() - 0.5) * 0.2 * (1 + 3 * rng.NextDouble() * rng.NextDouble()));
        w[5] = 2.5f; w[rows * cols / 2 + 7] = -1.8f; // outliers for the clip methods to act on
        return w;
    }

    [TestMethod]
    [DataRow(4, 32, ClipMethod.ZScore, 3.0, LevelKind.Integer)]
    [DataRow(4, 64, ClipMethod.None, double.PositiveInfinity, LevelKind.Integer)]      // 64-element blocks span the 48-wide rows
    [DataRow(3, 128, ClipMethod.BlockPercentage, 0.01, LevelKind.Integer)]
    [DataRow(4, 256, ClipMethod.TensorPercentage, 0.005, LevelKind.Integer)]
    [DataRow(4, 32, ClipMethod.Iqr, 1.5, LevelKind.Integer)]
    [DataRow(4, 512, ClipMethod.ZScore, 2.0, LevelKind.ShiftedInteger)]
    [DataRow(4, 64, ClipMethod.ZScore, 4.0, LevelKind.NormalFloat)]
    [DataRow(3, 32, ClipMethod.None, double.PositiveInfinity, LevelKind.NormalFloat)]
    [DataRow(2, PaperQuantizerSettings.TensorBlock, ClipMethod.ZScore, 3.0, LevelKind.Integer)]
    [DataRow(4, 0, ClipMethod.BlockPercentage, 0.02, LevelKind.Integer)]              // channel
    [DataRow(4, 4096, ClipMethod.BlockPercentage, 0.01, LevelKind.Integer)]           // 4096 does not divide 48*80: one tensor-wide block
    [DataRow(8, 1024, ClipMethod.Iqr, 3.0, LevelKind.Integer)]                         // ditto, IQR over the tensor
    public void MatchesAPlainLoopPortOfTheReference(int bits, int block, ClipMethod clip, double t, LevelKind levels)
    {
        const int rows = 80, cols = 48;
        float[] w = Weights(rows, cols, bits * 1000 + block + (int)clip);
        var s = new PaperQuantizerSettings { Bits = bits, BlockSize = block, Clip = clip, Threshold = t, Levels = levels };
        using var tensor = torch.tensor(w).view(rows, cols);
        using QuantizedMatrix q = PaperBlockQuantizer.Quantize(tensor, s);
        using Tensor dq = BlockRtnQuantizer.Dequantize(q);
        float[] ours = dq.data<float>().ToArray();
        long blockArg = block == 0 ? cols : block == PaperQuantizerSettings.TensorBlock ? rows * cols : block;
        float[] expected = ReferenceLoop(w, bits, blockArg, clip, t, levels);
        int off = 0;
        double worst = 0;
        for (int i = 0; i < w.Length; i++)
        {
            double d = Math.Abs(ours[i] - expected[i]);
            worst = Math.Max(worst, d);
            if (d > 1e-6) off++;
        }
        // A threshold that differs in its last bit (torch's std/quantile accumulate differently) may move a block's
        // range by an ulp and flip a rounding tie: allow a handful of elements, each within one step.
        Assert.IsTrue(off <= 3, $"{off} of {w.Length} elements differ from the reference loop (worst {worst:G3})");
        Assert.IsTrue(worst < 0.6 / (1 << bits) * 5, $"worst difference {worst}");
        Assert.AreEqual(PaperBlockQuantizer.EffectiveBlock(s, rows, cols), q.FlatBlock);
    }

    [TestMethod]
    public void HandComputedBlock()
    {
        // One 32-element block: values 0..31 except an outlier of 100 at index 3. 2 bits, no clip: min 0, max 100,
        // scale 3/100, codes round(w * 0.03): 0..16 -> 0 (16 * 0.03 = 0.48), 17..31 -> 1 (0.51..0.93), 100 -> 3.
        // Dequantized: 0, 33.333..., 100.
        var w = Enumerable.Range(0, 32).Select(i => i == 3 ? 100f : i).ToArray();
        using var t = torch.tensor(w).view(1, 32);
        using var q = PaperBlockQuantizer.Quantize(t, new PaperQuantizerSettings { Bits = 2, BlockSize = 32, Clip = ClipMethod.None });
        using var dq = BlockRtnQuantizer.Dequantize(q);
        var d = dq.data<float>().ToArray();
        Assert.AreEqual(0f, d[0]);
        Assert.AreEqual(0f, d[16]);
        Assert.AreEqual(100f / 3f, d[17], 1e-4);
        Assert.AreEqual(100f, d[3], 1e-4);
        // With a z-score clip at z = 1 the outlier is cut to mean(|w|) + std(|w|) and the grid shrinks with it.
        using var qc = PaperBlockQuantizer.Quantize(t, new PaperQuantizerSettings { Bits = 2, BlockSize = 32, Clip = ClipMethod.ZScore, Threshold = 1 });
        using var dqc = BlockRtnQuantizer.Dequantize(qc);
        double mean = w.Average(v => (double)v), std = Math.Sqrt(w.Sum(v => (v - mean) * (v - mean)) / 31);
        Assert.AreEqual(mean + std, dqc.data<float>()[3], 1e-3, "the outlier is clipped to mean + z * std of |W|");
        // A constant block decodes to its value (the reference would divide by zero).
        using var c = torch.full(1, 64, 0.25f);
        using var qk = PaperBlockQuantizer.Quantize(c, new PaperQuantizerSettings { Bits = 4, BlockSize = 32, Clip = ClipMethod.ZScore, Threshold = 3 });
        using var dk = BlockRtnQuantizer.Dequantize(qk);
        Assert.IsTrue(dk.eq(0.25f).all().item<bool>());
    }

    [TestMethod]
    public void RejectsSettingsTheReferenceCannotRun()
    {
        foreach (var s in new[]
        {
            new PaperQuantizerSettings { BlockSize = 48 }, new PaperQuantizerSettings { BlockSize = 16 },
            new PaperQuantizerSettings { Bits = 2, Levels = LevelKind.NormalFloat },
            new PaperQuantizerSettings { Clip = ClipMethod.BlockPercentage, Threshold = 1.5 },
        })
            Assert.AreEqual(ErrorCodes.UnsupportedQuantization,
                Assert.ThrowsExactly<SuperQuantException>(() => PaperBlockQuantizer.Validate(s)).Code, s.ToString());
        var packed = new WeightQuantizationOptions { Clip = ClipMethod.Iqr };
        Assert.ThrowsExactly<SuperQuantException>(packed.Validate);
    }

    /// <summary>The paper variant through the model quantizer and the packed artifact (format version 3): flattened
    /// and whole-tensor blocks load back bit for bit, with the super weight restored.</summary>
    [TestMethod]
    [DataRow(256, "zscore")]
    [DataRow(PaperQuantizerSettings.TensorBlock, "iqr")]
    [DataRow(1024, "block_percentage")]
    public void PaperVariantArtifactLoadsBackBitForBit(int block, string clip)
    {
        using var dir = new TempFolder();
        string folder = Path.Combine(dir.Path, "ckpt");
        var spec = new TinyModelSpec { Layers = 2, Hidden = 64, Intermediate = 96, ModelType = "qwen2" };
        SuperWeightPlanter.WriteCheckpoint(folder, spec, 1, 17, 45);
        using var model = ModelLoader.Load(folder);
        var detection = new SuperWeightDetector().Detect(model, new[] { 1, 2, 3 });
        Assert.AreEqual(1, detection.SuperWeights.Count, "the planted super weight is found");
        var o = new WeightQuantizationOptions
        {
            Variant = WeightVariant.Paper, Bits = 4, BlockSize = block, Clip = Names.ParseClip(clip),
            Z = clip == "block_percentage" ? 0.01 : 3,
        };
        using var result = ModelQuantizer.Quantize(model, o, detection.SuperWeights);
        Assert.IsTrue(result.Matrices.Values.All(m => m.IsPaperLayout));
        string artifact = dir.File("paper.sqpk.safetensors");
        PackedArtifact.Write(artifact, model, result, "x");
        var (loaded, info) = PackedArtifact.Load(artifact);
        using (loaded)
        {
            foreach (LinearSite site in ModelQuantizer.QuantizedSites(model.Weights))
                Assert.IsTrue(loaded.Weights[site].equal(model.Weights[site]).all().item<bool>(), $"{site} differs after pack/load");
            Assert.AreEqual(5f, SuperWeightDetector.ReadWeight(loaded, 1, 17, 45), "the super weight is restored");
        }
        Assert.AreEqual("paper", info.Variant);
        Assert.AreEqual(clip == "zscore" ? null : clip, info.Clip);
        using var f = Models.Safetensors.SafetensorsFile.Open(artifact);
        Assert.AreEqual("3", f.Metadata["format_version"]);
    }

    /// <summary>z = auto with the paper variant tunes the reference's threshold on calibration data with the
    /// reference quantizer: the chosen threshold is the candidate with the lowest measured error, and that error
    /// is what quantizing with it and dequantizing gives.</summary>
    [TestMethod]
    public void PaperVariantZSearchScoresTheReferenceQuantizer()
    {
        using var dir = new TempFolder();
        string folder = Path.Combine(dir.Path, "ckpt");
        var spec = new TinyModelSpec { Layers = 2, Hidden = 64, Intermediate = 96, ModelType = "qwen2" };
        SuperWeightPlanter.WriteCheckpoint(folder, spec, 1, 17, 45);
        using var model = ModelLoader.Load(folder);
        var sw = new SuperWeightDetector().Detect(model, new[] { 1, 2, 3 }).SuperWeights;
        var o = new WeightQuantizationOptions { Variant = WeightVariant.Paper, Bits = 3, BlockSize = 256, Clip = ClipMethod.ZScore };
        var site = new LinearSite(1, Projection.Down);
        using var x = torch.randn(40, 96, generator: new Generator(3));
        Tensor w = model.Weights[site];
        double[] errors = ZTuner.SiteErrors(w, x, site, o, o.Candidates, sw);
        for (int c = 0; c < o.Candidates.Count; c++)
        {
            using var q = ModelQuantizer.QuantizeMatrix(w, site, o, o.Candidates[c], sw);
            using var dq = BlockRtnQuantizer.Dequantize(q);
            using var diff = x.matmul((dq - w).t());
            using var reference = x.matmul(w.t());
            double expected = diff.pow(2).sum().item<float>() / reference.pow(2).sum().item<float>();
            Assert.AreEqual(expected, errors[c], 1e-6 + 1e-4 * expected, $"candidate {o.Candidates[c]}");
        }
    }

    /// <summary>z is tuned on more than one window: with a context of 128 and 300 calibration tokens, the recorded
    /// inputs of each layer are those of windows [0, 128) and [128, 256) (every token kept: 128 rows per window fit
    /// the 256-row budget), checked against the layer inputs of two separate forward passes.</summary>
    [TestMethod]
    public void ZTunerRecordsEveryCalibrationWindow()
    {
        using var dir = new TempFolder();
        string folder = Path.Combine(dir.Path, "ckpt");
        TinyCheckpointFactory.Write(folder, new TinyModelSpec());
        using var model = ModelLoader.Load(folder);
        Assert.AreEqual(128, model.Config.MaxPositionEmbeddings);
        var rng = new Random(5);
        int[] tokens = Enumerable.Range(0, 300).Select(_ => rng.Next(model.Config.VocabSize)).ToArray();
        var recorded = ZTuner.RecordInputs(model, tokens);
        var site = new LinearSite(1, Projection.Down);
        Assert.AreEqual(256, recorded[site].shape[0]);
        var capture = new Capture(site);
        model.Hooks = capture;
        model.Forward(tokens[..128]).Dispose();
        model.Forward(tokens[128..256]).Dispose();
        model.Hooks = null;
        using var expected = torch.cat(capture.Inputs, 0);
        Assert.IsTrue(expected.allclose(recorded[site], rtol: 1e-5, atol: 1e-6));
        foreach (var t in recorded.Values) t.Dispose();
    }

    sealed class Capture(LinearSite site) : IForwardHooks
    {
        public List<Tensor> Inputs { get; } = new();
        public Tensor OnLinearInput(LinearSite s, Tensor input)
        {
            if (s == site) Inputs.Add(input[0].clone().DetachFromDisposeScope());
            return input;
        }
    }
}
