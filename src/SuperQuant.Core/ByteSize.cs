namespace SuperQuant.Core;

/// <summary>Sizes as users write them (memory limits, GGUF size budgets). Compiled into Manifest as well (linked), which
/// does not reference Core.</summary>
internal static class ByteSize
{
    public const string Forms = "bytes (4096), or a number with K, M, G or T (powers of 1024; also KiB, MiB, GiB, TiB) or KB, MB, GB, TB (powers of " +
        "1000), e.g. 8G, 8GiB, 1.5M";

    /// <summary>Bytes, or a number with a binary (K, M, G, T, KiB..TiB) or decimal (KB..TB) suffix, case-insensitive;
    /// false for anything else and for less than one byte (0.1 is not a size).</summary>
    public static bool TryParse(string s, out long bytes)
    {
        s = s.Trim();
        bytes = 0;
        int split = s.Length;
        while (split > 0 && char.IsAsciiLetter(s[split - 1])) split--;
        long? unit = s[split..].ToUpperInvariant() switch
        {
            "" => 1,
            "K" or "KIB" => 1L << 10,
            "M" or "MIB" => 1L << 20,
            "G" or "GIB" => 1L << 30,
            "T" or "TIB" => 1L << 40,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            _ => null,
        };
        if (unit is not long u || !double.TryParse(s[..split], System.Globalization.NumberStyles.Float,
            System.Globalization.CultureInfo.InvariantCulture, out double n)
            || !double.IsFinite(n) || !(n * u >= 1) || n * u > long.MaxValue) return false;
        bytes = (long)(n * u);
        return true;
    }
}
