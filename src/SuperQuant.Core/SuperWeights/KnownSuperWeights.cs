using SuperQuant.Core.Llama;

namespace SuperQuant.Core.SuperWeights;

/// <summary>
/// Published super-weight coordinates (layer, row, column) from the Super Weight paper's reference code, keyed by the
/// model shape they were measured on. A hint shown beside detection results, never a substitute for detecting:
/// different checkpoints can share a shape (Llama-7B and Llama-2-7B do).
/// </summary>
public static class KnownSuperWeights
{
    public sealed record Entry(string Model, string Architecture, int Hidden, int Layers, int Intermediate, int Vocab,
        IReadOnlyList<(int Layer, int Row, int Column)> Coordinates);

    public static readonly IReadOnlyList<Entry> All = new Entry[]
    {
        new("Mistral-7B-v0.1", "mistral", 4096, 32, 14336, 32000, new[] { (1, 2070, 7310) }),
        new("Llama-7B", "llama", 4096, 32, 11008, 32000, new[] { (2, 3968, 7003) }),
        new("Llama-13B", "llama", 5120, 40, 13824, 32000, new[] { (2, 2231, 2278), (2, 2231, 6939) }),
        new("Llama-30B", "llama", 6656, 60, 17920, 32000, new[] { (3, 5633, 12817), (3, 5633, 17439), (10, 5633, 14386) }),
        new("Meta-Llama-3-8B", "llama", 4096, 32, 14336, 128256, new[] { (1, 788, 2427), (1, 1384, 2427), (1, 4062, 2427) }),
        new("OLMo-1B-0724-hf", "olmo", 2048, 16, 8192, 50304, new[] { (1, 1764, 1710), (2, 1764, 8041) }),
        new("OLMo-7B-0724-hf", "olmo", 4096, 32, 11008, 50304, new[] { (1, 269, 7467), (2, 269, 8275), (7, 269, 453), (24, 269, 2300) }),
        new("Phi-3-mini-4k-instruct", "phi3", 3072, 32, 8192, 32064, new[] { (2, 525, 808), (2, 1693, 808), (2, 1113, 808), (4, 525, 2723),
            (4, 1113, 2723), (4, 1693, 2723) }),
    };

    /// <summary>Entries whose published shape matches this config.</summary>
    public static IReadOnlyList<Entry> For(LlamaConfig c) =>
        All.Where(e => e.Architecture == c.Architecture && e.Hidden == c.HiddenSize && e.Layers == c.NumLayers
                       && e.Intermediate == c.IntermediateSize && e.Vocab == c.VocabSize).ToList();
}
