using SuperQuant.Core.Llama;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Models.Gguf;

/// <summary>One tensor of a GGUF file: its llama.cpp name, ggml dims (row length first), the linear layer whose input
/// it reads (null for the token embedding and vectors), and where its values come from in the file's layout (q/k rows
/// permuted for NORM RoPE, fused projections concatenated, norm shifts applied).</summary>
public sealed record GgufTensor(string Name, long[] Dims, LinearSite? Site, Func<Tensor> Source)
{
    public bool IsMatrix => Dims.Length >= 2;
    public long RowLength => Dims[0];
    public long Rows => Dims.Aggregate(1L, (a, b) => a * b) / Dims[0];
    /// <summary>The values as float32 [rows, row length] on the host.</summary>
    public Tensor Values() => Source().to_type(ScalarType.Float32).cpu().contiguous();
}

/// <summary>How a model's weights map onto llama.cpp's tensors (what its convert_hf_to_gguf.py does): names, shapes,
/// the q/k row order its RoPE expects, each family's extra pieces. Data is read only when a tensor is written, so a
/// layer-streamed model is read one block at a time, in order.</summary>
public static class GgufTensorLayout
{
    /// <summary>The file's tensors in llama.cpp's names and layouts, from the model's description: each family's extra
    /// pieces (biases, q/k norms, post-norms, fused projections, RoPE factors) appear where the block has them.</summary>
    public static List<GgufTensor> Of(LlamaModel model)
    {
        LlamaConfig c = model.Config;
        GgufArchitecture arch = GgufArchitecture.For(c);
        var w = model.Weights;
        var list = new List<GgufTensor>();
        static long[] Dims(Tensor t) => t.shape.Reverse().ToArray();
        float shift = arch.NormShift;
        bool permute = arch.Rope == RopePairing.Norm;
        // Q and K rows go from Hugging Face's rotate-half order to the consecutive pairs of llama.cpp's NORM RoPE.
        Tensor Q(Tensor t) => permute ? HalfToInterleaved(t, c.NumHeads) : t.alias();
        Tensor K(Tensor t) => permute ? HalfToInterleaved(t, c.NumKvHeads) : t.alias();
        Tensor Norm(Tensor t) => shift == 0 ? t.alias() : t.to_type(ScalarType.Float32) + shift;

        // A tied embedding is also the output head: its importance is the head's input.
        list.Add(new("token_embd.weight", Dims(w.TokenEmbedding), w.LmHead is null ? new LinearSite(-1, Projection.LmHead) : null, ()
            => w.TokenEmbedding.alias()));
        if (GgufArchitecture.RopeFrequencyFactors(c) is float[] factors)
            list.Add(new("rope_freqs.weight", new long[] { factors.Length }, null, () => torch.tensor(factors)));
        if (GgufArchitecture.LongRopeFactors(c) is (float[] longFactors, float[] shortFactors))
        {
            list.Add(new("rope_factors_long.weight", new long[] { longFactors.Length }, null, () => torch.tensor(longFactors)));
            list.Add(new("rope_factors_short.weight", new long[] { shortFactors.Length }, null, () => torch.tensor(shortFactors)));
        }
        // Shapes come from the first block (blocks are uniform); data is asked of w.Layer(l) when the writer reaches
        // it, so a layer-streamed model is read one block at a time, in order.
        var first = c.NumLayers > 0 ? w.Layer(0) : null;
        for (int l = 0; l < c.NumLayers; l++)
        {
            var L = first!;
            string p = $"blk.{l}.";
            int layer = l;
            LlamaLayerWeights At() => w.Layer(layer);
            void Matrix(string n, Projection proj, long rows, long cols, Func<Tensor> source)
                => list.Add(new(p + n, new[] { cols, rows }, new LinearSite(layer, proj), source));
            void Vector(string n, Tensor? shapeOf, Func<LlamaLayerWeights, Tensor?> pick, Func<Tensor, Tensor> map)
            {
                if (shapeOf is not null) list.Add(new(p + n, Dims(shapeOf), null, () => map(pick(At())!)));
            }
            long d = c.HiddenSize, qd = L.Wq.shape[0], kv = L.Wk.shape[0], h = L.WGate.shape[0];
            Vector("attn_norm.weight", L.AttnNorm, x => x.AttnNorm, Norm);
            if (arch.Fused)
                Matrix("attn_qkv.weight", Projection.Q, qd + 2 * kv, d, () => torch.cat(new[] { At().Wq, At().Wk, At().Wv }, 0));
            else
            {
                Matrix("attn_q.weight", Projection.Q, qd, d, () => Q(At().Wq));
                Matrix("attn_k.weight", Projection.K, kv, d, () => K(At().Wk));
                Matrix("attn_v.weight", Projection.V, kv, d, () => At().Wv.alias());
            }
            Vector("attn_q.bias", L.Bq, x => x.Bq, b => Q(b.unsqueeze(1)).squeeze(1));
            Vector("attn_k.bias", L.Bk, x => x.Bk, b => K(b.unsqueeze(1)).squeeze(1));
            Vector("attn_v.bias", L.Bv, x => x.Bv, b => b.alias());
            Vector("attn_q_norm.weight", L.QNorm, x => x.QNorm, Norm);
            Vector("attn_k_norm.weight", L.KNorm, x => x.KNorm, Norm);
            Matrix("attn_output.weight", Projection.O, d, qd, () => At().Wo.alias());
            Vector("post_attention_norm.weight", L.AttnPostNorm, x => x.AttnPostNorm, Norm);
            Vector("ffn_norm.weight", L.FfnNorm, x => x.FfnNorm, Norm);
            if (arch.Fused)
                Matrix("ffn_up.weight", Projection.Gate, 2 * h, d, () => torch.cat(new[] { At().WGate, At().WUp }, 0));
            else
            {
                Matrix("ffn_gate.weight", Projection.Gate, h, d, () => At().WGate.alias());
                Matrix("ffn_up.weight", Projection.Up, h, d, () => At().WUp.alias());
            }
            Matrix("ffn_down.weight", Projection.Down, d, h, () => At().WDown.alias());
            Vector("post_ffw_norm.weight", L.FfnPostNorm, x => x.FfnPostNorm, Norm);
        }
        if (w.FinalNorm is not null) list.Add(new("output_norm.weight", Dims(w.FinalNorm), null, () => Norm(w.FinalNorm)));
        if (w.LmHead is not null) list.Add(new("output.weight", Dims(w.LmHead), new LinearSite(-1, Projection.LmHead), () => w.LmHead.alias()));
        return list;
    }

    /// <summary>Inverse of Hugging Face's permute(): rotate-half row order back to interleaved pairs per head.</summary>
    public static Tensor HalfToInterleaved(Tensor w, int heads)
    {
        long rows = w.shape[0], cols = w.shape[1];
        return w.reshape(heads, 2, rows / heads / 2, cols).transpose(1, 2).reshape(rows, cols).contiguous();
    }

    /// <summary>Hugging Face's permute(): interleaved pairs per head back to rotate-half order (for reading GGUF).</summary>
    public static Tensor InterleavedToHalf(Tensor w, int heads)
    {
        long rows = w.shape[0], cols = w.shape[1];
        return w.reshape(heads, rows / heads / 2, 2, cols).transpose(1, 2).reshape(rows, cols).contiguous();
    }
}
