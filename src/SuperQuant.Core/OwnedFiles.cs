using System.Collections.Concurrent;

namespace SuperQuant.Core;

/// <summary>Files and temp folders this process created and has not shipped (staged artifacts, GGUF candidates,
/// scratch folders): what a second
/// SIGTERM/SIGINT deletes before the process ends, so an interrupted run leaves nothing of its own behind. Only
/// files registered here are ever deleted by it.</summary>
public static class OwnedFiles
{
    static readonly ConcurrentDictionary<string, byte> Files = new();

    public static void Add(string path) => Files[Path.GetFullPath(path)] = 0;

    /// <summary>Shipped (renamed to its final path) or deleted: no longer ours to remove.</summary>
    public static void Remove(string path) => Files.TryRemove(Path.GetFullPath(path), out _);

    public static void DeleteAll()
    {
        foreach (string f in Files.Keys)
        {
            try
            {
                if (Directory.Exists(f)) Directory.Delete(f, recursive: true);
                else File.Delete(f);
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
            Files.TryRemove(f, out _);
        }
    }
}
