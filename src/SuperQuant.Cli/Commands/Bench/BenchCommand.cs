using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Models.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Cli.Commands.Bench;

/// <summary>`superquant bench`: measurements printed side by side with the baseline they are judged against.
/// Timings live here, never in unit tests.</summary>
public static class BenchCommand
{
    public static Command Create()
    {
        var cmd = new Command("bench", "Benchmarks that print ratios measured side by side in one run.\n" + ExitCodes.HelpText);
        cmd.Subcommands.Add(BenchForwardCommand.Create());
        cmd.Subcommands.Add(BenchDetectCommand.Create());
        cmd.Subcommands.Add(BenchQuantCommand.Create());
        cmd.Subcommands.Add(BenchGgufCommand.Create());
        cmd.Subcommands.Add(BenchScaleCommand.Create());
        cmd.Subcommands.Add(BenchGenerateCommand.Create());
        return cmd;
    }
}
