using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Models.Gguf;

/// <summary>
/// GPTQ (Frantar et al., 2022) on ggml's block formats: each row's codes are chosen column by column, and each
/// column's rounding error is pushed onto the columns not yet quantized through the inverse of the calibration
/// second moment H = XᵀX/n, so the layer's output XWᵀ, not each weight alone, stays close. ggml blocks run along a
/// row, so a block's scales are chosen (by the format's own importance-weighted search, on the row's values as updated
/// so far) when the sweep reaches its first column, and the codes are then picked on that fixed grid: the result is a
/// valid block of the same type and size, read by llama.cpp like any other. Hand-written: no .NET library does GPTQ,
/// and none knows ggml's grids (<see cref="GgmlFormat.ReadGrid"/>).
/// </summary>
public static class Gptq
{
    /// <summary>GPTQ's damping: 1 % of the mean diagonal keeps the inverse stable when calibration tokens are few
    /// (H of a 1,536-wide input from 1,024 tokens is singular).</summary>
    public const double DefaultDamping = 0.01;

    /// <summary>The upper Cholesky factor U of (H + λI)⁻¹ (so (H + λI)⁻¹ = UᵀU), float32 on the host. Columns no
    /// calibration token reached (H_jj = 0) get H_jj = 1: their weights are rounded plainly and pass no error on.</summary>
    public static Tensor Prepare(Tensor h, double damping = DefaultDamping) =>
        TryPrepare(h, damping) ?? throw new ArgumentException("the second moment is not finite or not positive semi-definite", nameof(h));

    /// <summary><see cref="Prepare"/>, or null when H has non-finite entries or its damped form has no Cholesky factor
    /// (numerically not positive definite): then there is no error-compensated candidate for that matrix.
    /// In float32 through Cholesky factors, as GPTQ's own code does (cholesky, cholesky_inverse, cholesky): measured
    /// 2-3x faster than the float64 general inverse it replaced at widths 2,048-5,632 (a 1B model's inputs), the factors
    /// equal to 3.4e-5 of their largest entry; the damping bounds the condition number to about 100 times the width.</summary>
    public static Tensor? TryPrepare(Tensor h, double damping = DefaultDamping)
    {
        using var scope = torch.NewDisposeScope();
        Tensor H = h.to_type(ScalarType.Float32).cpu().clone(); // host: the rows are host memory
        if (!H.isfinite().all().item<bool>()) return null;
        Tensor diag = H.diagonal();
        Tensor dead = diag <= 0;
        H.add_(torch.diag(dead.to_type(ScalarType.Float32)));
        H.add_(torch.eye(H.shape[0], dtype: ScalarType.Float32, device: H.device) * (damping * diag.mean().item<float>()));
        Tensor u;
        try
        {
            Tensor inverse = torch.linalg.cholesky(H).cholesky_inverse();
            u = torch.linalg.cholesky(inverse).t().contiguous();
        }
        // libtorch: not positive definite
        catch (Exception e) when (e is ExternalException or ArgumentException or InvalidOperationException) { return null; }
        return u.isfinite().all().item<bool>() && (u.diagonal() > 0).all().item<bool>() ? u.MoveToOuterDisposeScope() : null;
    }

    /// <summary>Quantizes rows of <paramref name="rowLength"/> into <paramref name="output"/> (format bytes).
    /// <paramref name="u"/> comes from <see cref="Prepare"/>; <paramref name="importance"/> (or empty) steers each
    /// block's scale search. The fast path: each row swept on its own (rows are independent given U), with the same
    /// float32 operations in the same order as <see cref="QuantizeReference"/>, so the bytes are the same.</summary>
    public static void Quantize(GgmlFormat format, ReadOnlySpan<float> rows, long rowLength, Tensor u, ReadOnlySpan<float> importance, Span<byte> output)
    {
        if (format.Lattice is not null) { QuantizeLattice(format, rows, rowLength, u, importance, output); return; }
        if (format.Levels == 0) throw new ArgumentException($"{format.Type} has no code grid");
        QuantizeByRow(format, rows, rowLength, u, importance, output);
    }

    /// <summary>The readable form of GPTQ on a scalar grid, kept as the specification the fast path is tested against:
    /// column by column over all rows at once, with tensor operations.</summary>
    public static void QuantizeReference(GgmlFormat format, ReadOnlySpan<float> rows, long rowLength, Tensor u, ReadOnlySpan<float> importance,
        Span<byte> output)
    {
        if (format.Levels == 0 || format.Lattice is not null) throw new ArgumentException($"{format.Type} has no scalar code grid");
        int C = checked((int)rowLength), n = rows.Length / C, B = format.BlockSize, blockBytes = format.BlockBytes;
        long rowBytes = format.RowBytes(C);
        if (C % B != 0 || rows.Length != (long)n * C || output.Length != n * rowBytes || u.shape[0] != C) throw new ArgumentException("shapes do not match");
        float shift = format.CodeShift, top = format.Levels - 1, bottom = format.LowestCode;
        // A non-linear grid (IQ4): the code whose value is nearest, on the value table.
        using Tensor? table = format.EvenGrid ? null : torch.tensor(Enumerable.Range(0, format.Levels).Select(format.CodeValue).ToArray()); // host
        int chunk = Math.Max(B, 128 / B * B);
        using var scope = torch.NewDisposeScope();
        Tensor wt = torch.tensor(rows.ToArray(), new long[] { n, C }).t().contiguous(); // [C, n]: a column is contiguous
        var blockValues = new float[n * B];
        var block = new byte[n * blockBytes];
        var scale = new float[n * B];
        var min = new float[n * B];
        var codes = new byte[n * B];
        float[] imp = importance.IsEmpty ? Array.Empty<float>() : importance.ToArray();
        for (int cs = 0; cs < C; cs += chunk)
        {
            int ce = Math.Min(C, cs + chunk);
            Tensor errors = torch.zeros(ce - cs, n); // host
            for (int b0 = cs; b0 < ce; b0 += B)
            {
                using var blockScope = torch.NewDisposeScope();
                // The block's scales, from the values as updated by the columns before it.
                wt.narrow(0, b0, B).t().contiguous().data<float>().CopyTo(blockValues);
                int from = b0;
                Parallel.For(0, n, r =>
                {
                    var bytes = block.AsSpan(r * blockBytes, blockBytes);
                    format.QuantizeRow(blockValues.AsSpan(r * B, B), bytes, imp.Length == 0 ? ReadOnlySpan<float>.Empty : imp.AsSpan(from, B));
                    format.ReadGrid(bytes, scale.AsSpan(r * B, B), min.AsSpan(r * B, B));
                    format.ReadCodes(bytes, codes.AsSpan(r * B, B));
                });
                Tensor S = torch.tensor(scale, new long[] { n, B }).t().contiguous();
                Tensor M = torch.tensor(min, new long[] { n, B }).t().contiguous();
                Tensor first = torch.tensor(codes, new long[] { n, B }).t().to_type(ScalarType.Float32).contiguous();
                Tensor chosen = torch.empty(B, n); // host
                for (int j = 0; j < B; j++)
                {
                    using var columnScope = torch.NewDisposeScope();
                    int c = b0 + j;
                    Tensor w = wt[c], s = S[j], m = M[j];
                    Tensor q, wq;
                    if (table is null)
                    {
                        q = ((w + m) / s).round_().sub_(shift).clamp_(bottom, top);
                        q = torch.where(s == 0, first[j], q); // a zero step: every code is the same value; keep the search's
                        wq = s * (q + shift) - m;
                    }
                    else
                    {
                        Tensor target = (w + m) / s;
                        q = (target.unsqueeze(1) - table.unsqueeze(0)).abs_().argmin(1).to_type(ScalarType.Float32);
                        q = torch.where(s == 0, first[j], q);
                        wq = s * table.index_select(0, q.to_type(ScalarType.Int64)) - m;
                    }
                    Tensor err = (w - wq) / u[c, c];
                    if (c + 1 < ce) wt.narrow(0, c + 1, ce - c - 1).sub_(torch.outer(u[c].narrow(0, c + 1, ce - c - 1), err));
                    errors[c - cs].copy_(err);
                    chosen[j].copy_(q);
                }
                chosen.t().contiguous().to_type(ScalarType.Byte).data<byte>().CopyTo(codes);
                for (int r = 0; r < n; r++)
                {
                    var bytes = block.AsSpan(r * blockBytes, blockBytes);
                    format.WriteCodes(bytes, codes.AsSpan(r * B, B));
                    bytes.CopyTo(output.Slice((int)(r * rowBytes + b0 / B * blockBytes), blockBytes));
                }
            }
            if (ce < C)
                wt.narrow(0, ce, C - ce).sub_(u.narrow(0, cs, ce - cs).narrow(1, ce, C - ce).t().matmul(errors));
            errors.Dispose();
        }
    }

    /// <summary>The fast path of <see cref="QuantizeReference"/>. Rows are independent given U, so each row is swept by
    /// one thread through a chunk of columns: its blocks' scale searches, codes and error pushes all in contiguous
    /// memory, with the reference's float32 operations in the reference's order (no fused multiply-add). The chunk's
    /// errors then reach the later columns as one matrix product taken in the reference's operand layout
    /// (Uᵀ · errors, [later columns, rows]), so the bytes equal the reference's.</summary>
    static unsafe void QuantizeByRow(GgmlFormat format, ReadOnlySpan<float> rows, long rowLength, Tensor u, ReadOnlySpan<float> importance,
        Span<byte> output)
    {
        int C = checked((int)rowLength), n = rows.Length / C, B = format.BlockSize, blockBytes = format.BlockBytes;
        long rowBytes = format.RowBytes(C);
        if (C % B != 0 || rows.Length != (long)n * C || output.Length != n * rowBytes || u.shape[0] != C) throw new ArgumentException("shapes do not match");
        float shift = format.CodeShift, top = format.Levels - 1, bottom = format.LowestCode;
        // A non-linear grid (IQ4): the code whose value is nearest, on the value table.
        float[]? table = format.EvenGrid ? null : Enumerable.Range(0, format.Levels).Select(format.CodeValue).ToArray();
        int chunk = Math.Max(B, 128 / B * B);
        float[] imp = importance.IsEmpty ? Array.Empty<float>() : importance.ToArray();
        using var scope = torch.NewDisposeScope();
        Tensor w = torch.tensor(rows.ToArray(), new long[] { n, C }); // host: [rows, C], a row is contiguous
        Tensor uh = u.to_type(ScalarType.Float32).cpu().contiguous();
        Tensor errors = torch.empty(n, chunk); // host
        var written = new byte[n * rowBytes];
        nint wAt, uAt, eAt;
        fixed (byte* wp = w.bytes, up = uh.bytes, ep = errors.bytes) { wAt = (nint)wp; uAt = (nint)up; eAt = (nint)ep; } // native memory: no pinning needed
        for (int cs = 0; cs < C; cs += chunk)
        {
            int ce = Math.Min(C, cs + chunk), from = cs;
            Parallel.For(0, n, r =>
            {
                fixed (byte* bp = written)
                    SweepRow(format, table, shift, bottom, top, imp, (float*)wAt + (long)r * C, (float*)uAt, C, (float*)eAt + (long)r * chunk,
                        new Span<byte>(bp + r * rowBytes, (int)rowBytes), from, ce);
            });
            if (ce < C)
            {
                using var update = torch.NewDisposeScope();
                Tensor e = errors.narrow(1, 0, ce - cs).t().contiguous(); // [chunk, rows], as the reference holds them
                w.narrow(1, ce, C - ce).sub_(uh.narrow(0, cs, ce - cs).narrow(1, ce, C - ce).t().matmul(e).t());
            }
        }
        written.CopyTo(output);
    }

    /// <summary>One row of <see cref="QuantizeByRow"/> through the columns [cs, ce): per block, the scales from the
    /// format's own search on the values as updated so far, then per column the code on that grid, its error divided by
    /// U's diagonal, pushed onto the chunk's later columns.</summary>
    static unsafe void SweepRow(GgmlFormat format, float[]? table, float shift, float bottom, float top, float[] imp, float* w, float* u, int C,
        float* errors, Span<byte> row, int cs, int ce)
    {
        int B = format.BlockSize, blockBytes = format.BlockBytes, lanes = System.Numerics.Vector<float>.Count;
        Span<float> scale = stackalloc float[B], min = stackalloc float[B];
        Span<byte> first = stackalloc byte[B], codes = stackalloc byte[B];
        for (int b0 = cs; b0 < ce; b0 += B)
        {
            var block = row.Slice(b0 / B * blockBytes, blockBytes);
            format.QuantizeRow(new ReadOnlySpan<float>(w + b0, B), block, imp.Length == 0 ? ReadOnlySpan<float>.Empty : imp.AsSpan(b0, B));
            format.ReadGrid(block, scale, min);
            format.ReadCodes(block, first);
            for (int j = 0; j < B; j++)
            {
                int c = b0 + j;
                float s = scale[j], m = min[j], x = w[c], q, wq;
                if (table is null)
                {
                    q = s == 0 ? first[j] : Math.Clamp(MathF.Round((x + m) / s) - shift, bottom, top); // a zero step: keep the search's code
                    wq = s * (q + shift) - m;
                }
                else
                {
                    float target = (x + m) / s;
                    int best = 0;
                    float nearest = MathF.Abs(target - table[0]);
                    for (int k = 1; k < table.Length; k++)
                    {
                        float d = MathF.Abs(target - table[k]);
                        if (d < nearest) { nearest = d; best = k; }
                    }
                    q = s == 0 ? first[j] : best;
                    wq = s * table[(int)q] - m;
                }
                float err = (x - wq) / u[(long)c * C + c];
                float* uc = u + (long)c * C;
                int i = c + 1;
                var ev = new System.Numerics.Vector<float>(err);
                for (; i + lanes <= ce; i += lanes)
                    System.Numerics.Vector.Store(System.Numerics.Vector.Load(w + i) - System.Numerics.Vector.Load(uc + i) * ev, w + i);
                for (; i < ce; i++) w[i] -= uc[i] * err;
                errors[c - cs] = err;
                codes[j] = (byte)q;
            }
            format.WriteCodes(block, codes);
        }
    }

    /// <summary>GPTQ on the lattice formats (IQ3_XXS, IQ3_S, IQ2_S), whose codes are grid points of 4 or 8 weights with
    /// sign bits, not one code per weight: a superblock's scales come from the format's own search on the values as
    /// updated so far; then octet by octet (8 columns), each row's octet takes the signs of its updated values (IQ3_XXS:
    /// even parity, flipping the least important weight, as ggml does) and the grid points nearest to their magnitudes
    /// at the octet's scale; then the octet's 8 columns pass their errors on, one column at a time, as in
    /// <see cref="Quantize"/>. Choosing a group and then compensating its columns is GPTQ's usual form for vector codes.</summary>
    static void QuantizeLattice(GgmlFormat format, ReadOnlySpan<float> rows, long rowLength, Tensor u, ReadOnlySpan<float> importance, Span<byte> output)
    {
        var lattice = format.Lattice!;
        int C = checked((int)rowLength), n = rows.Length / C, B = format.BlockSize, blockBytes = format.BlockBytes, dims = lattice.Dims;
        long rowBytes = format.RowBytes(C);
        if (C % B != 0 || rows.Length != (long)n * C || output.Length != n * rowBytes || u.shape[0] != C) throw new ArgumentException("shapes do not match");
        float[] values = format.LatticeValues;
        int maxLevel = format.LatticeMaxLevel, octets = B / 8;
        using var scope = torch.NewDisposeScope();
        Tensor wt = torch.tensor(rows.ToArray(), new long[] { n, C }).t().contiguous(); // host: [C, n], a column is contiguous
        var blockValues = new float[n * B];
        var block = new byte[n * blockBytes];
        var octetScale = new float[n * octets];
        var current = new float[8 * n];
        var chosen = new float[8 * n];
        float[] imp = importance.IsEmpty ? Array.Empty<float>() : importance.ToArray();
        for (int b0 = 0; b0 < C; b0 += B)
        {
            using var blockScope = torch.NewDisposeScope();
            Tensor errors = torch.zeros(B, n); // host
            wt.narrow(0, b0, B).t().contiguous().data<float>().CopyTo(blockValues); // host
            int from = b0;
            Parallel.For(0, n, r =>
            {
                var bytes = block.AsSpan(r * blockBytes, blockBytes);
                format.QuantizeRow(blockValues.AsSpan(r * B, B), bytes, imp.Length == 0 ? ReadOnlySpan<float>.Empty : imp.AsSpan(from, B));
                format.ReadOctetScales(bytes, octetScale.AsSpan(r * octets, octets));
            });
            for (int o = 0; o < octets; o++)
            {
                int c0 = b0 + 8 * o;
                wt.narrow(0, c0, 8).contiguous().data<float>().CopyTo(current); // host: [8, n]
                Parallel.For(0, n, r =>
                {
                    Span<float> a = stackalloc float[8], w = stackalloc float[8];
                    Span<int> indices = stackalloc int[2];
                    float s = octetScale[r * octets + o];
                    int signs = 0;
                    for (int i = 0; i < 8; i++)
                    {
                        float v = current[i * n + r];
                        w[i] = imp.Length == 0 ? 1f : imp[c0 + i];
                        a[i] = Math.Abs(v);
                        if (v < 0) signs |= 1 << i;
                    }
                    if (s == 0)
                    {
                        for (int i = 0; i < 8; i++) chosen[i * n + r] = 0;
                        return; // a zero scale: every point is zero; the search's bytes stay
                    }
                    if (format.EvenSignParity && (System.Numerics.BitOperations.PopCount((uint)signs) & 1) != 0)
                    {
                        int least = 0;
                        for (int i = 1; i < 8; i++) if (w[i] * a[i] * a[i] < w[least] * a[least] * a[least]) least = i;
                        a[least] = -a[least];
                        signs ^= 1 << least;
                    }
                    for (int k = 0; k < 8 / dims; k++)
                    {
                        indices[k] = lattice.Nearest(a.Slice(k * dims, dims), w.Slice(k * dims, dims), s, values, maxLevel);
                        for (int i = 0; i < dims; i++)
                            chosen[(k * dims + i) * n + r] = s * values[lattice.Levels[indices[k]][i]] * ((signs & (1 << (k * dims + i))) != 0 ? -1f : 1f);
                    }
                    format.WriteOctet(block.AsSpan(r * blockBytes, blockBytes), o, indices[..(8 / dims)], signs);
                });
                Tensor q = torch.tensor(chosen, new long[] { 8, n }); // host
                for (int i = 0; i < 8; i++)
                {
                    int c = c0 + i;
                    Tensor err = (wt[c] - q[i]) / u[c, c];
                    int end = b0 + B;
                    if (c + 1 < end) wt.narrow(0, c + 1, end - c - 1).sub_(torch.outer(u[c].narrow(0, c + 1, end - c - 1), err));
                    errors[c - b0].copy_(err);
                }
            }
            for (int r = 0; r < n; r++)
                block.AsSpan(r * blockBytes, blockBytes).CopyTo(output.Slice((int)(r * rowBytes + b0 / B * blockBytes), blockBytes));
            if (b0 + B < C)
                wt.narrow(0, b0 + B, C - b0 - B).sub_(u.narrow(0, b0, B).narrow(1, b0 + B, C - b0 - B).t().matmul(errors));
        }
    }
}
