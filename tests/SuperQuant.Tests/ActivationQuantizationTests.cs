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
public sealed class ActivationQuantizationTests
{
    static readonly int[] Tokens = Enumerable.Range(0, 40).Select(i => (i * 13 + 5) % 48).ToArray();

    static string Planted(TempFolder dir, string modelType = "llama")
    {
        var spec = new TinyModelSpec { Layers = 3, Hidden = 64, Intermediate = 128, Heads = 4, KvHeads = 2, ModelType = modelType };
        SuperWeightPlanter.WriteCheckpoint(dir.Path, spec, 1, 17, 45);
        return dir.Path;
    }

    [TestMethod]
    [DataRow(QuantMethod.SmoothQuant)]
    [DataRow(QuantMethod.Hadamard)]
    [DataRow(QuantMethod.DuQuant)]
    public void TransformsLeaveOutputsUnchangedBeforeQuantization(QuantMethod method)
    {
        using var dir = new TempFolder();
        string path = Planted(dir);
        using var original = ModelLoader.Load(path);
        using var model = ModelLoader.Load(path);
        var o = new ActivationQuantizationOptions { Method = method, WeightBits = 16, ActivationBits = 16, Alpha = 0.6, RotationBlock = 32 };
        model.Hooks = ActivationQuantizer.Apply(model, o, Tokens);
        Assert.AreNotEqual(0f, (model.Weights.Layer(0).Wq - original.Weights.Layer(0).Wq).abs().max().item<float>(), "weights were transformed");
        using var y = original.Forward(Tokens);
        using var yRotated = model.Forward(Tokens);
        float worst = (yRotated - y).abs().max().item<float>();
        Assert.IsTrue(worst < 1e-4f, $"{method}: max |y_rotated - y| = {worst}");
    }

    /// <summary>A model whose residual stream has a few massive channels (as LLMs do), without a super weight:
    /// the activation-outlier case DuQuant's rotations are for.</summary>
    static string OutlierChannels(TempFolder dir)
    {
        var spec = new TinyModelSpec { Layers = 3, Hidden = 64, Intermediate = 128, Heads = 4, KvHeads = 2 };
        var w = TinyCheckpointFactory.RandomWeights(spec);
        float[] embed = w["model.embed_tokens.weight"];
        for (int t = 0; t < spec.Vocab; t++)
            foreach (int c in new[] { 3, 11, 40 }) embed[t * spec.Hidden + c] = 12f * (c == 11 ? -1 : 1);
        TinyCheckpointFactory.Write(dir.Path, spec, w);
        return dir.Path;
    }

    [TestMethod]
    public void DuQuantAtW4A4BeatsPlainRoundToNearest()
    {
        using var dir = new TempFolder();
        string path = OutlierChannels(dir);
        using var original = ModelLoader.Load(path);
        double Kl(ActivationQuantizationOptions o)
        {
            using var m = ModelLoader.Load(path);
            m.Hooks = ActivationQuantizer.Apply(m, o, Tokens);
            return Evaluator.Divergence(t => original.Forward(t), t => m.Forward(t), Tokens, 40, 20).KlDivergence.Value;
        }
        double rtn = Kl(new ActivationQuantizationOptions { Method = QuantMethod.Rtn, WeightBits = 4, ActivationBits = 4 });
        double du = Kl(ActivationQuantizationOptions.DuQuantDefaults(4, 4) with { RotationBlock = 32 });
        Assert.IsTrue(du < rtn, $"DuQuant KL {du} vs RTN KL {rtn}");
    }

    [TestMethod]
    public void SuperActivationAwareW8A8BeatsNaiveOnAModelWithASuperActivation()
    {
        using var dir = new TempFolder();
        string path = Planted(dir);
        using var original = ModelLoader.Load(path);
        var detection = new SuperWeightDetector().Detect(original, Tokens[..8]);
        Assert.IsTrue(detection.Found);
        double Kl(QuantMethod method)
        {
            using var m = ModelLoader.Load(path);
            m.Hooks = ActivationQuantizer.Apply(m, new ActivationQuantizationOptions { Method = method, WeightBits = 8, ActivationBits = 8 }, Tokens,
                detection);
            return Evaluator.Divergence(t => original.Forward(t), t => m.Forward(t), Tokens, 40, 20).KlDivergence.Value;
        }
        double naive = Kl(QuantMethod.Rtn), aware = Kl(QuantMethod.SuperAware);
        Assert.IsTrue(aware < naive, $"super-aware KL {aware} vs naive {naive}");
    }

    /// <summary>DuQuant's asymmetric quantizer by hand: 2 bits, token [1, 2, 2.5, 4]: min 1, max 4, scale 1,
    /// zero round(-1) = -1, codes round(x) - 1 = 0, 1, 1 (2.5 rounds half to even), 3, back (code + 1) * 1 = 1, 2, 2, 4.
    /// 0 is not in the range and need not be; the symmetric quantizer (scale 4 / 1: x / 4 = 0.25, 0.5, 0.625, 1)
    /// gives 0, 0, 4, 4.</summary>
    [TestMethod]
    public void AsymmetricActivationQuantizerByHand()
    {
        using var x = torch.tensor(new float[] { 1, 2, 2.5f, 4 }).view(1, 1, 4);
        using var asym = ActivationQuantizer.FakeQuantAsymmetric(x, 2, 1.0, perTensor: false);
        CollectionAssert.AreEqual(new float[] { 1, 2, 2, 4 }, asym.data<float>().ToArray());
        using var sym = ActivationQuantizer.FakeQuantPerToken(x, 2, 1.0);
        CollectionAssert.AreEqual(new float[] { 0, 0, 4, 4 }, sym.data<float>().ToArray());
        // Per tensor: one min/max over both tokens ([-2, 1] and [1, 4] -> min -2, max 4, 2 bits -> scale 2, zero 1):
        // codes round(x / 2) + 1 clamped to 0..3 -> -2 -> 0, 1 -> round(0.5) + 1 = 1, 4 -> 3; back (c - 1) * 2.
        using var two = torch.tensor(new float[] { -2, 1, 1, 4 }).view(1, 2, 2);
        using var perTensor = ActivationQuantizer.FakeQuantAsymmetric(two, 2, 1.0, perTensor: true);
        CollectionAssert.AreEqual(new float[] { -2, 0, 0, 4 }, perTensor.data<float>().ToArray());
    }

    /// <summary>The paper's super-activation handling (scalar mode) by hand, 4-bit per-tensor: channel 2 holds the
    /// super activation 100 at token 1. It alone is replaced by the median (torch's lower median of the 12 values:
    /// 1.2), the tensor is quantized with max |x| = 7 (scale 1, so values round to integers), and 100 is put back in
    /// fp16. The channel's other tokens (0.4, 1.2) are quantized (0, 1); in channel mode they stay exact.</summary>
    [TestMethod]
    public void ScalarSuperActivationModeByHand()
    {
        var values = new float[] { 1, 2, 0.4f, 7, 3, 1, 100, -2, 0.6f, 5, 1.2f, 4 };
        var channels = new Dictionary<(int, ActivationQuantizer.InputGroup), int[]> { [(0, ActivationQuantizer.InputGroup.Mlp)] = new[] { 2 } };
        var empty = new Dictionary<(int, ActivationQuantizer.InputGroup), Tensor>();
        var o = new ActivationQuantizationOptions { Method = QuantMethod.SuperAware, ActivationBits = 4, PerTensor = true, SuperActivationScalar = true };
        using var x = torch.tensor(values).view(1, 3, 4);
        IForwardHooks scalar = ActivationQuantizer.FromState(o, empty, channels);
        using var y = scalar.OnLinearInput(new LinearSite(0, Projection.Gate), x);
        CollectionAssert.AreEqual(new float[] { 1, 2, 0, 7, 3, 1, 100, -2, 1, 5, 1, 4 }, y.data<float>().ToArray());
        IForwardHooks channel = ActivationQuantizer.FromState(o with { SuperActivationScalar = false }, empty, channels);
        using var z = channel.OnLinearInput(new LinearSite(0, Projection.Gate), x);
        CollectionAssert.AreEqual(new float[] { 1, 2, 0.4f, 7, 3, 1, 100, -2, 1, 5, 1.2f, 4 }, z.data<float>().ToArray());
    }

    [TestMethod]
    public void SmoothQuantFoldsItsScalesIntoTheNorms()
    {
        using var dir = new TempFolder();
        string path = Planted(dir);
        using var model = ModelLoader.Load(path);
        using var before = model.Weights.Layer(0).AttnNorm!.clone();
        var hooks = ActivationQuantizer.Apply(model, new ActivationQuantizationOptions
        {
            Method = QuantMethod.SmoothQuant, WeightBits = 16,
            ActivationBits = 16
        }, Tokens);
        Assert.IsFalse(model.Weights.Layer(0).AttnNorm!.allclose(before), "the attention norm carries 1/s");
        using var original = ModelLoader.Load(path);
        model.Hooks = hooks;
        using var y = original.Forward(Tokens);
        using var y2 = model.Forward(Tokens);
        Assert.IsTrue((y2 - y).abs().max().item<float>() < 1e-4f);
    }

    [TestMethod]
    public void PerTensorActivationsAreCoarserThanPerToken()
    {
        using var dir = new TempFolder();
        string path = OutlierChannels(dir);
        using var original = ModelLoader.Load(path);
        double Kl(bool perTensor)
        {
            using var m = ModelLoader.Load(path);
            m.Hooks = ActivationQuantizer.Apply(m, new ActivationQuantizationOptions { WeightBits = 16, ActivationBits = 6, PerTensor = perTensor }, Tokens);
            return Evaluator.Divergence(t => original.Forward(t), t => m.Forward(t), Tokens, 40, 20).KlDivergence.Value;
        }
        double perToken = Kl(false), perTensor = Kl(true);
        Assert.IsTrue(perTensor > perToken && perToken > 0, $"per-tensor {perTensor} vs per-token {perToken}");
    }

    [TestMethod]
    public void SmoothQuantOnOlmoIsACodedError()
    {
        using var dir = new TempFolder();
        using var m = ModelLoader.Load(Planted(dir, "olmo"));
        var e = Assert.ThrowsExactly<SuperQuantException>(()
            => ActivationQuantizer.Apply(m, new ActivationQuantizationOptions { Method = QuantMethod.SmoothQuant }, Tokens));
        Assert.AreEqual(ErrorCodes.UnsupportedQuantization, e.Code);
        StringAssert.Contains(e.Message, "non-parametric LayerNorm");
    }

    [TestMethod]
    public void RotationsAreOrthogonal()
    {
        foreach (long n in new long[] { 64, 48 })
        {
            using var r = SuperQuant.Core.Quantization.Methods.HadamardRotation.Create(n, 3);
            using var eye = torch.eye(n);
            Assert.IsTrue(r.matmul(r.t()).allclose(eye, rtol: 0, atol: 1e-5), $"n = {n}");
        }
    }
}
