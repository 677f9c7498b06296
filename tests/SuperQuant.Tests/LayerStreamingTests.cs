using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.Core.Evaluation;
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
/// Layer-streamed runs (memory: layers, issue 14 item 4): the model's blocks are read from disk one at a time, z is
/// tuned and each block quantized as it streams past, and evaluation runs layer-major over batches of windows. The
/// whole-model path is the reference here (itself checked against llama.cpp and plain-loop ports elsewhere): a
/// streamed run must write the same bytes and measure the same numbers.
/// </summary>
[TestClass]
public sealed class LayerStreamingTests
{
    static (string Checkpoint, string Tokens) Planted(TempFolder dir, TinyModelSpec spec)
    {
        string ckpt = Path.Combine(dir.Path, "ckpt");
        SuperWeightPlanter.WriteCheckpoint(ckpt, spec, 1, 17, 45);
        string ids = dir.File("ids.txt");
        var rng = new Random(3);
        SuperQuant.Models.Text.TokenIdFile.Write(ids, Enumerable.Range(0, 300).Select(_ => rng.Next(0, spec.Vocab)));
        return (ckpt, ids);
    }

    [TestMethod]
    [DataRow("super-aware", "auto", "packed", "128", "llama")]
    [DataRow("rtn", "auto", "packed", "channel", "llama")]
    [DataRow("super-aware", "2.5", "paper", "tensor", "llama")]
    [DataRow("super-aware", "auto", "packed", "32", "qwen2")]
    [TestCategory(TestCategories.Slow)]
    public void AStreamedRunWritesTheSameBytesAndMeasuresTheSameQuality(string method, string z, string variant, string block, string arch)
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 3, Hidden = 64, Intermediate = 128, Vocab = 64, ModelType = arch };
        var (ckpt, ids) = Planted(dir, spec);
        JsonElement Run(string memory)
        {
            var args = new List<string> { "quantize", "--model", ckpt, "--memory", memory, "--prompt-tokens", "1 2 3 4", "--method", method, "--z", z,
                "--variant", variant, "--block", block, "--calibration-tokens", ids, "--eval-tokens", ids, "--context", "40",
                "--out", dir.File($"{memory}/model.sqpk.safetensors"), "--json", "--device", "cpu" };
            if (arch == "llama") args.AddRange(new[] { "--gguf", dir.File($"{memory}/model.gguf"), "--gguf-type", "q4_0" });
            var r = CliRunner.Run(args.ToArray());
            Assert.AreEqual(0, r.ExitCode, r.StdErr);
            return JsonDocument.Parse(r.StdOut).RootElement;
        }
        var whole = Run("model");
        var streamed = Run("layers");
        if (method == "super-aware")
            CollectionAssert.AreEqual(new[] { 1, 17, 45 },
                streamed.GetProperty("super_weights")[0].EnumerateArray().Select(e => e.GetInt32()).ToArray(), "detection on a streamed model");
        Assert.AreEqual(whole.GetProperty("super_weights").GetRawText(), streamed.GetProperty("super_weights").GetRawText());
        Assert.AreEqual(whole.GetProperty("z").GetRawText(), streamed.GetProperty("z").GetRawText(), "z tuned block by block picks the same threshold");
        CollectionAssert.AreEqual(File.ReadAllBytes(dir.File("model/model.sqpk.safetensors")),
            File.ReadAllBytes(dir.File("layers/model.sqpk.safetensors")), "packed bytes");
        if (arch == "llama")
            CollectionAssert.AreEqual(File.ReadAllBytes(dir.File("model/model.gguf")), File.ReadAllBytes(dir.File("layers/model.gguf")), "GGUF bytes");
        var a = whole.GetProperty("artifacts").EnumerateArray().ToList();
        var b = streamed.GetProperty("artifacts").EnumerateArray().ToList();
        Assert.HasCount(a.Count, b);
        for (int i = 0; i < a.Count; i++)
        {
            Assert.AreEqual(a[i].GetProperty("tokens_scored").GetInt32(), b[i].GetProperty("tokens_scored").GetInt32());
            double ka = a[i].GetProperty("kl_mean").GetDouble(), kb = b[i].GetProperty("kl_mean").GetDouble();
            // Batched windows change only the summation order of the reference's matmuls.
            Assert.AreEqual(ka, kb, 1e-3 * ka + 1e-7, $"{a[i].GetProperty("kind")}: KL whole {ka} vs streamed {kb}");
        }
    }

    [TestMethod]
    public void EvalOnAStreamedCheckpointAndArtifactGivesTheWholeModelsNumbers()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 2, Hidden = 64, Intermediate = 128, Vocab = 64 };
        var (ckpt, ids) = Planted(dir, spec);
        string packed = dir.File("m.sqpk.safetensors");
        Assert.AreEqual(0, CliRunner.Run("quantize", "--model", ckpt, "--prompt-tokens", "1 2 3", "--z", "3", "--out", packed, "--device", "cpu").ExitCode);
        JsonElement Eval(string memory)
        {
            var r = CliRunner.Run("eval", "-m", packed, "--reference", ckpt, "--tokens", ids, "--context", "40", "--memory", memory, "--json",
                "--device", "cpu");
            Assert.AreEqual(0, r.ExitCode, r.StdErr);
            return JsonDocument.Parse(r.StdOut).RootElement;
        }
        var whole = Eval("model");
        var streamed = Eval("layers");
        foreach (string key in new[] { "perplexity", "reference_perplexity", "kl_divergence", "top1_agreement" })
        {
            double a = whole.GetProperty(key).GetDouble(), b = streamed.GetProperty(key).GetDouble();
            Assert.AreEqual(a, b, 1e-4 * Math.Abs(a) + 1e-7, $"{key}: whole {a}, streamed {b}");
        }
        Assert.IsGreaterThan(0.0, whole.GetProperty("kl_divergence").GetDouble(), "the artifact differs from the checkpoint: a real comparison");
    }

    /// <summary>Counts the blocks a source hands out (every load is a read of the block from disk).</summary>
    sealed class CountingSource(HfCheckpoint checkpoint) : ILayerSource
    {
        public List<int> Loads { get; } = new();
        public LlamaLayerWeights Load(int layer) { Loads.Add(layer); return checkpoint.LoadLayer(layer); }
        public void Dispose() => checkpoint.Dispose();
    }

    [TestMethod]
    public void LayerMajorEvaluationReadsEachBlockOncePerBatchAndGivesTheWholeModelsLogits()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 3, Hidden = 64, Intermediate = 128, Vocab = 64 };
        var (ckpt, _) = Planted(dir, spec);
        using var whole = ModelLoader.Load(ckpt);
        var source = new CountingSource(HfCheckpoint.Open(ckpt));
        using var shell = ModelLoader.Load(ckpt);
        var weights = new LlamaWeights
        {
            TokenEmbedding = shell.Weights.TokenEmbedding.clone(), FinalNorm = shell.Weights.FinalNorm?.clone(), LmHead = shell.Weights.LmHead?.clone(),
            Layers = new LlamaLayerWeights?[spec.Layers], Source = source,
        };
        using var streamed = new LlamaModel(whole.Config, weights);
        var rng = new Random(9);
        int[] tokens = Enumerable.Range(0, 200).Select(_ => rng.Next(0, spec.Vocab)).ToArray();
        // 200 tokens, context 40, stride 20: 9 windows of 40 and none shorter; batches of 4 -> 3 passes.
        using var batches = new LayerMajorLogits(streamed, tokens, 40, 20, maxBatch: 4);
        var windows = EvalWindow.Over(tokens.Length, 40, 20).ToList();
        foreach (var w in windows)
        {
            using var input = torch.tensor(tokens.Skip(w.Start).Take(w.Length).Select(t => (long)t).ToArray(), new long[] { 1, w.Length },
                dtype: ScalarType.Int64);
            using var expected = whole.Forward(input);
            using var got = batches.Logits(input);
            Assert.IsTrue(got.allclose(expected, rtol: 1e-4, atol: 1e-4), $"window at {w.Start}: layer-major logits differ from the whole model's");
        }
        int passes = (windows.Count + 3) / 4;
        Assert.AreEqual(passes, batches.Passes);
        CollectionAssert.AreEqual(Enumerable.Range(0, passes).SelectMany(_ => Enumerable.Range(0, spec.Layers)).ToArray(), source.Loads.ToArray(),
            "each pass reads every block once, in order");
        // A request that is not the expected window is answered directly, not from a batch.
        using var other = torch.tensor(new long[] { 5, 6, 7 }, new long[] { 1, 3 }, dtype: ScalarType.Int64);
        using var direct = batches.Logits(other);
        using var expectedOther = whole.Forward(other);
        Assert.IsTrue(direct.allclose(expectedOther, rtol: 1e-4, atol: 1e-4));
    }

    [TestMethod]
    public void DetectionOnAStreamedModelRestoresTheWeightsItZeroes()
    {
        using var dir = new TempFolder();
        // The super weight sits in the last block, which a forward pass leaves loaded (inside inference mode: the block
        // must still be editable in place; it was not, and the bench crashed).
        var spec = new TinyModelSpec { Layers = 2, Hidden = 64, Intermediate = 128, Vocab = 64 };
        var (ckpt, _) = Planted(dir, spec);
        using var model = ModelLoader.Load(ckpt, null, streamed: true);
        Assert.IsTrue(model.Weights.IsStreamed);
        var report = new SuperWeightDetector().Detect(model, new[] { 1, 2, 3, 4 });
        Assert.AreEqual((1, 17, 45), (report.SuperWeights.Single().Layer, report.SuperWeights.Single().Row, report.SuperWeights.Single().Column));
        Assert.IsGreaterThanOrEqualTo(2, report.Passes.Count, "the second pass ran with the super weight zeroed");
        Assert.AreEqual(5f, SuperWeightDetector.ReadWeight(model, 1, 17, 45), "restored");
        model.Weights.ReleaseResident();
        Assert.AreEqual(5f, SuperWeightDetector.ReadWeight(model, 1, 17, 45), "restored when the block is read again from disk");
        Assert.ThrowsExactly<InvalidOperationException>(() => model.Weights[new LinearSite(0, Projection.Q)] = torch.zeros(1));
    }

    [TestMethod]
    [DataRow("packed", 4, 128, 96L, 64L)]
    [DataRow("packed", 3, 0, 96L, 64L)]
    [DataRow("packed", 8, 4096, 32L, 100L)]
    [DataRow("packed", 2, 32, 8L, 70L)]
    [DataRow("paper", 4, PaperQuantizerSettings.TensorBlock, 96L, 64L)]
    [DataRow("paper", 3, 0, 96L, 64L)]
    [DataRow("paper", 4, 4096, 96L, 64L)] // does not divide: one tensor-wide block
    [DataRow("paper-nf", 4, 64, 96L, 64L)]
    public void PlannedShapesEqualTheQuantizedMatrix(string variant, int bits, int block, long rows, long cols)
    {
        var o = new WeightQuantizationOptions
        {
            Bits = bits, BlockSize = block, Z = 3, Variant = variant == "packed" ? WeightVariant.Packed : WeightVariant.Paper,
            Levels = variant == "paper-nf" ? LevelKind.NormalFloat : LevelKind.Integer,
        };
        var sws = new[] { new SuperWeight(2, 1, 3, 4f, 1), new SuperWeight(2, 0, 5, -4f, 1), new SuperWeight(1, 0, 0, 1f, 1) };
        foreach (var site in new[] { new LinearSite(2, Projection.Down), new LinearSite(2, Projection.Up), new LinearSite(1, Projection.Down) })
        {
            using var w = torch.randn(rows, cols, generator: torch.manual_seed(7)); // host
            using var q = ModelQuantizer.QuantizeMatrix(w, site, o, 3, sws);
            var plan = ModelQuantizer.PlanMatrix(site, rows, cols, o, sws);
            var got = q.Plan;
            Assert.AreEqual((got.Rows, got.Cols, got.Bits, got.BlockSize, got.Layout, got.FlatBlock, got.Outliers),
                (plan.Rows, plan.Cols, plan.Bits, plan.BlockSize, plan.Layout, plan.FlatBlock, plan.Outliers), $"{site}");
            CollectionAssert.AreEqual(got.StatShape, plan.StatShape, $"{site}");
            Assert.AreEqual(q.BitsPerWeight, plan.BitsPerWeight, 1e-12);
        }
    }

    /// <summary>A streamed run reads a block only when a pass reaches it, so a damaged block is found mid-run: it
    /// must still be the input error (exit 3, SQ2008 naming the tensor) with nothing left behind, as at load.</summary>
    [TestMethod]
    public void ANonFiniteBlockFoundMidRunIsAnInputErrorAndLeavesNothing()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 3, Hidden = 64, Intermediate = 128, Vocab = 64 };
        var w = TinyCheckpointFactory.RandomWeights(spec);
        w["model.layers.2.mlp.up_proj.weight"][7] = float.PositiveInfinity;
        string ckpt = Path.Combine(dir.Path, "ckpt");
        TinyCheckpointFactory.Write(ckpt, spec, w);
        string outDir = Path.Combine(dir.Path, "out");
        Directory.CreateDirectory(outDir);
        var r = CliRunner.Run("quantize", "--model", ckpt, "--memory", "layers", "--prompt-tokens", "1 2 3", "--z", "3",
            "--out", Path.Combine(outDir, "m.sqpk.safetensors"), "--gguf", Path.Combine(outDir, "m.gguf"), "--gguf-type", "q4_0", "--device", "cpu");
        Assert.AreEqual(3, r.ExitCode, r.Output);
        StringAssert.Contains(r.StdErr, "SQ2008");
        StringAssert.Contains(r.StdErr, "model.layers.2.mlp.up_proj.weight");
        Assert.IsEmpty(Directory.GetFiles(outDir), "no artifact, staged or final");
        // A block that is fine is not blamed: the same checkpoint in memory fails at load with the same tensor.
        var whole = CliRunner.Run("quantize", "--model", ckpt, "--memory", "model", "--prompt-tokens", "1 2 3", "--z", "3", "--out",
            Path.Combine(outDir, "m.sqpk.safetensors"), "--device", "cpu");
        Assert.AreEqual(3, whole.ExitCode);
        StringAssert.Contains(whole.StdErr, "model.layers.2.mlp.up_proj.weight");
    }

    /// <summary>A streamed model reads each block again on every pass: a checkpoint written in place between two
    /// passes is refused (SQ2001 naming the file), never mixed into one artifact.</summary>
    [TestMethod]
    public void ACheckpointWrittenDuringAStreamedRunIsRefused()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 2, Hidden = 64, Intermediate = 128, Vocab = 64 };
        var (ckpt, _) = Planted(dir, spec);
        using var model = ModelLoader.Load(ckpt, null, streamed: true);
        model.Forward(new[] { 1, 2, 3 }).Dispose(); // a first pass reads every block
        string shard = Path.Combine(ckpt, "model.safetensors");
        using (var fs = new FileStream(shard, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
        {
            fs.Seek(-4, SeekOrigin.End);
            fs.Write(BitConverter.GetBytes(0.5f)); // one weight of the last tensor, in place
        }
        File.SetLastWriteTimeUtc(shard, DateTime.UtcNow.AddSeconds(5)); // as a writer moves it (coarse clocks)
        model.Weights.ReleaseResident();
        var e = Assert.ThrowsExactly<SuperQuantException>(() => model.Forward(new[] { 1, 2, 3 }).Dispose());
        Assert.AreEqual(ErrorCodes.CheckpointFormat, e.Code);
        StringAssert.Contains(e.Message, "model.safetensors was modified while this run was reading it");
    }

    /// <summary>A run that would hold more than the machine has fails before any work with SQ0009 and advice, instead of
    /// being killed by the kernel (no code, no message); auto streams what it can. The available memory is set through
    /// SUPERQUANT_AVAILABLE_MEMORY (also the knob for machines whose limit the kernel does not show).</summary>
    [TestMethod]
    public void ARunThatCannotFitIsRefusedUpFrontAndAutoStreamsWhatItCan()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 2, Hidden = 64, Intermediate = 128, Vocab = 64 };
        var (ckpt, ids) = Planted(dir, spec);
        var tight = new Dictionary<string, string> { [ProcessMemory.AvailableOverride] = "64K" };
        string outFile = dir.File("out/m.sqpk.safetensors");
        var wa = CliRunner.Run(tight, "quantize", "--model", ckpt, "--method", "smoothquant", "--activation-bits", "8", "--calibration-tokens", ids,
            "--prompt-tokens", "1 2 3", "--out", outFile, "--device", "cpu");
        Assert.AreEqual(3, wa.ExitCode, wa.Output);
        StringAssert.Contains(wa.StdErr, "SQ0009");
        StringAssert.Contains(wa.StdErr, "needs the whole model");
        Assert.IsFalse(File.Exists(outFile));

        var auto = CliRunner.Run(tight, "quantize", "--model", ckpt, "--prompt-tokens", "1 2 3", "--z", "3", "--out", outFile, "--device", "cpu");
        Assert.AreEqual(0, auto.ExitCode, auto.Output);
        StringAssert.Contains(auto.Output, "layer-streamed (auto:");

        var whole = CliRunner.Run(tight, "quantize", "--model", ckpt, "--memory", "model", "--prompt-tokens", "1 2 3", "--z", "3", "--out",
            dir.File("w.sqpk.safetensors"), "--device", "cpu");
        Assert.AreEqual(3, whole.ExitCode, whole.Output);
        StringAssert.Contains(whole.StdErr, "use memory: layers");

        var llama2c = CliRunner.Run(tight, "quantize", "--model", SharedModels.Stories260K, "--prompt-tokens", "1 2 3", "--z", "3", "--out",
            dir.File("s.sqpk.safetensors"), "--device", "cpu");
        Assert.AreEqual(3, llama2c.ExitCode, llama2c.Output);
        StringAssert.Contains(llama2c.StdErr, "Llama2c checkpoints are loaded whole");

        Assert.IsTrue(ProcessMemory.TryParseBytes("8G", out long g) && g == 8L << 30);
        Assert.IsTrue(ProcessMemory.TryParseBytes("1.5M", out long m) && m == 3L << 19);
        Assert.IsTrue(ProcessMemory.TryParseBytes("4096", out long b) && b == 4096);
        Assert.IsFalse(ProcessMemory.TryParseBytes("lots", out _));
        Assert.IsFalse(ProcessMemory.TryParseBytes("-1G", out _));
        Assert.IsGreaterThan(0L, ProcessMemory.Available, "this machine reports its memory");
    }

    /// <summary>SUPERQUANT_AVAILABLE_MEMORY in every common spelling, and anything else an error listing the forms
    /// before any work (it used to be ignored without a word; 0.1 read as 0 turned the memory check off).</summary>
    [TestMethod]
    [DataRow("8GiB", 8L << 30)]
    [DataRow("8gib", 8L << 30)]
    [DataRow("8GB", 8_000_000_000L)]
    [DataRow("512M", 512L << 20)]
    [DataRow("2T", 2L << 40)]
    [DataRow(" 4096 ", 4096L)]
    [DataRow("abc", -1L)]
    [DataRow("NaN", -1L)]
    [DataRow("0.1", -1L)]
    [DataRow("8 bananas", -1L)]
    [DataRow("Infinity", -1L)]
    public void TheAvailableMemoryOverrideIsReadOrRefused(string value, long expected)
    {
        bool ok = ProcessMemory.TryParseBytes(value, out long bytes);
        Assert.AreEqual(expected >= 0, ok, value);
        if (ok) Assert.AreEqual(expected, bytes, value);
        else
        {
            var r = CliRunner.Run(new Dictionary<string, string> { [ProcessMemory.AvailableOverride] = value }, "doctor");
            Assert.AreEqual(3, r.ExitCode, r.Output);
            StringAssert.Contains(r.Output, "SQ2009");
            StringAssert.Contains(r.Output, "8GiB");
        }
    }

    [TestMethod]
    public void WhatAStreamedRunCannotDoIsRefusedBeforeAnyWork()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 2, Hidden = 64, Intermediate = 128, Vocab = 64 };
        var (ckpt, ids) = Planted(dir, spec);
        string outFile = dir.File("out.sqpk.safetensors");
        var r = CliRunner.Run("quantize", "--model", ckpt, "--memory", "layers", "--method", "duquant", "--activation-bits", "4", "--prompt-tokens", "1 2 3",
            "--calibration-tokens", ids, "--out", outFile, "--device", "cpu");
        Assert.AreEqual(3, r.ExitCode, r.StdErr);
        StringAssert.Contains(r.StdErr, "SQ4001");
        StringAssert.Contains(r.StdErr, "layer-streamed");
        Assert.IsFalse(File.Exists(outFile));

        r = CliRunner.Run("quantize", "--model", SharedModels.Stories260K, "--memory", "layers", "--prompt-tokens", "1 2 3", "--z", "4", "--out",
            outFile, "--device", "cpu");
        Assert.AreEqual(3, r.ExitCode, r.StdErr);
        StringAssert.Contains(r.StdErr, "SQ4001");
        StringAssert.Contains(r.StdErr, "Llama2c");

        r = CliRunner.Run("quantize", "--model", ckpt, "--memory", "disk", "--out", outFile);
        Assert.AreEqual(3, r.ExitCode, r.StdErr);
        StringAssert.Contains(r.StdErr, "SQ2009: --memory 'disk'");

        File.WriteAllText(dir.File("quantize.yaml"), $"version: 1\nmemory: disk\nmodels:\n  - id: m\n    checkpoint: ckpt\n    output: out.sqpk.safetensors\n");
        r = CliRunner.Run("gate", "--manifest", dir.File("quantize.yaml"));
        Assert.AreEqual(3, r.ExitCode, r.StdErr);
        StringAssert.Contains(r.StdErr, "quantize.yaml(2,");
        StringAssert.Contains(r.StdErr, "memory");
    }
}
