using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SuperQuant.Core.Evaluation;

/// <summary>A model as the evaluator sees it: token ids [1, T] in, logits [1, T, vocab] out.</summary>
public delegate Tensor LogitsFunction(Tensor tokens);

public sealed record PerplexityResult(Estimate Perplexity, Estimate MeanNll, long TokensScored);

public sealed record DivergenceResult(
    Estimate KlDivergence, Estimate Top1Agreement, Estimate ReferencePerplexity, Estimate ModifiedPerplexity, long TokensScored);

/// <summary>Progress of a long evaluation: windows done out of total.</summary>
public delegate void EvalProgress(int done, int total);

/// <summary>Perplexity (like llama.cpp's perplexity tool) and KL divergence / top-1 agreement between two models.</summary>
public static class Evaluator
{
    public static PerplexityResult Perplexity(LogitsFunction model, IReadOnlyList<int> tokens, int context, int stride, EvalProgress? progress = null)
    {
        RequireTokens(tokens);
        var nll = new RunningStat();
        var windows = EvalWindow.Over(tokens.Count, context, stride).ToList();
        for (int wi = 0; wi < windows.Count; wi++)
        {
            using var scope = torch.NewDisposeScope();
            (Tensor input, Tensor targets) = Slice(tokens, windows[wi]);
            // Scored on the CPU whatever the model's device (float64, and the .data reads below need host memory).
            Tensor logp = F.log_softmax(model(input).squeeze(0).narrow(0, windows[wi].FirstScored, targets.shape[0]).cpu().to(ScalarType.Float64), -1);
            foreach (double v in (-logp.gather(1, targets.unsqueeze(1))).squeeze(1).data<double>()) nll.Add(v);
            progress?.Invoke(wi + 1, windows.Count);
        }
        return new PerplexityResult(PerplexityOf(nll), new Estimate(nll.Mean, nll.StandardError), nll.Count);
    }

    /// <summary>KL(P_reference || P_modified) per scored token, the fraction whose argmax agrees, and both perplexities.</summary>
    public static DivergenceResult Divergence(LogitsFunction reference, LogitsFunction modified, IReadOnlyList<int> tokens, int context, int stride, EvalProgress? progress = null)
    {
        RequireTokens(tokens);
        var windows = EvalWindow.Over(tokens.Count, context, stride).ToList();
        return Divergence((wi, input) => reference(input).squeeze(0).narrow(0, windows[wi].FirstScored, windows[wi].Length - 1 - windows[wi].FirstScored),
            modified, tokens, windows, progress);
    }

    /// <summary>The same, against reference logits recorded earlier (<see cref="RecordReference"/>), so the reference
    /// model need not be in memory beside the modified one.</summary>
    public static DivergenceResult Divergence(ReferenceLogits reference, LogitsFunction modified, IReadOnlyList<int> tokens, EvalProgress? progress = null)
    {
        RequireTokens(tokens);
        if (reference.TokenCount != tokens.Count) throw new ArgumentException("the reference was recorded on other tokens");
        return Divergence((wi, _) => reference.Scored[wi].alias(), modified, tokens, reference.Windows, progress);
    }

    /// <summary>Runs <paramref name="reference"/> over the evaluation windows once and keeps the logits of the scored
    /// positions (fp32, scored tokens x vocabulary): the same numbers <see cref="Divergence(LogitsFunction, LogitsFunction, IReadOnlyList{int}, int, int, EvalProgress?)"/>
    /// would compute, at a fraction of a second model's memory for short evaluation files.</summary>
    public static ReferenceLogits RecordReference(LogitsFunction reference, IReadOnlyList<int> tokens, int context, int stride, EvalProgress? progress = null)
    {
        RequireTokens(tokens);
        var windows = EvalWindow.Over(tokens.Count, context, stride).ToList();
        var scored = new List<Tensor>();
        for (int wi = 0; wi < windows.Count; wi++)
        {
            using var scope = torch.NewDisposeScope();
            EvalWindow w = windows[wi];
            (Tensor input, _) = Slice(tokens, w);
            // Kept in CPU memory whatever the model's device: the accelerator's memory is for the model.
            scored.Add(reference(input).squeeze(0).narrow(0, w.FirstScored, w.Length - 1 - w.FirstScored).cpu().contiguous().DetachFromDisposeScope());
            progress?.Invoke(wi + 1, windows.Count);
        }
        return new ReferenceLogits(tokens.Count, windows, scored);
    }

    /// <summary>Positions compared at a time: the float64 log-softmax of a 32000-word vocabulary over a 512-token
    /// window is 130 MB per temporary, and the comparison makes several.</summary>
    const int RowsPerChunk = 64;

    static DivergenceResult Divergence(Func<int, Tensor, Tensor> referenceScored, LogitsFunction modified, IReadOnlyList<int> tokens, IReadOnlyList<EvalWindow> windows, EvalProgress? progress)
    {
        RunningStat kl = new(), top1 = new(), nllRef = new(), nllMod = new();
        for (int wi = 0; wi < windows.Count; wi++)
        {
            using var scope = torch.NewDisposeScope();
            EvalWindow w = windows[wi];
            (Tensor input, Tensor targets) = Slice(tokens, w);
            long n = targets.shape[0];
            // Both sides on the CPU whatever the models' devices (float64 arithmetic, .data reads).
            Tensor p = referenceScored(wi, input).cpu();
            Tensor q = modified(input).squeeze(0).narrow(0, w.FirstScored, n).cpu();
            for (long start = 0; start < n; start += RowsPerChunk)
            {
                using var chunkScope = torch.NewDisposeScope();
                long m = Math.Min(RowsPerChunk, n - start);
                Tensor lp = F.log_softmax(p.narrow(0, start, m).to(ScalarType.Float64), -1);
                Tensor lq = F.log_softmax(q.narrow(0, start, m).to(ScalarType.Float64), -1);
                Tensor t = targets.narrow(0, start, m).unsqueeze(1);
                double[] klRows = (lp.exp() * (lp - lq)).sum(-1).data<double>().ToArray();
                long[] argP = lp.argmax(-1).data<long>().ToArray(), argQ = lq.argmax(-1).data<long>().ToArray();
                double[] nP = (-lp.gather(1, t)).squeeze(1).data<double>().ToArray();
                double[] nQ = (-lq.gather(1, t)).squeeze(1).data<double>().ToArray();
                for (int i = 0; i < m; i++)
                {
                    kl.Add(Math.Max(klRows[i], 0)); // tiny negative values are rounding
                    top1.Add(argP[i] == argQ[i] ? 1 : 0);
                    nllRef.Add(nP[i]);
                    nllMod.Add(nQ[i]);
                }
            }
            progress?.Invoke(wi + 1, windows.Count);
        }
        return new DivergenceResult(new Estimate(kl.Mean, kl.StandardError), new Estimate(top1.Mean, top1.StandardError),
            PerplexityOf(nllRef), PerplexityOf(nllMod), kl.Count);
    }

    /// <summary>exp(mean NLL); its standard error by the delta method (as llama.cpp reports it).</summary>
    static Estimate PerplexityOf(RunningStat nll)
    {
        double ppl = Math.Exp(nll.Mean);
        return new Estimate(ppl, ppl * nll.StandardError);
    }

    static (Tensor input, Tensor targets) Slice(IReadOnlyList<int> tokens, EvalWindow w)
    {
        var input = new long[w.Length];
        for (int i = 0; i < w.Length; i++) input[i] = tokens[w.Start + i];
        var targets = new long[w.Length - 1 - w.FirstScored];
        for (int i = 0; i < targets.Length; i++) targets[i] = tokens[w.Start + w.FirstScored + i + 1];
        return (torch.tensor(input).unsqueeze(0), torch.tensor(targets));
    }

    static void RequireTokens(IReadOnlyList<int> tokens)
    {
        if (tokens.Count < 2) throw new ArgumentException($"evaluation needs at least 2 tokens, got {tokens.Count}");
    }
}

/// <summary>A reference model's logits at the scored positions of every evaluation window.</summary>
public sealed class ReferenceLogits : IDisposable
{
    internal ReferenceLogits(int tokenCount, IReadOnlyList<EvalWindow> windows, List<Tensor> scored)
    {
        TokenCount = tokenCount; Windows = windows; Scored = scored;
    }

    /// <summary>Rebuilds recorded logits (e.g. read back from a cache file): one [scored, vocab] tensor per window of
    /// <c>EvalWindow.Over(tokenCount, context, stride)</c>, checked against that window plan.</summary>
    public static ReferenceLogits FromWindows(int tokenCount, int context, int stride, List<Tensor> scored)
    {
        var windows = EvalWindow.Over(tokenCount, context, stride).ToList();
        if (scored.Count != windows.Count) throw new ArgumentException($"{scored.Count} windows of logits, the plan has {windows.Count}");
        for (int i = 0; i < windows.Count; i++)
            if (scored[i].dim() != 2 || scored[i].shape[0] != windows[i].Length - 1 - windows[i].FirstScored)
                throw new ArgumentException($"window {i} has the wrong number of scored positions");
        return new ReferenceLogits(tokenCount, windows, scored);
    }

    public int TokenCount { get; }
    internal IReadOnlyList<EvalWindow> Windows { get; }
    /// <summary>Per window, the [scored positions, vocab] logits.</summary>
    public IReadOnlyList<Tensor> WindowLogits => Scored;
    internal List<Tensor> Scored { get; }
    public long Bytes => Scored.Sum(t => t.NumberOfElements * t.ElementSize);

    public void Dispose()
    {
        foreach (var t in Scored) t.Dispose();
    }
}
