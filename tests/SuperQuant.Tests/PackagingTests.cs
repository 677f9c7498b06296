using System.Diagnostics;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

/// <summary>`superquant` as a dotnet tool: packed, installed from a local folder feed into a tool manifest, run.</summary>
[TestClass]
public sealed class PackagingTests
{
    static (int Exit, string Output) Run(string workDir, IDictionary<string, string> env, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = workDir };
        foreach (string a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(TimeSpan.FromMinutes(8))) { p.Kill(true); Assert.Fail("dotnet " + string.Join(' ', args) + " timed out"); }
        return (p.ExitCode, output + err.Result);
    }

    [TestMethod]
    public void ToolPacksInstallsFromALocalFeedAndRuns()
    {
        string? repo = AppContext.BaseDirectory;
        while (repo != null && !File.Exists(Path.Combine(repo, "SuperQuant.Build.sln"))) repo = Path.GetDirectoryName(repo);
        using var dir = new TempFolder();
        // A private package folder: the 150 MB tool package must not pile up in the user's NuGet cache.
        var env = new Dictionary<string, string> { ["NUGET_PACKAGES"] = dir.File("nuget-packages"), ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1" };
        string version = "0.1.0-test." + DateTime.UtcNow.ToString("yyyyMMddHHmmss");
        var pack = Run(repo!, new Dictionary<string, string>(), "pack", "src/SuperQuant.Cli", "-c", "Release", "-o", dir.File("feed"), $"-p:Version={version}");
        Assert.AreEqual(0, pack.Exit, pack.Output);
        Directory.CreateDirectory(dir.File("app"));
        Assert.AreEqual(0, Run(dir.File("app"), env, "new", "tool-manifest").Exit);
        var install = Run(dir.File("app"), env, "tool", "install", "--add-source", dir.File("feed"), "SuperQuant.Tool", "--version", version);
        Assert.AreEqual(0, install.Exit, install.Output);
        var doctor = Run(dir.File("app"), env, "tool", "run", "superquant", "doctor", "--json");
        Assert.AreEqual(0, doctor.Exit, doctor.Output);
        StringAssert.Contains(doctor.Output, "\"torch\": \"loaded\"");
    }
}
