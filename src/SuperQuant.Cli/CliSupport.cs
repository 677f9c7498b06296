using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.LlamaCpp;
using SuperQuant.Manifest;

namespace SuperQuant.Cli;

/// <summary>Process exit codes of `superquant`. Stable: CI scripts and the MSBuild task depend on them.</summary>
public static class ExitCodes
{
    public const int Success = 0;
    /// <summary>A quality gate measured a regression past its limit (SQ1001). Nothing else exits 1.</summary>
    public const int GateFailed = 1;
    /// <summary>A command line that does not parse: unknown option, missing argument, a value of the wrong type (SQ2009).</summary>
    public const int Usage = 2;
    /// <summary>Bad input or environment: a checkpoint, data file, manifest, output path, disk, or an option value outside
    /// its domain (coded SQ####, naming the file and field or option).</summary>
    public const int InputError = 3;
    /// <summary>An unexpected failure (a bug: please report it with the output).</summary>
    public const int InternalError = 4;

    public const string HelpText = "Exit codes: 0 success, 1 a quality gate failed, 2 usage error, 3 input error (coded SQ####), 4 internal error.";
}

public static class CliSupport
{
    public static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals
    };

    /// <summary>Cancelled by Ctrl+C, SIGTERM or SIGHUP (<see cref="SignalCancellation"/>).</summary>
    public static CancellationToken Cancellation => SignalCancellation.Token;

    /// <summary>Runs a command body and turns every failure into one stderr line and an exit code: SQ1xxx gate failures
    /// exit 1, other coded failures exit 3, anything else is a bug (exit 4).</summary>
    public static int Run(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (SuperQuantException e)
        {
            Console.Error.WriteLine(e.FilePath is null || e.Message.Contains(e.FilePath) ? $"error {e.Code}: {e.Message}"
                : $"{e.FilePath}: error {e.Code}: {e.Message}");
            return e.Code == ErrorCodes.GateFailed ? ExitCodes.GateFailed : ExitCodes.InputError;
        }
        catch (ManifestException e)
        {
            Console.Error.WriteLine(e.Message);
            return ExitCodes.InputError;
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine($"error {ErrorCodes.Cancelled}: cancelled; nothing was shipped from this run (staged files removed)");
            return ExitCodes.InputError;
        }
        catch (LlamaCppException e)
        {
            Console.Error.WriteLine($"error {ErrorCodes.ArtifactFormat}: {e.Message}");
            return ExitCodes.InputError;
        }
        catch (IOException e) when (DiskSpace.IsDiskFull(e))
        {
            Console.Error.WriteLine($"error {ErrorCodes.DiskFull}: no space left on the device: {e.Message}");
            return ExitCodes.InputError;
        }
        catch (UnauthorizedAccessException e)
        {
            Console.Error.WriteLine($"error {ErrorCodes.ArtifactWrite}: permission denied: {e.Message}");
            return ExitCodes.InputError;
        }
        catch (IOException e)
        {
            Console.Error.WriteLine($"error {ErrorCodes.ArtifactWrite}: {e.Message}");
            return ExitCodes.InputError;
        }
        catch (OutOfMemoryException e)
        {
            Console.Error.WriteLine($"error {ErrorCodes.OutOfMemory}: out of memory: {e.Message}");
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

    /// <summary>--memory auto | model | layers.</summary>
    public static Option<string?> MemoryOption()
    {
        var o = new Option<string?>("--memory")
        {
            Description = "auto | model | layers: hold the whole fp32 model, or one decoder block at a time " +
            "read from disk (models larger than RAM; same artifacts, slower). Default: the manifest's memory, else auto (layers for Hugging Face " +
            "checkpoints of 1 GiB or more in fp32, or over 60 % of available memory, unless the method is W/A)"
        };
        o.Validators.Add(r =>
        {
            string? v = r.GetValueOrDefault<string?>();
            if (v is not null && !SuperQuant.Manifest.Names.MemoryNames.Any(n => SuperQuant.Manifest.Names.Is(v, n)))
                r.AddError($"{ErrorCodes.InvalidArgument}: --memory '{SuperQuant.Manifest.ManifestReader.Excerpt(v)}' (expected " +
                    $"{string.Join(", ", SuperQuant.Manifest.Names.MemoryNames)})");
        });
        return o;
    }

    public static Option<string> DeviceOption() => new Option<string>("--device")
    {
        Description = $"auto (CUDA when TorchSharp sees it, else CPU), cpu or cuda; default from {ComputeDevice.EnvironmentVariable}, else auto",
        DefaultValueFactory = _ => "auto",
    }.OneOf("auto", "cpu", "cuda");

    public static TorchSharp.torch.Device ResolveDevice(string? option, bool quiet)
    {
        var (type, reason) = ComputeDevice.Resolve(ComputeDevice.Parse(option, "--device"),
            Environment.GetEnvironmentVariable(ComputeDevice.EnvironmentVariable), new TorchCudaProbe());
        if (!quiet) Console.Error.WriteLine($"device: {reason}");
        return new TorchSharp.torch.Device(type);
    }

    /// <summary>Accepts only these values; the error names the option (exit 2, SQ2009).</summary>
    public static Option<string> OneOf(this Option<string> o, params string[] values)
    {
        o.Validators.Add(r =>
        {
            string? v = r.Tokens.Count > 0 ? r.Tokens[^1].Value : null;
            if (v is not null && !values.Contains(v)) r.AddError($"{ErrorCodes.InvalidArgument}: {o.Name} '{Manifest.ManifestReader.Excerpt(v)}' " +
                $"(expected one of {string.Join(", ", values)})");
        });
        return o;
    }

    /// <summary>An integer option's domain, checked at parse time.</summary>
    public static Option<int> InRange(this Option<int> o, int min, int max)
    {
        o.Validators.Add(r =>
        {
            if (!Converted(r, out int v)) return;
            if (v < min || v > max) r.AddError($"{ErrorCodes.InvalidArgument}: {o.Name} {v} (expected {min}..{max})");
        });
        return o;
    }

    public static Option<int?> InRange(this Option<int?> o, int min, int max)
    {
        o.Validators.Add(r =>
        {
            if (!Converted(r, out int? v)) return;
            if (v is int x && (x < min || x > max)) r.AddError($"{ErrorCodes.InvalidArgument}: {o.Name} {x} (expected {min}..{max})");
        });
        return o;
    }

    /// <summary>A finite number within [min, max].</summary>
    public static Option<double> InRange(this Option<double> o, double min, double max)
    {
        o.Validators.Add(r =>
        {
            if (!Converted(r, out double v)) return;
            if (!double.IsFinite(v) || v < min || v > max) r.AddError($"{ErrorCodes.InvalidArgument}: {o.Name} " +
                $"{v.ToString(CultureInfo.InvariantCulture)} (expected a finite number in " +
                $"{min.ToString(CultureInfo.InvariantCulture)}..{max.ToString(CultureInfo.InvariantCulture)})");
        });
        return o;
    }

    public static Option<double?> InRange(this Option<double?> o, double min, double max)
    {
        o.Validators.Add(r =>
        {
            if (!Converted(r, out double? v)) return;
            if (v is double x && (!double.IsFinite(x) || x < min
                || x > max)) r.AddError($"{ErrorCodes.InvalidArgument}: {o.Name} {x.ToString(CultureInfo.InvariantCulture)} (expected a finite " +
                $"number in {min.ToString(CultureInfo.InvariantCulture)}..{max.ToString(CultureInfo.InvariantCulture)})");
        });
        return o;
    }

    /// <summary>The option's value, or false when its text did not convert to the type ("NaN" or 3000000000 for an
    /// int): System.CommandLine reports that as a parse error (a usage error, exit 2), but reading the value in a
    /// validator throws, which ended the process with an unhandled exception.</summary>
    public static bool Converted<T>(System.CommandLine.Parsing.OptionResult r, out T value)
    {
        try { value = r.GetValueOrDefault<T>(); return true; }
        catch (InvalidOperationException) { value = default!; return false; }
    }

    /// <summary>Token ids separated by spaces or commas, each non-negative; the vocabulary bound is checked once the
    /// model is loaded.</summary>
    public static int[]? ParseIds(string? text, string option)
    {
        if (text is null) return null;
        var ids = new List<int>();
        foreach (string item in text.Split(new[] { ' ', ',', '\t', '\n' }, StringSplitOptions.RemoveEmptyEntries))
        {
            if (!int.TryParse(item, NumberStyles.None, CultureInfo.InvariantCulture, out int id))
                throw new SuperQuantException(ErrorCodes.InvalidArgument,
                    $"{option}: '{Manifest.ManifestReader.Excerpt(item)}' is not a token id (non-negative integers separated by spaces or commas)");
            ids.Add(id);
        }
        if (ids.Count == 0) throw new SuperQuantException(ErrorCodes.InvalidArgument, $"{option} holds no token ids");
        return ids.ToArray();
    }

    /// <summary>The full path of an output option's value; SQ2009 naming the option when it names a folder.</summary>
    public static string OutputFile(string written, string option)
    {
        string full = Path.GetFullPath(written);
        return OutputPath.NotAFile(written, full) is string problem
            ? throw new SuperQuantException(ErrorCodes.InvalidArgument, $"{option}: {problem}", full) : full;
    }

    /// <summary>Refuses outputs that are inputs (or inside an input checkpoint folder) or each other, compared as files.</summary>
    public static void CheckOutputs(IEnumerable<(string Path, string What)> inputs, IEnumerable<(string Path, string What)> outputs)
    {
        var check = new FileIdentityCheck();
        foreach (var (p, w) in inputs) check.AddInput(p, w);
        foreach (var (p, w) in outputs)
            if (check.AddOutput(p, w) is string error) throw new SuperQuantException(ErrorCodes.InvalidArgument, error, p);
    }
}

/// <summary>
/// SIGINT (Ctrl+C), SIGTERM (kill, CI timeouts, systemd) and SIGHUP (a closed terminal) all stop a run the same way:
/// the current step stops at its next matrix or window, staged files are removed, nothing ships, exit 3 (SQ0008).
/// A second signal ends the process at once, after deleting the files this run created and had not shipped
/// (<see cref="OwnedFiles"/>); temp files need no sweep, they never had a name (<see cref="AtomicFile"/>).
/// </summary>
public static class SignalCancellation
{
    static readonly CancellationTokenSource Cts = new();
    static readonly List<System.Runtime.InteropServices.PosixSignalRegistration> Registrations = new();

    public static CancellationToken Token => Cts.Token;

    public static void Install()
    {
        if (Registrations.Count > 0) return;
        foreach (var signal in new[] { System.Runtime.InteropServices.PosixSignal.SIGINT, System.Runtime.InteropServices.PosixSignal.SIGTERM,
            System.Runtime.InteropServices.PosixSignal.SIGHUP })
            Registrations.Add(System.Runtime.InteropServices.PosixSignalRegistration.Create(signal, OnSignal));
    }

    static void OnSignal(System.Runtime.InteropServices.PosixSignalContext context)
    {
        if (Cts.IsCancellationRequested)
        {
            OwnedFiles.DeleteAll(); // the default action (terminate) follows
            return;
        }
        context.Cancel = true;
        Console.Error.WriteLine($"{context.Signal}: cancelling (the current step stops at its next matrix or window; send it again to stop at once)...");
        Cts.Cancel();
    }
}

/// <summary>Progress bars with an ETA on a terminal; a line every 10% (with elapsed time and ETA) when output is
/// redirected, so CI logs and MSBuild messages stay readable.</summary>
public sealed class ConsoleLog(bool quiet = false) : StepLog
{
    public override void Info(string message)
    {
        if (!quiet) Console.WriteLine(message);
    }

    public override Action<int, int> Progress(string label) => new ConsoleProgress(label, !quiet).Report;
}

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
        if (done == 0) _clock.Restart(); // a (0, total) report marks the real start: the ETA ignores setup before it
        double f = (double)done / total;
        string eta = done > 0 && done < total ? $", eta {TimeSpan.FromSeconds(_clock.Elapsed.TotalSeconds / done * (total - done)):mm\\:ss}" : "";
        if (_interactive)
        {
            const int width = 30;
            int filled = (int)(f * width);
            Console.Error.Write($"\r{_label} [{new string('#', filled)}{new string('.', width - filled)}] {done}/{total}{eta}   ");
            if (done == total) Console.Error.WriteLine();
        }
        else
        {
            int decile = (int)(f * 10);
            if (decile > _lastDecile)
            {
                _lastDecile = decile;
                Console.Error.WriteLine($"{_label}: {done}/{total} ({f:P0}, {_clock.Elapsed.TotalSeconds:F1} s{eta})");
            }
        }
    }
}
