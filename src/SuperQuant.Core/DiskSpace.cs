namespace SuperQuant.Core;

/// <summary>
/// Disk-full handling for every writer: a check of the free space before a write whose size is known, and the
/// recognition of "no space left" when the device fills up during the write anyway (another process, quotas).
/// Both become <see cref="ErrorCodes.DiskFull"/> with the file, the size and the free space, instead of an IOException
/// naming a temp file.
/// </summary>
public static class DiskSpace
{
    const int Enospc = 28, Edquot = 122;              // Linux errno values .NET puts in HResult on Unix
    const int ErrorHandleDiskFull = 0x27, ErrorDiskFull = 0x70; // Windows, in the low word of the HResult

    public static bool IsDiskFull(IOException e) =>
        e.HResult is Enospc or Edquot || (e.HResult & 0xFFFF) is ErrorHandleDiskFull or ErrorDiskFull && (e.HResult >>> 16) == 0x8007;

    /// <summary>Free bytes for the folder that will hold <paramref name="path"/>, or null when unknown.</summary>
    public static long? Available(string path)
    {
        try
        {
            string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
            while (dir is not null && !Directory.Exists(dir)) dir = Path.GetDirectoryName(dir);
            return dir is null ? null : new DriveInfo(dir).AvailableFreeSpace;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException) { return null; }
    }

    /// <summary>Throws SQ4004 before writing <paramref name="bytes"/> to <paramref name="path"/> when they cannot fit.</summary>
    public static void EnsureRoom(string path, long bytes)
    {
        if (Available(path) is long free && free < bytes) throw Full(path, bytes, null);
    }

    public static SuperQuantException Full(string path, long? bytes, IOException? inner)
    {
        string need = bytes is long b ? $"{Mib(b)} needed, " : "";
        string free = Available(path) is long f ? $"{Mib(f)} free" : "free space unknown";
        return new SuperQuantException(ErrorCodes.DiskFull,
            $"no space left on the device for {path} ({need}{free}); nothing was written at that path. Free some space or choose another output " +
                $"folder.", path, inner);
    }

    static string Mib(long bytes) => $"{bytes / 1048576.0:F1} MiB";
}
