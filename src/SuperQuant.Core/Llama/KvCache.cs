using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Llama;

/// <summary>
/// Keys and values of the positions a generation has processed, per layer ([batch, kv_heads, positions, head_dim],
/// after RoPE), so each new token attends to them without recomputing the prefix. Like run.c's key_cache/value_cache,
/// new positions are written in place into a preallocated buffer and the forward pass attends to a view of its filled
/// part; the buffer doubles when a generation outgrows it, so a generation of T tokens copies O(T) bytes in all (the
/// concatenating version copied the whole prefix every step, O(T^2)). Owned by the caller; one per sequence.
/// </summary>
public sealed class KvCache : IDisposable
{
    readonly Tensor?[] _keys, _values;
    readonly long[] _filled;
    readonly long _initialCapacity;

    /// <param name="capacity">Positions to allocate for up front (prompt + tokens to generate, when known).</param>
    public KvCache(int layers, long capacity = 64)
    {
        _keys = new Tensor?[layers];
        _values = new Tensor?[layers];
        _filled = new long[layers];
        _initialCapacity = Math.Max(1, capacity);
    }

    /// <summary>Positions held (set by the forward pass after every layer has appended).</summary>
    public long Length { get; internal set; }

    /// <summary>Positions the buffers hold before they next grow (0 before the first step).</summary>
    public long Capacity => _keys[0]?.shape[2] ?? 0;

    /// <summary>Writes this step's keys and values for <paramref name="layer"/> after the positions already held and
    /// returns views of all of them.</summary>
    internal (Tensor Keys, Tensor Values) Append(int layer, Tensor k, Tensor v)
    {
        using var _ = torch.no_grad();
        long n = k.shape[2], start = _filled[layer];
        _keys[layer] = Reserve(_keys[layer], k, start + n);
        _values[layer] = Reserve(_values[layer], v, start + n);
        using (var kd = _keys[layer]!.narrow(2, start, n)) kd.copy_(k);
        using (var vd = _values[layer]!.narrow(2, start, n)) vd.copy_(v);
        _filled[layer] = start + n;
        return (_keys[layer]!.narrow(2, 0, start + n), _values[layer]!.narrow(2, 0, start + n));
    }

    /// <summary>The buffer, grown (doubled, keeping its filled prefix) when it cannot hold <paramref name="needed"/> positions.</summary>
    Tensor Reserve(Tensor? buffer, Tensor like, long needed)
    {
        if (buffer is not null && buffer.shape[2] >= needed) return buffer;
        long capacity = Math.Max(needed, buffer is null ? _initialCapacity : 2 * buffer.shape[2]);
        Tensor grown = torch.empty(new[] { like.shape[0], like.shape[1], capacity, like.shape[3] }, like.dtype, like.device).DetachFromDisposeScope();
        if (buffer is not null)
        {
            using (var dst = grown.narrow(2, 0, buffer.shape[2])) dst.copy_(buffer);
            buffer.Dispose();
        }
        return grown;
    }

    public void Dispose()
    {
        foreach (var t in _keys.Concat(_values)) t?.Dispose();
    }
}
