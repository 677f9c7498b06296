using System.Globalization;

namespace SuperQuant.Manifest;

/// <summary>A GGUF size budget: a file size in bytes, or bits per weight (file bits over parameters, as llama.cpp
/// reports BPW). Written <c>size=1.9GB</c> / <c>bpw=3.5</c> on the command line, <c>{size: 1.9GB}</c> / <c>{bpw: 3.5}</c>
/// in the manifest.</summary>
public sealed record GgufTarget(long? Bytes, double? BitsPerWeight)
{
    public long BytesFor(long parameters) => Bytes ?? (long)(BitsPerWeight!.Value * parameters / 8);
    public override string ToString() => Bytes is long b ? $"size {b.ToString("N0", CultureInfo.InvariantCulture)} B"
        : $"{BitsPerWeight!.Value.ToString(CultureInfo.InvariantCulture)} bits/weight";

    public const string Forms = "size=SIZE (e.g. size=1.9GB; " + SuperQuant.Core.ByteSize.Forms + ") or bpw=BITS (bits per weight, e.g. bpw=3.5)";

    /// <summary>"size=1.9GB" (K/M/G/T, KB/MB/.. decimal, KiB/MiB/.. binary) or "bpw=3.5"; null when it is neither.</summary>
    public static GgufTarget? TryParse(string? s)
    {
        if (s is null) return null;
        int eq = s.IndexOfAny(new[] { '=', ':' });
        if (eq <= 0) return null;
        string key = s[..eq].Trim(), value = s[(eq + 1)..].Trim();
        if (Names.Is(key, "size"))
            return SuperQuant.Core.ByteSize.TryParse(value, out long bytes) && bytes > 0 ? new GgufTarget(bytes, null) : null;
        if (Names.Is(key, "bpw"))
            return double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out double bpw) && double.IsFinite(bpw) && bpw > 0
                ? new GgufTarget(null, bpw) : null;
        return null;
    }

    /// <summary>The named type whose general.file_type the file carries: the one nearest in nominal bits per weight.</summary>
    public GgufFileType NearestNamedType(long parameters)
    {
        double bpw = 8.0 * BytesFor(parameters) / parameters;
        (GgufFileType Type, double Bpw)[] named =
        {
            (GgufFileType.IQ2_M, 2.7), (GgufFileType.IQ3_XXS, 3.06), (GgufFileType.IQ3_S, 3.44), (GgufFileType.Q3_K_M, 3.91),
            (GgufFileType.IQ4_XS, 4.25), (GgufFileType.Q4_K_M, 4.89), (GgufFileType.Q5_K_M, 5.7), (GgufFileType.Q6_K, 6.56), (GgufFileType.Q8_0, 8.5),
        };
        return named.MinBy(n => Math.Abs(n.Bpw - bpw)).Type;
    }
}

