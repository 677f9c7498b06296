using System.Text.Json;
using SuperQuant.Models.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Tests.Support;

/// <summary>What a generated tiny checkpoint looks like. Defaults: a Llama with GQA.</summary>
public sealed record TinyModelSpec
{
    public string ModelType { get; init; } = "llama";
    public int Hidden { get; init; } = 32;
    public int Intermediate { get; init; } = 64;
    public int Layers { get; init; } = 2;
    public int Heads { get; init; } = 4;
    public int KvHeads { get; init; } = 2;
    public int Vocab { get; init; } = 48;
    public double RopeTheta { get; init; } = 10000;
    public float Eps { get; init; } = 1e-5f;
    public bool TieEmbeddings { get; init; }
    public bool Llama3Scaling { get; init; }
    public int? SlidingWindow { get; init; }
    public float? ClipQkv { get; init; }
    /// <summary>"F32", "F16" or "BF16" on disk.</summary>
    public string DType { get; init; } = "F32";
    /// <summary>Split the weights over this many shards with a model.safetensors.index.json.</summary>
    public int Shards { get; init; } = 1;
    public int Seed { get; init; } = 1234;

    public int HeadDim => Hidden / Heads;
    public bool Olmo => ModelType == "olmo";
    public bool Phi3 => ModelType == "phi3";
    public bool QkvBias => ModelType == "qwen2";
}

/// <summary>Writes a tiny random LLaMA-family checkpoint folder (config.json + safetensors) and returns the exact
/// float values stored, so tests can run <see cref="ReferenceLlama"/> on the same numbers.</summary>
public static class TinyCheckpointFactory
{
    public static Dictionary<string, float[]> RandomWeights(TinyModelSpec s)
    {
        var rng = new Random(s.Seed);
        int d = s.Hidden, h = s.Intermediate, qd = s.Heads * s.HeadDim, kvd = s.KvHeads * s.HeadDim;
        var w = new Dictionary<string, float[]>();
        float[] R(int n, double scale) { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = (float)((rng.NextDouble() * 2 - 1) * scale); return a; }
        float[] Ones(int n) { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = 1f + (float)((rng.NextDouble() - 0.5) * 0.2); return a; }
        w["model.embed_tokens.weight"] = R(s.Vocab * d, 1.0);
        for (int l = 0; l < s.Layers; l++)
        {
            string p = $"model.layers.{l}.";
            if (s.Phi3)
            {
                w[p + "self_attn.qkv_proj.weight"] = R((qd + 2 * kvd) * d, 0.3);
                w[p + "mlp.gate_up_proj.weight"] = R(2 * h * d, 0.3);
            }
            else
            {
                w[p + "self_attn.q_proj.weight"] = R(qd * d, 0.3);
                w[p + "self_attn.k_proj.weight"] = R(kvd * d, 0.3);
                w[p + "self_attn.v_proj.weight"] = R(kvd * d, 0.3);
                w[p + "mlp.gate_proj.weight"] = R(h * d, 0.3);
                w[p + "mlp.up_proj.weight"] = R(h * d, 0.3);
            }
            if (s.QkvBias)
            {
                w[p + "self_attn.q_proj.bias"] = R(qd, 0.2);
                w[p + "self_attn.k_proj.bias"] = R(kvd, 0.2);
                w[p + "self_attn.v_proj.bias"] = R(kvd, 0.2);
            }
            w[p + "self_attn.o_proj.weight"] = R(d * qd, 0.3);
            w[p + "mlp.down_proj.weight"] = R(d * h, 0.2);
            if (!s.Olmo)
            {
                w[p + "input_layernorm.weight"] = Ones(d);
                w[p + "post_attention_layernorm.weight"] = Ones(d);
            }
        }
        if (!s.Olmo) w["model.norm.weight"] = Ones(d);
        if (!s.TieEmbeddings) w["lm_head.weight"] = R(s.Vocab * d, 0.3);
        return w;
    }

    /// <summary>Shapes by Hugging Face name.</summary>
    public static long[] ShapeOf(TinyModelSpec s, string name, int length)
    {
        if (name.EndsWith(".bias") || name.EndsWith("norm.weight")) return new long[] { length };
        long cols = name.Contains("o_proj") ? s.Heads * s.HeadDim : name.Contains("down_proj") ? s.Intermediate : s.Hidden;
        return new long[] { length / cols, cols };
    }

    /// <summary>Writes the folder. With BF16/F16 the returned arrays hold the values after rounding, as stored.</summary>
    public static Dictionary<string, float[]> Write(string folder, TinyModelSpec s, Dictionary<string, float[]>? weights = null)
    {
        Directory.CreateDirectory(folder);
        weights ??= RandomWeights(s);
        ScalarType dtype = s.DType switch { "BF16" => ScalarType.BFloat16, "F16" => ScalarType.Float16, _ => ScalarType.Float32 };
        var stored = new Dictionary<string, float[]>();
        var tensors = new List<KeyValuePair<string, Tensor>>();
        foreach (var (name, values) in weights)
        {
            using Tensor f32 = torch.tensor(values, ShapeOf(s, name, values.Length));
            Tensor t = f32.to_type(dtype);
            tensors.Add(new(name, t));
            using Tensor back = t.to_type(ScalarType.Float32);
            stored[name] = back.data<float>().ToArray();
        }
        var names = tensors.Select(t => t.Key).ToList();
        if (s.Shards <= 1)
        {
            SafetensorsWriter.Write(Path.Combine(folder, "model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        }
        else
        {
            var weightMap = new Dictionary<string, string>();
            for (int shard = 0; shard < s.Shards; shard++)
            {
                string file = $"model-{shard + 1:D5}-of-{s.Shards:D5}.safetensors";
                var part = tensors.Where((_, i) => i % s.Shards == shard).ToList();
                SafetensorsWriter.Write(Path.Combine(folder, file), part);
                foreach (var t in part) weightMap[t.Key] = file;
            }
            File.WriteAllText(Path.Combine(folder, "model.safetensors.index.json"),
                JsonSerializer.Serialize(new { metadata = new { total_size = 0 }, weight_map = weightMap }));
        }
        foreach (var t in tensors) t.Value.Dispose();
        File.WriteAllText(Path.Combine(folder, "config.json"), ConfigJson(s));
        return stored;
    }

    public static string ConfigJson(TinyModelSpec s)
    {
        var c = new Dictionary<string, object?>
        {
            ["model_type"] = s.ModelType,
            ["architectures"] = new[] { s.ModelType switch { "qwen2" => "Qwen2ForCausalLM", "olmo" => "OlmoForCausalLM", "phi3" => "Phi3ForCausalLM",
                "mistral" => "MistralForCausalLM", _ => "LlamaForCausalLM" } },
            ["hidden_size"] = s.Hidden,
            ["intermediate_size"] = s.Intermediate,
            ["num_hidden_layers"] = s.Layers,
            ["num_attention_heads"] = s.Heads,
            ["num_key_value_heads"] = s.KvHeads,
            ["vocab_size"] = s.Vocab,
            ["max_position_embeddings"] = 128,
            ["rope_theta"] = s.RopeTheta,
            ["tie_word_embeddings"] = s.TieEmbeddings,
            ["torch_dtype"] = s.DType == "BF16" ? "bfloat16" : s.DType == "F16" ? "float16" : "float32",
        };
        if (s.Olmo) { c["clip_qkv"] = s.ClipQkv; }
        else c["rms_norm_eps"] = s.Eps;
        if (s.SlidingWindow is int win) c["sliding_window"] = win;
        if (s.Llama3Scaling)
            c["rope_scaling"] = new
            {
                rope_type = "llama3", factor = 8.0, low_freq_factor = 1.0, high_freq_factor = 4.0,
                original_max_position_embeddings = 16
            };
        return JsonSerializer.Serialize(c, new JsonSerializerOptions { WriteIndented = true });
    }
}

/// <summary>A temp folder removed when disposed.</summary>
public sealed class TempFolder : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("superquant-test-").FullName;
    public string File(string name) => System.IO.Path.Combine(Path, name);
    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}

public static class SharedModels
{
    static string Shared(params string[] parts)
    {
        string? shared = Environment.GetEnvironmentVariable("SUPERQUANT_SHARED_DIR");
        if (string.IsNullOrEmpty(shared)) shared = System.IO.Path.Combine(RepoPaths.Root, "..", "shared");
        string path = System.IO.Path.GetFullPath(System.IO.Path.Combine(new[] { shared, "models" }.Concat(parts).ToArray()));
        if (!System.IO.File.Exists(path))
            Assert.Fail($"the shared model file is expected at {path} (the repository's ../shared, or set SUPERQUANT_SHARED_DIR)");
        return path;
    }

    /// <summary>A real tokenizer folder (tokenizer.json, tokenizer_config.json, reference-ids.jsonl):
    /// ../shared/models/tokenizers/{llama3.1, qwen3, gemma3}.</summary>
    public static string Tokenizer(string name) => System.IO.Path.GetDirectoryName(Shared("tokenizers", name, "tokenizer.json"))!;

    /// <summary>A llama.cpp tool built for comparisons (../shared/tools/llama.cpp/bin: llama-imatrix, llama-quantize,
    /// llama-perplexity), never used by the product.</summary>
    public static string LlamaTool(string name)
    {
        string? shared = Environment.GetEnvironmentVariable("SUPERQUANT_SHARED_DIR");
        if (string.IsNullOrEmpty(shared)) shared = System.IO.Path.Combine(RepoPaths.Root, "..", "shared");
        string path = System.IO.Path.GetFullPath(System.IO.Path.Combine(shared, "tools", "llama.cpp", "bin", name));
        if (!System.IO.File.Exists(path)) Assert.Fail($"the llama.cpp tool is expected at {path} (the repository's ../shared, or set SUPERQUANT_SHARED_DIR)");
        return path;
    }

    /// <summary>The real LLaMA-2 SentencePiece tokenizer (32,000 pieces), ../shared/models/llama2-tokenizer.</summary>
    public static string Llama2Tokenizer => Shared("llama2-tokenizer", "tokenizer.model");

    /// <summary>../shared/models/stories260K/stories260K.bin relative to the repository root, or under
    /// $SUPERQUANT_SHARED_DIR when set.</summary>
    public static string Stories260K
    {
        get
        {
            string? shared = Environment.GetEnvironmentVariable("SUPERQUANT_SHARED_DIR");
            if (string.IsNullOrEmpty(shared)) shared = System.IO.Path.Combine(RepoPaths.Root, "..", "shared");
            string path = System.IO.Path.GetFullPath(System.IO.Path.Combine(shared, "models", "stories260K", "stories260K.bin"));
            if (!System.IO.File.Exists(path))
                Assert.Fail($"the shared stories260K model is expected at {path} (the repository's ../shared, or set SUPERQUANT_SHARED_DIR)");
            return path;
        }
    }
}
