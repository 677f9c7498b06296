using SuperQuant.Core.Llama;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Tests.Support;
using TorchSharp;

namespace SuperQuant.Tests;

[TestClass]
public sealed class ForwardPassTests
{
    static readonly int[] Tokens = { 1, 403, 87, 260, 11, 499, 32, 7, 150 };

    static void AssertClose(float[][] expected, torch.Tensor actual, float tolerance)
    {
        Assert.AreEqual(expected.Length, (int)actual.shape[0]);
        float[] got = actual.data<float>().ToArray();
        int vocab = expected[0].Length;
        float worst = 0;
        for (int p = 0; p < expected.Length; p++)
            for (int i = 0; i < vocab; i++) worst = Math.Max(worst, Math.Abs(expected[p][i] - got[p * vocab + i]));
        Assert.IsTrue(worst < tolerance, $"max |logit difference| {worst} exceeds {tolerance}");
    }

    [TestMethod]
    public void Stories260KMatchesRunCReference()
    {
        string path = SharedModels.Stories260K;
        var reference = new RunCReference(path).Logits(Tokens);
        using LlamaModel model = Llama2cCheckpoint.Load(path);
        Assert.AreEqual(5, model.Config.NumLayers);
        Assert.AreEqual(4, model.Config.NumKvHeads);
        using var logits = model.Forward(Tokens);
        AssertClose(reference, logits, 1e-4f);
    }

    [TestMethod]
    public void Stories260KMatchesRunCReferenceOnALongWindowNotStartingAtBos()
    {
        // 160 positions: covers attention over long histories and RoPE far from position 0.
        var rng = new Random(11);
        int[] tokens = Enumerable.Range(0, 160).Select(_ => rng.Next(3, 512)).ToArray();
        string path = SharedModels.Stories260K;
        var reference = new RunCReference(path).Logits(tokens);
        using LlamaModel model = Llama2cCheckpoint.Load(path);
        using var logits = model.Forward(tokens);
        AssertClose(reference, logits, 2e-4f);
    }

    public static IEnumerable<object[]> Families => new[]
    {
        new object[] { "llama-gqa", new TinyModelSpec() },
        new object[] { "llama3-rope-scaling-tied-bf16-sharded", new TinyModelSpec { Llama3Scaling = true, TieEmbeddings = true, DType = "BF16", Shards = 3 } },
        new object[] { "mistral-sliding-window-f16", new TinyModelSpec { ModelType = "mistral", SlidingWindow = 4, DType = "F16" } },
        new object[] { "qwen2-qkv-bias", new TinyModelSpec { ModelType = "qwen2", RopeTheta = 1000000 } },
        new object[] { "olmo-layernorm-clip", new TinyModelSpec { ModelType = "olmo", KvHeads = 4, ClipQkv = 0.5f } },
        new object[] { "phi3-fused", new TinyModelSpec { ModelType = "phi3", KvHeads = 4 } },
    };

    [TestMethod]
    [DynamicData(nameof(Families))]
    public void SafetensorsFamilyMatchesLoopReference(string name, TinyModelSpec spec)
    {
        using var dir = new TempFolder();
        var stored = TinyCheckpointFactory.Write(dir.Path, spec);
        int[] tokens = { 3, 17, 42, 0, 9, 9, 30, 47 };
        var expected = new ReferenceLlama { Spec = spec, W = stored }.Logits(tokens);
        using LlamaModel model = ModelLoader.Load(dir.Path);
        Assert.AreEqual(spec.ModelType, model.Config.Architecture, name);
        using var logits = model.Forward(tokens);
        AssertClose(expected, logits, 1e-4f);
    }

    [TestMethod]
    public void BatchedForwardEqualsSingleSequences()
    {
        using var dir = new TempFolder();
        TinyCheckpointFactory.Write(dir.Path, new TinyModelSpec());
        using LlamaModel model = ModelLoader.Load(dir.Path);
        using var batch = torch.tensor(new long[] { 1, 2, 3, 4, 5, 6, 7, 8 }, new long[] { 2, 4 });
        using var both = model.Forward(batch);
        using var first = model.Forward(new[] { 1, 2, 3, 4 });
        using var second = model.Forward(new[] { 5, 6, 7, 8 });
        Assert.IsTrue(both[0].allclose(first, rtol: 0, atol: 1e-5));
        Assert.IsTrue(both[1].allclose(second, rtol: 0, atol: 1e-5));
    }
}
