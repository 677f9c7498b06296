using System.Text.Json;
using SuperQuant.Models.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Tests.Support;

/// <summary>
/// Tiny random Hugging Face checkpoints of each family, written from the families' published config.json keys and
/// tensor names (transformers' modeling files), independently of our reader's tables. Weights are large enough that
/// every family feature moves the model's predictions (biases N(0, 0.5), norm scales 1 + N(0, 0.3)); each feature can
/// be switched off (<see cref="Off"/>) to show that it matters.
/// </summary>
public static class FamilyCheckpoint
{
    public const int Hidden = 64, Heads = 4, KvHeads = 2, Intermediate = 128, Vocab = 256;

    /// <summary>The families and the feature each test switches off.</summary>
    public static readonly string[] Families = { "llama3", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "gemma2", "gemma3_text", "smollm3" };

    /// <param name="off">Write the family with its distinguishing feature neutralized (see the switch below).</param>
    /// <param name="superWeight">Plant a super weight as real models have one (layer, row, column): BOS (id 1) alone
    /// carries embedding channel 0, gate and up row <c>column</c> read only that channel, and down_proj[row, column] is
    /// the one large entry of its column: a super activation at down_proj input <c>column</c> on BOS.</param>
    /// <param name="editConfig">Changes config.json before it is written (bad-input tests).</param>
    /// <param name="tensorShape">Changes a tensor's shape, or drops it (null), by name (bad-input tests).</param>
    /// <param name="secondOff">Neutralize the family's second feature instead (<see cref="SecondOff"/>).</param>
    public static void Write(string folder, string family, bool off = false, int seed = 7, (int Layer, int Row, int Column)? superWeight = null,
        Action<Dictionary<string, object?>>? editConfig = null, Func<string, long[], long[]?>? tensorShape = null, bool secondOff = false)
    {
        Directory.CreateDirectory(folder);
        bool gemma = family is "gemma2" or "gemma3_text";
        int layers = family switch { "gemma3_text" => 6, "smollm3" => 8, _ => 4 }; // smollm3: two layers without RoPE (every 4th)
        int headDim = family is "qwen3" or "gemma2" or "gemma3_text" ? 32 : Hidden / Heads;
        int qd = Heads * headDim, kv = KvHeads * headDim;
        string modelType = family == "llama3" ? "llama" : family;
        var c = new Dictionary<string, object?>
        {
            ["model_type"] = modelType,
            ["hidden_size"] = Hidden, ["intermediate_size"] = Intermediate, ["num_hidden_layers"] = layers,
            ["num_attention_heads"] = Heads, ["num_key_value_heads"] = KvHeads, ["vocab_size"] = Vocab,
            ["max_position_embeddings"] = 256, ["rope_theta"] = 10000.0, ["tie_word_embeddings"] = gemma || family == "smollm3",
            ["torch_dtype"] = "float32", ["bos_token_id"] = 1,
        };
        if (family != "olmo") c["rms_norm_eps"] = 1e-6;
        if (headDim != Hidden / Heads) c["head_dim"] = headDim;
        switch (family)
        {
            case "llama3":
                if (!off) c["rope_scaling"] = new Dictionary<string, object>
                {
                    ["rope_type"] = "llama3", ["factor"] = 8.0, ["low_freq_factor"] = 1.0,
                    ["high_freq_factor"] = 4.0, ["original_max_position_embeddings"] = 64
                };
                break;
            case "phi3":
                // Phi-4-mini's RoPE: LongRoPE factors past the original context (64 < the tests' 128), attention factor
                // sqrt(1 + ln 4 / ln 64), and a partial rotary head (12 of 16 dimensions rotate).
                c["partial_rotary_factor"] = 0.75; c["original_max_position_embeddings"] = 64;
                if (!secondOff)
                    c["rope_scaling"] = new Dictionary<string, object>
                    {
                        ["type"] = "longrope",
                        ["short_factor"] = new[] { 1.0, 1.1, 1.3, 1.6, 2.0, 2.5 },
                        ["long_factor"] = new[] { 1.0, 1.5, 3.0, 6.0, 12.0, 24.0 },
                    };
                break;
            case "mistral": c["sliding_window"] = 4096; break; // beyond any context here: llama.cpp has no window (checked separately)
            case "olmo": c["clip_qkv"] = off ? null : 1.0; break;
            case "gemma2":
                c["hidden_activation"] = "gelu_pytorch_tanh"; c["query_pre_attn_scalar"] = headDim;
                c["attn_logit_softcapping"] = off ? null : 5.0; c["final_logit_softcapping"] = off ? null : 3.0;
                c["sliding_window"] = secondOff ? 4096 : 16;
                break;
            case "gemma3_text":
                c["hidden_activation"] = "gelu_pytorch_tanh"; c["query_pre_attn_scalar"] = headDim;
                c["sliding_window"] = off ? 4096 : 16; c["sliding_window_pattern"] = 6; c["rope_local_base_freq"] = 10000.0;
                c["rope_theta"] = 1_000_000.0;
                break;
            case "smollm3":
                c["no_rope_layers"] = Enumerable.Range(0, layers).Select(i => off || (i + 1) % 4 != 0 ? 1 : 0).ToArray();
                c["rope_theta"] = 100.0; // a short wavelength, so that leaving RoPE out of a layer matters at this size
                break;
        }
        editConfig?.Invoke(c);
        File.WriteAllText(Path.Combine(folder, "config.json"), JsonSerializer.Serialize(c, new JsonSerializerOptions { WriteIndented = true }));

        var gen = new Generator((ulong)seed);
        bool tied = gemma || family == "smollm3";
        var tensors = new List<KeyValuePair<string, Tensor>>();
        void Add(string name, long[] shape, string kind)
        {
            if (tensorShape is not null && tensorShape(name, shape) is not long[] changed) return;
            shape = tensorShape?.Invoke(name, shape) ?? shape;
            Tensor t = kind switch
            {
                "norm" => gemma ? torch.randn(shape, generator: gen) * 0.3f : 1f + torch.randn(shape, generator: gen) * 0.3f,
                // q/k norm scales around 2: sharper attention, so that the attention pattern moves the predictions.
                "qknorm" => (gemma ? 1f : 2f) + torch.randn(shape, generator: gen) * 0.5f,
                "bias" => torch.randn(shape, generator: gen) * 0.5f,
                // A tied head reads the embedding back: N(0, 0.25) keeps its logits from being one-hot.
                "embed" => torch.randn(shape, generator: gen) * (tied ? 0.25f : 1f),
                _ => torch.randn(shape, generator: gen) * (float)(1.0 / Math.Sqrt(shape[1])),
            };
            tensors.Add(new(name, t));
        }
        Add("model.embed_tokens.weight", new long[] { Vocab, Hidden }, "embed");
        for (int l = 0; l < layers; l++)
        {
            string p = $"model.layers.{l}.";
            if (family == "phi3") Add(p + "self_attn.qkv_proj.weight", new long[] { qd + 2 * kv, Hidden }, "w");
            else
            {
                Add(p + "self_attn.q_proj.weight", new long[] { qd, Hidden }, "w");
                Add(p + "self_attn.k_proj.weight", new long[] { kv, Hidden }, "w");
                Add(p + "self_attn.v_proj.weight", new long[] { kv, Hidden }, "w");
            }
            if (family == "qwen2")
            {
                Add(p + "self_attn.q_proj.bias", new long[] { qd }, "bias");
                Add(p + "self_attn.k_proj.bias", new long[] { kv }, "bias");
                Add(p + "self_attn.v_proj.bias", new long[] { kv }, "bias");
                if (off) foreach (var b in tensors.TakeLast(3)) b.Value.zero_();
            }
            if (family is "qwen3" or "gemma3_text")
            {
                Add(p + "self_attn.q_norm.weight", new long[] { headDim }, "qknorm");
                Add(p + "self_attn.k_norm.weight", new long[] { headDim }, "qknorm");
            }
            if (family == "olmo2")
            {
                Add(p + "self_attn.q_norm.weight", new long[] { qd }, "qknorm");
                Add(p + "self_attn.k_norm.weight", new long[] { kv }, "qknorm");
            }
            Add(p + "self_attn.o_proj.weight", new long[] { Hidden, qd }, "w");
            if (family == "phi3") Add(p + "mlp.gate_up_proj.weight", new long[] { 2 * Intermediate, Hidden }, "w");
            else
            {
                Add(p + "mlp.gate_proj.weight", new long[] { Intermediate, Hidden }, "w");
                Add(p + "mlp.up_proj.weight", new long[] { Intermediate, Hidden }, "w");
            }
            Add(p + "mlp.down_proj.weight", new long[] { Hidden, Intermediate }, "w");
            if (family == "olmo") continue; // non-parametric LayerNorm: no norm tensors
            if (family == "olmo2")
            {
                Add(p + "post_attention_layernorm.weight", new long[] { Hidden }, "norm");
                Add(p + "post_feedforward_layernorm.weight", new long[] { Hidden }, "norm");
                if (off) foreach (var n in tensors.TakeLast(2)) n.Value.fill_(1f);
                continue;
            }
            Add(p + "input_layernorm.weight", new long[] { Hidden }, "norm");
            Add(p + "post_attention_layernorm.weight", new long[] { Hidden }, "norm");
            if (gemma)
            {
                Add(p + "pre_feedforward_layernorm.weight", new long[] { Hidden }, "norm");
                Add(p + "post_feedforward_layernorm.weight", new long[] { Hidden }, "norm");
            }
        }
        if (family != "olmo") Add("model.norm.weight", new long[] { Hidden }, "norm");
        if (!(gemma || family == "smollm3")) Add("lm_head.weight", new long[] { Vocab, Hidden }, "w");
        if ((off && family == "qwen3") || (secondOff && family is "gemma3_text" or "olmo2"))
            foreach (var t in tensors.Where(t => t.Key.Contains("_norm.weight") && t.Key.Contains("self_attn"))) t.Value.fill_(gemma ? 0f
                : 1f); // neutral scale 1
        if (off && family == "phi3")
            foreach (var t in tensors.Where(t => t.Key.EndsWith("gate_up_proj.weight")))
                t.Value.copy_(torch.cat(new[] { t.Value[Intermediate.., ..], t.Value[..Intermediate, ..] }, 0)); // gate and up swapped
        if (superWeight is var (sl, sr, sc))
        {
            Tensor Get(string n) => tensors.First(t => t.Key == n).Value;
            Tensor embed = Get("model.embed_tokens.weight");
            embed[TensorIndex.Colon, 0] = torch.tensor(0f);
            embed[1, 0] = torch.tensor(8f);
            string p = $"model.layers.{sl}.mlp.";
            Tensor gate = family == "phi3" ? Get(p + "gate_up_proj.weight") : Get(p + "gate_proj.weight");
            Tensor up = family == "phi3" ? gate : Get(p + "up_proj.weight");
            int upRow = family == "phi3" ? Intermediate + sc : sc;
            foreach (var (m, row) in new[] { (gate, sc), (up, upRow) })
            {
                m[row] = torch.zeros(Hidden);
                m[row, 0] = torch.tensor(4f);
            }
            Tensor down = Get(p + "down_proj.weight");
            down[TensorIndex.Colon, sc] = torch.tensor(0f);
            down[sr, sc] = torch.tensor(1f);
        }
        SafetensorsWriter.Write(Path.Combine(folder, "model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        foreach (var t in tensors) t.Value.Dispose();
    }

    /// <summary>The second feature <see cref="Write"/>'s <c>secondOff</c> switches off, for the families that have one.</summary>
    public static string? SecondOff(string family) => family switch
    {
        "gemma2" => "the sliding window (16 -> 4096)",
        "phi3" => "LongRoPE (no rope_scaling)",
        "gemma3_text" => "q/k norm scales (neutral)",
        "olmo2" => "q/k norm scales over the projection (ones)",
        _ => null,
    };

    /// <summary>What <see cref="Write"/>'s <c>off</c> switches off, per family (for messages).</summary>
    public static string Off(string family) => family switch
    {
        "llama3" => "rope_scaling (llama3)",
        "mistral" => "nothing (the window is beyond the context)",
        "qwen2" => "q/k/v biases (zeroed)",
        "qwen3" => "q/k norm scales (ones)",
        "phi3" => "the gate/up order of the fused projection",
        "olmo" => "clip_qkv",
        "olmo2" => "post-norm scales (ones)",
        "gemma2" => "attention and final logit soft-capping",
        "gemma3_text" => "the sliding window (4096)",
        "smollm3" => "no_rope_layers (RoPE in every layer)",
        _ => family,
    };
}
