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
        new[] { "gate", "--manifest", dir.File("quantize.yaml"), "--state", dir.File("obj/state.json"), "--report-dir",
            dir.File("obj") }.Concat(extra).ToArray();

    [TestMethod]
    public void AToolKilledMidWriteLeavesNoArtifactAndTheNextRunRecovers()
    {
        using var dir = Project();
        var killed = CliRunner.Run(new Dictionary<string, string> { ["SUPERQUANT_FAULT"] = "kill-mid-write:.sqpk." }, Gate(dir));
        Assert.AreNotEqual(0, killed.ExitCode, "the fault-injected run dies");
        Assert.IsFalse(File.Exists(dir.File("models/tiny.sqpk.safetensors")), "no half-written file at the final path");
        // The bytes went into an unnamed file (O_TMPFILE): the kernel freed it with the process.
        Assert.IsEmpty(Directory.GetFiles(dir.File("models"), "*.tmp"), "a SIGKILLed writer leaves no temp file");
        Assert.IsFalse(File.Exists(dir.File("obj/state.json")), "nothing was recorded as done");

        var again = CliRunner.Run(Gate(dir));
        Assert.AreEqual(0, again.ExitCode, again.StdErr + again.StdOut);
        StringAssert.Contains(again.StdOut, "tiny: quantizing", "the killed run is not treated as up to date");
        var (model, _) = PackedArtifact.Load(dir.File("models/tiny.sqpk.safetensors"));
        model.Dispose();
        Assert.AreEqual(0, Directory.GetFiles(dir.File("models"), "*.tmp").Length, "stale temp file cleaned up");
    }

    [TestMethod]
    public void AToolKilledWhileCachingTheBaselineRecomputesIt()
    {
        using var dir = Project();
        var killed = CliRunner.Run(new Dictionary<string, string> { ["SUPERQUANT_FAULT"] = "kill-mid-write:reference-" }, Gate(dir));
        Assert.AreNotEqual(0, killed.ExitCode, "the fault-injected run dies");
        Assert.IsEmpty(Directory.GetFiles(dir.File("obj"), "reference-*.sqref"), "no half-written cache at its final path");
        Assert.IsEmpty(Directory.GetFiles(dir.File("obj"), "reference-*.tmp"), "a SIGKILLed writer leaves no temp file, not even until the next run");

        var again = CliRunner.Run(Gate(dir));
        Assert.AreEqual(0, again.ExitCode, again.StdErr + again.StdOut);
        Assert.DoesNotContain("baseline from cache", again.StdOut);
        Assert.HasCount(1, Directory.GetFiles(dir.File("obj"), "reference-*.sqref"));
        Assert.IsEmpty(Directory.GetFiles(dir.File("obj"), "reference-*.tmp"), "the killed writer's temp file is cleaned up");
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    static extern int kill(int pid, int signal);

    /// <summary>Every file under the project with its SHA-256 (paths relative to it).</summary>
    static SortedDictionary<string, string> Snapshot(string root, params string[] skip) => new(
        Directory.GetFiles(root, "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(root, f)).Where(f => !skip.Any(f.Contains))
            .ToDictionary(f => f, f => Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(Path.Combine(root, f))))),
        StringComparer.Ordinal);

    /// <summary>
    /// Interruption fuzzing: gate runs stopped at random points by SIGTERM, SIGINT or SIGKILL (fixed seed), each
    /// followed by an uninterrupted run. The interrupted run exits 0 (it finished first), 3 (SQ0008: it stopped), or
    /// dies of the signal; it never exits 1 or 4, never leaves a temp file, never leaves a file at a final path that a
    /// clean run would not have written byte for byte, and only SIGKILL (which no process can catch) may leave its
    /// staged file, for the next run to sweep. The next run ships exactly what a clean run ships.
    /// </summary>
    [TestMethod]
    [TestCategory(TestCategories.Slow)]
    public void RunsInterruptedAtRandomPointsThenRerunShipExactlyWhatACleanRunShips()
    {
        const int Runs = 24;
        using var clean = Project();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var first = CliRunner.Run(Gate(clean));
        double cleanSeconds = clock.Elapsed.TotalSeconds;
        Assert.AreEqual(0, first.ExitCode, first.Output);
        // Reports carry timings and paths; the artifacts and the baseline must match byte for byte.
        string[] volatileFiles = { "superquant-report", "state.json", "superquant.lock" };
        var expected = Snapshot(clean.Path, volatileFiles);

        var rng = new Random(26);
        var counts = new Dictionary<string, int>();
        (string Name, int Number)[] signals = { ("TERM", 15), ("INT", 2), ("KILL", 9) };
        for (int run = 0; run < Runs; run++)
        {
            using var dir = Project();
            var (name, number) = signals[rng.Next(signals.Length)];
            double delay = rng.NextDouble() * cleanSeconds;
            var psi = new System.Diagnostics.ProcessStartInfo("dotnet")
            {
                RedirectStandardOutput = true, RedirectStandardError = true,
                RedirectStandardInput = true, UseShellExecute = false
            };
            foreach (string a in new[] { Path.Combine(AppContext.BaseDirectory, "superquant.dll") }.Concat(Gate(dir))) psi.ArgumentList.Add(a);
            using var p = System.Diagnostics.Process.Start(psi)!;
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            Thread.Sleep(TimeSpan.FromSeconds(delay));
            kill(p.Id, number);
            Assert.IsTrue(p.WaitForExit(TimeSpan.FromMinutes(2)), $"run {run}: SIG{name} after {delay:F2} s: the tool did not stop");
            string output = stdout.Result + stderr.Result;
            int code = p.ExitCode;
            string outcome = code switch { 0 => "finished first", 3 => "stopped (SQ0008)", _ => "died of the signal" };
            counts[$"SIG{name} {outcome}"] = counts.GetValueOrDefault($"SIG{name} {outcome}") + 1;
            Assert.IsTrue(code is 0 or 3 || code >= 128, $"run {run}: SIG{name} after {delay:F2} s: exit {code}\n{output}");
            if (code == 3) StringAssert.Contains(output, "SQ0008");
            Assert.DoesNotContain("internal error", output);
            var left = Snapshot(dir.Path, volatileFiles);
            Assert.IsFalse(left.Keys.Any(f => f.EndsWith(".tmp", StringComparison.Ordinal)), $"run {run}: a temp file is left: {string.Join(", ", left.Keys)}");
            if (name != "KILL") Assert.IsFalse(left.Keys.Any(f => f.Contains(".staged")),
                $"run {run}: SIG{name} left a staged file: {string.Join(", ", left.Keys)}");
            foreach (var (file, sha) in left.Where(kv => !kv.Key.Contains(".staged")))
                Assert.AreEqual(expected.GetValueOrDefault(file), sha,
                    $"run {run}: SIG{name} after {delay:F2} s left {file} with bytes a clean run does not write");

            var again = CliRunner.Run(Gate(dir));
            Assert.AreEqual(0, again.ExitCode, $"run {run}: the rerun after SIG{name}:\n{again.Output}");
            CollectionAssert.AreEquivalent(expected.ToList(), Snapshot(dir.Path, volatileFiles).ToList(),
                $"run {run}: the rerun after SIG{name} at {delay:F2} s ships what a clean run ships");
        }
        string summary = string.Join(", ", counts.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key}: {kv.Value}"));
        Console.WriteLine($"{Runs} interrupted runs (clean run {cleanSeconds:F2} s): {summary}; every rerun shipped the clean run's bytes");
        Assert.AreEqual(Runs, counts.Values.Sum());
    }

    /// <summary>`quantize --eval-*` keeps its baseline in a temp folder of its own: a SIGTERM while it is being recorded
    /// removes it like any other run's file (it used to be handed to the cleanup only once recorded).</summary>
    [TestMethod]
    public void AQuantizeStoppedWhileRecordingItsBaselineLeavesNoTempFolder()
    {
        using var dir = new TempFolder();
        SuperWeightPlanter.WriteCheckpoint(dir.File("ckpt"), new TinyModelSpec { Layers = 2, Hidden = 64, Intermediate = 128 }, 1, 17, 45);
        var rng = new Random(5);
        SuperQuant.Models.Text.TokenIdFile.Write(dir.File("eval.txt"), Enumerable.Range(0, 200_000).Select(_ => rng.Next(48)));
        Directory.CreateDirectory(dir.File("tmp"));
        var r = SignalledRun.Run(new Dictionary<string, string> { ["TMPDIR"] = dir.File("tmp") }, "reference: ", SignalledRun.SIGTERM,
            "quantize", "--model", dir.File("ckpt"), "--method", "rtn", "--bits", "4", "--out", dir.File("out/m.sqpk.safetensors"),
            "--eval-tokens", dir.File("eval.txt"), "--context", "64", "--device", "cpu");
        Assert.AreEqual(3, r.ExitCode, r.Output);
        StringAssert.Contains(r.Output, "SQ0008");
        Assert.IsEmpty(Directory.GetFileSystemEntries(dir.File("tmp"), "superquant-*"), "the run's temp folder is removed");
        Assert.IsFalse(File.Exists(dir.File("out/m.sqpk.safetensors")));
    }

    /// <summary>`generate --out` stopped by SIGTERM stops generating, exits 3 (SQ0008) and writes no id file: a stream
    /// cut short is not the one asked for.</summary>
    [TestMethod]
    public void AGenerateStoppedBySigtermWritesNoFile()
    {
        using var dir = new TempFolder();
        var r = SignalledRun.Run(null, "generate: ", SignalledRun.SIGTERM,
            "generate", "-m", SharedModels.Stories260K, "--prompt-tokens", "1", "-n", "511", "--out", dir.File("ids.txt"));
        Assert.AreEqual(3, r.ExitCode, r.Output);
        StringAssert.Contains(r.Output, "SQ0008");
        Assert.IsFalse(File.Exists(dir.File("ids.txt")));
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
    }

    [TestMethod]
    public void AHeldLockTimesOutWithSQ0005()
    {
        using var dir = Project();
        string lockFile = SuperQuant.Cli.ProjectLock.LockFiles(SuperQuant.Manifest.ManifestReader.Read(dir.File("quantize.yaml")))[0];
        Directory.CreateDirectory(Path.GetDirectoryName(lockFile)!);
        using var held = new FileStream(lockFile, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        var r = CliRunner.Run(Gate(dir, "--lock-timeout", "1"));
        Assert.AreEqual(3, r.ExitCode);
        StringAssert.Contains(r.StdErr, "error SQ0005");
    }

    [TestMethod]
    public void ADiskFullWriteFailsWithSQ4004AndLeavesNoFile()
    {
        // models/ becomes a 64 KiB tmpfs inside a private mount namespace (unshare), so the real kernel ENOSPC path
        // and free-space figures are exercised without touching the machine's mounts.
        if (!File.Exists("/usr/bin/unshare")) Assert.Inconclusive("needs util-linux unshare");
        using var dir = Project();
        Directory.CreateDirectory(dir.File("models"));
        string script = "mount -t tmpfs -o size=64k tmpfs \"$1\" || exit 99; shift; dotnet \"$@\"; rc=$?; echo \"left in models: [$(ls -A models)]\"; exit $rc";
        var args = new[] { "--mount", "--map-root-user", "sh", "-c", script, "sh", dir.File("models"),
            Path.Combine(AppContext.BaseDirectory, "superquant.dll") }.Concat(Gate(dir)).ToArray();
        var r = ProcessRunner.Run("/usr/bin/unshare", dir.Path, null, TimeSpan.FromMinutes(5), args);
        if (r.ExitCode == 99 || r.StdErr.Contains("unshare failed")) Assert.Inconclusive("mount namespaces are not available here: " + r.StdErr);
        Assert.AreEqual(3, r.ExitCode, r.Output);
        StringAssert.Contains(r.StdErr, "error SQ4004");
        StringAssert.Contains(r.StdErr, "no space left on the device for " + dir.File("models/tiny.sqpk.safetensors"));
        StringAssert.Contains(r.StdOut, "left in models: []", "no temp file and nothing at the final path");
        Assert.IsFalse(File.Exists(dir.File("obj/state.json")), "nothing was recorded as done");
    }

    [TestMethod]
    public void TheKernelsNoSpaceErrorIsRecognized()
    {
        if (!File.Exists("/dev/full")) Assert.Inconclusive("no /dev/full");
        var e = Assert.Throws<IOException>(() =>
        {
            using var f = new FileStream("/dev/full", FileMode.Open,
            FileAccess.Write); f.Write(new byte[4096]); f.Flush();
        });
        Assert.IsTrue(SuperQuant.Core.DiskSpace.IsDiskFull(e), $"HResult {e.HResult}: {e.Message}");
        Assert.IsFalse(SuperQuant.Core.DiskSpace.IsDiskFull(new FileNotFoundException("x")));
    }

    [TestMethod]
    public void TheBaselineIsComputedOnceAndReusedAcrossSettings()
    {
        using var dir = Project();
        double Kl() { using var d = System.Text.Json.JsonDocument.Parse(File.ReadAllText(dir.File("obj/superquant-report.json"))); return d.RootElement.GetProperty("models")[0].GetProperty("artifacts")[0].GetProperty("kl_mean").GetDouble(); }
        var first = CliRunner.Run(Gate(dir));
        Assert.AreEqual(0, first.ExitCode, first.Output);
        Assert.DoesNotContain("baseline from cache", first.StdOut);
        string cache = Directory.GetFiles(dir.File("obj"), "reference-tiny-*.sqref").Single();

        File.WriteAllText(dir.File("quantize.yaml"), File.ReadAllText(dir.File("quantize.yaml")).Replace("weight_bits: 4", "weight_bits: 3"));
        var second = CliRunner.Run(Gate(dir));
        Assert.AreEqual(0, second.ExitCode, second.Output);
        StringAssert.Contains(second.StdOut, "tiny: quantizing", "new settings: re-quantized");
        StringAssert.Contains(second.StdOut, "baseline from cache", "same checkpoint and data: baseline reused");
        using (var report = System.Text.Json.JsonDocument.Parse(File.ReadAllText(dir.File("obj/superquant-report.json"))))
            Assert.IsTrue(report.RootElement.GetProperty("models")[0].GetProperty("reference_from_cache").GetBoolean(), "the report says the cache was hit");
        double cachedKl = Kl();

        // Without the cache (deleted), and with a damaged one, the same numbers come out of a fresh baseline.
        File.Delete(dir.File("obj/state.json"));
        File.WriteAllBytes(cache, new byte[] { 1, 2, 3 });
        var third = CliRunner.Run(Gate(dir));
        Assert.AreEqual(0, third.ExitCode, third.Output);
        Assert.DoesNotContain("baseline from cache", third.StdOut, "a damaged cache is recomputed");
        Assert.AreEqual(cachedKl, Kl());
        Assert.IsGreaterThan(100L, new FileInfo(Directory.GetFiles(dir.File("obj"), "reference-tiny-*.sqref").Single()).Length);

        // Other evaluation data: another key, and the old file is replaced.
        File.WriteAllText(dir.File("quantize.yaml"), File.ReadAllText(dir.File("quantize.yaml")).Replace("context: 40", "context: 30"));
        var fourth = CliRunner.Run(Gate(dir));
        Assert.AreEqual(0, fourth.ExitCode, fourth.Output);
        Assert.DoesNotContain("baseline from cache", fourth.StdOut);
        Assert.HasCount(1, Directory.GetFiles(dir.File("obj"), "reference-tiny-*.sqref"));
    }

    /// <summary>
    /// The reference cache is a file the tool reads back, so it is fuzzed like an input: each mutation (an NLL set to
    /// 1e30, a scrambled code, an argmax out of range, flipped header bytes, a truncation, random bytes) is followed by
    /// a run that must end with a clean run's verdict and numbers (the cache proves its integrity or is recomputed),
    /// or exit 3 with a code: never exit 4, never a changed verdict.
    /// </summary>
    [TestMethod]
    [TestCategory(TestCategories.Slow)]
    public void AMutatedReferenceCacheNeverChangesTheVerdict()
    {
        using var dir = Project();
        File.WriteAllText(dir.File("quantize.yaml"), File.ReadAllText(dir.File("quantize.yaml"))
            .Replace("weight_bits: 4", "weight_bits: 2").Replace("metric: kl", "metric: perplexity").Replace("max_increase: 1", "max_increase: \"50%\""));
        string Numbers()
        {
            using var d = System.Text.Json.JsonDocument.Parse(File.ReadAllText(dir.File("obj/superquant-report.json")));
            var a = d.RootElement.GetProperty("models")[0].GetProperty("artifacts")[0];
            return $"{a.GetProperty("perplexity").GetDouble():R} {a.GetProperty("reference_perplexity").GetDouble():R} " +
                $"{a.GetProperty("kl_mean").GetDouble():R}";
        }
        var clean = CliRunner.Run(Gate(dir));
        Assert.IsTrue(clean.ExitCode is 0 or 1, clean.Output);
        string expected = Numbers();
        string cache = Directory.GetFiles(dir.File("obj"), "reference-tiny-*.sqref").Single();
        byte[] original = File.ReadAllBytes(cache);
        int keyLength = BitConverter.ToInt32(original, 64);
        int header = (68 + keyLength + 7) / 8 * 8, rowBytes = 16 + (2 * 48 + 3) / 4 * 4;
        var rng = new Random(36);
        var mutations = new (string Name, Func<byte[], byte[]> Apply)[]
        {
            ("NLL of row 3 = 1e30", b => { BitConverter.TryWriteBytes(b.AsSpan(header + 3 * rowBytes + 12), 1e30f); return b; }),
            ("NLL of row 0 = -1", b => { BitConverter.TryWriteBytes(b.AsSpan(header + 12), -1f); return b; }),
            ("argmax of row 2 out of range", b => { BitConverter.TryWriteBytes(b.AsSpan(header + 2 * rowBytes + 8), 100000); return b; }),
            ("codes of row 5 scrambled", b => { rng.NextBytes(b.AsSpan(header + 5 * rowBytes + 16, 2 * 48)); return b; }),
            ("scale of row 1 NaN", b => { BitConverter.TryWriteBytes(b.AsSpan(header + rowBytes + 4), float.NaN); return b; }),
            ("hash byte flipped", b => { b[40] ^= 0x5A; return b; }),
            ("vocabulary in the header", b => { BitConverter.TryWriteBytes(b.AsSpan(8), 47); return b; }),
            ("truncated by a row", b => b[..^rowBytes]),
            ("one random byte in the rows", b => { b[header + rng.Next(b.Length - header)] ^= (byte)(1 + rng.Next(255)); return b; }),
            ("random bytes", b => { rng.NextBytes(b); return b; }),
        };
        foreach (var (name, apply) in mutations)
        {
            File.WriteAllBytes(cache, apply((byte[])original.Clone()));
            File.Delete(dir.File("obj/state.json")); // evaluated again, against whatever the cache now holds
            var r = CliRunner.Run(Gate(dir));
            Assert.DoesNotContain("internal error", r.Output, name);
            if (r.ExitCode == 3) { StringAssert.Matches(r.Output, new System.Text.RegularExpressions.Regex("SQ\\d{4}"), name); continue; }
            Assert.AreEqual(clean.ExitCode, r.ExitCode, $"{name}: the verdict changed\n{r.Output}");
            Assert.AreEqual(expected, Numbers(), $"{name}: the gated numbers changed");
            Assert.DoesNotContain("baseline from cache", r.StdOut, $"{name}: the damaged cache was trusted");
        }
    }

    /// <summary>The state file is read back too: edited numbers, a changed hash, a removed checksum, truncation, random
    /// bytes or a FIFO in its place end in a clean run's verdict and numbers (a state that does not prove itself is
    /// not believed: the model runs again), never exit 4, never a hang, never numbers no run measured.</summary>
    [TestMethod]
    [TestCategory(TestCategories.Slow)]
    [Timeout(600_000, CooperativeCancellation = true)]
    public void AMutatedStateFileNeverChangesTheVerdictOrTheNumbers()
    {
        using var dir = Project();
        string Report() => File.ReadAllText(dir.File("obj/superquant-report.json"));
        string Numbers()
        {
            using var d = System.Text.Json.JsonDocument.Parse(Report());
            var a = d.RootElement.GetProperty("models")[0].GetProperty("artifacts")[0];
            return $"{a.GetProperty("kl_mean").GetDouble():R} {a.GetProperty("passed").GetBoolean()}";
        }
        var clean = CliRunner.Run(Gate(dir));
        Assert.AreEqual(0, clean.ExitCode, clean.Output);
        string expected = Numbers();
        var again = CliRunner.Run(Gate(dir));
        StringAssert.Contains(again.StdOut, "tiny: up to date", "an intact state is believed");
        string state = dir.File("obj/state.json");
        string original = File.ReadAllText(state);
        var rng = new Random(37);
        var mutations = new (string Name, Action Apply)[]
        {
            ("a KL number edited", () => File.WriteAllText(state, System.Text.RegularExpressions.Regex.Replace(original, "(\"kl_mean\": " +
                ")[0-9.eE+-]+", "${1}0.5"))),
            ("the input hash edited", () => File.WriteAllText(state, System.Text.RegularExpressions.Regex.Replace(original, "(\"input_hash\": " +
                "\")[0-9a-f]", "${1}x"))),
            ("the checksum removed", () => File.WriteAllText(state, System.Text.RegularExpressions.Regex.Replace(original, ",?\\s*\"checksum\": " +
                "\"[0-9a-f]+\"", ""))),
            ("truncated", () => File.WriteAllText(state, original[..(original.Length / 2)])),
            ("random bytes", () => { var b = new byte[original.Length]; rng.NextBytes(b); File.WriteAllBytes(state, b); }),
            ("a FIFO", () => { File.Delete(state); Assert.AreEqual(0, mkfifo(state, Convert.ToUInt32("644", 8))); }),
        };
        foreach (var (name, apply) in mutations)
        {
            apply();
            var r = CliRunner.Run(Gate(dir));
            Assert.DoesNotContain("internal error", r.Output, name);
            if (name == "a FIFO")
            {
                // Not read (it would block) and not replaced (it is not a regular file): refused before any work.
                Assert.AreEqual(3, r.ExitCode, r.Output);
                StringAssert.Contains(r.Output, "SQ4003");
                StringAssert.Contains(r.Output, "state.json");
                Assert.DoesNotContain("quantizing", r.StdOut);
                continue;
            }
            Assert.AreEqual(0, r.ExitCode, $"{name}: {r.Output}");
            Assert.AreEqual(expected, Numbers(), $"{name}: the reported numbers changed");
            if (name != "the input hash edited" || !r.StdOut.Contains("up to date")) continue;
            Assert.Fail($"{name}: an edited state was believed");
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    static extern int mkfifo(string path, uint mode);
}
