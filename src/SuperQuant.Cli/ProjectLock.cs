using System.Security.Cryptography;
using System.Text;
using SuperQuant.Manifest;

namespace SuperQuant.Cli;

/// <summary>
/// Serializes runs on one project: an exclusive lock per file identity of the manifest and of every output it writes,
/// so two runs on the same manifest (whatever --state or --report-dir they use, whatever path spells it) or on two
/// manifests sharing an output wait for each other. Locks are taken in one global order (no deadlock) on files under
/// the temp folder, which are never deleted (deleting a lock file races with the next run's open).
/// </summary>
public sealed class ProjectLock : IDisposable
{
    readonly List<FileStream> _held;
    ProjectLock(List<FileStream> held) { _held = held; }

    /// <summary>The lock files a run on <paramref name="m"/> takes, in the order it takes them.</summary>
    public static IReadOnlyList<string> LockFiles(QuantizeManifest m)
    {
        string folder = Path.Combine(Path.GetTempPath(), "superquant-locks");
        return new[] { FileIdentity.Of(m.Path).Key }
            .Concat(m.Models.SelectMany(e => e.Exports).Select(x => FileIdentity.Of(x.Path).Key))
            .Select(k => Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(k)))[..24].ToLowerInvariant())
            .Distinct().Order(StringComparer.Ordinal).Select(k => Path.Combine(folder, k + ".lock")).ToList();
    }

    public static ProjectLock Acquire(QuantizeManifest m, TimeSpan timeout)
    {
        var paths = LockFiles(m);
        Directory.CreateDirectory(Path.GetDirectoryName(paths[0])!);
        var held = new List<FileStream>();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        bool told = false;
        try
        {
            foreach (string path in paths)
            {
                while (true)
                {
                    try
                    {
                        held.Add(new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1));
                        break;
                    }
                    catch (IOException)
                    {
                        if (clock.Elapsed >= timeout)
                            throw new Core.SuperQuantException("SQ0005",
                                $"another superquant run on {m.Path} (or on one of its outputs) still holds the project's lock after " +
                                $"{timeout.TotalSeconds:F0} s (lock file {path}); is a build stuck?", m.Path);
                        if (!told) { Console.WriteLine($"waiting for another superquant run on this project (lock {path})"); told = true; }
                        Thread.Sleep(200);
                    }
                }
            }
        }
        catch
        {
            foreach (var f in held) f.Dispose();
            throw;
        }
        return new ProjectLock(held);
    }

    public void Dispose()
    {
        foreach (var f in _held) f.Dispose();
    }
}
