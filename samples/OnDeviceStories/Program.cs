using LLama;
using LLama.Common;
using LLama.Native;
using SuperQuant.Core.Llama;
using SuperQuant.Models.Artifacts;

// Runs the models `dotnet build` quantized, gated and copied next to this app, the two ways an app ships them:
// the GGUF through LLamaSharp (llama.cpp), and SuperQuant's packed artifact through its loader. Both continue a story
// from BOS; neither model ships a tokenizer (stories260K has none), so the continuations are printed as token ids.
int count = args.Length > 0 && int.TryParse(args[0], out int n) && n > 0 ? n : 48;
string models = Path.Combine(AppContext.BaseDirectory, "models");
string? gguf = Directory.Exists(models) ? Directory.GetFiles(models, "*.gguf").OrderBy(f => f).FirstOrDefault() : null;
string? packed = Directory.Exists(models) ? Directory.GetFiles(models, "*.sqpk.safetensors").OrderBy(f => f).FirstOrDefault() : null;
if (gguf is null && packed is null)
{
    Console.Error.WriteLine($"no models in {models}: build the project first (dotnet build)");
    return 1;
}

if (gguf is not null)
{
    NativeLogConfig.llama_log_set((level, message) => { if (level == LLamaLogLevel.Error) Console.Error.Write(message); });
    var parameters = new ModelParams(gguf) { ContextSize = 256, GpuLayerCount = 0 };
    using var weights = LLamaWeights.LoadFromFile(parameters);
    using var context = weights.CreateContext(parameters);
    Console.WriteLine($"llama.cpp: {Path.GetFileName(gguf)} ({weights.NativeHandle.FileType}, {new FileInfo(gguf).Length / 1024} KiB)");
    // Greedy decoding, one token per step, with llama.cpp's KV cache.
    var batch = new LLamaBatch();
    var tokens = new List<int> { 1 }; // BOS
    for (int i = 0; i < count && tokens.Count < context.ContextSize; i++)
    {
        batch.Clear();
        batch.Add((LLamaToken)tokens[^1], tokens.Count - 1, (LLamaSeqId)0, true);
        if (context.NativeHandle.Decode(batch) != DecodeResult.Ok) throw new InvalidOperationException("llama.cpp failed to decode");
        var logits = context.NativeHandle.GetLogitsIth(0);
        int next = 0;
        for (int t = 1; t < logits.Length; t++) if (logits[t] > logits[next]) next = t;
        tokens.Add(next);
    }
    Console.WriteLine(string.Join(' ', tokens));
}

if (packed is not null)
{
    var (model, info) = PackedArtifact.Load(packed);
    using (model)
    {
        Console.WriteLine($"superquant: {Path.GetFileName(packed)} ({info.Method}, {info.Bits}-bit, {info.BitsPerWeight:F2} bits/weight, super " +
            $"weights: {(info.SuperWeights.Count == 0 ? "none found" : string.Join(" ", info.SuperWeights.Select(s => $"({s[0]},{s[1]},{s[2]})")))})");
        Console.WriteLine(string.Join(' ', Sampler.Generate(model, new[] { 1 }, count, temperature: 0, seed: 0)));
    }
}
return 0;
