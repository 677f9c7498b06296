using static SuperQuant.Models.Gguf.KQuantMath;

namespace SuperQuant.Models.Gguf;

/// <summary>
/// The 4-bit non-linear grid both IQ4 types share (ggml-common.h kvalues_iq4nl): code q dequantizes as d * Values[q],
/// levels spaced more tightly near zero, where most weights are. quantize_row_iq4_nl_impl (ggml-quants.c) ported line by
/// line: per 32-weight block, an initial scale from the largest magnitude, then 15 scales around it (ntry 7), each
/// scored by the weighted fit sum(w q x)^2 / sum(w q^2); weights are imatrix * sqrt(sigma2 + x^2), or x^2 without one.
/// </summary>
internal static class IQ4Grid
{
    public static readonly sbyte[] Values = { -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113 };
    const int NTry = 7;

    /// <summary>best_index_int8: the nearest grid value's index (ties to the upper one, as ggml compares).</summary>
    public static int BestIndex(float x)
    {
        var val = Values;
        if (x <= val[0]) return 0;
        if (x >= val[15]) return 15;
        int ml = 0, mu = 15;
        while (mu - ml > 1)
        {
            int mav = (ml + mu) / 2;
            if (x < val[mav]) mu = mav; else ml = mav;
        }
        return x - val[mu - 1] < val[mu] - x ? mu - 1 : mu;
    }

    /// <summary>One super-block of <paramref name="x"/>.Length weights (32 for IQ4_NL, 256 for IQ4_XS) in blocks of 32.
    /// Writes the fp16 d, the packed codes <paramref name="q4"/> and, with more than one block, the 6-bit block scales
    /// (IQ4_XS: low nibbles in <paramref name="scalesL"/>, high 2 bits in <paramref name="scalesH"/>).</summary>
    public static void QuantizeSuperBlock(ReadOnlySpan<float> x, Span<byte> dh, Span<byte> q4, out ushort scalesH, Span<byte> scalesL,
        ReadOnlySpan<float> quantWeights)
    {
        const int blockSize = 32;
        int superBlockSize = x.Length, nb = superBlockSize / blockSize;
        Span<float> scales = stackalloc float[nb];
        Span<float> weight = stackalloc float[blockSize];
        Span<byte> L = stackalloc byte[superBlockSize];
        L.Clear();
        scalesH = 0;
        float sigma2 = 0;
        for (int j = 0; j < superBlockSize; ++j) sigma2 += x[j] * x[j];
        sigma2 *= 2f / superBlockSize;

        q4.Clear();
        WriteHalf(dh, 0f);

        float maxScale = 0, amaxScale = 0;
        for (int ib = 0; ib < nb; ++ib)
        {
            var xb = x.Slice(ib * blockSize, blockSize);
            var Lb = L.Slice(ib * blockSize, blockSize);
            if (!quantWeights.IsEmpty)
            {
                var qw = quantWeights.Slice(ib * blockSize, blockSize);
                for (int j = 0; j < blockSize; ++j) weight[j] = qw[j] * MathF.Sqrt(sigma2 + xb[j] * xb[j]);
            }
            else
                for (int j = 0; j < blockSize; ++j) weight[j] = xb[j] * xb[j];
            float amax = 0, max = 0;
            for (int j = 0; j < blockSize; ++j)
            {
                float ax = MathF.Abs(xb[j]);
                if (ax > amax) { amax = ax; max = xb[j]; }
            }
            if (amax < GroupMaxEps)
            {
                scales[ib] = 0;
                continue;
            }
            float d = -max / Values[0];
            float id = 1 / d;
            float sumqx = 0, sumq2 = 0;
            for (int j = 0; j < blockSize; ++j)
            {
                float al = id * xb[j];
                int l = BestIndex(al);
                Lb[j] = (byte)l;
                float q = Values[l];
                float w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            d = sumq2 > 0 ? sumqx / sumq2 : 0f;
            float best = d * sumqx;
            for (int itry = -NTry; itry <= NTry; ++itry)
            {
                id = (itry + Values[0]) / max;
                sumqx = sumq2 = 0;
                for (int j = 0; j < blockSize; ++j)
                {
                    float al = id * xb[j];
                    int l = BestIndex(al);
                    float q = Values[l];
                    float w = weight[j];
                    sumqx += w * q * xb[j];
                    sumq2 += w * q * q;
                }
                if (sumq2 > 0 && sumqx * sumqx > best * sumq2)
                {
                    d = sumqx / sumq2; best = d * sumqx;
                }
            }
            scales[ib] = d;
            float absD = MathF.Abs(d);
            if (absD > amaxScale) { amaxScale = absD; maxScale = d; }
        }

        if (nb > 1)
        {
            float d = -maxScale / 32;
            WriteHalf(dh, d);
            float id = d != 0 ? 1 / d : 0f;
            for (int ib = 0; ib < nb; ++ib)
            {
                int l = NearestInt(id * scales[ib]);
                l = Math.Max(-32, Math.Min(31, l));
                float dl = d * l;
                float idl = dl != 0 ? 1 / dl : 0f;
                var Lb = L.Slice(ib * blockSize, blockSize);
                var xb = x.Slice(ib * blockSize, blockSize);
                for (int j = 0; j < blockSize; ++j) Lb[j] = (byte)BestIndex(idl * xb[j]);
                l += 32;
                byte lLow = (byte)(l & 0xf), lHigh = (byte)(l >> 4);
                if (ib % 2 == 0) scalesL[ib / 2] = lLow;
                else scalesL[ib / 2] |= (byte)(lLow << 4);
                scalesH |= (ushort)(lHigh << (2 * (ib % 8)));
            }
        }
        else
        {
            WriteHalf(dh, scales[0]);
            float id = scales[0] != 0 ? 1 / scales[0] : 0;
            for (int j = 0; j < superBlockSize; ++j) L[j] = (byte)BestIndex(id * x[j]);
        }

        for (int i = 0; i < superBlockSize / 32; ++i)
            for (int j = 0; j < 16; ++j)
                q4[16 * i + j] = (byte)(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
    }
}
