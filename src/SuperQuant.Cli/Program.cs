using System.CommandLine;
using SuperQuant.Cli;
using SuperQuant.Cli.Commands;

NativeMemoryTuning.Apply();
var root = new RootCommand("superquant: super-weight-aware LLM quantization as a build step.\n" + ExitCodes.HelpText);
root.Subcommands.Add(EvalCommand.Create());
root.Subcommands.Add(InitCommand.Create());
root.Subcommands.Add(DemoCheckpointCommand.Create());
root.Subcommands.Add(DetectCommand.Create());
root.Subcommands.Add(AnalyzeCommand.Create());
root.Subcommands.Add(QuantizeCommand.Create());
root.Subcommands.Add(GateCommand.Create());
root.Subcommands.Add(GenerateCommand.Create());
root.Subcommands.Add(BenchCommand.Create());
root.Subcommands.Add(DoctorCommand.Create());
ParseResult parsed = root.Parse(args);
if (parsed.Errors.Count > 0)
{
    foreach (var e in parsed.Errors) Console.Error.WriteLine($"error: {e.Message}");
    Console.Error.WriteLine("Run 'superquant --help' for usage.");
    return ExitCodes.Usage;
}
int exitCode = parsed.Invoke();
// For `bench scale`, which measures a child run's whole-process peak: VmHWM at exit is exact, polling is not.
if (Environment.GetEnvironmentVariable("SUPERQUANT_PEAK_RSS_FILE") is { Length: > 0 } peakFile)
    File.WriteAllText(peakFile, ProcessMemory.Peak.ToString(System.Globalization.CultureInfo.InvariantCulture));
return exitCode;
