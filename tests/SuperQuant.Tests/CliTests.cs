using System.Text.Json;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

[TestClass]
public sealed class CliTests
{
    /// <summary>An export that detects nothing (rtn, or only F16/BF16 GGUF files) needs no detection prompt, so a
    /// checkpoint without a tokenizer exports without --prompt-tokens; one that does detect still asks for it.</summary>
    [TestMethod]
    public void ExportsThatDetectNothingNeedNoPrompt()
    {
        using var dir = new TempFolder();
        TinyProject.Write(dir.Path);
        string ckpt = dir.File("ckpt");
        var rtn = CliRunner.Run("quantize", "-m", ckpt, "--method", "rtn", "--bits", "8", "--gguf", dir.File("a.gguf"), "--gguf-type", "q8_0", "-o",
            dir.File("a.sqpk.safetensors"));
        Assert.AreEqual(0, rtn.ExitCode, rtn.Output);
        var f16 = CliRunner.Run("quantize", "-m", ckpt, "--z", "none", "--gguf", dir.File("b.gguf"), "--gguf-type", "f16");
        Assert.AreEqual(0, f16.ExitCode, f16.Output);
        Assert.IsTrue(File.Exists(dir.File("a.gguf")) && File.Exists(dir.File("b.gguf")) && File.Exists(dir.File("a.sqpk.safetensors")));
        var detects = CliRunner.Run("quantize", "-m", ckpt, "--z", "none", "--gguf", dir.File("c.gguf"), "--gguf-type", "q4_k_m");
        Assert.AreEqual(3, detects.ExitCode, detects.Output);
        StringAssert.Contains(detects.Output, "--prompt-tokens");
        Assert.IsFalse(File.Exists(dir.File("c.gguf")));
    }

    [TestMethod]
    public void GenerateThenEvalStories260KFromTheCommandLine()
    {
        using var dir = new TempFolder();
        string ids = dir.File("ids.txt");
        var gen = CliRunner.Run("generate", "--model", SharedModels.Stories260K, "--count", "300", "--seed", "7", "--out", ids, "--device", "cpu");
        Assert.AreEqual(0, gen.ExitCode, gen.StdErr);
        var again = CliRunner.Run("generate", "--model", SharedModels.Stories260K, "--count", "300", "--seed", "7", "--out", dir.File("ids2.txt"),
            "--device", "cpu");
        CollectionAssert.AreEqual(File.ReadAllLines(ids), File.ReadAllLines(dir.File("ids2.txt")), "same seed, same stream");

        // One window from BOS: stories260K's predictions need the history from BOS (see README, evaluation notes).
        var eval = CliRunner.Run("eval", "--model", SharedModels.Stories260K, "--tokens", ids, "--context", "512", "--json");
        Assert.AreEqual(0, eval.ExitCode, eval.StdErr);
        var r = JsonDocument.Parse(eval.StdOut).RootElement;
        Assert.AreEqual(301, r.GetProperty("tokens").GetInt32());
        Assert.AreEqual(300, r.GetProperty("tokens_scored").GetInt32());
        double ppl = r.GetProperty("perplexity").GetDouble();
        // Its own samples at temperature 1: far better than uniform over 512 tokens, and not degenerate.
        Assert.IsTrue(ppl > 1.0 && ppl < 50, $"perplexity {ppl}");
        Assert.IsTrue(r.GetProperty("perplexity_se").GetDouble() > 0);

        var kl = CliRunner.Run("eval", "--model", SharedModels.Stories260K, "--reference", SharedModels.Stories260K, "--tokens", ids, "--context",
            "512", "--json");
        Assert.AreEqual(0, kl.ExitCode, kl.StdErr);
        var k = JsonDocument.Parse(kl.StdOut).RootElement;
        Assert.AreEqual(0, k.GetProperty("kl_divergence").GetDouble(), 1e-12);
        Assert.AreEqual(1.0, k.GetProperty("top1_agreement").GetDouble());
        Assert.AreEqual(ppl, k.GetProperty("perplexity").GetDouble(), 1e-9 * ppl, "same windows as the plain run");
    }

    [TestMethod]
    public void MissingCheckpointExitsWithInputErrorAndCode()
    {
        var r = CliRunner.Run("eval", "--model", "/nonexistent/model.bin", "--tokens", "/nonexistent/ids.txt");
        Assert.AreEqual(3, r.ExitCode);
        StringAssert.Contains(r.StdErr, "SQ2005");
        StringAssert.Contains(r.StdErr, "/nonexistent/model.bin");
    }

    [TestMethod]
    public void UsageErrorsExitWithTwo()
    {
        var both = CliRunner.Run("eval", "--model", "m", "--text", "a", "--tokens", "b");
        Assert.AreEqual(2, both.ExitCode);
        StringAssert.Contains(both.StdErr, "exactly one of --text or --tokens");
        Assert.AreEqual(2, CliRunner.Run("frobnicate").ExitCode);
    }

    [TestMethod]
    public void InitWritesAManifestTheReaderAccepts()
    {
        using var dir = new TempFolder();
        TinyCheckpointFactory.Write(dir.File("ckpt"), new TinyModelSpec());
        Directory.CreateDirectory(dir.File("data"));
        File.WriteAllText(dir.File("data/calibration.tokens.txt"), "1 2 3");
        File.WriteAllText(dir.File("data/evaluation.tokens.txt"), "1 2 3");
        string manifest = dir.File("quantize.yaml");
        var r = CliRunner.Run("init", "--checkpoint", "ckpt", "--out", manifest);
        Assert.AreEqual(0, r.ExitCode, r.StdErr);
        var m = SuperQuant.Manifest.ManifestReader.Read(manifest);
        Assert.AreEqual("ckpt", m.Models.Single().Id);
        Assert.AreEqual(3, CliRunner.Run("init", "--checkpoint", "ckpt", "--out", manifest).ExitCode, "no overwrite without --force");
    }

    [TestMethod]
    public void EveryCommandHasHelp()
    {
        foreach (string cmd in new[] { "init", "detect", "analyze", "quantize", "gate", "eval", "generate", "doctor", "bench" })
        {
            var r = CliRunner.Run(cmd, "--help");
            Assert.AreEqual(0, r.ExitCode, cmd);
            StringAssert.Contains(r.StdOut, "Exit codes", cmd);
        }
    }
}

[TestClass]
public sealed class QuantizeCliTests
{
    [TestMethod]
    public void QuantizeWritesBothArtifactsAndReportsQuality()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 2, Hidden = 64, Intermediate = 128 };
        string ckpt = Path.Combine(dir.Path, "ckpt");
        SuperWeightPlanter.WriteCheckpoint(ckpt, spec, 1, 17, 45);
        string ids = dir.File("ids.txt");
        SuperQuant.Models.Text.TokenIdFile.Write(ids, Enumerable.Range(0, 100).Select(i => (i * 7) % 48));
        string packed = dir.File("out/model.sqpk.safetensors"), gguf = dir.File("out/model.gguf");
        var r = CliRunner.Run("quantize", "--model", ckpt, "--prompt-tokens", "1 2 3 4", "--bits", "4", "--block", "64", "--gguf-raise-super",
            "--calibration-tokens", ids, "--out", packed, "--gguf", gguf, "--eval-tokens", ids, "--context", "50", "--json", "--device", "cpu");
        Assert.AreEqual(0, r.ExitCode, r.StdErr);
        var j = JsonDocument.Parse(r.StdOut).RootElement;
        Assert.AreEqual(4, j.GetProperty("bits").GetInt32());
        CollectionAssert.AreEqual(new[] { 1, 17, 45 }, j.GetProperty("super_weights")[0].EnumerateArray().Select(e => e.GetInt32()).ToArray());
        var artifacts = j.GetProperty("artifacts").EnumerateArray().ToDictionary(a => a.GetProperty("kind").GetString()!);
        Assert.AreEqual("llama.cpp", artifacts["gguf q4_k_m"].GetProperty("engine").GetString(),
            "the GGUF is measured by llama.cpp (default type for 4 bits: q4_k_m)");
        Assert.AreEqual("superquant", artifacts["packed"].GetProperty("engine").GetString());
        foreach (var a in artifacts.Values)
        {
            Assert.IsGreaterThanOrEqualTo(0.0, a.GetProperty("kl_mean").GetDouble());
            Assert.AreEqual(99, a.GetProperty("tokens_scored").GetInt32());
        }
        Assert.IsGreaterThan(4.0, artifacts["packed"].GetProperty("bits_per_weight").GetDouble());
        var (model, info) = SuperQuant.Models.Artifacts.PackedArtifact.Load(packed);
        using (model) Assert.AreEqual(5f, SuperQuant.Core.SuperWeights.SuperWeightDetector.ReadWeight(model, 1, 17, 45));
        Assert.AreEqual("super-aware", info.Method);
        var g = SuperQuant.Models.Gguf.GgufFile.Read(gguf);
        // 128-wide rows cannot hold Q4_K's 256-blocks: llama.cpp's fallback Q5_0; the super weight's matrix raised to
        // Q6_K falls back to Q8_0.
        Assert.AreEqual(SuperQuant.Models.Gguf.GgmlType.Q8_0, g.Tensors.Single(t => t.Name == "blk.1.ffn_down.weight").Type, "--gguf-raise-super");
        Assert.AreEqual(SuperQuant.Models.Gguf.GgmlType.Q5_0, g.Tensors.Single(t => t.Name == "blk.0.ffn_down.weight").Type);
    }

    [TestMethod]
    public void QuantizeRejectsBadSettingsWithCodes()
    {
        using var dir = new TempFolder();
        TinyCheckpointFactory.Write(dir.Path, new TinyModelSpec());
        var r = CliRunner.Run("quantize", "--model", dir.Path, "--method", "rtn", "--bits", "9", "--out", dir.File("x.safetensors"));
        Assert.AreEqual(3, r.ExitCode, "a value outside an option's domain is an input error");
        StringAssert.Contains(r.StdErr, "error SQ2009: --bits 9 (expected 2..8)");
        Assert.IsFalse(File.Exists(dir.File("x.safetensors")));
        var z = CliRunner.Run("quantize", "--model", dir.Path, "--prompt-tokens", "1", "--out", dir.File("x.safetensors"));
        Assert.AreEqual(3, z.ExitCode);
        StringAssert.Contains(z.StdErr, "--calibration");
        Assert.AreEqual(2, CliRunner.Run("quantize", "--model", dir.Path).ExitCode, "needs --out or --gguf");
    }
}
