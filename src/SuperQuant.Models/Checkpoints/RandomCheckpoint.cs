using System.Text.Json;
using SuperQuant.Core;
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

    /// <summary>Writes the checkpoint. With <paramref name="superWeight"/> (layer, row, column) a super weight is
    /// planted the way real models have one: embeddings are N(0, 1) with channel 0 = 8 for BOS (id 1) and 0 otherwise, gate_proj and up_proj row
    /// <c>column</c> read only that channel (a super activation at down_proj input <c>column</c>, on BOS), and down_proj[row, column] = 1.0 (about 50
    /// standard deviations) is the one large entry of its
    /// column.
    /// <para>With <paramref name="heavyTails"/> the matrices are Student-t (3 degrees of freedom, std 0.02) rather
    /// than Gaussian, as trained weights are heavy-tailed (that is what z-clipping is for), and the embeddings stay
    /// N(0, 1) (not 50x) so the layers matter beside the embeddings, and the final norm at 0.3 (at 1 the logits are
    /// so peaked that KL jumps around with the rounding noise): a quantization benchmark whose quality moves with the
    /// quantizer (the Gaussian recipe measured KL ~ 1e-5 even at INT3).</para></summary>
    public static void Write(string folder, LlamaConfig c, ScalarType dtype = ScalarType.Float32, long seed = 0, Action<int, int>? progress = null,
        (int Layer, int Row, int Column)? superWeight = null, bool heavyTails = false, int? eosTokenId = null)
    {
        Directory.CreateDirectory(folder);
        var layout = Layout(c, dtype);
        var gen = new Generator((ulong)seed);
        int done = 0;
        SafetensorsWriter.WriteStreaming(Path.Combine(folder, "model.safetensors"), layout, name =>
        {
            var shape = layout.First(t => t.Name == name).Shape;
            bool embedding = name == "model.embed_tokens.weight" || name == "lm_head.weight";
            // Every handle made here (indexers and conversions return handles of their own) is disposed with this
            // scope; only the returned tensor leaves it, and the writer disposes that.
            using var scope = torch.NewDisposeScope();
            Tensor t = name.EndsWith("norm.weight", StringComparison.Ordinal) ? torch.ones(shape, ScalarType.Float32)
                : heavyTails && !embedding ? StudentT3(shape, gen).mul_(0.02 / Math.Sqrt(3))
                : torch.randn(shape, ScalarType.Float32, generator: gen).mul_(0.02);
            if (superWeight is var (layer, row, col))
            {
                string p = $"model.layers.{layer}.mlp.";
                if (name == "model.norm.weight") t.mul_(heavyTails ? 0.3f : 0.05f); // tied N(0, 1) head: keeps logits from being one-hot
                if (name == "model.embed_tokens.weight")
                {
                    if (!heavyTails) t.mul_(50f);              // N(0, 1): logits that are not flat
                    // Only BOS (id 1) carries the trigger, so, as in real models, the super activation fires at the
                    // sequence's first token and the other positions depend on their input.
                    t[TensorIndex.Colon, 0] = torch.tensor(0f);
                    t[c.BosTokenId ?? 1, 0] = torch.tensor(8f);
                }
                if (name == p + "gate_proj.weight" || name == p + "up_proj.weight")
                {
                    t[col] = torch.zeros(c.HiddenSize);
                    t[col, 0] = torch.tensor(4.0f);
                }
                if (name == p + "down_proj.weight")
                {
                    t[TensorIndex.Colon, col] = t[TensorIndex.Colon, col] * 0.001f;
                    t[row, col] = torch.tensor(1.0f);
                }
            }
            progress?.Invoke(++done, layout.Count);
            return (dtype == ScalarType.Float32 ? t : t.to_type(dtype)).MoveToOuterDisposeScope();
        }, disposeEach: true, new Dictionary<string, string> { ["format"] = "pt", ["generator"] = "superquant random checkpoint" });
        byte[] config = System.Text.Encoding.UTF8.GetBytes(ConfigJson(c, dtype, eosTokenId));
        AtomicFile.Write(Path.Combine(folder, "config.json"), config.Length, fs => fs.Write(config));
    }

    /// <summary>Student-t with 3 degrees of freedom (variance 3): a normal over the root of a chi-square / 3.</summary>
    static Tensor StudentT3(long[] shape, Generator gen)
    {
        using var scope = torch.NewDisposeScope();
        Tensor chi2 = torch.zeros(shape);
        for (int i = 0; i < 3; i++) chi2.add_(torch.randn(shape, generator: gen).pow_(2));
        return torch.randn(shape, generator: gen).div_(chi2.div_(3).sqrt_()).MoveToOuterDisposeScope();
    }

    public static string ConfigJson(LlamaConfig c, ScalarType dtype, int? eosTokenId = null) => JsonSerializer.Serialize(new Dictionary<string, object?>
    {
        ["bos_token_id"] = c.BosTokenId,
        ["eos_token_id"] = eosTokenId,
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
