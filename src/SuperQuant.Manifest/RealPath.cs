namespace SuperQuant.Manifest;

/// <summary>
/// Resolves every symbolic link along a path (not only the last component), like POSIX realpath(3): .NET has no such
/// API (<see cref="FileSystemInfo.ResolveLinkTarget"/> resolves one component), and a manifest path is only safe to
/// accept once the folder it really lands in is known. Components that do not exist yet are kept as written.
/// </summary>
public static class RealPath
{
    const int MaxLinks = 40; // Linux's own limit (ELOOP)

    public static string Resolve(string path)
    {
        string full = Path.GetFullPath(path);
        string root = Path.GetPathRoot(full)!;
        var pending = new Stack<string>(full[root.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries).Reverse());
        string current = root;
        int links = 0;
        while (pending.Count > 0)
        {
            string next = Path.Combine(current, pending.Pop());
            FileSystemInfo info = Directory.Exists(next) ? new DirectoryInfo(next) : new FileInfo(next);
            if (info.LinkTarget is not string target) { current = next; continue; }
            if (++links > MaxLinks) throw new IOException($"too many levels of symbolic links in {path}");
            // A relative target is relative to the link's folder; its own components may be links again.
            string resolved = Path.GetFullPath(Path.IsPathRooted(target) ? target : Path.Combine(current, target));
            string resolvedRoot = Path.GetPathRoot(resolved)!;
            foreach (string part in resolved[resolvedRoot.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries).Reverse())
                pending.Push(part);
            current = resolvedRoot;
        }
        return current;
    }

    /// <summary>True when <paramref name="path"/> is <paramref name="folder"/> or lies under it (both full paths).</summary>
    public static bool IsUnder(string path, string folder)
    {
        string f = folder.EndsWith(Path.DirectorySeparatorChar) ? folder : folder + Path.DirectorySeparatorChar;
        return path == folder.TrimEnd(Path.DirectorySeparatorChar) || path.StartsWith(f, StringComparison.Ordinal);
    }
}
