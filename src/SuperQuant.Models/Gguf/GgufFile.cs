using System.Text;
using SuperQuant.Core;

namespace SuperQuant.Models.Gguf;

/// <summary>GGUF metadata value types (gguf.md).</summary>
public enum GgufValueType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9,
    UInt64 = 10, Int64 = 11, Float64 = 12
}

public sealed record GgufTensorInfo(string Name, long[] Dims, GgmlType Type, long Offset)
{
    /// <summary>Element count; dims are ggml order (dims[0] = row length).</summary>
    public long Elements => Dims.Aggregate(1L, (a, b) => a * b);
    public long Bytes => GgmlQuants.RowBytes(Type, Dims[0]) * (Elements / Dims[0]);
}

/// <summary>
/// GGUF v3 (ggml's docs/gguf.md): "GGUF", version, tensor count, metadata count; metadata key/values; tensor infos
/// (name, dims, ggml type, offset); padding to general.alignment (default 32); tensor data. Reader and writer are
/// written here because no .NET GGUF library is on the feed. The reader validates every count and offset against the
/// file before allocating.
/// </summary>
public sealed class GgufFile
{
    public const uint Magic = 0x46554747; // "GGUF" little-endian
    public const uint Version = 3;
    public const int DefaultAlignment = 32;

    public required Dictionary<string, object> Metadata { get; init; }
    public required List<GgufTensorInfo> Tensors { get; init; }
    public required long DataStart { get; init; }
    public required string Path { get; init; }

    /// <summary>The file carries a vocabulary llama.cpp can tokenize with (tokenizer.ggml.model other than "no_vocab").</summary>
    public bool HasVocabulary => Metadata.TryGetValue("tokenizer.ggml.model", out var m) && m is string s && s != "no_vocab";

    public static GgufFile Read(string path)
    {
        using var fs = File.OpenRead(path);
        using var r = new BinaryReader(fs, Encoding.UTF8);
        long length = fs.Length;
        SuperQuantException Bad(string what) => new(ErrorCodes.ArtifactFormat, $"invalid GGUF file {path}: {what}", path);
        try
        {
            if (r.ReadUInt32() != Magic) throw Bad("bad magic");
            uint version = r.ReadUInt32();
            if (version != Version) throw Bad($"version {version} (supported: {Version})");
            ulong tensorCount = r.ReadUInt64(), kvCount = r.ReadUInt64();
            // Every tensor info and key/value takes at least 8 bytes: counts beyond the file are corrupt.
            if (tensorCount > (ulong)length / 8 || kvCount > (ulong)length / 8) throw Bad("counts exceed the file size");
            string ReadString()
            {
                ulong n = r.ReadUInt64();
                if (n > (ulong)(length - fs.Position)) throw Bad("string runs past the end of the file");
                return Encoding.UTF8.GetString(r.ReadBytes((int)n));
            }
            object ReadValue(GgufValueType t, int depth) => t switch
            {
                GgufValueType.UInt8 => r.ReadByte(),
                GgufValueType.Int8 => r.ReadSByte(),
                GgufValueType.UInt16 => r.ReadUInt16(),
                GgufValueType.Int16 => r.ReadInt16(),
                GgufValueType.UInt32 => r.ReadUInt32(),
                GgufValueType.Int32 => r.ReadInt32(),
                GgufValueType.Float32 => r.ReadSingle(),
                GgufValueType.Bool => r.ReadByte() != 0,
                GgufValueType.String => ReadString(),
                GgufValueType.UInt64 => r.ReadUInt64(),
                GgufValueType.Int64 => r.ReadInt64(),
                GgufValueType.Float64 => r.ReadDouble(),
                GgufValueType.Array => ReadArray(depth),
                _ => throw Bad($"unknown metadata value type {(uint)t}"),
            };
            object[] ReadArray(int depth)
            {
                if (depth > 4) throw Bad("arrays nested too deeply");
                var et = (GgufValueType)r.ReadUInt32();
                ulong n = r.ReadUInt64();
                if (n > (ulong)(length - fs.Position)) throw Bad("array runs past the end of the file");
                var items = new object[n];
                for (ulong i = 0; i < n; i++) items[i] = ReadValue(et, depth + 1);
                return items;
            }
            var metadata = new Dictionary<string, object>();
            for (ulong i = 0; i < kvCount; i++)
            {
                string key = ReadString();
                metadata[key] = ReadValue((GgufValueType)r.ReadUInt32(), 0);
            }
            var tensors = new List<GgufTensorInfo>();
            for (ulong i = 0; i < tensorCount; i++)
            {
                string name = ReadString();
                uint nd = r.ReadUInt32();
                if (nd == 0 || nd > 4) throw Bad($"tensor '{name}': {nd} dimensions");
                var dims = new long[nd];
                for (int d = 0; d < nd; d++)
                {
                    ulong v = r.ReadUInt64();
                    if (v == 0 || v > (ulong)length * 2) throw Bad($"tensor '{name}': dimension {v} is impossible for this file");
                    dims[d] = (long)v;
                }
                uint type = r.ReadUInt32();
                if (!GgmlFormat.IsKnown(type)) throw Bad($"tensor '{name}': ggml type {type} is not supported (supported: " +
                    $"{string.Join(", ", Enum.GetNames<GgmlType>())})");
                if (!GgmlQuants.Supports((GgmlType)type, dims[0])) throw Bad($"tensor '{name}': row length {dims[0]} is not a multiple of " +
                    $"{GgmlFormat.Of((GgmlType)type).BlockSize} ({(GgmlType)type} blocks)");
                tensors.Add(new GgufTensorInfo(name, dims, (GgmlType)type, (long)r.ReadUInt64()));
            }
            long alignment = metadata.TryGetValue("general.alignment", out var a) && a is uint u && u > 0 ? u : DefaultAlignment;
            long dataStart = (fs.Position + alignment - 1) / alignment * alignment;
            foreach (var t in tensors)
                if (t.Offset < 0 || t.Offset % alignment != 0 || dataStart + t.Offset + t.Bytes > length)
                    throw Bad($"tensor '{t.Name}' data lies outside the file or is misaligned");
            return new GgufFile { Metadata = metadata, Tensors = tensors, DataStart = dataStart, Path = path };
        }
        catch (EndOfStreamException) { throw Bad("file truncated"); }
    }

    /// <summary>A tensor's bytes as stored (its ggml blocks).</summary>
    public byte[] ReadRaw(string name)
    {
        var t = Tensors.FirstOrDefault(x => x.Name == name)
            ?? throw new SuperQuantException(ErrorCodes.CheckpointMissingTensor, $"tensor '{name}' not in {Path}", Path);
        using var fs = File.OpenRead(Path);
        fs.Position = DataStart + t.Offset;
        var bytes = new byte[t.Bytes];
        fs.ReadExactly(bytes);
        return bytes;
    }

    public float[] ReadTensor(string name)
    {
        var t = Tensors.FirstOrDefault(x => x.Name == name)
            ?? throw new SuperQuantException(ErrorCodes.CheckpointMissingTensor, $"tensor '{name}' not in {Path}", Path);
        using var fs = File.OpenRead(Path);
        fs.Position = DataStart + t.Offset;
        var bytes = new byte[t.Bytes];
        fs.ReadExactly(bytes);
        return GgmlQuants.Dequantize(t.Type, bytes, t.Elements);
    }
}
