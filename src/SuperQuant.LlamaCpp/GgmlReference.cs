using System.Runtime.InteropServices;

namespace SuperQuant.LlamaCpp;

/// <summary>
/// llama.cpp's own row quantizers and dequantizers (ggml_quantize_chunk, dequantize_row_*) from the libggml-base.so
/// that LLamaSharp loaded: the independent reference our C# block formats are tested against, byte for byte.
/// Types are ggml type numbers (ggml.h).
/// </summary>
public static unsafe class GgmlReference
{
    static nint _lib;

    static nint Library()
    {
        if (_lib != 0) return _lib;
        LlamaCppRuntime.EnsureLoaded();
        // The copy llama.cpp itself loaded (its AVX variant folder), found in the process's memory map.
        string? path = File.ReadLines("/proc/self/maps").Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries).LastOrDefault())
            .FirstOrDefault(p => p is not null && p.EndsWith("/libggml-base.so", StringComparison.Ordinal));
        _lib = NativeLibrary.Load(path ?? "libggml-base.so");
        return _lib;
    }

    /// <summary>ggml_quantize_chunk: <paramref name="rows"/> rows of <paramref name="rowLength"/> into <paramref name="dst"/>;
    /// <paramref name="importance"/> null for the reference path.</summary>
    public static long Quantize(int type, ReadOnlySpan<float> src, Span<byte> dst, long rows, long rowLength, ReadOnlySpan<float> importance = default)
    {
        var f = (delegate* unmanaged<int, float*, void*, long, long, long, float*, nuint>)NativeLibrary.GetExport(Library(), "ggml_quantize_chunk");
        fixed (float* s = src) fixed (byte* d = dst) fixed (float* w = importance)
            return (long)f(type, s, d, 0, rows, rowLength, importance.IsEmpty ? null : w);
    }

    /// <summary>dequantize_row_NAME (q4_0, q8_0, q2_K, ..., or fp16/bf16 row converters for "f16"/"bf16").</summary>
    public static void Dequantize(string name, ReadOnlySpan<byte> src, Span<float> dst)
    {
        string symbol = name switch { "f16" => "ggml_fp16_to_fp32_row", "bf16" => "ggml_bf16_to_fp32_row", _ => "dequantize_row_" + name };
        var f = (delegate* unmanaged<void*, float*, long, void>)NativeLibrary.GetExport(Library(), symbol);
        fixed (byte* s = src) fixed (float* d = dst) f(s, d, dst.Length);
    }
}
