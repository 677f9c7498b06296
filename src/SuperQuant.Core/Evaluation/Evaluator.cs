using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace SuperQuant.Core.Evaluation;

/// <summary>A model as the evaluator sees it: token ids [1, T] in, logits [1, T, vocab] out.</summary>
public delegate Tensor LogitsFunction(Tensor tokens);

public sealed record PerplexityResult(Estimate Perplexity, Estimate MeanNll, long TokensScored);

/// <summary>Progress of a long evaluation: windows done out of total.</summary>
public delegate void EvalProgress(int done, int total);

/// <summary>Perplexity (like llama.cpp's perplexity tool) and the divergence statistics of its --kl-divergence mode,
/// over strided windows (<see cref="EvalWindow"/>).</summary>
public static class Evaluator
{
    /// <summary>Positions compared at a time: the float64 log-softmax of a 32000-word vocabulary over a 512-token
    /// window is 130 MB per temporary, and the comparison makes several.</summary>
    const int RowsPerChunk = 64;

    public static PerplexityResult Perplexity(LogitsFunction model, IReadOnlyList<int> tokens, int context, int stride, EvalProgress? progress = null,
        CancellationToken cancel = default)
    {
        RequireTokens(tokens);
        var nll = new RunningStat();
        var windows = EvalWindow.Over(tokens.Count, context, stride).ToList();
        for (int wi = 0; wi < windows.Count; wi++)
        {
            cancel.ThrowIfCancellationRequested();
            using var scope = torch.NewDisposeScope();
            (Tensor input, Tensor targets) = EvalWindow.Slice(tokens, windows[wi]);
            Tensor logits = model(input).squeeze(0).narrow(0, windows[wi].FirstScored, targets.shape[0]);
            for (long start = 0; start < targets.shape[0]; start += RowsPerChunk)
            {
                using var chunk = torch.NewDisposeScope();
                long m = Math.Min(RowsPerChunk, targets.shape[0] - start);
                Tensor logp = F.log_softmax(logits.narrow(0, start, m).to(ScalarType.Float64), -1);
                Tensor t = targets.to(logp.device).narrow(0, start, m).unsqueeze(1);
                foreach (double v in (-logp.gather(1, t)).squeeze(1).cpu().data<double>()) nll.Add(v);
            }
            progress?.Invoke(wi + 1, windows.Count);
        }
        return new PerplexityResult(DivergenceAccumulator.PerplexityOf(nll), new Estimate(nll.Mean, nll.StandardError), nll.Count);
    }

    /// <summary>KL(P_reference || P_modified) and the rest of <see cref="DivergenceResult"/>, both models run live.</summary>
    public static DivergenceResult Divergence(LogitsFunction reference, LogitsFunction modified, IReadOnlyList<int> tokens, int context, int stride,
        EvalProgress? progress = null, CancellationToken cancel = default)
    {
        RequireTokens(tokens);
        var windows = EvalWindow.Over(tokens.Count, context, stride).ToList();
        var acc = new DivergenceAccumulator();
        for (int wi = 0; wi < windows.Count; wi++)
        {
            cancel.ThrowIfCancellationRequested();
            using var scope = torch.NewDisposeScope();
            EvalWindow w = windows[wi];
            (Tensor input, Tensor targets) = EvalWindow.Slice(tokens, w);
            long n = targets.shape[0];
            Tensor p = reference(input).squeeze(0).narrow(0, w.FirstScored, n);
            Tensor q = modified(input).squeeze(0).narrow(0, w.FirstScored, n).to(p.device);
            for (long start = 0; start < n; start += RowsPerChunk)
            {
                using var chunk = torch.NewDisposeScope();
                long m = Math.Min(RowsPerChunk, n - start);
                acc.AddLogits(p.narrow(0, start, m), q.narrow(0, start, m), targets.narrow(0, start, m));
            }
            progress?.Invoke(wi + 1, windows.Count);
        }
        return acc.Result();
    }

    /// <summary>The same against a recorded reference (<see cref="ReferenceFile"/>), read back one window at a time:
    /// memory does not grow with the number of tokens.</summary>
    public static DivergenceResult Divergence(ReferenceFile reference, LogitsFunction modified, IReadOnlyList<int> tokens,
        EvalProgress? progress = null, CancellationToken cancel = default)
    {
        RequireTokens(tokens);
        if (reference.TokenCount != tokens.Count) throw new ArgumentException("the reference was recorded on other tokens");
        var acc = new DivergenceAccumulator();
        for (int wi = 0; wi < reference.Windows.Count; wi++)
        {
            cancel.ThrowIfCancellationRequested();
            using var scope = torch.NewDisposeScope();
            EvalWindow w = reference.Windows[wi];
            (Tensor input, Tensor targets) = EvalWindow.Slice(tokens, w);
            long n = targets.shape[0];
            var (refLogits, argmax, nll) = reference.ReadWindow(wi);
            Tensor q = modified(input).squeeze(0).narrow(0, w.FirstScored, n).to(ScalarType.Float32).cpu();
            if (q.shape[1] != reference.Vocab) throw new ArgumentException($"the model gives {q.shape[1]} logits, the reference has {reference.Vocab}");
            for (long start = 0; start < n; start += RowsPerChunk)
            {
                using var chunk = torch.NewDisposeScope();
                int m = (int)Math.Min(RowsPerChunk, n - start);
                acc.Add(F.log_softmax(refLogits.narrow(0, start, m).to(ScalarType.Float64), -1),
                    F.log_softmax(q.narrow(0, start, m).to(ScalarType.Float64), -1),
                    targets.narrow(0, start, m), argmax.AsSpan((int)start, m).ToArray(), nll.AsSpan((int)start, m).ToArray());
            }
            progress?.Invoke(wi + 1, reference.Windows.Count);
        }
        return acc.Result();
    }

    static void RequireTokens(IReadOnlyList<int> tokens)
    {
        if (tokens.Count < 2) throw new ArgumentException($"evaluation needs at least 2 tokens, got {tokens.Count}");
    }
}
