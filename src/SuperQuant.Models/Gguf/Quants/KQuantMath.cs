namespace SuperQuant.Models.Gguf;

/// <summary>
/// The scale searches of ggml-quants.c ("2-6 bit quantization in super-blocks", helper functions), ported line by
/// line: nearest_int, make_qx_quants, make_q3_quants, make_qkx2_quants, make_qkx3_quants, make_qp_quants. Every
/// expression keeps C's evaluation order and float (not double) intermediates: byte-exact output depends on it.
/// </summary>
internal static partial class KQuantMath
{
    public const float GroupMaxEps = 1e-15f;

    /// <summary>Round half to even for |x| &lt; 2^22, by ggml's magic-number trick (bit-exact with it).</summary>
    public static int NearestInt(float fval)
    {
        float val = fval + 12582912f;
        int i = BitConverter.SingleToInt32Bits(val);
        return (i & 0x007fffff) - 0x00400000;
    }

    public static float Fp16Round(float x) => (float)(Half)x;

    /// <summary>Symmetric levels -nmax..nmax-1, stored as L[i] = l + nmax; rmse_type 1 weights by x^2 (or by
    /// <paramref name="qw"/>), then 18 nearby scales are tried for the best weighted fit.</summary>
    public static float MakeQxQuants(int n, int nmax, ReadOnlySpan<float> x, Span<sbyte> L, int rmseType, ReadOnlySpan<float> qw)
    {
        float max = 0, amax = 0;
        for (int i = 0; i < n; ++i)
        {
            float ax = MathF.Abs(x[i]);
            if (ax > amax) { amax = ax; max = x[i]; }
        }
        if (amax < GroupMaxEps)
        {
            for (int i = 0; i < n; ++i) L[i] = 0;
            return 0f;
        }
        float iscale = -nmax / max;
        if (rmseType == 0)
        {
            for (int i = 0; i < n; ++i)
            {
                int l = NearestInt(iscale * x[i]);
                L[i] = (sbyte)(nmax + Math.Max(-nmax, Math.Min(nmax - 1, l)));
            }
            return 1 / iscale;
        }
        bool returnEarly = false;
        if (rmseType < 0) { rmseType = -rmseType; returnEarly = true; }
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; ++i)
        {
            int l = NearestInt(iscale * x[i]);
            l = Math.Max(-nmax, Math.Min(nmax - 1, l));
            L[i] = (sbyte)(l + nmax);
            float w = Weight(x[i], i, rmseType, qw);
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
        if (returnEarly) return suml2 > 0 ? 0.5f * (scale + 1 / iscale) : 1 / iscale;
        float best = scale * sumlx;
        if (SimdSearch) return QxCandidatesSimd(n, nmax, x, L, rmseType, qw, max, scale, best);
        for (int @is = -9; @is <= 9; ++@is)
        {
            if (@is == 0) continue;
            iscale = -(nmax + 0.1f * @is) / max;
            sumlx = suml2 = 0;
            for (int i = 0; i < n; ++i)
            {
                int l = NearestInt(iscale * x[i]);
                l = Math.Max(-nmax, Math.Min(nmax - 1, l));
                float w = Weight(x[i], i, rmseType, qw);
                sumlx += w * x[i] * l;
                suml2 += w * l * l;
            }
            if (suml2 > 0 && sumlx * sumlx > best * suml2)
            {
                for (int i = 0; i < n; ++i)
                {
                    int l = NearestInt(iscale * x[i]);
                    L[i] = (sbyte)(nmax + Math.Max(-nmax, Math.Min(nmax - 1, l)));
                }
                scale = sumlx / suml2; best = scale * sumlx;
            }
        }
        return scale;
    }

    static float Weight(float x, int i, int rmseType, ReadOnlySpan<float> qw) =>
        !qw.IsEmpty ? qw[i] : rmseType == 1 ? x * x : rmseType == 2 ? 1 : rmseType == 3 ? MathF.Abs(x) : MathF.Sqrt(MathF.Abs(x));

    /// <summary>Q3_K's symmetric levels with an iterative per-element refinement (weights x^2).</summary>
    public static float MakeQ3Quants(int n, int nmax, ReadOnlySpan<float> x, Span<sbyte> L, bool doRmse)
    {
        float max = 0, amax = 0;
        for (int i = 0; i < n; ++i)
        {
            float ax = MathF.Abs(x[i]);
            if (ax > amax) { amax = ax; max = x[i]; }
        }
        if (amax < GroupMaxEps)
        {
            for (int i = 0; i < n; ++i) L[i] = 0;
            return 0f;
        }
        float iscale = -nmax / max;
        if (doRmse)
        {
            float sumlx = 0, suml2 = 0;
            for (int i = 0; i < n; ++i)
            {
                int l = NearestInt(iscale * x[i]);
                l = Math.Max(-nmax, Math.Min(nmax - 1, l));
                L[i] = (sbyte)l;
                float w = x[i] * x[i];
                sumlx += w * x[i] * l;
                suml2 += w * l * l;
            }
            for (int itry = 0; itry < 5; ++itry)
            {
                int changed = 0;
                for (int i = 0; i < n; ++i)
                {
                    float w = x[i] * x[i];
                    float slx = sumlx - w * x[i] * L[i];
                    if (slx > 0)
                    {
                        float sl2 = suml2 - w * L[i] * L[i];
                        int newL = NearestInt(x[i] * sl2 / slx);
                        newL = Math.Max(-nmax, Math.Min(nmax - 1, newL));
                        if (newL != L[i])
                        {
                            slx += w * x[i] * newL;
                            sl2 += w * newL * newL;
                            if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2)
                            {
                                L[i] = (sbyte)newL; sumlx = slx; suml2 = sl2;
                                ++changed;
                            }
                        }
                    }
                }
                if (changed == 0) break;
            }
            for (int i = 0; i < n; ++i) L[i] += (sbyte)nmax;
            return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
        }
        for (int i = 0; i < n; ++i)
        {
            int l = NearestInt(iscale * x[i]);
            l = Math.Max(-nmax, Math.Min(nmax - 1, l));
            L[i] = (sbyte)(l + nmax);
        }
        return 1 / iscale;
    }

    /// <summary>Asymmetric levels 0..nmax with a min (x ~ scale * L + min, min &lt;= 0): a grid of
    /// <paramref name="nstep"/> + 1 trial scales, each refit by weighted least squares; returns the scale and -min.</summary>
    public static float MakeQkx2Quants(int n, int nmax, ReadOnlySpan<float> x, ReadOnlySpan<float> weights, Span<byte> L, out float theMin,
        Span<byte> Laux, float rmin, float rdelta, int nstep, bool useMad)
    {
        float min = x[0], max = x[0];
        float sumW = weights[0];
        float sumX = sumW * x[0];
        for (int i = 1; i < n; ++i)
        {
            if (x[i] < min) min = x[i];
            if (x[i] > max) max = x[i];
            float w = weights[i];
            sumW += w;
            sumX += w * x[i];
        }
        if (min > 0) min = 0;
        if (max == min)
        {
            for (int i = 0; i < n; ++i) L[i] = 0;
            theMin = -min;
            return 0f;
        }
        return FitAsymmetric(n, nmax, x, weights, L, out theMin, Laux, rmin, rdelta, nstep, useMad, min, max, sumW, sumX);
    }

    /// <summary>make_qkx3_quants: as <see cref="MakeQkx2Quants"/>, with x^2 as the default weights (the imatrix path).</summary>
    public static float MakeQkx3Quants(int n, int nmax, ReadOnlySpan<float> x, ReadOnlySpan<float> weights, Span<byte> L, out float theMin,
        Span<byte> Laux, float rmin, float rdelta, int nstep, bool useMad)
    {
        float min = x[0], max = x[0];
        float sumW = !weights.IsEmpty ? weights[0] : x[0] * x[0];
        float sumX = sumW * x[0];
        for (int i = 1; i < n; ++i)
        {
            if (x[i] < min) min = x[i];
            if (x[i] > max) max = x[i];
            float w = !weights.IsEmpty ? weights[i] : x[i] * x[i];
            sumW += w;
            sumX += w * x[i];
        }
        if (min > 0) min = 0;
        if (max <= min)
        {
            L[..n].Clear();
            theMin = -min;
            return 0f;
        }
        if (weights.IsEmpty)
        {
            Span<float> w2 = stackalloc float[n];
            for (int i = 0; i < n; ++i) w2[i] = x[i] * x[i];
            return FitAsymmetric(n, nmax, x, w2, L, out theMin, Laux, rmin, rdelta, nstep, useMad, min, max, sumW, sumX);
        }
        return FitAsymmetric(n, nmax, x, weights, L, out theMin, Laux, rmin, rdelta, nstep, useMad, min, max, sumW, sumX);
    }

    /// <summary>The part make_qkx2_quants and make_qkx3_quants share after their min/max/sum pass.</summary>
    static float FitAsymmetric(int n, int nmax, ReadOnlySpan<float> x, ReadOnlySpan<float> weights, Span<byte> L, out float theMin,
        Span<byte> Laux, float rmin, float rdelta, int nstep, bool useMad, float min, float max, float sumW, float sumX)
    {
        float iscale = nmax / (max - min);
        float scale = 1 / iscale;
        float bestError = 0;
        for (int i = 0; i < n; ++i)
        {
            int l = NearestInt(iscale * (x[i] - min));
            L[i] = (byte)Math.Max(0, Math.Min(nmax, l));
            float diff = scale * L[i] + min - x[i];
            diff = useMad ? MathF.Abs(diff) : diff * diff;
            bestError += weights[i] * diff;
        }
        if (nstep < 1)
        {
            theMin = -min;
            return scale;
        }
        if (SimdSearch) return FitCandidatesSimd(n, nmax, x, weights, L, out theMin, rmin, rdelta, nstep, useMad, min, max, sumW, sumX, scale, bestError);
        for (int @is = 0; @is <= nstep; ++@is)
        {
            iscale = (rmin + rdelta * @is + nmax) / (max - min);
            float sumL = 0, sumL2 = 0, sumXl = 0;
            for (int i = 0; i < n; ++i)
            {
                int l = NearestInt(iscale * (x[i] - min));
                l = Math.Max(0, Math.Min(nmax, l));
                Laux[i] = (byte)l;
                float w = weights[i];
                sumL += w * l;
                sumL2 += w * l * l;
                sumXl += w * l * x[i];
            }
            float D = sumW * sumL2 - sumL * sumL;
            if (D > 0)
            {
                float thisScale = (sumW * sumXl - sumX * sumL) / D;
                float thisMin = (sumL2 * sumX - sumL * sumXl) / D;
                if (thisMin > 0)
                {
                    thisMin = 0;
                    thisScale = sumXl / sumL2;
                }
                float curError = 0;
                for (int i = 0; i < n; ++i)
                {
                    float diff = thisScale * Laux[i] + thisMin - x[i];
                    diff = useMad ? MathF.Abs(diff) : diff * diff;
                    curError += weights[i] * diff;
                }
                if (curError < bestError)
                {
                    Laux[..n].CopyTo(L);
                    bestError = curError;
                    scale = thisScale;
                    min = thisMin;
                }
            }
        }
        theMin = -min;
        return scale;
    }

    /// <summary>make_qp_quants: non-negative levels 0..nmax for the sub-block scales and mins themselves,
    /// weighted by each sub-block's total importance.</summary>
    public static float MakeQpQuants(int n, int nmax, ReadOnlySpan<float> x, Span<byte> L, ReadOnlySpan<float> quantWeights)
    {
        float max = 0;
        for (int i = 0; i < n; ++i) max = Math.Max(max, x[i]);
        if (max < GroupMaxEps)
        {
            for (int i = 0; i < n; ++i) L[i] = 0;
            return 0f;
        }
        float iscale = nmax / max;
        for (int i = 0; i < n; ++i) L[i] = (byte)NearestInt(iscale * x[i]);
        float scale = 1 / iscale;
        float bestMse = 0;
        for (int i = 0; i < n; ++i)
        {
            float diff = x[i] - scale * L[i];
            float w = quantWeights[i];
            bestMse += w * diff * diff;
        }
        for (int @is = -4; @is <= 4; ++@is)
        {
            if (@is == 0) continue;
            float iscaleIs = (0.1f * @is + nmax) / max;
            float scaleIs = 1 / iscaleIs;
            float mse = 0;
            for (int i = 0; i < n; ++i)
            {
                int l = NearestInt(iscaleIs * x[i]);
                l = Math.Min(nmax, l);
                float diff = x[i] - scaleIs * l;
                float w = quantWeights[i];
                mse += w * diff * diff;
            }
            if (mse < bestMse)
            {
                bestMse = mse;
                iscale = iscaleIs;
            }
        }
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; ++i)
        {
            int l = NearestInt(iscale * x[i]);
            l = Math.Min(nmax, l);
            L[i] = (byte)l;
            float w = quantWeights[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        for (int itry = 0; itry < 5; ++itry)
        {
            int changed = 0;
            for (int i = 0; i < n; ++i)
            {
                float w = quantWeights[i];
                float slx = sumlx - w * x[i] * L[i];
                float sl2 = suml2 - w * L[i] * L[i];
                if (slx > 0 && sl2 > 0)
                {
                    int newL = NearestInt(x[i] * sl2 / slx);
                    newL = Math.Min(nmax, newL);
                    if (newL != L[i])
                    {
                        slx += w * x[i] * newL;
                        sl2 += w * newL * newL;
                        if (slx * slx * suml2 > sumlx * sumlx * sl2)
                        {
                            L[i] = (byte)newL; sumlx = slx; suml2 = sl2;
                            ++changed;
                        }
                    }
                }
            }
            if (changed == 0) break;
        }
        return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
    }

    /// <summary>Unpacks sub-block j's 6-bit scale and min from Q4_K/Q5_K's 12 packed bytes (get_scale_min_k4).</summary>
    public static void GetScaleMinK4(int j, ReadOnlySpan<byte> q, out byte d, out byte m)
    {
        if (j < 4)
        {
            d = (byte)(q[j] & 63); m = (byte)(q[j + 4] & 63);
        }
        else
        {
            d = (byte)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
            m = (byte)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
        }
    }

    /// <summary>Packs eight 6-bit scales and mins into Q4_K/Q5_K's 12 bytes (the inverse of <see cref="GetScaleMinK4"/>).</summary>
    public static void PackScaleMinK4(Span<byte> scales, ReadOnlySpan<byte> ls, ReadOnlySpan<byte> lm)
    {
        scales[..12].Clear();
        for (int j = 0; j < 8; ++j)
        {
            if (j < 4)
            {
                scales[j] = ls[j];
                scales[j + 4] = lm[j];
            }
            else
            {
                scales[j + 4] = (byte)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
                scales[j - 4] |= (byte)((ls[j] >> 4) << 6);
                scales[j - 0] |= (byte)((lm[j] >> 4) << 6);
            }
        }
    }

    public static void WriteHalf(Span<byte> dst, float v) => BitConverter.TryWriteBytes(dst, (Half)v);
    public static float ReadHalf(ReadOnlySpan<byte> src) => (float)BitConverter.ToHalf(src);
}
