using System.CommandLine;
using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Text;

namespace SuperQuant.Cli.Commands;

/// <summary>`superquant generate`: continue a prompt; writes token ids (for models without a tokenizer, this is how
/// evaluation and calibration streams are made) and prints text when a tokenizer is available.</summary>
public static class GenerateCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "checkpoint (folder, .safetensors or llama2.c .bin)", Required = true };
        var prompt = new Option<string>("--prompt-tokens") { Description = "prompt as token ids, e.g. \"1\" (llama2.c BOS)", DefaultValueFactory = _ => "1" };
        var count = new Option<int>("--count", "-n") { Description = "tokens to generate", DefaultValueFactory = _ => 256 };
        var temperature = new Option<double>("--temperature") { Description = "0 = greedy", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<int>("--seed") { Description = "sampling seed (same seed, same tokens)", DefaultValueFactory = _ => 42 };
        var output = new Option<string?>("--out", "-o") { Description = "write the token ids (prompt included) to this file" };
        var device = CliSupport.DeviceOption();
        var cmd = new Command("generate", "Generate tokens from a prompt; write the ids with --out (evaluation/calibration streams for models without a tokenizer).\n" + ExitCodes.HelpText)
        {
            model, prompt, count, temperature, seed, output, device,
        };
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            var dev = CliSupport.ResolveDevice(r.GetValue(device), quiet: false);
            string path = r.GetValue(model)!;
            using LlamaModel m = ModelLoader.Load(path, dev);
            int[] promptIds;
            try { promptIds = r.GetValue(prompt)!.Split(new[] { ' ', ',' }, StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray(); }
            catch (FormatException) { throw new SuperQuantException(ErrorCodes.InvalidArgument, "--prompt-tokens must be integers separated by spaces or commas"); }
            if (promptIds.Length == 0 || promptIds.Any(i => i < 0 || i >= m.Config.VocabSize))
                throw new SuperQuantException(ErrorCodes.InvalidArgument, $"--prompt-tokens must hold 1+ ids in [0, {m.Config.VocabSize})");
            var progress = new ConsoleProgress("generate");
            int[] ids = Sampler.Generate(m, promptIds, r.GetValue(count), r.GetValue(temperature), r.GetValue(seed), progress.Report);
            if (r.GetValue(output) is string outPath)
            {
                TokenIdFile.Write(outPath, ids, $"superquant generate --model {Path.GetFileName(path)} --seed {r.GetValue(seed)} --temperature {r.GetValue(temperature)}");
                Console.Error.WriteLine($"wrote {ids.Length} token ids to {outPath}");
            }
            try
            {
                var tok = TokenizerLoader.Load(EvalCommand.CheckpointFolder(path));
                Console.WriteLine(tok.Decode(ids));
            }
            catch (SuperQuantException)
            {
                Console.WriteLine(string.Join(' ', ids)); // no tokenizer: print the ids
            }
            return ExitCodes.Success;
        }));
        return cmd;
    }
}
