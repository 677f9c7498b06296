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
        var model = new Option<string>("--model", "-m") { Description = $"the model: {ModelLoader.Accepted}", Required = true };
        var prompt = new Option<string>("--prompt-tokens") { Description = "prompt as token ids, e.g. \"1\" (llama2.c BOS)", DefaultValueFactory = _ => "1" };
        var promptText = new Option<string?>("--prompt")
        {
            Description = "prompt as text, tokenized with the checkpoint's tokenizer (BOS first); the " +
            "continuation is printed as it is generated, and generation stops at EOS"
        };
        var tokenizerFolder = new Option<string?>("--tokenizer")
        {
            Description = "folder with tokenizer.model or tokenizer.json (default: the " +
            "checkpoint folder)"
        };
        var count = new Option<int>("--count", "-n") { Description = "tokens to generate (1..1000000)", DefaultValueFactory = _ => 256 }.InRange(1, 1_000_000);
        var temperature = new Option<double>("--temperature") { Description = "0 = greedy; up to 100", DefaultValueFactory = _ => 1.0 }.InRange(0, 100);
        var seed = new Option<int>("--seed") { Description = "sampling seed (same seed, same tokens)", DefaultValueFactory = _ => 42 };
        var output = new Option<string?>("--out", "-o") { Description = "write the token ids (prompt included) to this file" };
        var device = CliSupport.DeviceOption();
        var cmd = new Command("generate", "Generate tokens from a prompt; write the ids with --out (evaluation/calibration streams for models " +
            "without a tokenizer).\n" + ExitCodes.HelpText)
        {
            model, prompt, promptText, tokenizerFolder, count, temperature, seed, output, device,
        };
        cmd.Validators.Add(r =>
        {
            if (r.GetValue(promptText) is not null && r.GetResult(prompt) is { Implicit: false }) r.AddError("give one of --prompt or --prompt-tokens");
        });
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            string path = Path.GetFullPath(r.GetValue(model)!);
            if (r.GetValue(output) is string o) CliSupport.CheckOutputs(new[] { (path, "the model (-m)") },
                new[] { (CliSupport.OutputFile(o, "--out"), "--out") });
            if (ModelLoader.Detect(path) == CheckpointFormat.Gguf && SuperQuant.Models.Gguf.GgufFile.Read(path).HasVocabulary)
                return GenerateWithLlamaCpp(path, r.GetValue(promptText), r.GetValue(prompt), r.GetValue(count), r.GetValue(temperature),
                    r.GetValue(seed), r.GetValue(output));
            var dev = CliSupport.ResolveDevice(r.GetValue(device), quiet: false);
            using LlamaModel m = ModelLoader.Load(path, dev);
            TextTokenizer? tok = null;
            string folder = r.GetValue(tokenizerFolder) ?? SuperQuant.Pipeline.Tokens.CheckpointFolder(path);
            try { tok = TokenizerLoader.Load(folder); }
            catch (SuperQuantException) when (r.GetValue(promptText) is null) { } // ids in, ids out
            int[] promptIds = r.GetValue(promptText) is string text
                ? SuperQuant.Pipeline.Tokens.Tokenize(text, folder, m.Config.VocabSize, "--prompt")
                : CliSupport.ParseIds(r.GetValue(prompt), "--prompt-tokens")!;
            if (promptIds.FirstOrDefault(i => i >= m.Config.VocabSize, -1) is int bad and >= 0)
                throw new SuperQuantException(ErrorCodes.InvalidArgument,
                    $"--prompt-tokens: id {bad} is outside the model's vocabulary [0, {m.Config.VocabSize})");
            if (promptIds.Length >= m.Config.MaxPositionEmbeddings)
                throw new SuperQuantException(ErrorCodes.InvalidArgument,
                    $"--prompt-tokens: {promptIds.Length} ids fill the model's context of {m.Config.MaxPositionEmbeddings}");
            int n = Math.Min(r.GetValue(count), m.Config.MaxPositionEmbeddings - promptIds.Length);
            if (n < r.GetValue(count)) Console.Error.WriteLine($"generating {n} tokens: the model's context is {m.Config.MaxPositionEmbeddings}");
            bool stream = tok is not null && r.GetValue(promptText) is not null;
            var progress = new ConsoleProgress("generate", enabled: !stream);
            string printed = "";
            void Stream(IReadOnlyList<int> all)
            {
                // Decoding the whole continuation each time keeps SentencePiece's spaces and multi-token characters
                // right; only the new suffix is written.
                string text = tok!.Decode(all.Skip(promptIds.Length)) ?? "";
                if (text.StartsWith(printed, StringComparison.Ordinal)) { Console.Write(text[printed.Length..]); printed = text; }
            }
            if (stream) Console.Write(r.GetValue(promptText));
            int[] ids = Sampler.Generate(m, promptIds, n, r.GetValue(temperature), r.GetValue(seed), progress.Report,
                onToken: stream ? Stream : null, stopToken: stream ? tok!.EndOfSequenceId : null, cancel: SignalCancellation.Token);
            if (stream) Console.WriteLine();
            if (r.GetValue(output) is string outPath)
            {
                TokenIdFile.Write(outPath, ids, $"superquant generate --model {Path.GetFileName(path)} --seed {r.GetValue(seed)} --temperature " +
                    $"{r.GetValue(temperature)}");
                Console.Error.WriteLine($"wrote {ids.Length} token ids to {outPath}");
            }
            if (!stream) Console.WriteLine(tok is not null ? tok.Decode(ids) : string.Join(' ', ids)); // no tokenizer: the ids
            return ExitCodes.Success;
        }));
        return cmd;
    }

    /// <summary>A GGUF that carries its vocabulary runs where an app runs it: llama.cpp tokenizes the prompt (BOS as
    /// the file says), continues it with its KV cache, and detokenizes the continuation.</summary>
    static int GenerateWithLlamaCpp(string path, string? text, string? idsText, int count, double temperature, int seed, string? outPath)
    {
        using var llama = SuperQuant.LlamaCpp.LlamaCppModel.Load(path, 2048);
        int[] promptIds = text is not null ? llama.Tokenize(text, addBos: true) : CliSupport.ParseIds(idsText, "--prompt-tokens")!;
        if (promptIds.FirstOrDefault(i => i < 0 || i >= llama.VocabSize, -1) is int bad and >= 0)
            throw new SuperQuantException(ErrorCodes.InvalidArgument, $"--prompt-tokens: id {bad} is outside the model's vocabulary [0, {llama.VocabSize})");
        int n = Math.Max(0, Math.Min(count, llama.ContextSize - promptIds.Length));
        var rng = new Random(seed);
        var ids = new List<int>(promptIds);
        var end = llama.EndOfGeneration;
        int[] feed = promptIds;
        var progress = new ConsoleProgress("generate");
        for (int i = 0; i < n; i++)
        {
            SignalCancellation.Token.ThrowIfCancellationRequested();
            var logits = llama.Append(feed, ids.Count - feed.Length);
            double[] row = new double[logits.Length];
            for (int t = 0; t < row.Length; t++) row[t] = logits[t];
            int next = Sampler.Pick(row, temperature, rng);
            ids.Add(next);
            progress.Report(i + 1, n);
            if (end.Contains(next)) break;
            feed = new[] { next };
        }
        if (outPath is not null)
        {
            TokenIdFile.Write(outPath, ids, $"superquant generate --model {Path.GetFileName(path)} --seed {seed} --temperature {temperature}");
            Console.Error.WriteLine($"wrote {ids.Count} token ids to {outPath}");
        }
        Console.WriteLine(text is not null ? text + llama.Detokenize(ids.Skip(promptIds.Length)) : string.Join(' ', ids));
        return ExitCodes.Success;
    }
}
