using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Quantization.Methods;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Tests;

/// <summary>
/// The paper methods against values computed by hand or by an independent implementation, never against our own code
/// run twice (docs/paper-map.md maps each equation to its class and to these tests).
/// </summary>
[TestClass]
public sealed class MethodReferenceTests
{
    /// <summary>SmoothQuant eq. 4 on a 2x2 case: s_j = max|X_j|^a / max|W_j|^(1-a), a = 0.5.</summary>
    [TestMethod]
    public void SmoothQuantScalesMatchAHandComputedCase()
    {
        using var actMax = torch.tensor(new[] { 4f, 1f });
        using var w = torch.tensor(new[] { 1f, -2f, 0.5f, 8f }, new long[] { 2, 2 }); // [out, in]: column maxima 1 and 8
        using var s = SmoothQuant.Scales(actMax, new[] { w }, 0.5);
        float[] v = s.data<float>().ToArray();
        Assert.AreEqual(2.0, v[0], 1e-6, "sqrt(4) / sqrt(1)");
        Assert.AreEqual(1 / Math.Sqrt(8), v[1], 1e-6, "sqrt(1) / sqrt(8)");
        // The fold is exact: X W^T = (X / s)(W s)^T.
        using var x = torch.tensor(new[] { 3f, -1f, -4f, 0.5f }, new long[] { 2, 2 });
        using var before = x.matmul(w.t());
        using var after = (x / s).matmul((w * s).t());
        Assert.IsTrue(before.allclose(after, rtol: 1e-5, atol: 1e-6));
    }

    /// <summary>Channel maxima [1, 8, 3, 6, 5, 2, 7, 4], 2 blocks of 4: sorted 1(8) 6(7) 3(6) 4(5) 7(4) 2(3) 5(2) 0(1),
    /// dealt 0, 1, 1, 0, 0, 1, 1, 0: blocks {1, 4, 7, 0} and {6, 3, 2, 5}, both summing to 18.</summary>
    [TestMethod]
    public void ZigzagDealsChannelsBackAndForth()
    {
        float[] max = { 1, 8, 3, 6, 5, 2, 7, 4 };
        long[] order = ZigzagPermutation.Order(max, 4);
        CollectionAssert.AreEqual(new long[] { 1, 4, 7, 0, 6, 3, 2, 5 }, order);
        Assert.AreEqual(order.Take(4).Sum(c => max[c]), order.Skip(4).Sum(c => max[c]), "equal block totals: the block means' variance falls to 0 here");
        using var p = ZigzagPermutation.Matrix(torch.tensor(max), 4);
        using var x = torch.tensor(max).unsqueeze(0);
        CollectionAssert.AreEqual(order.Select(c => max[c]).ToArray(), x.matmul(p).squeeze(0).data<float>().ToArray(),
            "x P moves channel order[i] to column i");
    }

    /// <summary>DuQuant's greedy block rotation: orthogonal, and no block's max |x R| above its max |x|, on inputs with
    /// planted outlier channels (where it must actually lower them).</summary>
    [TestMethod]
    public void GreedyBlockRotationIsOrthogonalAndNeverRaisesABlocksMax()
    {
        foreach (int seed in new[] { 1, 2, 3 })
        {
            var g = new Generator((ulong)seed);
            using var x = torch.randn(new long[] { 64, 48 }, generator: g);
            x[TensorIndex.Colon, 5] *= 30;  // outlier channels in blocks 0 and 2
            x[TensorIndex.Colon, 37] *= 12;
            using var r = DuQuantRotation.Greedy(x, 16, 256, new Random(seed));
            Assert.IsTrue(r.matmul(r.t()).allclose(torch.eye(48), atol: 1e-4), "orthogonal");
            using var y = x.matmul(r);
            for (int b = 0; b < 3; b++)
            {
                double before = x.narrow(1, 16 * b, 16).abs().max().item<float>(), after = y.narrow(1, 16 * b, 16).abs().max().item<float>();
                Assert.IsLessThanOrEqualTo(before + 1e-4, after, $"seed {seed} block {b}: {before} -> {after}");
                if (b != 1) Assert.IsLessThan(before * 0.8, after, $"seed {seed} block {b}: an outlier block is spread");
            }
        }
    }

    [TestMethod]
    [DataRow(6)]
    [DataRow(7)]
    [DataRow(16)]
    public void DuQuantsBasisSpreadsTheFrontChannelUniformlyForAnyBlockSize(int n)
    {
        using var rt = DuQuantRotation.UniformFirstRow(n);
        Assert.IsTrue(rt.matmul(rt.t()).allclose(torch.eye(n), atol: 1e-5), "orthogonal");
        using var expected = torch.full(n, (float)(1 / Math.Sqrt(n)));
        Assert.IsTrue(rt[0].allclose(expected, atol: 1e-6), "first row uniform: an outlier in front is spread evenly");
        using var q = DuQuantRotation.OtherChannels(n, 5);
        using var basis = rt.matmul(q);
        Assert.IsTrue(basis.matmul(basis.t()).allclose(torch.eye(n), atol: 1e-5), "R~ Q orthogonal");
        Assert.AreEqual(1f, q[0, 0].item<float>(), "Q = diag(1, Q')");
        // A lone outlier of size 10 in front ends up as 10/sqrt(n) in every channel of x R~.
        using var x = torch.zeros(1, n);
        x[0, 0] = torch.tensor(10f);
        Assert.AreEqual(10 / Math.Sqrt(n), x.matmul(rt).abs().max().item<float>(), 1e-4);
    }

    [TestMethod]
    public void MoreGreedyStepsNeverEndHigherThanFewer()
    {
        // All steps run and the best prefix is kept, so 8 steps are never worse than 1 (the first step is a prefix).
        var g = new Generator(9);
        using var x = torch.randn(new long[] { 32, 24 }, generator: g);
        x[TensorIndex.Colon, 3] *= 25;
        x[TensorIndex.Colon, 17] *= 9;
        using var one = DuQuantRotation.Greedy(x, 12, 1, new Random(1));
        using var eight = DuQuantRotation.Greedy(x, 12, 8, new Random(1));
        for (int b = 0; b < 2; b++)
        {
            double m1 = x.matmul(one).narrow(1, 12 * b, 12).abs().max().item<float>();
            double m8 = x.matmul(eight).narrow(1, 12 * b, 12).abs().max().item<float>();
            Assert.IsLessThanOrEqualTo(m1 + 1e-4, m8, $"block {b}: 8 steps {m8} vs 1 step {m1}");
        }
    }

    [TestMethod]
    public void RandomizedHadamardIsSignedSylvesterRows()
    {
        using var q = HadamardRotation.Create(16, 7);
        using var h = HadamardRotation.Sylvester(16) / 4f;
        Assert.IsTrue(q.matmul(q.t()).allclose(torch.eye(16), atol: 1e-5), "orthogonal");
        Assert.IsTrue(q.abs().allclose(torch.full(16, 16, 0.25f)), "every entry ±1/sqrt(n)");
        int flipped = 0;
        for (int i = 0; i < 16; i++)
        {
            bool same = q[i].allclose(h[i]), negated = q[i].allclose(-h[i]);
            Assert.IsTrue(same || negated, $"row {i} is ± Sylvester row {i}");
            if (negated) flipped++;
        }
        Assert.IsTrue(flipped > 0 && flipped < 16, $"random signs ({flipped} of 16 rows negated)");
    }

    [TestMethod]
    public void ZigzagEvensOutTheBlockMeans()
    {
        // Hand-computed: channel maxima 8..1 in two blocks of four. Contiguous blocks have means 6.5 and 2.5 (variance 4);
        // zigzag deals 8 -> b0, 7 -> b1, 6 -> b1, 5 -> b0, 4 -> b0, 3 -> b1, 2 -> b1, 1 -> b0: means 4.5 and 4.5 (variance 0).
        float[] max = { 8, 7, 6, 5, 4, 3, 2, 1 };
        long[] order = ZigzagPermutation.Order(max, 4);
        double m0 = order.Take(4).Average(c => max[c]), m1 = order.Skip(4).Average(c => max[c]);
        Assert.AreEqual(4.5, m0);
        Assert.AreEqual(4.5, m1);
    }

    /// <summary>r1 P r2 composed as DuQuant does is orthogonal (not merely invertible, which the output-equality
    /// check would also accept).</summary>
    [TestMethod]
    public void TheComposedDuQuantTransformIsOrthogonal()
    {
        var g = new Generator(9);
        using var x = torch.randn(new long[] { 32, 32 }, generator: g);
        x[TensorIndex.Colon, 3] *= 20;
        var rng = new Random(1);
        using var r1 = DuQuantRotation.Greedy(x, 8, 64, rng);
        using var p = ZigzagPermutation.Matrix(x.matmul(r1).abs().amax(new long[] { 0 }), 8);
        using var r2 = DuQuantRotation.Greedy(x.matmul(r1).matmul(p), 8, 64, rng);
        using var t = r1.matmul(p).matmul(r2);
        Assert.IsTrue(t.matmul(t.t()).allclose(torch.eye(32), atol: 1e-4));
    }

    /// <summary>Two fixed "models" over a 3-token sequence, vocabulary 2: p = (1/4, 3/4), q = (2/3, 1/3) at both scored
    /// positions, next token 1 each time. KL = 1/4 ln(3/8) + 3/4 ln(9/4) = 0.362985; top tokens disagree; PPL(base) = 4/3,
    /// PPL(Q) = 3; dp = 1/3 - 3/4.</summary>
    [TestMethod]
    public void KlStatisticsMatchAClosedFormCase()
    {
        Tensor Fixed(float a, float b, Tensor t) => torch.tensor(Enumerable.Repeat(new[] { a, b }, (int)t.shape[^1]).SelectMany(v => v).ToArray(),
            new long[] { 1, t.shape[^1], 2 });
        var d = Evaluator.Divergence(t => Fixed(0f, (float)Math.Log(3), t), t => Fixed((float)Math.Log(2), 0f, t), new[] { 0, 1, 1 }, 3, 2);
        double kl = 0.25 * Math.Log(0.375) + 0.75 * Math.Log(2.25);
        Assert.AreEqual(kl, d.KlDivergence.Value, 1e-6);
        Assert.AreEqual(kl, d.KlMax, 1e-6);
        Assert.AreEqual(0.0, d.Top1Agreement.Value);
        Assert.AreEqual(4.0 / 3, d.ReferencePerplexity.Value, 1e-5);
        Assert.AreEqual(3.0, d.ModifiedPerplexity.Value, 1e-5);
        Assert.AreEqual(3.0 - 4.0 / 3, d.PerplexityDelta.Value, 1e-5);
        Assert.AreEqual(Math.Log(9.0 / 4), d.LnPerplexityRatio.Value, 1e-6);
        Assert.AreEqual(0.75 - 1.0 / 3, d.RmsDeltaP.Value, 1e-6);
        Assert.AreEqual(2, d.TokensScored);
    }

    /// <summary>The detector's per-layer down_proj spikes on stories260K against the same maxima taken from the run.c
    /// port's own forward pass (its activations, its loops): magnitudes, channels and tokens.</summary>
    [TestMethod]
    public void Stories260KSpikesMatchTheRunCPortsActivations()
    {
        int[] prompt = { 1, 306, 434, 306, 461, 390, 397, 283, 411, 283 };
        var port = new RunCReference(SharedModels.Stories260K);
        var input = new (double Mag, int Ch, int Tok)[5];
        var output = new (double Mag, int Ch, int Tok)[5];
        var hbAt = new Dictionary<(int Layer, int Pos), float[]>();
        port.OnDownProj = (l, pos, hb, xb) =>
        {
            hbAt[(l, pos)] = hb.ToArray();
            for (int i = 0; i < hb.Length; i++) if (Math.Abs(hb[i]) > input[l].Mag) input[l] = (Math.Abs(hb[i]), i, pos);
            for (int i = 0; i < xb.Length; i++) if (Math.Abs(xb[i]) > output[l].Mag) output[l] = (Math.Abs(xb[i]), i, pos);
        };
        port.Logits(prompt);
        using var model = Llama2cCheckpoint.Load(SharedModels.Stories260K);
        var spikes = new SuperWeightDetector().Detect(model, prompt).Passes[0];
        for (int l = 0; l < 5; l++)
        {
            Assert.AreEqual(input[l].Mag, spikes[l].Input.Magnitude, 1e-4 * input[l].Mag, $"layer {l} input magnitude");
            Assert.AreEqual((input[l].Ch, input[l].Tok), (spikes[l].Input.Channel, spikes[l].Input.Token), $"layer {l} input channel/token");
            Assert.AreEqual(output[l].Mag, spikes[l].Output.Magnitude, 1e-4 * output[l].Mag, $"layer {l} output magnitude");
            Assert.AreEqual((output[l].Ch, output[l].Tok), (spikes[l].Output.Channel, spikes[l].Output.Token), $"layer {l} output channel/token");
            // The detector pairs the output spike with the largest input at the same token.
            float[] hb = hbAt[(l, output[l].Tok)];
            int k = Enumerable.Range(0, hb.Length).MaxBy(i => Math.Abs(hb[i]));
            Assert.AreEqual((k, output[l].Tok), (spikes[l].PairedInput.Channel, spikes[l].PairedInput.Token), $"layer {l} paired input");
            Assert.AreEqual(Math.Abs(hb[k]), spikes[l].PairedInput.Magnitude, 1e-4 * Math.Abs(hb[k]));
        }
    }
}
