using SuperQuant.Build;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

/// <summary>
/// The MSBuild integration with a stand-in tool (as Grpc.Tools tests its task against a fake compiler): the command
/// line the task builds, and the targets' behaviour (run, skip when nothing changed, error lines as build errors with
/// file and line, clean) in seconds, without quantizing anything. The real tool is exercised by MsBuildIntegrationTests.
/// </summary>
[TestClass]
public sealed class MsBuildTaskTests
{
    [TestMethod]
    public void TheCommandLineQuotesPathsWithSpacesOneSwitchPerArgument()
    {
        var task = new SuperQuantGate
        {
            ToolDll = "/opt/my tools/superquant.dll", Manifest = "/home/me/My App/quantize.yaml", ReportDirectory = "/home/me/My App/obj/superquant/",
            StateFile = "/home/me/My App/obj/s.json", DependencyFile = "/d/deps", OutputsFile = "/d/outs", Gate = "warn", Device = "cpu", Memory = "layers",
            FollowSymlinks = true, AllowOutside = new Microsoft.Build.Framework.ITaskItem[] { new Microsoft.Build.Utilities.TaskItem("/shared models") },
        };
        string line = task.CommandLine;
        StringAssert.StartsWith(line, "\"/opt/my tools/superquant.dll\" gate");
        foreach (string part in new[] { "--manifest \"/home/me/My App/quantize.yaml\"", "--report-dir \"/home/me/My App/obj/superquant/\"",
            "--state \"/home/me/My App/obj/s.json\"",
                     "--deps-file /d/deps", "--outputs-file /d/outs", "--gate warn", "--device cpu", "--memory layers", "--follow-symlinks",
                         "--allow-outside \"/shared models\"" })
            StringAssert.Contains(line, part);
        task.Device = "";
        task.Memory = "";
        Assert.DoesNotContain("--device", task.CommandLine, "empty device: the manifest decides");
        Assert.DoesNotContain("--memory", task.CommandLine, "empty memory: the manifest decides");
    }

    const string FakeTool = """
        # A stand-in for `superquant gate`: records its arguments, writes what the real tool writes (an artifact, the
        # dependency and output lists), and prints a canonical error line when FAKE_GATE_FAILS is set.
        set -e
        shift # "gate"
        while [ $# -gt 0 ]; do
          case "$1" in
            --manifest) manifest="$2"; shift 2;;
            --deps-file) deps="$2"; shift 2;;
            --outputs-file) outputs="$2"; shift 2;;
            --report-dir) report="$2"; shift 2;;
            *) shift;;
          esac
        done
        dir=$(dirname "$manifest")
        echo run >> "$dir/runs.txt"
        echo "${SUPERQUANT_LIBTORCH_MSBUILD:-}" > "$dir/libtorch.txt"
        if [ -n "$FAKE_GATE_FAILS" ]; then
          echo "$manifest(3,5): error SQ1001: model 'm', artifact models/m.gguf (gguf q4_k_m, measured by llama.cpp on 99 tokens): kl 0.5 exceeds the limit 0.1"
          exit 1
        fi
        mkdir -p "$dir/models" "$report"
        echo weights > "$dir/models/m.q4_k_m.gguf"
        echo report > "$report/superquant-report.md"
        printf '%s\n' "$manifest" > "$deps"
        printf '%s\n%s\n' "$dir/models/m.q4_k_m.gguf" "$report/superquant-report.md" > "$outputs"
        """;

    static TempFolder Consumer()
    {
        var dir = new TempFolder();
        File.WriteAllText(dir.File("fake.sh"), FakeTool);
        File.WriteAllText(dir.File("quantize.yaml"), "version: 1\nmodels: []\n");
        File.WriteAllText(dir.File("Consumer.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <Import Project="{RepoPaths.Root}/build/SuperQuant.Build.props" />
              <PropertyGroup>
                <TargetFramework>net10.0</TargetFramework>
                <SuperQuantToolHost>/bin/bash</SuperQuantToolHost>
                <SuperQuantToolPath>$(MSBuildProjectDirectory)/fake.sh</SuperQuantToolPath>
                <SuperQuantTaskAssembly>{RepoPaths.Root}/src/SuperQuant.Build/bin/Debug/net10.0/SuperQuant.Build.dll</SuperQuantTaskAssembly>
              </PropertyGroup>
              <Import Project="{RepoPaths.Root}/build/SuperQuant.Build.targets" />
            </Project>
            """);
        File.WriteAllText(dir.File("Class1.cs"), "public class C { }");
        return dir;
    }

    static ProcessRunner.Result Dotnet(TempFolder dir, IDictionary<string, string>? env, params string[] args) =>
        ProcessRunner.Run("dotnet", dir.Path, env, TimeSpan.FromMinutes(3), args.Concat(new[] { "-nologo", "-v:n", "-p:NuGetAudit=false" }).ToArray());

    [TestMethod]
    [TestCategory(TestCategories.Slow)]
    public void TheTargetsRunTheToolSkipItWhenNothingChangedCopyItsFilesAndCleanThem()
    {
        using var dir = Consumer();
        var first = Dotnet(dir, null, "build");
        Assert.AreEqual(0, first.ExitCode, first.Output);
        Assert.AreEqual(1, File.ReadAllLines(dir.File("runs.txt")).Length);
        Assert.IsTrue(File.Exists(dir.File("bin/Debug/net10.0/models/m.q4_k_m.gguf")), "the written artifact is copied next to the app");

        var second = Dotnet(dir, null, "build");
        Assert.AreEqual(0, second.ExitCode, second.Output);
        StringAssert.Contains(second.Output, "Skipping target \"SuperQuantQuantize\" because all output files are up-to-date");
        Assert.AreEqual(1, File.ReadAllLines(dir.File("runs.txt")).Length, "not started again");
        Assert.IsTrue(File.Exists(dir.File("bin/Debug/net10.0/models/m.q4_k_m.gguf")), "still copied from the outputs list when skipped");

        File.SetLastWriteTimeUtc(dir.File("quantize.yaml"), DateTime.UtcNow.AddSeconds(2));
        Assert.AreEqual(0, Dotnet(dir, null, "build").ExitCode);
        Assert.AreEqual(2, File.ReadAllLines(dir.File("runs.txt")).Length, "a changed manifest runs it again");

        var clean = Dotnet(dir, null, "clean");
        Assert.AreEqual(0, clean.ExitCode, clean.Output);
        Assert.IsFalse(File.Exists(dir.File("models/m.q4_k_m.gguf")), "clean removes what the tool wrote");
        Assert.IsFalse(File.Exists(dir.File("obj/superquant/superquant.outputs")));
        Assert.IsTrue(File.Exists(dir.File("quantize.yaml")) && File.Exists(dir.File("fake.sh")), "and nothing else");
    }

    [TestMethod]
    public void SuperQuantLibTorchDirReachesTheToolAsItsEnvironmentVariable()
    {
        using var dir = Consumer();
        var r = Dotnet(dir, null, "build", "-p:SuperQuantLibTorchDir=/opt/my torch/lib");
        Assert.AreEqual(0, r.ExitCode, r.Output);
        Assert.AreEqual("/opt/my torch/lib", File.ReadAllText(dir.File("libtorch.txt")).Trim());
    }

    [TestMethod]
    public void TheToolsErrorLineBecomesABuildErrorWithItsCodeFileAndLine()
    {
        using var dir = Consumer();
        var r = Dotnet(dir, new Dictionary<string, string> { ["FAKE_GATE_FAILS"] = "1" }, "build");
        Assert.AreNotEqual(0, r.ExitCode);
        StringAssert.Contains(r.Output, $"{dir.File("quantize.yaml")}(3,5): error SQ1001: model 'm', artifact models/m.gguf");
        StringAssert.Contains(r.Output, "1 Error(s)");
        Assert.IsFalse(File.Exists(dir.File("obj/superquant/superquant.stamp")), "a failed run is not recorded as done");
    }
}
