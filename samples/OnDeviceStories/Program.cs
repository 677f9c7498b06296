using SuperQuant.Core.Llama;
using SuperQuant.Models.Artifacts;

// Loads the model that `dotnet build` quantized (copied next to this app) and continues a story from BOS.
// stories260K when the build found it, else the demo checkpoint the build generated.
string artifact = new[] { "stories260K", "demo" }.Select(n => Path.Combine(AppContext.BaseDirectory, "models", n + ".sqpk.safetensors")).FirstOrDefault(File.Exists)
    ?? Path.Combine(AppContext.BaseDirectory, "models", "stories260K.sqpk.safetensors");
if (!File.Exists(artifact))
{
    Console.Error.WriteLine($"{artifact} is missing: build the project first (dotnet build)");
    return 1;
}
var (model, info) = PackedArtifact.Load(artifact);
using (model)
{
    Console.WriteLine($"loaded {Path.GetFileName(artifact)}: {info.Method}, {info.Bits}-bit, {info.BitsPerWeight:F2} bits/weight, super weights: {(info.SuperWeights.Count == 0 ? "none found" : string.Join(" ", info.SuperWeights.Select(s => $"({s[0]},{s[1]},{s[2]})")))}");
    int count = args.Length > 0 && int.TryParse(args[0], out int n) ? n : 48;
    int[] tokens = Sampler.Generate(model, new[] { 1 }, count, temperature: 0, seed: 0);
    // Neither model ships a tokenizer, so the continuation is printed as token ids.
    Console.WriteLine(string.Join(' ', tokens));
}
return 0;
