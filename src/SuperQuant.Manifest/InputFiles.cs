using System.Runtime.InteropServices;

namespace SuperQuant.Manifest;

/// <summary>
/// Every file (and checkpoint folder) this process has read as an input, by identity (<see cref="FileIdentity"/>:
/// device and inode, so a hard link or another spelling is the same file). The readers register what they open; the
/// one write primitive (Core's AtomicFile) and the staging rename ask <see cref="RefusalFor"/> before they replace a
/// path. So no path a run writes can be one of its inputs, whatever option, manifest key or environment variable named
/// it; the up-front checks of each command still say so earlier, with the option or the manifest line.
/// </summary>
public static class InputFiles
{
    static readonly object Lock = new();
    static readonly Dictionary<FileIdentity, string> Files = new();
    static readonly List<(string Real, string What)> Folders = new();

    /// <summary>A file read as an input, or a checkpoint folder (no write may land inside it).</summary>
    public static void Register(string path, string what)
    {
        try
        {
            if (Directory.Exists(path))
            {
                string real = RealPath.Resolve(path);
                lock (Lock) if (!Folders.Any(f => f.Real == real)) Folders.Add((real, what));
                // Its files by identity too: a hard link elsewhere is still the checkpoint's file.
                foreach (string f in Directory.EnumerateFiles(path))
                {
                    var id = FileIdentity.Of(f);
                    lock (Lock) Files.TryAdd(id, $"{what} {Path.GetFullPath(path)} ({Path.GetFileName(f)})");
                }
            }
            else if (File.Exists(path))
            {
                var id = FileIdentity.Of(path);
                lock (Lock) Files.TryAdd(id, $"{what} {Path.GetFullPath(path)}");
            }
        }
        catch (IOException) { } // a path that cannot be resolved cannot be opened either: its reader reports it
    }

    /// <summary>Why <paramref name="path"/> may not be written (it is an input of this run, or lies inside an input
    /// folder), or null.</summary>
    public static string? RefusalFor(string path)
    {
        lock (Lock)
        {
            if (Files.Count == 0 && Folders.Count == 0) return null;
            if (Files.TryGetValue(FileIdentity.Of(path), out var input))
                return $"refusing to write {Path.GetFullPath(path)}: it is the same file as this run's input ({input}); an output may never overwrite an input";
            string real = RealPath.Resolve(path);
            foreach (var (folder, what) in Folders)
                if (RealPath.IsUnder(real, folder))
                    return $"refusing to write {Path.GetFullPath(path)}: it lies inside this run's input folder ({what} {folder})";
        }
        return null;
    }

    /// <summary>For tests in one process: forget every registered input.</summary>
    public static void Clear()
    {
        lock (Lock) { Files.Clear(); Folders.Clear(); }
    }

    /// <summary>Why <paramref name="path"/> cannot be read as a data file (<see cref="SuperQuant.Core.FileKind.NotARegularFile"/>).</summary>
    public static string? NotARegularFile(string path) => SuperQuant.Core.FileKind.NotARegularFile(path);
}
