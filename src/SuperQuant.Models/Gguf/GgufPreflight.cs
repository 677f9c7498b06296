using SuperQuant.Core;

namespace SuperQuant.Models.Gguf;

/// <summary>
/// Checks a GGUF before llama.cpp sees it. llama.cpp's loader ends the process on some malformed headers
/// (GGML_ASSERT: abort, exit 134, a native backtrace) rather than returning an error: a user's build must never die that
/// way, so every header value it asserts on is checked here first (src/llama-model.cpp's load_hparams, llama-vocab.cpp's
/// load): layer, head and expert counts in range and consistent, positive finite norm epsilons, vocabulary arrays of the
/// right element types and lengths, the embedding's shape. A failure is SQ4002
/// naming the file and the key.
/// </summary>
public static class GgufPreflight
{
    /// <summary>llama.cpp's LLAMA_MAX_LAYERS and LLAMA_MAX_EXPERTS.</summary>
    const long MaxLayers = 512, MaxExperts = 512;

    public static void Check(string path)
    {
        var g = GgufFile.Read(path); // structure: counts, strings, tensor infos and offsets
        var m = g.Metadata;
        SuperQuantException Bad(string key, string what) => new(ErrorCodes.ArtifactFormat, $"{path}: '{key}' {what}; llama.cpp would abort on it", path);

        if (!m.TryGetValue("general.architecture", out var archValue) || archValue is not string arch || arch.Length == 0)
            throw Bad("general.architecture", "is missing or not a string");
        string a = arch + ".";

        long? Int(string key)
        {
            if (!m.TryGetValue(key, out var v)) return null;
            return v switch
            {
                byte or sbyte or ushort or short or uint or int => Convert.ToInt64(v),
                ulong u => u > long.MaxValue ? long.MaxValue : (long)u,
                long l => l,
                _ => throw Bad(key, $"is a {v.GetType().Name}, expected an integer"),
            };
        }
        long Required(string key, long min, long max) => Int(key) is long v ? InRange(key, v, min, max) : throw Bad(key, "is missing");
        long InRange(string key, long v, long min, long max) => v >= min && v <= max ? v : throw Bad(key, $"is {v}, outside [{min}, {max}]");
        // Per-layer keys are an integer or an array of one per layer.
        long[] PerLayer(string key, long layers, long min, long max, long? fallback)
        {
            if (!m.TryGetValue(key, out var v))
                return fallback is long f ? Enumerable.Repeat(f, (int)layers).ToArray() : throw Bad(key, "is missing");
            if (v is object[] items)
            {
                if (items.Length != layers) throw Bad(key, $"has {items.Length} entries for {layers} layers");
                return items.Select((x, i) => x is uint or int or ushort or short or byte ? InRange($"{key}[{i}]", Convert.ToInt64(x), min, max)
                    : throw Bad($"{key}[{i}]", "is not an integer")).ToArray();
            }
            long one = InRange(key, Int(key)!.Value, min, max);
            return Enumerable.Repeat(one, (int)layers).ToArray();
        }

        long layers = Required(a + "block_count", 1, MaxLayers);
        long embd = Required(a + "embedding_length", 1, 1 << 20);
        if (Int(a + "context_length") is long ctx) InRange(a + "context_length", ctx, 1, 1L << 24);
        PerLayer(a + "feed_forward_length", layers, 0, 1 << 22, 0);
        long[] heads = PerLayer(a + "attention.head_count", layers, 1, 4096, null);
        long[] kvHeads = PerLayer(a + "attention.head_count_kv", layers, 0, 4096, heads[0]);
        for (int l = 0; l < layers; l++)
            if (kvHeads[l] > 0 && (kvHeads[l] > heads[l] || heads[l] % kvHeads[l] != 0))
                throw Bad(a + "attention.head_count_kv", $"is {kvHeads[l]} for {heads[l]} query heads (layer {l}): it must divide them");
        long headDim = Int(a + "attention.key_length") is long k ? InRange(a + "attention.key_length", k, 1, 1 << 16) : embd % heads[0] == 0 ? embd / heads[0]
            : throw Bad(a + "attention.head_count", $"is {heads[0]}, which does not divide {a}embedding_length {embd} (and no key_length is given)");
        if (Int(a + "attention.value_length") is long vl) InRange(a + "attention.value_length", vl, 1, 1 << 16);
        if (Int(a + "rope.dimension_count") is long rot) InRange(a + "rope.dimension_count", rot, 0, headDim);
        foreach (string key in new[] { "attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon" })
            if (m.TryGetValue(a + key, out var e))
                if (e is not (float or double) || Convert.ToDouble(e) is var eps && (!double.IsFinite(eps) || eps <= 0 || eps >= 1))
                    throw Bad(a + key, $"is {e}: a norm epsilon must be a finite number in (0, 1)");
        foreach (string key in new[] { "rope.freq_base", "rope.scaling.factor", "attn_logit_softcapping", "final_logit_softcapping", "attention.clamp_kqv" })
            if (m.TryGetValue(a + key, out var f) && (f is not (float or double) || !(Convert.ToDouble(f) > 0) || !double.IsFinite(Convert.ToDouble(f))))
                throw Bad(a + key, $"is {f}: expected a positive finite number");
        long experts = Int(a + "expert_count") is long ec ? InRange(a + "expert_count", ec, 0, MaxExperts) : 0;
        long used = Int(a + "expert_used_count") is long eu ? InRange(a + "expert_used_count", eu, 0, MaxExperts) : 0;
        if (used > experts || (experts > 0) != (used > 0))
            throw Bad(a + "expert_used_count", $"is {used} with expert_count {experts}: both zero, or 0 < used <= count");
        if (g.Tensors.FirstOrDefault(t => t.Name.StartsWith("blk.", StringComparison.Ordinal)
                && int.TryParse(t.Name.Split('.')[1], out int b) && b >= layers) is { } beyond)
            throw Bad(a + "block_count", $"is {layers} but tensor '{beyond.Name}' belongs to a later block");

        var embedding = g.Tensors.FirstOrDefault(t => t.Name == "token_embd.weight") ?? throw Bad("token_embd.weight", "(tensor) is missing");
        if (embedding.Dims.Length != 2 || embedding.Dims[0] != embd)
            throw Bad("token_embd.weight", $"(tensor) has shape [{string.Join(", ", embedding.Dims)}], {a}embedding_length is {embd}");

        // The vocabulary: arrays of the element types llama.cpp reads them as, of one length, ids inside it.
        long vocab = embedding.Dims[1];
        if (m.TryGetValue("tokenizer.ggml.tokens", out var tokensValue))
        {
            if (tokensValue is not object[] tokens || tokens.Any(t => t is not string)) throw Bad("tokenizer.ggml.tokens", "is not an array of strings");
            if (tokens.Length == 0) throw Bad("tokenizer.ggml.tokens", "is empty");
            vocab = tokens.Length;
            if (m.TryGetValue("tokenizer.ggml.scores", out var s) && (s is not object[] scores || scores.Length != vocab || scores.Any(x => x is not float)))
                throw Bad("tokenizer.ggml.scores", $"is not an array of {vocab} float32 values");
            if (m.TryGetValue("tokenizer.ggml.token_type", out var tt) && (tt is not object[] types || types.Length != vocab || types.Any(x => x is not int)))
                throw Bad("tokenizer.ggml.token_type", $"is not an array of {vocab} int32 values");
            if (m.TryGetValue("tokenizer.ggml.merges", out var mg) && (mg is not object[] merges || merges.Any(x => x is not string)))
                throw Bad("tokenizer.ggml.merges", "is not an array of strings");
        }
        else if (m.TryGetValue("tokenizer.ggml.model", out var model) && model is string name && name != "no_vocab")
            throw Bad("tokenizer.ggml.tokens", $"is missing for tokenizer model '{name}'");
        // Special token ids outside the vocabulary are not checked: llama.cpp warns and ignores them.
    }
}
