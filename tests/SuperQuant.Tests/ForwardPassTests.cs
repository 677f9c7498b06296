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

    [TestMethod]
    [DataRow("llama", null)]
    [DataRow("mistral", 6)]     // sliding window shorter than the sequence: the cached mask must apply it too
    [DataRow("qwen2", null)]
    public void KvCachedStepsGiveTheFullPassLogits(string type, int? window)
    {
        using var dir = new TempFolder();
        TinyCheckpointFactory.Write(dir.Path, new TinyModelSpec { ModelType = type, SlidingWindow = window });
        using LlamaModel model = ModelLoader.Load(dir.Path);
        int[] ids = Enumerable.Range(0, 14).Select(i => (i * 5 + 1) % 48).ToArray();
        using var full = model.Forward(ids);
        using var cache = new KvCache(model.Config.NumLayers, capacity: 4); // too small on purpose: it must grow
        var parts = new List<torch.Tensor>();
        var capacities = new List<long>();
        // A 5-token prefill, a 3-token chunk (explicit mask), then one token per step.
        foreach (var (from, n) in new[] { (0, 5), (5, 3) }.Concat(Enumerable.Range(8, 6).Select(i => (i, 1))))
        {
            using var chunk = torch.tensor(ids.Skip(from).Take(n).Select(t => (long)t).ToArray());
            parts.Add(model.Forward(chunk, cache).squeeze(0));
            capacities.Add(cache.Capacity);
        }
        Assert.AreEqual(14L, cache.Length);
        // Written in place: 5 (the prefill), doubled to 10, then 20 - three allocations for 14 positions, not one per step.
        CollectionAssert.AreEqual(new long[] { 5, 10, 20 }, capacities.Distinct().ToArray());
        using var stitched = torch.cat(parts.ToArray(), 0);
        float worst = (stitched - full).abs().max().item<float>();
        Assert.IsLessThan(1e-4f, worst, $"max |logit difference| {worst}");
        foreach (var t in parts) t.Dispose();
    }

    [TestMethod]
    public void CachedGenerationPicksTheSameTokensAsRecomputing()
    {
        using LlamaModel model = Llama2cCheckpoint.Load(SharedModels.Stories260K);
        int[] cached = Sampler.Generate(model, new[] { 1 }, 60, 0.8, seed: 4);
        int[] recomputed = Sampler.Generate(model, new[] { 1 }, 60, 0.8, seed: 4, useCache: false);
        CollectionAssert.AreEqual(recomputed, cached);
    }
}
