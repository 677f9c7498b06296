namespace SuperQuant.Tests.Support;

/// <summary>
/// An independent reference forward pass in plain float loops (Hugging Face conventions: [out, in] matrices,
/// rotate-half RoPE), one token at a time with a KV cache, written separately from the TorchSharp model so the
/// two can be compared. Slow by design; only for a few tokens of tiny models.
/// </summary>
public sealed class ReferenceLlama
{
    public required TinyModelSpec Spec;
    public required Dictionary<string, float[]> W;

    public float[][] Logits(int[] tokens)
    {
        var s = Spec;
        int d = s.Hidden, hd = s.HeadDim, kvd = s.KvHeads * hd, qd = s.Heads * hd;
        var keys = new List<float[]>[s.Layers];
        var values = new List<float[]>[s.Layers];
        for (int l = 0; l < s.Layers; l++) { keys[l] = new(); values[l] = new(); }
        double[] inv = InvFreq(s);
        var result = new float[tokens.Length][];
        for (int pos = 0; pos < tokens.Length; pos++)
        {
            float[] x = W["model.embed_tokens.weight"].AsSpan(tokens[pos] * d, d).ToArray();
            for (int l = 0; l < s.Layers; l++)
            {
                string p = $"model.layers.{l}.";
                float[] h = Norm(x, s.Olmo ? null : W[p + "input_layernorm.weight"], s);
                float[] q = MatVec(Get(p, "q", l), h, qd, d, s.QkvBias ? W[p + "self_attn.q_proj.bias"] : null);
                float[] k = MatVec(Get(p, "k", l), h, kvd, d, s.QkvBias ? W[p + "self_attn.k_proj.bias"] : null);
                float[] v = MatVec(Get(p, "v", l), h, kvd, d, s.QkvBias ? W[p + "self_attn.v_proj.bias"] : null);
                if (s.ClipQkv is float c) { Clip(q, c); Clip(k, c); Clip(v, c); }
                for (int head = 0; head < s.Heads; head++) RotateHalf(q, head * hd, hd, pos, inv);
                for (int head = 0; head < s.KvHeads; head++) RotateHalf(k, head * hd, hd, pos, inv);
                keys[l].Add(k); values[l].Add(v);
                var attn = new float[qd];
                int first = s.SlidingWindow is int win ? Math.Max(0, pos - win + 1) : 0;
                for (int head = 0; head < s.Heads; head++)
                {
                    int kvHead = head / (s.Heads / s.KvHeads);
                    var scores = new double[pos + 1];
                    double max = double.NegativeInfinity;
                    for (int t = first; t <= pos; t++)
                    {
                        double dot = 0;
                        for (int i = 0; i < hd; i++) dot += q[head * hd + i] * keys[l][t][kvHead * hd + i];
                        scores[t] = dot / Math.Sqrt(hd);
                        max = Math.Max(max, scores[t]);
                    }
                    double sum = 0;
                    for (int t = first; t <= pos; t++) { scores[t] = Math.Exp(scores[t] - max); sum += scores[t]; }
                    for (int t = first; t <= pos; t++)
                        for (int i = 0; i < hd; i++) attn[head * hd + i] += (float)(scores[t] / sum * values[l][t][kvHead * hd + i]);
                }
                float[] o = MatVec(W[p + "self_attn.o_proj.weight"], attn, d, qd, null);
                for (int i = 0; i < d; i++) x[i] += o[i];
                h = Norm(x, s.Olmo ? null : W[p + "post_attention_layernorm.weight"], s);
                float[] g = MatVec(Get(p, "gate", l), h, s.Intermediate, d, null);
                float[] u = MatVec(Get(p, "up", l), h, s.Intermediate, d, null);
                for (int i = 0; i < g.Length; i++) g[i] = g[i] / (1f + MathF.Exp(-g[i])) * u[i];
                float[] down = MatVec(W[p + "mlp.down_proj.weight"], g, d, s.Intermediate, null);
                for (int i = 0; i < d; i++) x[i] += down[i];
            }
            x = Norm(x, s.Olmo ? null : W["model.norm.weight"], s);
            float[] lmHead = W.TryGetValue("lm_head.weight", out var lm) ? lm : W["model.embed_tokens.weight"];
            result[pos] = MatVec(lmHead, x, s.Vocab, d, null);
        }
        return result;
    }

    float[] Get(string p, string which, int l)
    {
        var s = Spec;
        int d = s.Hidden, qd = s.Heads * s.HeadDim, kvd = s.KvHeads * s.HeadDim;
        if (!s.Phi3) return W[p + (which is "gate" or "up" ? $"mlp.{which}_proj.weight" : $"self_attn.{which}_proj.weight")];
        if (which is "gate" or "up")
        {
            float[] gu = W[p + "mlp.gate_up_proj.weight"];
            return gu.AsSpan(which == "gate" ? 0 : s.Intermediate * d, s.Intermediate * d).ToArray();
        }
        float[] qkv = W[p + "self_attn.qkv_proj.weight"];
        return which switch
        {
            "q" => qkv.AsSpan(0, qd * d).ToArray(),
            "k" => qkv.AsSpan(qd * d, kvd * d).ToArray(),
            _ => qkv.AsSpan((qd + kvd) * d, kvd * d).ToArray(),
        };
    }

    static void Clip(float[] a, float c) { for (int i = 0; i < a.Length; i++) a[i] = Math.Clamp(a[i], -c, c); }

    static float[] MatVec(float[] w, float[] x, int rows, int cols, float[]? bias)
    {
        var y = new float[rows];
        for (int r = 0; r < rows; r++)
        {
            double acc = bias?[r] ?? 0;
            for (int c = 0; c < cols; c++) acc += (double)w[r * cols + c] * x[c];
            y[r] = (float)acc;
        }
        return y;
    }

    static float[] Norm(float[] x, float[]? weight, TinyModelSpec s)
    {
        var y = new float[x.Length];
        if (s.Olmo)
        {
            double mean = x.Average(v => (double)v);
            double var = x.Average(v => (v - mean) * (v - mean));
            for (int i = 0; i < x.Length; i++) y[i] = (float)((x[i] - mean) / Math.Sqrt(var + s.Eps));
            return y;
        }
        double ms = x.Average(v => (double)v * v);
        for (int i = 0; i < x.Length; i++) y[i] = (float)(x[i] / Math.Sqrt(ms + s.Eps)) * weight![i];
        return y;
    }

    static void RotateHalf(float[] v, int offset, int hd, int pos, double[] inv)
    {
        int half = hd / 2;
        for (int i = 0; i < half; i++)
        {
            double a = pos * inv[i], cos = Math.Cos(a), sin = Math.Sin(a);
            float x1 = v[offset + i], x2 = v[offset + i + half];
            v[offset + i] = (float)(x1 * cos - x2 * sin);
            v[offset + i + half] = (float)(x2 * cos + x1 * sin);
        }
    }

    static double[] InvFreq(TinyModelSpec s)
    {
        int hd = s.HeadDim;
        var inv = new double[hd / 2];
        for (int i = 0; i < hd / 2; i++)
        {
            double f = Math.Pow(s.RopeTheta, -2.0 * i / hd);
            if (s.Llama3Scaling)
            {
                // Llama 3.1 rope_type "llama3" with factor 8, low 1, high 4, original context 16 (tiny on purpose
                // so the scaling branches are all exercised at head_dim 16).
                const double factor = 8, low = 1, high = 4, orig = 16;
                double wavelen = 2 * Math.PI / f;
                if (wavelen > orig / low) f /= factor;
                else if (wavelen >= orig / high)
                {
                    double smooth = (orig / wavelen - low) / (high - low);
                    f = (1 - smooth) * f / factor + smooth * f;
                }
            }
            inv[i] = f;
        }
        return inv;
    }
}
