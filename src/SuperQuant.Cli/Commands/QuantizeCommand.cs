using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using SuperQuant.Cli.Reports;
using SuperQuant.Core;
using SuperQuant.Manifest;
using SuperQuant.Pipeline;

namespace SuperQuant.Cli.Commands;

/// <summary>`superquant quantize`: options -> one <see cref="QuantizationRequest"/> -> <see cref="QuantizationPipeline"/>.</summary>
public static class QuantizeCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m")
        {
            Description = "checkpoint: Hugging Face folder, .safetensors inside one, or llama2.c .bin",
            Required = true
        };
        var method = new Option<string>("--method")
        {
            Description = "rtn | super-aware (detect super weights, clip at z, round, keep super weights " +
            "exact) | smoothquant | hadamard | duquant (calibrated activation transforms fused into the weights, for W/A)",
            DefaultValueFactory = _ => "super-aware"
        }
            .OneOf(Names.MethodNames.ToArray());
        var bits = new Option<int>("--bits", "-b") { Description = "weight bits, 2..8", DefaultValueFactory = _ => 4 }.InRange(2, 8);
        var activationBits = new Option<int>("--activation-bits")
        {
            Description = "activation bits, 4..16 (16 = weight-only); below 16 the packed " +
            "artifact (format v2) carries the activation quantization", DefaultValueFactory = _ => 16
        }.InRange(4, 16);
        var actScale = new Option<string>("--activation-scale")
        {
            Description = "W/A runs: per-token (default) or per-tensor activation scales (the " +
            "Super Weight paper's setting: with per-token scales a super activation spoils only its own token)", DefaultValueFactory = _ => "per-token"
        }
            .OneOf(ActivationSettings.Scales.ToArray());
        var actQuantizer = new Option<string>("--activation-quantizer")
        {
            Description = "W/A runs: symmetric or asymmetric (integer zero point, " +
            "DuQuant's quantizer); default asymmetric for duquant, symmetric otherwise", DefaultValueFactory = _ => "default"
        }
            .OneOf(ActivationSettings.Quantizers.Append("default").ToArray());
        var superActivation = new Option<string>("--super-activation")
        {
            Description = "super-aware W/A: channel (keep the super activation's " +
            "channels in fp32 at every token, ours) or scalar (the paper: only the super activation itself, median in, fp16 value back)",
            DefaultValueFactory = _ => "channel"
        }
            .OneOf(ActivationSettings.SuperActivations.ToArray());
        var block = new Option<string>("--block")
        {
            Description = "block size: 32..4096 along each row, or 'channel' (one block per row); with " +
            "--variant paper a power of two from 32 over the flattened tensor, or 'tensor'", DefaultValueFactory = _ => "128"
        };
        block.Validators.Add(r =>
        {
            if (ParseBlock(r.GetValueOrDefault<string>()) is null) r.AddError($"{ErrorCodes.InvalidArgument}: --block " +
            $"'{ManifestReader.Excerpt(r.GetValueOrDefault<string>() ?? "")}' (expected 32..4096, channel, or with --variant paper a power of two or " +
            $"tensor)");
        });
        var variant = new Option<string>("--variant")
        {
            Description = "packed (ours: row blocks, fp16 scale + zero point, whole-matrix z clip) | " +
            "paper (the Super Weight paper's code: flattened blocks, per-block |W| clip, float min offset)", DefaultValueFactory = _ => "packed"
        }
            .OneOf(Names.VariantNames.ToArray());
        var clip = new Option<string>("--clip")
        {
            Description = "clip method, the reference's names: zscore | no | block_percentage | " +
            "tensor_percentage | iqr (all but zscore/no need --variant paper); --z is its threshold", DefaultValueFactory = _ => "zscore"
        }
            .OneOf(Names.ClipNames.ToArray());
        var levels = new Option<string>("--levels")
        {
            Description = "int | int-shifted (the reference's scale_shift) | normal-float (NF4/NF3 poles); " +
            "--variant paper", DefaultValueFactory = _ => "int"
        }
            .OneOf(Names.LevelNames.ToArray());
        var z = new Option<string>("--z")
        {
            Description = "clip threshold (z for zscore, a fraction for *_percentage, an IQR multiple for iqr): a " +
            "positive number, 'auto' (tuned on the calibration data) or 'none'", DefaultValueFactory = _ => "auto"
        };
        z.Validators.Add(r =>
        {
            if (!Names.TryParseZ(r.GetValueOrDefault<string>(),
            out _)) r.AddError($"{ErrorCodes.InvalidArgument}: --z '{ManifestReader.Excerpt(r.GetValueOrDefault<string>() ?? "")}' (expected a " +
            $"positive number, auto or none)");
        });
        var calibText = new Option<string?>("--calibration-text") { Description = "calibration text file (z auto, smoothquant, duquant, super-aware GGUF)" };
        var calibTokens = new Option<string?>("--calibration-tokens") { Description = "calibration token-id file" };
        var output = new Option<string?>("--out", "-o") { Description = "write the packed artifact (.sqpk.safetensors) here" };
        var gguf = new Option<string?>("--gguf") { Description = "write a GGUF for llama.cpp / LLamaSharp here" };
        var ggufTarget = new Option<string?>("--gguf-target")
        {
            Description = "GGUF size budget instead of a named type: size=1.9GB or bpw=3.5; each " +
            "tensor's type is chosen from its measured sensitivity on the calibration data (needs --calibration-*)"
        };
        ggufTarget.Validators.Add(r =>
        {
            string? v = r.GetValueOrDefault<string?>(); if (v is not null
            && GgufTarget.TryParse(v) is null) r.AddError($"{ErrorCodes.InvalidArgument}: --gguf-target '{ManifestReader.Excerpt(v)}' (expected " +
            $"{GgufTarget.Forms})");
        });
        var ggufType = new Option<string?>("--gguf-type")
        {
            Description = $"GGUF file type ({string.Join(", ", Names.GgufTypeNames)}); default from " +
            $"--bits: 8 q8_0, 6 q6_k, 5 q5_k_m, 4 q4_k_m, 3 q3_k_m, 2 q2_k"
        };
        ggufType.Validators.Add(r =>
        {
            string? v = r.GetValueOrDefault<string?>(); if (v is not null
            && !Names.TryParseGgufType(v, out _)) r.AddError($"{ErrorCodes.InvalidArgument}: --gguf-type '{ManifestReader.Excerpt(v)}' (expected one " +
            $"of {string.Join(", ", Names.GgufTypeNames)})");
        });
        var raise = new Option<bool>("--gguf-raise-super")
        {
            Description = "super-aware GGUF: write the ffn_down matrices holding super weights one " +
            "type higher (a little larger file)"
        };
        var choice = new Option<string>("--gguf-choice")
        {
            Description = "super-aware GGUF: auto (held-out up to 300M parameters, else one-build), held-out (candidate files built on one " +
            "calibration half and measured by llama.cpp on the other; about 8 builds) or one-build (per row the lowest layer-output error " +
            "among llama.cpp's and GPTQ rows; one build)",
            DefaultValueFactory = _ => "auto",
        }.AcceptOnlyFromAmong(Names.GgufChoiceNames.ToArray());
        var evalTokens = new Option<string?>("--eval-tokens")
        {
            Description = "after quantizing, measure every artifact against the original on this " +
            "token-id file (GGUF in llama.cpp)"
        };
        var evalText = new Option<string?>("--eval-text") { Description = "same, on a text file" };
        var context = new Option<int>("--context") { Description = "evaluation and calibration window", DefaultValueFactory = _ => 512 }.InRange(2, 1 << 20);
        var prompt = new Option<string?>("--prompt")
        {
            Description = "detection prompt text (default: the calibration stream's start, else the " +
            "paper's prompt)"
        };
        var promptTokens = new Option<string?>("--prompt-tokens") { Description = "detection prompt as token ids (for models without a tokenizer)" };
        var threads = new Option<int?>("--threads") { Description = "llama.cpp threads (default: one per core)" }.InRange(1, 1024);
        var json = new Option<bool>("--json") { Description = "print a JSON summary" };
        var device = CliSupport.DeviceOption();
        var memory = CliSupport.MemoryOption();
        var cmd = new Command("quantize", "Quantize a checkpoint to the packed artifact and/or GGUF; with --eval-*, measure each file as its runtime " +
            "loads it.\n" + ExitCodes.HelpText)
        {
            model, method, bits, activationBits, actScale, actQuantizer, superActivation, block, variant, clip, levels, z, calibText, calibTokens,
                output, gguf, ggufType, ggufTarget, raise, choice, evalTokens, evalText, context, prompt, promptTokens, threads, json, device, memory,
        };
        cmd.Validators.Add(r =>
        {
            if (r.GetValue(output) is null && r.GetValue(gguf) is null) r.AddError("give --out (packed artifact) and/or --gguf");
            // Options that shape a GGUF do nothing without one: a usage error, not a silently ignored flag.
            if (r.GetValue(gguf) is null && r.GetResult(ggufType) is { Implicit: false }) r.AddError("--gguf-type applies to a GGUF export: give " +
                "--gguf FILE as well");
            if (r.GetValue(gguf) is null && r.GetResult(raise) is { Implicit: false }) r.AddError("--gguf-raise-super applies to a GGUF export: give " +
                "--gguf FILE as well");
            if (r.GetValue(gguf) is null && r.GetResult(ggufTarget) is { Implicit: false }) r.AddError("--gguf-target applies to a GGUF export: give " +
                "--gguf FILE as well");
            if (r.GetResult(ggufType) is { Implicit: false }
                && r.GetResult(ggufTarget) is { Implicit: false }) r.AddError("give one of --gguf-type (a named type) or --gguf-target (a size budget)");
            if (r.GetValue(calibText) is not null && r.GetValue(calibTokens) is not null) r.AddError("give one of --calibration-text or --calibration-tokens");
            if (r.GetValue(evalText) is not null && r.GetValue(evalTokens) is not null) r.AddError("give one of --eval-text or --eval-tokens");
            if (r.GetValue(prompt) is not null && r.GetValue(promptTokens) is not null) r.AddError("give one of --prompt or --prompt-tokens");
        });
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            bool asJson = r.GetValue(json);
            int wBits = r.GetValue(bits);
            TokenSource? Source(Option<string?> textOpt, Option<string?> idsOpt) =>
                r.GetValue(textOpt) is string t ? new TokenSource(t, true, Origin.Option(textOpt.Name))
                : r.GetValue(idsOpt) is string i ? new TokenSource(i, false, Origin.Option(idsOpt.Name)) : null;
            var artifacts = new List<ArtifactSpec>();
            if (r.GetValue(output) is string o) artifacts.Add(new PackedSpec(CliSupport.OutputFile(o, "--out"), Origin.Option("--out")));
            if (r.GetValue(gguf) is string g)
                artifacts.Add(r.GetValue(ggufTarget) is string target
                    ? new GgufSpec(CliSupport.OutputFile(g, "--gguf"), DefaultGgufType(wBits),
                        Origin.Option("--gguf-target"))
                    { Target = GgufTarget.TryParse(target) }
                    : new GgufSpec(CliSupport.OutputFile(g, "--gguf"), r.GetValue(ggufType) is string gt ? Names.ParseGgufType(gt)
                        : DefaultGgufType(wBits), Origin.Option("--gguf-type")));
            var request = new QuantizationRequest
            {
                Id = Path.GetFileNameWithoutExtension(Path.TrimEndingDirectorySeparator(r.GetValue(model)!)),
                Checkpoint = Path.GetFullPath(r.GetValue(model)!),
                Method = Names.ParseMethod(r.GetValue(method)!), WeightBits = wBits, ActivationBits = r.GetValue(activationBits),
                BlockSize = ParseBlock(r.GetValue(block))!.Value, Z = Names.TryParseZ(r.GetValue(z), out var zv) ? zv : null,
                Variant = Names.ParseVariant(r.GetValue(variant)!), Clip = Names.ParseClip(r.GetValue(clip)!), Levels = Names.ParseLevels(r.GetValue(levels)!),
                Activations = new ActivationSettings(r.GetValue(actScale)!, r.GetValue(actQuantizer) is "default" ? null : r.GetValue(actQuantizer),
                    r.GetValue(superActivation)!),
                Calibration = Source(calibText, calibTokens), Evaluation = Source(evalText, evalTokens),
                PromptTokens = CliSupport.ParseIds(r.GetValue(promptTokens), "--prompt-tokens"), PromptText = r.GetValue(prompt),
                Context = r.GetValue(context), Artifacts = artifacts,
            }.Validate();
            CliSupport.CheckOutputs(
                new[] { (request.Checkpoint, "the checkpoint (-m)") }.Concat(new[] { request.Calibration,
                    request.Evaluation }.OfType<TokenSource>().Select(s => (s.Path, s.Origin.Where))),
                artifacts.Select(a => (a.Path, a is PackedSpec ? "--out" : "--gguf")));
            var log = new ConsoleLog(asJson);
            var result = QuantizationPipeline.Run(request, new PipelineOptions
            {
                Device = CliSupport.ResolveDevice(r.GetValue(device), asJson), Log = log, Cancel = CliSupport.Cancellation,
                Threads = r.GetValue(threads), RaiseSuperWeightTensors = r.GetValue(raise), Memory = Names.ParseMemory(r.GetValue(memory) ?? "auto"),
                GgufChoice = Names.ParseGgufChoice(r.GetValue(choice)!),
            });
            foreach (var a in result.Artifacts) a.File.Promote(); // no gate here: the user asked for these files
            if (result.ZSearch.Count > 0 && !asJson)
                Console.WriteLine("z search (mean relative reconstruction error): "
                    + string.Join(", ", result.ZSearch.Select(s => $"{Fmt(s.Z)}: {s.Error:G3}")) + $" -> z = {(result.Z is double zz ? Fmt(zz) : "none")}");
            if (asJson)
                Console.WriteLine(JsonSerializer.Serialize(new
                {
                    model = request.Checkpoint, method = request.Method.Name(), bits = wBits, activation_bits = request.ActivationBits,
                    block_size = Names.BlockSizeName(request.BlockSize), variant = request.Variant.Name(), clip = request.Clip.Name(),
                    levels = request.Levels.Name(),
                    z = result.Z,
                    super_weights = result.SuperWeights.Select(s => new[] { s.Layer, s.Row, s.Column }).ToList(), detection = result.Detection,
                    artifacts = result.Artifacts.Select(ArtifactReport.Json).ToList(),
                }, CliSupport.Json));
            else
                foreach (var a in result.Artifacts)
                    Console.WriteLine(ArtifactReport.Line(a));
            return ExitCodes.Success;
        }));
        return cmd;
    }

    public static GgufFileType DefaultGgufType(int bits) => bits switch
    {
        8 => GgufFileType.Q8_0,
        6 or 7 => GgufFileType.Q6_K,
        5 => GgufFileType.Q5_K_M,
        4 => GgufFileType.Q4_K_M,
        3 => GgufFileType.Q3_K_M,
        _ => GgufFileType.Q2_K,
    };

    static string Fmt(double z) => double.IsPositiveInfinity(z) ? "none" : z.ToString("G4", CultureInfo.InvariantCulture);

    public static int? ParseBlock(string? s) => Names.ParseBlockSize(s);

}
