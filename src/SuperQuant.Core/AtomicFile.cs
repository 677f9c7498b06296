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
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(full)!);
            RemoveStale(full, ".tmp");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new SuperQuantException(ErrorCodes.ArtifactWrite, $"cannot write {full}: its folder cannot be created or read ({e.Message})", full, e);
        }
        if (expectedBytes is long bytes) DiskSpace.EnsureRoom(full, bytes);
        try
        {
            using (var fs = FaultTargets(full) && expectedBytes is long size
                       ? new KillingFileStream(temp, size / 2)
                       : new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
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
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Name the file the user asked for, not our temp file, and say it is a write failure (not "not found").
            TryDelete(temp);
            throw new SuperQuantException(ErrorCodes.ArtifactWrite, $"cannot write {full}: {e.Message.Replace(temp, full)}", full, e);
        }
        catch
        {
            TryDelete(temp);
            throw;
        }
    }

    static void TryDelete(string file)
    {
        try { File.Delete(file); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>Deletes "target.PID{suffix}" files of processes that no longer run (a killed writer leaves one). Only
    /// names this tool makes are touched.</summary>
    public static void RemoveStale(string full, string suffix)
    {
        string dir = Path.GetDirectoryName(full)!, name = Path.GetFileName(full);
        if (!Directory.Exists(dir)) return;
        foreach (string temp in Directory.GetFiles(dir, name + ".*" + suffix))
        {
            string pid = Path.GetFileName(temp)[(name.Length + 1)..^suffix.Length];
            if (!int.TryParse(pid, out int p) || p == Environment.ProcessId || IsRunning(p)) continue;
            TryDelete(temp);
        }
    }

    public static bool IsRunning(int pid)
    {
        try { using var p = System.Diagnostics.Process.GetProcessById(pid); return !p.HasExited; }
        catch (ArgumentException) { return false; }
        catch (InvalidOperationException) { return false; }
    }

    /// <summary>Fault injection for tests: SUPERQUANT_FAULT=kill-mid-write SIGKILLs the process halfway through a
    /// write; kill-mid-write:TEXT only through a write of a file whose name contains TEXT (e.g. ".sqpk." for artifacts,
    /// "reference-" for the cached baseline).</summary>
    public const string FaultVariable = "SUPERQUANT_FAULT";

    static bool FaultTargets(string path)
    {
        const string kill = "kill-mid-write";
        string? fault = Environment.GetEnvironmentVariable(FaultVariable);
        return fault == kill || (fault is not null && fault.StartsWith(kill + ":", StringComparison.Ordinal)
            && Path.GetFileName(path).Contains(fault[(kill.Length + 1)..], StringComparison.Ordinal));
    }

    /// <summary>Counts bytes and, past the given count, flushes and kills the process (no finally block runs).</summary>
    sealed class KillingFileStream(string path, long killAfter) : FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20)
    {
        long _written;

        public override void Write(ReadOnlySpan<byte> buffer) { base.Write(buffer); Count(buffer.Length); }
        public override void Write(byte[] buffer, int offset, int count) { base.Write(buffer, offset, count); Count(count); }
        public override void WriteByte(byte value) { base.WriteByte(value); Count(1); }

        void Count(int n)
        {
            _written += n;
            if (_written < killAfter) return;
            Flush();
            System.Diagnostics.Process.GetCurrentProcess().Kill();
        }
    }
}
