using System.CommandLine;
using SuperQuant.Cli;
using SuperQuant.Cli.Commands;
using SuperQuant.Core;

// Before anything touches TorchSharp: choose the libtorch (SUPERQUANT_LIBTORCH, SuperQuantLibTorchDir, PyTorch, bundled)
// and load it; when the bundled one sits next to the app this process runs itself again (see LibTorchLoader).
// Help, version and init never touch TorchSharp: they skip the PyTorch probe (a python3 start, ~0.1 s).
bool needsTorch = args.Length > 0 && args[0] != "init" && !args.Any(a => a is "-h" or "--help" or "-?" or "--version");
OpenMpTuning.Apply(); // before libtorch (and its OpenMP runtime) loads
try
{
    if (needsTorch && SuperQuant.Core.Runtime.LibTorchLoader.Activate(args, new SuperQuant.Core.Runtime.MachineLibTorchEnvironment()) is int childExit) return childExit;
}
catch (SuperQuantException e)
{
    Console.Error.WriteLine(e.FilePath is null || e.Message.Contains(e.FilePath) ? $"error {e.Code}: {e.Message}" : $"{e.FilePath}: error {e.Code}: {e.Message}");
    return ExitCodes.InputError;
}
NativeMemoryTuning.Apply();
var root = new RootCommand("superquant: super-weight-aware LLM quantization as a build step.\n" + ExitCodes.HelpText);
foreach (var c in new[]
{
    InitCommand.Create(), DemoCheckpointCommand.Create(), DetectCommand.Create(), AnalyzeCommand.Create(), QuantizeCommand.Create(),
    GateCommand.Create(), EvalCommand.Create(), GenerateCommand.Create(), SuperQuant.Cli.Commands.Bench.BenchCommand.Create(), DoctorCommand.Create(),
})
    root.Subcommands.Add(c);
ParseResult parsed = root.Parse(args);
if (parsed.Errors.Count > 0)
{
    // A command line that does not parse (unknown option, missing argument, not a number) is a usage error, exit 2; a
    // value that parses but lies outside its option's domain is an input error, exit 3. Both print SQ2009 and the option.
    bool domainOnly = parsed.Errors.All(e => e.Message.StartsWith(ErrorCodes.InvalidArgument, StringComparison.Ordinal));
    foreach (var e in parsed.Errors)
        Console.Error.WriteLine(e.Message.StartsWith(ErrorCodes.InvalidArgument, StringComparison.Ordinal) ? $"error {e.Message}" : $"error {ErrorCodes.InvalidArgument}: {e.Message}");
    Console.Error.WriteLine("Run 'superquant --help' (or 'superquant COMMAND --help') for usage.");
    return domainOnly ? ExitCodes.InputError : ExitCodes.Usage;
}
int exitCode = parsed.Invoke();
// For `bench scale`, which measures a child run's whole-process peak: VmHWM at exit is exact, polling is not.
if (Environment.GetEnvironmentVariable("SUPERQUANT_PEAK_RSS_FILE") is { Length: > 0 } peakFile)
    File.WriteAllText(peakFile, ProcessMemory.Peak.ToString(System.Globalization.CultureInfo.InvariantCulture));
return exitCode;
