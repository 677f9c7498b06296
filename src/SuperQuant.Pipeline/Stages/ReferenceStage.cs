using System.Security.Cryptography;
using System.Text;
using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Llama;
using SuperQuant.Manifest;

namespace SuperQuant.Pipeline.Stages;

/// <summary>Reference: the unquantized model's logits on the evaluation tokens, what every artifact is measured
/// against; from the cache when present and intact, else recorded now (into the cache, or a temp folder this run
/// deletes).</summary>
static class ReferenceStage
{
    public static (ReferenceFile File, bool Cached) Run(QuantizationRequest r, PipelineOptions o, LlamaModel model, RunData data, int[] eval,
        string checkpointHash, RunScope scope)
    {
        int ctx = data.Context, stride = data.Stride;
        var log = o.Log;
        string key = Key(checkpointHash, eval, ctx, stride);
        // A baseline outside any cache is this run's to delete: handed to the cleanup the moment it exists, so a run
        // cancelled while recording it (SIGTERM, Ctrl+C) removes it too.
        string folder = o.ReferenceCacheFolder ?? (scope.Folder = Directory.CreateTempSubdirectory("superquant-ref-").FullName);
        string path = Path.Combine(folder, $"reference-{r.Id}-{key[..16]}.sqref");
        if (ReferenceFile.TryOpen(path, key, model.Config.VocabSize, eval.Length, ctx, stride) is { } cached)
        {
            log.Info($"{r.Id}: baseline from cache ({Path.GetFileName(path)})");
            return (cached, true);
        }
        Directory.CreateDirectory(folder);
        // One baseline per model id: older ones (other checkpoint or data) are this tool's own cache files.
        if (o.ReferenceCacheFolder is not null)
            foreach (string old in Directory.GetFiles(folder, $"reference-{r.Id}-*.sqref").Where(f => InputFiles.NotARegularFile(f) is null)) File.Delete(old);
        var (logits, batches) = MemoryPlan.Windows(model, eval, ctx, stride);
        using (batches)
            ReferenceFile.Record(path, key, logits, eval, ctx, stride, model.Config.VocabSize, log.Progress($"{r.Id}: reference").Invoke, o.Cancel);
        return (ReferenceFile.TryOpen(path, key, model.Config.VocabSize, eval.Length, ctx, stride)
            ?? throw new InvalidOperationException($"the reference just written to {path} does not read back"), false);
    }

    /// <summary>Content key of a baseline: checkpoint bytes, evaluation tokens, window plan and the file format.</summary>
    public static string Key(string checkpointHash, IReadOnlyList<int> tokens, int context, int stride)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(Encoding.UTF8.GetBytes($"{checkpointHash}|{context}|{stride}|v{ReferenceFile.Version}|"));
        var buffer = new byte[4 * Math.Min(tokens.Count, 1 << 16)];
        for (int start = 0; start < tokens.Count; start += 1 << 16)
        {
            int n = Math.Min(1 << 16, tokens.Count - start);
            for (int i = 0; i < n; i++) BitConverter.TryWriteBytes(buffer.AsSpan(4 * i), tokens[start + i]);
            sha.AppendData(buffer, 0, 4 * n);
        }
        return Convert.ToHexString(sha.GetHashAndReset()).ToLowerInvariant();
    }
}
