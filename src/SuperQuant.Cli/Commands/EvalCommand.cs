using System.CommandLine;
using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Llama;
using SuperQuant.LlamaCpp;
using SuperQuant.Manifest;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Text;
using SuperQuant.Pipeline;

namespace SuperQuant.Cli.Commands;

/// <summary>`superquant eval`: perplexity of one model, or the KL statistics of llama-perplexity --kl-divergence
/// against a reference. Models are checkpoints, packed artifacts or GGUF files (run by llama.cpp by default).</summary>
public static class EvalCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = $"the model: {ModelLoader.Accepted}", Required = true };
        var text = new Option<string?>("--text")
        {
            Description = "UTF-8 text file, tokenized with the model's tokenizer (a GGUF's own vocabulary, or " +
            "the checkpoint's / --tokenizer)"
        };
        var tokens = new Option<string?>("--tokens") { Description = "token-id file (integers separated by spaces, commas or newlines; # comments)" };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "folder with tokenizer.model or tokenizer.json (default: the checkpoint folder)" };
        var reference = new Option<string?>("--reference")
        {
            Description = "reference model (any of the kinds -m takes): report KL divergence, top-1 " +
            "agreement and the rest against it"
        };
        var engine = new Option<string>("--engine")
        {
            Description = "auto (GGUF in llama.cpp, everything else in our forward pass), llama.cpp (GGUF " +
            "only) or torch (GGUF dequantized into our forward pass)", DefaultValueFactory = _ => "auto"
        }
            .OneOf("auto", "llama.cpp", "torch");
        var context = new Option<int>("--context", "-c") { Description = "tokens per evaluation window", DefaultValueFactory = _ => 512 }.InRange(2, 1 << 20);
        var stride = new Option<int?>("--stride")
        {
            Description = "new tokens scored per window, at most context-1; each is scored once with >= " +
            "context-stride tokens of history (default: context/2)"
        }.InRange(1, 1 << 20);
        var maxTokens = new Option<int?>("--max-tokens") { Description = "evaluate only the first N tokens (N >= 2)" }.InRange(2, int.MaxValue);
        var threads = new Option<int?>("--threads") { Description = "llama.cpp threads (default: one per core)" }.InRange(1, 1024);
        var json = new Option<bool>("--json") { Description = "print one JSON object instead of text" };
        var dtype = new Option<string>("--dtype")
        {
            Description = "our forward pass's weights and activations: auto (bf16 on CUDA, fp32 on CPU), " +
            "fp32, bf16 or fp16 (llama.cpp runs a GGUF in its own types)", DefaultValueFactory = _ => "auto"
        }
            .OneOf("auto", "fp32", "bf16", "fp16");
        var task = new Option<string[]>("--task")
        {
            Description = $"zero-shot task as NAME=FILE.jsonl (repeatable; NAME one of " +
            $"{string.Join(", ", TaskFile.TaskNames)}; fields as in each task's public release, see docs/tasks.md): accuracy by log-likelihood as " +
            $"lm-evaluation-harness scores it", AllowMultipleArgumentsPerToken = false
        };
        var memory = CliSupport.MemoryOption();
        var taskLimit = new Option<int?>("--task-limit") { Description = "score only the first N documents of each task file" }.InRange(1,
            TaskFile.MaxDocuments);
        var device = CliSupport.DeviceOption();
        var cmd = new Command("eval", "Perplexity over a text or token-id file (sliding window, like llama.cpp's perplexity tool); with --reference, " +
            "the KL statistics of llama-perplexity --kl-divergence.\n" + ExitCodes.HelpText)
        {
            model, text, tokens, tokenizer, reference, engine, context, stride, maxTokens, threads, json, task, taskLimit, dtype, device, memory,
        };
        cmd.Validators.Add(r =>
        {
            bool tasks = r.GetValue(task) is { Length: > 0 };
            if (tasks && (r.GetValue(text) is not null || r.GetValue(tokens) is not null
                || r.GetValue(reference) is not null)) r.AddError("--task scores tasks; give it without --text, --tokens or --reference");
            if (!tasks && (r.GetValue(text) is null) == (r.GetValue(tokens) is null)) r.AddError("give exactly one of --text or --tokens (or --task " +
                "NAME=FILE)");
            foreach (string t in r.GetValue(task) ?? Array.Empty<string>())
                if (t.Split('=', 2) is not [var name, var file] || !TaskFile.TaskNames.Contains(name) || file.Length == 0)
                    r.AddError($"{ErrorCodes.InvalidArgument}: --task '{Manifest.ManifestReader.Excerpt(t)}' (expected NAME=FILE, NAME one of " +
                        $"{string.Join(", ", TaskFile.TaskNames)})");
            if (r.GetValue(stride) is int s && s >= r.GetValue(context)) r.AddError($"--stride {s} must be below --context {r.GetValue(context)}");
        });
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            bool asJson = r.GetValue(json);
            var dev = CliSupport.ResolveDevice(r.GetValue(device), asJson);
            int ctx = r.GetValue(context);
            var type = r.GetValue(dtype) switch
            {
                "fp32" => TorchSharp.torch.ScalarType.Float32,
                "bf16" => TorchSharp.torch.ScalarType.BFloat16,
                "fp16" => TorchSharp.torch.ScalarType.Float16,
                _ => dev.type == TorchSharp.DeviceType.CUDA ? TorchSharp.torch.ScalarType.BFloat16 : TorchSharp.torch.ScalarType.Float32,
            };
            var mem = Names.ParseMemory(r.GetValue(memory) ?? "auto");
            using ModelRunner m = ModelRunner.Open(r.GetValue(model)!, r.GetValue(engine)!, ctx, r.GetValue(threads), dev, type, mem);
            ctx = Math.Min(ctx, m.MaxContext);
            if (r.GetValue(task) is { Length: > 0 } taskSpecs)
                return Tasks(m, taskSpecs, r.GetValue(taskLimit), ctx, r.GetValue(tokenizer) ?? Tokens.CheckpointFolder(m.Path), asJson);
            int str = Math.Min(r.GetValue(stride) ?? Math.Max(1, ctx / 2), ctx - 1);
            int[] ids = r.GetValue(tokens) is string tokenFile
                ? SuperQuant.Models.Text.TokenIdFile.Read(tokenFile, m.VocabSize, minimum: 2)
                : LoadText(r.GetValue(text)!, m, r.GetValue(tokenizer) ?? Tokens.CheckpointFolder(m.Path));
            if (r.GetValue(maxTokens) is int max && max < ids.Length) ids = ids[..max];
            var progress = new ConsoleProgress("eval", enabled: !asJson);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            if (r.GetValue(reference) is not string refPath)
            {
                var (logits, batches) = m.Windows(ids, ctx, str);
                PerplexityResult p;
                using (batches) p = Evaluator.Perplexity(logits, ids, ctx, str, progress.Report, CliSupport.Cancellation);
                Require(p.Perplexity.Value, m.Path);
                if (asJson)
                    Console.WriteLine(JsonSerializer.Serialize(new
                    {
                        model = m.Path, engine = m.Engine, dtype = m.Dtype, tokens = ids.Length, tokens_scored = p.TokensScored, context = ctx, stride = str,
                        perplexity = p.Perplexity.Value, perplexity_se = p.Perplexity.StandardError,
                        mean_nll = p.MeanNll.Value, mean_nll_se = p.MeanNll.StandardError, seconds = clock.Elapsed.TotalSeconds,
                    }, CliSupport.Json));
                else
                {
                    Console.WriteLine($"model       {m.Path} ({m.Engine}, {m.Dtype})");
                    Console.WriteLine($"tokens      {ids.Length} ({p.TokensScored} scored, context {ctx}, stride {str})");
                    Console.WriteLine($"perplexity  {p.Perplexity.Value:F4} +/- {p.Perplexity.StandardError:F4}");
                    Console.WriteLine($"mean NLL    {p.MeanNll.Value:F5} +/- {p.MeanNll.StandardError:F5}");
                    Console.WriteLine($"time        {clock.Elapsed.TotalSeconds:F1} s");
                }
                return ExitCodes.Success;
            }
            using ModelRunner refModel = ModelRunner.Open(refPath, r.GetValue(engine)!, ctx, r.GetValue(threads), dev, type, mem);
            if (refModel.VocabSize != m.VocabSize)
                throw new SuperQuantException(ErrorCodes.InvalidArgument, $"--reference has vocabulary {refModel.VocabSize}, the model {m.VocabSize}", refPath);
            var (refLogits, refBatches) = refModel.Windows(ids, ctx, str);
            var (modLogits, modBatches) = m.Windows(ids, ctx, str);
            DivergenceResult d;
            using (refBatches)
            using (modBatches)
                d = Evaluator.Divergence(refLogits, modLogits, ids, ctx, str, progress.Report, CliSupport.Cancellation);
            Require(d.ModifiedPerplexity.Value, m.Path);
            if (asJson)
                Console.WriteLine(JsonSerializer.Serialize(new
                {
                    model = m.Path, engine = m.Engine, dtype = m.Dtype, reference = refPath, reference_engine = refModel.Engine,
                    reference_dtype = refModel.Dtype, tokens = ids.Length, tokens_scored = d.TokensScored, context = ctx, stride = str,
                    kl_divergence = d.KlDivergence.Value, kl_divergence_se = d.KlDivergence.StandardError, kl_median = d.KlMedian, kl_p90 = d.KlP90,
                    kl_p99 = d.KlP99, kl_p999 = d.KlP999, kl_max = d.KlMax,
                    top1_agreement = d.Top1Agreement.Value, top1_agreement_se = d.Top1Agreement.StandardError,
                    reference_perplexity = d.ReferencePerplexity.Value, reference_perplexity_se = d.ReferencePerplexity.StandardError,
                    perplexity = d.ModifiedPerplexity.Value, perplexity_se = d.ModifiedPerplexity.StandardError,
                    perplexity_delta = d.PerplexityDelta.Value, perplexity_delta_se = d.PerplexityDelta.StandardError,
                    ln_perplexity_ratio = d.LnPerplexityRatio.Value, ln_perplexity_ratio_se = d.LnPerplexityRatio.StandardError,
                    rms_delta_p = d.RmsDeltaP.Value, rms_delta_p_se = d.RmsDeltaP.StandardError, seconds = clock.Elapsed.TotalSeconds,
                }, CliSupport.Json));
            else
            {
                Console.WriteLine($"model              {m.Path} ({m.Engine}, {m.Dtype})");
                Console.WriteLine($"reference          {refPath} ({refModel.Engine}, {refModel.Dtype})");
                Console.WriteLine($"tokens             {ids.Length} ({d.TokensScored} scored, context {ctx}, stride {str})");
                Console.WriteLine($"PPL(Q)             {d.ModifiedPerplexity.Value:F4} +/- {d.ModifiedPerplexity.StandardError:F4}");
                Console.WriteLine($"PPL(base)          {d.ReferencePerplexity.Value:F4} +/- {d.ReferencePerplexity.StandardError:F4}");
                Console.WriteLine($"ln(PPL(Q)/PPL(base)) {d.LnPerplexityRatio.Value:F6} +/- {d.LnPerplexityRatio.StandardError:F6}");
                Console.WriteLine($"PPL(Q)-PPL(base)   {d.PerplexityDelta.Value:F4} +/- {d.PerplexityDelta.StandardError:F4}");
                Console.WriteLine($"KLD mean           {d.KlDivergence.Value:F6} +/- {d.KlDivergence.StandardError:F6}");
                Console.WriteLine($"KLD median / p90 / p99 / p99.9 / max   {d.KlMedian:F6} / {d.KlP90:F6} / {d.KlP99:F6} / {d.KlP999:F6} / {d.KlMax:F6}");
                Console.WriteLine($"same top p         {d.Top1Agreement.Value:P3} +/- {d.Top1Agreement.StandardError:P3}");
                Console.WriteLine($"RMS dp             {d.RmsDeltaP.Value:P3} +/- {d.RmsDeltaP.StandardError:P3}");
            }
            return ExitCodes.Success;
        }));
        return cmd;
    }

    /// <summary>Scores each task file with the model's runtime; prints acc (and acc_norm, or LAMBADA's perplexity)
    /// with standard errors.</summary>
    static int Tasks(ModelRunner m, string[] specs, int? limit, int ctx, string tokenizerFolder, bool asJson)
    {
        Func<string, int[]> encode = m.Tokenize ?? Tokens.Encoder(tokenizerFolder, m.VocabSize);
        var scores = new List<TaskScore>();
        foreach (string spec in specs)
        {
            var (name, file) = (spec[..spec.IndexOf('=')], Path.GetFullPath(spec[(spec.IndexOf('=') + 1)..]));
            var docs = TaskRequests.Tokenize(TaskFile.Read(file, name, limit), encode, file);
            foreach (var d in docs)
                foreach (var q in d.Requests)
                    if (q.Context.Concat(q.Continuation).Any(i => i < 0 || i >= m.VocabSize))
                        throw new SuperQuantException(ErrorCodes.TokenizerUnsupported,
                            $"{file}: the tokenizer produced an id outside the model's vocabulary of {m.VocabSize}", file);
            var progress = new ConsoleProgress(name, enabled: !asJson);
            // A layer-streamed model runs the requests in batches (one read of the blocks per batch).
            var (logits, batches) = m.Requests(docs, ctx);
            TaskScore score;
            using (batches) score = TaskScorer.Score(name, TaskFile.Definition(name).Kind == TaskKind.LastWord, docs, logits, ctx, progress.Report,
                CliSupport.Cancellation);
            scores.Add(score);
            if (!asJson)
                Console.WriteLine($"{name,-14} n={score.Documents,-6} acc {score.Accuracy.Value:P2} +/- {score.Accuracy.StandardError:P2}" +
                    (score.AccuracyNorm is Estimate an ? $"  acc_norm {an.Value:P2} +/- {an.StandardError:P2}" : "") +
                    (score.Perplexity is Estimate pp ? $"  perplexity {pp.Value:F3}" : ""));
        }
        if (asJson)
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                model = m.Path, engine = m.Engine, dtype = m.Dtype, context = ctx,
                tasks = scores.Select(t => new
                {
                    task = t.Task, documents = t.Documents, acc = t.Accuracy.Value, acc_se = t.Accuracy.StandardError,
                    acc_norm = t.AccuracyNorm?.Value, acc_norm_se = t.AccuracyNorm?.StandardError, perplexity = t.Perplexity?.Value,
                }).ToList(),
            }, CliSupport.Json));
        return ExitCodes.Success;
    }

    /// <summary>A metric that is not a number is never reported as a success (a broken config or model).</summary>
    static void Require(double v, string path)
    {
        if (!double.IsFinite(v)) throw new SuperQuantException(ErrorCodes.ConfigInvalid,
            $"evaluation of {path} produced {v}: the model's numbers are not finite (check its config and weights)", path);
    }

    static int[] LoadText(string file, ModelRunner m, string tokenizerFolder)
    {
        if (m.Tokenize is { } own)
        {
            if (!File.Exists(file)) throw new SuperQuantException(ErrorCodes.FileNotFound, $"text file not found: {file}", file);
            int[] ids = own(File.ReadAllText(file));
            return ids.Length >= 2 ? ids : throw new SuperQuantException(ErrorCodes.TokenFileInvalid, $"{file}: fewer than 2 tokens", file);
        }
        return Tokens.Load(new TokenSource(file, true, Origin.Option("--text")), tokenizerFolder, m.VocabSize, minimum: 2);
    }
}
