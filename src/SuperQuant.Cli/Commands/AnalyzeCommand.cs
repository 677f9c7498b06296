using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using SuperQuant.Cli.Reports;
using SuperQuant.Core;
using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Llama;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Text;

namespace SuperQuant.Cli.Commands;

/// <summary>`superquant analyze`: detection plus the paper's ablations, written as analysis.json and analysis.html.</summary>
public static class AnalyzeCommand
{
    static readonly string[] DefaultStopwords = { " the", ".", ",", " a", " and", " to", " of", " was", " in", " is" };

    public static Command Create()
    {
        var o = new DetectionOptions();
        var text = new Option<string?>("--text") { Description = "evaluation text file (tokenized with the model's tokenizer)" };
        var tokens = new Option<string?>("--tokens") { Description = "evaluation token-id file" };
        var context = new Option<int>("--context", "-c") { Description = "tokens per evaluation window", DefaultValueFactory = _ => 512 };
        var stride = new Option<int?>("--stride") { Description = "new tokens per window (default context/2)" };
        var scales = new Option<string>("--scales") { Description = "super-weight scale factors", DefaultValueFactory = _ => "0,0.5,1,1.5,2,2.5,3" };
        var control = new Option<int>("--control-count")
        {
            Description = "the control zeroes this many largest non-super weights of the same " +
            "matrices (the paper: 7000; capped at 1% of them)", DefaultValueFactory = _ => 7000
        };
        var stopwords = new Option<string?>("--stopwords")
        {
            Description = "comma-separated stopword strings (default: the, ., ,, a, and, to, of, " +
            "was, in, is)"
        };
        var stopwordIds = new Option<string?>("--stopword-ids")
        {
            Description = "stopword token ids (models without a tokenizer; default: the 10 " +
            "most frequent ids of the stream, as a proxy)"
        };
        var prompts = new Option<int>("--stopword-prompts")
        {
            Description = "prompts for the stopword test: prefixes of the stream of 64, 128, ... " +
            "tokens (at most --context)", DefaultValueFactory = _ => 8
        };
        var output = new Option<string>("--out", "-o")
        {
            Description = "folder for analysis.json and analysis.html",
            DefaultValueFactory = _ => "superquant-analysis"
        };
        var nextToken = new Option<string?>("--next-token")
        {
            Description = "a text prompt, e.g. \"Summer is hot. Winter is\": print its top next " +
            "tokens with and without the super weights (needs the checkpoint's tokenizer)"
        };
        var task = new Option<string[]>("--task")
        {
            Description = "zero-shot task NAME=FILE.jsonl (repeatable, see docs/tasks.md): the scaling sweep " +
            "also reports accuracy (the paper's Fig. 6)"
        };
        var tracePrompts = new Option<int>("--trace-prompts")
        {
            Description = "prompts (64-token slices of the stream, BOS first) over which each " +
            "super activation's token, value and propagation are traced", DefaultValueFactory = _ => 4
        }.InRange(1, 1000);
        var cmd = new Command("analyze", "Detect super weights and measure what they do: zeroed, zeroed with the super activation restored, scaled " +
            "0..3x, a control of the largest other weights, stopword probabilities. Writes analysis.json and analysis.html.\n" + ExitCodes.HelpText);
        foreach (var opt in o.All) cmd.Options.Add(opt);
        foreach (var opt in new Option[] { text, tokens, context, stride, scales, control, stopwords, stopwordIds, prompts, nextToken, tracePrompts,
            task, output }) cmd.Options.Add(opt);
        cmd.Validators.Add(r =>
        {
            if ((r.GetValue(text) is null) == (r.GetValue(tokens) is null)) r.AddError("give exactly one of --text or --tokens for the evaluation stream");
        });
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            var dev = CliSupport.ResolveDevice(r.GetValue(o.Device), quiet: false);
            string path = r.GetValue(o.Model)!;
            using LlamaModel model = ModelLoader.Load(path, dev);
            var (promptIds, promptText) = o.PromptFor(r, model, path);
            string folder = SuperQuant.Pipeline.Tokens.CheckpointFolder(path);
            var source = r.GetValue(text) is string t ? new SuperQuant.Pipeline.TokenSource(t, true, SuperQuant.Pipeline.Origin.Option("--text"))
                : new SuperQuant.Pipeline.TokenSource(r.GetValue(tokens)!, false, SuperQuant.Pipeline.Origin.Option("--tokens"));
            int[] stream = SuperQuant.Pipeline.Tokens.Load(source, folder, model.Config.VocabSize, minimum: 2);
            int ctx = r.GetValue(context), str = r.GetValue(stride) ?? Math.Max(1, ctx / 2);
            if (ctx < 2 || str < 1 || str >= ctx)
                throw new SuperQuantException(ErrorCodes.InvalidArgument, $"--context must be >= 2 and --stride in 1..context-1 (got {ctx}, {str})");
            double[] scaleList;
            try
            {
                scaleList = r.GetValue(scales)!.Split(',',
                StringSplitOptions.RemoveEmptyEntries).Select(s => double.Parse(s, CultureInfo.InvariantCulture)).ToArray();
            }
            catch (FormatException) { throw new SuperQuantException(ErrorCodes.InvalidArgument, "--scales must be numbers separated by commas"); }
            var options = new AblationOptions { Context = ctx, Stride = str, Scales = scaleList, ControlCount = r.GetValue(control) };

            Console.Error.WriteLine("detecting...");
            DetectionReport detection = o.Detector(r).Detect(model, promptIds);
            var section = DetectionSection.From(detection, promptText, KnownSuperWeights.For(model.Config));
            DetectCommand.Print(section);
            var progress = new ConsoleProgress("original");
            PerplexityResult baseline = Evaluator.Perplexity(t => model.Forward(t), stream, ctx, str, progress.Report);
            var report = new AnalysisReport
            {
                Model = path, Architecture = model.Config.Architecture, Detection = section,
                Evaluation = new EvaluationSection(r.GetValue(text) ?? r.GetValue(tokens)!, stream.Length, ctx, str, baseline.Perplexity.Value,
                    baseline.Perplexity.StandardError),
                AblationsSkipped = detection.Found ? null : "no super weight was detected, so there is nothing to zero, restore or scale",
            };
            // Text inputs first: a checkpoint without a tokenizer stops here with SQ2006, before any long pass.
            var taskDocs = new List<(string Name, IReadOnlyList<ScoredDocument> Docs)>();
            if (r.GetValue(task) is { Length: > 0 } specs)
            {
                var encode = SuperQuant.Pipeline.Tokens.Encoder(folder, model.Config.VocabSize); // SQ2006 without a tokenizer
                foreach (string spec in specs)
                {
                    if (spec.Split('=', 2) is not [var name, var file] || !TaskFile.TaskNames.Contains(name))
                        throw new SuperQuantException(ErrorCodes.InvalidArgument,
                            $"--task '{Manifest.ManifestReader.Excerpt(spec)}' (expected NAME=FILE, NAME one of {string.Join(", ", TaskFile.TaskNames)})");
                    taskDocs.Add((name, SuperQuant.Pipeline.TaskRequests.Tokenize(TaskFile.Read(Path.GetFullPath(file), name), encode, file)));
                }
            }
            int[]? nextIds = r.GetValue(nextToken) is string nextText
                ? SuperQuant.Pipeline.Tokens.Tokenize(nextText, folder, model.Config.VocabSize, "--next-token") : null;
            // The paper's stopword prompts are LAMBADA passages: with --task lambada=FILE their contexts are used.
            var lambadaPrompts = taskDocs.Where(t => t.Name == "lambada").SelectMany(t => t.Docs).Select(d => d.Requests[0].Context)
                .Where(c => c.Length <= ctx).Take(Math.Max(1, r.GetValue(prompts))).ToList();
            if (nextIds is not null && !detection.Found)
                report = report with { NextToken = NextTokenReport(null, model, folder, r.GetValue(nextToken)!, nextIds) };
            if (detection.Found)
            {
                var ablation = new SuperWeightAblation(model, detection);
                foreach (var c in ablation.Conditions(stream, options, new ConsoleProgress("zeroed / restored").Report))
                    report.Conditions.Add(QualityRow.From(c.Name, c.Description, c.Quality));
                var scaleProgress = new ConsoleProgress("scaling");
                foreach (var p in ablation.Scaling(stream, options, scaleProgress.Report))
                    report.Scaling.Add(new ScalingRow(p.Scale, p.Quality.ModifiedPerplexity.Value, p.Quality.ModifiedPerplexity.StandardError,
                        p.Quality.KlDivergence.Value, p.Quality.Top1Agreement.Value)
                    {
                        Accuracy = taskDocs.Count == 0 ? null
                            : taskDocs.ToDictionary(t => t.Name, t => ablation.TaskAccuracy(t.Name, t.Name == "lambada", t.Docs, p.Scale, ctx).Accuracy.Value),
                    });
                var ctl = ablation.Control(stream, options, new ConsoleProgress("control").Report);
                double pZero = report.Conditions.Single(c => c.Name == "zeroed").Perplexity,
                    pRestored = report.Conditions.Single(c => c.Name == "zeroed+activation-restored").Perplexity, pOriginal = baseline.Perplexity.Value;
                var slices = new List<int[]>();
                for (int i = 0; i < r.GetValue(tracePrompts) && i * 64 < stream.Length; i++)
                {
                    var slice = stream.Skip(i * 64).Take(64);
                    slices.Add((model.Config.BosTokenId is int bos && stream[Math.Min(i * 64, stream.Length - 1)] != bos ? slice.Prepend(bos)
                        : slice).ToArray());
                }
                report = report with
                {
                    RestoredShare = pZero - pOriginal > 0 ? (pZero - pRestored) / (pZero - pOriginal) : null,
                    Traces = ablation.Trace(slices).ToList(),
                    NextToken = nextIds is not null ? NextTokenReport(ablation, model, folder, r.GetValue(nextToken)!, nextIds) : null,
                    Control = new ControlRow(ctl.Count, ctl.SmallestMagnitudeZeroed, ctl.Quality.ModifiedPerplexity.Value,
                        ctl.Quality.ModifiedPerplexity.StandardError, ctl.Quality.KlDivergence.Value, ctl.Quality.Top1Agreement.Value),
                    Stopwords = StopwordTest(ablation, model, folder, stream, r.GetValue(stopwords), r.GetValue(stopwordIds),
                        Math.Max(1, r.GetValue(prompts)), ctx, lambadaPrompts),
                };
            }
            string outDir = r.GetValue(output)!;
            Directory.CreateDirectory(outDir);
            CliSupport.WriteAtomically(Path.Combine(outDir, "analysis.json"), JsonSerializer.Serialize(report, AnalysisReport.Json));
            CliSupport.WriteAtomically(Path.Combine(outDir, "analysis.html"), AnalysisHtml.Render(report));
            Console.WriteLine();
            Console.WriteLine($"original perplexity {baseline.Perplexity.Value:F4} +/- {baseline.Perplexity.StandardError:F4} over " +
                $"{baseline.TokensScored} tokens");
            foreach (var c in report.Conditions) Console.WriteLine($"{c.Name,-28} perplexity {c.Perplexity,10:F4}  KL {c.KlDivergence:F5}  top-1 " +
                $"{c.Top1Agreement:P1}");
            foreach (var sc in report.Scaling.Where(x => x.Accuracy is not null))
                Console.WriteLine($"scale {sc.Scale:G3}: perplexity {sc.Perplexity:F4}, "
                    + string.Join(", ", sc.Accuracy!.Select(kv => $"{kv.Key} {kv.Value:P1}")));
            if (report.RestoredShare is double share) Console.WriteLine($"restoring the super activation recovers {share:P1} of the perplexity lost " +
                $"by zeroing the super weights");
            foreach (var tr in report.Traces)
                Console.WriteLine($"super activation layer {tr.Layer} channel {tr.Channel}: "
                    + string.Join(", ", tr.Prompts.Select(p => $"token {p.Token} = {p.Value:G4}")) +
                    $" over {tr.Prompts.Count} prompts; mean |residual| after each block: "
                        + string.Join(" ", tr.ResidualMagnitude.Select(v => v.ToString("G3", CultureInfo.InvariantCulture))));
            if (report.NextToken is { } nx)
            {
                Console.WriteLine($"next token after \"{nx.Prompt}\":");
                Console.WriteLine("  original: " + string.Join(", ", nx.Original.Select(t => $"{t.Text} {t.Probability:P1}")));
                if (nx.Zeroed is { } zl) Console.WriteLine("  zeroed:   " + string.Join(", ", zl.Select(t => $"{t.Text} {t.Probability:P1}"))
                    + $" (the original top token: {nx.OriginalTopAfterZeroing:P1})");
                else Console.WriteLine("  (no super weight was detected: nothing to zero)");
            }
            if (report.Control is { } k) Console.WriteLine($"{"control (" + k.WeightsZeroed + " others zeroed)",-28} perplexity {k.Perplexity,10:F4} " +
                $" KL {k.KlDivergence:F5}  top-1 {k.Top1Agreement:P1}");
            Console.WriteLine($"wrote {Path.Combine(outDir, "analysis.json")} and analysis.html");
            return ExitCodes.Success;
        }));
        return cmd;
    }

    static StopwordSection StopwordTest(SuperWeightAblation ablation, LlamaModel model, string folder, int[] stream, string? words, string? ids,
        int promptCount, int context,
        IReadOnlyList<int[]> lambadaPrompts)
    {
        List<(int Id, string Label)> list;
        string source;
        if (ids != null)
        {
            int[] given = CliSupport.ParseIds(ids, "--stopword-ids")!;
            if (given.FirstOrDefault(i => i >= model.Config.VocabSize, -1) is int bad and >= 0)
                throw new SuperQuantException(ErrorCodes.InvalidArgument,
                    $"--stopword-ids: id {bad} is outside the model's vocabulary [0, {model.Config.VocabSize})");
            list = given.Select(i => (i, $"#{i}")).ToList();
            source = "given ids";
        }
        else
        {
            try
            {
                var tok = TokenizerLoader.Load(folder);
                var strings = words?.Split(',') ?? DefaultStopwords;
                list = new();
                foreach (string w in strings)
                {
                    var enc = tok.EncodeWithoutSpecials(w).ToList();
                    if (enc.Count == 1) list.Add((enc[0], w.Trim().Length == 0 ? w : w.Trim()));
                }
                source = "tokenizer (stopwords that are single tokens)";
            }
            catch (SuperQuantException)
            {
                list = stream.GroupBy(i => i).OrderByDescending(g => g.Count()).ThenBy(g => g.Key).Take(10).Select(g => (g.Key, $"#{g.Key}")).ToList();
                source = "no tokenizer: the 10 most frequent ids of the evaluation stream, as a stopword proxy";
            }
        }
        // The probabilities are read at each prompt's last token. Prompts: LAMBADA contexts when given (the paper),
        // else prefixes of the stream (64, 128, ... tokens, at most the context), which keep their history from the
        // stream's first token (small models such as stories260K collapse without it).
        var promptSet = lambadaPrompts.ToList();
        if (promptSet.Count > 0) source += $"; prompts: {promptSet.Count} LAMBADA contexts";
        for (int len = 64; promptSet.Count == 0 && len <= Math.Min(stream.Length, context)
            && promptSet.Count < promptCount; len += 64) promptSet.Add(stream[..len]);
        if (promptSet.Count == 0) promptSet.Add(stream[..Math.Min(stream.Length, context)]);
        var rows = ablation.Stopwords(promptSet, list).Select(p => new StopwordRow(p.TokenId, p.Label, p.Original, p.Zeroed, p.Ratio)).ToList();
        return new StopwordSection(source, promptSet.Count, rows);
    }


    /// <summary>The top next tokens, with and without the super weights (only the original's when none was found).</summary>
    static NextTokenSection NextTokenReport(SuperWeightAblation? ablation, LlamaModel model, string folder, string prompt, int[] ids)
    {
        var tok = TokenizerLoader.Load(folder);
        List<TokenProbability> Rows(IReadOnlyList<(int Id, double P)> list)
            => list.Select(x => new TokenProbability(x.Id, tok.Decode(new[] { x.Id }) is { Length: > 0 } piece ? piece : $"#{x.Id}", x.P)).ToList();
        if (ablation is null) return new NextTokenSection(prompt, Rows(SuperWeightAblation.TopNextTokens(model, ids, 5)), null, null);
        var result = ablation.NextToken(ids, 5);
        return new NextTokenSection(prompt, Rows(result.Original), Rows(result.Zeroed), result.OriginalTopAfterZeroing);
    }
}
