using System.Runtime.InteropServices;
using SuperQuant.Core.Llama;
using SuperQuant.Manifest;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Models.Gguf;

/// <summary>How a tensor's values become ggml rows: llama.cpp's reference quantization, or (with the export's
/// statistics) per row the best of several candidates (importance-weighted, clipped variants, GPTQ's
/// error-compensated rows, <see cref="Gptq"/>) by the importance-weighted or the layer-output error. Rows are
/// independent in every ggml format, so the choice is made row by row, a slab of rows at a time.</summary>
public static class GgufRowQuantizer
{
    /// <summary>Quantizes one tensor a slab of rows at a time, straight from its float32 memory, into the stream.</summary>
    /// <summary>GPTQ's factor of the most recent H (by reference), or null when H has none.</summary>
    public sealed class FactorCache : IDisposable
    {
        Tensor? _h, _u;
        double _shrinkage;

        public Tensor? For(Tensor h, double shrinkage)
        {
            if (ReferenceEquals(h, _h) && shrinkage == _shrinkage) return _u;
            _u?.Dispose();
            (_h, _shrinkage) = (h, shrinkage);
            return _u = Gptq.TryPrepare(h, shrinkage: shrinkage)?.DetachFromDisposeScope();
        }

        public void Dispose() { _u?.Dispose(); _u = null; _h = null; }
    }

    public static unsafe void Write(Stream fs, GgufTensor t, GgmlType type, GgufExport export, FactorCache factors)
    {
        using var scope = torch.NewDisposeScope();
        Tensor data = t.Values();
        long rowLength = t.Dims[0], rows = data.NumberOfElements / rowLength;
        float[]? importance = t.Site is LinearSite s && export.Importance?.TryGetValue(s, out var w) == true ? w : null;
        if (importance is not null && importance.Length != rowLength) throw new ArgumentException($"{t.Name}: importance has {importance.Length} " +
            $"columns, the tensor {rowLength}");
        var format = GgmlFormat.Of(type);
        bool choose = importance is not null && format.BlockSize > 1;
        // Candidates: (values, importance). The first is always the reference quantization of the original values:
        // llama.cpp's quantizer's rows, with the importance weights where the file type is an imatrix type (what
        // llama-quantize --imatrix writes), without them elsewhere.
        bool referenceWeighted = (export.ImatrixRows || export.FileType.NeedsImportance()) && format.UsesImportance;
        var candidates = new List<(Tensor Values, float[]? Importance)> { (data, referenceWeighted ? importance : null) };
        Tensor? h = t.Site is LinearSite hs && export.Covariance?.TryGetValue(hs, out var hv) == true && hv.shape[0] == rowLength ? hv : null;
        Tensor? compensation = null; // GPTQ's factor of H⁻¹, when its candidate is wanted
        Tensor? inputRows = h is not null && t.Site is LinearSite rs ? export.InputRows?.Invoke(rs) : null;
        double shrinkage = h is not null && t.Site is LinearSite ts && export.CalibrationTokens is { } tokens ? Gptq.Shrinkage(rowLength, tokens(ts)) : 0;
        if (choose)
        {
            if (format.UsesImportance && !referenceWeighted && export.ImportanceCandidate) candidates.Add((data, importance));
            foreach (var variant in export.Variants)
            {
                Tensor v = variant(t.Site!.Value, data).to_type(ScalarType.Float32).cpu().contiguous();
                if (!ReferenceEquals(v, data)) candidates.Add((v, format.UsesImportance ? importance : null));
            }
            if (export.ErrorCompensation && h is not null && shrinkage >= Gptq.NearDiagonal && format.UsesImportance)
            {
                // What GPTQ tends to as H' turns diagonal, without its factor and sweep (an imatrix type's reference
                // rows already are these).
                if (!referenceWeighted) candidates.Add((data, importance));
            }
            else if (export.ErrorCompensation && h is not null && (format.Levels > 0 || format.Lattice is not null))
            {
                compensation = factors.For(h, shrinkage);
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
                    Gptq.Quantize(format, values, rowLength, compensation, candidates[c].Importance, buffers[c].AsSpan(0, (int)(n * rowBytes)));
                else
                    GgmlQuants.Quantize(type, values, rowLength, buffers[c].AsSpan(0, (int)(n * rowBytes)), candidates[c].Importance);
            }
            if (candidates.Count > 1 && h is not null)
                ChooseByOutputError(format, candidates.Count, buffers, original.Slice(valuesFrom, valuesCount), n, rowLength, rowBytes, h, inputRows,
                    shrinkage);
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

    /// <summary>Per row, the candidate with the lowest dw H' dw^T (the squared layer-output error on the calibration
    /// inputs, H' = (1 − α) H + α diag(H) shrunk by <paramref name="shrinkage"/> α) is copied into the first buffer; with
    /// <paramref name="rows"/> (X/√n, fewer tokens than columns) dw H dw^T as ‖dw Xᵀ‖²/n.</summary>
    static void ChooseByOutputError(GgmlFormat format, int count, byte[][] buffers, ReadOnlySpan<float> original, long n, long rowLength,
        long rowBytes, Tensor h, Tensor? rows, double shrinkage)
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
            Tensor e = rows is null ? (dw.matmul(h) * dw).sum(new long[] { 1 }) : dw.matmul(rows.t()).pow(2).sum(new long[] { 1 });
            if (shrinkage > 0) e = (1 - shrinkage) * e + shrinkage * (dw.pow(2) * h.diagonal()).sum(new long[] { 1 });
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
}
