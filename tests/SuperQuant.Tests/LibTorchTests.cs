using System.Diagnostics;
using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.Core.Runtime;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

/// <summary>
/// Bring-your-own libtorch. The order (SUPERQUANT_LIBTORCH, SuperQuantLibTorchDir, PyTorch, bundled) is checked on
/// described machines; the loading is checked for real with a second copy of the CPU libtorch in a temp folder: the
/// file the process maps (from /proc/self/maps) must be the copy, and the process must not abort (two libtorch
/// copies in one process abort at load).
/// </summary>
[TestClass]
public sealed class LibTorchTests
{
    sealed class FakeMachine(Dictionary<string, string>? variables = null, string? pyTorch = null) : ILibTorchEnvironment
    {
        public string? Variable(string name) => variables?.GetValueOrDefault(name);
        public string? FindPyTorch() => pyTorch;
    }

    static string TempFolder(string name)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"sq-lt-{name}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        return dir;
    }

    /// <summary>A fake PyTorch package folder: torch/version.py and torch/lib with (empty) library files.</summary>
    static string FakePyTorch(string root, string version, string? cuda)
    {
        string torchDir = Path.Combine(root, "site-packages", "torch");
        Directory.CreateDirectory(Path.Combine(torchDir, "lib"));
        File.WriteAllText(Path.Combine(torchDir, "version.py"),
            $"from typing import Optional\n__all__ = ['__version__']\n__version__ = '{version}'\ndebug = False\ncuda: Optional[str] = " +
                $"{(cuda is null ? "None" : $"'{cuda}'")}\n");
        foreach (string lib in new[] { "libc10.so", "libtorch_cpu.so",
            "libtorch.so" }.Concat(cuda is null ? Array.Empty<string>() : new[] { "libtorch_cuda.so" }))
            File.WriteAllBytes(Path.Combine(torchDir, "lib", lib), Array.Empty<byte>());
        return torchDir;
    }

    [TestMethod]
    public void ChoiceFollowsTheDocumentedOrder()
    {
        string root = TempFolder("order");
        try
        {
            string cudaTorch = FakePyTorch(Path.Combine(root, "a"), "2.11.0+cu130", "13.0");
            string explicitLib = Path.Combine(FakePyTorch(Path.Combine(root, "b"), "2.10.0+cpu", null), "lib");
            string msbuildLib = Path.Combine(FakePyTorch(Path.Combine(root, "c"), "2.12.0+cpu", null), "lib");

            var byEnv = LibTorchLocator.Choose(new FakeMachine(new()
            {
                [LibTorchLocator.EnvironmentVariable] = explicitLib,
                [LibTorchLocator.MsBuildVariable] = msbuildLib
            }, cudaTorch));
            Assert.AreEqual(LibTorchLocator.EnvironmentVariable, byEnv.Source);
            Assert.AreEqual(explicitLib, byEnv.Folder);
            Assert.AreEqual("2.10.0+cpu", byEnv.Version);

            var byMsBuild = LibTorchLocator.Choose(new FakeMachine(new() { [LibTorchLocator.MsBuildVariable] = msbuildLib }, cudaTorch));
            Assert.AreEqual("SuperQuantLibTorchDir (MSBuild)", byMsBuild.Source);
            Assert.AreEqual("2.12.0+cpu", byMsBuild.Version);

            var byPython = LibTorchLocator.Choose(new FakeMachine(null, cudaTorch));
            Assert.AreEqual("PyTorch (python3)", byPython.Source);
            Assert.AreEqual(Path.Combine(cudaTorch, "lib"), byPython.Folder);
            Assert.AreEqual("13.0", byPython.CudaVersion);
            Assert.IsTrue(byPython.HasCuda);

            var forced = LibTorchLocator.Choose(new FakeMachine(new() { [LibTorchLocator.EnvironmentVariable] = "bundled" }, cudaTorch));
            Assert.IsTrue(forced.IsBundled, "SUPERQUANT_LIBTORCH=bundled wins over a PyTorch install");

            // A folder named by the user may be the torch package itself: its lib/ is taken.
            var parent = LibTorchLocator.Choose(new FakeMachine(new() { [LibTorchLocator.EnvironmentVariable] = cudaTorch }));
            Assert.AreEqual(Path.Combine(cudaTorch, "lib"), parent.Folder);
        }
        finally { Directory.Delete(root, true); }
    }

    [TestMethod]
    public void PyTorchIsPassedOverWithAReasonWhenItAddsNothingOrIsTooOld()
    {
        string root = TempFolder("skip");
        try
        {
            var cpuOnly = LibTorchLocator.Choose(new FakeMachine(null, FakePyTorch(Path.Combine(root, "cpu"), "2.11.0+cpu", null)));
            Assert.IsTrue(cpuOnly.IsBundled);
            StringAssert.Contains(cpuOnly.Skipped.Single(), "CPU build");

            var old = LibTorchLocator.Choose(new FakeMachine(null, FakePyTorch(Path.Combine(root, "old"), "2.3.1+cu121", "12.1")));
            Assert.IsTrue(old.IsBundled);
            StringAssert.Contains(old.Skipped.Single(), "older than 2.10");

            var none = LibTorchLocator.Choose(new FakeMachine());
            Assert.IsTrue(none.IsBundled);
            StringAssert.Contains(none.Skipped.Single(), "no python3 with torch");
        }
        finally { Directory.Delete(root, true); }
    }

    [TestMethod]
    public void ANamedFolderWithoutLibTorchIsACodedErrorNamingIt()
    {
        string empty = TempFolder("empty");
        try
        {
            var e = Assert.ThrowsExactly<SuperQuantException>(()
                => LibTorchLocator.Choose(new FakeMachine(new() { [LibTorchLocator.EnvironmentVariable] = empty })));
            Assert.AreEqual(ErrorCodes.LibTorchFolder, e.Code);
            StringAssert.Contains(e.Message, empty);

            var run = CliRunner.Run(new Dictionary<string, string> { [LibTorchLocator.EnvironmentVariable] = empty }, "doctor");
            Assert.AreEqual(3, run.ExitCode, run.Output);
            StringAssert.Contains(run.StdErr, "SQ0002");
            StringAssert.Contains(run.StdErr, empty);
        }
        finally { Directory.Delete(empty, true); }
    }

    /// <summary>A folder whose libtorch files are dangling or looping links names no libtorch: SQ0002, where it used to
    /// be accepted while the bundled library quietly ran instead.</summary>
    [TestMethod]
    [DataRow("dangling")]
    [DataRow("looping")]
    public void AFolderOfBrokenLinksIsSQ0002(string kind)
    {
        string dir = TempFolder(kind);
        try
        {
            foreach (string lib in new[] { "libtorch_cpu.so", "libc10.so", "libtorch.so" })
            {
                string path = Path.Combine(dir, lib);
                if (kind == "dangling") File.CreateSymbolicLink(path, Path.Combine(dir, "missing-" + lib));
                else { File.CreateSymbolicLink(path, path + ".loop"); File.CreateSymbolicLink(path + ".loop", path); }
            }
            var run = CliRunner.Run(new Dictionary<string, string> { [LibTorchLocator.EnvironmentVariable] = dir }, "doctor");
            Assert.AreEqual(3, run.ExitCode, run.Output);
            StringAssert.Contains(run.StdErr, "SQ0002");
            StringAssert.Contains(run.StdErr, dir);
        }
        finally { Directory.Delete(dir, true); }
    }

    [TestMethod]
    public void ALibTorchThatCannotLoadIsSQ0001NamingBothVersionsNotACrash()
    {
        string root = TempFolder("broken");
        try
        {
            string torchDir = FakePyTorch(root, "2.4.0+cu121", "12.1"); // empty files: not ELF at all
            var run = CliRunner.Run(new Dictionary<string, string> { [LibTorchLocator.EnvironmentVariable] = torchDir }, "doctor");
            Assert.AreEqual(3, run.ExitCode, run.Output);
            StringAssert.Contains(run.StdErr, "SQ0001");
            StringAssert.Contains(run.StdErr, "2.4.0+cu121");
            StringAssert.Contains(run.StdErr, LibTorchLocator.BundledVersion);
        }
        finally { Directory.Delete(root, true); }
    }

    /// <summary>A real second libtorch: the bundled CPU files copied (not linked: a link would share the inode, and
    /// the loader would take it for the bundled file) into a temp folder once per test run.</summary>
    static readonly Lazy<string> CopiedLibTorch = new(() =>
    {
        string bundled = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native");
        string dir = TempFolder("copy");
        foreach (string file in Directory.GetFiles(bundled).Where(f => Path.GetFileName(f) is var n
            && (n.StartsWith("libtorch", StringComparison.Ordinal) || n.StartsWith("libc10", StringComparison.Ordinal)
            || n.StartsWith("libgomp", StringComparison.Ordinal))))
            File.Copy(file, Path.Combine(dir, Path.GetFileName(file)));
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(dir, true); } catch (IOException) { } };
        return dir;
    });

    static JsonElement Doctor(ProcessRunner.Result run)
    {
        Assert.AreEqual(0, run.ExitCode, run.Output);
        return JsonDocument.Parse(run.StdOut).RootElement;
    }

    [TestMethod]
    public void NextToTheBundledLibTorchTheToolRerunsItselfOnTheChosenOne()
    {
        string copy = CopiedLibTorch.Value;
        var d = Doctor(CliRunner.Run(new Dictionary<string, string> { [LibTorchLocator.EnvironmentVariable] = copy }, "doctor", "--json"));
        Assert.AreEqual("loaded", d.GetProperty("torch").GetString());
        Assert.AreEqual(Path.Combine(copy, "libtorch_cpu.so"), d.GetProperty("libtorch_loaded_from").GetString(),
            "the process mapped the chosen copy, not the bundled file");
        Assert.AreEqual("re-run with LD_LIBRARY_PATH", d.GetProperty("libtorch_mode").GetString());

        // And a real command on it: a forward pass that must give the bundled libtorch's numbers.
        string model = TempFolder("model");
        try
        {
            TinyCheckpointFactory.Write(model, new TinyModelSpec());
            File.WriteAllText(Path.Combine(model, "ids.txt"), string.Join(' ', Enumerable.Range(0, 40).Select(i => (i * 7) % 48)));
            var env = new Dictionary<string, string> { [LibTorchLocator.EnvironmentVariable] = copy };
            var external = CliRunner.Run(env, "eval", "-m", model, "--tokens", Path.Combine(model, "ids.txt"), "--context", "16", "--json");
            var bundled = CliRunner.Run(new Dictionary<string, string> { [LibTorchLocator.EnvironmentVariable] = "bundled" }, "eval", "-m", model,
                "--tokens", Path.Combine(model, "ids.txt"), "--context", "16", "--json");
            Assert.AreEqual(0, external.ExitCode, external.Output);
            Assert.AreEqual(0, bundled.ExitCode, bundled.Output);
            Assert.AreEqual(JsonDocument.Parse(bundled.StdOut).RootElement.GetProperty("perplexity").GetDouble(),
                JsonDocument.Parse(external.StdOut).RootElement.GetProperty("perplexity").GetDouble(), 0, "same libtorch build, same numbers");
        }
        finally { Directory.Delete(model, true); }
    }

    [TestMethod]
    public void WithoutABundledLibTorchTheChosenOneIsLoadedInProcess()
    {
        // The GPU machine's layout: the tool published without libtorch. Hard links for the tool's own files (cheap,
        // and their identity does not matter here).
        string copy = CopiedLibTorch.Value;
        string tool = TempFolder("tool");
        try
        {
            string source = AppContext.BaseDirectory.TrimEnd('/');
            var cp = Process.Start(new ProcessStartInfo("cp", new[] { "-al", source + "/.", tool }) { UseShellExecute = false })!;
            cp.WaitForExit();
            Assert.AreEqual(0, cp.ExitCode);
            foreach (string f in Directory.GetFiles(Path.Combine(tool, "runtimes", "linux-x64", "native")).Where(f => Path.GetFileName(f) is var n
                && (n.StartsWith("libtorch", StringComparison.Ordinal) || n.StartsWith("libc10", StringComparison.Ordinal))))
                File.Delete(f);
            var run = ProcessRunner.Run("dotnet", null, new Dictionary<string, string> { [LibTorchLocator.EnvironmentVariable] = copy },
                TimeSpan.FromMinutes(2),
                Path.Combine(tool, "superquant.dll"), "doctor", "--json");
            var d = Doctor(run);
            Assert.AreEqual("loaded in process", d.GetProperty("libtorch_mode").GetString());
            Assert.AreEqual(Path.Combine(copy, "libtorch_cpu.so"), d.GetProperty("libtorch_loaded_from").GetString());
        }
        finally { Directory.Delete(tool, true); }
    }
}
