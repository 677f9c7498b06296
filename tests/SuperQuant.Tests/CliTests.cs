using System.Text.Json;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

[TestClass]
public sealed class CliTests
{
    [TestMethod]
    public void GenerateThenEvalStories260KFromTheCommandLine()
    {
        using var dir = new TempFolder();
        string ids = dir.File("ids.txt");
        var gen = CliRunner.Run("generate", "--model", SharedModels.Stories260K, "--count", "300", "--seed", "7", "--out", ids, "--device", "cpu");
        Assert.AreEqual(0, gen.ExitCode, gen.StdErr);
        var again = CliRunner.Run("generate", "--model", SharedModels.Stories260K, "--count", "300", "--seed", "7", "--out", dir.File("ids2.txt"), "--device", "cpu");
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

        var kl = CliRunner.Run("eval", "--model", SharedModels.Stories260K, "--reference", SharedModels.Stories260K, "--tokens", ids, "--context", "512", "--json");
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
    public void EveryCommandHasHelp()
    {
        foreach (string cmd in new[] { "eval", "generate", "doctor", "bench" })
        {
            var r = CliRunner.Run(cmd, "--help");
            Assert.AreEqual(0, r.ExitCode, cmd);
            StringAssert.Contains(r.StdOut, "Exit codes", cmd);
        }
    }
}
