using System.CommandLine;
using SuperQuant.Cli;
using SuperQuant.Cli.Commands;
using SuperQuant.Core;

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
    // Every command-line mistake, including a value outside an option's domain, is exit 2 with SQ2009.
    foreach (var e in parsed.Errors)
        Console.Error.WriteLine(e.Message.StartsWith(ErrorCodes.InvalidArgument, StringComparison.Ordinal) ? $"error {e.Message}" : $"error {ErrorCodes.InvalidArgument}: {e.Message}");
    Console.Error.WriteLine("Run 'superquant --help' (or 'superquant COMMAND --help') for usage.");
    return ExitCodes.Usage;
}
int exitCode = parsed.Invoke();
// For `bench scale`, which measures a child run's whole-process peak: VmHWM at exit is exact, polling is not.
if (Environment.GetEnvironmentVariable("SUPERQUANT_PEAK_RSS_FILE") is { Length: > 0 } peakFile)
    File.WriteAllText(peakFile, ProcessMemory.Peak.ToString(System.Globalization.CultureInfo.InvariantCulture));
return exitCode;
