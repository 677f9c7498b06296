using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.Core.Llama;

namespace SuperQuant.Models.Checkpoints;

/// <summary>Maps a Hugging Face config.json of a LLaMA-family model to <see cref="LlamaConfig"/>.</summary>
public static class HfConfigReader
{
    public static readonly IReadOnlyList<string> SupportedModelTypes = new[] { "llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2",
        "gemma2", "gemma3_text", "smollm3" };

    public static LlamaConfig Read(string configPath)
    {
        if (!File.Exists(configPath)) throw new SuperQuantException(ErrorCodes.FileNotFound, $"config.json not found: {configPath}", configPath);
        using JsonDocument doc = JsonInput.Parse(configPath, ErrorCodes.ConfigInvalid);
        return JsonInput.Guard(configPath, ErrorCodes.ConfigInvalid, () => FromJson(doc.RootElement, configPath));
    }

    public static LlamaConfig FromJson(JsonElement c, string configPath)
    {
        string type = Str(c, "model_type", configPath) ?? throw Invalid(configPath, "missing 'model_type'");
        if (type == "gemma3")
            throw new SuperQuantException(ErrorCodes.UnsupportedArchitecture,
                $"model_type 'gemma3' is the multimodal Gemma 3 (vision tower + text_config); only its text model is supported: a checkpoint whose " +
                    $"model_type is 'gemma3_text'", configPath);
        if (!SupportedModelTypes.Contains(type))
            throw new SuperQuantException(ErrorCodes.UnsupportedArchitecture,
                $"model_type '{type}' is not supported (supported: {string.Join(", ", SupportedModelTypes)})", configPath);
        bool gemma = type is "gemma2" or "gemma3_text";

        int hidden = Int(c, "hidden_size", configPath) ?? throw Invalid(configPath, "missing 'hidden_size'");
        int heads = Int(c, "num_attention_heads", configPath) ?? throw Invalid(configPath, "missing 'num_attention_heads'");
        int layers = Int(c, "num_hidden_layers", configPath) ?? throw Invalid(configPath, "missing 'num_hidden_layers'");
        Llama3RopeScaling? scaling = null;
        LongRopeScaling? longRope = null;
        double? linear = null;
        int maxPositions = Int(c, "max_position_embeddings", configPath) ?? 2048;
        int? originalPositions = Int(c, "original_max_position_embeddings", configPath);
        int? ropeDims = RopeDims(c, type, hidden, heads, configPath);
        if (c.TryGetProperty("rope_scaling", out JsonElement rs) && rs.ValueKind == JsonValueKind.Object)
        {
            string? ropeType = Str(rs, "rope_type", configPath) ?? Str(rs, "type", configPath);
            if (ropeType is "longrope" or "su" && type == "phi3")
                longRope = LongRope(rs, maxPositions, originalPositions, configPath);
            else if (ropeType == "llama3")
                scaling = new Llama3RopeScaling(Dbl(rs, "factor", configPath) ?? 8, Dbl(rs, "low_freq_factor", configPath) ?? 1,
                    Dbl(rs, "high_freq_factor", configPath) ?? 4, Int(rs, "original_max_position_embeddings", configPath) ?? 8192);
            else if (ropeType == "linear")
                linear = Dbl(rs, "factor", configPath) ?? throw Invalid(configPath, "rope_scaling of type 'linear' needs 'factor'");
            else if (ropeType != "default")
                throw new SuperQuantException(ErrorCodes.UnsupportedArchitecture,
                    $"{configPath}: rope_scaling.rope_type '{ropeType}' is not supported (supported: llama3, linear, " +
                        $"default{(type == "phi3" ? ", longrope" : "")})", configPath);
        }
        CheckActivation(c, type, gemma, configPath);

        // Which layers attend through a sliding window: the config's own layer_types when it lists them, else each
        // family's rule (Gemma 2 alternates from layer 0; Gemma 3 has one global layer in every sliding_window_pattern;
        // Qwen uses the window from max_window_layers on, and only with use_sliding_window).
        int? window = Int(c, "sliding_window", configPath);
        bool[]? slidingLayers = null;
        bool windowUsed;
        if (Has(c, "layer_types", out JsonElement lt))
        {
            slidingLayers = LayerTypes(lt, layers, configPath);
            windowUsed = slidingLayers.Any(x => x);
            if (windowUsed && window is null) throw Invalid(configPath, "'layer_types' names sliding_attention layers but 'sliding_window' is not set");
        }
        else
        {
            windowUsed = type switch
            {
                "mistral" or "phi3" => window is not null,
                "gemma2" or "gemma3_text" => true,
                "qwen2" or "qwen3" or "smollm3" => Bool(c, "use_sliding_window") == true && window is not null,
                _ => false,
            };
            if (type == "gemma2") slidingLayers = Enumerable.Range(0, layers).Select(i => i % 2 == 0).ToArray();
            if (type == "gemma3_text")
            {
                int pattern = Int(c, "sliding_window_pattern", configPath) ?? 6;
                if (pattern <= 0) throw Invalid(configPath, $"'sliding_window_pattern' ({pattern}) must be positive");
                slidingLayers = Enumerable.Range(0, layers).Select(i => (i + 1) % pattern != 0).ToArray();
            }
            if (type is "qwen2" or "qwen3" && windowUsed)
            {
                int from = Int(c, "max_window_layers", configPath) ?? 0;
                slidingLayers = Enumerable.Range(0, layers).Select(i => i >= from).ToArray();
            }
        }
        if (gemma) window ??= 4096;
        if (!windowUsed) slidingLayers = null;

        var config = new LlamaConfig
        {
            Architecture = type,
            HiddenSize = hidden,
            IntermediateSize = Int(c, "intermediate_size", configPath) ?? throw Invalid(configPath, "missing 'intermediate_size'"),
            NumLayers = layers,
            NumHeads = heads,
            NumKvHeads = Int(c, "num_key_value_heads", configPath) ?? heads,
            VocabSize = Int(c, "vocab_size", configPath) ?? throw Invalid(configPath, "missing 'vocab_size'"),
            MaxPositionEmbeddings = maxPositions,
            OriginalMaxPositionEmbeddings = originalPositions,
            HeadDimOverride = Int(c, "head_dim", configPath) ?? (gemma ? 256 : null),
            RopeTheta = Dbl(c, "rope_theta", configPath) ?? (type == "gemma3_text" ? 1_000_000.0 : 10000.0),
            RopeScaling = scaling,
            LongRope = longRope,
            RopeDimsOverride = ropeDims,
            RopeLinearFactor = linear,
            RopeLocalTheta = type == "gemma3_text" ? Dbl(c, "rope_local_base_freq", configPath) ?? 10000.0 : null,
            RopeLayers = type == "smollm3" ? RopeLayers(c, layers, configPath) : null,
            NormEps = Dbl(c, "rms_norm_eps", configPath) ?? Dbl(c, "layer_norm_eps", configPath) ?? (gemma ? 1e-6 : 1e-5),
            Norm = type == "olmo" ? NormKind.NonParametricLayerNorm : NormKind.RmsNorm,
            NormWeightOffset = gemma ? 1.0 : 0.0,
            PreNorms = type != "olmo2",
            PostNorms = type is "olmo2" or "gemma2" or "gemma3_text",
            QkNorm = type switch { "qwen3" or "gemma3_text" => QkNormKind.PerHead, "olmo2" => QkNormKind.Whole, _ => QkNormKind.None },
            EmbeddingScale = gemma ? (float)Math.Sqrt(hidden) : 1.0, // Gemma rounds sqrt(hidden) to the model's dtype
            Activation = gemma ? Activation.GeluTanh : Activation.Silu,
            AttnLogitSoftcap = gemma ? Dbl(c, "attn_logit_softcapping", configPath) ?? (type == "gemma2" ? 50.0 : null) : null,
            FinalLogitSoftcap = gemma ? Dbl(c, "final_logit_softcapping", configPath) ?? (type == "gemma2" ? 30.0 : null) : null,
            QueryPreAttnScalar = gemma ? Dbl(c, "query_pre_attn_scalar", configPath) ?? 256 : null,
            // Hugging Face's own per-family defaults: Gemma and SmolLM3 tie the head to the embedding.
            TieWordEmbeddings = Bool(c, "tie_word_embeddings") ?? (gemma || type == "smollm3"),
            QkvBias = type == "qwen2" || Bool(c, "attention_bias") == true,
            ClipQkv = Dbl(c, "clip_qkv", configPath),
            SlidingWindow = windowUsed ? window : null,
            SlidingLayers = slidingLayers is not null && slidingLayers.All(x => x) ? null : slidingLayers,
            BosTokenId = c.TryGetProperty("bos_token_id", out JsonElement bos) && bos.ValueKind == JsonValueKind.Number && bos.TryGetInt32(out int b)
                ? b : null,
        };
        try { config.Validate(); }
        catch (InvalidDataException e) { throw Invalid(configPath, e.Message); }
        return config;
    }

    /// <summary>Phi-3's LongRoPE as Hugging Face computes it (modeling_rope_utils' _compute_longrope_parameters): the
    /// original context is the config's original_max_position_embeddings (else rope_scaling's, else the whole context);
    /// the attention factor is rope_scaling.attention_factor when given, else sqrt(1 + ln(s) / ln(original)) for the
    /// extension s = max / original (rope_scaling.factor when the config names no original context), 1 when s &lt;= 1.</summary>
    static LongRopeScaling LongRope(JsonElement rs, int maxPositions, int? originalPositions, string path)
    {
        double[] Factors(string key)
        {
            if (!Has(rs, key, out JsonElement list) || list.ValueKind != JsonValueKind.Array)
                throw Invalid(path, $"rope_scaling of type longrope needs '{key}' (a list of numbers, one per rotated frequency)");
            return list.EnumerateArray().Select((e, i) => e.ValueKind == JsonValueKind.Number ? e.GetDouble()
                : throw Invalid(path, $"'rope_scaling.{key}[{i}]' must be a number")).ToArray();
        }
        double[] shortFactors = Factors("short_factor"), longFactors = Factors("long_factor");
        int original = originalPositions ?? Int(rs, "original_max_position_embeddings", path) ?? maxPositions;
        if (original <= 0) throw Invalid(path, $"'original_max_position_embeddings' ({original}) must be positive");
        double extension = originalPositions is not null || Has(rs, "original_max_position_embeddings", out _)
            ? (double)maxPositions / original : Dbl(rs, "factor", path) ?? 1.0;
        double attention = Dbl(rs, "attention_factor", path)
            ?? (extension <= 1 ? 1.0 : Math.Sqrt(1 + Math.Log(extension) / Math.Log(original)));
        return new LongRopeScaling(shortFactors, longFactors, original, attention);
    }

    /// <summary>partial_rotary_factor: the share of each head RoPE rotates (Phi-4-mini 0.75), int(head_dim * factor)
    /// dimensions as Hugging Face takes it. Only Phi-3's attention splits the head so; elsewhere a factor other than 1
    /// would be a model this forward pass does not compute.</summary>
    static int? RopeDims(JsonElement c, string type, int hidden, int heads, string path)
    {
        double? factor = Dbl(c, "partial_rotary_factor", path);
        if (factor is null || factor == 1.0) return null;
        if (type != "phi3")
            throw new SuperQuantException(ErrorCodes.UnsupportedArchitecture,
                $"{path}: 'partial_rotary_factor' {factor} is supported for phi3 only; a {type} model rotates the whole head here", path);
        if (!(factor > 0 && factor < 1)) throw Invalid(path, $"'partial_rotary_factor' ({factor}) must be in (0, 1]");
        int headDim = Int(c, "head_dim", path) ?? (heads > 0 ? hidden / heads : 0);
        return (int)(headDim * factor.Value);
    }

    /// <summary>The MLP activation must be the one the forward pass computes for the family: a model trained with
    /// another one would evaluate and export as something it is not.</summary>
    static void CheckActivation(JsonElement c, string type, bool gemma, string path)
    {
        string expected = gemma ? "gelu_pytorch_tanh" : "silu";
        foreach (string key in new[] { "hidden_act", "hidden_activation" })
        {
            string? act = Str(c, key, path);
            if (act is null) continue;
            bool ok = gemma ? act is "gelu_pytorch_tanh" or "gelu_tanh" : act == "silu";
            if (!ok)
                throw new SuperQuantException(ErrorCodes.UnsupportedArchitecture,
                    $"{path}: '{key}' is '{act}', but a {type} model's MLP here computes {expected}", path);
        }
    }

    static bool[] LayerTypes(JsonElement lt, int layers, string path)
    {
        if (lt.ValueKind != JsonValueKind.Array || lt.GetArrayLength() != layers)
            throw Invalid(path, $"'layer_types' must be an array of {layers} strings (one per layer)");
        return lt.EnumerateArray().Select((e, i) => e.ValueKind == JsonValueKind.String ? e.GetString() switch
        {
            "sliding_attention" => true,
            "full_attention" => false,
            var other => throw Invalid(path, $"'layer_types[{i}]' is '{other}' (expected sliding_attention or full_attention)"),
        } : throw Invalid(path, $"'layer_types[{i}]' must be a string")).ToArray();
    }

    /// <summary>SmolLM3's no_rope_layers: 1 where the layer applies RoPE, 0 where it does not; default: every
    /// no_rope_layer_interval-th layer (4) has none.</summary>
    static bool[] RopeLayers(JsonElement c, int layers, string path)
    {
        if (Has(c, "no_rope_layers", out JsonElement list))
        {
            if (list.ValueKind != JsonValueKind.Array || list.GetArrayLength() != layers)
                throw Invalid(path, $"'no_rope_layers' must be an array of {layers} integers (1 = the layer uses RoPE)");
            return list.EnumerateArray().Select((e, i) => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int v) && v is 0 or 1
                ? v == 1 : throw Invalid(path, $"'no_rope_layers[{i}]' must be 0 or 1")).ToArray();
        }
        int interval = Int(c, "no_rope_layer_interval", path) ?? 4;
        if (interval <= 0) throw Invalid(path, $"'no_rope_layer_interval' ({interval}) must be positive");
        return Enumerable.Range(0, layers).Select(i => (i + 1) % interval != 0).ToArray();
    }

    static SuperQuantException Invalid(string path, string what) => new(ErrorCodes.ConfigInvalid, $"invalid config {path}: {what}", path);

    static bool Has(JsonElement c, string key, out JsonElement v) => c.TryGetProperty(key, out v) && v.ValueKind != JsonValueKind.Null;

    static int? Int(JsonElement c, string key, string path)
    {
        if (!Has(c, key, out var v)) return null;
        return v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : throw Invalid(path, $"'{key}' must be an integer");
    }

    static double? Dbl(JsonElement c, string key, string path)
    {
        if (!Has(c, key, out var v)) return null;
        return v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw Invalid(path, $"'{key}' must be a number");
    }

    static string? Str(JsonElement c, string key, string path)
    {
        if (!Has(c, key, out var v)) return null;
        return v.ValueKind == JsonValueKind.String ? v.GetString() : throw Invalid(path, $"'{key}' must be a string");
    }

    static bool? Bool(JsonElement c, string key) =>
        Has(c, key, out var v) && (v.ValueKind == JsonValueKind.True || v.ValueKind == JsonValueKind.False) ? v.GetBoolean() : null;
}
