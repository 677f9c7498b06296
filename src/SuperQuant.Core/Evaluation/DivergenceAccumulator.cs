using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SuperQuant.Core.Evaluation;

/// <summary>
/// The statistics llama.cpp's `llama-perplexity --kl-divergence` prints, for one model against a reference over the
/// same scored tokens: perplexity of each (± standard error), ln(PPL(Q)/PPL(base)) and PPL(Q) - PPL(base) with paired
/// standard errors, KL divergence mean ± se with its median, p90, p99, p99.9 and max, the share of tokens whose top
/// token agrees, and the RMS of Δp (the change in the probability of the actual next token).
/// </summary>
public sealed record DivergenceResult(
    Estimate KlDivergence, Estimate Top1Agreement, Estimate ReferencePerplexity, Estimate ModifiedPerplexity, long TokensScored)
{
    public double KlMedian { get; init; }
    public double KlP90 { get; init; }
    public double KlP99 { get; init; }
    public double KlP999 { get; init; }
    public double KlMax { get; init; }
    /// <summary>ln(PPL(Q) / PPL(base)) = mean(NLL_Q - NLL_base), with the paired standard error.</summary>
    public Estimate LnPerplexityRatio { get; init; }
    /// <summary>PPL(Q) - PPL(base), standard error by the delta method with the NLLs' covariance.</summary>
    public Estimate PerplexityDelta { get; init; }
    /// <summary>sqrt(mean(Δp²)), Δp = p_Q(next token) - p_base(next token); standard error by the delta method.</summary>
    public Estimate RmsDeltaP { get; init; }
    /// <summary>Each scored token's KL divergence, in scoring order (for paired comparisons of two files on the same
    /// tokens); not written to reports.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public IReadOnlyList<float> KlPerToken { get; init; } = Array.Empty<float>();

    /// <summary>Mean KL divergence of this result minus <paramref name="other"/>'s, token by token on the same tokens,
    /// with the paired standard error (far smaller than either mean's when the two files err on the same tokens).</summary>
    public Estimate KlDifferenceFrom(DivergenceResult other)
    {
        if (other.KlPerToken.Count != KlPerToken.Count || KlPerToken.Count == 0) throw new ArgumentException("the two results were not scored on the " +
            "same tokens");
        int n = KlPerToken.Count;
        double mean = 0, m2 = 0;
        for (int i = 0; i < n; i++)
        {
            double d = (double)KlPerToken[i] - other.KlPerToken[i], delta = d - mean;
            mean += delta / (i + 1);
            m2 += delta * (d - mean);
        }
        return new Estimate(mean, n > 1 ? Math.Sqrt(m2 / (n - 1) / n) : 0);
    }
}

/// <summary>Collects per-token KL, top-1 agreement, both NLLs and Δp, chunk by chunk; memory is a few floats per
/// scored token (for the percentiles), never the logits.</summary>
public sealed class DivergenceAccumulator
{
    readonly RunningStat _kl = new(), _top1 = new(), _nllRef = new(), _nllMod = new(), _nllDiff = new(), _dp2 = new();
    readonly List<float> _klValues = new();

    public long Count => _kl.Count;

    /// <summary>Adds m scored positions: the reference's and the model's log-probabilities ([m, vocab], float64) and
    /// the actual next tokens ([m]). The reference's argmax may be given when it is known more exactly than from
    /// <paramref name="lpRef"/> (a compressed reference).</summary>
    public void Add(Tensor lpRef, Tensor lpMod, Tensor targets, long[]? referenceArgmax = null, double[]? referenceNll = null)
    {
        using var scope = torch.NewDisposeScope();
        if (lpRef.device != lpMod.device) lpRef = lpRef.to(lpMod.device); // a reference read from disk meets a model on the GPU
        Tensor t = targets.to(lpRef.device).unsqueeze(1);
        double[] klRows = (lpRef.exp() * (lpRef - lpMod)).sum(-1).cpu().data<double>().ToArray();
        long[] argP = referenceArgmax ?? lpRef.argmax(-1).cpu().data<long>().ToArray();
        long[] argQ = lpMod.argmax(-1).cpu().data<long>().ToArray();
        double[] nP = referenceNll ?? (-lpRef.gather(1, t)).squeeze(1).cpu().data<double>().ToArray();
        double[] nQ = (-lpMod.gather(1, t)).squeeze(1).cpu().data<double>().ToArray();
        for (int i = 0; i < klRows.Length; i++)
        {
            double kl = Math.Max(klRows[i], 0); // tiny negative values are rounding
            _kl.Add(kl);
            _klValues.Add((float)kl);
            _top1.Add(argP[i] == argQ[i] ? 1 : 0);
            _nllRef.Add(nP[i]);
            _nllMod.Add(nQ[i]);
            _nllDiff.Add(nQ[i] - nP[i]);
            double dp = Math.Exp(-nQ[i]) - Math.Exp(-nP[i]);
            _dp2.Add(dp * dp);
        }
    }

    /// <summary>The same from logits (any dtype, any device): log-softmax in float64 first.</summary>
    public void AddLogits(Tensor refLogits, Tensor modLogits, Tensor targets)
    {
        using var scope = torch.NewDisposeScope();
        Add(F.log_softmax(refLogits.to(ScalarType.Float64), -1), F.log_softmax(modLogits.to(ScalarType.Float64), -1), targets);
    }

    public DivergenceResult Result()
    {
        float[] sorted = _klValues.ToArray();
        Array.Sort(sorted);
        double Q(double p) => sorted.Length == 0 ? 0 : sorted[Math.Clamp((int)Math.Ceiling(p * sorted.Length) - 1, 0, sorted.Length - 1)];
        // Paired NLLs: cov(ref, mod) from var(mod - ref) = var(mod) + var(ref) - 2 cov.
        double n = Math.Max(1, _nllRef.Count);
        double varRef = Sq(_nllRef.StandardError) * n, varMod = Sq(_nllMod.StandardError) * n, varDiff = Sq(_nllDiff.StandardError) * n;
        double cov = (varRef + varMod - varDiff) / 2;
        double pRef = Math.Exp(_nllRef.Mean), pMod = Math.Exp(_nllMod.Mean);
        double varDelta = (pMod * pMod * varMod + pRef * pRef * varRef - 2 * pMod * pRef * cov) / n;
        double rms = Math.Sqrt(_dp2.Mean);
        return new DivergenceResult(new Estimate(_kl.Mean, _kl.StandardError), new Estimate(_top1.Mean, _top1.StandardError),
            PerplexityOf(_nllRef), PerplexityOf(_nllMod), _kl.Count)
        {
            KlMedian = Q(0.5), KlP90 = Q(0.9), KlP99 = Q(0.99), KlP999 = Q(0.999), KlMax = sorted.Length == 0 ? 0 : sorted[^1],
            LnPerplexityRatio = new Estimate(_nllDiff.Mean, _nllDiff.StandardError),
            PerplexityDelta = new Estimate(pMod - pRef, Math.Sqrt(Math.Max(varDelta, 0))),
            RmsDeltaP = new Estimate(rms, rms > 0 ? _dp2.StandardError / (2 * rms) : 0),
            KlPerToken = _klValues.ToArray(),
        };
    }

    static double Sq(double x) => x * x;

    /// <summary>exp(mean NLL); its standard error by the delta method (as llama.cpp reports it).</summary>
    public static Estimate PerplexityOf(RunningStat nll)
    {
        double ppl = Math.Exp(nll.Mean);
        return new Estimate(ppl, ppl * nll.StandardError);
    }
}
