using System.Runtime.Intrinsics;

namespace SuperQuant.Models.Gguf;

/// <summary>
/// The fast path of the scale searches: make_qx_quants' 18 trial scales and make_qkx2/3_quants' nstep + 1 trial
/// scales, eight at a time in the lanes of a vector. Each lane does the scalar code's float operations in the scalar
/// code's order (its sums run over the elements one after another, no fused multiply-add), so every lane's numbers, and
/// so the bytes, equal the line-by-line port (<see cref="GgmlQuants.QuantizeReference"/>, tested against each other).
/// The candidates are compared in the scalar order. ggml's make_qkx2/3_quants moves `min` when a trial wins, and the
/// trials after it use the new min: the lanes after a winning one are computed again from there.
/// </summary>
internal static partial class KQuantMath
{
    const int Lanes = 8;

    /// <summary>Set on a thread that must run the line-by-line searches (the reference the fast path is tested against).</summary>
    [ThreadStatic] internal static bool t_referenceSearch;

    static bool SimdSearch => Vector256.IsHardwareAccelerated && !t_referenceSearch;

    static Vector256<int> NearestInt(Vector256<float> f) =>
        (Vector256.AsInt32(f + Vector256.Create(12582912f)) & Vector256.Create(0x007fffff)) - Vector256.Create(0x00400000);

    /// <summary>make_qx_quants' loop over is = -9..9 (not 0), given the first fit's scale and best.</summary>
    static float QxCandidatesSimd(int n, int nmax, ReadOnlySpan<float> x, Span<sbyte> L, int rmseType, ReadOnlySpan<float> qw, float max,
        float scale, float best)
    {
        Span<float> w = stackalloc float[n], wx = stackalloc float[n];
        for (int i = 0; i < n; ++i) { w[i] = Weight(x[i], i, rmseType, qw); wx[i] = w[i] * x[i]; }
        Span<int> trial = stackalloc int[18];
        for (int k = 0, @is = -9; @is <= 9; ++@is) if (@is != 0) trial[k++] = @is;
        Span<float> iscales = stackalloc float[Lanes], sumlxs = stackalloc float[Lanes], suml2s = stackalloc float[Lanes];
        var lo = Vector256.Create(-nmax);
        var hi = Vector256.Create(nmax - 1);
        for (int g = 0; g < trial.Length; g += Lanes)
        {
            int count = Math.Min(Lanes, trial.Length - g);
            for (int k = 0; k < Lanes; ++k) iscales[k] = -(nmax + 0.1f * trial[g + Math.Min(k, count - 1)]) / max;
            var iscale = Vector256.Create<float>(iscales);
            var sumlx = Vector256<float>.Zero;
            var suml2 = Vector256<float>.Zero;
            for (int i = 0; i < n; ++i)
            {
                var l = Vector256.ConvertToSingle(Vector256.Max(lo, Vector256.Min(hi, NearestInt(iscale * Vector256.Create(x[i])))));
                sumlx += Vector256.Create(wx[i]) * l;
                suml2 += Vector256.Create(w[i]) * l * l;
            }
            sumlx.CopyTo(sumlxs);
            suml2.CopyTo(suml2s);
            for (int k = 0; k < count; ++k)
            {
                if (!(suml2s[k] > 0 && sumlxs[k] * sumlxs[k] > best * suml2s[k])) continue;
                for (int i = 0; i < n; ++i)
                {
                    int l = NearestInt(iscales[k] * x[i]);
                    L[i] = (sbyte)(nmax + Math.Max(-nmax, Math.Min(nmax - 1, l)));
                }
                scale = sumlxs[k] / suml2s[k]; best = scale * sumlxs[k];
            }
        }
        return scale;
    }

    /// <summary>make_qkx2/3_quants' loop over is = 0..nstep, given the first fit's scale and error.</summary>
    static float FitCandidatesSimd(int n, int nmax, ReadOnlySpan<float> x, ReadOnlySpan<float> weights, Span<byte> L, out float theMin,
        float rmin, float rdelta, int nstep, bool useMad, float min, float max, float sumW, float sumX, float scale, float bestError)
    {
        Span<float> iscales = stackalloc float[Lanes], ds = stackalloc float[Lanes], errors = stackalloc float[Lanes];
        Span<float> scales = stackalloc float[Lanes], mins = stackalloc float[Lanes];
        Span<Vector256<float>> levels = stackalloc Vector256<float>[n];
        var zero = Vector256<int>.Zero;
        var top = Vector256.Create(nmax);
        var vSumW = Vector256.Create(sumW);
        var vSumX = Vector256.Create(sumX);
        int next = 0;
        while (next <= nstep)
        {
            int count = Math.Min(Lanes, nstep + 1 - next);
            for (int k = 0; k < Lanes; ++k) iscales[k] = (rmin + rdelta * (next + Math.Min(k, count - 1)) + nmax) / (max - min);
            var iscale = Vector256.Create<float>(iscales);
            Vector256<float> sumL = default, sumL2 = default, sumXl = default;
            for (int i = 0; i < n; ++i)
            {
                var l = Vector256.ConvertToSingle(Vector256.Max(zero, Vector256.Min(top, NearestInt(iscale * Vector256.Create(x[i] - min)))));
                levels[i] = l;
                var wl = Vector256.Create(weights[i]) * l;
                sumL += wl;
                sumL2 += wl * l;
                sumXl += wl * Vector256.Create(x[i]);
            }
            var D = vSumW * sumL2 - sumL * sumL;
            var thisScale = (vSumW * sumXl - vSumX * sumL) / D;
            var thisMin = (sumL2 * vSumX - sumL * sumXl) / D;
            var positive = Vector256.GreaterThan(thisMin, Vector256<float>.Zero);
            thisMin = Vector256.ConditionalSelect(positive, Vector256<float>.Zero, thisMin);
            thisScale = Vector256.ConditionalSelect(positive, sumXl / sumL2, thisScale);
            var curError = Vector256<float>.Zero;
            for (int i = 0; i < n; ++i)
            {
                var diff = thisScale * levels[i] + thisMin - Vector256.Create(x[i]);
                diff = useMad ? Vector256.Abs(diff) : diff * diff;
                curError += Vector256.Create(weights[i]) * diff;
            }
            D.CopyTo(ds);
            curError.CopyTo(errors);
            thisScale.CopyTo(scales);
            thisMin.CopyTo(mins);
            int winner = -1;
            for (int k = 0; k < count && winner < 0; ++k)
                if (ds[k] > 0 && errors[k] < bestError) winner = k;
            if (winner < 0) { next += count; continue; }
            for (int i = 0; i < n; ++i) L[i] = (byte)levels[i].GetElement(winner);
            bestError = errors[winner];
            scale = scales[winner];
            min = mins[winner];
            next += winner + 1; // the later trials depend on the new min
        }
        theMin = -min;
        return scale;
    }
}
