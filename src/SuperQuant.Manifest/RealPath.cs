namespace SuperQuant.Manifest;

/// <summary>
/// Resolves every symbolic link along a path as the kernel does, like POSIX realpath(3): components are walked left to
/// right, a link's target is spliced in and walked in turn, and ".." steps back from where the walk really is, after
/// the links before it were followed (so "link/.." is the parent of the link's target, not the link's own folder).
/// .NET has no such API (<see cref="FileSystemInfo.ResolveLinkTarget"/> resolves one component and Path.GetFullPath
/// collapses ".." as text). Components that do not exist yet are kept as written.
/// </summary>
public static class RealPath
{
    const int MaxLinks = 40; // Linux's own limit (ELOOP)

    public static string Resolve(string path)
    {
        // Absolute without normalizing: GetFullPath would apply ".." before the links to its left are followed.
        string abs = Path.IsPathRooted(path) ? path : Path.Combine(Directory.GetCurrentDirectory(), path);
        string root = Path.GetPathRoot(abs)!;
        var pending = new Stack<string>(Split(abs[root.Length..]).Reverse());
        var resolved = new List<string>(); // components of the real path so far, under root
        int links = 0;
        while (pending.Count > 0)
        {
            string part = pending.Pop();
            if (part == ".") continue;
            if (part == "..") { if (resolved.Count > 0) resolved.RemoveAt(resolved.Count - 1); continue; }
            string candidate = root + string.Join(Path.DirectorySeparatorChar, resolved.Append(part));
            string? target = LinkTarget(candidate);
            if (target is null) { resolved.Add(part); continue; }
            if (++links > MaxLinks) throw new IOException($"too many levels of symbolic links in {path}");
            // A relative target continues from the link's folder; an absolute one from the root.
            if (Path.IsPathRooted(target)) { resolved.Clear(); target = target[Path.GetPathRoot(target)!.Length..]; }
            foreach (string t in Split(target).Reverse()) pending.Push(t);
        }
        return root + string.Join(Path.DirectorySeparatorChar, resolved);
    }

    static string[] Split(string p) => p.Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries);

    static string? LinkTarget(string path)
    {
        try { return new FileInfo(path).LinkTarget; } // null: not a link (or not there yet); dangling links still resolve
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    /// <summary>True when <paramref name="path"/> is <paramref name="folder"/> or lies under it (both full paths).</summary>
    public static bool IsUnder(string path, string folder)
    {
        string f = folder.EndsWith(Path.DirectorySeparatorChar) ? folder : folder + Path.DirectorySeparatorChar;
        return path == folder.TrimEnd(Path.DirectorySeparatorChar) || path.StartsWith(f, StringComparison.Ordinal);
    }
}
