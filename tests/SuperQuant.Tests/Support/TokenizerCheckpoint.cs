namespace SuperQuant.Tests.Support;

/// <summary>A tiny random llama checkpoint whose vocabulary is a real tokenizer's (../shared/models/tokenizers/NAME),
/// with that tokenizer's tokenizer.json and tokenizer_config.json beside it.</summary>
public static class TokenizerCheckpoint
{
    public static string Write(string folder, string tokenizer, int layers = 1)
    {
        string source = SharedModels.Tokenizer(tokenizer);
        var json = SuperQuant.Models.Text.TokenizerJson.TryRead(Path.Combine(source, "tokenizer.json"))!;
        TinyCheckpointFactory.Write(folder, new TinyModelSpec
        {
            Vocab = json.Count, Hidden = 32, Intermediate = 64, Layers = layers, Heads = 2,
            KvHeads = 1, DType = "F16"
        });
        foreach (string f in new[] { "tokenizer.json", "tokenizer_config.json" }) File.Copy(Path.Combine(source, f), Path.Combine(folder, f));
        return folder;
    }
}
