using System.CommandLine;
using System.Text.Json;
using SuperQuant.Core;

namespace SuperQuant.Cli;

/// <summary>Process exit codes of `superquant`. Stable: CI scripts depend on them.</summary>
public static class ExitCodes
{
    public const int Success = 0;
    /// <summary>A quality gate failed (SQ1xxx).</summary>
    public const int GateFailed = 1;
    /// <summary>Bad command line.</summary>
    public const int Usage = 2;
    /// <summary>Bad input: a checkpoint, data file, manifest or argument (SQ0xxx, SQ2xxx-SQ4xxx).</summary>
    public const int InputError = 3;
    /// <summary>An unexpected failure (a bug: please report it with the output).</summary>
    public const int InternalError = 4;

    public const string HelpText = "Exit codes: 0 success, 1 quality gate failed, 2 usage error, 3 input error (coded SQ####), 4 internal error.";
}

public static class CliSupport
{
    public static readonly JsonSerializerOptions Json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    /// <summary>Runs a command body and turns coded failures into "error SQ####: ..." on stderr and an exit code.</summary>
    public static int Run(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (SuperQuantException e)
        {
            Console.Error.WriteLine(e.FilePath is null ? $"error {e.Code}: {e.Message}" : $"{e.FilePath}: error {e.Code}: {e.Message}");
            return e.Code.StartsWith("SQ1", StringComparison.Ordinal) ? ExitCodes.GateFailed : ExitCodes.InputError;
        }
        catch (IOException e) when (DiskSpace.IsDiskFull(e))
        {
            Console.Error.WriteLine($"error {ErrorCodes.DiskFull}: no space left on the device: {e.Message}");
            return ExitCodes.InputError;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"error {ErrorCodes.FileNotFound}: {e.Message}");
            return ExitCodes.InputError;
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"internal error (please report it with this output): {e}");
            return ExitCodes.InternalError;
        }
    }

    /// <summary>Writes text through a temp file and a rename (<see cref="AtomicFile"/>), so readers never see half a report.</summary>
    public static void WriteAtomically(string path, string content)
    {
        byte[] bytes = System.Text.Encoding.UTF8.GetBytes(content);
        AtomicFile.Write(path, bytes.Length, fs => fs.Write(bytes));
    }

    public static Option<string> DeviceOption() => new("--device")
    {
        Description = $"auto (CUDA when TorchSharp sees it, else CPU), cpu or cuda; default from {ComputeDevice.EnvironmentVariable}, else auto",
        DefaultValueFactory = _ => "auto",
    };

    public static TorchSharp.torch.Device ResolveDevice(string? option, bool quiet)
    {
        var (type, reason) = ComputeDevice.Resolve(ComputeDevice.Parse(option, "--device"),
            Environment.GetEnvironmentVariable(ComputeDevice.EnvironmentVariable), new TorchCudaProbe());
        if (!quiet) Console.Error.WriteLine($"device: {reason}");
        return new TorchSharp.torch.Device(type);
    }
}

/// <summary>A progress bar on a terminal; occasional plain lines when output is redirected (CI logs stay readable).</summary>
public sealed class ConsoleProgress
{
    readonly string _label;
    readonly bool _interactive = !Console.IsErrorRedirected;
    readonly bool _enabled;
    int _lastDecile = -1;
    readonly System.Diagnostics.Stopwatch _clock = System.Diagnostics.Stopwatch.StartNew();

    public ConsoleProgress(string label, bool enabled = true) { _label = label; _enabled = enabled; }

    public void Report(int done, int total)
    {
        if (!_enabled || total <= 0) return;
        double f = (double)done / total;
        if (_interactive)
        {
            const int width = 30;
            int filled = (int)(f * width);
            string eta = done > 0 && done < total ? $" eta {TimeSpan.FromSeconds(_clock.Elapsed.TotalSeconds / done * (total - done)):mm\\:ss}" : "";
            Console.Error.Write($"\r{_label} [{new string('#', filled)}{new string('.', width - filled)}] {done}/{total}{eta}   ");
            if (done == total) Console.Error.WriteLine();
        }
        else
        {
            int decile = (int)(f * 10);
            if (decile != _lastDecile && (decile > _lastDecile))
            {
                _lastDecile = decile;
                Console.Error.WriteLine($"{_label}: {done}/{total} ({f:P0}, {_clock.Elapsed.TotalSeconds:F1} s)");
            }
        }
    }
}
