using SuperQuant.Core;
using SuperQuant.Manifest;

namespace SuperQuant.Pipeline.Stages;

/// <summary>What a run holds until it ends, released whatever happens: open reference files and statistics, then its
/// temp folder; and the staged files it created, discarded if the run fails (never shipped).</summary>
sealed class RunScope : IDisposable
{
    readonly List<IDisposable> _items = new();
    string? _folder;
    public List<StagedFile> Staged { get; } = new();

    /// <summary>The run's temp folder (reference baselines outside a cache, calibration folds).</summary>
    public string? Folder
    {
        get => _folder;
        set { _folder = value; if (value is not null) OwnedFiles.Add(value); }
    }

    public void Add(IDisposable d) => _items.Add(d);

    /// <summary>A staging file for <paramref name="destination"/>, discarded if the run fails.</summary>
    public StagedFile Stage(string destination)
    {
        var file = StagedFile.For(destination);
        Staged.Add(file);
        return file;
    }

    public void Dispose()
    {
        foreach (var d in _items) d.Dispose();
        if (Folder is null) return;
        try { Directory.Delete(Folder, recursive: true); } catch (IOException) { }
        OwnedFiles.Remove(Folder);
    }
}

/// <summary>An artifact written to its staging file, not yet measured.</summary>
sealed record WrittenArtifact(ArtifactSpec Spec, StagedFile File, string Layout, double BitsPerWeight);
