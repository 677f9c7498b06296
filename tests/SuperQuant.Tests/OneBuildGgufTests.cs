using System.Text.Json;
using SuperQuant.Core.Llama;
using SuperQuant.Core.Quantization;
using SuperQuant.LlamaCpp;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Tests;

/// <summary>
/// The one-build super-aware GGUF (issue 37, for models too large for the held-out choice): the calibration inputs
/// spilled to disk in one pass and read back one matrix group at a time, each row the lowest layer-output error among
/// llama.cpp's, importance-weighted and GPTQ rows.
/// </summary>
[TestClass]
public sealed class OneBuildGgufTests
{
    /// <summary>The spilled statistics are the in-memory recorder's (mean squares and H = XᵀX/n, the first tokens only
    /// when capped), q/k/v and gate/up share one H, asking for the next group releases the previous one, and X/√n
    /// (served when tokens are fewer than columns) gives back H.</summary>
    [TestMethod]
    public void SpilledInputsServeTheRecordersSecondMomentsOneGroupAtATime()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 2, Hidden = 64, Intermediate = 128 };
        TinyCheckpointFactory.Write(dir.File("ckpt"), spec);
        var rng = new Random(4);
        int[] tokens = Enumerable.Range(0, 100).Select(_ => rng.Next(spec.Vocab)).ToArray();
        using var model = ModelLoader.Load(dir.File("ckpt"));
        var importance = ImportanceRecorder.Record(model, tokens, 40);
        var covariance = ImportanceRecorder.Covariances(model, tokens, 40, maxTokens: 90);
        using var spilled = SpilledInputs.Record(model, tokens, 40, dir.File("spill"), maxTokens: 90);

        CollectionAssert.AreEquivalent(importance.Keys.ToList(), spilled.Importance.Keys.ToList());
        foreach (var (site, expected) in importance)
            for (int j = 0; j < expected.Length; j++)
                Assert.AreEqual(expected[j], spilled.Importance[site][j], 1e-5 * Math.Abs(expected[j]) + 1e-9, $"{site} column {j}");
        foreach (var (site, expected) in covariance)
        {
            Tensor h = spilled[site];
            Assert.IsTrue(h.allclose(expected, rtol: 1e-4, atol: 1e-6), $"{site}: H differs by {(h - expected).abs().max().item<float>()}");
        }

        Tensor q = spilled[new LinearSite(0, Projection.Q)];
        Assert.AreSame(q, spilled[new LinearSite(0, Projection.K)]);
        Assert.AreSame(q, spilled[new LinearSite(0, Projection.V)]);
        Assert.IsNull(spilled.Rows(new LinearSite(0, Projection.Q)), "90 tokens over 64 columns: H is the cheaper form");
        Tensor down = spilled[new LinearSite(0, Projection.Down)];
        Assert.IsTrue(q.IsInvalid, "the q/k/v group's H is released when the next group is read");
        Tensor x = spilled.Rows(new LinearSite(0, Projection.Down))!;
        Assert.AreEqual(90L, x.shape[0]);
        Assert.IsTrue(x.t().matmul(x).allclose(down, rtol: 1e-4, atol: 1e-6));
    }

    /// <summary>Calibration far shorter than the inputs are wide (3 tokens for 64- and 128-wide inputs: every H singular
    /// but for the damping) and a type whose blocks do not fit the rows (q4_k on 64-wide rows, llama.cpp's fallback):
    /// the one build still writes a file llama.cpp loads, never an internal error.</summary>
    [TestMethod]
    public void TooFewCalibrationTokensStillWriteAFileLlamaCppLoads()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 2, Hidden = 64, Intermediate = 128 };
        SuperWeightPlanter.WriteCheckpoint(dir.File("ckpt"), spec, 1, 17, 45);
        SuperQuant.Models.Text.TokenIdFile.Write(dir.File("calib.txt"), new[] { 1, 5, 9 });
        var r = CliRunner.Run("quantize", "-m", dir.File("ckpt"), "--calibration-tokens", dir.File("calib.txt"), "--gguf-choice", "one-build",
            "--gguf", dir.File("m.gguf"), "--gguf-type", "q4_k_m", "--eval-tokens", dir.File("calib.txt"), "--context", "16", "--prompt-tokens", "1 2 3",
            "--device", "cpu", "--json");
        Assert.AreEqual(0, r.ExitCode, r.Output);
        var artifact = JsonDocument.Parse(r.StdOut).RootElement.GetProperty("artifacts")[0];
        Assert.AreEqual("llama.cpp", artifact.GetProperty("engine").GetString());
        Assert.IsTrue(double.IsFinite(artifact.GetProperty("kl_mean").GetDouble()), r.StdOut);
    }

    /// <summary>On a planted checkpoint with calibration a few times its width, the one-build file beats llama.cpp's own
    /// quantizer's file (from our F16 export) on held-out tokens, both judged by llama.cpp; a streamed run writes the
    /// same bytes as a whole-model run.</summary>
    [TestMethod]
    [TestCategory(TestCategories.Slow)]
    public void OneBuildBeatsLlamaCppsQuantizerAndStreamsToTheSameBytes()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 2, Hidden = 256, Intermediate = 512, Heads = 4, KvHeads = 2, Vocab = 256 };
        string ckpt = dir.File("ckpt");
        SuperWeightPlanter.WriteCheckpoint(ckpt, spec, 1, 17, 45);
        var rng = new Random(7);
        SuperQuant.Models.Text.TokenIdFile.Write(dir.File("calib.txt"), Enumerable.Range(0, 1024).Select(_ => rng.Next(256)));
        SuperQuant.Models.Text.TokenIdFile.Write(dir.File("eval.txt"), Enumerable.Range(0, 512).Select(_ => rng.Next(256)));
        foreach (string memory in new[] { "model", "layers" })
        {
            var r = CliRunner.Run("quantize", "-m", ckpt, "--memory", memory, "--calibration-tokens", dir.File("calib.txt"), "--gguf-choice", "one-build",
                "--gguf", dir.File($"{memory}.gguf"), "--gguf-type", "q4_k_m", "--context", "128", "--prompt-tokens", "1 2 3", "--device", "cpu");
            Assert.AreEqual(0, r.ExitCode, r.Output);
            StringAssert.Contains(r.StdOut, "one build (asked for)");
        }
        CollectionAssert.AreEqual(File.ReadAllBytes(dir.File("model.gguf")), File.ReadAllBytes(dir.File("layers.gguf")), "streamed bytes");

        var f16 = CliRunner.Run("quantize", "-m", ckpt, "--method", "rtn", "--gguf", dir.File("f16.gguf"), "--gguf-type", "f16", "--prompt-tokens", "1 2 3",
            "--device", "cpu");
        Assert.AreEqual(0, f16.ExitCode, f16.Output);
        LlamaCppQuantizer.Quantize(dir.File("f16.gguf"), dir.File("llama.gguf"), "q4_k_m");
        double Kl(string gguf)
        {
            var e = CliRunner.Run("eval", "-m", gguf, "--reference", ckpt, "--tokens", dir.File("eval.txt"), "--context", "128", "--json");
            Assert.AreEqual(0, e.ExitCode, e.Output);
            return JsonDocument.Parse(e.StdOut).RootElement.GetProperty("kl_divergence").GetDouble();
        }
        double ours = Kl(dir.File("model.gguf")), theirs = Kl(dir.File("llama.gguf"));
        Console.WriteLine($"KLD one build {ours:G4}, llama.cpp's quantizer {theirs:G4}");
        Assert.IsLessThan(0.95 * theirs, ours, $"one build {ours:G4} vs llama.cpp {theirs:G4}");
    }
}
