using SuperQuant.Models.Artifacts;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

[TestClass]
public sealed class ReliabilityTests
{
    static TempFolder Project()
    {
        var dir = new TempFolder();
        TinyProject.Write(dir.Path);
        return dir;
    }

    static string[] Gate(TempFolder dir, params string[] extra) =>
        new[] { "gate", "--manifest", dir.File("quantize.yaml"), "--state", dir.File("obj/state.json"), "--report-dir", dir.File("obj") }.Concat(extra).ToArray();

    [TestMethod]
    public void AToolKilledMidWriteLeavesNoArtifactAndTheNextRunRecovers()
    {
        using var dir = Project();
        var killed = CliRunner.Run(new Dictionary<string, string> { ["SUPERQUANT_FAULT"] = "kill-mid-write" }, Gate(dir));
        Assert.AreNotEqual(0, killed.ExitCode, "the fault-injected run dies");
        Assert.IsFalse(File.Exists(dir.File("models/tiny.sqpk.safetensors")), "no half-written file at the final path");
        Assert.AreEqual(1, Directory.GetFiles(dir.File("models"), "*.tmp").Length, "the killed writer's temp file is all that is left");
        Assert.IsFalse(File.Exists(dir.File("obj/state.json")), "nothing was recorded as done");

        var again = CliRunner.Run(Gate(dir));
        Assert.AreEqual(0, again.ExitCode, again.StdErr + again.StdOut);
        StringAssert.Contains(again.StdOut, "tiny: quantizing", "the killed run is not treated as up to date");
        var (model, _) = PackedArtifact.Load(dir.File("models/tiny.sqpk.safetensors"));
        model.Dispose();
        Assert.AreEqual(0, Directory.GetFiles(dir.File("models"), "*.tmp").Length, "stale temp file cleaned up");
    }

    [TestMethod]
    public void TwoRunsAtOnceAreSerializedByTheLock()
    {
        using var dir = Project();
        var runs = Enumerable.Range(0, 2).Select(_ => Task.Run(() => CliRunner.Run(Gate(dir)))).ToArray();
        Task.WaitAll(runs);
        foreach (var r in runs.Select(t => t.Result)) Assert.AreEqual(0, r.ExitCode, r.StdErr + r.StdOut);
        string all = string.Concat(runs.Select(t => t.Result.StdOut));
        Assert.AreEqual(1, all.Split("tiny: quantizing").Length - 1, "exactly one run quantized; the other waited and found it up to date:\n" + all);
        StringAssert.Contains(all, "tiny: up to date");
        var (model, _) = PackedArtifact.Load(dir.File("models/tiny.sqpk.safetensors"));
        model.Dispose();
        Assert.IsFalse(File.Exists(dir.File("obj/superquant.lock")), "the lock file goes away with its holder");
    }

    [TestMethod]
    public void ActivationBitsInAManifestAreRejectedNotIgnored()
    {
        using var dir = Project();
        File.WriteAllText(dir.File("quantize.yaml"), File.ReadAllText(dir.File("quantize.yaml")).Replace("    weight_bits: 4", "    weight_bits: 4\n    activation_bits: 8"));
        var r = CliRunner.Run(Gate(dir));
        Assert.AreEqual(3, r.ExitCode, r.StdOut);
        StringAssert.Contains(r.StdErr, "SQ4001");
        StringAssert.Contains(r.StdErr, "weight-only");
        Assert.IsFalse(File.Exists(dir.File("models/tiny.sqpk.safetensors")));
    }

    [TestMethod]
    public void AHeldLockTimesOutWithSQ0005()
    {
        using var dir = Project();
        Directory.CreateDirectory(dir.File("obj"));
        using var held = new FileStream(dir.File("obj/superquant.lock"), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        var r = CliRunner.Run(Gate(dir, "--lock-timeout", "1"));
        Assert.AreEqual(3, r.ExitCode);
        StringAssert.Contains(r.StdErr, "error SQ0005");
    }
}
