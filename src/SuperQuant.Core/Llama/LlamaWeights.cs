using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Llama;

/// <summary>Which linear layer of a block (or the output head).</summary>
public enum Projection { Q, K, V, O, Gate, Up, Down, LmHead }

/// <summary>A linear layer's place in the model: layer index (-1 for the head) and projection.</summary>
public readonly record struct LinearSite(int Layer, Projection Projection)
{
    /// <summary>The Hugging Face parameter name of this layer's weight.</summary>
    public string WeightName => Projection switch
    {
        Projection.LmHead => "lm_head.weight",
        Projection.Q => $"model.layers.{Layer}.self_attn.q_proj.weight",
        Projection.K => $"model.layers.{Layer}.self_attn.k_proj.weight",
        Projection.V => $"model.layers.{Layer}.self_attn.v_proj.weight",
        Projection.O => $"model.layers.{Layer}.self_attn.o_proj.weight",
        Projection.Gate => $"model.layers.{Layer}.mlp.gate_proj.weight",
        Projection.Up => $"model.layers.{Layer}.mlp.up_proj.weight",
        Projection.Down => $"model.layers.{Layer}.mlp.down_proj.weight",
        _ => throw new ArgumentOutOfRangeException(nameof(Projection)),
    };

    public override string ToString() => WeightName;
}

/// <summary>The weights of one decoder block, fp32, [out, in] matrices.</summary>
public sealed class LlamaLayerWeights : IDisposable
{
    public Tensor? AttnNorm;
    public required Tensor Wq, Wk, Wv, Wo;
    public Tensor? Bq, Bk, Bv;
    /// <summary>q/k RMSNorm scales ([head_dim] per head, or [heads*head_dim] / [kv_heads*head_dim] over the projection).</summary>
    public Tensor? QNorm, KNorm;
    /// <summary>Norm of the attention output before the residual add (Gemma 2/3, OLMo 2).</summary>
    public Tensor? AttnPostNorm;
    public Tensor? FfnNorm;
    public required Tensor WGate, WUp, WDown;
    /// <summary>Norm of the MLP output before the residual add (Gemma 2/3, OLMo 2).</summary>
    public Tensor? FfnPostNorm;

    Tensor?[] All => new[] { AttnNorm, Wq, Wk, Wv, Wo, Bq, Bk, Bv, QNorm, KNorm, AttnPostNorm, FfnNorm, WGate, WUp, WDown, FfnPostNorm };

    /// <summary>This block's weight matrix for <paramref name="p"/> (an output head is not a block's).</summary>
    public Tensor Matrix(Projection p) => p switch
    {
        Projection.Q => Wq,
        Projection.K => Wk,
        Projection.V => Wv,
        Projection.O => Wo,
        Projection.Gate => WGate,
        Projection.Up => WUp,
        Projection.Down => WDown,
        _ => throw new ArgumentOutOfRangeException(nameof(p)),
    };

    public void Dispose()
    {
        foreach (var t in All) t?.Dispose();
    }

    /// <summary>Takes every tensor out of the dispose scope it was made in: a block loaded on demand inside some
    /// caller's scope must outlive that scope.</summary>
    public LlamaLayerWeights DetachFromDisposeScopes()
    {
        foreach (var t in All) t?.DetachFromDisposeScope();
        return this;
    }

    /// <summary>Replaces every tensor by <paramref name="f"/> of it, disposing the old one.</summary>
    public void Map(Func<Tensor, Tensor> f)
    {
        static Tensor? M(Tensor? t, Func<Tensor, Tensor> f) { if (t is null) return null; var n = f(t); if (!ReferenceEquals(n, t)) t.Dispose(); return n; }
        AttnNorm = M(AttnNorm, f); Wq = M(Wq, f)!; Wk = M(Wk, f)!; Wv = M(Wv, f)!; Wo = M(Wo, f)!; Bq = M(Bq, f); Bk = M(Bk, f); Bv = M(Bv, f);
        QNorm = M(QNorm, f); KNorm = M(KNorm, f); AttnPostNorm = M(AttnPostNorm, f);
        FfnNorm = M(FfnNorm, f); WGate = M(WGate, f)!; WUp = M(WUp, f)!; WDown = M(WDown, f)!; FfnPostNorm = M(FfnPostNorm, f);
    }
}

/// <summary>Where a layer-streamed model's decoder blocks come from, one block at a time (a checkpoint read from disk,
/// a packed artifact, a quantizer in front of either). Each call returns new tensors the caller owns.</summary>
public interface ILayerSource : IDisposable
{
    LlamaLayerWeights Load(int layer);
}

/// <summary>All weights of a model. Matrices can be read and replaced by <see cref="LinearSite"/>, which is how
/// ablations zero or scale a single weight and how quantizers swap in dequantized weights.
/// A layer-streamed model (<see cref="Source"/> set, <see cref="Layers"/> entries null) keeps only the embedding,
/// the head, the final norm and one decoder block in memory: <see cref="Layer"/> loads block l from the source and
/// drops the block held before, so a forward pass reads each block once and a model larger than RAM runs in memory
/// bounded by one block.</summary>
public sealed class LlamaWeights : IDisposable
{
    public required Tensor TokenEmbedding;   // [vocab, dim]
    public Tensor? FinalNorm;                // [dim], null for non-parametric norms
    public Tensor? LmHead;                   // [vocab, dim], null when tied to the embedding
    /// <summary>The decoder blocks; all null in a layer-streamed model.</summary>
    public required LlamaLayerWeights?[] Layers;
    /// <summary>Non-null for a layer-streamed model; disposed with the weights.</summary>
    public ILayerSource? Source { get; init; }

    public bool IsStreamed => Source is not null;

    int _residentIndex = -1;
    LlamaLayerWeights? _resident;
    // Single-element edits of a streamed model (detection zeroes candidate super weights), applied on every load.
    readonly Dictionary<(int Layer, Projection P, long Row, long Col), float> _edits = new();

    /// <summary>Block <paramref name="l"/>: the held one, or (streamed) loaded now in place of the block held before.
    /// Valid until the next call for another block.</summary>
    public LlamaLayerWeights Layer(int l)
    {
        if (Layers[l] is { } held) return held;
        if (Source is null) throw new InvalidOperationException($"layer {l} is not loaded");
        if (_residentIndex != l)
        {
            _resident?.Dispose();
            _resident = null; _residentIndex = -1;
            // Outside inference mode (a forward pass loads blocks inside it): inference tensors cannot be edited in
            // place later, and detection and quantizers do.
            LlamaLayerWeights loaded;
            using (torch.inference_mode(false)) loaded = Source.Load(l).DetachFromDisposeScopes();
            using (torch.no_grad())
                foreach (var ((layer, p, row, col), value) in _edits)
                    if (layer == l) { using var v = torch.tensor(value, device: loaded.Wq.device); loaded.Matrix(p)[row, col] = v; }

            _resident = loaded; _residentIndex = l;
        }
        return _resident!;
    }

    /// <summary>Drops a streamed model's held block (the next <see cref="Layer"/> call reads it again).</summary>
    public void ReleaseResident()
    {
        _resident?.Dispose();
        _resident = null; _residentIndex = -1;
    }

    /// <summary>Sets one element of a decoder matrix: in place when held; a streamed model also remembers it and
    /// applies it whenever the block is loaded again.</summary>
    public void SetElement(LinearSite site, long row, long col, float value)
    {
        if (site.Projection == Projection.LmHead) throw new ArgumentException("only decoder matrices", nameof(site));
        if (IsStreamed) _edits[(site.Layer, site.Projection, row, col)] = value;
        if (IsStreamed && _residentIndex != site.Layer) return;
        using var _ = torch.no_grad();
        var m = Layer(site.Layer).Matrix(site.Projection);
        using var v = torch.tensor(value, device: m.device);
        m[row, col] = v;
    }

    public float GetElement(LinearSite site, long row, long col)
    {
        using var v = this[site][row, col];
        using var f = v.to_type(ScalarType.Float32);
        return f.item<float>();
    }


    public Tensor OutputWeight => LmHead ?? TokenEmbedding;

    /// <summary>Every linear layer in forward order (the head last).</summary>
    public IEnumerable<LinearSite> LinearSites
    {
        get
        {
            for (int l = 0; l < Layers.Length; l++)
                foreach (var p in new[] { Projection.Q, Projection.K, Projection.V, Projection.O, Projection.Gate, Projection.Up, Projection.Down })
                    yield return new LinearSite(l, p);
            yield return new LinearSite(-1, Projection.LmHead);
        }
    }

    public Tensor this[LinearSite site]
    {
        get
        {
            if (site.Projection == Projection.LmHead) return OutputWeight;
            return Layer(site.Layer).Matrix(site.Projection);
        }
        set
        {
            if (site.Projection == Projection.LmHead)
            {
                if (LmHead is null) throw new InvalidOperationException("the output head is tied to the token embedding; replace TokenEmbedding instead");
                LmHead = value;
                return;
            }
            var w = Layers[site.Layer] ?? throw new InvalidOperationException("a layer-streamed model's matrices are read from its source and cannot " +
                "be replaced");
            switch (site.Projection)
            {
                case Projection.Q: w.Wq = value; break;
                case Projection.K: w.Wk = value; break;
                case Projection.V: w.Wv = value; break;
                case Projection.O: w.Wo = value; break;
                case Projection.Gate: w.WGate = value; break;
                case Projection.Up: w.WUp = value; break;
                case Projection.Down: w.WDown = value; break;
                default: throw new ArgumentOutOfRangeException(nameof(site));
            }
        }
    }

    /// <summary>Replaces every tensor by <paramref name="f"/> of it (e.g. a dtype conversion), one at a time.</summary>
    public void Map(Func<Tensor, Tensor> f)
    {
        Tensor Swap(Tensor t) { var n = f(t); if (!ReferenceEquals(n, t)) t.Dispose(); return n; }
        TokenEmbedding = Swap(TokenEmbedding);
        if (FinalNorm is not null) FinalNorm = Swap(FinalNorm);
        if (LmHead is not null) LmHead = Swap(LmHead);
        if (IsStreamed) throw new NotSupportedException("a layer-streamed model's blocks are read as stored; convert them as they are loaded");
        foreach (var l in Layers) l!.Map(f);
    }

    public void Dispose()
    {
        TokenEmbedding.Dispose();
        FinalNorm?.Dispose();
        LmHead?.Dispose();
        foreach (var l in Layers) l?.Dispose();
        _resident?.Dispose();
        Source?.Dispose();
    }
}
