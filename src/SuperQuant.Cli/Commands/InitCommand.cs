using System.CommandLine;
using SuperQuant.Core;
using SuperQuant.Manifest;
using SuperQuant.Models.Checkpoints;

namespace SuperQuant.Cli.Commands;

/// <summary>`superquant init`: writes a commented quantize.yaml for a checkpoint.</summary>
public static class InitCommand
{
    public static Command Create()
    {
        var checkpoint = new Option<string>("--checkpoint")
        {
            Description = "checkpoint (Hugging Face folder or llama2.c .bin), relative to the " +
            "manifest's folder", Required = true
        };
        var output = new Option<string>("--out", "-o") { Description = "manifest to write", DefaultValueFactory = _ => "quantize.yaml" };
        var force = new Option<bool>("--force") { Description = "overwrite an existing manifest" };
        var cmd = new Command("init", "Write a commented quantize.yaml for a checkpoint.\n" + ExitCodes.HelpText) { checkpoint, output, force };
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            string path = CliSupport.OutputFile(r.GetValue(output)!, "--out");
            if (File.Exists(path) && !r.GetValue(force))
                throw new SuperQuantException(ErrorCodes.InvalidArgument, $"{path} exists (use --force to overwrite)", path);
            string dir = Path.GetDirectoryName(path)!;
            string ckpt = r.GetValue(checkpoint)!;
            string full = Path.GetFullPath(Path.Combine(dir, ckpt));
            CheckpointFormat format = ModelLoader.Detect(full); // fails clearly if it is not a checkpoint
            string id = new string(Path.GetFileNameWithoutExtension(full.TrimEnd('/')).Select(c => char.IsAsciiLetterOrDigit(c)
                || c is '-' or '_' or '.' ? c : '-').Take(64).ToArray()).Trim('-', '.');
            if (id.Length == 0) id = "model";
            bool hasTokenizer = format == CheckpointFormat.HuggingFace
                && (File.Exists(Path.Combine(full, "tokenizer.model")) || File.Exists(Path.Combine(full, "tokenizer.json")));
            string data = hasTokenizer
                ? "    calibration_text: data/calibration.txt   # any representative text (the paper used 500 WikiText-2 samples)\n " +
                    "   evaluation_text: data/evaluation.txt\n"
                : "    # No tokenizer in this checkpoint: use token-id files (superquant generate --model ... --out data/evaluation.tokens.txt)\n " +
                    "   calibration_tokens: data/calibration.tokens.txt\n    evaluation_tokens: data/evaluation.tokens.txt\n    prompt_tokens: \"1\" " +
                    "                   # detection prompt as ids (1 = BOS for llama2.c vocabularies)\n";
            string ggufHint = "and/or GGUF for llama.cpp: [packed, {gguf: q4_k_m}]; types " + string.Join(", ", Names.GgufTypeNames)
                + " (bits must match weight_bits)";
            CliSupport.WriteAtomically(path, $"""
                # SuperQuant manifest: which checkpoints this project ships, how they are quantized, and the quality they
                # must keep. `dotnet build` (with the SuperQuant.Build package) or `superquant gate` runs it.
                # Paths are relative to this file. Editor schema: docs/quantize.schema.json in the SuperQuant repository.
                version: 1
                device: auto                  # auto | cpu | cuda; override with SUPERQUANT_DEVICE or -p:SuperQuantDevice
                memory: auto                  # auto | model | layers (one decoder block at a time: models larger than RAM)
                models:
                  - id: {YamlText.Quote(id)}
                    checkpoint: {YamlText.Quote(ckpt)}        # {(format == CheckpointFormat.HuggingFace ? "Hugging Face folder" : "llama2.c checkpoint")}
                    output: {YamlText.Quote($"models/{id}.sqpk.safetensors")}
                    method: super-aware       # {string.Join(" | ", Names.MethodNames)}
                    weight_bits: 4            # 2..8
                    activation_bits: 16       # 16 = weight-only; 4..8 quantizes activations at run time (packed export only)
                    block_size: 128           # 32..4096, or channel (variant paper: any power of two, or tensor)
                    # variant: paper          # the Super Weight paper's own quantizer (flattened blocks, per-block clip, float min)
                    # clip: zscore            # {string.Join(" | ", Names.ClipNames)} (all but zscore/no need variant paper)
                    z: auto                   # tuned on the calibration data; or a number, or none
                {data.TrimEnd('\n')}
                    context: 512
                    export: [packed]          # {ggufHint}
                    # tasks:                  # zero-shot tasks (docs/tasks.md), gated with metric: accuracy + max_drop (points)
                    #   piqa: data/piqa.jsonl
                    gate:
                      metric: kl              # kl | perplexity | top1 | accuracy
                      max_increase: 0.05      # absolute, or a percentage such as "5%"
                      baseline: original      # the unquantized checkpoint, or a fixed number

                """);
            Console.WriteLine($"wrote {path}");
            return ExitCodes.Success;
        }));
        return cmd;
    }
}
