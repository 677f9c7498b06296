using System.Runtime.InteropServices;

namespace SuperQuant.Manifest;

/// <summary>
/// Which file a path really is: (device, inode) for a file that exists, so hard links, symbolic links and different
/// spellings of one file compare equal; for a path that does not exist yet, its real path (<see cref="RealPath"/>).
/// Used to refuse outputs that are inputs and outputs that overwrite each other. Strings are never compared.
/// </summary>
public readonly record struct FileIdentity(string Key)
{
    public static FileIdentity Of(string path)
    {
        string real = RealPath.Resolve(path);
        if (OperatingSystem.IsLinux() && (File.Exists(real) || Directory.Exists(real)) && Stat(real) is (ulong dev, ulong ino))
            return new FileIdentity($"inode:{dev}:{ino}");
        return new FileIdentity("path:" + real);
    }

    [DllImport("libc", EntryPoint = "stat", SetLastError = true)]
    static extern int stat(string path, byte[] buf);

    /// <summary>st_dev and st_ino, the first two 8-byte fields of struct stat on x86_64 and aarch64 Linux.</summary>
    static (ulong, ulong)? Stat(string path)
    {
        try
        {
            var buf = new byte[256]; // struct stat is 144 (x86_64) or 128 (aarch64) bytes
            if (stat(path, buf) != 0) return null;
            return (BitConverter.ToUInt64(buf, 0), BitConverter.ToUInt64(buf, 8));
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return null; }
    }
}

/// <summary>Output paths name files: "out/", "out/." or an existing folder would write the artifact as the folder's
/// own name (or fail after all the work).</summary>
public static class OutputPath
{
    /// <summary>Why <paramref name="written"/> (as the user wrote it; <paramref name="full"/> resolved) does not name a
    /// file, or null.</summary>
    public static string? NotAFile(string written, string full)
    {
        string last = written.Replace('\\', '/').Split('/')[^1];
        if (written.EndsWith('/') || written.EndsWith('\\') || last is "." or "..")
            return $"'{ManifestReader.Excerpt(written)}' names a folder; an output must name a file (e.g. " +
                $"{Path.Combine(written.TrimEnd('/', '\\', '.'), "NAME")})";
        if (Directory.Exists(full)) return $"{full} is a folder; an output must name a file";
        return null;
    }
}

/// <summary>Every input and output of a run, checked once: no output is an input, lies inside an input folder, or is
/// another output. Errors come back through <paramref name="fail"/> with the offending output's own location.</summary>
public sealed class FileIdentityCheck
{
    readonly Dictionary<FileIdentity, string> _inputs = new();
    readonly List<string> _inputFolders = new();
    readonly Dictionary<FileIdentity, string> _outputs = new();

    /// <summary>An input file, or a folder whose files are all inputs (a checkpoint folder).</summary>
    public void AddInput(string path, string what)
    {
        if (Directory.Exists(path))
        {
            _inputFolders.Add(RealPath.Resolve(path));
            _inputs.TryAdd(FileIdentity.Of(path), what);
            foreach (string f in Directory.EnumerateFiles(path)) _inputs.TryAdd(FileIdentity.Of(f), what);
        }
        else if (File.Exists(path)) _inputs.TryAdd(FileIdentity.Of(path), what);
    }

    /// <summary>Returns an error message, or null when <paramref name="path"/> is a fresh, distinct output.</summary>
    public string? AddOutput(string path, string what)
    {
        var id = FileIdentity.Of(path);
        if (_inputs.TryGetValue(id, out var input)) return $"{what} {path} is the same file as {input}: an output may never overwrite an input";
        string real = RealPath.Resolve(path);
        foreach (string folder in _inputFolders)
            if (RealPath.IsUnder(real, folder)) return $"{what} {path} lies inside the input folder {folder}: outputs may not be written into a checkpoint";
        if (_outputs.TryGetValue(id, out var other)) return $"{what} {path} is the same file as {other}: two outputs would overwrite each other";
        _outputs[id] = what;
        return null;
    }
}
