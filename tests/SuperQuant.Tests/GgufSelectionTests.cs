using SuperQuant.Core.Llama;
using SuperQuant.LlamaCpp;
using SuperQuant.Manifest;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Gguf;
using SuperQuant.Pipeline;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

/// <summary>
/// How the super-aware GGUF export chooses what ships (<see cref="CalibrationFolds"/>): candidates scored by llama.cpp
/// on the calibration half their statistics did not come from, the winner rebuilt from all of it, llama.cpp's own rows
/// when nothing beats them or the calibration is too short to split.
/// </summary>
[TestClass]
public sealed class GgufSelectionTests
{
    static readonly LlamaConfig Config = new()
    {
        Architecture = "llama", HiddenSize = 256, IntermediateSize = 512, NumLayers = 2, NumHeads = 4, NumKvHeads = 2, VocabSize = 256,
        MaxPositionEmbeddings = 128, TieWordEmbeddings = false,
    };

    [TestMethod]
    [TestCategory(TestCategories.Slow)]
    public void ShipsTheCandidateWithTheLowestHeldOutKlBuiltFromAllTheCalibration()
    {
        using var dir = new TempFolder();
        using var model = F16Model(dir, seed: 5);
        int[] calibration = Sampler.Generate(model, new[] { 1 }, 383, 1.0, seed: 3);
        using var folds = CalibrationFolds.Record(model, calibration, 64, dir.Path, s => s);
        Assert.IsTrue(folds.CanChoose);

        var scores = folds.Score(model, GgufFileType.Q4_K_M, "m", null, dir.File("scratch"), threads: null);
        var labels = folds.Full.Candidates(GgufFileType.Q4_K_M, "m", null).Select(c => c.Label).ToList();
        CollectionAssert.AreEqual(labels, scores.Select(s => s.Label).ToList());
        Assert.AreEqual(4, labels.Count, string.Join(", ", labels));
        Assert.IsTrue(scores.All(s => double.IsFinite(s.HeldOutKl) && s.HeldOutKl > 0), string.Join(", ", scores));
        // The candidates are different files: statistics were used (importance-weighted rows differ from llama.cpp's).
        Assert.AreNotEqual(scores[0].HeldOutKl, scores[1].HeldOutKl);

        // The reference rows' score is llama.cpp's KLD of its own quantizer's file on the two halves, measured here
        // independently of the selection code.
        LlamaCppQuantizer.Quantize(dir.File("f16.gguf"), dir.File("llama.gguf"), "q4_k_m");
        double expected = 0;
        int[][] halves = { calibration[192..], calibration[..192] };
        foreach (var half in halves)
        {
            string refPath = dir.File($"half{half[0]}-{half.Length}.sqref");
            SuperQuant.Core.Evaluation.ReferenceFile.Record(refPath, "k", t => model.Forward(t), half, 64, 32, Config.VocabSize);
            using var reference = SuperQuant.Core.Evaluation.ReferenceFile.TryOpen(refPath, "k", Config.VocabSize, half.Length, 64, 32)!;
            using var engine = LlamaCppEngine.Open(dir.File("llama.gguf"), 64, null);
            expected += SuperQuant.Core.Evaluation.Evaluator.Divergence(reference, engine.Logits, half).KlDivergence.Value / 2;
        }
        Assert.AreEqual(expected, scores[0].HeldOutKl, 1e-9 + 1e-6 * expected, "reference rows' held-out KLD");

        var (written, log) = folds.WriteBest(dir.File("best.gguf"), model, GgufFileType.Q4_K_M, "m", null, threads: null);
        int best = CalibrationFolds.Choose(scores);
        Assert.AreEqual(scores.Min(s => s.HeldOutKl), scores[best].HeldOutKl);
        StringAssert.EndsWith(log, "-> " + labels[best]);
        GgufExporter.Write(dir.File("expected.gguf"), model, folds.Full.Candidates(GgufFileType.Q4_K_M, "m", null)[best].Export);
        CollectionAssert.AreEqual(File.ReadAllBytes(dir.File("expected.gguf")), File.ReadAllBytes(dir.File("best.gguf")),
            "the shipped file is not the winner built from all the calibration tokens");
    }

    [TestMethod]
    public void TooShortACalibrationShipsLlamaCppsOwnRows()
    {
        using var dir = new TempFolder();
        using var model = F16Model(dir, seed: 6);
        int[] calibration = Sampler.Generate(model, new[] { 1 }, 2 * CalibrationFolds.MinimumHalf - 2, 1.0, seed: 3);
        using var folds = CalibrationFolds.Record(model, calibration, 64, dir.Path, s => s);
        Assert.IsFalse(folds.CanChoose);
        var (_, log) = folds.WriteBest(dir.File("q.gguf"), model, GgufFileType.Q4_K_M, "m", null, threads: null);
        StringAssert.Contains(log, "too short");
        LlamaCppQuantizer.Quantize(dir.File("f16.gguf"), dir.File("llama.gguf"), "q4_k_m");
        StringAssert.StartsWith(SuperQuant.Cli.Commands.Bench.BenchGgufCommand.SameBytes(dir.File("q.gguf"), dir.File("llama.gguf")), "identical");
    }

    /// <summary>A random model with heavy tails, exported to F16 and loaded back: F16-exact weights, as llama.cpp's
    /// quantizer sees them, so our reference rows are its bytes.</summary>
    static LlamaModel F16Model(TempFolder dir, int seed)
    {
        RandomCheckpoint.Write(dir.File("ckpt"), Config, seed: seed, heavyTails: true);
        using (var original = ModelLoader.Load(dir.File("ckpt")))
            GgufExporter.Write(dir.File("f16.gguf"), original, new GgufExport { FileType = GgufFileType.F16, Name = "m" });
        return GgufModelLoader.Load(dir.File("f16.gguf"));
    }
}
