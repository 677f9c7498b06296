using SuperQuant.Core;
using SuperQuant.Core.Llama;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Models.Gguf;

/// <summary>
/// A llama-architecture GGUF as a <see cref="LlamaModel"/> with every tensor dequantized to fp32 (our forward pass on
/// exactly the weights llama.cpp holds; llama.cpp itself additionally rounds activations in its quantized matmuls).
/// q/k rows are permuted back to Hugging Face's rotate-half order. Every metadata value and tensor shape is checked
/// against the config before anything large is allocated.
/// </summary>
public static class GgufModelLoader
{
    public static LlamaModel Load(string path, Device? device = null)
    {
        var g = GgufFile.Read(path);
        SuperQuantException Bad(string what) => new(ErrorCodes.ArtifactFormat, $"{path}: {what}", path);
        string arch = g.Metadata.TryGetValue("general.architecture", out var a) ? a as string ?? "" : "";
        if (arch != "llama") throw Bad($"architecture '{arch}' (this loader reads llama-architecture GGUF files)");
        long U(string key, long? fallback = null)
        {
            if (g.Metadata.TryGetValue(key, out var v) && v is uint or int or ulong or long) return Convert.ToInt64(v);
            return fallback ?? throw Bad($"metadata '{key}' is missing or not an integer");
        }
        double Fl(string key, double fallback) => g.Metadata.TryGetValue(key, out var v) && v is float or double ? Convert.ToDouble(v) : fallback;
        var embd = g.Tensors.FirstOrDefault(t => t.Name == "token_embd.weight") ?? throw Bad("tensor 'token_embd.weight' is missing");
        int Int(long v, string what) => v is > 0 and <= int.MaxValue ? (int)v : throw Bad($"{what} {v} is out of range");
        long dim = U("llama.embedding_length"), heads = U("llama.attention.head_count");
        var config = new LlamaConfig
        {
            Architecture = "llama",
            HiddenSize = Int(dim, "embedding_length"),
            IntermediateSize = Int(U("llama.feed_forward_length"), "feed_forward_length"),
            NumLayers = Int(U("llama.block_count"), "block_count"),
            NumHeads = Int(heads, "head_count"),
            NumKvHeads = Int(U("llama.attention.head_count_kv", heads), "head_count_kv"),
            VocabSize = Int(embd.Dims.Length == 2 ? embd.Dims[1] : 0, "vocabulary"),
            MaxPositionEmbeddings = Int(U("llama.context_length", 2048), "context_length"),
            HeadDimOverride = U("llama.rope.dimension_count", dim / Math.Max(1, heads)) is long hd && hd != dim / Math.Max(1, heads)
                ? Int(hd, "rope.dimension_count") : null,
            RopeTheta = Fl("llama.rope.freq_base", 10000.0),
            NormEps = Fl("llama.attention.layer_norm_rms_epsilon", 1e-5),
            TieWordEmbeddings = !g.Tensors.Any(t => t.Name == "output.weight"),
            SlidingWindow = g.Metadata.ContainsKey("llama.attention.sliding_window") ? Int(U("llama.attention.sliding_window"), "sliding_window") : null,
        };
        try { config.Validate(); }
        catch (InvalidDataException e) { throw Bad(e.Message); }
        var read = new HashSet<string>(StringComparer.Ordinal);
        Tensor Read(string name, params long[] shape)
        {
            read.Add(name);
            var t = g.Tensors.FirstOrDefault(x => x.Name == name) ?? throw Bad($"tensor '{name}' is missing");
            if (!t.Dims.SequenceEqual(shape.Reverse())) throw Bad($"tensor '{name}' has shape [{string.Join(", ", t.Dims.Reverse())}], the config " +
                $"says [{string.Join(", ", shape)}]");
            return torch.tensor(g.ReadTensor(name), shape);
        }
        long qd = (long)config.NumHeads * config.HeadDim, kv = config.KvDim, ffn = config.IntermediateSize, d = config.HiddenSize;
        var layers = new LlamaLayerWeights[config.NumLayers];
        for (int l = 0; l < config.NumLayers; l++)
        {
            string p = $"blk.{l}.";
            layers[l] = new LlamaLayerWeights
            {
                AttnNorm = Read(p + "attn_norm.weight", d),
                Wq = GgufTensorLayout.InterleavedToHalf(Read(p + "attn_q.weight", qd, d), config.NumHeads),
                Wk = GgufTensorLayout.InterleavedToHalf(Read(p + "attn_k.weight", kv, d), config.NumKvHeads),
                Wv = Read(p + "attn_v.weight", kv, d),
                Wo = Read(p + "attn_output.weight", d, qd),
                FfnNorm = Read(p + "ffn_norm.weight", d),
                WGate = Read(p + "ffn_gate.weight", ffn, d),
                WUp = Read(p + "ffn_up.weight", ffn, d),
                WDown = Read(p + "ffn_down.weight", d, ffn),
            };
        }
        var weights = new LlamaWeights
        {
            TokenEmbedding = Read("token_embd.weight", config.VocabSize, d), FinalNorm = Read("output_norm.weight", d),
            LmHead = config.TieWordEmbeddings ? null : Read("output.weight", config.VocabSize, d), Layers = layers,
        };
        // A tensor this loader does not apply (llama3's rope_freqs, q/k/v biases) would make it run another model.
        if (g.Tensors.FirstOrDefault(t => !read.Contains(t.Name)) is { } unread)
        {
            weights.Dispose();
            throw Bad($"tensor '{unread.Name}' is not read by this loader (plain llama blocks only); llama.cpp runs the file: use eval");
        }
        if (device is not null && device.type != DeviceType.CPU)
        {
            foreach (var layer in layers)
                foreach (var f in typeof(LlamaLayerWeights).GetFields())
                    if (f.GetValue(layer) is Tensor t) f.SetValue(layer, t.to(device));
            weights.TokenEmbedding = weights.TokenEmbedding.to(device);
            weights.FinalNorm = weights.FinalNorm?.to(device);
            weights.LmHead = weights.LmHead?.to(device);
        }
        return new LlamaModel(config, weights);
    }
}
