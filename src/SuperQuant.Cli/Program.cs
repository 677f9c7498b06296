using System.CommandLine;
using SuperQuant.Cli;
using SuperQuant.Cli.Commands;
using SuperQuant.Core;

// Before anything touches TorchSharp: choose the libtorch (SUPERQUANT_LIBTORCH, SuperQuantLibTorchDir, PyTorch, bundled)
// and load it; when the bundled one sits next to the app this process runs itself again (see LibTorchLoader).
// Help, version and init never touch TorchSharp: they skip the PyTorch probe (a python3 start, ~0.1 s).
// Numbers and names are read and written the same way whatever LANG says (tr-TR lowers "I" to "ı", de-DE writes 0,5).
System.Globalization.CultureInfo.DefaultThreadCurrentCulture = System.Globalization.CultureInfo.InvariantCulture;
System.Globalization.CultureInfo.DefaultThreadCurrentUICulture = System.Globalization.CultureInfo.InvariantCulture;
System.Globalization.CultureInfo.CurrentCulture = System.Globalization.CultureInfo.InvariantCulture;
System.Globalization.CultureInfo.CurrentUICulture = System.Globalization.CultureInfo.InvariantCulture;
bool needsTorch = args.Length > 0 && args[0] != "init" && !args.Any(a => a is "-h" or "--help" or "-?" or "--version");
OpenMpTuning.Apply(); // before libtorch (and its OpenMP runtime) loads
try
{
    if (needsTorch && SuperQuant.Core.Runtime.LibTorchLoader.Activate(args,
        new SuperQuant.Core.Runtime.MachineLibTorchEnvironment()) is int childExit) return childExit;
}
catch (SuperQuantException e)
{
    Console.Error.WriteLine(e.FilePath is null || e.Message.Contains(e.FilePath) ? $"error {e.Code}: {e.Message}"
        : $"{e.FilePath}: error {e.Code}: {e.Message}");
    return ExitCodes.InputError;
}
NativeMemoryTuning.Apply();
// Process-wide: no file this run writes may be one it read as an input, whatever flag or variable named it.
SuperQuant.Core.AtomicFile.Guard = SuperQuant.Manifest.InputFiles.RefusalFor;
SignalCancellation.Install();
// Process-wide: no GGUF reaches llama.cpp before its header is checked (llama.cpp aborts on some bad values).
SuperQuant.LlamaCpp.LlamaCppModel.Preflight = SuperQuant.Models.Gguf.GgufPreflight.Check;
foreach (string? problem in new[] { PeakRssFile.Problem(), SuperQuant.Core.ProcessMemory.OverrideProblem() })
    if (problem is not null)
    {
        Console.Error.WriteLine($"error {ErrorCodes.InvalidArgument}: {problem}");
        return ExitCodes.InputError;
    }
var root = new RootCommand("superquant: super-weight-aware LLM quantization as a build step.\n" + ExitCodes.HelpText);
foreach (var c in new[]
{
    InitCommand.Create(), DemoCheckpointCommand.Create(), DetectCommand.Create(), AnalyzeCommand.Create(), QuantizeCommand.Create(),
    GateCommand.Create(), EvalCommand.Create(), GenerateCommand.Create(), SuperQuant.Cli.Commands.Bench.BenchCommand.Create(), DoctorCommand.Create(),
})
    root.Subcommands.Add(c);
ParseResult parsed;
try { parsed = root.Parse(args); }
catch (Exception e) when (e is InvalidOperationException or FormatException or OverflowException or ArgumentException)
{
    // A validator that met a value of the wrong type: still a command line that does not parse.
    Console.Error.WriteLine($"error {ErrorCodes.InvalidArgument}: {e.Message}");
    Console.Error.WriteLine("Run 'superquant --help' (or 'superquant COMMAND --help') for usage.");
    return ExitCodes.Usage;
}
if (UsageChecks.EmptyValues(parsed) is { Count: > 0 } empty)
{
    foreach (string e in empty) Console.Error.WriteLine($"error {ErrorCodes.InvalidArgument}: {e}");
    Console.Error.WriteLine("Run 'superquant --help' (or 'superquant COMMAND --help') for usage.");
    return ExitCodes.Usage;
}
if (parsed.Errors.Count > 0)
{
    // A command line that does not parse (unknown option, missing argument, not a number) is a usage error, exit 2; a
    // value that parses but lies outside its option's domain is an input error, exit 3. Both print SQ2009 and the option.
    bool domainOnly = parsed.Errors.All(e => e.Message.StartsWith(ErrorCodes.InvalidArgument, StringComparison.Ordinal));
    foreach (var e in parsed.Errors)
        Console.Error.WriteLine(e.Message.StartsWith(ErrorCodes.InvalidArgument, StringComparison.Ordinal) ? $"error {e.Message}"
            : $"error {ErrorCodes.InvalidArgument}: {e.Message}");
    Console.Error.WriteLine("Run 'superquant --help' (or 'superquant COMMAND --help') for usage.");
    return domainOnly ? ExitCodes.InputError : ExitCodes.Usage;
}
int exitCode = parsed.Invoke();
int peakExit = CliSupport.Run(() => { PeakRssFile.Write(); return ExitCodes.Success; });
return exitCode != ExitCodes.Success ? exitCode : peakExit;
