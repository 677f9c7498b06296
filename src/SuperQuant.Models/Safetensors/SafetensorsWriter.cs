using System.Text;
using System.Text.Json;
using SuperQuant.Core;
using static TorchSharp.torch;

namespace SuperQuant.Models.Safetensors;

/// <summary>Name, dtype and shape of a tensor to be written.</summary>
public sealed record TensorLayout(string Name, ScalarType DType, long[] Shape);

/// <summary>Writes tensors to a .safetensors file. The file appears at its final path only when complete: bytes go to
/// a temp file in the same folder, which is then renamed over the target.</summary>
public static class SafetensorsWriter
{
    public static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        var byName = list.ToDictionary(t => t.Key, t => t.Value);
        WriteStreaming(path, list.Select(t => new TensorLayout(t.Key, t.Value.dtype, t.Value.shape)).ToList(),
            name => byName[name], disposeEach: false, metadata);
    }

    /// <summary>Writes tensors produced one at a time by <paramref name="produce"/> (called in layout order), so a
    /// checkpoint larger than memory can be written; each produced tensor is disposed after it is written when
    /// <paramref name="disposeEach"/> is set.</summary>
    public static void WriteStreaming(string path, IReadOnlyList<TensorLayout> layout, Func<string, Tensor> produce, bool disposeEach,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        var header = new Dictionary<string, object>();
        if (metadata is { Count: > 0 }) header["__metadata__"] = metadata;
        long offset = 0;
        foreach (var t in layout)
        {
            SafetensorsDType.TryGet(SafetensorsDType.NameOf(t.DType), out _, out int size);
            long bytes = t.Shape.Aggregate(1L, (a, b) => a * b) * size;
            header[t.Name] = new { dtype = SafetensorsDType.NameOf(t.DType), shape = t.Shape, data_offsets = new[] { offset, offset + bytes } };
            offset += bytes;
        }
        byte[] json = JsonSerializer.SerializeToUtf8Bytes(header);
        int padding = (8 - json.Length % 8) % 8; // the format recommends 8-byte aligned data; pad with spaces
        byte[] headerBytes = new byte[json.Length + padding];
        json.CopyTo(headerBytes, 0);
        headerBytes.AsSpan(json.Length).Fill((byte)' ');

        string full = System.IO.Path.GetFullPath(path);
        AtomicFile.Write(full, 8 + headerBytes.Length + offset, fs =>
        {
            fs.Write(BitConverter.GetBytes((ulong)headerBytes.Length));
            fs.Write(headerBytes);
            foreach (var t in layout)
            {
                Tensor value = produce(t.Name);
                try
                {
                    if (value.dtype != t.DType || !value.shape.SequenceEqual(t.Shape))
                        throw new ArgumentException($"tensor '{t.Name}' is {value.dtype} [{string.Join(", ", value.shape)}], the layout said " +
                            $"{t.DType} [{string.Join(", ", t.Shape)}]");
                    WriteTensorBytes(fs, value);
                }
                finally
                {
                    if (disposeEach) value.Dispose();
                }
            }
        });
    }

    /// <summary>Raw little-endian bytes of a tensor, in pieces (spans are int-sized; tensors can exceed 2 GB).</summary>
    static void WriteTensorBytes(Stream s, Tensor t)
    {
        // cpu() and contiguous() each return either the same object or a new handle to the same (or copied) storage:
        // dispose every new handle, or it keeps the tensor's memory alive until a GC finalizes it (measured: RSS grew
        // by the size of everything written, 24 GB into a 32 GB checkpoint, until the OOM killer stopped the run).
        Tensor cpu = t.cpu();
        Tensor c = cpu.contiguous();
        try
        {
            WriteContiguous(s, c);
        }
        finally
        {
            if (!ReferenceEquals(c, cpu) && !ReferenceEquals(c, t)) c.Dispose();
            if (!ReferenceEquals(cpu, t)) cpu.Dispose();
        }
    }

    static void WriteContiguous(Stream s, Tensor c)
    {
        using Tensor flat = c.view(-1);
        const long chunkElements = 1 << 26;
        long n = flat.shape[0];
        for (long start = 0; start < n; start += chunkElements)
        {
            using Tensor chunk = flat.narrow(0, start, Math.Min(chunkElements, n - start));
            s.Write(chunk.bytes);
        }
    }
}
