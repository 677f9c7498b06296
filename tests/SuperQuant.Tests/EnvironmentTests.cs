using SuperQuant.Core;
using SuperQuant.NativeFix;
using SuperQuant.Tests.Support;
using TorchSharp;

namespace SuperQuant.Tests;

[TestClass]
public sealed class EnvironmentTests
{
    sealed class FakeCuda(bool available) : ICudaProbe
    {
        public bool IsAvailable() => available;
    }

    [TestMethod]
    public void AutoPicksCudaOnlyWhenVisible()
    {
        Assert.AreEqual(DeviceType.CUDA, ComputeDevice.Resolve(DevicePreference.Auto, null, new FakeCuda(true)).Type);
        Assert.AreEqual(DeviceType.CPU, ComputeDevice.Resolve(DevicePreference.Auto, null, new FakeCuda(false)).Type);
    }

    [TestMethod]
    public void ExplicitChoiceBeatsEnvironmentWhichBeatsAuto()
    {
        Assert.AreEqual(DeviceType.CPU, ComputeDevice.Resolve(DevicePreference.Cpu, "cuda", new FakeCuda(true)).Type);
        var (type, reason) = ComputeDevice.Resolve(DevicePreference.Auto, "cpu", new FakeCuda(true));
        Assert.AreEqual(DeviceType.CPU, type);
        StringAssert.Contains(reason, "SUPERQUANT_DEVICE");
    }

    [TestMethod]
    public void RequestingCudaWithoutOneIsACodedError()
    {
        var e = Assert.ThrowsExactly<SuperQuantException>(() => ComputeDevice.Resolve(DevicePreference.Cuda, null, new FakeCuda(false)));
        Assert.AreEqual(ErrorCodes.InvalidArgument, e.Code);
        Assert.ThrowsExactly<SuperQuantException>(() => ComputeDevice.Parse("tpu", "--device"));
    }

    static string PackageShim()
    {
        string root = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        return Path.Combine(root, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
    }

    [TestMethod]
    public void PatcherWeakensOnlyTheMarkerRequirementAndIsIdempotent()
    {
        string original = PackageShim();
        if (!OperatingSystem.IsLinux()) Assert.Inconclusive("the shim is a Linux ELF file");
        Assert.IsTrue(File.Exists(original), $"restored TorchSharp shim expected at {original}");
        byte[] image = File.ReadAllBytes(original);
        Assert.IsTrue(GlibcxxVersionNeedsPatcher.RequiresVersionStrictly(image), "TorchSharp 0.107.0 ships a shim that needs GLIBCXX_3.4.32");

        Assert.AreEqual(PatchOutcome.Patched, GlibcxxVersionNeedsPatcher.Patch(image, out string message), message);
        Assert.IsFalse(GlibcxxVersionNeedsPatcher.RequiresVersionStrictly(image));
        Assert.AreEqual(PatchOutcome.NotNeeded, GlibcxxVersionNeedsPatcher.Patch(image, out message), message);

        // Only a few bytes change: one flag word and one symbol-version entry.
        byte[] fresh = File.ReadAllBytes(original);
        int changed = Enumerable.Range(0, fresh.Length).Count(i => fresh[i] != image[i]);
        Assert.IsTrue(changed is >= 1 and <= 4, $"{changed} bytes changed");
    }

    [TestMethod]
    public void PatchIfNeededLeavesTheLibraryAloneWhenTheHostHasTheVersion()
    {
        using var dir = new TempFolder();
        if (!OperatingSystem.IsLinux()) Assert.Inconclusive("the shim is a Linux ELF file");
        string copy = dir.File("libLibTorchSharp.so");
        File.Copy(PackageShim(), copy);
        byte[] before = File.ReadAllBytes(copy);
        // A "host libstdc++" that defines GLIBCXX_3.4.32: the shim itself does not, so use a fake ELF check via
        // the real host library and a version every libstdc++ defines.
        string host = GlibcxxVersionNeedsPatcher.FindHostLibStdCxx()!;
        Assert.IsTrue(GlibcxxVersionNeedsPatcher.DefinesVersion(File.ReadAllBytes(host), "GLIBCXX_3.4"));
        Assert.IsFalse(GlibcxxVersionNeedsPatcher.DefinesVersion(File.ReadAllBytes(host), "GLIBCXX_99.0"));
        bool hostHas = GlibcxxVersionNeedsPatcher.DefinesVersion(File.ReadAllBytes(host), GlibcxxVersionNeedsPatcher.RequiredVersion);
        var outcome = GlibcxxVersionNeedsPatcher.PatchIfNeeded(copy, host, out string message);
        if (hostHas)
        {
            Assert.AreEqual(PatchOutcome.HostHasVersion, outcome, message);
            CollectionAssert.AreEqual(before, File.ReadAllBytes(copy));
        }
        else
        {
            Assert.AreEqual(PatchOutcome.Patched, outcome, message);
            Assert.IsFalse(GlibcxxVersionNeedsPatcher.RequiresVersionStrictly(File.ReadAllBytes(copy)));
            Assert.IsFalse(File.Exists(copy + ".sqpatch.tmp"));
        }
    }

    [TestMethod]
    public void NonElfInputIsRejectedNotCrashed()
    {
        Assert.ThrowsExactly<InvalidDataException>(() => GlibcxxVersionNeedsPatcher.Patch(new byte[100], out _));
        Assert.ThrowsExactly<InvalidDataException>(() => GlibcxxVersionNeedsPatcher.Patch(new byte[] { 0x7f, (byte)'E', (byte)'L', (byte)'F' }, out _));
    }

    [TestMethod]
    public void TorchSharpLoadsInAFreshProcess()
    {
        // A new process loads libLibTorchSharp.so from this build's output, which the build patched.
        var r = CliRunner.Run("doctor", "--json");
        Assert.AreEqual(0, r.ExitCode, r.StdErr + r.StdOut);
        var doc = System.Text.Json.JsonDocument.Parse(r.StdOut).RootElement;
        Assert.AreEqual("loaded", doc.GetProperty("torch").GetString());
        Assert.AreEqual("patched or not needed", doc.GetProperty("libtorchsharp_shim").GetString());
        Assert.IsFalse(Directory.Exists(Path.Combine(AppContext.BaseDirectory, "cpu")), "TorchSharp fell back to consolidating natives into cpu/");
    }
}
