using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SuperQuant.Core.Llama;

/// <summary>
/// A LLaMA-family decoder forward pass, written to be read top to bottom like llama2.c's run.c:
/// embed -> for each block { norm, attention with RoPE and GQA, residual, norm, SwiGLU MLP, residual } -> norm -> head.
/// Covers Llama 1/2/3 (incl. llama3 RoPE scaling), Mistral (sliding window), Qwen2 (qkv biases), OLMo
/// (non-parametric LayerNorm, clip_qkv) and Phi-3 (its fused projections are split into views on load).
/// Evaluation processes the whole sequence at once; generation can keep each layer's keys and values in a
/// <see cref="KvCache"/> and feed one new token per step.
/// </summary>
public sealed class LlamaModel : IDisposable
{
    public LlamaConfig Config { get; }
    public LlamaWeights Weights { get; }
    public Device Device { get; }

    /// <summary>Hooks called at every linear layer; null for a plain pass.</summary>
    public IForwardHooks? Hooks { get; set; }

    Tensor? _cos, _sin; // [positions, head_dim], rotate-half layout

    /// <summary>The dtype of the weights and activations: fp32 unless <see cref="ConvertTo"/> changed it.</summary>
    public ScalarType Dtype { get; private set; } = ScalarType.Float32;

    /// <summary>Runs the model in <paramref name="dtype"/> (bf16 or fp16 halve the weights' memory and use the GPU's
    /// tensor cores): weights are converted in place, one tensor at a time; norms are computed in fp32 and RoPE
    /// tables are made in fp32 and rounded, as Hugging Face's LLaMA does. Quantizers need fp32 weights: this is
    /// for evaluation and generation.</summary>
    public void ConvertTo(ScalarType dtype)
    {
        if (dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16)) throw new ArgumentException($"unsupported dtype {dtype}");
        if (dtype == Dtype) return;
        using (torch.no_grad()) Weights.Map(t => t.to_type(dtype));
        _cos?.Dispose(); _sin?.Dispose();
        _cos = _sin = null;
        Dtype = dtype;
    }

    public LlamaModel(LlamaConfig config, LlamaWeights weights)
    {
        config.Validate();
        Config = config;
        Weights = weights;
        Device = weights.TokenEmbedding.device;
    }

    /// <summary>Logits [batch, tokens, vocab] for token ids [batch, tokens] (or [tokens], treated as batch 1).</summary>
    public Tensor Forward(Tensor tokens) => Forward(tokens, null);

    /// <summary>
    /// Logits for <paramref name="tokens"/> placed after the <c>cache.Length</c> positions already in
    /// <paramref name="cache"/>, whose keys and values are extended with theirs. With an empty cache this is the
    /// plain forward pass (and fills the cache); then one token per step costs one position, not the whole prefix.
    /// </summary>
    public Tensor Forward(Tensor tokens, KvCache? cache)
    {
        using var _ = torch.inference_mode();
        using var scope = torch.NewDisposeScope();
        if (tokens.dim() == 1) tokens = tokens.unsqueeze(0);
        tokens = tokens.to(Device);
        long seq = tokens.shape[1];
        long past = cache?.Length ?? 0;
        if (past + seq > Config.MaxPositionEmbeddings && cache is not null)
            throw new ArgumentException($"{past + seq} positions exceed the model's {Config.MaxPositionEmbeddings}; start a new cache");
        (Tensor cos, Tensor sin) = RopeTables(past + seq);
        cos = cos.narrow(0, past, seq); sin = sin.narrow(0, past, seq);
        Tensor? mask = past == 0 ? AttentionMask(seq) : CachedAttentionMask(past, seq);

        Tensor x = Weights.TokenEmbedding.index_select(0, tokens.flatten()).view(tokens.shape[0], seq, Config.HiddenSize);
        for (int l = 0; l < Config.NumLayers; l++)
        {
            // One scope per block: its intermediates are freed before the next block runs, so activation memory
            // is one block's worth, not the whole model's.
            using var layerScope = torch.NewDisposeScope();
            LlamaLayerWeights w = Weights.Layer(l); // a streamed model reads the block from its source here
            x = x + Attention(l, Norm(x, w.AttnNorm), w, cos, sin, mask, cache);
            x = (x + Mlp(l, Norm(x, w.FfnNorm), w)).MoveToOuterDisposeScope();
            Hooks?.OnBlockOutput(l, x);
        }
        x = Norm(x, Weights.FinalNorm);
        Tensor logits = Linear(new LinearSite(-1, Projection.LmHead), x, Weights.OutputWeight, null);
        if (cache is not null) cache.Length = past + seq;
        return logits.MoveToOuterDisposeScope();
    }

    /// <summary>Logits for a plain list of token ids, batch 1: [tokens, vocab].</summary>
    public Tensor Forward(ReadOnlySpan<int> tokens)
    {
        using var ids = torch.tensor(tokens.ToArray().Select(t => (long)t).ToArray(), dtype: ScalarType.Int64, device: Device);
        using var logits = Forward(ids);
        return logits.squeeze(0);
    }

    Tensor Attention(int layer, Tensor h, LlamaLayerWeights w, Tensor cos, Tensor sin, Tensor? mask, KvCache? cache)
    {
        long batch = h.shape[0], seq = h.shape[1];
        int heads = Config.NumHeads, kvHeads = Config.NumKvHeads, hd = Config.HeadDim;

        Tensor q = Linear(new LinearSite(layer, Projection.Q), h, w.Wq, w.Bq);
        Tensor k = Linear(new LinearSite(layer, Projection.K), h, w.Wk, w.Bk);
        Tensor v = Linear(new LinearSite(layer, Projection.V), h, w.Wv, w.Bv);
        if (Config.ClipQkv is double clip)
        {
            q = q.clamp(-clip, clip); k = k.clamp(-clip, clip); v = v.clamp(-clip, clip);
        }
        // [batch, seq, heads*hd] -> [batch, heads, seq, hd]
        q = q.view(batch, seq, heads, hd).transpose(1, 2);
        k = k.view(batch, seq, kvHeads, hd).transpose(1, 2);
        v = v.view(batch, seq, kvHeads, hd).transpose(1, 2);
        q = ApplyRope(q, cos, sin);
        k = ApplyRope(k, cos, sin);
        if (cache is not null) (k, v) = cache.Append(layer, k, v); // all positions so far, before the GQA repeat
        if (kvHeads != heads)
        {
            // Grouped-query attention: each kv head serves heads/kvHeads query heads.
            k = k.repeat_interleave(heads / kvHeads, dim: 1);
            v = v.repeat_interleave(heads / kvHeads, dim: 1);
        }
        // No mask: causal over the whole sequence, or one new token that sees every cached position.
        bool causal = mask is null && (cache is null || cache.Length == 0);
        Tensor attn = mask is null
            ? F.scaled_dot_product_attention(q, k, v, null, 0.0, causal) // TorchSharp spells the flag "is_casual"
            : F.scaled_dot_product_attention(q, k, v, mask, 0.0, false);
        attn = attn.transpose(1, 2).reshape(batch, seq, heads * hd);
        return Linear(new LinearSite(layer, Projection.O), attn, w.Wo, null);
    }

    Tensor Mlp(int layer, Tensor h, LlamaLayerWeights w)
    {
        // SwiGLU: down(silu(gate(h)) * up(h)). The down_proj input is where super activations appear.
        Tensor gate = Linear(new LinearSite(layer, Projection.Gate), h, w.WGate, null);
        Tensor up = Linear(new LinearSite(layer, Projection.Up), h, w.WUp, null);
        return Linear(new LinearSite(layer, Projection.Down), F.silu(gate) * up, w.WDown, null);
    }

    Tensor Linear(LinearSite site, Tensor x, Tensor weight, Tensor? bias)
    {
        if (Hooks is null) return F.linear(x, weight, bias);
        x = Hooks.OnLinearInput(site, x);
        return Hooks.OnLinearOutput(site, F.linear(x, weight, bias));
    }

    Tensor Norm(Tensor x, Tensor? weight)
    {
        if (Config.Norm == NormKind.NonParametricLayerNorm)
            return F.layer_norm(x.to_type(ScalarType.Float32), new long[] { Config.HiddenSize }, null, null, Config.NormEps).to_type(x.dtype);
        // RMSNorm: x / sqrt(mean(x^2) + eps) * weight, in fp32 whatever the model's dtype (as Hugging Face does).
        Tensor xf = x.dtype == ScalarType.Float32 ? x : x.to_type(ScalarType.Float32);
        Tensor normed = xf * torch.rsqrt(xf.pow(2).mean(new long[] { -1 }, keepdim: true) + Config.NormEps);
        if (x.dtype != ScalarType.Float32) normed = normed.to_type(x.dtype);
        return weight is null ? normed : normed * weight;
    }

    static Tensor ApplyRope(Tensor x, Tensor cos, Tensor sin)
    {
        // Rotate-half RoPE (Hugging Face layout): pairs are (i, i + hd/2).
        long half = x.shape[^1] / 2;
        Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
        Tensor rotated = torch.cat(new[] { -x2, x1 }, -1);
        return x * cos + rotated * sin;
    }

    (Tensor cos, Tensor sin) RopeTables(long seq)
    {
        if (_cos is null || _cos.shape[0] < seq)
        {
            _cos?.Dispose(); _sin?.Dispose();
            long n = Math.Max(seq, Math.Min(Config.MaxPositionEmbeddings, 4096));
            double[] invFreq = RopeInverseFrequencies(Config);
            int hd = Config.HeadDim;
            var cos = new float[n * hd];
            var sin = new float[n * hd];
            for (long p = 0; p < n; p++)
                for (int i = 0; i < hd; i++)
                {
                    double angle = p * invFreq[i % (hd / 2)];
                    cos[p * hd + i] = (float)Math.Cos(angle);
                    sin[p * hd + i] = (float)Math.Sin(angle);
                }
            _cos = torch.tensor(cos, new long[] { n, hd }, device: Device).to_type(Dtype).DetachFromDisposeScope();
            _sin = torch.tensor(sin, new long[] { n, hd }, device: Device).to_type(Dtype).DetachFromDisposeScope();
        }
        return (_cos.narrow(0, 0, seq), _sin!.narrow(0, 0, seq));
    }

    /// <summary>theta^(-2i/hd), with Llama 3.1's smooth low/high-frequency rescaling when configured.</summary>
    public static double[] RopeInverseFrequencies(LlamaConfig c)
    {
        int hd = c.HeadDim;
        var inv = new double[hd / 2];
        for (int i = 0; i < hd / 2; i++)
        {
            double f = 1.0 / Math.Pow(c.RopeTheta, 2.0 * i / hd);
            if (c.RopeScaling is { } s)
            {
                double lowWavelen = s.OriginalMaxPositionEmbeddings / s.LowFreqFactor;
                double highWavelen = s.OriginalMaxPositionEmbeddings / s.HighFreqFactor;
                double wavelen = 2 * Math.PI / f;
                if (wavelen > lowWavelen) f /= s.Factor;
                else if (wavelen >= highWavelen)
                {
                    double smooth = (s.OriginalMaxPositionEmbeddings / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                    f = (1 - smooth) * f / s.Factor + smooth * f;
                }
            }
            inv[i] = f;
        }
        return inv;
    }

    Tensor? AttentionMask(long seq)
    {
        if (Config.SlidingWindow is not int window || seq <= window) return null;
        // Causal and within the window: key position j visible from query i when i - window < j <= i.
        using var i = torch.arange(seq, device: Device).unsqueeze(1);
        using var j = torch.arange(seq, device: Device).unsqueeze(0);
        return (j <= i).logical_and(j > i - window);
    }

    /// <summary>The mask for <paramref name="seq"/> new positions after <paramref name="past"/> cached ones, or null
    /// when every new position may see every key (a single new token inside the sliding window, if any).</summary>
    Tensor? CachedAttentionMask(long past, long seq)
    {
        long total = past + seq;
        bool windowed = Config.SlidingWindow is int window && total > window;
        if (seq == 1 && !windowed) return null;
        using var i = torch.arange(past, total, device: Device).unsqueeze(1);
        using var j = torch.arange(total, device: Device).unsqueeze(0);
        Tensor allowed = j <= i;
        return Config.SlidingWindow is int w ? allowed.logical_and(j > i - w) : allowed;
    }

    public void Dispose()
    {
        _cos?.Dispose();
        _sin?.Dispose();
        Weights.Dispose();
    }
}
