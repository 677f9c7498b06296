using System.CommandLine;
using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Llama;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Text;

namespace SuperQuant.Cli.Commands;

/// <summary>`superquant eval`: perplexity of one model, or KL divergence and top-1 agreement against a reference.</summary>
public static class EvalCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "checkpoint: Hugging Face folder, .safetensors inside one, or llama2.c .bin", Required = true };
        var text = new Option<string?>("--text") { Description = "UTF-8 text file, tokenized with the model's tokenizer (or --tokenizer)" };
        var tokens = new Option<string?>("--tokens") { Description = "token-id file (integers separated by spaces, commas or newlines; # comments)" };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "folder with tokenizer.model or tokenizer.json (default: the checkpoint folder)" };
        var reference = new Option<string?>("--reference") { Description = "reference checkpoint: also report KL(reference || model) and top-1 agreement" };
        var context = new Option<int>("--context", "-c") { Description = "tokens per evaluation window", DefaultValueFactory = _ => 512 };
        var stride = new Option<int?>("--stride") { Description = "new tokens scored per window, at most context-1; each is scored once with >= context-stride tokens of history (default: context/2)" };
        var maxTokens = new Option<int?>("--max-tokens") { Description = "evaluate only the first N tokens" };
        var json = new Option<bool>("--json") { Description = "print one JSON object instead of text" };
        var device = CliSupport.DeviceOption();
        var cmd = new Command("eval", "Perplexity over a text or token-id file (sliding window, like llama.cpp's perplexity tool); with --reference, KL divergence and top-1 agreement.\n" + ExitCodes.HelpText)
        {
            model, text, tokens, tokenizer, reference, context, stride, maxTokens, json, device,
        };
        cmd.Validators.Add(r =>
        {
            if ((r.GetValue(text) is null) == (r.GetValue(tokens) is null)) r.AddError("give exactly one of --text or --tokens");
        });
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            bool asJson = r.GetValue(json);
            var dev = CliSupport.ResolveDevice(r.GetValue(device), asJson);
            string modelPath = r.GetValue(model)!;
            using LlamaModel m = ModelLoader.Load(modelPath, dev);
            int[] ids = LoadTokens(r.GetValue(text), r.GetValue(tokens), r.GetValue(tokenizer) ?? CheckpointFolder(modelPath), m.Config.VocabSize, m.Config.BosTokenId);
            if (r.GetValue(maxTokens) is int max && max < ids.Length) ids = ids[..max];
            int ctx = r.GetValue(context);
            int str = r.GetValue(stride) ?? Math.Max(1, ctx / 2);
            if (ctx < 2 || str < 1 || str >= ctx)
                throw new SuperQuantException(ErrorCodes.InvalidArgument, $"--context must be >= 2 and --stride in 1..context-1 (got {ctx}, {str})");
            var progress = new ConsoleProgress("eval", enabled: !asJson);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            string? refPath = r.GetValue(reference);
            if (refPath is null)
            {
                PerplexityResult p = Evaluator.Perplexity(t => m.Forward(t), ids, ctx, str, progress.Report);
                if (asJson)
                    Console.WriteLine(JsonSerializer.Serialize(new
                    {
                        model = modelPath, tokens = ids.Length, tokens_scored = p.TokensScored, context = ctx, stride = str,
                        perplexity = p.Perplexity.Value, perplexity_se = p.Perplexity.StandardError,
                        mean_nll = p.MeanNll.Value, mean_nll_se = p.MeanNll.StandardError, seconds = clock.Elapsed.TotalSeconds,
                    }, CliSupport.Json));
                else
                {
                    Console.WriteLine($"model       {modelPath}");
                    Console.WriteLine($"tokens      {ids.Length} ({p.TokensScored} scored, context {ctx}, stride {str})");
                    Console.WriteLine($"perplexity  {p.Perplexity.Value:F4} +/- {p.Perplexity.StandardError:F4}");
                    Console.WriteLine($"mean NLL    {p.MeanNll.Value:F5} +/- {p.MeanNll.StandardError:F5}");
                    Console.WriteLine($"time        {clock.Elapsed.TotalSeconds:F1} s");
                }
            }
            else
            {
                using LlamaModel refModel = ModelLoader.Load(refPath, dev);
                if (refModel.Config.VocabSize != m.Config.VocabSize)
                    throw new SuperQuantException(ErrorCodes.InvalidArgument, $"--reference has vocabulary {refModel.Config.VocabSize}, the model {m.Config.VocabSize}");
                DivergenceResult d = Evaluator.Divergence(t => refModel.Forward(t), t => m.Forward(t), ids, ctx, str, progress.Report);
                if (asJson)
                    Console.WriteLine(JsonSerializer.Serialize(new
                    {
                        model = modelPath, reference = refPath, tokens = ids.Length, tokens_scored = d.TokensScored, context = ctx, stride = str,
                        kl_divergence = d.KlDivergence.Value, kl_divergence_se = d.KlDivergence.StandardError,
                        top1_agreement = d.Top1Agreement.Value, top1_agreement_se = d.Top1Agreement.StandardError,
                        reference_perplexity = d.ReferencePerplexity.Value, reference_perplexity_se = d.ReferencePerplexity.StandardError,
                        perplexity = d.ModifiedPerplexity.Value, perplexity_se = d.ModifiedPerplexity.StandardError,
                        seconds = clock.Elapsed.TotalSeconds,
                    }, CliSupport.Json));
                else
                {
                    Console.WriteLine($"model           {modelPath}");
                    Console.WriteLine($"reference       {refPath}");
                    Console.WriteLine($"tokens          {ids.Length} ({d.TokensScored} scored, context {ctx}, stride {str})");
                    Console.WriteLine($"KL divergence   {d.KlDivergence.Value:F6} +/- {d.KlDivergence.StandardError:F6}");
                    Console.WriteLine($"top-1 agreement {d.Top1Agreement.Value:P2} +/- {d.Top1Agreement.StandardError:P2}");
                    Console.WriteLine($"perplexity      {d.ModifiedPerplexity.Value:F4} +/- {d.ModifiedPerplexity.StandardError:F4} (reference {d.ReferencePerplexity.Value:F4} +/- {d.ReferencePerplexity.StandardError:F4})");
                }
            }
            return ExitCodes.Success;
        }));
        return cmd;
    }

    public static string CheckpointFolder(string modelPath) =>
        Directory.Exists(modelPath) ? modelPath : Path.GetDirectoryName(Path.GetFullPath(modelPath))!;

    public static int[] LoadTokens(string? textFile, string? tokenFile, string tokenizerFolder, int vocabSize, int? bos = null)
    {
        if (tokenFile != null) return TokenIdFile.Read(tokenFile, vocabSize);
        if (!File.Exists(textFile)) throw new SuperQuantException(ErrorCodes.FileNotFound, $"text file not found: {textFile}", textFile);
        return Tokenize(File.ReadAllText(textFile!), tokenizerFolder, vocabSize, bos);
    }

    /// <summary>Tokenizes with the checkpoint's tokenizer; prepends BOS when the tokenizer did not (as llama.cpp does).</summary>
    public static int[] Tokenize(string text, string tokenizerFolder, int vocabSize, int? bos)
    {
        var tok = TokenizerLoader.Load(tokenizerFolder);
        int[] ids = tok.EncodeToIds(text).ToArray();
        if (bos is int b && (ids.Length == 0 || ids[0] != b)) ids = new[] { b }.Concat(ids).ToArray();
        int bad = Array.FindIndex(ids, i => i < 0 || i >= vocabSize);
        if (bad >= 0)
            throw new SuperQuantException(ErrorCodes.TokenizerUnsupported, $"the tokenizer in {tokenizerFolder} produced id {ids[bad]}, outside the model's vocabulary of {vocabSize}", tokenizerFolder);
        return ids;
    }
}
