using SuperQuant.Core.Evaluation;
using SuperQuant.Manifest;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Gguf;
using SuperQuant.Pipeline;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

/// <summary>
/// Every family we read becomes a GGUF that llama.cpp (LLamaSharp 0.30.0, in process) runs as the checkpoint: its
/// perplexity of our F16 export equals our forward pass's on the Hugging Face checkpoint within 1e-3 relative, at a
/// context where the family's features matter; switching the feature off moves llama.cpp's perplexity by more than
/// 1 %, so a feature missing from both our forward pass and our export cannot pass; the q4_k_m file loads and runs.
/// </summary>
[TestClass]
public sealed class FamilyGgufTests
{
    const int Context = 128;

    static int[] Tokens(int n, int seed)
    {
        var rng = new Random(seed);
        return new[] { 1 }.Concat(Enumerable.Range(0, n - 1).Select(_ => rng.Next(2, FamilyCheckpoint.Vocab))).ToArray();
    }

    static double LlamaCppPerplexity(string gguf, int[] ids)
    {
        using var llama = LlamaCppEngine.Open(gguf, Context);
        return Evaluator.Perplexity(llama.Logits, ids, Context, Context / 2).Perplexity.Value;
    }

    static string Export(string ckpt, string gguf, GgufFileType type)
    {
        using var model = ModelLoader.Load(ckpt);
        GgufWriter.Write(gguf, model, new GgufExport { FileType = type, Name = "family" });
        return gguf;
    }

    [TestMethod]
    [DataRow("llama3")]
    [DataRow("mistral")]
    [DataRow("qwen2")]
    [DataRow("qwen3")]
    [DataRow("phi3")]
    [DataRow("olmo")]
    [DataRow("olmo2")]
    [DataRow("gemma2")]
    [DataRow("gemma3_text")]
    [DataRow("smollm3")]
    public void LlamaCppRunsOurF16ExportAsOurForwardPassRunsTheCheckpoint(string family)
    {
        using var dir = new TempFolder();
        FamilyCheckpoint.Write(dir.File("ckpt"), family);
        int[] ids = Tokens(2 * Context, 11);
        double ours;
        using (var model = ModelLoader.Load(dir.File("ckpt")))
            ours = Evaluator.Perplexity(t => model.Forward(t), ids, Context, Context / 2).Perplexity.Value;
        double theirs = LlamaCppPerplexity(Export(dir.File("ckpt"), dir.File("f16.gguf"), GgufFileType.F16), ids);
        Assert.IsLessThan(1e-3, Math.Abs(theirs / ours - 1), $"{family}: llama.cpp {theirs:F5} on our F16 GGUF vs our forward pass {ours:F5} on the checkpoint");

        if (family == "smollm3")
        {
            // llama.cpp leaves RoPE out of every 4th layer by itself (no GGUF key says it): the switch is checked on our
            // side, against llama.cpp's run of the real export.
            FamilyCheckpoint.Write(dir.File("off"), family, off: true);
            using var model = ModelLoader.Load(dir.File("off"));
            double ropeEverywhere = Evaluator.Perplexity(t => model.Forward(t), ids, Context, Context / 2).Perplexity.Value;
            Assert.IsGreaterThan(0.01, Math.Abs(ropeEverywhere / theirs - 1),
                $"{family}: RoPE in every layer gives {ropeEverywhere:F4}, llama.cpp on the export {theirs:F4}: the no-RoPE layers do not matter at this size");
        }
        else if (family != "mistral")
        {
            FamilyCheckpoint.Write(dir.File("off"), family, off: true);
            double without = LlamaCppPerplexity(Export(dir.File("off"), dir.File("off.gguf"), GgufFileType.F16), ids);
            Assert.IsGreaterThan(0.01, Math.Abs(without / theirs - 1),
                $"{family}: switching off {FamilyCheckpoint.Off(family)} moves llama.cpp's perplexity only from {theirs:F4} to {without:F4}");
        }

        double q4 = LlamaCppPerplexity(Export(dir.File("ckpt"), dir.File("q4.gguf"), GgufFileType.Q4_K_M), ids);
        Assert.IsTrue(double.IsFinite(q4) && q4 > 1, $"{family}: q4_k_m perplexity {q4}");
        Assert.IsLessThan(0.5, Math.Abs(q4 / theirs - 1), $"{family}: q4_k_m {q4:F4} vs F16 {theirs:F4}");
        Console.WriteLine($"{family}: perplexity ours {ours:F5}, llama.cpp F16 {theirs:F5}, q4_k_m {q4:F4}");
    }
}
