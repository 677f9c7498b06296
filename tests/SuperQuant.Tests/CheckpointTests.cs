using System.Text.Json.Nodes;
using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

[TestClass]
public sealed class CheckpointTests
{
    [TestMethod]
    public void Stories260KHeaderMatchesProvenance()
    {
        var h = Llama2cCheckpoint.ReadHeader(SharedModels.Stories260K);
        Assert.AreEqual((64, 172, 5, 8, 4, 512, 512, true), (h.Dim, h.HiddenDim, h.NumLayers, h.NumHeads, h.NumKvHeads, h.VocabSize, h.SeqLen,
            h.SharedClassifier));
        Assert.AreEqual(CheckpointFormat.Llama2c, ModelLoader.Detect(SharedModels.Stories260K));
    }

    [TestMethod]
    public void TruncatedLlama2cFileIsRejectedWithSize()
    {
        using var dir = new TempFolder();
        byte[] all = File.ReadAllBytes(SharedModels.Stories260K);
        string path = dir.File("cut.bin");
        File.WriteAllBytes(path, all[..(all.Length / 2)]);
        var e = Assert.ThrowsExactly<SuperQuantException>(() => Llama2cCheckpoint.Load(path));
        Assert.AreEqual(ErrorCodes.CheckpointFormat, e.Code);
        StringAssert.Contains(e.Message, "truncated");
        StringAssert.Contains(e.Message, path);
    }

    [TestMethod]
    public void GarbageLlama2cHeaderIsRejected()
    {
        using var dir = new TempFolder();
        string path = dir.File("junk.bin");
        File.WriteAllBytes(path, Enumerable.Range(0, 64).Select(i => (byte)(i * 37)).ToArray());
        var e = Assert.ThrowsExactly<SuperQuantException>(() => ModelLoader.Load(path));
        Assert.AreEqual(ErrorCodes.CheckpointFormat, e.Code);
        StringAssert.Contains(e.Message, "implausible header");
    }

    [TestMethod]
    public void MissingTensorInFolderIsNamed()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec();
        var w = TinyCheckpointFactory.RandomWeights(spec);
        w.Remove("model.layers.1.mlp.down_proj.weight");
        TinyCheckpointFactory.Write(dir.Path, spec, w);
        var e = Assert.ThrowsExactly<SuperQuantException>(() => ModelLoader.Load(dir.Path));
        Assert.AreEqual(ErrorCodes.CheckpointMissingTensor, e.Code);
        StringAssert.Contains(e.Message, "model.layers.1.mlp.down_proj.weight");
    }

    [TestMethod]
    public void ShapeDisagreeingWithConfigIsRejected()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec();
        TinyCheckpointFactory.Write(dir.Path, spec);
        var config = JsonNode.Parse(File.ReadAllText(dir.File("config.json")))!;
        config["intermediate_size"] = 80;
        File.WriteAllText(dir.File("config.json"), config.ToJsonString());
        var e = Assert.ThrowsExactly<SuperQuantException>(() => ModelLoader.Load(dir.Path));
        Assert.AreEqual(ErrorCodes.CheckpointFormat, e.Code);
        StringAssert.Contains(e.Message, "gate_proj");
        StringAssert.Contains(e.Message, "[80, 32]");
    }

    [TestMethod]
    public void UnsupportedArchitectureIsRejected()
    {
        using var dir = new TempFolder();
        TinyCheckpointFactory.Write(dir.Path, new TinyModelSpec());
        File.WriteAllText(dir.File("config.json"), File.ReadAllText(dir.File("config.json")).Replace("\"llama\"", "\"gpt2\""));
        var e = Assert.ThrowsExactly<SuperQuantException>(() => ModelLoader.Load(dir.Path));
        Assert.AreEqual(ErrorCodes.UnsupportedArchitecture, e.Code);
        StringAssert.Contains(e.Message, "gpt2");
    }

    [TestMethod]
    public void NaNWeightsAreRejectedWithTensorName()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec();
        var w = TinyCheckpointFactory.RandomWeights(spec);
        w["model.layers.0.self_attn.k_proj.weight"][5] = float.NaN;
        TinyCheckpointFactory.Write(dir.Path, spec, w);
        var e = Assert.ThrowsExactly<SuperQuantException>(() => ModelLoader.Load(dir.Path));
        Assert.AreEqual(ErrorCodes.NonFiniteWeights, e.Code);
        StringAssert.Contains(e.Message, "model.layers.0.self_attn.k_proj.weight");
    }

    [TestMethod]
    public void InfInLargeTensorIsFoundPastTheVectorBody()
    {
        using var t = TorchSharp.torch.ones(1000);
        Assert.IsTrue(NonFiniteCheck.AllFinite(t));
        t[999] = TorchSharp.torch.tensor(float.PositiveInfinity);
        Assert.IsFalse(NonFiniteCheck.AllFinite(t));
        t[999] = TorchSharp.torch.tensor(1f);
        t[3] = TorchSharp.torch.tensor(float.NaN);
        Assert.IsFalse(NonFiniteCheck.AllFinite(t));
    }

    [TestMethod]
    public void ShardedCheckpointListsEveryShardAndRejectsPathsOutsideTheFolder()
    {
        using var dir = new TempFolder();
        TinyCheckpointFactory.Write(dir.Path, new TinyModelSpec { Shards = 3 });
        Assert.AreEqual(3, HfCheckpoint.ShardFiles(dir.Path).Count);
        File.WriteAllText(dir.File("model.safetensors.index.json"), "{\"weight_map\": {\"a\": \"../outside.safetensors\"}}");
        var e = Assert.ThrowsExactly<SuperQuantException>(() => HfCheckpoint.ShardFiles(dir.Path));
        Assert.AreEqual(ErrorCodes.CheckpointFormat, e.Code);
    }

    [TestMethod]
    public void ParameterCountMatchesLoadedTensors()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { ModelType = "qwen2" };
        var stored = TinyCheckpointFactory.Write(dir.Path, spec);
        using LlamaModel m = ModelLoader.Load(dir.Path);
        Assert.AreEqual(stored.Values.Sum(a => (long)a.Length), m.Config.ParameterCount);
    }

    [TestMethod]
    public void RandomCheckpointRoundTripsThroughTheLoader()
    {
        using var dir = new TempFolder();
        var c = new LlamaConfig
        {
            Architecture = "llama", HiddenSize = 64, IntermediateSize = 96, NumLayers = 2, NumHeads = 4, NumKvHeads = 2,
            VocabSize = 100
        };
        RandomCheckpoint.Write(dir.Path, c, seed: 3);
        using LlamaModel m = ModelLoader.Load(dir.Path);
        Assert.AreEqual(c.ParameterCount, m.Config.ParameterCount);
        using var logits = m.Forward(new[] { 1, 2, 3 });
        CollectionAssert.AreEqual(new long[] { 3, 100 }, logits.shape);
    }
}
