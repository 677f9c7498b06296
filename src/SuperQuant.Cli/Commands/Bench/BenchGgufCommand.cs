using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using SuperQuant.Core;
using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Llama;
using SuperQuant.Core.Quantization;
using SuperQuant.Core.SuperWeights;
using SuperQuant.LlamaCpp;
using SuperQuant.Manifest;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Gguf;
using SuperQuant.Models.Text;
using SuperQuant.Pipeline;

namespace SuperQuant.Cli.Commands.Bench;

/// <summary>
/// `superquant bench gguf`: per GGUF type, our quantizer (llama.cpp's reference arithmetic), our super-aware quantizer
/// (importance-weighted scale search, optional clipping and a raised super-weight matrix) and llama.cpp's own
/// quantizer (llama_model_quantize), all starting from the same F16 export and all judged by llama.cpp on the same
/// tokens against the fp32 model: file size, bits per weight, KL statistics, perplexity and quantize time, plus whether
/// our reference bytes equal llama.cpp's tensor for tensor.
/// </summary>
public static class BenchGgufCommand
{
    public static Command Create()
    {
        var model = new Option<string?>("--model", "-m")
        {
            Description = "checkpoint (default: a generated demo model with a planted super weight, " +
            "dims multiple of 256)"
        };
        var random = new Option<bool>("--random")
        {
            Description = "instead of the demo model: a random LLaMA with heavy-tailed weights and no " +
            "planted super weight (dim 768, ffn 2048, 3 layers, 12 query / 4 KV heads, vocabulary 1024)"
        };
        var types = new Option<string>("--types")
        {
            Description = "GGUF types to compare",
            DefaultValueFactory = _ => "q8_0,q6_k,q5_k_m,q4_k_m,q4_k_s,q4_0,q3_k_m,q2_k"
        };
        var calib = new Option<string?>("--calibration-tokens")
        {
            Description = "calibration token-id file (default: --calibration-count tokens " +
            "sampled from the model)"
        };
        var calibCount = new Option<int>("--calibration-count")
        {
            Description = "calibration tokens to use (sampled from the model, a sequence per " +
            "context window, when no file is given)", DefaultValueFactory = _ => 8192
        }.InRange(16, 1 << 20);
        var eval = new Option<string?>("--eval-tokens") { Description = "evaluation token-id file (default: --eval-count tokens sampled from the model)" };
        var evalCount = new Option<int>("--eval-count")
        {
            Description = "evaluation tokens sampled from the model when no file is given (seeds 2, 4, " +
            "...: never a calibration seed; over 1,024 a sequence per context window)", DefaultValueFactory = _ => 1024
        }.InRange(16, 1 << 20);
        var context = new Option<int>("--context") { Description = "evaluation window", DefaultValueFactory = _ => 256 }.InRange(8, 1 << 16);
        var z = new Option<double?>("--z") { Description = "super-aware clipping candidate z (default: auto, 6 and 4)" }.InRange(0.5, 100);
        var byRole = new Option<bool>("--imatrix-by-role")
        {
            Description = "also, per type, llama.cpp's imatrix rows on one tensor role at a time (attn_q/k/v, attn_output, ffn_gate/up, " +
            "ffn_down, output), every other tensor without: which roles the imatrix helps or hurts"
        };
        var threads = new Option<int?>("--threads") { Description = "threads for llama.cpp and our quantizer (default: one per core)" }.InRange(1, 1024);
        var cmd = new Command("gguf", "GGUF types side by side: our quantizer, our super-aware quantizer and llama.cpp's quantizer from the same F16 " +
            "export, judged by llama.cpp (size, bits/weight, KLD, same top, perplexity, seconds).")
        {
            model, random, types, calib, calibCount, eval, evalCount, context, z, threads, byRole,
        };
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            var typeList = r.GetValue(types)!.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(Names.ParseGgufType).ToList();
            string temp = Directory.CreateTempSubdirectory("superquant-bench-gguf-").FullName;
            try
            {
                string ckpt = r.GetValue(model) ?? (r.GetValue(random) ? Random(temp) : Demo(temp));
                Run(ckpt, typeList, r.GetValue(calib), r.GetValue(calibCount), r.GetValue(eval), r.GetValue(evalCount), r.GetValue(context),
                    r.GetValue(z), r.GetValue(threads), temp, r.GetValue(byRole));
            }
            finally { Directory.Delete(temp, recursive: true); }
            return ExitCodes.Success;
        }));
        return cmd;
    }

    /// <summary>A random LLaMA whose matrices take k-quants (dims multiples of 256), heavy-tailed like trained weights,
    /// with one planted super weight.</summary>
    static string Demo(string temp)
    {
        string dir = Path.Combine(temp, "demo");
        var config = new LlamaConfig
        {
            Architecture = "llama", HiddenSize = 512, IntermediateSize = 1536, NumLayers = 4, NumHeads = 8, NumKvHeads = 4, VocabSize = 512,
            MaxPositionEmbeddings = 512, TieWordEmbeddings = false,
        };
        RandomCheckpoint.Write(dir, config, seed: 4, superWeight: (1, 300, 1000), heavyTails: true);
        return dir;
    }

    static string Random(string temp)
    {
        string dir = Path.Combine(temp, "random");
        var config = new LlamaConfig
        {
            Architecture = "llama", HiddenSize = 768, IntermediateSize = 2048, NumLayers = 3, NumHeads = 12, NumKvHeads = 4, VocabSize = 1024,
            MaxPositionEmbeddings = 512, TieWordEmbeddings = false,
        };
        RandomCheckpoint.Write(dir, config, seed: 9, heavyTails: true);
        return dir;
    }

    static void Run(string ckpt, List<GgufFileType> types, string? calibPath, int calibCount, string? evalPath, int evalCount, int ctx, double? z,
        int? threads, string temp, bool byRole = false)
    {
        string f16 = Path.Combine(temp, "model.f16.gguf");
        int[] calibration, eval;
        string refPath = Path.Combine(temp, "reference.sqref");
        using (LlamaModel original = ModelLoader.Load(ckpt))
        {
            var c = original.Config;
            ctx = Math.Min(ctx, c.MaxPositionEmbeddings);
            calibration = calibPath is null ? Sample(original, calibCount, ctx, firstSeed: 1) : TokenIdFile.Read(calibPath, c.VocabSize, 2);
            eval = evalPath is null ? Sample(original, evalCount, ctx, firstSeed: 2) : TokenIdFile.Read(evalPath, c.VocabSize, 2);
            ReferenceFile.Record(refPath, "bench", t => original.Forward(t), eval, ctx, ctx / 2, c.VocabSize);
            calibration = calibration[..Math.Min(calibration.Length, calibCount)];
            GgufExporter.Write(f16, original, new GgufExport { FileType = GgufFileType.F16, Name = "bench" });
            Console.WriteLine($"model {ckpt}: {c.ParameterCount / 1e6:F2}M parameters, {c.NumLayers} layers, dim {c.HiddenSize}, ffn {c.IntermediateSize}; " +
                $"{eval.Length} evaluation tokens (context {ctx}), {calibration.Length} calibration tokens; llama.cpp threads " +
                    $"{threads ?? LlamaCppRuntime.DefaultThreads}");
        }
        using var reference = ReferenceFile.TryOpen(refPath, "bench", ReadVocab(f16), eval.Length, ctx, ctx / 2)!;

        // Everything below starts from the F16 export, as llama.cpp's quantizer does.
        using LlamaModel model = GgufModelLoader.Load(f16);
        var detection = new SuperWeightDetector().Detect(model, calibration[..Math.Min(10, calibration.Length)]);
        var clock = Stopwatch.StartNew();
        // The pipeline's own choice: statistics per calibration half, candidates scored on the other half by llama.cpp.
        using var folds = CalibrationFolds.Record(model, calibration, ctx, temp, s => s with
        {
            SuperWeights = detection.SuperWeights,
            ZCandidates = SuperAwareGguf.ZFor(z)
        });
        double importanceSeconds = clock.Elapsed.TotalSeconds;
        // Why an imatrix can hurt (docs/gguf.md): the first position of each window (BOS, the attention sink) carries
        // massive activations that dominate a few columns' mean squares. The same imatrix without those positions:
        var imatrixNoFirst = ImportanceRecorder.Record(model, calibration, ctx, skipFirstPositions: 1);
        Console.WriteLine($"imatrix, largest column mean square / median column (top 4 matrices): {Dominance(folds.Full.Importance!)}; " +
            $"each window's first position left out: {Dominance(imatrixNoFirst)}");
        Console.WriteLine($"super weights: " +
            $"{(detection.Found ? string.Join(", ", detection.SuperWeights.Select(s => $"({s.Layer}, {s.Row}, {s.Column})")) : "none found")}; " +
            $"statistics and held-out references {importanceSeconds:F2} s");
        // The one-build export (what models over the held-out choice's size get): all the calibration inputs, spilled.
        clock.Restart();
        using var spilled = SpilledInputs.Record(model, calibration, ctx, Path.Combine(temp, "inputs"));
        double spillSeconds = clock.Elapsed.TotalSeconds;
        // Size budgets: one sensitivity measurement on the same calibration statistics serves every type's size.
        clock.Restart();
        var imatrix = folds.Full.Importance!;
        var sensitivity = GgufBudget.Measure(model, imatrix, folds.Full.Covariance, calibration, ctx);
        double budgetSeconds = clock.Elapsed.TotalSeconds;
        Console.WriteLine($"size-budget sensitivity (each tensor, each type): {budgetSeconds:F2} s");
        Evaluate("F16 export", f16, 0, null);
        Console.WriteLine();
        Console.WriteLine($"{"type",-8} {"quantizer",-34} {"MiB",7} {"bpw",6} {"KLD mean",20} {"KLD p99",9} {"same top",9} {"PPL",16} {"seconds",8}  notes");

        foreach (var type in types)
        {
            string ours = Path.Combine(temp, $"ours.{type.Name()}.gguf"), theirs = Path.Combine(temp, $"llama.{type.Name()}.gguf");
            // Each quantizer runs once untimed, then timed: the first call of a type pays one-time costs (our JIT of
            // that type's kernels, llama.cpp's thread and table setup) that a second file does not.
            string? refused = null;
            double theirSeconds = 0;
            for (int pass = 0; pass < 2 && refused is null; pass++)
            {
                clock.Restart();
                try { LlamaCppQuantizer.Quantize(f16, theirs, type.Name(), threads); }
                catch (LlamaCppException e) { refused = e.Message; }
                theirSeconds = clock.Elapsed.TotalSeconds;
            }
            double ourSeconds = 0;
            for (int pass = 0; pass < 2; pass++)
            {
                clock.Restart();
                GgufExporter.Write(ours, model, new GgufExport { FileType = type, Name = "bench" });
                ourSeconds = clock.Elapsed.TotalSeconds;
            }
            var baseline = Evaluate($"{type.Name()}", ours, ourSeconds, "superquant", refused is null ? SameBytes(ours, theirs) : "llama.cpp refused");

            // The super-aware export's candidates, scored as the pipeline scores them (held-out calibration KLD), each
            // then shown as built from all the calibration tokens and measured on the evaluation tokens.
            clock.Restart();
            var scores = folds.Score(model, type, "bench", null, Path.Combine(temp, "scratch"), threads);
            double scoreSeconds = clock.Elapsed.TotalSeconds;
            int best = CalibrationFolds.Choose(scores);
            // An imatrix type's reference candidate is llama.cpp's rows with the imatrix, not the file above.
            bool weightedReference = type.NeedsImportance();
            DivergenceResult? shipped = best == 0 && !weightedReference ? baseline : null;
            var candidates = folds.Full.Candidates(type, "bench", null);
            for (int i = weightedReference ? 0 : 1; i < candidates.Count; i++)
            {
                string path = Path.Combine(temp, $"aware.{type.Name()}.gguf");
                clock.Restart();
                GgufExporter.Write(path, model, candidates[i].Export);
                double seconds = clock.Elapsed.TotalSeconds + importanceSeconds;
                var measured = Evaluate("", path, seconds, "super-aware: " + candidates[i].Label.Replace(" rows", ""),
                    scores.Count > 0 ? $"held-out KLD {scores[i].HeldOutKl:F6} (reference rows {scores[0].HeldOutKl:F6})" : null);
                if (i == best) shipped = measured;
            }
            string oneBuildPath = Path.Combine(temp, $"onebuild.{type.Name()}.gguf");
            clock.Restart();
            GgufExporter.Write(oneBuildPath, model, new SuperAwareGguf
            {
                Importance = spilled.Importance, Covariance = spilled, SuperWeights = detection.SuperWeights, ZCandidates = SuperAwareGguf.ZFor(z),
            }.OneBuild(type, "bench", null, spilled));
            Evaluate("", oneBuildPath, clock.Elapsed.TotalSeconds + spillSeconds, "super-aware: one build (no held-out)");
            // The shipped file against llama.cpp's (our reference rows are its bytes; where it refuses the type, ours):
            // the KLD difference token by token, with its paired standard error.
            var delta = shipped!.KlDifferenceFrom(baseline);
            Console.WriteLine($"{"",-8} {"  -> super-aware ships",-34} {candidates[best].Label} (choice: {scoreSeconds:F1} s); KLD vs " +
                $"{(refused is null ? "llama.cpp's file" : "our reference rows")} " +
                $"{delta.Value.ToString("G3", CultureInfo.InvariantCulture)} ± {delta.StandardError.ToString("G2", CultureInfo.InvariantCulture)} " +
                    $"paired ({100 * delta.Value / baseline.KlDivergence.Value:+0.0;-0.0} %)");
            if (detection.Found && best > 0)
            {
                string path = Path.Combine(temp, $"raised.{type.Name()}.gguf");
                clock.Restart();
                GgufExporter.Write(path, model, (folds.Full with { RaiseSuperWeightTensors = true }).Candidates(type, "bench", null)[best].Export);
                Evaluate("", path, clock.Elapsed.TotalSeconds + importanceSeconds, "  + raised SW matrix");
            }
            if (refused is null) Evaluate("", theirs, theirSeconds, "llama.cpp quantizer");
            else Console.WriteLine($"{"",-8} {"llama.cpp quantizer",-34} refused: {refused.Split('\n')[0]}");
            // llama-quantize --imatrix with the same calibration statistics (its bytes: IQTypeTests), and our size budget
            // at that file's size.
            string imatrixPath = Path.Combine(temp, $"imatrix.{type.Name()}.gguf");
            clock.Restart();
            var imatrixFile = GgufExporter.Write(imatrixPath, model, new GgufExport
            {
                FileType = type, Name = "bench", Importance = imatrix,
                ImatrixRows = true
            });
            Evaluate("", imatrixPath, clock.Elapsed.TotalSeconds + importanceSeconds, "llama.cpp rows + imatrix");
            string noFirstPath = Path.Combine(temp, $"imatrix-nofirst.{type.Name()}.gguf");
            GgufExporter.Write(noFirstPath, model, new GgufExport { FileType = type, Name = "bench", Importance = imatrixNoFirst, ImatrixRows = true });
            Evaluate("", noFirstPath, 0, "  imatrix without first positions");
            if (byRole)
                foreach (var (role, projections) in new[]
                {
                    ("q/k/v", new[] { Projection.Q, Projection.K, Projection.V }), ("attn_output", new[] { Projection.O }),
                    ("gate/up", new[] { Projection.Gate, Projection.Up }), ("ffn_down", new[] { Projection.Down }), ("output", new[] { Projection.LmHead }),
                })
                {
                    string rolePath = Path.Combine(temp, $"imatrix-role.{type.Name()}.gguf");
                    var only = imatrix.Where(kv => projections.Contains(kv.Key.Projection)).ToDictionary(kv => kv.Key, kv => kv.Value);
                    GgufExporter.Write(rolePath, model, new GgufExport { FileType = type, Name = "bench", Importance = only, ImatrixRows = true });
                    Evaluate("", rolePath, 0, $"  imatrix on {role} only");
                }
            string budgetPath = Path.Combine(temp, $"budget.{type.Name()}.gguf");
            clock.Restart();
            var (budgeted, _) = GgufBudget.Write(budgetPath, model, new GgufTarget(imatrixFile.FileBytes, null), sensitivity, imatrix, "bench", null, ctx);
            Evaluate("", budgetPath, clock.Elapsed.TotalSeconds + importanceSeconds + budgetSeconds, "size budget at that size", budgeted.TypeSummary);
        }

        DivergenceResult Evaluate(string type, string path, double seconds, string? quantizer, string? bytes = null)
        {
            using var engine = LlamaCppEngine.Open(path, ctx, threads);
            var d = Evaluator.Divergence(reference, engine.Logits, eval);
            long size = new FileInfo(path).Length;
            double bpw = 8.0 * size / model.Config.ParameterCount;
            Console.WriteLine($"{type,-8} {quantizer ?? "",-34} {size / 1048576.0,7:F3} {bpw,6:F3} {d.KlDivergence.Value,10:F6} ± " +
                $"{d.KlDivergence.StandardError,-8:F6} {d.KlP99,9:F5} {d.Top1Agreement.Value,9:P2} {d.ModifiedPerplexity.Value,8:F3} ± " +
                $"{d.ModifiedPerplexity.StandardError,-6:F3} {(seconds > 0 ? seconds.ToString("F2", CultureInfo.InvariantCulture) : ""),8}  {bytes}");
            return d;
        }
    }

    /// <summary>The matrices whose imatrix is most dominated by one column: largest mean square over the median, and
    /// which column.</summary>
    static string Dominance(IReadOnlyDictionary<LinearSite, float[]> imatrix) => string.Join(", ", imatrix
        .Select(kv =>
        {
            float[] sorted = kv.Value.Order().ToArray();
            float max = sorted[^1];
            return (Site: kv.Key, Ratio: max / Math.Max(sorted[sorted.Length / 2], float.Epsilon), Column: Array.IndexOf(kv.Value, max));
        })
        .OrderByDescending(x => x.Ratio).Take(4)
        .Select(x => $"{(x.Site.Layer < 0 ? "" : $"blk.{x.Site.Layer}.")}{x.Site.Projection} {x.Ratio:G3} (column {x.Column})"));

    /// <summary>Text sampled from the model itself at temperature 1: up to 1,024 tokens one sequence, more a sequence per
    /// context window (so a window never spans two samples), seeds firstSeed, firstSeed + 2, ...: calibration takes the
    /// odd seeds, evaluation the even ones, so the two never share a sample.</summary>
    static int[] Sample(LlamaModel model, int count, int ctx, int firstSeed)
    {
        var tokens = new List<int>(count);
        for (int i = 0; tokens.Count < count; i++)
        {
            int length = Math.Min(count - tokens.Count, count <= 1024 ? count : ctx);
            tokens.AddRange(Sampler.Generate(model, new[] { model.Config.BosTokenId ?? 1 }, length - 1, 1.0, seed: firstSeed + 2 * i));
        }
        return tokens.ToArray();
    }

    static int ReadVocab(string gguf) => (int)GgufFile.Read(gguf).Tensors.First(t => t.Name == "token_embd.weight").Dims[1];

    /// <summary>"identical (N tensors)" when every tensor's type and bytes equal llama.cpp's, else what differs.</summary>
    public static string SameBytes(string ours, string theirs)
    {
        var a = GgufFile.Read(ours);
        var b = GgufFile.Read(theirs);
        int same = 0;
        foreach (var t in a.Tensors)
        {
            var u = b.Tensors.FirstOrDefault(x => x.Name == t.Name);
            if (u is null) return $"{t.Name} missing in llama.cpp's file";
            if (u.Type != t.Type) return $"{t.Name}: {t.Type} vs llama.cpp {u.Type}";
            if (!a.ReadRaw(t.Name).AsSpan().SequenceEqual(b.ReadRaw(u.Name))) return $"{t.Name}: bytes differ";
            same++;
        }
        return $"identical ({same} tensors)";
    }
}
