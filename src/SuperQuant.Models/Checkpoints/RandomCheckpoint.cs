using System.Text.Json;
using SuperQuant.Core.Llama;
using SuperQuant.Models.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Models.Checkpoints;

/// <summary>Writes a random Hugging Face-style Llama checkpoint (config.json + model.safetensors) of any size,
/// one tensor in memory at a time. For benchmarks and scale tests; the weights mean nothing.</summary>
public static class RandomCheckpoint
{
    public static IReadOnlyList<TensorLayout> Layout(LlamaConfig c, ScalarType dtype)
    {
        long d = c.HiddenSize, h = c.IntermediateSize, qd = (long)c.NumHeads * c.HeadDim, kv = c.KvDim;
        var list = new List<TensorLayout> { new("model.embed_tokens.weight", dtype, new[] { (long)c.VocabSize, d }) };
        for (int l = 0; l < c.NumLayers; l++)
        {
            string p = $"model.layers.{l}.";
            list.Add(new(p + "input_layernorm.weight", dtype, new[] { d }));
            list.Add(new(p + "self_attn.q_proj.weight", dtype, new[] { qd, d }));
            list.Add(new(p + "self_attn.k_proj.weight", dtype, new[] { kv, d }));
            list.Add(new(p + "self_attn.v_proj.weight", dtype, new[] { kv, d }));
            list.Add(new(p + "self_attn.o_proj.weight", dtype, new[] { d, qd }));
            list.Add(new(p + "post_attention_layernorm.weight", dtype, new[] { d }));
            list.Add(new(p + "mlp.gate_proj.weight", dtype, new[] { h, d }));
            list.Add(new(p + "mlp.up_proj.weight", dtype, new[] { h, d }));
            list.Add(new(p + "mlp.down_proj.weight", dtype, new[] { d, h }));
        }
        list.Add(new("model.norm.weight", dtype, new[] { d }));
        if (!c.TieWordEmbeddings) list.Add(new("lm_head.weight", dtype, new[] { (long)c.VocabSize, d }));
        return list;
    }

    public static void Write(string folder, LlamaConfig c, ScalarType dtype = ScalarType.Float32, long seed = 0, Action<int, int>? progress = null)
    {
        Directory.CreateDirectory(folder);
        var layout = Layout(c, dtype);
        var gen = new Generator((ulong)seed);
        int done = 0;
        SafetensorsWriter.WriteStreaming(Path.Combine(folder, "model.safetensors"), layout, name =>
        {
            var shape = layout.First(t => t.Name == name).Shape;
            Tensor t = name.EndsWith("norm.weight", StringComparison.Ordinal)
                ? torch.ones(shape, dtype)
                : torch.randn(shape, ScalarType.Float32, generator: gen).mul_(0.02).to_type(dtype);
            progress?.Invoke(++done, layout.Count);
            return t;
        }, disposeEach: true, new Dictionary<string, string> { ["format"] = "pt", ["generator"] = "superquant random checkpoint" });
        File.WriteAllText(Path.Combine(folder, "config.json"), ConfigJson(c, dtype));
    }

    public static string ConfigJson(LlamaConfig c, ScalarType dtype) => JsonSerializer.Serialize(new Dictionary<string, object?>
    {
        ["model_type"] = "llama",
        ["architectures"] = new[] { "LlamaForCausalLM" },
        ["hidden_size"] = c.HiddenSize,
        ["intermediate_size"] = c.IntermediateSize,
        ["num_hidden_layers"] = c.NumLayers,
        ["num_attention_heads"] = c.NumHeads,
        ["num_key_value_heads"] = c.NumKvHeads,
        ["vocab_size"] = c.VocabSize,
        ["max_position_embeddings"] = c.MaxPositionEmbeddings,
        ["rope_theta"] = c.RopeTheta,
        ["rms_norm_eps"] = c.NormEps,
        ["tie_word_embeddings"] = c.TieWordEmbeddings,
        ["torch_dtype"] = dtype == ScalarType.BFloat16 ? "bfloat16" : dtype == ScalarType.Float16 ? "float16" : "float32",
    }, new JsonSerializerOptions { WriteIndented = true });
}
