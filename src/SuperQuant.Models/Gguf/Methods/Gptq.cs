using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Models.Gguf;

/// <summary>
/// GPTQ (Frantar et al., 2022) on ggml's block formats: each row's codes are chosen column by column, and each
/// column's rounding error is pushed onto the columns not yet quantized through the calibration second moment
/// H = XᵀX/n (its LDLᵀ factor, <see cref="Prepare"/>), so the layer's output XWᵀ, not each weight alone, stays close. ggml blocks run along a
/// row, so a block's scales are chosen (by the format's own importance-weighted search, on the row's values as updated
/// so far) when the sweep reaches its first column, and the codes are then picked on that fixed grid: the result is a
/// valid block of the same type and size, read by llama.cpp like any other. Hand-written: no .NET library does GPTQ,
/// and none knows ggml's grids (<see cref="GgmlFormat.ReadGrid"/>).
/// </summary>
public static class Gptq
{
    /// <summary>GPTQ's damping: 1 % of the mean diagonal keeps the factor stable when calibration tokens are few
    /// (H of a 1,536-wide input from 1,024 tokens is singular).</summary>
    public const double DefaultDamping = 0.01;

    /// <summary>GPTQ's feedback matrix F of H + λI, float32 on the host: F is strictly upper triangular with
    /// H + λI = (I + F) D (I + F)ᵀ (D diagonal), and GPTQ quantizes column k at w_k + Σ_{j&lt;k} (w_j − ŵ_j) F_jk, the
    /// errors of the columns before it, each taken against its original value. That is GPTQ's own update, which pushes
    /// each column's error through U = chol((H + λI)⁻¹), written without the inverse: Chee et al. 2023 (QuIP), Thm. 6,
    /// OPTQ = LDLQ. Columns no calibration token reached (H_jj = 0) get H_jj = 1: their weights are rounded plainly and
    /// pass no error on.</summary>
    public static Tensor Prepare(Tensor h, double damping = DefaultDamping, double shrinkage = 0) =>
        TryPrepare(h, damping, shrinkage) ?? throw new ArgumentException("the second moment is not finite or not positive semi-definite", nameof(h));

    /// <summary>How far a second moment estimated from <paramref name="tokens"/> calibration tokens is pulled toward its
    /// diagonal (H' = (1 − α) H + α diag(H)) before GPTQ and the row choice use it: α = 1 − tokens / (2 · columns),
    /// clamped to [0, 1], so none from two tokens per column up. With fewer tokens than columns H is singular and GPTQ
    /// pushes rounding errors into the directions the sample never saw, which held-out tokens do see. Measured on the
    /// demo model (widths 512 and 1,536), one-build KLD at q4_k_m: 512 tokens, 0.001632 with no shrinkage, 0.001066,
    /// 0.000915, 0.001104, 0.001156 at α fixed to 0.25, 0.5, 0.75, 1 (1: the diagonal alone, llama.cpp's imatrix
    /// objective), 0.001063 with this rule (llama.cpp with the same imatrix 0.001111); 8,192 tokens, 0.000635 with none
    /// (this rule's) and 0.000911 at α 0.06-0.16: even light shrinkage costs once tokens suffice (docs/gguf.md).
    /// Ledoit–Wolf's estimate (Frobenius loss) gave α 0.001-0.5: it does not weigh the small directions GPTQ overfits.</summary>
    public static double Shrinkage(long columns, long tokens) => tokens <= 0 ? 0 : Math.Clamp(1 - tokens / (2.0 * columns), 0, 1);

    /// <summary>At this <see cref="Shrinkage"/> or more (fewer than a tenth of a token per column), the one build takes
    /// the importance-weighted rows instead of GPTQ's: with H' diagonal GPTQ's feedback F is zero and its rows are the
    /// importance-weighted rows, and at 0.95 every coupling is under 5 % of its sample value. Measured on the demo model
    /// with 128 calibration tokens (only the 1,536-wide ffn_down, α 0.96, affected): one-build KLD q4_k_m 0.001017 ->
    /// 0.001015, q2_k 0.006174 -> 0.006291 (±0.00009; llama.cpp with an imatrix 0.001012 and 0.006600); at 1.1B with
    /// 512 tokens it skips ffn_down's factor and sweep: the write 161.5 s -> 147.5 s (docs/performance.md, step 7).</summary>
    public const double NearDiagonal = 0.95;

    /// <summary><see cref="Prepare"/> (of H shrunk toward its diagonal by <paramref name="shrinkage"/>, <see cref="Shrinkage"/>),
    /// or null when H has non-finite entries or its damped form has no Cholesky factor
    /// (numerically not positive definite): then there is no error-compensated candidate for that matrix.
    /// One float32 Cholesky factorisation of H with its index order reversed (J H J = L Lᵀ, so H = V Vᵀ with V = J L J
    /// upper, and F = V diag(V)⁻¹ − I): measured 3.5x faster at width 5,632 than the cholesky, cholesky_inverse,
    /// cholesky of GPTQ's code, and it never forms the inverse. The damping bounds the condition number to about 100
    /// times the width.</summary>
    public static unsafe Tensor? TryPrepare(Tensor h, double damping = DefaultDamping, double shrinkage = 0)
    {
        using var scope = torch.NewDisposeScope();
        Tensor H = h.to_type(ScalarType.Float32).cpu().contiguous().clone(); // host: the rows are host memory
        if (H.dim() != 2 || H.shape[0] != H.shape[1]) throw new ArgumentException("H is not square", nameof(h));
        if (!H.isfinite().all().item<bool>()) return null;
        Tensor diag = H.diagonal();
        if (shrinkage > 0) // (1 − α) H + α diag(H): the off-diagonal entries scaled, the diagonal kept
        {
            Tensor kept = diag.clone();
            H.mul_(1 - shrinkage);
            diag.copy_(kept);
        }
        diag.add_((diag <= 0).to_type(ScalarType.Float32));
        diag.add_(damping * diag.mean().item<float>());
        // J H J of a square row-major matrix is its elements in reverse order; so is J L J of the factor.
        MemoryMarshal.Cast<byte, float>(H.bytes).Reverse(); // host
        Tensor v;
        try { v = torch.linalg.cholesky(H); }
        // libtorch: not positive definite
        catch (Exception e) when (e is ExternalException or ArgumentException or InvalidOperationException) { return null; }
        v = v.contiguous();
        MemoryMarshal.Cast<byte, float>(v.bytes).Reverse(); // host: now upper, H = V Vᵀ
        Tensor pivots = v.diagonal().clone();
        if (!(pivots > 0).all().item<bool>()) return null;
        Tensor f = v.div_(pivots.unsqueeze(0));
        f.diagonal().zero_();
        return f.isfinite().all().item<bool>() ? f.MoveToOuterDisposeScope() : null;
    }

    /// <summary>Quantizes rows of <paramref name="rowLength"/> into <paramref name="output"/> (format bytes).
    /// <paramref name="f"/> comes from <see cref="Prepare"/>; <paramref name="importance"/> (or empty) steers each
    /// block's scale search. The fast path: each row swept on its own (rows are independent given F), with the same
    /// float32 operations in the same order as <see cref="QuantizeReference"/>, so the bytes are the same.</summary>
    public static void Quantize(GgmlFormat format, ReadOnlySpan<float> rows, long rowLength, Tensor f, ReadOnlySpan<float> importance, Span<byte> output)
    {
        if (format.Lattice is not null) { QuantizeLattice(format, rows, rowLength, f, importance, output); return; }
        if (format.Levels == 0) throw new ArgumentException($"{format.Type} has no code grid");
        QuantizeByRow(format, rows, rowLength, f, importance, output);
    }

    /// <summary>Per diagonal block of <paramref name="blockSize"/> columns, (I + F_bb)⁻¹ [blocks, B, B] (host): what turns
    /// the sweep's running values at a block's first column into GPTQ's (<see cref="BlockStartValues"/>).</summary>
    static Tensor BlockInverses(Tensor key, Tensor f, int blockSize)
    {
        // One tensor is quantized a slab of rows at a time, and q/k/v and gate/up share a factor: the inverses of the
        // last factor (never changed in place) are kept, not recomputed per slab.
        lock (s_inverses)
        {
            if (s_inverses.Factor is { } last && ReferenceEquals(last, key) && !key.IsInvalid && s_inverses.BlockSize == blockSize)
                return s_inverses.Inverses!.alias();
            s_inverses.Inverses?.Dispose();
            s_inverses.Inverses = ComputeBlockInverses(f, blockSize).DetachFromDisposeScope();
            (s_inverses.Factor, s_inverses.BlockSize) = (key, blockSize);
            return s_inverses.Inverses.alias();
        }
    }

    sealed class InverseCache { public Tensor? Factor, Inverses; public int BlockSize; }
    static readonly InverseCache s_inverses = new();

    static Tensor ComputeBlockInverses(Tensor f, int blockSize)
    {
        using var scope = torch.NewDisposeScope();
        int C = (int)f.shape[0], blocks = C / blockSize;
        Tensor eye = torch.eye(blockSize); // host
        Tensor diagonal = torch.stack(Enumerable.Range(0, blocks).Select(b => f.narrow(0, b * blockSize, blockSize).narrow(1, b * blockSize, blockSize)));
        return torch.linalg.solve_triangular(diagonal + eye, eye.expand(blocks, blockSize, blockSize), upper: true).contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>GPTQ's values of a block's columns when the sweep reaches its first one, from LDLQ's running values there.
    /// GPTQ's value of a later column is the best continuous completion given the columns quantized so far; LDLQ's adds
    /// only each earlier error's own term, which equals GPTQ's once every earlier column is quantized (so the codes
    /// agree) but not before. The block's scales are chosen on GPTQ's: measured, choosing them on LDLQ's running values
    /// raised the demo model's q4_k_m KLD by 9-13 %. With H + λI = V Vᵀ (V upper, F = V diag(V)⁻¹ − I), GPTQ's block
    /// values are o + s V_bb⁻¹ with s = (current − o) diag(V)_b, which is o + (current − o)(I + F_bb)⁻¹:
    /// result_j = o_j + Σ_{i≤j} (current_i − o_i) M_ij, summed over i in order (the reference and the fast path call
    /// this one function, so their bytes stay equal).</summary>
    static unsafe void BlockStartValues(ReadOnlySpan<float> original, ReadOnlySpan<float> current, float* m, int mStride, Span<float> result)
    {
        int B = result.Length, lanes = System.Numerics.Vector<float>.Count;
        original.CopyTo(result);
        Span<float> d = stackalloc float[4];
        fixed (float* r = result)
            for (int i0 = 0; i0 < B; i0 += 4) // four rows of M at a time: each result element read and written once per four terms
            {
                int count = Math.Min(4, B - i0);
                for (int k = 0; k < count; k++) d[k] = current[i0 + k] - original[i0 + k];
                for (int j = i0; j < i0 + count; j++) // the triangle's corner: row i0 + k starts at column i0 + k
                    for (int k = 0; k <= j - i0; k++) r[j] += m[(long)(i0 + k) * mStride + j] * d[k];
                int from = i0 + count, jv = from;
                if (count == 4)
                {
                    float* m0 = m + (long)i0 * mStride, m1 = m0 + mStride, m2 = m1 + mStride, m3 = m2 + mStride;
                    var d0 = new System.Numerics.Vector<float>(d[0]);
                    var d1 = new System.Numerics.Vector<float>(d[1]);
                    var d2 = new System.Numerics.Vector<float>(d[2]);
                    var d3 = new System.Numerics.Vector<float>(d[3]);
                    for (; jv + lanes <= B; jv += lanes)
                    {
                        var v = System.Numerics.Vector.Load(r + jv) + System.Numerics.Vector.Load(m0 + jv) * d0;
                        v += System.Numerics.Vector.Load(m1 + jv) * d1;
                        v += System.Numerics.Vector.Load(m2 + jv) * d2;
                        System.Numerics.Vector.Store(v + System.Numerics.Vector.Load(m3 + jv) * d3, r + jv);
                    }
                }
                for (int j = jv; j < B; j++)
                    for (int k = 0; k < count; k++) r[j] += m[(long)(i0 + k) * mStride + j] * d[k];
            }
    }

    /// <summary><see cref="BlockStartValues"/> for every row at once, as one matrix product: o + (running − o) M, all
    /// [rows, B] (host). Used for the block at a chunk's start, where no row has pushed anything into the block yet; the
    /// reference and the fast path pass the same operands, so their bytes stay equal.</summary>
    static Tensor BlockStartValues(Tensor running, Tensor original, Tensor m)
    {
        using var scope = torch.NewDisposeScope();
        Tensor o = original.contiguous();
        return (o + (running.contiguous() - o).matmul(m)).contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>The readable form of GPTQ on a scalar grid, kept as the specification the fast path is tested against:
    /// column by column over all rows at once, with tensor operations.</summary>
    public static unsafe void QuantizeReference(GgmlFormat format, ReadOnlySpan<float> rows, long rowLength, Tensor f, ReadOnlySpan<float> importance,
        Span<byte> output)
    {
        if (format.Levels == 0 || format.Lattice is not null) throw new ArgumentException($"{format.Type} has no scalar code grid");
        int C = checked((int)rowLength), n = rows.Length / C, B = format.BlockSize, blockBytes = format.BlockBytes;
        long rowBytes = format.RowBytes(C);
        if (C % B != 0 || rows.Length != (long)n * C || output.Length != n * rowBytes || f.shape[0] != C) throw new ArgumentException("shapes do not match");
        float shift = format.CodeShift, top = format.Levels - 1, bottom = format.LowestCode;
        // A non-linear grid (IQ4): the code whose value is nearest, on the value table.
        using Tensor? table = format.EvenGrid ? null : torch.tensor(Enumerable.Range(0, format.Levels).Select(format.CodeValue).ToArray()); // host
        int chunk = Math.Max(B, 128 / B * B);
        using var scope = torch.NewDisposeScope();
        Tensor wt = torch.tensor(rows.ToArray(), new long[] { n, C }).t().contiguous(); // [C, n]: a column is contiguous
        Tensor original = wt.clone();
        Tensor inverses = BlockInverses(f, f.to_type(ScalarType.Float32).cpu(), B); // host
        nint inverseAt;
        fixed (byte* ip = inverses.bytes) inverseAt = (nint)ip; // native memory: no pinning needed
        var blockValues = new float[n * B];
        var blockOriginal = new float[n * B];
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
                bool chunkStart = b0 == cs;
                if (chunkStart)
                    BlockStartValues(wt.narrow(0, b0, B).t(), original.narrow(0, b0, B).t(), inverses[b0 / B]).data<float>().CopyTo(blockValues);
                else
                {
                    wt.narrow(0, b0, B).t().contiguous().data<float>().CopyTo(blockValues);
                    original.narrow(0, b0, B).t().contiguous().data<float>().CopyTo(blockOriginal);
                }
                int from = b0;
                nint inverse = inverseAt + (nint)b0 * B * sizeof(float); // block b0 / B
                Parallel.For(0, n, r =>
                {
                    if (!chunkStart)
                    {
                        var running = blockValues.AsSpan(r * B, B).ToArray();
                        BlockStartValues(blockOriginal.AsSpan(r * B, B), running, (float*)inverse, B, blockValues.AsSpan(r * B, B));
                    }
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
                    Tensor err = original[c] - wq;
                    if (c + 1 < ce) wt.narrow(0, c + 1, ce - c - 1).add_(torch.outer(f[c].narrow(0, c + 1, ce - c - 1), err));
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
                wt.narrow(0, ce, C - ce).add_(errors.t().contiguous().matmul(f.narrow(0, cs, ce - cs).narrow(1, ce, C - ce)).t());
            errors.Dispose();
        }
    }

    /// <summary>The fast path of <see cref="QuantizeReference"/>. Rows are independent given F, so each row is swept by
    /// one thread through a chunk of columns: its blocks' scale searches, codes and error pushes all in contiguous
    /// memory, with the reference's float32 operations in the reference's order (no fused multiply-add). The chunk's
    /// errors then reach the later columns as one matrix product (errors [rows, chunk] · F [chunk, later columns]) with
    /// the same operands as the reference's, so the bytes equal the reference's.</summary>
    static unsafe void QuantizeByRow(GgmlFormat format, ReadOnlySpan<float> rows, long rowLength, Tensor f, ReadOnlySpan<float> importance,
        Span<byte> output)
    {
        int C = checked((int)rowLength), n = rows.Length / C, B = format.BlockSize, blockBytes = format.BlockBytes;
        long rowBytes = format.RowBytes(C);
        if (C % B != 0 || rows.Length != (long)n * C || output.Length != n * rowBytes || f.shape[0] != C) throw new ArgumentException("shapes do not match");
        float shift = format.CodeShift, top = format.Levels - 1, bottom = format.LowestCode;
        // A non-linear grid (IQ4): the code whose value is nearest, on the value table.
        float[]? table = format.EvenGrid ? null : Enumerable.Range(0, format.Levels).Select(format.CodeValue).ToArray();
        int chunk = Math.Max(B, 128 / B * B);
        float[] imp = importance.IsEmpty ? Array.Empty<float>() : importance.ToArray();
        using var scope = torch.NewDisposeScope();
        Tensor original = torch.tensor(rows.ToArray(), new long[] { n, C }); // host: [rows, C], a row is contiguous
        Tensor w = original.clone(); // the values as updated by the columns before
        Tensor fh = f.to_type(ScalarType.Float32).cpu().contiguous();
        Tensor inverses = BlockInverses(f, fh, B);
        Tensor errors = torch.empty(n, chunk); // host
        var written = new byte[n * rowBytes];
        nint wAt, oAt, fAt, mAt, eAt;
        fixed (byte* wp = w.bytes, op = original.bytes, fp = fh.bytes, mp = inverses.bytes, ep = errors.bytes) // native memory: no pinning needed
        { wAt = (nint)wp; oAt = (nint)op; fAt = (nint)fp; mAt = (nint)mp; eAt = (nint)ep; }
        for (int cs = 0; cs < C; cs += chunk)
        {
            int ce = Math.Min(C, cs + chunk), from = cs;
            using Tensor start = BlockStartValues(w.narrow(1, cs, B), original.narrow(1, cs, B), inverses[cs / B]); // the chunk's first block
            nint sAt;
            fixed (byte* sp = start.bytes) sAt = (nint)sp; // native memory: no pinning needed
            Parallel.For(0, n, r =>
            {
                fixed (byte* bp = written)
                    SweepRow(format, table, shift, bottom, top, imp, (float*)wAt + (long)r * C, (float*)oAt + (long)r * C, (float*)fAt, (float*)mAt,
                        (float*)sAt + (long)r * B, C, (float*)eAt + (long)r * chunk, new Span<byte>(bp + r * rowBytes, (int)rowBytes), from, ce);
            });
            if (ce < C)
            {
                using var update = torch.NewDisposeScope();
                Tensor e = errors.narrow(1, 0, ce - cs).contiguous(); // [rows, chunk]
                w.narrow(1, ce, C - ce).add_(e.matmul(fh.narrow(0, cs, ce - cs).narrow(1, ce, C - ce)));
            }
        }
        written.CopyTo(output);
    }

    /// <summary>One row of <see cref="QuantizeByRow"/> through the columns [cs, ce): per block, the scales from the
    /// format's own search on GPTQ's values at the block's start (<see cref="BlockStartValues"/>; the chunk's first block's
    /// given in <paramref name="chunkStart"/>), then per column the code on that grid, and its error against the original
    /// value pushed through F onto the chunk's later columns.</summary>
    static unsafe void SweepRow(GgmlFormat format, float[]? table, float shift, float bottom, float top, float[] imp, float* w, float* original,
        float* f, float* inverses, float* chunkStart, int C, float* errors, Span<byte> row, int cs, int ce)
    {
        int B = format.BlockSize, blockBytes = format.BlockBytes, lanes = System.Numerics.Vector<float>.Count;
        Span<float> scale = stackalloc float[B], min = stackalloc float[B], start = stackalloc float[B];
        Span<byte> first = stackalloc byte[B], codes = stackalloc byte[B];
        for (int b0 = cs; b0 < ce; b0 += B)
        {
            var block = row.Slice(b0 / B * blockBytes, blockBytes);
            if (b0 == cs) new ReadOnlySpan<float>(chunkStart, B).CopyTo(start);
            else BlockStartValues(new ReadOnlySpan<float>(original + b0, B), new ReadOnlySpan<float>(w + b0, B), inverses + (long)b0 * B, B, start);
            format.QuantizeRow(start, block, imp.Length == 0 ? ReadOnlySpan<float>.Empty : imp.AsSpan(b0, B));
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
                float err = original[c] - wq;
                float* fc = f + (long)c * C;
                int i = c + 1;
                var ev = new System.Numerics.Vector<float>(err);
                for (; i + lanes <= ce; i += lanes)
                    System.Numerics.Vector.Store(System.Numerics.Vector.Load(w + i) + System.Numerics.Vector.Load(fc + i) * ev, w + i);
                for (; i < ce; i++) w[i] += fc[i] * err;
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
    static unsafe void QuantizeLattice(GgmlFormat format, ReadOnlySpan<float> rows, long rowLength, Tensor f, ReadOnlySpan<float> importance,
        Span<byte> output)
    {
        var lattice = format.Lattice!;
        int C = checked((int)rowLength), n = rows.Length / C, B = format.BlockSize, blockBytes = format.BlockBytes, dims = lattice.Dims;
        long rowBytes = format.RowBytes(C);
        if (C % B != 0 || rows.Length != (long)n * C || output.Length != n * rowBytes || f.shape[0] != C) throw new ArgumentException("shapes do not match");
        float[] values = format.LatticeValues;
        int maxLevel = format.LatticeMaxLevel, octets = B / 8;
        using var scope = torch.NewDisposeScope();
        Tensor wt = torch.tensor(rows.ToArray(), new long[] { n, C }).t().contiguous(); // host: [C, n], a column is contiguous
        Tensor original = wt.clone();
        Tensor inverses = BlockInverses(f, f.to_type(ScalarType.Float32).cpu(), B); // host
        nint inverseAt;
        fixed (byte* ip = inverses.bytes) inverseAt = (nint)ip; // native memory: no pinning needed
        var blockValues = new float[n * B];
        var octetOriginal = new float[8 * n];
        var block = new byte[n * blockBytes];
        var octetScale = new float[n * octets];
        var current = new float[8 * n];
        var chosen = new float[8 * n];
        float[] imp = importance.IsEmpty ? Array.Empty<float>() : importance.ToArray();
        for (int b0 = 0; b0 < C; b0 += B)
        {
            using var blockScope = torch.NewDisposeScope();
            Tensor errors = torch.zeros(B, n); // host
            BlockStartValues(wt.narrow(0, b0, B).t(), original.narrow(0, b0, B).t(), inverses[b0 / B]).data<float>().CopyTo(blockValues); // host
            int from = b0;
            nint inverse = inverseAt + (nint)b0 * B * sizeof(float); // block b0 / B
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
                original.narrow(0, c0, 8).contiguous().data<float>().CopyTo(octetOriginal); // host
                nint octetInverse = inverse + (nint)(8 * o * (B + 1)) * sizeof(float); // the octet's 8 x 8 diagonal block
                Parallel.For(0, n, r =>
                {
                    Span<float> a = stackalloc float[8], w = stackalloc float[8], start = stackalloc float[8], run = stackalloc float[8],
                        first = stackalloc float[8];
                    Span<int> indices = stackalloc int[2];
                    for (int i = 0; i < 8; i++) { run[i] = current[i * n + r]; first[i] = octetOriginal[i * n + r]; }
                    BlockStartValues(first, run, (float*)octetInverse, B, start); // GPTQ's values at the octet's start
                    float s = octetScale[r * octets + o];
                    int signs = 0;
                    for (int i = 0; i < 8; i++)
                    {
                        float v = start[i];
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
                    Tensor err = original[c] - q[i];
                    int end = b0 + B;
                    if (c + 1 < end) wt.narrow(0, c + 1, end - c - 1).add_(torch.outer(f[c].narrow(0, c + 1, end - c - 1), err));
                    errors[c - b0].copy_(err);
                }
            }
            for (int r = 0; r < n; r++)
                block.AsSpan(r * blockBytes, blockBytes).CopyTo(output.Slice((int)(r * rowBytes + b0 / B * blockBytes), blockBytes));
            if (b0 + B < C)
                wt.narrow(0, b0 + B, C - b0 - B).add_(f.narrow(0, b0, B).narrow(1, b0 + B, C - b0 - B).t().matmul(errors));
        }
    }
}
