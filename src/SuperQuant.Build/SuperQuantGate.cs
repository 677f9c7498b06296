using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

namespace SuperQuant.Build;

/// <summary>
/// Runs `superquant gate` out of process (like Grpc.Tools runs protoc): quantization needs TorchSharp's native
/// libraries, which must not load into the MSBuild node (its libstdc++ is already loaded, and nodes are reused).
/// The tool prints MSBuild-canonical lines ("file(line,col): error SQ1001: ..."), which ToolTask turns into build
/// errors and warnings with their codes.
/// </summary>
public sealed class SuperQuantGate : ToolTask
{
    /// <summary>superquant.dll, run with the dotnet host. Maps to the tool itself.</summary>
    [Required] public string ToolDll { get; set; } = "";
    /// <summary>--manifest</summary>
    [Required] public string Manifest { get; set; } = "";
    /// <summary>--report-dir</summary>
    public string? ReportDirectory { get; set; }
    /// <summary>--state</summary>
    public string? StateFile { get; set; }
    /// <summary>--deps-file</summary>
    public string? DependencyFile { get; set; }
    /// <summary>--outputs-file</summary>
    public string? OutputsFile { get; set; }
    /// <summary>--gate (error | warn)</summary>
    public string Gate { get; set; } = "error";
    /// <summary>--device (auto | cpu | cuda); empty = the manifest's device.</summary>
    public string? Device { get; set; }
    /// <summary>--memory (auto | model | layers); empty = the manifest's memory.</summary>
    public string? Memory { get; set; }
    /// <summary>--allow-outside, one per folder</summary>
    public ITaskItem[] AllowOutside { get; set; } = Array.Empty<ITaskItem>();

    /// <summary>--follow-symlinks</summary>
    public bool FollowSymlinks { get; set; }

    /// <summary>SuperQuantLibTorchDir: a libtorch folder (e.g. a PyTorch install's torch/lib) for the tool to run on;
    /// passed as SUPERQUANT_LIBTORCH_MSBUILD, which the tool ranks after the SUPERQUANT_LIBTORCH environment variable.</summary>
    public string? LibTorchDir { get; set; }

    /// <summary>The program that runs <see cref="ToolDll"/>; empty = the dotnet host of this build.</summary>
    public string? ToolHost { get; set; }

    /// <summary>Every file the tool wrote (artifacts that passed their gates and the reports), from --outputs-file.</summary>
    [Output] public ITaskItem[] WrittenFiles { get; private set; } = Array.Empty<ITaskItem>();

    protected override string ToolName => "dotnet";

    protected override MessageImportance StandardOutputLoggingImportance => MessageImportance.High;

    protected override string GenerateFullPathToTool() =>
        !string.IsNullOrEmpty(ToolHost) ? ToolHost! : Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host : "dotnet";

    public override bool Execute()
    {
        if (!string.IsNullOrEmpty(LibTorchDir))
            EnvironmentVariables = (EnvironmentVariables ?? Array.Empty<string>()).Append($"SUPERQUANT_LIBTORCH_MSBUILD={LibTorchDir}").ToArray();
        bool ok = base.Execute();
        if (!string.IsNullOrEmpty(OutputsFile) && File.Exists(OutputsFile))
            WrittenFiles = File.ReadAllLines(OutputsFile!).Where(l => l.Length > 0).Select(l => (ITaskItem)new TaskItem(l)).ToArray();
        return ok && !Log.HasLoggedErrors;
    }

    /// <summary>The command line, for tests (one switch per argument, paths quoted when they hold spaces).</summary>
    public string CommandLine => GenerateCommandLineCommands();

    protected override bool ValidateParameters()
    {
        if (!File.Exists(ToolDll))
        {
            Log.LogError(null, "SQ0003", null, ToolDll, 0, 0, 0, 0,
                "the superquant tool was not found at {0}; build src/SuperQuant.Cli or set SuperQuantToolPath", ToolDll);
            return false;
        }
        if (Gate != "error" && Gate != "warn")
        {
            Log.LogError(null, "SQ0004", null, null, 0, 0, 0, 0, "SuperQuantGate must be 'error' or 'warn', not '{0}'", Gate);
            return false;
        }
        return base.ValidateParameters();
    }

    protected override string GenerateCommandLineCommands()
    {
        var b = new CommandLineBuilder();
        b.AppendFileNameIfNotNull(ToolDll);
        b.AppendTextUnquoted(" gate");
        b.AppendSwitchIfNotNull("--manifest ", Manifest);
        b.AppendSwitchIfNotNull("--report-dir ", ReportDirectory);
        b.AppendSwitchIfNotNull("--state ", StateFile);
        b.AppendSwitchIfNotNull("--deps-file ", DependencyFile);
        b.AppendSwitchIfNotNull("--outputs-file ", OutputsFile);
        b.AppendSwitchIfNotNull("--gate ", Gate);
        if (!string.IsNullOrEmpty(Device)) b.AppendSwitchIfNotNull("--device ", Device);
        if (!string.IsNullOrEmpty(Memory)) b.AppendSwitchIfNotNull("--memory ", Memory);
        if (FollowSymlinks) b.AppendTextUnquoted(" --follow-symlinks");
        foreach (var folder in AllowOutside) b.AppendSwitchIfNotNull("--allow-outside ", folder.GetMetadata("FullPath"));
        return b.ToString();
    }
}
