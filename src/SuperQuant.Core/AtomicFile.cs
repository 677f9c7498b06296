using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace SuperQuant.Core;

/// <summary>
/// Every file SuperQuant writes (artifacts, GGUF, reports, state, caches) goes through here. On Linux the bytes go
/// into an unnamed file in the target's folder (open(2) with O_TMPFILE): a run killed mid-write, even by SIGKILL,
/// leaves nothing behind, because the kernel frees a file that never got a name. Once flushed it is linked as
/// "target.PID.tmp" and renamed over the target, so a reader never sees half a file. Where the file system has no
/// O_TMPFILE the temp file is named from the start, and a later write of that target removes a killed writer's one.
/// A full disk becomes SQ4004 (<see cref="DiskSpace"/>), checked before writing when the size is known.
/// </summary>
public static class AtomicFile
{
    /// <summary>Set once by the process (the CLI: Manifest's InputFiles): why a path may not be written, or null.
    /// Asked before every write, so no output, whatever option or variable named it, replaces one of the run's inputs.</summary>
    public static Func<string, string?>? Guard { get; set; }

    /// <summary>Throws SQ2009 when <see cref="Guard"/> refuses <paramref name="full"/>.</summary>
    public static void CheckAllowed(string full)
    {
        if (Guard?.Invoke(full) is string refusal) throw new SuperQuantException(ErrorCodes.InvalidArgument, refusal, full);
    }

    /// <summary>Refuses to replace anything but a regular file, whatever flag asked for it: a rename over a character
    /// device, a FIFO or a socket would turn it into a regular file (as root, /dev/null).</summary>
    public static void CheckReplaceable(string full)
    {
        if (Directory.Exists(full))
            throw new SuperQuantException(ErrorCodes.ArtifactWrite, $"cannot write {full}: it is a folder, not a file", full);
        if (FileKind.NotARegularFile(full) is string kind)
            throw new SuperQuantException(ErrorCodes.ArtifactWrite, $"refusing to replace {kind}: an output must be a regular file or a new path", full);
    }

    /// <param name="expectedBytes">The size about to be written, for the free-space check; null when unknown.</param>
    public static void Write(string path, long? expectedBytes, Action<FileStream> write)
    {
        string full = Path.GetFullPath(path);
        CheckAllowed(full);
        CheckReplaceable(full);
        string dir = Path.GetDirectoryName(full)!;
        string temp = full + $".{Environment.ProcessId}.tmp";
        try
        {
            Directory.CreateDirectory(dir);
            RemoveStale(full, ".tmp");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new SuperQuantException(ErrorCodes.ArtifactWrite, $"cannot write {full}: its folder cannot be created or read ({e.Message})", full, e);
        }
        if (expectedBytes is long bytes) DiskSpace.EnsureRoom(full, bytes);
        try
        {
            SafeFileHandle? unnamed = UnnamedFile.Open(dir);
            using (var fs = OpenTemp(unnamed, temp, full, expectedBytes))
            {
                write(fs);
                fs.Flush(flushToDisk: true);
                if (unnamed is not null) UnnamedFile.Link(unnamed, temp);
            }
            File.Move(temp, full, overwrite: true);
        }
        catch (IOException e) when (DiskSpace.IsDiskFull(e))
        {
            TryDelete(temp);
            throw DiskSpace.Full(full, expectedBytes, e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Name the file the user asked for, not our temp file, and say it is a write failure (not "not found").
            TryDelete(temp);
            throw new SuperQuantException(ErrorCodes.ArtifactWrite, $"cannot write {full}: {e.Message.Replace(temp, full)}", full, e);
        }
        catch
        {
            TryDelete(temp);
            throw;
        }
    }

    static FileStream OpenTemp(SafeFileHandle? unnamed, string temp, string full, long? expectedBytes)
    {
#if SUPERQUANT_TEST_HOOKS
        if (FaultTargets(full) && expectedBytes is long size)
            return unnamed is not null ? new KillingFileStream(unnamed, size / 2) : new KillingFileStream(temp, size / 2);
#endif
        return unnamed is not null ? new FileStream(unnamed, FileAccess.Write, 1 << 20)
            : new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
    }

    /// <summary>O_TMPFILE and linkat(2), written by hand: .NET has no API for a file without a name.</summary>
    static class UnnamedFile
    {
        const int OWrOnly = 1, OCloExec = 0x80000, AtFdCwd = -100, AtSymlinkFollow = 0x400, Eexist = 17;

        [DllImport("libc", EntryPoint = "open", SetLastError = true)]
        static extern int open(string path, int flags, int mode);

        [DllImport("libc", EntryPoint = "linkat", SetLastError = true)]
        static extern int linkat(int olddirfd, string oldpath, int newdirfd, string newpath, int flags);

        /// <summary>__O_TMPFILE | O_DIRECTORY, whose values differ between x86_64 and the generic (aarch64) headers.</summary>
        static int? TmpFileFlag => RuntimeInformation.ProcessArchitecture switch
        {
            Architecture.X64 => 0x400000 | 0x10000,
            Architecture.Arm64 => 0x400000 | 0x4000,
            _ => null,
        };

        /// <summary>An unnamed writable file in <paramref name="dir"/>, or null where the kernel or file system has none.</summary>
        public static SafeFileHandle? Open(string dir)
        {
            // Naming the file later goes through /proc/self/fd: without /proc, use a named temp file from the start.
            if (!OperatingSystem.IsLinux() || TmpFileFlag is not int flag || !Directory.Exists("/proc/self/fd")) return null;
            try
            {
                int fd = open(dir, flag | OWrOnly | OCloExec, Convert.ToInt32("666", 8)); // the umask applies, as for any new file
                return fd < 0 ? null : new SafeFileHandle(fd, ownsHandle: true);
            }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return null; }
        }

        /// <summary>Gives the unnamed file the name <paramref name="temp"/> (replacing a stale one of a killed process
        /// that had our PID).</summary>
        public static void Link(SafeFileHandle handle, string temp)
        {
            string self = $"/proc/self/fd/{handle.DangerousGetHandle()}";
            if (linkat(AtFdCwd, self, AtFdCwd, temp, AtSymlinkFollow) == 0) return;
            int errno = Marshal.GetLastPInvokeError();
            if (errno == Eexist)
            {
                File.Delete(temp);
                if (linkat(AtFdCwd, self, AtFdCwd, temp, AtSymlinkFollow) == 0) return;
                errno = Marshal.GetLastPInvokeError();
            }
            throw new IOException($"cannot give the written file the name {temp}: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
        }
    }

    static void TryDelete(string file)
    {
        try { File.Delete(file); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>Deletes "target.PID{suffix}" files of processes that no longer run (a killed writer leaves one). Only
    /// names this tool makes are touched.</summary>
    public static void RemoveStale(string full, string suffix)
    {
        string dir = Path.GetDirectoryName(full)!, name = Path.GetFileName(full);
        if (!Directory.Exists(dir)) return;
        foreach (string temp in Directory.GetFiles(dir, name + ".*" + suffix))
        {
            string pid = Path.GetFileName(temp)[(name.Length + 1)..^suffix.Length];
            if (!int.TryParse(pid, out int p) || p == Environment.ProcessId || IsRunning(p)) continue;
            TryDelete(temp);
        }
    }

    public static bool IsRunning(int pid)
    {
        try { using var p = System.Diagnostics.Process.GetProcessById(pid); return !p.HasExited; }
        catch (ArgumentException) { return false; }
        catch (InvalidOperationException) { return false; }
    }

#if SUPERQUANT_TEST_HOOKS
    /// <summary>Fault injection for tests, compiled into the Debug build only (SUPERQUANT_TEST_HOOKS): the Release build
    /// users install reads no such variable. SUPERQUANT_FAULT=kill-mid-write SIGKILLs the process halfway through a
    /// write; kill-mid-write:TEXT only through a write of a file whose name contains TEXT (e.g. ".sqpk." for artifacts,
    /// "reference-" for the cached baseline).</summary>
    public const string FaultVariable = "SUPERQUANT_FAULT";

    static bool FaultTargets(string path)
    {
        const string kill = "kill-mid-write";
        string? fault = Environment.GetEnvironmentVariable(FaultVariable);
        return fault == kill || (fault is not null && fault.StartsWith(kill + ":", StringComparison.Ordinal)
            && Path.GetFileName(path).Contains(fault[(kill.Length + 1)..], StringComparison.Ordinal));
    }

    /// <summary>Counts bytes and, past the given count, flushes and kills the process (no finally block runs).</summary>
    sealed class KillingFileStream : FileStream
    {
        readonly long _killAfter;
        long _written;

        public KillingFileStream(string path, long killAfter) : base(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20)
            => _killAfter = killAfter;
        public KillingFileStream(SafeFileHandle handle, long killAfter) : base(handle, FileAccess.Write, 1 << 20) => _killAfter = killAfter;

        public override void Write(ReadOnlySpan<byte> buffer) { base.Write(buffer); Count(buffer.Length); }
        public override void Write(byte[] buffer, int offset, int count) { base.Write(buffer, offset, count); Count(count); }
        public override void WriteByte(byte value) { base.WriteByte(value); Count(1); }

        void Count(int n)
        {
            _written += n;
            if (_written < _killAfter) return;
            Flush();
            System.Diagnostics.Process.GetCurrentProcess().Kill();
        }
    }
#endif
}
