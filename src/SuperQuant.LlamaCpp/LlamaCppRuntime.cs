using System.Collections.Concurrent;
using LLama.Exceptions;
using LLama.Native;

namespace SuperQuant.LlamaCpp;

/// <summary>
/// Loads llama.cpp (LLamaSharp's CPU backend picks the AVX variant for this CPU) once per process and keeps its log
/// quiet: llama.cpp prints hundreds of lines per model load, so only warnings and errors are kept, to be quoted in
/// our own error messages. SUPERQUANT_LLAMA_LOG=1 passes everything through to stderr.
/// </summary>
public static class LlamaCppRuntime
{
    static readonly object Gate = new();
    static bool _loaded;
    static readonly ConcurrentQueue<string> Recent = new();
    static readonly bool Verbose = Environment.GetEnvironmentVariable("SUPERQUANT_LLAMA_LOG") == "1";

    /// <summary>Threads llama.cpp uses: one per core, as llama.cpp's own tools default to.</summary>
    public static int DefaultThreads => Environment.ProcessorCount;

    public static void EnsureLoaded()
    {
        lock (Gate)
        {
            if (_loaded) return;
            try
            {
                NativeLogConfig.llama_log_set(OnLog);
                // Forces the native library to load now (LLamaSharp loads it lazily; its quantizer fails without this).
                NativeApi.llama_empty_call();
            }
            catch (Exception e) when (e is DllNotFoundException or TypeInitializationException or EntryPointNotFoundException or RuntimeError)
            {
                throw new LlamaCppException($"llama.cpp (LLamaSharp.Backend.Cpu 0.30.0) could not be loaded: {e.Message}", e);
            }
            _loaded = true;
        }
    }

    static void OnLog(LLamaLogLevel level, string message)
    {
        if (Verbose) Console.Error.Write("[llama.cpp] " + message);
        if (level is LLamaLogLevel.Warning or LLamaLogLevel.Error)
        {
            Recent.Enqueue(message.TrimEnd());
            while (Recent.Count > 20) Recent.TryDequeue(out _);
        }
    }

    /// <summary>The last warnings and errors llama.cpp logged (for error messages).</summary>
    public static string RecentLog(int lines = 3) => string.Join(" | ", Recent.TakeLast(lines));
}

/// <summary>llama.cpp failed (could not load, refused a file, failed to decode).</summary>
public sealed class LlamaCppException(string message, Exception? inner = null) : Exception(message, inner);
