using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Models.Artifacts;
using SuperQuant.Models.Gguf;
using SuperQuant.Models.Safetensors;
using static TorchSharp.torch;

namespace SuperQuant.Models.Checkpoints;

public enum CheckpointFormat { HuggingFace, Llama2c, Packed, Gguf }

/// <summary>Opens any model file by what it contains, not by its name: a Hugging Face folder (config.json +
/// safetensors) or a .safetensors file inside one, a llama2.c .bin, our packed artifact (.sqpk.safetensors), or a
/// GGUF file (dequantized into our forward pass).</summary>
public static class ModelLoader
{
    public const string Accepted = "a Hugging Face checkpoint folder (config.json + *.safetensors), a llama2.c .bin, a packed artifact " +
        "(.sqpk.safetensors) or a GGUF file";

    public static CheckpointFormat Detect(string path)
    {
        if (Directory.Exists(path))
        {
            if (!HfCheckpoint.IsCheckpointFolder(path))
                throw new SuperQuantException(ErrorCodes.CheckpointFormat, $"{path} is a folder without config.json; expected {Accepted}", path);
            SuperQuant.Manifest.InputFiles.Register(path, "the checkpoint folder");
            return CheckpointFormat.HuggingFace;
        }
        if (!File.Exists(path)) throw new SuperQuantException(ErrorCodes.FileNotFound, $"model not found: {path} (expected {Accepted})", path);
        DataFile.Require(path, "model", ErrorCodes.CheckpointFormat);
        Span<byte> head = stackalloc byte[9];
        int n;
        long length;
        using (var fs = File.OpenRead(path)) { n = fs.ReadAtLeast(head, head.Length, throwOnEndOfStream: false); length = fs.Length; }
        bool gguf = n >= 4 && BitConverter.ToUInt32(head) == GgufFile.Magic;
        // safetensors: an 8-byte little-endian header length, then the JSON header's '{'.
        bool safetensors = n == 9 && head[8] == (byte)'{' && BitConverter.ToUInt64(head) is ulong h && h >= 2 && h <= (ulong)(length - 8);
        string ext = Path.GetExtension(path).ToLowerInvariant();
        // .bin says nothing (llama2.c, PyTorch, GGUF files all use it): read by content. .gguf and .safetensors name a
        // format, and the content must agree: a GGUF renamed .safetensors (or the reverse) is a mistake, not a model.
        string? named = ext switch { ".gguf" => "GGUF", ".safetensors" => "safetensors", _ => null };
        string found = gguf ? "GGUF" : safetensors ? "safetensors" : "llama2.c";
        if (named is not null && named != found && (gguf || safetensors || named == "GGUF"))
            throw new SuperQuantException(ErrorCodes.CheckpointFormat,
                $"{path} is named as a {named} file ({ext}) but holds {(gguf || safetensors ? "a " + found + " file" : "no GGUF header")}; expected " +
                    $"{Accepted}", path);
        if (gguf) return CheckpointFormat.Gguf;
        if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".staged", StringComparison.Ordinal))
        {
            using var f = SafetensorsFile.Open(path);
            if (f.Metadata.TryGetValue("format", out var format) && format == PackedArtifact.FormatName) return CheckpointFormat.Packed;
            if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase)) return CheckpointFormat.HuggingFace;
        }
        return CheckpointFormat.Llama2c;
    }

    public static LlamaModel Load(string path, Device? device = null) => Load(path, device, streamed: false);

    /// <summary><paramref name="streamed"/>: a layer-streamed model (<see cref="LlamaWeights.Source"/>), for Hugging
    /// Face checkpoints and packed artifacts; other formats are refused (SQ4001).</summary>
    public static LlamaModel Load(string path, Device? device, bool streamed)
    {
        var format = Detect(path);
        if (streamed && format is not (CheckpointFormat.HuggingFace or CheckpointFormat.Packed))
            throw new SuperQuantException(ErrorCodes.UnsupportedQuantization,
                $"{path}: layer-streamed loading (memory: layers) reads Hugging Face safetensors checkpoints and packed artifacts, not {format} files", path);
        switch (format)
        {
            case CheckpointFormat.HuggingFace:
                string folder = Directory.Exists(path) ? path : Path.GetDirectoryName(Path.GetFullPath(path))!;
                if (streamed)
                {
                    var open = HfCheckpoint.Open(folder);
                    try { return open.LoadModel(device, null, streamed: true); } // the model owns the open checkpoint
                    catch { open.Dispose(); throw; }
                }
                using (var ckpt = HfCheckpoint.Open(folder)) return ckpt.LoadModel(device);
            case CheckpointFormat.Packed:
                return PackedArtifact.Load(path, device, streamed).Model;
            case CheckpointFormat.Gguf:
                return GgufModelLoader.Load(path, device);
            default:
                return Llama2cCheckpoint.Load(path, device);
        }
    }
}
