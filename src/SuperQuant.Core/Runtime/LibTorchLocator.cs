using System.Diagnostics;
using System.Text.RegularExpressions;

namespace SuperQuant.Core.Runtime;

/// <summary>Where the libtorch that TorchSharp will run on comes from, and why.</summary>
public sealed record LibTorchChoice
{
    /// <summary>The folder holding libtorch_cpu.so and friends; null = the bundled NuGet libtorch next to the app.</summary>
    public string? Folder { get; init; }
    /// <summary>SUPERQUANT_LIBTORCH, SuperQuantLibTorchDir (MSBuild), PyTorch (python3) or bundled.</summary>
    public required string Source { get; init; }
    /// <summary>e.g. 2.11.0+cu130; null when the folder does not say.</summary>
    public string? Version { get; init; }
    /// <summary>e.g. 13.0; null for a CPU build or when unknown.</summary>
    public string? CudaVersion { get; init; }
    /// <summary>Candidates passed over, each with the reason.</summary>
    public IReadOnlyList<string> Skipped { get; init; } = Array.Empty<string>();

    public bool IsBundled => Folder is null;
    public bool HasCuda => Folder is not null && File.Exists(Path.Combine(Folder, "libtorch_cuda.so"));

    public string Describe() =>
        $"{(IsBundled ? "bundled libtorch " + LibTorchLocator.BundledVersion + " (CPU, from NuGet)" : Folder)} [{Source}]"
        + (Version is null ? "" : $", version {Version}") + (CudaVersion is null ? "" : $", CUDA {CudaVersion}");
}

/// <summary>What the locator reads from the machine; an interface so tests can describe any machine.</summary>
public interface ILibTorchEnvironment
{
    string? Variable(string name);
    /// <summary>The PyTorch package folder (…/site-packages/torch) of the machine's python, or null.</summary>
    string? FindPyTorch();
}

/// <summary>
/// Chooses the libtorch for this process, in order: SUPERQUANT_LIBTORCH (a folder holding libtorch*.so, or
/// "bundled"), the MSBuild property SuperQuantLibTorchDir (the build task passes it as SUPERQUANT_LIBTORCH_MSBUILD), a
/// PyTorch install found by python3 (its torch/lib), then the CPU libtorch restored from NuGet next to the app.
/// A PyTorch install is taken automatically only when it can add something and is likely to load: a CUDA build
/// (libtorch_cuda.so present) of version 2.10 or later (TorchSharp 0.107 is built against 2.10; 2.11 was measured
/// to work). Named folders are always tried; a libtorch TorchSharp cannot load is reported by
/// <see cref="LibTorchLoader"/> with both versions.
/// </summary>
public static class LibTorchLocator
{
    public const string EnvironmentVariable = "SUPERQUANT_LIBTORCH";
    public const string MsBuildVariable = "SUPERQUANT_LIBTORCH_MSBUILD";
    /// <summary>The python used to look for PyTorch (default python3).</summary>
    public const string PythonVariable = "SUPERQUANT_PYTHON";
    /// <summary>The libtorch version TorchSharp 0.107 is built against and ships (libtorch-cpu-linux-x64).</summary>
    public const string BundledVersion = "2.10.0";
    static readonly Version Minimum = new(2, 10);

    public static LibTorchChoice Choose(ILibTorchEnvironment env)
    {
        var skipped = new List<string>();
        foreach (var (variable, source) in new[] { (EnvironmentVariable, EnvironmentVariable), (MsBuildVariable, "SuperQuantLibTorchDir (MSBuild)") })
        {
            string? value = env.Variable(variable)?.Trim();
            if (string.IsNullOrEmpty(value)) continue;
            if (value.Equals("bundled", StringComparison.OrdinalIgnoreCase))
                return new LibTorchChoice { Source = $"{source}=bundled", Skipped = skipped };
            string folder = LibFolderOf(value) ?? throw new SuperQuantException(ErrorCodes.LibTorchFolder,
                $"{source}={value}: no libtorch_cpu.so and libc10.so there (nor in its lib/ folder); name the folder that holds them, e.g. " +
                    $".../site-packages/torch/lib, or 'bundled'", value);
            var (version, cuda) = VersionOf(folder);
            return new LibTorchChoice { Folder = folder, Source = source, Version = version, CudaVersion = cuda, Skipped = skipped };
        }

        string? torchPackage = null;
        try { torchPackage = env.FindPyTorch(); }
        catch (Exception e) when (e is IOException or InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            skipped.Add($"python: " +
            $"{e.Message}");
        }
        if (torchPackage is null) skipped.Add("PyTorch: no python3 with torch found");
        else if (LibFolderOf(Path.Combine(torchPackage, "lib")) is not string lib) skipped.Add($"PyTorch at {torchPackage}: no lib/libtorch_cpu.so");
        else
        {
            var (version, cuda) = VersionOf(lib);
            bool hasCuda = File.Exists(Path.Combine(lib, "libtorch_cuda.so"));
            Version? parsed = ParseVersion(version);
            if (!hasCuda) skipped.Add($"PyTorch {version ?? "?"} at {torchPackage}: a CPU build (the bundled libtorch is the same backend)");
            else if (parsed is null || parsed < Minimum) skipped.Add($"PyTorch {version ?? "?"} at {torchPackage}: older than {Minimum}, which " +
                $"TorchSharp 0.107 needs (set {EnvironmentVariable} to try it anyway)");
            else return new LibTorchChoice { Folder = lib, Source = "PyTorch (python3)", Version = version, CudaVersion = cuda, Skipped = skipped };
        }
        return new LibTorchChoice { Source = "bundled", Skipped = skipped };
    }

    /// <summary>The folder itself, or its lib/ subfolder, when it holds libtorch_cpu.so and libc10.so; resolved to
    /// its real path (symbolic links followed) so two spellings of one folder are one choice.</summary>
    public static string? LibFolderOf(string path)
    {
        foreach (string candidate in new[] { path, Path.Combine(path, "lib") })
        {
            if (!Directory.Exists(candidate)) continue;
            if (IsLibrary(Path.Combine(candidate, "libtorch_cpu.so")) && IsLibrary(Path.Combine(candidate, "libc10.so")))
                return RealPath(candidate);
        }
        return null;
    }

    /// <summary>A library file that can be loaded: a regular file, or links that end at one. File.Exists is true for a
    /// dangling link, and a loop of links has no end: a folder of those must be refused here, or the process would
    /// quietly run another libtorch than the one named.</summary>
    static bool IsLibrary(string path)
    {
        var info = new FileInfo(path);
        if (!info.Exists && info.LinkTarget is null) return false;
        try
        {
            if (info.LinkTarget is not null && info.ResolveLinkTarget(returnFinalTarget: true) is not { Exists: true }) return false;
        }
        catch (IOException) { return false; } // too many levels of symbolic links
        return File.Exists(path) && FileKind.NotARegularFile(path) is null;
    }

    static string RealPath(string folder)
    {
        var info = new DirectoryInfo(Path.GetFullPath(folder));
        return info.ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? info.FullName;
    }

    /// <summary>Version and CUDA version from PyTorch's torch/version.py (the folder above lib/), else from a libtorch
    /// zip's build-version file.</summary>
    public static (string? Version, string? Cuda) VersionOf(string libFolder)
    {
        string parent = Path.GetDirectoryName(libFolder.TrimEnd(Path.DirectorySeparatorChar)) ?? libFolder;
        string versionPy = Path.Combine(parent, "version.py");
        // A FIFO or device there would block or never end: only a small regular file is read.
        if (File.Exists(versionPy) && FileKind.NotARegularFile(versionPy) is null && new FileInfo(versionPy).Length < 65536)
        {
            string text = File.ReadAllText(versionPy);
            string? version = Regex.Match(text, @"^__version__\s*=\s*['""]([^'""]+)['""]", RegexOptions.Multiline) is { Success: true } m
                ? m.Groups[1].Value : null;
            string? cuda = Regex.Match(text, @"^cuda\s*(?::[^=]*)?=\s*['""]([^'""]+)['""]", RegexOptions.Multiline) is { Success: true } c
                ? c.Groups[1].Value : null;
            return (version, cuda);
        }
        string buildVersion = Path.Combine(parent, "build-version");
        if (File.Exists(buildVersion) && FileKind.NotARegularFile(buildVersion) is null && new FileInfo(buildVersion).Length < 4096)
            return (File.ReadAllText(buildVersion).Trim(), null);
        return (null, null);
    }

    /// <summary>Major.minor of a version string; null when it has none or its numbers do not fit (a corrupt version.py
    /// reading '99999999999.1' is no version, not a crash).</summary>
    public static Version? ParseVersion(string? text) =>
        text is not null && Regex.Match(text, @"^(\d+)\.(\d+)") is { Success: true } m
            && int.TryParse(m.Groups[1].Value, out int major) && int.TryParse(m.Groups[2].Value, out int minor) ? new Version(major, minor) : null;
}

/// <summary>The real machine: environment variables, and python3 asked where torch is (found without importing it, so
/// the question costs tens of milliseconds, not the seconds an import takes).</summary>
public sealed class MachineLibTorchEnvironment : ILibTorchEnvironment
{
    public string? Variable(string name) => Environment.GetEnvironmentVariable(name);

    public string? FindPyTorch()
    {
        string python = Environment.GetEnvironmentVariable(LibTorchLocator.PythonVariable) is { Length: > 0 } p ? p : "python3";
        var psi = new ProcessStartInfo(python) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add("import importlib.util as u; s = u.find_spec('torch'); print(s.submodule_search_locations[0] if s and " +
            "s.submodule_search_locations else '')");
        Process? process;
        try { process = Process.Start(psi); }
        catch (System.ComponentModel.Win32Exception) { return null; } // no python on this machine
        if (process is null) return null;
        using (process)
        {
            Task<string> output = process.StandardOutput.ReadToEndAsync();
            _ = process.StandardError.ReadToEndAsync();
            if (!process.WaitForExit(10_000))
            {
                try { process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
                throw new InvalidOperationException($"{python} did not answer within 10 s");
            }
            string folder = output.Result.Trim();
            return process.ExitCode == 0 && folder.Length > 0 && Directory.Exists(folder) ? folder : null;
        }
    }
}
