using System.Text;
using SuperQuant.Core;

namespace SuperQuant.Models.Gguf;

/// <summary>
/// The GGUF v3 container (gguf-py's GGUFWriter layout): header, metadata key/values, tensor infos, then each
/// tensor's data aligned to <see cref="GgufFile.DefaultAlignment"/>, streamed to an unnamed file that is named only
/// when complete (<see cref="AtomicFile"/>). What the tensors hold and which type each gets is decided by the caller
/// (<see cref="GgufExporter"/>); this knows only the format.
/// </summary>
public static class GgufWriter
{
    /// <summary>One tensor: name, ggml dims (row length first), type, and a callback that writes exactly
    /// <see cref="Bytes"/> of data to the stream when the writer reaches it.</summary>
    public sealed record Entry(string Name, long[] Dims, GgmlType Type, Action<Stream> WriteData);

    public static void Write(string path, IReadOnlyList<(string Key, GgufValueType Type, object Value)> metadata, IReadOnlyList<Entry> tensors)
    {
        long dataBytes = tensors.Select(t => Align(Bytes(t.Dims, t.Type))).Sum();
        AtomicFile.Write(path, dataBytes, fs =>
        {
            using var bw = new BinaryWriter(fs, Encoding.UTF8, leaveOpen: true);
            bw.Write(GgufFile.Magic); bw.Write(GgufFile.Version);
            bw.Write((ulong)tensors.Count); bw.Write((ulong)metadata.Count);
            foreach (var (key, type, value) in metadata) { WriteString(bw, key); bw.Write((uint)type); WriteValue(bw, type, value); }
            long offset = 0;
            foreach (var t in tensors)
            {
                WriteString(bw, t.Name);
                bw.Write((uint)t.Dims.Length);
                foreach (long d in t.Dims) bw.Write((ulong)d);
                bw.Write((uint)t.Type);
                bw.Write((ulong)offset);
                offset = Align(offset + Bytes(t.Dims, t.Type));
            }
            Pad(bw);
            bw.Flush();
            foreach (var t in tensors)
            {
                long start = fs.Position;
                t.WriteData(fs);
                if (fs.Position - start != Bytes(t.Dims, t.Type))
                    throw new InvalidOperationException($"{t.Name}: {fs.Position - start} bytes written, its {t.Type} layout holds {Bytes(t.Dims, t.Type)}");
                Pad(bw);
                bw.Flush();
            }
        });
    }

    /// <summary>Bytes of a tensor of these ggml dims (row length first) and type, before alignment.</summary>
    public static long Bytes(long[] dims, GgmlType type) => GgmlQuants.RowBytes(type, dims[0]) * (dims.Aggregate(1L, (a, b) => a * b) / dims[0]);
    static long Align(long x) => (x + GgufFile.DefaultAlignment - 1) / GgufFile.DefaultAlignment * GgufFile.DefaultAlignment;
    static void Pad(BinaryWriter bw) { long n = Align(bw.BaseStream.Position) - bw.BaseStream.Position; bw.Write(new byte[n]); }

    static void WriteString(BinaryWriter bw, string s)
    {
        byte[] b = Encoding.UTF8.GetBytes(s);
        bw.Write((ulong)b.Length);
        bw.Write(b);
    }

    static void WriteValue(BinaryWriter bw, GgufValueType type, object v)
    {
        switch (type)
        {
            case GgufValueType.UInt32: bw.Write((uint)v); break;
            case GgufValueType.Int32: bw.Write((int)v); break;
            case GgufValueType.Float32: bw.Write((float)v); break;
            case GgufValueType.Bool: bw.Write((byte)((bool)v ? 1 : 0)); break;
            case GgufValueType.String: WriteString(bw, (string)v); break;
            case GgufValueType.Array:
                var a = (GgufArray)v;
                bw.Write((uint)a.ElementType);
                bw.Write((ulong)a.Items.Length);
                foreach (object item in a.Items) WriteValue(bw, a.ElementType, item);
                break;
            default: throw new NotSupportedException(type.ToString());
        }
    }
}
