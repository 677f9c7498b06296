using System.Runtime.InteropServices;
using System.Text;
using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Manifest;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Models.Gguf;

/// <summary>What to write: the named file type and, for the super-aware export, how to steer each matrix's quantization.</summary>
public sealed record GgufExport
{
    public required GgufFileType FileType { get; init; }
    public string Name { get; init; } = "model";
    /// <summary>The context the file will be run (and gated) at, for <see cref="GgufWriteResult.RuntimeDifferences"/>
    /// (a sliding window only matters past it); null: the model's maximum.</summary>
    public int? Context { get; init; }
    /// <summary>The tokenizer (<see cref="GgufVocabulary.FromCheckpoint"/>); null writes "no_vocab".</summary>
    public GgufVocabulary? Vocabulary { get; init; }
    /// <summary>Per linear layer, one importance weight per input column (llama.cpp's imatrix: the mean squared
    /// activation entering that column on calibration data). Null: the reference quantization, byte-identical to
    /// llama.cpp's quantizer without an imatrix.
    /// With an imatrix file type (<see cref="Names.NeedsImportance"/>) they are the reference itself: every row is
    /// importance-weighted as llama-quantize --imatrix weights it, and the mix plans as it does with an imatrix.</summary>
    public IReadOnlyDictionary<LinearSite, float[]>? Importance { get; init; }
    /// <summary>Other value sets to try for a matrix (z-score clipping at several thresholds), each quantized with the
    /// importance weights. With <see cref="Importance"/>, every row is written as the candidate (reference quantization,
    /// importance-weighted, or a variant) with the lowest importance-weighted error sum_j imp_j (w_j - q_j)^2 against the
    /// original row: rows are independent in every ggml format, and the reference is always a candidate, so no row is
    /// worse than llama.cpp's quantizer's by that measure.</summary>
    public IReadOnlyList<Func<LinearSite, Tensor, Tensor>> Variants { get; init; } = Array.Empty<Func<LinearSite, Tensor, Tensor>>();
    /// <summary>Per linear layer, the second moment H = X^T X / n of its calibration inputs. When present, candidates
    /// are compared by the layer-output error dw H dw^T (cross-channel terms included) instead of the diagonal
    /// sum_j imp_j dw_j^2.</summary>
    public IReadOnlyDictionary<LinearSite, Tensor>? Covariance { get; init; }
    /// <summary>With <see cref="Covariance"/>: also a GPTQ candidate per row (<see cref="ErrorCompensatedQuantizer"/>:
    /// codes chosen column by column with each rounding error compensated on the later columns through H⁻¹), compared
    /// with the others by the same layer-output error.</summary>
    public bool ErrorCompensation { get; init; }
    /// <summary>Per tensor name, a type that replaces the mix's choice (e.g. a higher type for a super weight's matrix).</summary>
    public IReadOnlyDictionary<string, GgmlType>? TypeOverrides { get; init; }
    /// <summary>Why <see cref="TypeOverrides"/> chose (for the report); null: a super weight's raised matrix.</summary>
    public string? OverrideReason { get; init; }
    /// <summary>With <see cref="Importance"/>: every row importance-weighted, as llama-quantize --imatrix writes it,
    /// for every type (the imatrix types always are); no candidates are compared.</summary>
    public bool ImatrixRows { get; init; }
    /// <summary>Recorded in the metadata (superquant.*).</summary>
    public QuantMethod Method { get; init; } = QuantMethod.Rtn;
    public IReadOnlyList<SuperWeight> SuperWeights { get; init; } = Array.Empty<SuperWeight>();
}

/// <summary>What was written: each tensor's type (and why), and the totals.</summary>
public sealed record GgufWriteResult(IReadOnlyList<GgufTensorType> Tensors, long FileBytes, long Parameters)
{
    /// <summary>What llama.cpp will compute differently from the checkpoint (<see cref="GgufArchitecture.RuntimeDifferences"/>).</summary>
    public IReadOnlyList<string> RuntimeDifferences { get; init; } = Array.Empty<string>();
    /// <summary>File size in bits over the parameter count, as llama.cpp reports "BPW".</summary>
    public double BitsPerWeight => 8.0 * FileBytes / Parameters;
    public string TypeSummary => string.Join(", ", Tensors.Where(t => t.Type != GgmlType.F32).GroupBy(t => t.Type).Select(g => $"{g.Count()} {g.Key}"));
}

/// <summary>
/// Writes a LLaMA-architecture model as GGUF v3 for llama.cpp / LLamaSharp: llama.cpp's tensor names, its "llama.*"
/// metadata, q/k rows permuted back from Hugging Face's rotate-half order to the interleaved order llama.cpp's RoPE
/// expects (what its convert_hf_to_gguf.py does), and per-tensor types from <see cref="GgufMix"/> for the named file
/// type. Tensors are quantized one at a time straight from the model's memory and streamed to a temp file that is
/// renamed into place (<see cref="AtomicFile"/>).
/// </summary>
public static class GgufWriter
{
    sealed record Planned(string Name, long[] Dims, LinearSite? Site, Func<Tensor> Source);

    /// <summary>One tensor of the file as a per-tensor type choice sees it: its name, ggml dims (row length first), the
    /// linear layer whose input it reads (null for the token embedding and vectors), and its values in the file's
    /// layout (float32 [rows, row length]; q/k rows permuted for NORM RoPE, fused projections concatenated).</summary>
    public sealed record TensorView(string Name, long[] Dims, LinearSite? Site, Func<Tensor> Values)
    {
        public bool IsMatrix => Dims.Length >= 2;
        public long RowLength => Dims[0];
        public long Rows => Dims.Aggregate(1L, (a, b) => a * b) / Dims[0];
    }

    /// <summary>The tensors a file of <paramref name="model"/> holds, in file order.</summary>
    public static IReadOnlyList<TensorView> Layout(LlamaModel model) =>
        Tensors(model).Select(t => new TensorView(t.Name, t.Dims, t.Site, () => t.Source().to_type(ScalarType.Float32).cpu().contiguous())).ToList();

    /// <summary>Checks a model can be exported (architecture, RoPE); throws SQ4001 otherwise.</summary>
    public static void CheckSupported(LlamaConfig c) => GgufArchitecture.For(c);

    /// <summary>The tensor list and types a file would get, without writing it.</summary>
    public static IReadOnlyList<GgufTensorType> PlanTypes(LlamaModel model, GgufExport export) => PlanTypes(model.Config, Tensors(model), export);

    public static GgufWriteResult Write(string path, LlamaModel model, GgufExport export)
    {
        LlamaConfig c = model.Config;
        CheckSupported(c);
        if (export.Vocabulary is not null && export.Vocabulary.Tokens.Count != c.VocabSize)
            throw new SuperQuantException(ErrorCodes.InvalidArgument, $"the vocabulary has {export.Vocabulary.Tokens.Count} tokens, the model {c.VocabSize}");
        var tensors = Tensors(model);
        var types = PlanTypes(c, tensors, export);
        var meta = Metadata(c, export);

        long dataBytes = tensors.Select((t, i) => Align(Bytes(t, types[i].Type))).Sum();
        AtomicFile.Write(path, dataBytes, fs =>
        {
            using var bw = new BinaryWriter(fs, Encoding.UTF8, leaveOpen: true);
            bw.Write(GgufFile.Magic); bw.Write(GgufFile.Version);
            bw.Write((ulong)tensors.Count); bw.Write((ulong)meta.Count);
            foreach (var (key, type, value) in meta) { WriteString(bw, key); bw.Write((uint)type); WriteValue(bw, type, value); }
            long offset = 0;
            for (int i = 0; i < tensors.Count; i++)
            {
                WriteString(bw, tensors[i].Name);
                bw.Write((uint)tensors[i].Dims.Length);
                foreach (long d in tensors[i].Dims) bw.Write((ulong)d);
                bw.Write((uint)types[i].Type);
                bw.Write((ulong)offset);
                offset = Align(offset + Bytes(tensors[i], types[i].Type));
            }
            Pad(bw);
            bw.Flush();
            // GPTQ's factor of each H, computed once per file: q/k/v share one H, gate/up another.
            var factors = new Dictionary<Tensor, Tensor?>(ReferenceEqualityComparer.Instance);
            try
            {
                for (int i = 0; i < tensors.Count; i++)
                {
                    WriteTensor(fs, tensors[i], types[i].Type, export, factors);
                    Pad(bw);
                    bw.Flush();
                }
            }
            finally { foreach (var u in factors.Values) u?.Dispose(); }
        });
        if (model.Weights.IsStreamed) model.Weights.ReleaseResident();
        return new GgufWriteResult(types, new FileInfo(path).Length, c.ParameterCount) { RuntimeDifferences = GgufArchitecture.For(c).RuntimeDifferences(c, export.Context) };
    }

    /// <summary>The file's tensors in llama.cpp's names and layouts, from the model's description: each family's extra
    /// pieces (biases, q/k norms, post-norms, fused projections, RoPE factors) appear where the block has them.</summary>
    static List<Planned> Tensors(LlamaModel model)
    {
        LlamaConfig c = model.Config;
        GgufArchitecture arch = GgufArchitecture.For(c);
        var w = model.Weights;
        var list = new List<Planned>();
        static long[] Dims(Tensor t) => t.shape.Reverse().ToArray();
        float shift = arch.NormShift;
        bool permute = arch.Rope == RopePairing.Norm;
        // Q and K rows go from Hugging Face's rotate-half order to the consecutive pairs of llama.cpp's NORM RoPE.
        Tensor Q(Tensor t) => permute ? HalfToInterleaved(t, c.NumHeads) : t.alias();
        Tensor K(Tensor t) => permute ? HalfToInterleaved(t, c.NumKvHeads) : t.alias();
        Tensor Norm(Tensor t) => shift == 0 ? t.alias() : t.to_type(ScalarType.Float32) + shift;

        // A tied embedding is also the output head: its importance is the head's input.
        list.Add(new("token_embd.weight", Dims(w.TokenEmbedding), w.LmHead is null ? new LinearSite(-1, Projection.LmHead) : null, () => w.TokenEmbedding.alias()));
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
            void Matrix(string n, Projection proj, long rows, long cols, Func<Tensor> source) => list.Add(new(p + n, new[] { cols, rows }, new LinearSite(layer, proj), source));
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

    static IReadOnlyList<GgufTensorType> PlanTypes(LlamaConfig c, List<Planned> tensors, GgufExport export)
    {
        var shapes = tensors.Select(t => new GgufTensorShape(t.Name, t.Dims[0], t.Dims.Length >= 2)).ToList();
        var plan = GgufMix.Plan(shapes, export.FileType, c.NumLayers, c.NumHeads / c.NumKvHeads, hasImatrix: export.Importance is not null).ToList();
        if (export.TypeOverrides is { } overrides)
            for (int i = 0; i < plan.Count; i++)
                if (overrides.TryGetValue(plan[i].Name, out var o))
                {
                    var f = GgufMix.Fallback(shapes[i], o);
                    plan[i] = f with { Reason = f.Reason != "mix" ? f.Reason : export.OverrideReason ?? "super weight: raised from " + plan[i].Type };
                }
        return plan;
    }

    static List<(string Key, GgufValueType Type, object Value)> Metadata(LlamaConfig c, GgufExport export)
    {
        GgufArchitecture arch = GgufArchitecture.For(c);
        var meta = new List<(string Key, GgufValueType Type, object Value)>
        {
            ("general.architecture", GgufValueType.String, arch.Name),
            ("general.name", GgufValueType.String, string.IsNullOrEmpty(export.Name) ? "model" : export.Name),
            ("general.alignment", GgufValueType.UInt32, (uint)GgufFile.DefaultAlignment),
            ("general.file_type", GgufValueType.UInt32, (uint)export.FileType.LlamaFtype()),
            ("general.quantization_version", GgufValueType.UInt32, 2u),
            ("general.quantized_by", GgufValueType.String, "superquant " + (typeof(GgufWriter).Assembly.GetName().Version?.ToString() ?? "0")),
            ("superquant.method", GgufValueType.String, export.Method.Name()),
        };
        meta.InsertRange(6, arch.Keys(c));
        // Without a vocabulary llama.cpp takes the vocabulary size from {arch}.vocab_size (the LLaMA family writes it anyway).
        if (export.Vocabulary is null && !arch.LlamaKeys) meta.Add(($"{arch.Name}.vocab_size", GgufValueType.UInt32, (uint)c.VocabSize));
        // Only when there is something to say: an empty string breaks LLamaSharp 0.30's metadata reader.
        if (export.SuperWeights.Count > 0)
            meta.Add(("superquant.super_weights", GgufValueType.String, string.Join(";", export.SuperWeights.Select(s => $"{s.Layer},{s.Row},{s.Column}"))));
        // llama.cpp refuses a file without a tokenizer model; "no_vocab" (LLAMA_VOCAB_TYPE_NONE) loads it for use with
        // token ids, its vocabulary size taken from llama.vocab_size.
        meta.AddRange(export.Vocabulary?.Metadata() ?? new[] { ("tokenizer.ggml.model", GgufValueType.String, (object)"no_vocab") });
        foreach (var (key, type, value) in meta)
            if (type == GgufValueType.String && string.IsNullOrEmpty((string)value))
                throw new InvalidOperationException($"GGUF metadata '{key}' would be an empty string");
        return meta;
    }

    /// <summary>Quantizes one tensor a slab of rows at a time, straight from its float32 memory, into the stream.</summary>
    static unsafe void WriteTensor(FileStream fs, Planned t, GgmlType type, GgufExport export, Dictionary<Tensor, Tensor?> factors)
    {
        using var scope = torch.NewDisposeScope();
        Tensor data = t.Source().to_type(ScalarType.Float32).cpu().contiguous();
        long rowLength = t.Dims[0], rows = data.NumberOfElements / rowLength;
        float[]? importance = t.Site is LinearSite s && export.Importance?.TryGetValue(s, out var w) == true ? w : null;
        if (importance is not null && importance.Length != rowLength) throw new ArgumentException($"{t.Name}: importance has {importance.Length} columns, the tensor {rowLength}");
        var format = GgmlFormat.Of(type);
        bool choose = importance is not null && format.BlockSize > 1;
        // Candidates: (values, importance). The first is always the reference quantization of the original values:
        // llama.cpp's quantizer's rows, with the importance weights where the file type is an imatrix type (what
        // llama-quantize --imatrix writes), without them elsewhere.
        bool referenceWeighted = (export.ImatrixRows || export.FileType.NeedsImportance()) && format.UsesImportance;
        var candidates = new List<(Tensor Values, float[]? Importance)> { (data, referenceWeighted ? importance : null) };
        Tensor? h = t.Site is LinearSite hs && export.Covariance?.TryGetValue(hs, out var hv) == true && hv.shape[0] == rowLength ? hv : null;
        Tensor? compensation = null; // GPTQ's factor of H⁻¹, when its candidate is wanted
        if (choose)
        {
            if (format.UsesImportance && !referenceWeighted) candidates.Add((data, importance));
            foreach (var variant in export.Variants)
            {
                Tensor v = variant(t.Site!.Value, data).to_type(ScalarType.Float32).cpu().contiguous();
                if (!ReferenceEquals(v, data)) candidates.Add((v, format.UsesImportance ? importance : null));
            }
            if (export.ErrorCompensation && h is not null && (format.Levels > 0 || format.Lattice is not null))
            {
                if (!factors.TryGetValue(h, out compensation))
                    factors[h] = compensation = ErrorCompensatedQuantizer.TryPrepare(h)?.DetachFromDisposeScope();
                if (compensation is not null) candidates.Add((data, format.UsesImportance ? importance : null));
            }
        }
        long rowBytes = format.RowBytes(rowLength);
        long slab = Math.Max(1, (8L << 20) / Math.Max(rowBytes, 4 * rowLength)); // ~8 MB of output per write
        var buffers = candidates.Select(_ => new byte[Math.Min(rows, slab) * rowBytes]).ToArray();
        ReadOnlySpan<float> original = MemoryMarshal.Cast<byte, float>(data.bytes);
        var errors = new double[candidates.Count];
        var decoded = new float[rowLength];
        for (long r = 0; r < rows; r += slab)
        {
            long n = Math.Min(slab, rows - r);
            int valuesFrom = (int)(r * rowLength), valuesCount = (int)(n * rowLength);
            for (int c = 0; c < candidates.Count; c++)
            {
                var values = MemoryMarshal.Cast<byte, float>(candidates[c].Values.bytes).Slice(valuesFrom, valuesCount);
                if (compensation is not null && c == candidates.Count - 1) // the GPTQ candidate is always the last
                    ErrorCompensatedQuantizer.Quantize(format, values, rowLength, compensation, candidates[c].Importance, buffers[c].AsSpan(0, (int)(n * rowBytes)));
                else
                    GgmlQuants.Quantize(type, values, rowLength, buffers[c].AsSpan(0, (int)(n * rowBytes)), candidates[c].Importance);
            }
            if (candidates.Count > 1 && h is not null)
                ChooseByOutputError(format, candidates.Count, buffers, original.Slice(valuesFrom, valuesCount), n, rowLength, rowBytes, h);
            else if (candidates.Count > 1)
                for (long i = 0; i < n; i++)
                {
                    var row = original.Slice((int)((r + i) * rowLength), (int)rowLength);
                    int best = 0;
                    for (int c = 0; c < candidates.Count; c++)
                    {
                        format.DequantizeRow(buffers[c].AsSpan((int)(i * rowBytes), (int)rowBytes), decoded);
                        double e = 0;
                        for (int j = 0; j < rowLength; j++) { double d = decoded[j] - row[j]; e += importance![j] * d * d; }
                        errors[c] = e;
                        if (e < errors[best]) best = c;
                    }
                    if (best != 0) buffers[best].AsSpan((int)(i * rowBytes), (int)rowBytes).CopyTo(buffers[0].AsSpan((int)(i * rowBytes), (int)rowBytes));
                }
            fs.Write(buffers[0].AsSpan(0, (int)(n * rowBytes)));
        }
    }

    /// <summary>Per row, the candidate with the lowest dw H dw^T (the squared layer-output error on the calibration
    /// inputs) is copied into the first buffer.</summary>
    static void ChooseByOutputError(GgmlFormat format, int count, byte[][] buffers, ReadOnlySpan<float> original, long n, long rowLength, long rowBytes, Tensor h)
    {
        using var scope = torch.NewDisposeScope();
        h = h.cpu(); // host: the rows being chosen are host bytes
        Tensor w = torch.tensor(original.ToArray(), new long[] { n, rowLength });
        var decoded = new float[n * rowLength];
        Tensor? best = null, bestError = null;
        for (int c = 0; c < count; c++)
        {
            format.DequantizeRow(buffers[c].AsSpan(0, (int)(n * rowBytes)), decoded);
            Tensor dw = torch.tensor(decoded, new long[] { n, rowLength }) - w;
            Tensor e = (dw.matmul(h) * dw).sum(new long[] { 1 });
            if (bestError is null) { bestError = e; best = torch.zeros(n, ScalarType.Int64); continue; }
            Tensor better = e < bestError;
            best = torch.where(better, torch.full(n, c, ScalarType.Int64), best!);
            bestError = torch.minimum(e, bestError);
        }
        long[] choice = best!.data<long>().ToArray();
        for (long i = 0; i < n; i++)
            if (choice[i] != 0)
                buffers[choice[i]].AsSpan((int)(i * rowBytes), (int)rowBytes).CopyTo(buffers[0].AsSpan((int)(i * rowBytes), (int)rowBytes));
    }

    static long Bytes(Planned t, GgmlType type) => GgmlQuants.RowBytes(type, t.Dims[0]) * (t.Dims.Aggregate(1L, (a, b) => a * b) / t.Dims[0]);
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

    /// <summary>Hugging Face's permute(): interleaved pairs per head back to rotate-half order (for reading GGUF).</summary>
    public static Tensor InterleavedToHalf(Tensor w, int heads)
    {
        long rows = w.shape[0], cols = w.shape[1];
        return w.reshape(heads, rows / heads / 2, 2, cols).transpose(1, 2).reshape(rows, cols).contiguous();
    }
}
