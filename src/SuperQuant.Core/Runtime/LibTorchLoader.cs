using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;

namespace SuperQuant.Core.Runtime;

/// <summary>
/// Makes TorchSharp run on the libtorch <see cref="LibTorchLocator"/> chose, before anything touches TorchSharp.
///
/// Why this is hand-written: TorchSharp loads libtorch by name (NativeLibrary.TryLoad("torch_cpu", assembly)), which
/// probes the app's own native folders before the system loader, and takes no folder from the caller. Loading a
/// second libtorch beside the bundled one aborts the process (measured: "Tried to register multiple backend
/// fallbacks for the same dispatch key"). So:
/// - no bundled libtorch next to the app (a publish without it, as on the GPU machine): the chosen folder's libraries
///   are loaded by full path here, and TorchSharp's later loads by name find them already loaded (by soname);
/// - a bundled libtorch next to the app (the default NuGet restore): this process runs itself again with
///   LD_LIBRARY_PATH = [a private folder of alias links, the chosen folder]; the alias links (torch_cpu.so,
///   torch_cuda.so) answer the first name TorchSharp probes, so the loader takes the chosen libtorch before it ever
///   reaches the bundled files. The child's exit code is this process's.
/// Either way the libtorch shim (libLibTorchSharp.so) is loaded here first, so a libtorch TorchSharp cannot use fails
/// with SQ0001 naming both versions instead of a native crash.
/// </summary>
public static class LibTorchLoader
{
    /// <summary>Set in the re-run child: the chosen libtorch folder and the choice as JSON.</summary>
    public const string ActiveVariable = "SUPERQUANT_LIBTORCH_ACTIVE";
    public const string ChoiceVariable = "SUPERQUANT_LIBTORCH_CHOICE";

    /// <summary>What this process runs on (bundled until <see cref="Activate"/> says otherwise).</summary>
    public static LibTorchChoice Current { get; private set; } = new() { Source = "bundled (not chosen: Activate was not called)" };

    /// <summary>How the choice was put into effect: bundled, preloaded in process, or re-run with LD_LIBRARY_PATH.</summary>
    public static string Mode { get; private set; } = "bundled";

    /// <summary>Chooses and loads libtorch. Returns null to go on in this process, or the exit code of the child
    /// this process ran itself as.</summary>
    public static int? Activate(string[] args, ILibTorchEnvironment env)
    {
        if (!OperatingSystem.IsLinux())
        {
            Current = new LibTorchChoice { Source = "bundled (bring-your-own libtorch is implemented for Linux only)" };
            return null;
        }
        if (ChildChoice(env) is LibTorchChoice inherited)
        {
            Current = inherited;
            Mode = "re-run with LD_LIBRARY_PATH";
            LoadShim(inherited);
            return null;
        }
        LibTorchChoice choice = LibTorchLocator.Choose(env);
        Current = choice;
        if (choice.IsBundled) return null;
        if (!BundledLibTorchPresent())
        {
            Mode = "loaded in process";
            Preload(choice);
            LoadShim(choice);
            return null;
        }
        Mode = "re-run with LD_LIBRARY_PATH";
        return RunAsChild(args, choice);
    }

    /// <summary>The choice a parent passed down, when this process really is that child (LD_LIBRARY_PATH starts with
    /// alias links into the named folder); a stray variable alone is ignored.</summary>
    static LibTorchChoice? ChildChoice(ILibTorchEnvironment env)
    {
        string? folder = env.Variable(ActiveVariable), json = env.Variable(ChoiceVariable);
        string? first = env.Variable("LD_LIBRARY_PATH")?.Split(':').FirstOrDefault();
        if (string.IsNullOrEmpty(folder) || string.IsNullOrEmpty(json) || string.IsNullOrEmpty(first)) return null;
        string alias = Path.Combine(first, "torch_cpu.so");
        if (new FileInfo(alias).LinkTarget is not string target || Path.GetFullPath(target) != Path.Combine(folder, "libtorch_cpu.so")) return null;
        try { return JsonSerializer.Deserialize<LibTorchChoice>(json); }
        catch (JsonException) { return null; }
    }

    /// <summary>A libtorch the runtime's probing would find before the system loader: in the app folder or any folder
    /// of the app's native assets (deps.json).</summary>
    public static bool BundledLibTorchPresent()
    {
        var folders = new List<string> { AppContext.BaseDirectory };
        if (AppContext.GetData("NATIVE_DLL_SEARCH_DIRECTORIES") is string dirs) folders.AddRange(dirs.Split(Path.PathSeparator,
            StringSplitOptions.RemoveEmptyEntries));
        return folders.Any(f => File.Exists(Path.Combine(f, "libtorch_cpu.so")) || File.Exists(Path.Combine(f, "torch_cpu.so")));
    }

    static readonly string[] LoadOrder = { "libc10.so", "libtorch_cpu.so", "libc10_cuda.so", "libtorch_cuda.so", "libtorch.so" };

    static void Preload(LibTorchChoice choice)
    {
        foreach (string name in LoadOrder)
        {
            string path = Path.Combine(choice.Folder!, name);
            if (!File.Exists(path)) continue;
            try { NativeLibrary.Load(path); }
            catch (DllNotFoundException e) { throw LoadError(choice, path, e); }
            catch (BadImageFormatException e) { throw LoadError(choice, path, e); }
        }
    }

    /// <summary>Loads TorchSharp's shim against the chosen libtorch: an ABI mismatch shows here as an undefined symbol.</summary>
    static void LoadShim(LibTorchChoice choice)
    {
        string? shim = new[] { Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so"),
            Path.Combine(AppContext.BaseDirectory, "libLibTorchSharp.so") }
            .FirstOrDefault(File.Exists);
        if (shim is null) return; // TorchSharp reports its own missing shim
        try { NativeLibrary.Load(shim); }
        catch (DllNotFoundException e) { throw LoadError(choice, shim, e); }
        catch (BadImageFormatException e) { throw LoadError(choice, shim, e); }
    }

    static SuperQuantException LoadError(LibTorchChoice choice, string path, Exception e) => new(ErrorCodes.NativeLoad,
        $"libtorch from {choice.Source} ({choice.Folder}, version {choice.Version ?? "unknown"}) cannot be used by TorchSharp 0.107, which is built " +
            $"against libtorch {LibTorchLocator.BundledVersion}: "
        + $"loading {Path.GetFileName(path)} failed: {e.Message.Split('\n')[0]}. Set {LibTorchLocator.EnvironmentVariable}=bundled to use the " +
            $"bundled CPU libtorch.", choice.Folder);

    static int RunAsChild(string[] args, LibTorchChoice choice)
    {
        // A private folder made for this run (mode 0700), removed when the child ends: nothing shared in /tmp is trusted.
        DirectoryInfo alias = Directory.CreateTempSubdirectory("superquant-libtorch-");
        try
        {
            File.CreateSymbolicLink(Path.Combine(alias.FullName, "torch_cpu.so"), Path.Combine(choice.Folder!, "libtorch_cpu.so"));
            if (File.Exists(Path.Combine(choice.Folder!, "libtorch_cuda.so")))
                File.CreateSymbolicLink(Path.Combine(alias.FullName, "torch_cuda.so"), Path.Combine(choice.Folder!, "libtorch_cuda.so"));
            string host = Environment.ProcessPath ?? throw new InvalidOperationException("no process path to re-run");
            var psi = new ProcessStartInfo(host) { UseShellExecute = false };
            if (Path.GetFileNameWithoutExtension(host) == "dotnet") psi.ArgumentList.Add(Environment.GetCommandLineArgs()[0]);
            foreach (string a in args) psi.ArgumentList.Add(a);
            string? old = Environment.GetEnvironmentVariable("LD_LIBRARY_PATH");
            psi.Environment["LD_LIBRARY_PATH"] = string.Join(':', new[] { alias.FullName, choice.Folder!, old }.Where(s => !string.IsNullOrEmpty(s)));
            psi.Environment[ActiveVariable] = choice.Folder!;
            psi.Environment[ChoiceVariable] = JsonSerializer.Serialize(choice);
            using Process child = Process.Start(psi)!;
            // SIGINT, SIGTERM (a build cancelled) and SIGHUP are passed on, so the child stops as it would have alone
            // (staged files removed, exit 3); this process stays alive until the child is done. Ctrl+C in a terminal
            // reaches both through the process group: the child then sees it twice only if it was sent twice.
            bool fromTerminal = !Console.IsInputRedirected;
            using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, ctx => { ctx.Cancel = true; if (!fromTerminal) _ = Kill(child.Id, 2); });
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, ctx => { ctx.Cancel = true; _ = Kill(child.Id, 15); });
            using var hup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, ctx => { ctx.Cancel = true; _ = Kill(child.Id, 1); });
            child.WaitForExit();
            return child.ExitCode;
        }
        finally
        {
            try { alias.Delete(recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    static extern int Kill(int pid, int signal);

    /// <summary>The file the process actually mapped for libtorch_cpu.so (from /proc/self/maps), or null before load.</summary>
    public static string? LoadedLibTorchPath() =>
        File.Exists("/proc/self/maps")
            ? File.ReadLines("/proc/self/maps").Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).Where(p => p.Length >= 6
                && p[^1].EndsWith("/libtorch_cpu.so", StringComparison.Ordinal))
                .Select(p => p[^1]).FirstOrDefault()
            : null;
}
