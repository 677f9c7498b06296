using System.Diagnostics;

namespace SuperQuant.Tests.Support;

/// <summary>The repository root (the folder holding SuperQuant.Build.sln), found from the test output folder.</summary>
public static class RepoPaths
{
    public static string Root { get; } = Find();

    static string Find()
    {
        string? dir = AppContext.BaseDirectory;
        while (dir != null && !File.Exists(Path.Combine(dir, "SuperQuant.Build.sln"))) dir = Path.GetDirectoryName(dir);
        return dir ?? throw new InvalidOperationException("repository root not found above " + AppContext.BaseDirectory);
    }
}

/// <summary>Runs a process to completion, capturing stdout and stderr; kills it and throws past the timeout.</summary>
public static class ProcessRunner
{
    public sealed record Result(int ExitCode, string StdOut, string StdErr)
    {
        public string Output => StdOut + StdErr;
    }

    public static Result Run(string file, string? workDir, IDictionary<string, string>? environment, TimeSpan timeout, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (workDir != null) psi.WorkingDirectory = workDir;
        foreach (string a in args) psi.ArgumentList.Add(a);
        if (environment != null) foreach (var (k, v) in environment) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        Task<string> stdout = p.StandardOutput.ReadToEndAsync(), stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} {string.Join(' ', args)} did not finish in {timeout}");
        }
        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }
}

/// <summary>Runs the `superquant` tool (copied into the test output) in a fresh process.</summary>
public static class CliRunner
{
    public static ProcessRunner.Result Run(params string[] args) => Run(null, args);

    public static ProcessRunner.Result Run(IDictionary<string, string>? environment, params string[] args) =>
        ProcessRunner.Run("dotnet", null, environment, TimeSpan.FromMinutes(5),
            new[] { Path.Combine(AppContext.BaseDirectory, "superquant.dll") }.Concat(args).ToArray());
}

/// <summary>Runs the tool and sends it a signal the moment a line containing a marker appears on its stderr (a
/// progress line of the step to interrupt), then waits for it to exit.</summary>
public static class SignalledRun
{
    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    static extern int kill(int pid, int signal);

    public const int SIGTERM = 15;

    public static ProcessRunner.Result Run(IDictionary<string, string>? environment, string marker, int signal, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in new[] { Path.Combine(AppContext.BaseDirectory, "superquant.dll") }.Concat(args)) psi.ArgumentList.Add(a);
        if (environment != null) foreach (var (k, v) in environment) psi.Environment[k] = v;
        var stderr = new System.Text.StringBuilder();
        bool sent = false;
        using var p = new Process { StartInfo = psi };
        p.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (stderr)
            {
                stderr.AppendLine(e.Data);
                if (!sent && e.Data.Contains(marker, StringComparison.Ordinal)) { sent = true; kill(p.Id, signal); }
            }
        };
        p.Start();
        p.BeginErrorReadLine();
        Task<string> stdout = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(5)))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"superquant {string.Join(' ', args)} did not stop");
        }
        p.WaitForExit(); // drains the error stream
        lock (stderr)
        {
            if (!sent) Assert.Fail($"'{marker}' never appeared; the run was not interrupted:\n{stderr}");
            return new ProcessRunner.Result(p.ExitCode, stdout.Result, stderr.ToString());
        }
    }
}
