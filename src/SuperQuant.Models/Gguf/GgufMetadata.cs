using SuperQuant.Core.Llama;
using SuperQuant.Manifest;

namespace SuperQuant.Models.Gguf;

/// <summary>The key/value metadata of a file: general.*, the architecture's keys (<see cref="GgufArchitecture"/>),
/// superquant.* and the tokenizer.</summary>
public static class GgufMetadata
{
    public static List<(string Key, GgufValueType Type, object Value)> For(LlamaConfig c, GgufExport export)
    {
        GgufArchitecture arch = GgufArchitecture.For(c);
        var meta = new List<(string Key, GgufValueType Type, object Value)>
        {
            ("general.architecture", GgufValueType.String, arch.Name),
            ("general.name", GgufValueType.String, string.IsNullOrEmpty(export.Name) ? "model" : export.Name),
            ("general.alignment", GgufValueType.UInt32, (uint)GgufFile.DefaultAlignment),
            ("general.file_type", GgufValueType.UInt32, (uint)export.FileType.LlamaFtype()),
            ("general.quantization_version", GgufValueType.UInt32, 2u),
            ("general.quantized_by", GgufValueType.String, "superquant " + (typeof(GgufWriter).Assembly.GetName().Version?.ToString() ?? "0")),
            ("superquant.method", GgufValueType.String, export.Method.Name()),
        };
        meta.InsertRange(6, arch.Keys(c));
        // Without a vocabulary llama.cpp takes the vocabulary size from {arch}.vocab_size (the LLaMA family writes it anyway).
        if (export.Vocabulary is null && !arch.LlamaKeys) meta.Add(($"{arch.Name}.vocab_size", GgufValueType.UInt32, (uint)c.VocabSize));
        // Only when there is something to say: an empty string breaks LLamaSharp 0.30's metadata reader.
        if (export.SuperWeights.Count > 0)
            meta.Add(("superquant.super_weights", GgufValueType.String, string.Join(";", export.SuperWeights.Select(s => $"{s.Layer},{s.Row},{s.Column}"))));
        // llama.cpp refuses a file without a tokenizer model; "no_vocab" (LLAMA_VOCAB_TYPE_NONE) loads it for use with
        // token ids, its vocabulary size taken from llama.vocab_size.
        meta.AddRange(export.Vocabulary?.Metadata() ?? new[] { ("tokenizer.ggml.model", GgufValueType.String, (object)"no_vocab") });
        foreach (var (key, type, value) in meta)
            if (type == GgufValueType.String && string.IsNullOrEmpty((string)value))
                throw new InvalidOperationException($"GGUF metadata '{key}' would be an empty string");
        return meta;
    }
}
