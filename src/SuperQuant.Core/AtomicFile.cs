namespace SuperQuant.Core;

/// <summary>
/// Every file SuperQuant writes (artifacts, GGUF, reports, state, caches) goes through here: written to
/// "target.PID.tmp" in the target's folder, flushed, then renamed over the target, so a reader never sees half a file
/// and a killed writer leaves only a temp file, which the next write of that target removes. A full disk becomes
/// SQ4004 (<see cref="DiskSpace"/>), checked before writing when the size is known.
/// </summary>
public static class AtomicFile
{
    /// <param name="expectedBytes">The size about to be written, for the free-space check; null when unknown.</param>
    public static void Write(string path, long? expectedBytes, Action<FileStream> write)
    {
        string full = Path.GetFullPath(path);
        string temp = full + $".{Environment.ProcessId}.tmp";
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        RemoveStaleTemps(full);
        if (expectedBytes is long bytes) DiskSpace.EnsureRoom(full, bytes);
        try
        {
            using (var fs = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            {
                write(fs);
                fs.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
        }
        catch (IOException e) when (DiskSpace.IsDiskFull(e))
        {
            TryDelete(temp);
            throw DiskSpace.Full(full, expectedBytes, e);
        }
        catch
        {
            TryDelete(temp);
            throw;
        }
    }

    static void TryDelete(string file)
    {
        try { File.Delete(file); } catch (IOException) { }
    }

    /// <summary>Deletes "target.PID.tmp" files of processes that no longer run (a killed writer leaves one).</summary>
    static void RemoveStaleTemps(string full)
    {
        string dir = Path.GetDirectoryName(full)!, name = Path.GetFileName(full);
        foreach (string temp in Directory.GetFiles(dir, name + ".*.tmp"))
        {
            string pid = Path.GetFileName(temp)[(name.Length + 1)..^4];
            if (!int.TryParse(pid, out int p) || p == Environment.ProcessId || IsRunning(p)) continue;
            TryDelete(temp);
        }
    }

    static bool IsRunning(int pid)
    {
        try { using var p = System.Diagnostics.Process.GetProcessById(pid); return !p.HasExited; }
        catch (ArgumentException) { return false; }
        catch (InvalidOperationException) { return false; }
    }
}
