using SuperQuant.Core;

namespace SuperQuant.Pipeline;

/// <summary>
/// An artifact written next to its destination as "NAME.PID.staged", measured there, then renamed over the destination
/// (<see cref="Promote"/>) only when it passed, or deleted (<see cref="Discard"/>). A run only ever deletes its own
/// staging files (and those of runs that were killed: their PID is gone), never a file it did not create.
/// </summary>
public sealed class StagedFile
{
    public string FinalPath { get; }
    public string StagingPath { get; }
    public bool Promoted { get; private set; }

    StagedFile(string finalPath)
    {
        FinalPath = Path.GetFullPath(finalPath);
        StagingPath = FinalPath + $".{Environment.ProcessId}.staged";
    }

    public static StagedFile For(string finalPath)
    {
        var f = new StagedFile(finalPath);
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(f.FinalPath)!);
            RemoveStale(f.FinalPath);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new SuperQuantException(ErrorCodes.ArtifactWrite, $"cannot write {f.FinalPath}: its folder cannot be created ({e.Message})", f.FinalPath, e);
        }
        OwnedFiles.Add(f.StagingPath);
        return f;
    }

    /// <summary>Staging files of runs that were killed: "NAME.PID.staged", its candidates and its temp files
    /// ("NAME.PID.staged.*"), when process PID no longer runs. Nothing else is touched.</summary>
    static void RemoveStale(string final)
    {
        string dir = Path.GetDirectoryName(final)!, name = Path.GetFileName(final);
        foreach (string f in Directory.GetFiles(dir, name + ".*.staged*"))
        {
            string rest = Path.GetFileName(f)[(name.Length + 1)..];
            int dot = rest.IndexOf('.');
            if (dot <= 0 || !rest[(dot + 1)..].StartsWith("staged", StringComparison.Ordinal) || !int.TryParse(rest[..dot], out int pid)) continue;
            if (pid == Environment.ProcessId || AtomicFile.IsRunning(pid)) continue;
            try { File.Delete(f); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    public void Promote()
    {
        if (Promoted) return;
        AtomicFile.CheckAllowed(FinalPath);
        AtomicFile.CheckReplaceable(FinalPath);
        File.Move(StagingPath, FinalPath, overwrite: true);
        OwnedFiles.Remove(StagingPath);
        Promoted = true;
    }

    public void Discard()
    {
        if (Promoted) return;
        try { File.Delete(StagingPath); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        OwnedFiles.Remove(StagingPath);
    }
}
