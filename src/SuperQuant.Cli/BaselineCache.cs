using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using SuperQuant.Core.Evaluation;
using SuperQuant.Models.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Cli;

/// <summary>
/// The gate's baseline, computed once: the unquantized checkpoint's logits over the evaluation windows, kept as a
/// safetensors file under obj/ ("reference-ID-KEY.safetensors"). The key hashes the checkpoint's content, the
/// evaluation tokens, the window plan and the tool version, so changing a model's quantization settings re-quantizes
/// it but reuses its baseline, and changing the checkpoint or the data recomputes it. A damaged cache file is
/// recomputed, never trusted.
/// </summary>
public static class BaselineCache
{
    public static ReferenceLogits GetOrRecord(string folder, string modelId, string checkpointHash, IReadOnlyList<int> tokens, int context, int stride, Func<ReferenceLogits> record)
    {
        string key = Key(checkpointHash, tokens, context, stride);
        string path = Path.Combine(folder, $"reference-{modelId}-{key}.safetensors");
        if (File.Exists(path) && TryRead(path, tokens.Count, context, stride) is { } cached)
        {
            Console.WriteLine($"{modelId}: baseline logits from cache ({Path.GetFileName(path)})");
            return cached;
        }
        ReferenceLogits fresh = record();
        Directory.CreateDirectory(folder);
        foreach (string old in Directory.GetFiles(folder, $"reference-{modelId}-*.safetensors")) File.Delete(old); // one baseline per model
        var tensors = fresh.WindowLogits.Select((t, i) => (Name: $"window.{i}", Tensor: t)).ToDictionary(x => x.Name, x => x.Tensor);
        SafetensorsWriter.Write(path, tensors, new Dictionary<string, string>
        {
            ["format"] = "superquant.reference", ["tokens"] = tokens.Count.ToString(CultureInfo.InvariantCulture),
            ["context"] = context.ToString(CultureInfo.InvariantCulture), ["stride"] = stride.ToString(CultureInfo.InvariantCulture),
        });
        return fresh;
    }

    static ReferenceLogits? TryRead(string path, int tokenCount, int context, int stride)
    {
        var scored = new List<Tensor>();
        try
        {
            using var f = SafetensorsFile.Open(path);
            for (int i = 0; f.Contains($"window.{i}"); i++) scored.Add(f.Read($"window.{i}", ScalarType.Float32));
            return ReferenceLogits.FromWindows(tokenCount, context, stride, scored);
        }
        catch (Exception e) when (e is SuperQuant.Core.SuperQuantException or ArgumentException or IOException)
        {
            foreach (var t in scored) t.Dispose();
            return null;
        }
    }

    static string Key(string checkpointHash, IReadOnlyList<int> tokens, int context, int stride)
    {
        var sb = new StringBuilder(checkpointHash).Append('|').Append(context).Append('|').Append(stride).Append('|')
            .Append(typeof(BaselineCache).Assembly.GetName().Version).Append('|');
        foreach (int t in tokens) sb.Append(t).Append(',');
        return Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(sb.ToString())))[..16].ToLowerInvariant();
    }
}
