using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

/// <summary>`superquant` as a dotnet tool: packed, installed from a local folder feed into a tool manifest, run.</summary>
[TestClass]
public sealed class PackagingTests
{
    static (int Exit, string Output) Run(string workDir, IDictionary<string, string> env, params string[] args)
    {
        var r = ProcessRunner.Run("dotnet", workDir, env, TimeSpan.FromMinutes(8), args);
        return (r.ExitCode, r.Output);
    }

    [TestMethod]
    [TestCategory(TestCategories.Slow)]
    public void ToolPacksInstallsFromALocalFeedAndRuns()
    {
        string repo = RepoPaths.Root;
        using var dir = new TempFolder();
        // A private package folder: the 150 MB tool package must not pile up in the user's NuGet cache.
        var env = new Dictionary<string, string> { ["NUGET_PACKAGES"] = dir.File("nuget-packages"), ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1" };
        string version = "0.1.0-test." + DateTime.UtcNow.ToString("yyyyMMddHHmmss");
        (int Exit, string Output) pack;
        lock (LocalPackageFeed.RepositoryBuildLock)
            pack = Run(repo, new Dictionary<string, string>(), "pack", "src/SuperQuant.Cli", "-c", "Release", "-o", dir.File("feed"), $"-p:Version={version}");
        Assert.AreEqual(0, pack.Exit, pack.Output);
        Directory.CreateDirectory(dir.File("app"));
        Assert.AreEqual(0, Run(dir.File("app"), env, "new", "tool-manifest").Exit);
        var install = Run(dir.File("app"), env, "tool", "install", "--add-source", dir.File("feed"), "SuperQuant.Tool", "--version", version);
        Assert.AreEqual(0, install.Exit, install.Output);
        var doctor = Run(dir.File("app"), env, "tool", "run", "superquant", "doctor", "--json");
        Assert.AreEqual(0, doctor.Exit, doctor.Output);
        StringAssert.Contains(doctor.Output, "\"torch\": \"loaded\"");
        // The Release build users install has no test hooks: the fault-injection variable that SIGKILLs the Debug build
        // halfway through a write (ReliabilityTests) does nothing here.
        var faulted = Run(dir.File("app"), new Dictionary<string, string>(env) { ["SUPERQUANT_FAULT"] = "kill-mid-write" },
            "tool", "run", "superquant", "demo-checkpoint", "-o", dir.File("ck"), "--hidden", "64", "--ffn", "128", "--vocab", "48");
        Assert.AreEqual(0, faulted.Exit, faulted.Output);
        Assert.IsTrue(File.Exists(dir.File("ck/model.safetensors")));
    }

    [TestMethod]
    [TestCategory(TestCategories.Slow)]
    public void APackageReferenceAndAManifestAreAllAConsumerNeeds()
    {
        using var dir = new TempFolder();
        string app = dir.File("app");
        TinyProject.Write(app);
        LocalPackageFeed.WriteNuGetConfig(app);
        File.WriteAllText(Path.Combine(app, "App.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup><TargetFramework>net10.0</TargetFramework></PropertyGroup>
              <ItemGroup><PackageReference Include="SuperQuant.Build" Version="{LocalPackageFeed.Version}" /></ItemGroup>
            </Project>
            """);
        File.WriteAllText(Path.Combine(app, "C.cs"), "namespace App; public static class C { }");
        var env = LocalPackageFeed.Environment;
        var build = Run(app, env, "build", "-nodeReuse:false");
        Assert.AreEqual(0, build.Exit, build.Output);
        StringAssert.Contains(build.Output, "tiny: super weights: 1 super weight: layer 1 [17, 45]");
        Assert.IsTrue(File.Exists(Path.Combine(app, "bin", "Debug", "net10.0", "models", "tiny.sqpk.safetensors")));
        var again = Run(app, env, "build", "-nodeReuse:false", "-v:n");
        Assert.AreEqual(0, again.Exit, again.Output);
        StringAssert.Contains(again.Output, "Skipping target \"SuperQuantQuantize\"");
        var cuda = Run(app, env, "build", "-nodeReuse:false", "-p:SuperQuantBackend=cuda");
        Assert.AreNotEqual(0, cuda.Exit, "the packaged tool is CPU-only: asking for CUDA fails instead of silently running on the CPU");
        StringAssert.Contains(cuda.Output, "error SQ0006");
    }
}
