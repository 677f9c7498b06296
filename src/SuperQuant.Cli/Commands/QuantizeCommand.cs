using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Llama;
using SuperQuant.Core.Quantization;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Models.Artifacts;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Gguf;

namespace SuperQuant.Cli.Commands;

/// <summary>`superquant quantize`: weight-only quantization to the packed artifact and/or GGUF.</summary>
public static class QuantizeCommand
{
    public static Command Create()
    {
        var o = new DetectionOptions();
        var method = new Option<string>("--method") { Description = "rtn | super-aware (detect super weights, clip at z, round-to-nearest, restore super weights in fp16) | smoothquant | hadamard | duquant (calibrated activation transforms fused into the weights, for W/A quantization)", DefaultValueFactory = _ => "super-aware" };
        method.AcceptOnlyFromAmong(ActivationPlan.Methods);
        var activationBits = new Option<int>("--activation-bits") { Description = "activation bits, 4..16 (16 = weight-only); below 16 the packed artifact (format v2) carries the activation quantization", DefaultValueFactory = _ => 16 };
        var bits = new Option<int>("--bits", "-b") { Description = "weight bits, 2..8", DefaultValueFactory = _ => 4 };
        var block = new Option<string>("--block") { Description = "block size along the input dimension, 32..4096, or 'channel' (one block per row)", DefaultValueFactory = _ => "128" };
        var z = new Option<string>("--z") { Description = "z-score clip threshold: a number, 'auto' (tuned on --calibration by reconstruction error) or 'none'", DefaultValueFactory = _ => "auto" };
        var calibText = new Option<string?>("--calibration-text") { Description = "calibration text file (for --z auto, smoothquant and duquant)" };
        var calibTokens = new Option<string?>("--calibration-tokens") { Description = "calibration token-id file (for --z auto, smoothquant and duquant)" };
        var output = new Option<string?>("--out", "-o") { Description = "write the packed artifact (.safetensors) here" };
        var gguf = new Option<string?>("--gguf") { Description = "also write GGUF for llama.cpp/LLamaSharp here" };
        var ggufMode = new Option<string>("--gguf-mode") { Description = "f16 | q8_0 | q4_0 | super-aware (Q4_0, with the matrices holding super weights in Q8_0)", DefaultValueFactory = _ => "super-aware" };
        var evalTokens = new Option<string?>("--eval-tokens") { Description = "after quantizing, report KL/top-1/perplexity vs the original on this token-id file" };
        var evalText = new Option<string?>("--eval-text") { Description = "same, on a text file" };
        var context = new Option<int>("--context") { Description = "evaluation window", DefaultValueFactory = _ => 512 };
        var json = new Option<bool>("--json") { Description = "print a JSON summary" };
        var cmd = new Command("quantize", "Quantize a checkpoint (weights: RTN or super-outlier-aware; weights and activations: SmoothQuant, Hadamard, DuQuant or --activation-bits) and write the packed artifact and/or GGUF.\n" + ExitCodes.HelpText);
        foreach (var opt in o.All) cmd.Options.Add(opt);
        foreach (var opt in new Option[] { method, bits, activationBits, block, z, calibText, calibTokens, output, gguf, ggufMode, evalTokens, evalText, context, json }) cmd.Options.Add(opt);
        cmd.Validators.Add(r =>
        {
            if (r.GetValue(output) is null && r.GetValue(gguf) is null) r.AddError("give --out (packed artifact) and/or --gguf");

        });
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            bool asJson = r.GetValue(json);
            var dev = CliSupport.ResolveDevice(r.GetValue(o.Device), asJson);
            string path = r.GetValue(o.Model)!;
            string folder = EvalCommand.CheckpointFolder(path);
            string methodName = r.GetValue(method)!;
            int aBits = r.GetValue(activationBits);
            if (aBits < 4 || aBits > 16) throw new SuperQuantException(ErrorCodes.InvalidArgument, $"--activation-bits {aBits} (expected 4..16)");
            if (r.GetValue(gguf) is not null && (aBits < 16 || methodName is "hadamard" or "duquant"))
                throw new SuperQuantException(ErrorCodes.InvalidArgument, "GGUF holds weights only: hadamard, duquant and --activation-bits below 16 need the packed artifact (--out)");
            var options = new WeightQuantizationOptions
            {
                Method = ActivationPlan.WeightMethodFor(methodName),
                Bits = r.GetValue(bits),
                BlockSize = ParseBlock(r.GetValue(block)!),
                Z = ParseZ(r.GetValue(z)!),
            };
            BlockRtnQuantizer.Validate(options.Bits, options.BlockSize);
            GgufMode mode = r.GetValue(ggufMode) switch
            {
                "f16" => GgufMode.F16, "q8_0" => GgufMode.Q8_0, "q4_0" => GgufMode.Q4_0, "super-aware" => GgufMode.SuperAware,
                var m => throw new SuperQuantException(ErrorCodes.InvalidArgument, $"--gguf-mode '{m}' (expected f16, q8_0, q4_0, super-aware)"),
            };
            void Say(string s) { if (!asJson) Console.Error.WriteLine(s); }

            using LlamaModel model = ModelLoader.Load(path, dev);
            // With an evaluation file, the unquantized logits are recorded first (one model in memory, not two).
            int[]? eval = r.GetValue(evalTokens) != null || r.GetValue(evalText) != null
                ? EvalCommand.LoadTokens(r.GetValue(evalText), r.GetValue(evalTokens), folder, model.Config.VocabSize, model.Config.BosTokenId) : null;
            int ctx = Math.Min(r.GetValue(context), model.Config.MaxPositionEmbeddings);
            using ReferenceLogits? reference = eval is null ? null
                : Evaluator.RecordReference(t => model.Forward(t), eval, ctx, Math.Max(1, ctx / 2), new ConsoleProgress("reference", !asJson).Report);
            IReadOnlyList<SuperWeight> superWeights = Array.Empty<SuperWeight>();
            string detectionSummary = "not run (rtn)";
            DetectionReport? detection = null;
            int[]? prompt = null;
            bool needsDetection = options.Method == WeightMethod.SuperAware || methodName == "super-aware" || (r.GetValue(gguf) != null && mode == GgufMode.SuperAware);
            if (needsDetection)
            {
                (prompt, _) = o.PromptFor(r, model, path);
                detection = o.Detector(r).Detect(model, prompt);
                superWeights = detection.SuperWeights;
                detectionSummary = Reports.DetectionSection.From(detection, null, KnownSuperWeights.For(model.Config)).Summary;
                Say("detection: " + detectionSummary);
            }
            if (r.GetValue(gguf) is string ggufPath)
            {
                var vocabulary = GgufVocabulary.FromCheckpoint(path, model.Config);
                Say("GGUF tokenizer: " + (vocabulary?.ToString() ?? "none found (no_vocab: llama.cpp runs token ids only)"));
                var types = GgufWriter.Write(ggufPath, model, mode, superWeights, Path.GetFileNameWithoutExtension(path), vocabulary);
                Say($"wrote {ggufPath}: " + string.Join(", ", types.GroupBy(t => t.Type).Select(g => $"{g.Count()} {g.Key}")));
            }
            int[]? calibration = r.GetValue(calibText) != null || r.GetValue(calibTokens) != null
                ? EvalCommand.LoadTokens(r.GetValue(calibText), r.GetValue(calibTokens), folder, model.Config.VocabSize, model.Config.BosTokenId) : null;
            if (calibration is null && ActivationPlan.NeedsCalibration(methodName))
                throw new SuperQuantException(ErrorCodes.InvalidArgument, $"--method {methodName} needs --calibration-text or --calibration-tokens");
            if (calibration is null && options.Method == WeightMethod.SuperAware && options.Z is null)
                throw new SuperQuantException(ErrorCodes.InvalidArgument, "--z auto needs --calibration-text or --calibration-tokens (or give --z NUMBER / none)");
            // Hadamard and the per-token methods need no statistics; they calibrate on the prompt when nothing else is given.
            if ((ActivationPlan.Transforms(methodName) || aBits < 16) && calibration is null) prompt ??= o.PromptFor(r, model, path).Ids;
            ActivationQuantizer? activations = ActivationPlan.Prepare(model, methodName, options.Bits, aBits, calibration ?? prompt ?? Array.Empty<int>(), detection);
            if (activations is not null) Say($"calibrated {methodName} activation handling (W{options.Bits}A{aBits})");
            var progress = new ConsoleProgress("quantize", !asJson);
            using QuantizationResult result = ModelQuantizer.Quantize(model, options, ActivationPlan.Transforms(methodName) ? Array.Empty<SuperWeight>() : superWeights, calibration, progress.Report);
            model.Hooks = activations;
            if (result.ZSearch.Count > 0)
                Say("z search (mean relative reconstruction error): " + string.Join(", ", result.ZSearch.Select(s => $"{Fmt(s.Z)}: {s.Error:G3}")) + $" -> z = {Fmt(result.Z)}");
            if (r.GetValue(output) is string outPath)
            {
                Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(outPath))!);
                PackedArtifact.Write(outPath, model, result, CheckpointHash.Compute(path), activations: activations);
                Say($"wrote {outPath} ({new FileInfo(outPath).Length / 1048576.0:F2} MiB, {result.BitsPerWeight:F3} bits per quantized weight)");
            }
            DivergenceResult? quality = null;
            if (reference is not null)
                quality = Evaluator.Divergence(reference, t => model.Forward(t), eval!, new ConsoleProgress("eval", !asJson).Report);
            var summary = new
            {
                model = path, method = methodName, bits = options.Bits, activation_bits = aBits, block_size = options.BlockSize, z = double.IsPositiveInfinity(result.Z) ? (double?)null : result.Z,
                super_weights = superWeights.Select(s => new[] { s.Layer, s.Row, s.Column }).ToList(), detection = detectionSummary,
                bits_per_weight = result.BitsPerWeight, packed = r.GetValue(output), gguf = r.GetValue(gguf),
                kl_divergence = quality?.KlDivergence.Value, top1_agreement = quality?.Top1Agreement.Value,
                perplexity = quality?.ModifiedPerplexity.Value, reference_perplexity = quality?.ReferencePerplexity.Value,
            };
            if (asJson) Console.WriteLine(JsonSerializer.Serialize(summary, CliSupport.Json));
            else if (quality is not null)
                Console.WriteLine($"quality vs original: KL {quality.KlDivergence.Value:F5} +/- {quality.KlDivergence.StandardError:F5}, top-1 {quality.Top1Agreement.Value:P2}, perplexity {quality.ModifiedPerplexity.Value:F4} (original {quality.ReferencePerplexity.Value:F4})");
            return ExitCodes.Success;
        }));
        return cmd;
    }

    static string Fmt(double z) => double.IsPositiveInfinity(z) ? "none" : z.ToString("G4", CultureInfo.InvariantCulture);

    public static int ParseBlock(string s) => s is "channel" or "per-channel" or "0" ? 0
        : int.TryParse(s, out int b) ? b : throw new SuperQuantException(ErrorCodes.InvalidArgument, $"--block '{s}' (expected a number or 'channel')");

    public static double? ParseZ(string s) => s switch
    {
        "auto" => null,
        "none" => double.PositiveInfinity,
        _ => double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double z) && z > 0 ? z
            : throw new SuperQuantException(ErrorCodes.InvalidArgument, $"--z '{s}' (expected a positive number, auto or none)"),
    };
}
