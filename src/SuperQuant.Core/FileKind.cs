using System.Runtime.InteropServices;

namespace SuperQuant.Core;

/// <summary>What kind of file a path is. Readers refuse anything but regular files before opening them (a FIFO would
/// block the run forever, /dev/zero would never end), and the one write primitive refuses to replace one (a device
/// turned into a regular file by a rename). One source compiled into Core and Manifest (linked), which share no reference.</summary>
internal static class FileKind
{
    /// <summary>Why <paramref name="path"/> cannot be read as a data file (it is a FIFO, a device, a socket or a folder:
    /// a FIFO would block the run forever, /dev/zero would never end), or null for a regular file or a missing one
    /// (its reader says "not found").</summary>
    public static string? NotARegularFile(string path)
    {
        if (Directory.Exists(path)) return $"{path} is a folder, not a file";
        if (!OperatingSystem.IsLinux() || !File.Exists(path)) return null;
        uint? mode = StatMode(path);
        if (mode is not uint m) return null;
        string? kind = (m & 0xF000) switch
        {
            0x8000 => null, // S_IFREG
            0x1000 => "a FIFO (named pipe)",
            0x2000 => "a character device",
            0x6000 => "a block device",
            0xC000 => "a socket",
            0x4000 => "a folder",
            _ => "not a regular file",
        };
        return kind is null ? null : $"{path} is {kind}, not a regular file";
    }

    [DllImport("libc", EntryPoint = "stat", SetLastError = true)]
    static extern int stat(string path, byte[] buf);

    /// <summary>st_mode of struct stat: offset 24 on x86_64 (after st_dev, st_ino, st_nlink, 8 bytes each), 16 on
    /// aarch64 (st_nlink follows it there). Written by hand: .NET exposes the permission bits only, not the file type.</summary>
    static uint? StatMode(string path)
    {
        int offset = RuntimeInformation.ProcessArchitecture switch { Architecture.X64 => 24, Architecture.Arm64 => 16, _ => -1 };
        if (offset < 0) return null;
        try
        {
            var buf = new byte[256];
            return stat(path, buf) == 0 ? BitConverter.ToUInt32(buf, offset) : null;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return null; }
    }
}
