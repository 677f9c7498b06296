using System.Text;
using SuperQuant.Models.Gguf;

namespace SuperQuant.Tests.Support;

/// <summary>Writes a GGUF file back with changed metadata (the tensors' bytes copied as they are): hostile-input
/// tests. Values keep their .NET types: uint -> UInt32, int -> Int32, float -> Float32, string, bool, object[] arrays
/// (element type from the first item; an empty array as UInt32).</summary>
public static class GgufRewriter
{
    public static void Rewrite(string from, string to, Action<Dictionary<string, object>> edit)
    {
        var g = GgufFile.Read(from);
        var meta = new Dictionary<string, object>(g.Metadata);
        edit(meta);
        byte[] source = File.ReadAllBytes(from);
        using var fs = File.Create(to);
        using var w = new BinaryWriter(fs, Encoding.UTF8);
        w.Write(GgufFile.Magic); w.Write(GgufFile.Version);
        w.Write((ulong)g.Tensors.Count); w.Write((ulong)meta.Count);
        foreach (var (k, v) in meta) { Str(w, k); Value(w, v, withType: true); }
        foreach (var t in g.Tensors)
        {
            Str(w, t.Name); w.Write((uint)t.Dims.Length);
            foreach (long d in t.Dims) w.Write((ulong)d);
            w.Write((uint)t.Type); w.Write((ulong)t.Offset);
        }
        long alignment = meta.TryGetValue("general.alignment", out var a) && a is uint u && u > 0 ? u : GgufFile.DefaultAlignment;
        while (fs.Position % alignment != 0) w.Write((byte)0);
        w.Write(source, (int)g.DataStart, source.Length - (int)g.DataStart);
    }

    static void Str(BinaryWriter w, string s) { byte[] b = Encoding.UTF8.GetBytes(s); w.Write((ulong)b.Length); w.Write(b); }

    static GgufValueType TypeOf(object v) => v switch
    {
        uint => GgufValueType.UInt32,
        int => GgufValueType.Int32,
        float => GgufValueType.Float32,
        bool => GgufValueType.Bool,
        string => GgufValueType.String,
        object[] => GgufValueType.Array,
        ulong => GgufValueType.UInt64,
        long => GgufValueType.Int64,
        double => GgufValueType.Float64,
        byte => GgufValueType.UInt8,
        sbyte => GgufValueType.Int8,
        ushort => GgufValueType.UInt16,
        short => GgufValueType.Int16,
        _ => throw new ArgumentException(v.GetType().Name),
    };

    static void Value(BinaryWriter w, object v, bool withType)
    {
        if (withType) w.Write((uint)TypeOf(v));
        switch (v)
        {
            case uint x: w.Write(x); break;
            case int x: w.Write(x); break;
            case float x: w.Write(x); break;
            case bool x: w.Write((byte)(x ? 1 : 0)); break;
            case string x: Str(w, x); break;
            case ulong x: w.Write(x); break;
            case long x: w.Write(x); break;
            case double x: w.Write(x); break;
            case byte x: w.Write(x); break;
            case sbyte x: w.Write(x); break;
            case ushort x: w.Write(x); break;
            case short x: w.Write(x); break;
            case object[] items:
                w.Write((uint)(items.Length == 0 ? GgufValueType.UInt32 : TypeOf(items[0])));
                w.Write((ulong)items.Length);
                foreach (var item in items) Value(w, item, withType: false);
                break;
        }
    }
}
