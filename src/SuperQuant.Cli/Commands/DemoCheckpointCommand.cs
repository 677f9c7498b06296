using System.CommandLine;
using SuperQuant.Core.Llama;
using SuperQuant.Models.Checkpoints;

namespace SuperQuant.Cli.Commands;

/// <summary>`superquant demo-checkpoint`: a small random LLaMA (Hugging Face layout) with one planted super weight,
/// for trying the pipeline without downloading a model. Its weights mean nothing.</summary>
public static class DemoCheckpointCommand
{
    public static Command Create()
    {
        var output = new Option<string>("--out", "-o") { Description = "folder to write config.json and model.safetensors to", Required = true };
        var seed = new Option<int>("--seed") { Description = "random seed", DefaultValueFactory = _ => 1 };
        var cmd = new Command("demo-checkpoint", "Write a small random LLaMA checkpoint (1.4M parameters, vocabulary 256) with a super weight planted at (1, 100, 300).\n" + ExitCodes.HelpText)
        {
            output, seed,
        };
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            var config = new LlamaConfig
            {
                Architecture = "llama", HiddenSize = 256, IntermediateSize = 512, NumLayers = 2, NumHeads = 4, NumKvHeads = 4,
                VocabSize = 256, MaxPositionEmbeddings = 512, TieWordEmbeddings = true,
            };
            string dir = r.GetValue(output)!;
            RandomCheckpoint.Write(dir, config, seed: r.GetValue(seed), superWeight: (1, 100, 300));
            Console.WriteLine($"wrote {dir} ({config.ParameterCount / 1e6:F1}M parameters, super weight at layer 1 [100, 300])");
            return ExitCodes.Success;
        }));
        return cmd;
    }
}
