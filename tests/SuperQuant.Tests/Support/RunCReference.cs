namespace SuperQuant.Tests.Support;

/// <summary>
/// A line-by-line port of karpathy/llama2.c run.c's forward() (interleaved-pair RoPE, the file's own layout),
/// reading the .bin with its own BinaryReader. Independent of SuperQuant.Models on purpose: it checks the loader's
/// layout conversion (RoPE row permutation) and the TorchSharp forward pass at once.
/// </summary>
public sealed class RunCReference
{
    readonly int dim, hidden, layers, heads, kvHeads, vocab, seqLen;
    readonly bool shared;
    readonly float[] tok, rmsAtt, wq, wk, wv, wo, rmsFfn, w1, w2, w3, rmsFinal, wcls;

    public int Vocab => vocab;

    /// <summary>Called with (layer, position, down_proj input, down_proj output) as the forward pass computes them.</summary>
    public Action<int, int, float[], float[]>? OnDownProj { get; set; }

    public RunCReference(string path)
    {
        using var r = new BinaryReader(File.OpenRead(path));
        dim = r.ReadInt32(); hidden = r.ReadInt32(); layers = r.ReadInt32(); heads = r.ReadInt32();
        kvHeads = r.ReadInt32(); vocab = r.ReadInt32(); seqLen = r.ReadInt32();
        shared = vocab > 0; vocab = Math.Abs(vocab);
        int kvDim = dim * kvHeads / heads, headSize = dim / heads;
        float[] F(long n) { var a = new float[n]; for (long i = 0; i < n; i++) a[i] = r.ReadSingle(); return a; }
        tok = F((long)vocab * dim); rmsAtt = F(layers * dim); wq = F((long)layers * dim * dim); wk = F((long)layers * dim * kvDim);
        wv = F((long)layers * dim * kvDim); wo = F((long)layers * dim * dim); rmsFfn = F(layers * dim);
        w1 = F((long)layers * dim * hidden); w2 = F((long)layers * hidden * dim); w3 = F((long)layers * dim * hidden);
        rmsFinal = F(dim);
        F((long)seqLen * headSize / 2); F((long)seqLen * headSize / 2); // freq_cis_real, freq_cis_imag (unused by run.c)
        wcls = shared ? tok : F((long)vocab * dim);
    }

    static void RmsNorm(float[] o, float[] x, float[] w, int wOff, int size)
    {
        float ss = 0;
        for (int j = 0; j < size; j++) ss += x[j] * x[j];
        ss /= size; ss += 1e-5f; ss = 1.0f / MathF.Sqrt(ss);
        for (int j = 0; j < size; j++) o[j] = w[wOff + j] * (ss * x[j]);
    }

    static void MatMul(float[] xout, float[] x, float[] w, long wOff, int n, int d)
    {
        // W (d,n) @ x (n,) -> xout (d,)
        for (int i = 0; i < d; i++)
        {
            float val = 0;
            for (int j = 0; j < n; j++) val += w[wOff + (long)i * n + j] * x[j];
            xout[i] = val;
        }
    }

    /// <summary>Logits after each of <paramref name="tokens"/>, computed like run.c's generate loop.</summary>
    public float[][] Logits(int[] tokens)
    {
        int kvDim = dim * kvHeads / heads, kvMul = heads / kvHeads, headSize = dim / heads;
        var keyCache = new float[(long)layers * tokens.Length * kvDim];
        var valueCache = new float[(long)layers * tokens.Length * kvDim];
        var x = new float[dim]; var xb = new float[dim]; var xb2 = new float[dim];
        var hb = new float[hidden]; var hb2 = new float[hidden]; var q = new float[dim];
        var k = new float[kvDim]; var v = new float[kvDim]; var att = new float[tokens.Length];
        var result = new float[tokens.Length][];
        for (int pos = 0; pos < tokens.Length; pos++)
        {
            Array.Copy(tok, (long)tokens[pos] * dim, x, 0, dim);
            for (int l = 0; l < layers; l++)
            {
                RmsNorm(xb, x, rmsAtt, l * dim, dim);
                MatMul(q, xb, wq, (long)l * dim * dim, dim, dim);
                MatMul(k, xb, wk, (long)l * dim * kvDim, dim, kvDim);
                MatMul(v, xb, wv, (long)l * dim * kvDim, dim, kvDim);
                for (int i = 0; i < dim; i += 2)
                {
                    int headDim = i % headSize;
                    float freq = 1.0f / MathF.Pow(10000.0f, headDim / (float)headSize);
                    float val = pos * freq, fcr = MathF.Cos(val), fci = MathF.Sin(val);
                    int rotn = i < kvDim ? 2 : 1;
                    for (int vi = 0; vi < rotn; vi++)
                    {
                        float[] vec = vi == 0 ? q : k;
                        float v0 = vec[i], v1 = vec[i + 1];
                        vec[i] = v0 * fcr - v1 * fci;
                        vec[i + 1] = v0 * fci + v1 * fcr;
                    }
                }
                long loff = (long)l * tokens.Length * kvDim;
                Array.Copy(k, 0, keyCache, loff + (long)pos * kvDim, kvDim);
                Array.Copy(v, 0, valueCache, loff + (long)pos * kvDim, kvDim);
                for (int h = 0; h < heads; h++)
                {
                    for (int t = 0; t <= pos; t++)
                    {
                        float score = 0;
                        for (int i = 0; i < headSize; i++) score += q[h * headSize + i] * keyCache[loff + (long)t * kvDim + h / kvMul * headSize + i];
                        att[t] = score / MathF.Sqrt(headSize);
                    }
                    float max = att.Take(pos + 1).Max(), sum = 0;
                    for (int t = 0; t <= pos; t++) { att[t] = MathF.Exp(att[t] - max); sum += att[t]; }
                    for (int t = 0; t <= pos; t++) att[t] /= sum;
                    for (int i = 0; i < headSize; i++) xb[h * headSize + i] = 0;
                    for (int t = 0; t <= pos; t++)
                        for (int i = 0; i < headSize; i++) xb[h * headSize + i] += att[t] * valueCache[loff + (long)t * kvDim + h / kvMul * headSize + i];
                }
                MatMul(xb2, xb, wo, (long)l * dim * dim, dim, dim);
                for (int i = 0; i < dim; i++) x[i] += xb2[i];
                RmsNorm(xb, x, rmsFfn, l * dim, dim);
                MatMul(hb, xb, w1, (long)l * dim * hidden, dim, hidden);
                MatMul(hb2, xb, w3, (long)l * dim * hidden, dim, hidden);
                for (int i = 0; i < hidden; i++) { float val = hb[i]; val *= 1.0f / (1.0f + MathF.Exp(-val)); hb[i] = val * hb2[i]; }
                MatMul(xb, hb, w2, (long)l * dim * hidden, hidden, dim);
                OnDownProj?.Invoke(l, pos, hb, xb);
                for (int i = 0; i < dim; i++) x[i] += xb[i];
            }
            RmsNorm(x, x, rmsFinal, 0, dim);
            var logits = new float[vocab];
            MatMul(logits, x, wcls, 0, dim, vocab);
            result[pos] = logits;
        }
        return result;
    }
}
