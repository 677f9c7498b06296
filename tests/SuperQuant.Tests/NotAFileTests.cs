using SuperQuant.Core;
using SuperQuant.Core.Runtime;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

/// <summary>
/// Paths that exist but are not regular files (FIFOs, character devices): never replaced by an output, whatever
/// flag asked for it, and never opened where a read would block forever (the reference cache, a libtorch's
/// version.py). A version.py with numbers too large for a version is no version, not a crash.
/// </summary>
[TestClass]
public sealed class NotAFileTests
{
    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    static extern int mkfifo(string path, uint mode);

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    static extern int mknod(string path, uint mode, ulong dev);

    static string Fifo(string path)
    {
        Assert.AreEqual(0, mkfifo(path, Convert.ToUInt32("644", 8)), "mkfifo");
        return path;
    }

    [TestMethod]
    [DataRow("fifo")]
    [DataRow("character device")]
    public void InitWithForceRefusesToReplaceWhatIsNotARegularFile(string kind)
    {
        using var dir = new TempFolder();
        string target = dir.File("nul");
        if (kind == "fifo") Fifo(target);
        // A character device with /dev/null's numbers (1, 3); needs CAP_MKNOD: where the machine forbids it, a FIFO
        // stands in (the same class: a path that is not a regular file).
        else if (mknod(target, 0x2000 | Convert.ToUInt32("666", 8), (1UL << 8) | 3) != 0) Fifo(target);
        var r = CliRunner.Run("init", "--checkpoint", SharedModels.Stories260K, "-o", target, "--force");
        Assert.AreEqual(3, r.ExitCode, r.Output);
        StringAssert.Contains(r.Output, "not a regular file");
        Assert.IsNotNull(FileKind(target), "the special file is still there, not replaced by a regular file");
    }

    static string? FileKind(string path) => SuperQuant.Manifest.InputFiles.NotARegularFile(path);

    [TestMethod]
    [Timeout(120_000, CooperativeCancellation = true)]
    public void AFifoWhereTheReferenceCacheShouldBeIsACodedErrorNotAHang()
    {
        using var dir = new TempFolder();
        TinyProject.Write(dir.Path);
        string[] gate = { "gate", "--manifest", dir.File("quantize.yaml"), "--state", dir.File("obj/state.json"), "--report-dir", dir.File("obj") };
        Assert.AreEqual(0, CliRunner.Run(gate).ExitCode);
        string cache = Directory.GetFiles(dir.File("obj"), "reference-*.sqref").Single();
        File.Delete(cache);
        Fifo(cache);
        File.Delete(dir.File("obj/state.json")); // the model runs again and looks for its baseline at that path
        var r = CliRunner.Run(gate);
        // Not read (it would block), not deleted or replaced (it is not ours to replace): the run says which path.
        Assert.AreEqual(3, r.ExitCode, r.Output);
        StringAssert.Contains(r.Output, "SQ4003");
        StringAssert.Contains(r.Output, Path.GetFileName(cache));
        Assert.IsNotNull(FileKind(cache), "the FIFO is left as it was");
    }

    [TestMethod]
    [Timeout(60_000, CooperativeCancellation = true)]
    public void AFifoAsVersionPyIsNoVersionAndAHugeVersionIsNotACrash()
    {
        using var dir = new TempFolder();
        string lib = dir.File("torch/lib");
        Directory.CreateDirectory(lib);
        Fifo(dir.File("torch/version.py"));
        Assert.AreEqual((null, null), LibTorchLocator.VersionOf(lib), "a FIFO is not read");
        Assert.IsNull(LibTorchLocator.ParseVersion("99999999999.1"));
        Assert.AreEqual(new Version(2, 10), LibTorchLocator.ParseVersion("2.10.0+cpu"));
    }
}

/// <summary>Valid input accepted, and options that cannot apply refused instead of ignored (issue 36, class 7).</summary>
[TestClass]
public sealed class OptionsThatApplyTests
{
    static string GgufWithVocabulary(TempFolder dir)
    {
        string ckpt = TokenizerCheckpoint.Write(dir.File("ckpt"), "llama3.1");
        var r = CliRunner.Run("quantize", "--model", ckpt, "--method", "rtn", "--bits", "8", "--gguf", dir.File("m.gguf"), "--gguf-type", "q8_0",
            "--device", "cpu");
        Assert.AreEqual(0, r.ExitCode, r.Output);
        return dir.File("m.gguf");
    }

    [TestMethod]
    public void GenerateRunsAGgufWithItsOwnVocabularyAndPrintsText()
    {
        using var dir = new TempFolder();
        string gguf = GgufWithVocabulary(dir);
        var r = CliRunner.Run("generate", "-m", gguf, "--prompt", "Hello there", "-n", "6", "--temperature", "0.8");
        Assert.AreEqual(0, r.ExitCode, r.Output);
        StringAssert.StartsWith(r.StdOut, "Hello there");
        Assert.IsGreaterThan("Hello there".Length + 1, r.StdOut.Trim().Length, "a continuation was printed as text");
    }

    [TestMethod]
    public void EvalOfAGgufWithMemoryLayersIsRefused()
    {
        using var dir = new TempFolder();
        string gguf = GgufWithVocabulary(dir);
        File.WriteAllText(dir.File("t.txt"), "Once upon a time there was a little robot.");
        var r = CliRunner.Run("eval", "-m", gguf, "--text", dir.File("t.txt"), "--context", "8", "--memory", "layers");
        Assert.AreEqual(3, r.ExitCode, r.Output);
        StringAssert.Contains(r.Output, "SQ2009");
        StringAssert.Contains(r.Output, "--memory layers");
    }

    [TestMethod]
    [DataRow("--gguf-type", "q4_0")]
    [DataRow("--gguf-raise-super", null)]
    public void AGgufOptionWithoutAGgufIsAUsageError(string option, string? value)
    {
        using var dir = new TempFolder();
        var args = new List<string> { "quantize", "--model", SharedModels.Stories260K, "--prompt-tokens", "1 2 3", "--out",
            dir.File("m.sqpk.safetensors"), option };
        if (value is not null) args.Add(value);
        var r = CliRunner.Run(args.ToArray());
        Assert.AreEqual(2, r.ExitCode, r.Output);
        StringAssert.Contains(r.Output, "--gguf FILE");
        Assert.IsFalse(File.Exists(dir.File("m.sqpk.safetensors")));
    }
}
