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
    public Tensor? FfnNorm;
    public required Tensor WGate, WUp, WDown;

    public void Dispose()
    {
        foreach (var t in new[] { AttnNorm, Wq, Wk, Wv, Wo, Bq, Bk, Bv, FfnNorm, WGate, WUp, WDown }) t?.Dispose();
    }

    /// <summary>Replaces every tensor by <paramref name="f"/> of it, disposing the old one.</summary>
    public void Map(Func<Tensor, Tensor> f)
    {
        static Tensor? M(Tensor? t, Func<Tensor, Tensor> f) { if (t is null) return null; var n = f(t); if (!ReferenceEquals(n, t)) t.Dispose(); return n; }
        AttnNorm = M(AttnNorm, f); Wq = M(Wq, f)!; Wk = M(Wk, f)!; Wv = M(Wv, f)!; Wo = M(Wo, f)!; Bq = M(Bq, f); Bk = M(Bk, f); Bv = M(Bv, f);
        FfnNorm = M(FfnNorm, f); WGate = M(WGate, f)!; WUp = M(WUp, f)!; WDown = M(WDown, f)!;
    }
}

/// <summary>All weights of a model. Matrices can be read and replaced by <see cref="LinearSite"/>, which is how
/// ablations zero or scale a single weight and how quantizers swap in dequantized weights.</summary>
public sealed class LlamaWeights : IDisposable
{
    public required Tensor TokenEmbedding;   // [vocab, dim]
    public Tensor? FinalNorm;                // [dim], null for non-parametric norms
    public Tensor? LmHead;                   // [vocab, dim], null when tied to the embedding
    public required LlamaLayerWeights[] Layers;

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
            var w = Layers[site.Layer];
            return site.Projection switch
            {
                Projection.Q => w.Wq, Projection.K => w.Wk, Projection.V => w.Wv, Projection.O => w.Wo,
                Projection.Gate => w.WGate, Projection.Up => w.WUp, Projection.Down => w.WDown,
                _ => throw new ArgumentOutOfRangeException(nameof(site)),
            };
        }
        set
        {
            if (site.Projection == Projection.LmHead)
            {
                if (LmHead is null) throw new InvalidOperationException("the output head is tied to the token embedding; replace TokenEmbedding instead");
                LmHead = value;
                return;
            }
            var w = Layers[site.Layer];
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
        foreach (var l in Layers) l.Map(f);
    }

    public void Dispose()
    {
        TokenEmbedding.Dispose();
        FinalNorm?.Dispose();
        LmHead?.Dispose();
        foreach (var l in Layers) l.Dispose();
    }
}
