using System.Text.Json;
using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Quantization;
using SuperQuant.Models.Artifacts;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Text;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

/// <summary>W/A methods through the manifest: the gate evaluates the model with its activation hooks, the packed
/// artifact (format version 2) carries the hooks' state, and the loaded artifact evaluates to the same numbers.</summary>
[TestClass]
public sealed class ActivationArtifactTests
{
    [TestMethod]
    [DataRow("duquant", 4, 4, true)]
    [DataRow("hadamard", 4, 8, true)]
    [DataRow("smoothquant", 8, 8, false)]
    [DataRow("super-aware", 4, 8, false)]
    public void TheGatedNumbersAreTheLoadedArtifactsNumbers(string method, int wBits, int aBits, bool rotates)
    {
        using var dir = new TempFolder();
        TinyProject.Write(dir.Path);
        string yaml = File.ReadAllText(dir.File("quantize.yaml"))
            .Replace("    weight_bits: 4", $"    method: {method}\n    weight_bits: {wBits}\n    activation_bits: {aBits}")
            .Replace("    block_size: 32", "    block_size: channel")
            .Replace("max_increase: 1", "max_increase: 100");
        File.WriteAllText(dir.File("quantize.yaml"), yaml);
        var r = CliRunner.Run("gate", "--manifest", dir.File("quantize.yaml"), "--report-dir", dir.File("obj"));
        Assert.AreEqual(0, r.ExitCode, r.Output);
        StringAssert.Contains(r.StdOut, $"W{wBits}A{aBits}");
        StringAssert.Contains(File.ReadAllText(dir.File("obj/superquant-report.md")), $"{method} W{wBits}A{aBits}, block channel",
            "the report says how it was quantized");

        using var report = JsonDocument.Parse(File.ReadAllText(dir.File("obj/superquant-report.json")));
        var row = report.RootElement.GetProperty("models")[0].GetProperty("artifacts")[0];
        Assert.AreEqual("superquant", row.GetProperty("engine").GetString(), "a packed artifact is measured by our loader");
        double gatedKl = row.GetProperty("kl_mean").GetDouble();

        var (model, info) = PackedArtifact.Load(dir.File("models/tiny.sqpk.safetensors"));
        using (model)
        {
            Assert.AreEqual(method, info.Method);
            Assert.IsNotNull(info.Activations);
            Assert.AreEqual(aBits, info.Activations.Bits);
            var hooks = model.Hooks as ActivationQuantizer;
            Assert.IsNotNull(hooks, "the loader installs the activation hooks");
            Assert.AreEqual(rotates ? 2 * 4 : 0, hooks.Transforms.Count, "one rotation per input group and layer");
            if (method == "super-aware") Assert.IsNotEmpty(hooks.SuperChannels, "the planted super activation is kept out of quantization");
            using var original = ModelLoader.Load(dir.File("ckpt"));
            int[] ids = TokenIdFile.Read(dir.File("ids.txt"), 256);
            var d = Evaluator.Divergence(t => original.Forward(t), t => model.Forward(t), ids, 40, 20);
            // The gate compared against the 16-bit recorded baseline (ReferenceFile): equal to 0.1% of the KL.
            Assert.AreEqual(gatedKl, d.KlDivergence.Value, 1e-6 + 1e-3 * gatedKl, "loaded artifact = gated model");
            Assert.IsGreaterThan(1e-6, d.KlDivergence.Value, "activation quantization changes the outputs");
            model.Hooks = null;
            var weightOnly = Evaluator.Divergence(t => original.Forward(t), t => model.Forward(t), ids, 40, 20);
            Assert.AreNotEqual(d.KlDivergence.Value, weightOnly.KlDivergence.Value, "without its hooks the artifact is a different model");
        }
    }

    [TestMethod]
    public void TheQuantizeCommandWritesTheSameKindOfArtifact()
    {
        using var dir = new TempFolder();
        TinyProject.Write(dir.Path);
        var r = CliRunner.Run("quantize", "-m", dir.File("ckpt"), "--method", "hadamard", "--bits", "4", "--activation-bits", "8", "--block", "channel",
            "--prompt-tokens", "1 2 3", "-o", dir.File("h.safetensors"), "--json");
        Assert.AreEqual(0, r.ExitCode, r.Output);
        using (var summary = JsonDocument.Parse(r.StdOut)) Assert.AreEqual(8, summary.RootElement.GetProperty("activation_bits").GetInt32());
        var (model, info) = PackedArtifact.Load(dir.File("h.safetensors"));
        using (model)
        {
            Assert.AreEqual("hadamard", info.Method);
            Assert.AreEqual(8, info.Activations!.Bits);
            Assert.AreEqual(8, ((ActivationQuantizer)model.Hooks!).Transforms.Count);
        }
        var refused = CliRunner.Run("quantize", "-m", dir.File("ckpt"), "--method", "duquant", "--activation-bits", "4", "--prompt-tokens", "1 2 3",
            "-o", dir.File("d.safetensors"));
        Assert.AreEqual(3, refused.ExitCode, refused.Output);
        StringAssert.Contains(refused.StdErr, "duquant calibrates its smoothing scales: it needs calibration data");
    }

    /// <summary>The paper's settings from the command line: the paper weight quantizer (tensor blocks, IQR clip at a
    /// fixed threshold) and per-tensor, asymmetric, scalar super-activation W/A handling reach the artifact, which
    /// loads back with them; a paper-only clip without --variant paper is a coded error.</summary>
    [TestMethod]
    public void PaperSettingsFromTheCommandLineReachTheArtifact()
    {
        using var dir = new TempFolder();
        TinyProject.Write(dir.Path);
        var r = CliRunner.Run("quantize", "-m", dir.File("ckpt"), "--method", "super-aware", "--bits", "4", "--activation-bits", "8",
            "--variant", "paper", "--block", "tensor", "--clip", "iqr", "--z", "3", "--activation-scale", "per-tensor", "--activation-quantizer", "asymmetric",
            "--super-activation", "scalar", "--prompt-tokens", "1 2 3", "-o", dir.File("p.safetensors"), "--json");
        Assert.AreEqual(0, r.ExitCode, r.Output);
        var (model, info) = PackedArtifact.Load(dir.File("p.safetensors"));
        using (model)
        {
            Assert.AreEqual(("paper", "iqr", 3.0), (info.Variant, info.Clip, info.Z));
            Assert.IsTrue(info.Activations!.PerTensor && info.Activations.Asymmetric && info.Activations.SuperActivationScalar);
            var o = ((ActivationQuantizer)model.Hooks!).Options;
            Assert.IsTrue(o.PerTensor && o.Asymmetric && o.SuperActivationScalar);
        }
        var refused = CliRunner.Run("quantize", "-m", dir.File("ckpt"), "--clip", "iqr", "--z", "3", "--prompt-tokens", "1 2 3", "-o",
            dir.File("q.safetensors"));
        Assert.AreEqual(3, refused.ExitCode, refused.Output);
        StringAssert.Contains(refused.StdErr, "use variant paper");
    }

    [TestMethod]
    public void GgufIsRefusedForMethodsThatNeedRunTimeTransforms()
    {
        using var dir = new TempFolder();
        TinyProject.Write(dir.Path);
        File.WriteAllText(dir.File("quantize.yaml"), File.ReadAllText(dir.File("quantize.yaml"))
            .Replace("    weight_bits: 4", "    method: duquant\n    weight_bits: 4\n    activation_bits: 4\n    export: [packed, {gguf: q4_k_m}]"));
        var e = Assert.ThrowsExactly<SuperQuant.Manifest.ManifestException>(() => SuperQuant.Manifest.ManifestReader.Read(dir.File("quantize.yaml")));
        StringAssert.Contains(e.Message, "GGUF holds weights only");
    }
}
