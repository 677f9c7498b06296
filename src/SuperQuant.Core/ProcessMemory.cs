namespace SuperQuant.Core;

/// <summary>Resident memory of this process from /proc (Linux). Zero where /proc is absent.</summary>
public static class ProcessMemory
{
    /// <summary>Current resident set size in bytes (VmRSS).</summary>
    public static long Current => Read("VmRSS:");

    /// <summary>Peak resident set size in bytes since start or the last <see cref="ResetPeak"/> (VmHWM).</summary>
    public static long Peak => Read("VmHWM:");

    /// <summary>Resets VmHWM to the current RSS (writing 5 to /proc/self/clear_refs), so a peak can be measured
    /// for one phase of the run. Returns false where the kernel does not allow it.</summary>
    public static bool ResetPeak()
    {
        try { File.WriteAllText("/proc/self/clear_refs", "5"); return true; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return false; }
    }

    /// <summary>Environment variable that sets <see cref="Available"/> (bytes, or with a K/M/G suffix): for machines
    /// whose real limit neither /proc/meminfo nor the cgroup shows.</summary>
    public const string AvailableOverride = "SUPERQUANT_AVAILABLE_MEMORY";

    /// <summary>Memory this run can use: the kernel's MemAvailable, capped by the room left under a cgroup memory
    /// limit (a container's; page cache not counted, the kernel reclaims it), or <see cref="AvailableOverride"/>;
    /// 0 when unknown.</summary>
    public static long Available
    {
        get
        {
            if (Environment.GetEnvironmentVariable(AvailableOverride) is { Length: > 0 } v && TryParseBytes(v, out long given)) return given;
            long free = Read("MemAvailable:", "/proc/meminfo");
            long room = CgroupRoom();
            return free > 0 && room > 0 ? Math.Min(free, room) : Math.Max(free, room);
        }
    }

    /// <summary>The forms <see cref="TryParseBytes"/> accepts, for error messages.</summary>
    public const string ByteForms = ByteSize.Forms;

    /// <summary>Bytes, or a number with a binary (K, M, G, T, KiB..TiB) or decimal (KB..TB) suffix (<see cref="ByteSize"/>).</summary>
    public static bool TryParseBytes(string s, out long bytes) => ByteSize.TryParse(s, out bytes);

    /// <summary>Why <see cref="AvailableOverride"/> cannot be used, or null: checked before any work, so a value the
    /// tool cannot read is an error rather than silently ignored (the real memory used instead).</summary>
    public static string? OverrideProblem() =>
        Environment.GetEnvironmentVariable(AvailableOverride) is { Length: > 0 } v && !TryParseBytes(v, out _)
            ? $"{AvailableOverride}='{(v.Length > 40 ? v[..40] + "..." : v)}' is not a size: expected {ByteForms}" : null;

    /// <summary>cgroup limit minus the group's anonymous memory (v2: memory.max / memory.stat anon; v1:
    /// memory.limit_in_bytes / memory.stat rss); 0 without a limit.</summary>
    static long CgroupRoom()
    {
        static long Number(string file)
        {
            try { return long.TryParse(File.ReadAllText(file).Trim(), out long v) ? v : 0; }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return 0; }
        }
        static long Stat(string file, string key)
        {
            try
            {
                foreach (string line in File.ReadLines(file))
                    if (line.StartsWith(key + " ", StringComparison.Ordinal) && long.TryParse(line[(key.Length + 1)..], out long v)) return v;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
            return 0;
        }
        long limit = Number("/sys/fs/cgroup/memory.max"), used = Stat("/sys/fs/cgroup/memory.stat", "anon");
        if (limit <= 0) { limit = Number("/sys/fs/cgroup/memory/memory.limit_in_bytes"); used = Stat("/sys/fs/cgroup/memory/memory.stat", "rss"); }
        if (limit <= 0 || limit >= 1L << 60) return 0; // no limit ("max", or v1's page-rounded long.MaxValue)
        return Math.Max(1, limit - used);
    }

    static long Read(string key, string file = "/proc/self/status")
    {
        try
        {
            foreach (string line in File.ReadLines(file))
                if (line.StartsWith(key, StringComparison.Ordinal))
                    return long.Parse(line[key.Length..].Trim().Split(' ')[0]) * 1024;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        return 0;
    }
}
