using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Core.Quantization;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Manifest;
using SuperQuant.Models.Artifacts;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Gguf;
using SuperQuant.Models.Safetensors;
using SuperQuant.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Tests;

[TestClass]
public sealed class ArtifactTests
{
    static string Planted(TempFolder dir, TinyModelSpec spec)
    {
        string folder = Path.Combine(dir.Path, "ckpt");
        SuperWeightPlanter.WriteCheckpoint(folder, spec, 1, 17, 45);
        return folder;
    }

    [TestMethod]
    [DataRow(4, 64)]
    [DataRow(3, 0)]
    [DataRow(8, 32)]
    public void PackedArtifactLoadsBackBitForBit(int bits, int block)
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 2, Hidden = 64, Intermediate = 96, ModelType = "qwen2" };
        string ckpt = Planted(dir, spec);
        using var model = ModelLoader.Load(ckpt);
        var detection = new SuperWeightDetector().Detect(model, new[] { 1, 2, 3 });
        Assert.AreEqual(1, detection.SuperWeights.Count);
        using var result = ModelQuantizer.Quantize(model, new WeightQuantizationOptions { Bits = bits, BlockSize = block, Z = 4 }, detection.SuperWeights);
        string artifact = dir.File("model.sqpk.safetensors");
        PackedArtifact.Write(artifact, model, result, CheckpointHash.Compute(ckpt));

        var (loaded, info) = PackedArtifact.Load(artifact);
        using (loaded)
        {
            foreach (LinearSite site in ModelQuantizer.QuantizedSites(model.Weights))
                Assert.IsTrue(loaded.Weights[site].equal(model.Weights[site]).all().item<bool>(), $"{site} differs after pack/load");
            Assert.IsTrue(loaded.Weights.Layer(0).Bq!.equal(model.Weights.Layer(0).Bq!).all().item<bool>());
            Assert.AreEqual(5f, SuperWeightDetector.ReadWeight(loaded, 1, 17, 45));
            Assert.AreEqual(model.Config, loaded.Config);
            using var a = model.Forward(new[] { 4, 8, 15, 16 });
            using var b = loaded.Forward(new[] { 4, 8, 15, 16 });
            Assert.IsTrue(a.allclose(b, rtol: 0, atol: 0.05), "only the fp16 embedding differs");
        }
        Assert.AreEqual("super-aware", info.Method);
        Assert.AreEqual(bits, info.Bits);
        Assert.AreEqual(4.0, info.Z);
        CollectionAssert.AreEqual(new[] { 1, 17, 45 }, info.SuperWeights.Single());
        Assert.AreEqual(CheckpointHash.Compute(ckpt), info.SourceSha256);
        Assert.IsTrue(info.BitsPerWeight > bits && info.BitsPerWeight < bits + 1.5, $"bpw {info.BitsPerWeight}");
        long expectedCodes = BitPacking.PackedBytes(64L * 96, bits);
        using var f = SafetensorsFile.Open(artifact);
        Assert.AreEqual(expectedCodes, f.Entry("model.layers.0.mlp.gate_proj.weight.qcodes").ElementCount);
    }

    [TestMethod]
    public void PackedLoaderRejectsForeignAndDamagedFiles()
    {
        using var dir = new TempFolder();
        string plain = dir.File("plain.safetensors");
        SafetensorsWriter.Write(plain, new Dictionary<string, Tensor> { ["x"] = torch.ones(2) });
        var e = Assert.ThrowsExactly<SuperQuantException>(() => PackedArtifact.Load(plain));
        Assert.AreEqual(ErrorCodes.ArtifactFormat, e.Code);

        var spec = new TinyModelSpec();
        string ckpt = Planted(dir, spec);
        using var model = ModelLoader.Load(ckpt);
        using var result = ModelQuantizer.Quantize(model, new WeightQuantizationOptions { Method = QuantMethod.Rtn, Bits = 4, BlockSize = 32 },
            Array.Empty<SuperWeight>());
        string artifact = dir.File("a.safetensors");
        PackedArtifact.Write(artifact, model, result, "x");
        byte[] all = File.ReadAllBytes(artifact);
        File.WriteAllBytes(artifact, all[..(all.Length - 100)]);
        Assert.AreEqual(ErrorCodes.CheckpointFormat, Assert.ThrowsExactly<SuperQuantException>(() => PackedArtifact.Load(artifact)).Code);
    }

    [TestMethod]
    public void AFailedWriteLeavesNoFileAtTheFinalPath()
    {
        using var dir = new TempFolder();
        string target = dir.File("out.safetensors");
        var layout = new[] { new TensorLayout("a", ScalarType.Float32, new long[] { 4 }), new TensorLayout("b", ScalarType.Float32, new long[] { 4 }) };
        Assert.ThrowsExactly<InvalidOperationException>(() => SafetensorsWriter.WriteStreaming(target, layout,
            n => n == "a" ? torch.ones(4) : throw new InvalidOperationException("simulated failure mid-write"), disposeEach: true));
        Assert.IsFalse(File.Exists(target));
        Assert.AreEqual(0, Directory.GetFiles(dir.Path).Length, "no temp file left");
    }

    [TestMethod]
    public void GgufRoundTripsHeaderMetadataAndTensors()
    {
        using var dir = new TempFolder();
        using LlamaModel model = Llama2cCheckpoint.Load(SharedModels.Stories260K);
        var sw = new[] { new SuperWeight(2, 10, 20, 0f, 1) };
        foreach (GgufFileType type in new[] { GgufFileType.F16, GgufFileType.Q8_0, GgufFileType.Q4_0, GgufFileType.Q4_K_M })
        {
            string path = dir.File($"m-{type}.gguf");
            var written = GgufExporter.Write(path, model, new GgufExport { FileType = type, Name = "stories260K", SuperWeights = sw }).Tensors;
            var g = GgufFile.Read(path);
            Assert.AreEqual("llama", g.Metadata["general.architecture"]);
            Assert.AreEqual("no_vocab", g.Metadata["tokenizer.ggml.model"], "llama.cpp requires the key; no_vocab loads without a vocabulary");
            Assert.AreEqual(5u, g.Metadata["llama.block_count"]);
            Assert.AreEqual(4u, g.Metadata["llama.attention.head_count_kv"]);
            Assert.AreEqual(8u, g.Metadata["llama.rope.dimension_count"]);
            Assert.AreEqual(1 + 5 * 9 + 1, g.Tensors.Count, "embedding, 9 per block, output norm (tied head)");
            CollectionAssert.AreEqual(written.Select(t => t.Name).ToList(), g.Tensors.Select(t => t.Name).ToList());
            var down2 = g.Tensors.Single(t => t.Name == "blk.2.ffn_down.weight");
            var gate = g.Tensors.Single(t => t.Name == "blk.0.ffn_gate.weight");
            CollectionAssert.AreEqual(new long[] { 172, 64 }, down2.Dims);
            // ffn_down rows are 172 long: not a multiple of 32, so F16 whatever the type; 64-long rows cannot hold
            // 256-blocks, so Q4_K falls back to Q5_0 as in llama.cpp.
            Assert.AreEqual(GgmlType.F16, down2.Type);
            Assert.AreEqual(type switch
            {
                GgufFileType.F16 => GgmlType.F16,
                GgufFileType.Q8_0 => GgmlType.Q8_0,
                GgufFileType.Q4_0 => GgmlType.Q4_0,
                _ => GgmlType.Q5_0
            }, gate.Type);
            Assert.AreEqual("2,10,20", g.Metadata["superquant.super_weights"]);
            float[] expected = GgmlQuants.Dequantize(gate.Type,
                GgmlQuants.Quantize(gate.Type, model.Weights.Layer(0).WGate.data<float>().ToArray(), 64), gate.Elements);
            CollectionAssert.AreEqual(expected, g.ReadTensor("blk.0.ffn_gate.weight"));
        }
    }

    [TestMethod]
    public void GgufQueryAndKeyRowsAreInLlamaCppInterleavedOrder()
    {
        using var dir = new TempFolder();
        using LlamaModel model = Llama2cCheckpoint.Load(SharedModels.Stories260K);
        GgufExporter.Write(dir.File("f16.gguf"), model, new GgufExport { FileType = GgufFileType.F16, Name = "s" });
        var g = GgufFile.Read(dir.File("f16.gguf"));
        // llama2.c files store wq in the interleaved order llama.cpp uses: the GGUF tensor must equal the file's.
        var raw = new RunCReferenceWeights(SharedModels.Stories260K);
        float[] q = g.ReadTensor("blk.1.attn_q.weight");
        float[] k = g.ReadTensor("blk.1.attn_k.weight");
        for (int i = 0; i < q.Length; i++) Assert.AreEqual((float)(Half)raw.Wq(1)[i], q[i]);
        for (int i = 0; i < k.Length; i++) Assert.AreEqual((float)(Half)raw.Wk(1)[i], k[i]);
    }

    [TestMethod]
    public void GgufReaderRejectsCorruptFilesWithCodes()
    {
        using var dir = new TempFolder();
        string path = dir.File("bad.gguf");
        File.WriteAllBytes(path, new byte[] { (byte)'G', (byte)'G', (byte)'U', (byte)'F', 3, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255, 0, 0,
            0, 0, 0, 0, 0, 0 });
        Assert.AreEqual(ErrorCodes.ArtifactFormat, Assert.ThrowsExactly<SuperQuantException>(() => GgufFile.Read(path)).Code);
        File.WriteAllBytes(path, new byte[] { 1, 2, 3 });
        Assert.AreEqual(ErrorCodes.ArtifactFormat, Assert.ThrowsExactly<SuperQuantException>(() => GgufFile.Read(path)).Code);
    }

    [TestMethod]
    public void GgufExportOfUnsupportedArchitectureIsACodedError()
    {
        using var dir = new TempFolder();
        TinyCheckpointFactory.Write(dir.Path, new TinyModelSpec { ModelType = "qwen2" });
        using var m = ModelLoader.Load(dir.Path);
        // Every model_type we read has a GGUF architecture now; a description of one llama.cpp does not know is refused.
        var e = Assert.ThrowsExactly<SuperQuantException>(() => GgufExporter.CheckSupported(m.Config with { Architecture = "falcon" }));
        Assert.AreEqual(ErrorCodes.UnsupportedQuantization, e.Code);
        StringAssert.Contains(e.Message, "'falcon'");
        Assert.IsFalse(File.Exists(dir.File("q.gguf")));
    }
}

[TestClass]
public sealed class GgufIndependentParserTests
{
    static string CheckFolder => Path.Combine(RepoPaths.Root, "tests", "gguf-check");

    static (int Exit, string Out, string Err) Run(string file, string workDir, params string[] args)
    {
        var r = ProcessRunner.Run(file, workDir, null, TimeSpan.FromMinutes(5), args);
        return (r.ExitCode, r.StdOut, r.StdErr);
    }

    static readonly object InstallLock = new();

    /// <summary>Node.js and @huggingface/gguf (npm install on first use; tests run in parallel, so once).</summary>
    static void EnsureInstalled()
    {
        try { Run("node", CheckFolder, "--version"); }
        catch (System.ComponentModel.Win32Exception) { Assert.Inconclusive("node is not installed: the independent GGUF check needs Node.js"); }
        lock (InstallLock)
        {
            if (Directory.Exists(Path.Combine(CheckFolder, "node_modules", "@huggingface", "gguf"))) return;
            var install = Run("npm", CheckFolder, "install", "--no-audit", "--no-fund");
            Assert.AreEqual(0, install.Exit, "npm install of @huggingface/gguf failed: " + install.Err);
        }
    }

    [TestMethod]
    public void HuggingFaceGgufParserReadsWhatWeWrite()
    {
        using var dir = new TempFolder();
        using LlamaModel model = Llama2cCheckpoint.Load(SharedModels.Stories260K);
        string path = dir.File("stories.gguf");
        GgufExporter.Write(path, model, new GgufExport { FileType = GgufFileType.Q4_K_M, Name = "stories260K" });
        var ours = GgufFile.Read(path);

        using var doc = AssertSameMetadata(path);
        var tensors = doc.RootElement.GetProperty("tensors").EnumerateArray().ToList();
        Assert.AreEqual(ours.Tensors.Count, tensors.Count);
        for (int i = 0; i < tensors.Count; i++)
        {
            Assert.AreEqual(ours.Tensors[i].Name, tensors[i].GetProperty("name").GetString());
            CollectionAssert.AreEqual(ours.Tensors[i].Dims, tensors[i].GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray());
            Assert.AreEqual((int)ours.Tensors[i].Type, tensors[i].GetProperty("dtype").GetInt32());
            Assert.AreEqual(ours.Tensors[i].Offset, tensors[i].GetProperty("offset").GetInt64());
        }
    }

    /// <summary>Reads <paramref name="path"/> with @huggingface/gguf and checks every metadata value (arrays
    /// included) equals what our reader sees; returns the parsed output.</summary>
    public static System.Text.Json.JsonDocument AssertSameMetadata(string path)
    {
        EnsureInstalled();
        var ours = GgufFile.Read(path);
        var r = Run("node", CheckFolder, "check.mjs", path);
        Assert.AreEqual(0, r.Exit, r.Err);
        var doc = System.Text.Json.JsonDocument.Parse(r.Out);
        var meta = doc.RootElement.GetProperty("metadata");
        Assert.AreEqual(ours.Tensors.Count, meta.GetProperty("tensor_count").GetInt32());
        static void Same(string key, object value, System.Text.Json.JsonElement theirs)
        {
            switch (value)
            {
                case string s: Assert.AreEqual(s, theirs.GetString(), key); break;
                case uint u: Assert.AreEqual(u, theirs.GetUInt32(), key); break;
                case int i: Assert.AreEqual(i, theirs.GetInt32(), key); break;
                case float f: Assert.AreEqual(f, theirs.GetSingle(), key); break;
                case bool b: Assert.AreEqual(b, theirs.GetBoolean(), key); break;
                case object[] a:
                    Assert.AreEqual(a.Length, theirs.GetArrayLength(), key);
                    for (int k = 0; k < a.Length; k++) Same($"{key}[{k}]", a[k], theirs[k]);
                    break;
                default: Assert.Fail($"unexpected metadata type for {key}"); break;
            }
        }
        foreach (var (key, value) in ours.Metadata) Same(key, value, meta.GetProperty(key));
        return doc;
    }
}
