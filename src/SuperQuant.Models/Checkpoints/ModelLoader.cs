using SuperQuant.Core;
using SuperQuant.Core.Llama;
using static TorchSharp.torch;

namespace SuperQuant.Models.Checkpoints;

public enum CheckpointFormat { HuggingFace, Llama2c }

/// <summary>Opens any supported checkpoint by path: a Hugging Face folder (config.json + safetensors), a
/// .safetensors file inside such a folder, or a llama2.c .bin file.</summary>
public static class ModelLoader
{
    public static CheckpointFormat Detect(string path)
    {
        if (Directory.Exists(path))
        {
            if (HfCheckpoint.IsCheckpointFolder(path)) return CheckpointFormat.HuggingFace;
            throw new SuperQuantException(ErrorCodes.CheckpointFormat, $"{path} is a folder without config.json; expected a Hugging Face checkpoint folder", path);
        }
        if (!File.Exists(path)) throw new SuperQuantException(ErrorCodes.FileNotFound, $"checkpoint not found: {path}", path);
        if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase)) return CheckpointFormat.HuggingFace;
        return CheckpointFormat.Llama2c;
    }

    public static LlamaModel Load(string path, Device? device = null)
    {
        switch (Detect(path))
        {
            case CheckpointFormat.HuggingFace:
                string folder = Directory.Exists(path) ? path : Path.GetDirectoryName(Path.GetFullPath(path))!;
                using (var ckpt = HfCheckpoint.Open(folder)) return ckpt.LoadModel(device);
            default:
                return Llama2cCheckpoint.Load(path, device);
        }
    }
}
