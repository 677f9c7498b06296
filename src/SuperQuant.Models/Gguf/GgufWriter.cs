using System.Text;
using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Core.SuperWeights;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Models.Gguf;

public enum GgufMode
{
    F16,
    Q8_0,
    Q4_0,
    /// <summary>Q4_0 everywhere except the matrices holding super weights, which are written as Q8_0.</summary>
    SuperAware,
}

/// <summary>
/// Writes a LLaMA-architecture model as GGUF for llama.cpp / LLamaSharp: llama.cpp's tensor names, its "llama.*"
/// metadata, and q/k rows permuted back from Hugging Face's rotate-half order to the interleaved order llama.cpp's
/// RoPE expects (what its convert_hf_to_gguf.py does). Matrix rows not divisible by 32 cannot use Q4_0/Q8_0 and are
/// written as F16. Norms stay F32; the token embedding and output head are F16 except in Q8_0 mode.
/// The tokenizer comes from the checkpoint folder (<see cref="GgufVocabulary"/>); without one the file says "no_vocab",
/// which llama.cpp loads to run token ids.
/// </summary>
public static class GgufWriter
{
    public static readonly IReadOnlyList<string> SupportedArchitectures = new[] { "llama", "mistral", "llama2.c" };

    sealed record Planned(string Name, long[] Dims, GgmlType Type, Func<float[]> Values);

    /// <param name="vocabulary">The tokenizer (<see cref="GgufVocabulary.FromCheckpoint"/>); null writes "no_vocab".</param>
    public static IReadOnlyList<(string Name, GgmlType Type)> Write(string path, LlamaModel model, GgufMode mode, IReadOnlyList<SuperWeight> superWeights, string name,
        GgufVocabulary? vocabulary = null)
    {
        LlamaConfig c = model.Config;
        if (!SupportedArchitectures.Contains(c.Architecture))
            throw new SuperQuantException(ErrorCodes.UnsupportedQuantization, $"GGUF export supports {string.Join(", ", SupportedArchitectures)} models; '{c.Architecture}' is not supported yet");
        if (c.RopeScaling is not null)
            throw new SuperQuantException(ErrorCodes.UnsupportedQuantization, "GGUF export of llama3 RoPE scaling is not supported yet");
        var w = model.Weights;
        var plan = new List<Planned>();
        static float[] Values(Tensor t) => t.to_type(ScalarType.Float32).cpu().contiguous().data<float>().ToArray();
        static long[] Dims(Tensor t) => t.shape.Reverse().ToArray();
        GgmlType MatrixType(Tensor t, bool holdsSuperWeight)
        {
            GgmlType want = mode switch
            {
                GgufMode.F16 => GgmlType.F16,
                GgufMode.Q8_0 => GgmlType.Q8_0,
                GgufMode.Q4_0 => GgmlType.Q4_0,
                _ => holdsSuperWeight ? GgmlType.Q8_0 : GgmlType.Q4_0,
            };
            return GgmlQuants.Supports(want, t.shape[1]) ? want : GgmlType.F16;
        }
        void Matrix(string n, Tensor t, bool holdsSuperWeight = false) => plan.Add(new(n, Dims(t), MatrixType(t, holdsSuperWeight), () => Values(t)));
        void Vector(string n, Tensor? t) { if (t is not null) plan.Add(new(n, Dims(t), GgmlType.F32, () => Values(t))); }
        GgmlType outer = mode == GgufMode.Q8_0 && GgmlQuants.Supports(GgmlType.Q8_0, c.HiddenSize) ? GgmlType.Q8_0 : GgmlType.F16;

        plan.Add(new("token_embd.weight", Dims(w.TokenEmbedding), outer, () => Values(w.TokenEmbedding)));
        for (int l = 0; l < c.NumLayers; l++)
        {
            var L = w.Layers[l];
            string p = $"blk.{l}.";
            Vector(p + "attn_norm.weight", L.AttnNorm);
            plan.Add(new(p + "attn_q.weight", Dims(L.Wq), MatrixType(L.Wq, false), () => Values(HalfToInterleaved(L.Wq, c.NumHeads))));
            plan.Add(new(p + "attn_k.weight", Dims(L.Wk), MatrixType(L.Wk, false), () => Values(HalfToInterleaved(L.Wk, c.NumKvHeads))));
            Matrix(p + "attn_v.weight", L.Wv);
            Matrix(p + "attn_output.weight", L.Wo);
            Vector(p + "ffn_norm.weight", L.FfnNorm);
            Matrix(p + "ffn_gate.weight", L.WGate);
            Matrix(p + "ffn_up.weight", L.WUp);
            Matrix(p + "ffn_down.weight", L.WDown, superWeights.Any(s => s.Layer == l));
        }
        Vector("output_norm.weight", w.FinalNorm);
        if (w.LmHead is not null) plan.Add(new("output.weight", Dims(w.LmHead), outer, () => Values(w.LmHead)));

        var meta = new List<(string Key, GgufValueType Type, object Value)>
        {
            ("general.architecture", GgufValueType.String, "llama"),
            ("general.name", GgufValueType.String, name),
            ("general.alignment", GgufValueType.UInt32, (uint)GgufFile.DefaultAlignment),
            ("general.file_type", GgufValueType.UInt32, mode switch { GgufMode.F16 => 1u, GgufMode.Q8_0 => 7u, _ => 2u }),
            ("general.quantized_by", GgufValueType.String, "superquant " + (typeof(GgufWriter).Assembly.GetName().Version?.ToString() ?? "")),
            ("llama.context_length", GgufValueType.UInt32, (uint)c.MaxPositionEmbeddings),
            ("llama.embedding_length", GgufValueType.UInt32, (uint)c.HiddenSize),
            ("llama.block_count", GgufValueType.UInt32, (uint)c.NumLayers),
            ("llama.feed_forward_length", GgufValueType.UInt32, (uint)c.IntermediateSize),
            ("llama.rope.dimension_count", GgufValueType.UInt32, (uint)c.HeadDim),
            ("llama.attention.head_count", GgufValueType.UInt32, (uint)c.NumHeads),
            ("llama.attention.head_count_kv", GgufValueType.UInt32, (uint)c.NumKvHeads),
            ("llama.attention.layer_norm_rms_epsilon", GgufValueType.Float32, (float)c.NormEps),
            ("llama.rope.freq_base", GgufValueType.Float32, (float)c.RopeTheta),
            ("llama.vocab_size", GgufValueType.UInt32, (uint)c.VocabSize),
            ("superquant.super_weights", GgufValueType.String, string.Join(";", superWeights.Select(s => $"{s.Layer},{s.Row},{s.Column}"))),
        };

        if (vocabulary is not null && vocabulary.Tokens.Count != c.VocabSize)
            throw new SuperQuantException(ErrorCodes.InvalidArgument, $"the vocabulary has {vocabulary.Tokens.Count} tokens, the model {c.VocabSize}");
        // llama.cpp refuses a file without a tokenizer model; "no_vocab" (LLAMA_VOCAB_TYPE_NONE) loads it for use with
        // token ids, its vocabulary size taken from llama.vocab_size.
        meta.AddRange(vocabulary?.Metadata() ?? new[] { ("tokenizer.ggml.model", GgufValueType.String, (object)"no_vocab") });

        // The tensor data dominates the size; the header is a few KB.
        AtomicFile.Write(path, plan.Sum(t => Align(Bytes(t))), fs =>
        {
            using var bw = new BinaryWriter(fs, Encoding.UTF8, leaveOpen: true);
            bw.Write(GgufFile.Magic); bw.Write(GgufFile.Version);
            bw.Write((ulong)plan.Count); bw.Write((ulong)meta.Count);
            foreach (var (key, type, value) in meta) { WriteString(bw, key); bw.Write((uint)type); WriteValue(bw, type, value); }
            long offset = 0;
            foreach (var t in plan)
            {
                WriteString(bw, t.Name);
                bw.Write((uint)t.Dims.Length);
                foreach (long d in t.Dims) bw.Write((ulong)d);
                bw.Write((uint)t.Type);
                bw.Write((ulong)offset);
                offset = Align(offset + Bytes(t));
            }
            Pad(bw);
            foreach (var t in plan)
            {
                bw.Write(GgmlQuants.Quantize(t.Type, t.Values()));
                Pad(bw);
            }
            bw.Flush();
        });
        return plan.Select(p => (p.Name, p.Type)).ToList();
    }

    static long Bytes(Planned t) => GgmlQuants.RowBytes(t.Type, t.Dims[0]) * (t.Dims.Aggregate(1L, (a, b) => a * b) / t.Dims[0]);
    static long Align(long x) => (x + GgufFile.DefaultAlignment - 1) / GgufFile.DefaultAlignment * GgufFile.DefaultAlignment;
    static void Pad(BinaryWriter bw) { long n = Align(bw.BaseStream.Position) - bw.BaseStream.Position; bw.Write(new byte[n]); }

    static void WriteString(BinaryWriter bw, string s)
    {
        byte[] b = Encoding.UTF8.GetBytes(s);
        bw.Write((ulong)b.Length);
        bw.Write(b);
    }

    static void WriteValue(BinaryWriter bw, GgufValueType type, object v)
    {
        switch (type)
        {
            case GgufValueType.UInt32: bw.Write((uint)v); break;
            case GgufValueType.Int32: bw.Write((int)v); break;
            case GgufValueType.Float32: bw.Write((float)v); break;
            case GgufValueType.Bool: bw.Write((byte)((bool)v ? 1 : 0)); break;
            case GgufValueType.String: WriteString(bw, (string)v); break;
            case GgufValueType.Array:
                var a = (GgufArray)v;
                bw.Write((uint)a.ElementType);
                bw.Write((ulong)a.Items.Length);
                foreach (object item in a.Items) WriteValue(bw, a.ElementType, item);
                break;
            default: throw new NotSupportedException(type.ToString());
        }
    }

    /// <summary>Inverse of Hugging Face's permute(): rotate-half row order back to interleaved pairs per head.</summary>
    public static Tensor HalfToInterleaved(Tensor w, int heads)
    {
        long rows = w.shape[0], cols = w.shape[1];
        return w.reshape(heads, 2, rows / heads / 2, cols).transpose(1, 2).reshape(rows, cols).contiguous();
    }
}
