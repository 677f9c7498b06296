using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SuperQuant.Core.Llama;

/// <summary>
/// A LLaMA-family decoder forward pass, written to be read top to bottom like llama2.c's run.c:
/// embed -> for each block { norm, attention with RoPE and GQA, residual, norm, gated MLP, residual } -> norm -> head.
/// Each family's extra parts are small named switches of <see cref="LlamaConfig"/>, not copies of this pass: Llama 3
/// (RoPE scaling), Mistral (sliding window), Qwen2 (qkv biases), Qwen3 (per-head q/k norm), OLMo (non-parametric
/// LayerNorm, clip_qkv), OLMo 2 (post-norms, whole-projection q/k norm), Phi-3 (fused projections split into views on
/// load), Gemma 2/3 ((1+w) norms, embedding scale, GELU-tanh, soft-capping, per-layer window and RoPE base) and
/// SmolLM3 (layers without RoPE).
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

    // [positions, head_dim] cos and sin, rotate-half layout, per (RoPE base, linear scale): Gemma 3's local and global
    // layers differ.
    readonly Dictionary<(double Theta, double LinearFactor, bool Long), (Tensor Cos, Tensor Sin)> _rope = new();

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
        DisposeRopeTables();
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

        Tensor x = Weights.TokenEmbedding.index_select(0, tokens.flatten()).view(tokens.shape[0], seq, Config.HiddenSize);
        if (Hooks is not null) x = Hooks.OnEmbedding(tokens, x);
        if (Config.EmbeddingScale != 1.0) x = x * Config.EmbeddingScale;
        for (int l = 0; l < Config.NumLayers; l++)
        {
            // One scope per block: its intermediates are freed before the next block runs, so activation memory
            // is one block's worth, not the whole model's.
            using var layerScope = torch.NewDisposeScope();
            LlamaLayerWeights w = Weights.Layer(l); // a streamed model reads the block from its source here
            var rope = Config.UsesRope(l) ? RopeTables(Config.RopeOf(l), past, seq) : ((Tensor, Tensor)?)null;
            Tensor? mask = AttentionMask(Config.WindowOf(l), past, seq, out bool causal);
            Tensor attn = Attention(l, PreNorm(x, w.AttnNorm), w, rope, mask, causal, cache);
            x = x + PostNorm(attn, w.AttnPostNorm);
            Tensor mlp = Mlp(l, PreNorm(x, w.FfnNorm), w);
            x = (x + PostNorm(mlp, w.FfnPostNorm)).MoveToOuterDisposeScope();
            Hooks?.OnBlockOutput(l, x);
        }
        x = Norm(x, Weights.FinalNorm);
        Tensor logits = Linear(new LinearSite(-1, Projection.LmHead), x, Weights.OutputWeight, null);
        if (Config.FinalLogitSoftcap is double cap) logits = Softcap(logits, cap);
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

    Tensor Attention(int layer, Tensor h, LlamaLayerWeights w, (Tensor Cos, Tensor Sin)? rope, Tensor? mask, bool causal, KvCache? cache)
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
        // q/k norm: over the whole projection (OLMo 2) before the split into heads, or per head (Qwen3, Gemma 3) after it.
        if (Config.QkNorm == QkNormKind.Whole) { q = Norm(q, w.QNorm); k = Norm(k, w.KNorm); }
        // [batch, seq, heads*hd] -> [batch, heads, seq, hd]
        q = q.view(batch, seq, heads, hd);
        k = k.view(batch, seq, kvHeads, hd);
        if (Config.QkNorm == QkNormKind.PerHead) { q = Norm(q, w.QNorm); k = Norm(k, w.KNorm); }
        q = q.transpose(1, 2);
        k = k.transpose(1, 2);
        v = v.view(batch, seq, kvHeads, hd).transpose(1, 2);
        if (rope is var (cos, sin)) { q = ApplyRope(q, cos, sin); k = ApplyRope(k, cos, sin); }
        if (cache is not null) (k, v) = cache.Append(layer, k, v); // all positions so far, before the GQA repeat
        if (kvHeads != heads)
        {
            // Grouped-query attention: each kv head serves heads/kvHeads query heads.
            k = k.repeat_interleave(heads / kvHeads, dim: 1);
            v = v.repeat_interleave(heads / kvHeads, dim: 1);
        }
        Tensor attn;
        if (Config.AttnLogitSoftcap is double cap)
        {
            // Soft-capped scores (Gemma 2) have no fused kernel: scale, cap, mask, softmax in fp32, weight the values.
            Tensor scores = Softcap(q.matmul(k.transpose(-2, -1)).to_type(ScalarType.Float32) * Config.AttentionScale, cap);
            Tensor allowed = mask ?? CausalMask(k.shape[2] - seq, seq);
            scores = scores.masked_fill(allowed.logical_not(), double.NegativeInfinity);
            attn = F.softmax(scores, -1).to_type(v.dtype).matmul(v);
        }
        else
        {
            // The fused kernel scales by 1/sqrt(head_dim) (TorchSharp 0.107 takes no scale): fold any other scale into q.
            if (Config.QueryPreAttnScalar is not null) q = q * (Config.AttentionScale * Math.Sqrt(hd));
            attn = mask is null
                ? F.scaled_dot_product_attention(q, k, v, null, 0.0, causal) // TorchSharp spells the flag "is_casual"
                : F.scaled_dot_product_attention(q, k, v, mask, 0.0, false);
        }
        attn = attn.transpose(1, 2).reshape(batch, seq, heads * hd);
        return Linear(new LinearSite(layer, Projection.O), attn, w.Wo, null);
    }

    Tensor Mlp(int layer, Tensor h, LlamaLayerWeights w)
    {
        // Gated MLP: down(act(gate(h)) * up(h)), act = silu (SwiGLU) or GELU-tanh (Gemma's GeGLU). The down_proj input
        // is where super activations appear.
        Tensor gate = Linear(new LinearSite(layer, Projection.Gate), h, w.WGate, null);
        Tensor up = Linear(new LinearSite(layer, Projection.Up), h, w.WUp, null);
        Tensor act = Config.Activation == Activation.GeluTanh ? GeluTanh(gate) : F.silu(gate);
        return Linear(new LinearSite(layer, Projection.Down), act * up, w.WDown, null);
    }

    /// <summary>0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): PyTorch's gelu(approximate="tanh"), spelled out
    /// because TorchSharp 0.107's gelu takes no approximation argument.</summary>
    static Tensor GeluTanh(Tensor x) => 0.5 * x * (1 + torch.tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x.pow(3))));

    static Tensor Softcap(Tensor x, double cap) => torch.tanh(x / cap) * cap;

    Tensor Linear(LinearSite site, Tensor x, Tensor weight, Tensor? bias)
    {
        if (Hooks is null) return F.linear(x, weight, bias);
        x = Hooks.OnLinearInput(site, x);
        return Hooks.OnLinearOutput(site, F.linear(x, weight, bias));
    }

    Tensor PreNorm(Tensor x, Tensor? weight) => Config.PreNorms ? Norm(x, weight) : x;
    Tensor PostNorm(Tensor x, Tensor? weight) => Config.PostNorms ? Norm(x, weight) : x;

    Tensor Norm(Tensor x, Tensor? weight)
    {
        if (Config.Norm == NormKind.NonParametricLayerNorm)
            return F.layer_norm(x.to_type(ScalarType.Float32), new long[] { x.shape[^1] }, null, null, Config.NormEps).to_type(x.dtype);
        // RMSNorm: x / sqrt(mean(x^2) + eps) * (offset + weight), in fp32 whatever the model's dtype (as Hugging Face does).
        Tensor xf = x.dtype == ScalarType.Float32 ? x : x.to_type(ScalarType.Float32);
        Tensor normed = xf * torch.rsqrt(xf.pow(2).mean(new long[] { -1 }, keepdim: true) + Config.NormEps);
        if (weight is not null && Config.NormWeightOffset != 0)
            return (normed * (weight.to_type(ScalarType.Float32) + Config.NormWeightOffset)).to_type(x.dtype); // Gemma scales in fp32
        if (x.dtype != ScalarType.Float32) normed = normed.to_type(x.dtype);
        return weight is null ? normed : normed * weight;
    }

    static Tensor ApplyRope(Tensor x, Tensor cos, Tensor sin)
    {
        // Rotate-half RoPE (Hugging Face layout) over the first rd = cos.shape[-1] dimensions: pairs are (i, i + rd/2);
        // a partial rotary head (Phi-4-mini) passes the dimensions after rd through unchanged.
        long rd = cos.shape[^1], hd = x.shape[^1];
        Tensor r = rd == hd ? x : x.narrow(-1, 0, rd);
        long half = rd / 2;
        Tensor x1 = r.narrow(-1, 0, half), x2 = r.narrow(-1, half, half);
        Tensor rotated = torch.cat(new[] { -x2, x1 }, -1);
        Tensor y = r * cos + rotated * sin;
        return rd == hd ? y : torch.cat(new[] { y, x.narrow(-1, rd, hd - rd) }, -1);
    }

    /// <summary>cos and sin [seq, rope dims] for positions past..past+seq of a layer with RoPE base and linear scale
    /// <paramref name="rope"/>; one table per distinct (base, scale, LongRoPE factor list), grown as needed and kept.</summary>
    (Tensor cos, Tensor sin) RopeTables((double Theta, double LinearFactor) rope, long past, long seq)
    {
        long needed = past + seq;
        // LongRoPE's factor list follows the sequence length, as Hugging Face's dynamic update does.
        double[]? factors = Config.LongRope?.FactorsFor(needed);
        var key = (rope.Theta, rope.LinearFactor, Long: factors is not null && factors == Config.LongRope!.LongFactors);
        if (!_rope.TryGetValue(key, out var table) || table.Cos.shape[0] < needed)
        {
            table.Cos?.Dispose(); table.Sin?.Dispose();
            long n = Math.Max(needed, Math.Min(Config.MaxPositionEmbeddings, 4096));
            double[] invFreq = RopeInverseFrequencies(Config, rope.Theta, factors);
            double scale = Config.LongRope?.AttentionFactor ?? 1.0;
            int rd = Config.RopeDims;
            var cos = new float[n * rd];
            var sin = new float[n * rd];
            for (long p = 0; p < n; p++)
                for (int i = 0; i < rd; i++)
                {
                    double angle = p / rope.LinearFactor * invFreq[i % (rd / 2)];
                    cos[p * rd + i] = (float)(Math.Cos(angle) * scale);
                    sin[p * rd + i] = (float)(Math.Sin(angle) * scale);
                }
            table = (torch.tensor(cos, new long[] { n, rd }, device: Device).to_type(Dtype).DetachFromDisposeScope(),
                     torch.tensor(sin, new long[] { n, rd }, device: Device).to_type(Dtype).DetachFromDisposeScope());
            _rope[key] = table;
        }
        return (table.Cos.narrow(0, past, seq), table.Sin.narrow(0, past, seq));
    }

    /// <summary>theta^(-2i/rd), with Llama 3.1's smooth low/high-frequency rescaling when configured.</summary>
    public static double[] RopeInverseFrequencies(LlamaConfig c) => RopeInverseFrequencies(c, c.RopeTheta, null);

    /// <param name="longRopeFactors">LongRoPE's divisors for this sequence length (one per frequency), or null.</param>
    static double[] RopeInverseFrequencies(LlamaConfig c, double theta, double[]? longRopeFactors)
    {
        int rd = c.RopeDims;
        var inv = new double[rd / 2];
        for (int i = 0; i < rd / 2; i++)
        {
            double f = 1.0 / Math.Pow(theta, 2.0 * i / rd);
            if (longRopeFactors is not null) f /= longRopeFactors[i];
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

    /// <summary>The mask for <paramref name="seq"/> new positions after <paramref name="past"/> cached ones in a layer
    /// with attention window <paramref name="window"/> (key j visible from query i when i - window &lt; j &lt;= i), or
    /// null when the fused kernel's own masking suffices: <paramref name="causal"/> (no cache) or none at all (one new
    /// token that may see every key).</summary>
    Tensor? AttentionMask(int? window, long past, long seq, out bool causal)
    {
        long total = past + seq;
        bool windowed = window is int w0 && total > w0;
        causal = past == 0 && !windowed;
        if (causal || (seq == 1 && !windowed)) return null;
        Tensor allowed = CausalMask(past, seq);
        if (window is int w)
        {
            using var i = torch.arange(past, total, device: Device).unsqueeze(1);
            using var j = torch.arange(total, device: Device).unsqueeze(0);
            allowed = allowed.logical_and(j > i - w);
        }
        return allowed;
    }

    Tensor CausalMask(long past, long seq)
    {
        using var i = torch.arange(past, past + seq, device: Device).unsqueeze(1);
        using var j = torch.arange(past + seq, device: Device).unsqueeze(0);
        return j <= i;
    }

    void DisposeRopeTables()
    {
        foreach (var (cos, sin) in _rope.Values) { cos.Dispose(); sin.Dispose(); }
        _rope.Clear();
    }

    public void Dispose()
    {
        DisposeRopeTables();
        Weights.Dispose();
    }
}
