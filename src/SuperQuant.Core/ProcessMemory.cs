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

    /// <summary>Memory the kernel says can be given to a new process without swapping (MemAvailable), 0 when unknown.</summary>
    public static long Available => Read("MemAvailable:", "/proc/meminfo");

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
