using System.Globalization;
using System.Security.Cryptography;
using SuperQuant.Core;
using SuperQuant.Manifest;
using SuperQuant.Models.Text;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

/// <summary>
/// Issue 26: the classes of bad input and reuse an outside probe found on main b2e4e4d, one test (or a data-driven
/// set) per class. Each one failed before its fix: an input overwritten, another manifest's artifact called up to date,
/// an unhandled exception on a number, a wrong kind of file read as if it were right, valid input refused.
/// </summary>
[TestClass]
public sealed class InputClassTests
{
    static TempFolder Project(Func<string, string>? edit = null, string manifest = "quantize.yaml")
    {
        var dir = new TempFolder();
        TinyProject.Write(dir.Path);
        if (edit is not null) File.WriteAllText(dir.File(manifest), edit(File.ReadAllText(dir.File("quantize.yaml"))));
        return dir;
    }

    static string[] Gate(TempFolder dir, string manifest = "quantize.yaml", string state = "obj/state.json") =>
        new[] { "gate", "--manifest", dir.File(manifest), "--state", dir.File(state), "--report-dir", dir.File("obj") };

    static string Sha(string file) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(file)));

    static void ExitsWith(int code, ProcessRunner.Result r, params string[] expected)
    {
        Assert.AreEqual(code, r.ExitCode, r.Output);
        foreach (string e in expected) StringAssert.Contains(r.Output, e);
        Assert.DoesNotContain("internal error", r.Output);
        Assert.DoesNotContain("Unhandled exception", r.Output);
    }

    // ---- 1. No path the tool writes may be one of its inputs, whatever the flag or variable ----

    [TestMethod]
    [DataRow("ckpt/model.safetensors", "ckpt/model.safetensors")]
    [DataRow("ckpt", "ckpt/config.json")]
    [DataRow("ckpt", "ckpt/notes.yaml")]
    public void InitNeverWritesOverOrIntoItsCheckpoint(string checkpoint, string output)
    {
        using var dir = Project();
        string victim = dir.File("ckpt/model.safetensors"), config = dir.File("ckpt/config.json");
        string before = Sha(victim), configBefore = Sha(config);
        var r = CliRunner.Run("init", "--checkpoint", dir.File(checkpoint), "-o", dir.File(output), "--force");
        ExitsWith(3, r, "SQ2009", "input");
        Assert.AreEqual(before, Sha(victim));
        Assert.AreEqual(configBefore, Sha(config));
        Assert.IsFalse(File.Exists(dir.File("ckpt/notes.yaml")), "nothing written into the checkpoint folder");
    }

    [TestMethod]
    public void ThePeakRssFileVariableCannotOverwriteAnInput()
    {
        using var dir = Project();
        string before = Sha(dir.File("ids.txt"));
        var r = CliRunner.Run(new Dictionary<string, string> { ["SUPERQUANT_PEAK_RSS_FILE"] = dir.File("ids.txt") },
            "eval", "-m", dir.File("ckpt"), "--tokens", dir.File("ids.txt"), "--context", "16");
        ExitsWith(3, r, "SQ2009", "same file as this run's input");
        Assert.AreEqual(before, Sha(dir.File("ids.txt")), "the token file is untouched");
        // The same variable naming a hard link to the checkpoint: another name, the same inode.
        string link = dir.File("alias");
        Assert.AreEqual(0, ProcessRunner.Run("ln", dir.Path, null, TimeSpan.FromSeconds(10), dir.File("ckpt/model.safetensors"), link).ExitCode);
        string ckpt = Sha(dir.File("ckpt/model.safetensors"));
        r = CliRunner.Run(new Dictionary<string, string> { ["SUPERQUANT_PEAK_RSS_FILE"] = link }, "eval", "-m", dir.File("ckpt"), "--tokens",
            dir.File("ids.txt"), "--context", "16");
        ExitsWith(3, r, "SQ2009");
        Assert.AreEqual(ckpt, Sha(dir.File("ckpt/model.safetensors")));
    }

    [TestMethod]
    [DataRow("folder")]
    [DataRow("missing/peak.txt")]
    public void APeakRssFileThatCannotBeWrittenIsRefusedBeforeAnyWork(string target)
    {
        using var dir = Project();
        Directory.CreateDirectory(dir.File("folder"));
        var r = CliRunner.Run(new Dictionary<string, string> { ["SUPERQUANT_PEAK_RSS_FILE"] = dir.File(target) }, Gate(dir));
        ExitsWith(3, r, "SQ2009", "SUPERQUANT_PEAK_RSS_FILE");
        Assert.DoesNotContain("quantizing", r.Output, "refused before the work, not after it");
        Assert.IsFalse(File.Exists(dir.File("models/tiny.sqpk.safetensors")));
    }

    [TestMethod]
    [DoNotParallelize]
    public void TheWritePrimitiveRefusesEveryRegisteredInput()
    {
        using var dir = new TempFolder();
        File.WriteAllText(dir.File("input.txt"), "keep me");
        Directory.CreateDirectory(dir.File("ckpt"));
        var previous = AtomicFile.Guard;
        AtomicFile.Guard = InputFiles.RefusalFor;
        try
        {
            InputFiles.Register(dir.File("input.txt"), "the test's input");
            InputFiles.Register(dir.File("ckpt"), "the test's checkpoint folder");
            var e = Assert.ThrowsExactly<SuperQuantException>(() => AtomicFile.Write(dir.File("input.txt"), 1, fs => fs.WriteByte(0)));
            Assert.AreEqual(ErrorCodes.InvalidArgument, e.Code);
            Assert.ThrowsExactly<SuperQuantException>(() => AtomicFile.Write(dir.File("ckpt/new.bin"), 1, fs => fs.WriteByte(0)));
            Assert.AreEqual("keep me", File.ReadAllText(dir.File("input.txt")));
            Assert.IsFalse(File.Exists(dir.File("ckpt/new.bin")));
            AtomicFile.Write(dir.File("other.txt"), 1, fs => fs.WriteByte((byte)'x')); // any other path is written
            Assert.AreEqual("x", File.ReadAllText(dir.File("other.txt")));
        }
        finally
        {
            AtomicFile.Guard = previous;
            InputFiles.Clear();
        }
    }

    // ---- 2. Another manifest's artifact is never passed off as up to date ----

    [TestMethod]
    [TestCategory(TestCategories.Slow)]
    public void AnOutputReplacedByAnotherManifestIsRequantized()
    {
        using var dir = Project();
        File.WriteAllText(dir.File("two-bit.yaml"), File.ReadAllText(dir.File("quantize.yaml"))
            .Replace("weight_bits: 4", "weight_bits: 2").Replace("max_increase: 1", "max_increase: 100"));
        string artifact = dir.File("models/tiny.sqpk.safetensors");
        ExitsWith(0, CliRunner.Run(Gate(dir)));
        string fourBit = Sha(artifact);
        ExitsWith(0, CliRunner.Run(Gate(dir, "two-bit.yaml", "obj/two-bit.json")));
        Assert.AreNotEqual(fourBit, Sha(artifact), "the other manifest wrote its own weights there");
        var again = CliRunner.Run(Gate(dir));
        ExitsWith(0, again, "not the file this model shipped", "tiny: quantizing");
        Assert.AreEqual(fourBit, Sha(artifact), "the first manifest's own artifact is back");
        var noop = CliRunner.Run(Gate(dir));
        ExitsWith(0, noop, "up to date (inputs and outputs unchanged), skipped");
    }

    // ---- 3. Numbers and empty strings are usage errors (exit 2), never a crash ----

    [TestMethod]
    [DataRow("gate", "--lock-timeout", "NaN")]
    [DataRow("gate", "--lock-timeout", "3000000000")]
    [DataRow("eval", "--context", "3000000000")]
    [DataRow("eval", "--context", "1e3")]
    [DataRow("gate", "--threads", "-9999999999")]
    [DataRow("gate", "--state", "")]
    [DataRow("gate", "--report-dir", "")]
    [DataRow("gate", "--manifest", "")]
    [DataRow("gate", "--manifest", "   ")]
    [DataRow("quantize", "--out", "")]
    [DataRow("eval", "--tokens", "")]
    public void NumbersThatDoNotParseAndEmptyValuesAreUsageErrors(string command, string option, string value)
    {
        using var dir = Project();
        string[] args = command switch
        {
            "eval" => new[] { "eval", "-m", dir.File("ckpt"), "--tokens", dir.File("ids.txt") },
            "quantize" => new[] { "quantize", "-m", dir.File("ckpt"), "--z", "none" },
            _ => Gate(dir),
        };
        var r = CliRunner.Run(args.Append(option).Append(value).ToArray());
        ExitsWith(2, r, "SQ2009");
        if (option != "--out") StringAssert.Contains(r.Output, option);
    }

    // ---- 4. A wrong kind of input is a coded error naming what was expected ----

    [TestMethod]
    public void AGgufIsNotACheckpointToQuantize()
    {
        using var dir = Project();
        ExitsWith(0, CliRunner.Run("quantize", "-m", dir.File("ckpt"), "--method", "rtn", "--bits", "8", "--gguf", dir.File("m.gguf"), "--gguf-type",
            "q8_0", "--prompt-tokens", "1"));
        File.WriteAllText(dir.File("quantize.yaml"), File.ReadAllText(dir.File("quantize.yaml")).Replace("checkpoint: ckpt", "checkpoint: m.gguf"));
        var r = CliRunner.Run(Gate(dir));
        ExitsWith(3, r, "SQ3001", "quantize.yaml(", "GGUF file", "unquantized checkpoint");
        Assert.IsFalse(File.Exists(dir.File("models/tiny.sqpk.safetensors")));
        // From the command line too, naming the option.
        ExitsWith(3, CliRunner.Run("quantize", "-m", dir.File("m.gguf"), "--z", "none", "--prompt-tokens", "1", "-o",
            dir.File("x.sqpk.safetensors")), "SQ2009", "--model", "GGUF file");
        // eval reads GGUF files (documented), and a GGUF renamed .safetensors is refused for the name it wears.
        File.Copy(dir.File("m.gguf"), dir.File("renamed.safetensors"));
        ExitsWith(3, CliRunner.Run("eval", "-m", dir.File("renamed.safetensors"), "--tokens", dir.File("ids.txt"), "--context", "16"), "SQ2001",
            "holds a GGUF file");
        File.Copy(dir.File("ckpt/model.safetensors"), dir.File("weights.gguf"));
        ExitsWith(3, CliRunner.Run("eval", "-m", dir.File("weights.gguf"), "--tokens", dir.File("ids.txt"), "--context", "16"), "SQ2001", "GGUF");
    }

    [TestMethod]
    [DataRow("UTF-16")]
    [DataRow("UTF-16LE")]
    [DataRow("UTF-16BE")]
    [DataRow("UTF-32")]
    public void AUtf16TokenFileIsRefused(string encoding)
    {
        using var dir = Project();
        var enc = Encoding(encoding);
        File.WriteAllBytes(dir.File("ids16.txt"), enc.GetPreamble().Concat(enc.GetBytes(File.ReadAllText(dir.File("ids.txt")))).ToArray());
        if (encoding is "UTF-16LE" or "UTF-16BE") File.WriteAllBytes(dir.File("ids16.txt"), enc.GetBytes(File.ReadAllText(dir.File("ids.txt")))); // no BOM
        ExitsWith(3, CliRunner.Run("eval", "-m", dir.File("ckpt"), "--tokens", dir.File("ids16.txt"), "--context", "16"), "SQ2007", "expected UTF-8");
    }

    static System.Text.Encoding Encoding(string name) => name switch
    {
        "UTF-16" => new System.Text.UnicodeEncoding(false, true),
        "UTF-16LE" => new System.Text.UnicodeEncoding(false, false),
        "UTF-16BE" => new System.Text.UnicodeEncoding(true, false),
        _ => new System.Text.UTF32Encoding(false, true),
    };

    [TestMethod]
    public void ALoneSurrogateInATaskFileIsSQ2010NamingTheLine()
    {
        using var dir = new TempFolder();
        File.WriteAllText(dir.File("piqa.jsonl"), """{"goal": "Open a jar", "sol1": "Twist the lid", "sol2": "Eat the lid", "label": 0}""" + "\n"
            + """{"goal": "Open \ud800 a jar", "sol1": "Twist", "sol2": "Eat", "label": 1}""" + "\n");
        var e = Assert.ThrowsExactly<SuperQuantException>(() => TaskFile.Read(dir.File("piqa.jsonl"), "piqa"));
        Assert.AreEqual(ErrorCodes.TaskFileInvalid, e.Code);
        StringAssert.Contains(e.Message, "piqa.jsonl(2)");
        StringAssert.Contains(e.Message, "surrogate");
    }

    [TestMethod]
    public void AUtf16TaskFileIsRefusedInsteadOfScoringNothing()
    {
        using var dir = new TempFolder();
        string line = """{"goal": "Open a jar", "sol1": "Twist the lid", "sol2": "Eat the lid", "label": 0}""" + "\n";
        File.WriteAllText(dir.File("piqa.jsonl"), line + line);
        Assert.HasCount(2, TaskFile.Read(dir.File("piqa.jsonl"), "piqa"), "the UTF-8 file reads");
        File.WriteAllText(dir.File("piqa16.jsonl"), line + line, new System.Text.UnicodeEncoding(false, true));
        var e = Assert.ThrowsExactly<SuperQuantException>(() => TaskFile.Read(dir.File("piqa16.jsonl"), "piqa"));
        Assert.AreEqual(ErrorCodes.TaskFileInvalid, e.Code);
        StringAssert.Contains(e.Message, "UTF-16");
    }

    [TestMethod]
    public void AFifoOrADeviceIsNotADataFile()
    {
        using var dir = Project();
        Assert.AreEqual(0, ProcessRunner.Run("mkfifo", dir.Path, null, TimeSpan.FromSeconds(10), dir.File("pipe")).ExitCode);
        // In process: reading a FIFO no one writes would block forever; give it 30 s.
        var read = Task.Run(() => Assert.ThrowsExactly<SuperQuantException>(() => TaskFile.Read(dir.File("pipe"), "piqa")));
        Assert.IsTrue(read.Wait(TimeSpan.FromSeconds(30)), "the task-file reader returned instead of blocking on the FIFO");
        StringAssert.Contains(read.Result.Message, "FIFO");
        ExitsWith(3, CliRunner.Run("eval", "-m", dir.File("ckpt"), "--tokens", dir.File("pipe"), "--context", "16"), "SQ2007", "FIFO");
        ExitsWith(3, CliRunner.Run("eval", "-m", dir.File("ckpt"), "--tokens", "/dev/zero", "--context", "16"), "SQ2007", "character device");
        File.WriteAllText(dir.File("quantize.yaml"), File.ReadAllText(dir.File("quantize.yaml")).Replace("evaluation_tokens: ids.txt",
            "evaluation_tokens: pipe"));
        ExitsWith(3, CliRunner.Run(Gate(dir)), "SQ3001", "evaluation_tokens", "FIFO");
    }

    [TestMethod]
    public void AnIndexWithPhantomEntriesIsRefused()
    {
        using var dir = Project();
        string ckpt = dir.File("ckpt");
        using (var real = SuperQuant.Models.Safetensors.SafetensorsFile.Open(Path.Combine(ckpt, "model.safetensors")))
        {
            var map = real.Tensors.Keys.ToDictionary(k => k, _ => "model.safetensors");
            File.WriteAllText(Path.Combine(ckpt, "model.safetensors.index.json"), System.Text.Json.JsonSerializer.Serialize(new { weight_map = map }));
        }
        ExitsWith(0, CliRunner.Run("eval", "-m", ckpt, "--tokens", dir.File("ids.txt"), "--context", "16"), "perplexity");
        var phantom = File.ReadAllText(Path.Combine(ckpt, "model.safetensors.index.json")).TrimEnd('}', ' ') + ", " +
            string.Join(", ", Enumerable.Range(0, 300_000).Select(i => $"\"phantom.{i}.weight\": \"model.safetensors\"")) + "}}";
        File.WriteAllText(Path.Combine(ckpt, "model.safetensors.index.json"), phantom);
        ExitsWith(3, CliRunner.Run("eval", "-m", ckpt, "--tokens", dir.File("ids.txt"), "--context", "16"), "SQ2001", "phantom.0.weight", "does not hold it");
    }

    [TestMethod]
    [DataRow("out/.")]
    [DataRow("out/")]
    [DataRow("out/..")]
    [DataRow("existing-folder")]
    public void AnOutputThatNamesAFolderIsRefused(string output)
    {
        using var dir = Project(y => y.Replace("output: models/tiny.sqpk.safetensors", $"output: {output}"));
        Directory.CreateDirectory(dir.File("existing-folder"));
        ExitsWith(3, CliRunner.Run(Gate(dir)), "SQ3001", "an output must name a file");
        ExitsWith(3, CliRunner.Run("quantize", "-m", dir.File("ckpt"), "--z", "none", "--prompt-tokens", "1", "-o", dir.File(output)), "SQ2009",
            "--out", "an output must name a file");
    }

    // ---- 5. Valid input is accepted: a BOM, names in any case, any culture ----

    [TestMethod]
    public void AConfigWithAUtf8ByteOrderMarkIsRead()
    {
        using var dir = Project();
        string config = dir.File("ckpt/config.json");
        File.WriteAllBytes(config, new byte[] { 0xEF, 0xBB, 0xBF }.Concat(File.ReadAllBytes(config)).ToArray());
        ExitsWith(0, CliRunner.Run("eval", "-m", dir.File("ckpt"), "--tokens", dir.File("ids.txt"), "--context", "16"), "perplexity");
    }

    [TestMethod]
    public void ManifestNamesAreReadInAnyCaseUnderATurkishLocale()
    {
        using var dir = Project(y => y.Replace("metric: kl", "metric: KL\n      baseline: ORIGINAL").Replace("z: auto",
            "z: AUTO\n    method: SUPER-AWARE\n    export: [PACKED]"));
        var env = new Dictionary<string, string> { ["LANG"] = "tr_TR.UTF-8", ["LC_ALL"] = "tr_TR.UTF-8" };
        ExitsWith(0, CliRunner.Run(env, Gate(dir)), "passed");
        // In process, with the thread's culture Turkish: the reader never lowers a name through the current culture.
        var saved = CultureInfo.CurrentCulture;
        try
        {
            CultureInfo.CurrentCulture = new CultureInfo("tr-TR");
            var m = ManifestReader.Read(dir.File("quantize.yaml"));
            Assert.AreEqual("kl", m.Models[0].Gate.Metric);
            Assert.IsNull(m.Models[0].Gate.FixedBaseline);
            Assert.AreEqual(QuantMethod.SuperAware, m.Models[0].Method);
        }
        finally { CultureInfo.CurrentCulture = saved; }
    }
}
