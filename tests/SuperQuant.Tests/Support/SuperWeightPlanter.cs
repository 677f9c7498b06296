namespace SuperQuant.Tests.Support;

/// <summary>
/// Plants a super weight in a tiny model's weight arrays: channel <see cref="SourceChannel"/> of every token embedding
/// is made large, gate_proj and up_proj row k read only that channel (so silu(gate)*up at k is huge for every token:
/// an input-independent super activation), and down_proj[j, k] is the one large entry of column k (so the down_proj output spikes at j).
/// </summary>
public static class SuperWeightPlanter
{
    public const int SourceChannel = 0;

    public static void BoostEmbeddingChannel(Dictionary<string, float[]> w, TinyModelSpec s, float value = 3f)
    {
        float[] embed = w["model.embed_tokens.weight"];
        for (int t = 0; t < s.Vocab; t++) embed[t * s.Hidden + SourceChannel] = value;
    }

    public static void Plant(Dictionary<string, float[]> w, TinyModelSpec s, int layer, int row, int col, int readChannel = SourceChannel,
        float gain = 20f, float weight = 5f)
    {
        string p = $"model.layers.{layer}.mlp.";
        int d = s.Hidden, h = s.Intermediate;
        foreach (string m in new[] { "gate_proj", "up_proj" })
        {
            float[] a = w[p + m + ".weight"];
            for (int c = 0; c < d; c++) a[col * d + c] = c == readChannel ? gain : 0f;
        }
        // As in real models, the super weight is the one large entry of its column: the rest of column k is small,
        // so once it is zeroed the (still large) input at k no longer makes any output spike.
        float[] down = w[p + "down_proj.weight"];
        for (int r = 0; r < d; r++) down[r * h + col] *= 0.001f;
        down[row * h + col] = weight;
    }

    /// <summary>Writes a tiny checkpoint folder with one planted super weight (and the boosted embedding channel).</summary>
    public static Dictionary<string, float[]> WriteCheckpoint(string folder, TinyModelSpec spec, int layer, int row, int col)
    {
        var w = TinyCheckpointFactory.RandomWeights(spec);
        BoostEmbeddingChannel(w, spec);
        Plant(w, spec, layer, row, col);
        return TinyCheckpointFactory.Write(folder, spec, w);
    }
}
