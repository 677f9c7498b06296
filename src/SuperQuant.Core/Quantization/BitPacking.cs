using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Quantization;

/// <summary>
/// Packs b-bit codes (b in 2..8) into bytes, least significant bits first: groups of 8 codes become b bytes, so
/// int4 is two codes per byte (low nibble first) and int3 is 8 codes in 3 bytes. The code count is padded to a
/// multiple of 8 with zeros; the unpacker takes the true count. Shifts are exact int64 multiplications and
/// divisions by powers of two (a group of 8 codes of at most 7 bits stays below 2^56); 8-bit codes are stored as is.
/// </summary>
public static class BitPacking
{
    public static long PackedBytes(long count, int bits) => bits == 8 ? count : (count + 7) / 8 * bits;

    static Tensor Powers(int step, int count, Device device)
        => torch.tensor(Enumerable.Range(0, count).Select(i => 1L << (step * i)).ToArray(), device: device);

    public static Tensor Pack(Tensor codes, int bits)
    {
        if (bits == 8) return codes.to_type(ScalarType.Byte).flatten().clone(); // always a new tensor: callers own and dispose it
        using var scope = torch.NewDisposeScope();
        Tensor flat = codes.flatten().to_type(ScalarType.Int64);
        long n = flat.shape[0], groups = (n + 7) / 8;
        if (groups * 8 != n) flat = torch.cat(new[] { flat, torch.zeros(groups * 8 - n, ScalarType.Int64, device: flat.device) });
        Tensor word = (flat.view(groups, 8) * Powers(bits, 8, flat.device)).sum(new long[] { 1 }, keepdim: true);
        Tensor bytes = word.div(Powers(8, bits, word.device), rounding_mode: RoundingMode.floor).remainder(256).to_type(ScalarType.Byte).flatten();
        return bytes.MoveToOuterDisposeScope();
    }

    public static Tensor Unpack(Tensor packed, int bits, long count)
    {
        if (packed.numel() != PackedBytes(count, bits))
            throw new SuperQuantException(ErrorCodes.ArtifactFormat,
                $"expected {PackedBytes(count, bits)} packed bytes for {count} {bits}-bit codes, got {packed.numel()}");
        if (bits == 8) return packed.flatten().clone();
        using var scope = torch.NewDisposeScope();
        long groups = (count + 7) / 8;
        Tensor word = (packed.to_type(ScalarType.Int64).view(groups, bits) * Powers(8, bits, packed.device)).sum(new long[] { 1 }, keepdim: true);
        Tensor codes = word.div(Powers(bits, 8, word.device), rounding_mode: RoundingMode.floor).remainder(1 << bits).to_type(ScalarType.Byte).flatten();
        return codes.narrow(0, 0, count).contiguous().MoveToOuterDisposeScope();
    }
}
