using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using SuperQuant.Cli.Reports;
using SuperQuant.Manifest;

namespace SuperQuant.Cli.Gate;

/// <summary>
/// The build state of a gate run (the --state file MSBuild keeps in obj/): per model, the hash of everything its
/// result depends on, the files it shipped with their SHA-256, and its report. A model is up to date when its input
/// hash is unchanged, it passed, and every output still holds the bytes it shipped; then it is not re-quantized.
/// </summary>
public static class BuildState
{
    /// <param name="OutputSha256">Each shipped file's SHA-256 when it was promoted: "up to date" needs the inputs
    /// unchanged and every output still holding those bytes (another manifest, or a hand edit, may have replaced it).</param>
    public sealed record StateEntry(string InputHash, List<string> Outputs, ModelReport Report, Dictionary<string, string>? OutputSha256 = null);
    /// <summary>What the last runs shipped, per model. <paramref name="Checksum"/>: SHA-256 of the models as written, so
    /// a state edited or damaged in place is not believed (the models run again) rather than reporting numbers no run
    /// measured.</summary>
    public sealed record State(Dictionary<string, StateEntry> Models, string? Checksum = null)
    {
        public static string ChecksumOf(Dictionary<string, StateEntry> models) =>
            Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(JsonSerializer.Serialize(models, AnalysisReport.Json)))).ToLowerInvariant();
    }

    /// <summary>Why the files a state entry shipped are no longer what it shipped (missing, or other bytes), or null.</summary>
    public static string? ChangedOutput(StateEntry old)
    {
        if (old.OutputSha256 is null) return "the state holds no output hashes (older tool)";
        foreach (string f in old.Outputs)
        {
            if (!File.Exists(f)) return $"{f} is missing";
            if (!old.OutputSha256.TryGetValue(f, out var sha) || sha != Sha256(f)) return $"{f} is not the file this model shipped (its content changed)";
        }
        return null;
    }

    public static string Sha256(string file)
    {
        using var s = File.OpenRead(file);
        return Convert.ToHexString(SHA256.HashData(s)).ToLowerInvariant();
    }

    /// <summary>Content hash of everything a model's result depends on: its settings, checkpoint, data files and the
    /// tool version. Equal hash = nothing to recompute.</summary>
    public static string InputHash(ModelEntry e, string toolVersion, string checkpointHash)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(Encoding.UTF8.GetBytes($"{e.SettingsKey}\n{toolVersion}\n{checkpointHash}\n"));
        foreach (string f in e.DataFiles) sha.AppendData(Convert.FromHexString(Sha256(f)));
        return Convert.ToHexString(sha.GetHashAndReset()).ToLowerInvariant();
    }

    /// <summary>A damaged or foreign state file only costs a re-run: anything that does not parse as ours is ignored.</summary>
    public static State ReadState(string path)
    {
        try
        {
            // Not a regular file (a FIFO would block the read): not ours, ignored.
            if (!File.Exists(path) || SuperQuant.Manifest.InputFiles.NotARegularFile(path) is not null
                || new FileInfo(path).Length > 64L << 20) return new State(new());
            var s = JsonSerializer.Deserialize<State>(File.ReadAllText(path), AnalysisReport.Json);
            if (s?.Models is null || s.Checksum != State.ChecksumOf(s.Models)) return new State(new());
            return new State(s.Models.Where(kv => kv.Value is { InputHash: not null, Outputs: not null, Report: not null }
                && kv.Value.Report.Artifacts is not null)
                .ToDictionary(kv => kv.Key, kv => kv.Value));
        }
        catch (Exception e) when (e is JsonException or NotSupportedException or InvalidOperationException or IOException
            or UnauthorizedAccessException or ArgumentException)
        {
            return new State(new());
        }
    }

    /// <summary>The version and the build identity (module version ids, deterministic per source) of every SuperQuant
    /// assembly: a rebuilt tool with changed code re-quantizes, an unchanged rebuild does not.</summary>
    public static string ToolVersion() => string.Join(";", new[]
        {
            typeof(BuildState), typeof(SuperQuant.Pipeline.QuantizationPipeline), typeof(SuperQuant.Core.Llama.LlamaModel),
            typeof(SuperQuant.Models.Gguf.GgufWriter), typeof(SuperQuant.Manifest.Names), typeof(SuperQuant.LlamaCpp.LlamaCppModel),
        }.Select(t => t.Assembly).Select(a => $"{a.GetName().Name} {a.GetName().Version} {a.ManifestModule.ModuleVersionId}"));
}
