using System.CommandLine;
using SuperQuant.Core;
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
        var hidden = new Option<int>("--hidden") { Description = "hidden size (multiple of 64)", DefaultValueFactory = _ => 256 }.InRange(64, 16384);
        var ffn = new Option<int>("--ffn") { Description = "MLP intermediate size", DefaultValueFactory = _ => 512 }.InRange(16, 65536);
        var layers = new Option<int>("--layers") { Description = "decoder layers", DefaultValueFactory = _ => 2 }.InRange(1, 256);
        var force = new Option<bool>("--force") { Description = "replace a checkpoint already in the folder (config.json, model.safetensors)" };
        var vocab = new Option<int>("--vocab") { Description = "vocabulary size", DefaultValueFactory = _ => 256 }.InRange(16, 262144);
        var tokenizer = new Option<string?>("--tokenizer")
        {
            Description = "a folder with a real tokenizer.json (+ tokenizer_config.json, " +
            "chat_template.jinja): copied beside the checkpoint, whose vocabulary, BOS and EOS follow it (e.g. ../shared/models/tokenizers/llama3.1)"
        };
        var cmd = new Command("demo-checkpoint", "Write a random LLaMA checkpoint (default 1.4M parameters, vocabulary 256; " +
            "--hidden/--ffn/--layers/--vocab for others, e.g. 768/2048/12/32000 for ~110M, tied embedding) with a super weight planted at (1, 100, " +
            "300) (layer 0 when there is one; row and column clamped to the matrix).\n" + ExitCodes.HelpText)
        {
            output, seed, hidden, ffn, layers, vocab, tokenizer, force,
        };
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            int h = r.GetValue(hidden), f = r.GetValue(ffn), n = r.GetValue(layers);
            if (h % 64 != 0) throw new SuperQuantException(ErrorCodes.InvalidArgument, $"--hidden {h} is not a multiple of 64 (heads of 64)", "--hidden");
            // With a real tokenizer the model's vocabulary is the tokenizer's, and BOS/EOS are its post-processor's.
            SuperQuant.Models.Text.TokenizerJson? tok = null;
            if (r.GetValue(tokenizer) is string tf)
            {
                string json = Path.Combine(Path.GetFullPath(tf), "tokenizer.json");
                if (!File.Exists(json)) throw new SuperQuantException(ErrorCodes.FileNotFound,
                    $"--tokenizer: no tokenizer.json in {Path.GetFullPath(tf)}", json);
                tok = SuperQuant.Models.Text.TokenizerJson.TryRead(json)
                    ?? throw new SuperQuantException(ErrorCodes.TokenizerUnsupported, $"--tokenizer: {json} is not a BPE tokenizer this tool reads", json);
            }
            var config = new LlamaConfig
            {
                Architecture = "llama", HiddenSize = h, IntermediateSize = f, NumLayers = n, NumHeads = Math.Max(1, h / 64), NumKvHeads = Math.Max(1, h / 64),
                VocabSize = tok?.Count ?? r.GetValue(vocab), MaxPositionEmbeddings = 512, TieWordEmbeddings = true,
                BosTokenId = tok is null ? null : tok.Prefix.Count > 0 ? tok.Prefix[0] : null,
            };
            int? eos = tok is null ? null : ChatEnd(tok);
            string dir = Path.GetFullPath(r.GetValue(output)!);
            if (File.Exists(dir)) throw new SuperQuantException(ErrorCodes.InvalidArgument,
                $"--out: {dir} is a file; give a folder for config.json and model.safetensors", dir);
            // A user's checkpoint in that folder is not ours to replace.
            foreach (string f0 in new[] { "config.json", "model.safetensors" }.Select(x => Path.Combine(dir, x)))
                if (File.Exists(f0) && !r.GetValue(force))
                    throw new SuperQuantException(ErrorCodes.InvalidArgument, $"--out: {f0} exists (use --force to replace it)", f0);
            RandomCheckpoint.Write(dir, config, seed: r.GetValue(seed), superWeight: (Math.Min(1, n - 1), Math.Min(100, h - 1), Math.Min(300, f - 1)),
                progress: new ConsoleProgress("writing").Report, eosTokenId: eos);
            if (tok is not null)
                foreach (string name in new[] { "tokenizer.json", "tokenizer_config.json", "chat_template.jinja" })
                {
                    string from = Path.Combine(Path.GetDirectoryName(tok.Path)!, name);
                    if (File.Exists(from))
                    {
                        byte[] bytes = File.ReadAllBytes(from); AtomicFile.Write(Path.Combine(dir, name), bytes.Length,
                        fs => fs.Write(bytes));
                    }
                }
            Console.WriteLine($"wrote {dir} ({config.ParameterCount / 1e6:F1}M parameters, super weight at layer {Math.Min(1, n - 1)} " +
                $"[{Math.Min(100, h - 1)}, {Math.Min(300, f - 1)}])");
            return ExitCodes.Success;
        }));
        return cmd;
    }

    /// <summary>The token a chat turn ends with: the family's end-of-turn token when the vocabulary has one, else the
    /// post-processor's last special token.</summary>
    static int? ChatEnd(SuperQuant.Models.Text.TokenizerJson t)
    {
        foreach (string name in new[] { "<|eot_id|>", "<|im_end|>", "<end_of_turn>", "</s>", "<eos>" })
            if (t.Added.FirstOrDefault(a => a.Content == name) is { } a) return a.Id;
        return t.Suffix.Count > 0 ? t.Suffix[^1] : null;
    }
}
