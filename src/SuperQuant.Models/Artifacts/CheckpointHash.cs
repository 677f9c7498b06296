using System.Security.Cryptography;

namespace SuperQuant.Models.Artifacts;

/// <summary>SHA-256 over a checkpoint's files (a .bin, or a folder's config.json and *.safetensors in name order),
/// streamed; recorded in artifacts so a stale artifact can be recognized.</summary>
public static class CheckpointHash
{
    public static IReadOnlyList<string> Files(string checkpoint) => Directory.Exists(checkpoint)
        ? Directory.GetFiles(checkpoint).Where(f => f.EndsWith(".safetensors", StringComparison.Ordinal)
            || Path.GetFileName(f) is "config.json" or "model.safetensors.index.json")
            .OrderBy(f => f, StringComparer.Ordinal).ToList()
        : new[] { checkpoint };

    public static string Compute(string checkpoint)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[1 << 20];
        foreach (string f in Files(checkpoint))
        {
            sha.AppendData(System.Text.Encoding.UTF8.GetBytes(Path.GetFileName(f) + "\n"));
            DataFile.Require(f, "checkpoint file", SuperQuant.Core.ErrorCodes.CheckpointFormat); // a FIFO named *.safetensors would block the hash
            using var s = File.OpenRead(f);
            int n;
            while ((n = s.Read(buffer)) > 0) sha.AppendData(buffer, 0, n);
        }
        return Convert.ToHexString(sha.GetHashAndReset()).ToLowerInvariant();
    }
}
