using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.Core.Llama;

namespace SuperQuant.Models.Checkpoints;

/// <summary>Maps a Hugging Face config.json of a LLaMA-family model to <see cref="LlamaConfig"/>.</summary>
public static class HfConfigReader
{
    public static readonly IReadOnlyList<string> SupportedModelTypes = new[] { "llama", "mistral", "qwen2", "olmo", "phi3" };

    public static LlamaConfig Read(string configPath)
    {
        if (!File.Exists(configPath)) throw new SuperQuantException(ErrorCodes.FileNotFound, $"config.json not found: {configPath}", configPath);
        using JsonDocument doc = JsonInput.Parse(configPath, ErrorCodes.ConfigInvalid);
        return JsonInput.Guard(configPath, ErrorCodes.ConfigInvalid, () => FromJson(doc.RootElement, configPath));
    }

    public static LlamaConfig FromJson(JsonElement c, string configPath)
    {
        string type = Str(c, "model_type", configPath) ?? throw Invalid(configPath, "missing 'model_type'");
        if (!SupportedModelTypes.Contains(type))
            throw new SuperQuantException(ErrorCodes.UnsupportedArchitecture,
                $"model_type '{type}' is not supported (supported: {string.Join(", ", SupportedModelTypes)})", configPath);

        int hidden = Int(c, "hidden_size", configPath) ?? throw Invalid(configPath, "missing 'hidden_size'");
        int heads = Int(c, "num_attention_heads", configPath) ?? throw Invalid(configPath, "missing 'num_attention_heads'");
        Llama3RopeScaling? scaling = null;
        if (c.TryGetProperty("rope_scaling", out JsonElement rs) && rs.ValueKind == JsonValueKind.Object)
        {
            string? ropeType = Str(rs, "rope_type", configPath) ?? Str(rs, "type", configPath);
            if (ropeType == "llama3")
                scaling = new Llama3RopeScaling(Dbl(rs, "factor", configPath) ?? 8, Dbl(rs, "low_freq_factor", configPath) ?? 1,
                    Dbl(rs, "high_freq_factor", configPath) ?? 4, Int(rs, "original_max_position_embeddings", configPath) ?? 8192);
            else if (ropeType != "default")
                throw new SuperQuantException(ErrorCodes.UnsupportedArchitecture,
                    $"rope_scaling type '{ropeType}' is not supported (supported: llama3, default)", configPath);
        }
        bool slidingUsed = type == "mistral" || (type == "qwen2" && Bool(c, "use_sliding_window") == true);
        var config = new LlamaConfig
        {
            Architecture = type,
            HiddenSize = hidden,
            IntermediateSize = Int(c, "intermediate_size", configPath) ?? throw Invalid(configPath, "missing 'intermediate_size'"),
            NumLayers = Int(c, "num_hidden_layers", configPath) ?? throw Invalid(configPath, "missing 'num_hidden_layers'"),
            NumHeads = heads,
            NumKvHeads = Int(c, "num_key_value_heads", configPath) ?? heads,
            VocabSize = Int(c, "vocab_size", configPath) ?? throw Invalid(configPath, "missing 'vocab_size'"),
            MaxPositionEmbeddings = Int(c, "max_position_embeddings", configPath) ?? 2048,
            HeadDimOverride = Int(c, "head_dim", configPath),
            RopeTheta = Dbl(c, "rope_theta", configPath) ?? 10000.0,
            RopeScaling = scaling,
            NormEps = Dbl(c, "rms_norm_eps", configPath) ?? Dbl(c, "layer_norm_eps", configPath) ?? 1e-5,
            Norm = type == "olmo" ? NormKind.NonParametricLayerNorm : NormKind.RmsNorm,
            TieWordEmbeddings = Bool(c, "tie_word_embeddings") ?? false,
            QkvBias = type == "qwen2" || Bool(c, "attention_bias") == true,
            ClipQkv = Dbl(c, "clip_qkv", configPath),
            SlidingWindow = slidingUsed ? Int(c, "sliding_window", configPath) : null,
            BosTokenId = c.TryGetProperty("bos_token_id", out JsonElement bos) && bos.ValueKind == JsonValueKind.Number && bos.TryGetInt32(out int b) ? b : null,
        };
        try { config.Validate(); }
        catch (InvalidDataException e) { throw Invalid(configPath, e.Message); }
        return config;
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
