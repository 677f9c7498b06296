using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Llama;

/// <summary>
/// Keys and values of the positions a generation has processed, per layer ([batch, kv_heads, positions, head_dim],
/// after RoPE), so each new token attends to them without recomputing the prefix. Owned by the caller; one per
/// sequence. Grows by concatenation: simple, and the generations this tool runs are short.
/// </summary>
public sealed class KvCache : IDisposable
{
    readonly Tensor?[] _keys, _values;

    public KvCache(int layers)
    {
        _keys = new Tensor?[layers];
        _values = new Tensor?[layers];
    }

    /// <summary>Positions held (set by the forward pass after every layer has appended).</summary>
    public long Length { get; internal set; }

    /// <summary>Appends this step's keys and values for <paramref name="layer"/> and returns all of them so far.</summary>
    internal (Tensor Keys, Tensor Values) Append(int layer, Tensor k, Tensor v)
    {
        Tensor keys = _keys[layer] is { } pk ? torch.cat(new[] { pk, k }, 2) : k.clone();
        Tensor values = _values[layer] is { } pv ? torch.cat(new[] { pv, v }, 2) : v.clone();
        _keys[layer]?.Dispose(); _values[layer]?.Dispose();
        _keys[layer] = keys.DetachFromDisposeScope();
        _values[layer] = values.DetachFromDisposeScope();
        return (keys.alias(), values.alias());
    }

    public void Dispose()
    {
        foreach (var t in _keys.Concat(_values)) t?.Dispose();
    }
}
