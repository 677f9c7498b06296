using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Evaluation;

/// <summary>One tokenized request: the continuation's ids after the context's, and the continuation's UTF-8 byte
/// length (acc_norm's denominator).</summary>
public sealed record ScoredRequest(int[] Context, int[] Continuation, int ContinuationBytes);

/// <summary>A tokenized document: its requests (one per choice) and the right choice.</summary>
public sealed record ScoredDocument(IReadOnlyList<ScoredRequest> Requests, int Gold);

/// <summary>Accuracy (and acc_norm for multiple choice, perplexity for LAMBADA) of one task, with standard errors
/// as lm-evaluation-harness reports them (sample standard deviation / sqrt(n)).</summary>
public sealed record TaskScore(string Task, int Documents, Estimate Accuracy, Estimate? AccuracyNorm, Estimate? Perplexity);

/// <summary>
/// Zero-shot scoring by log-likelihood, lm-evaluation-harness's loglikelihood requests: the model reads context +
/// continuation (all but the last token, the context cut from the left to fit the window) and the continuation's
/// log-probabilities are summed. Multiple choice picks the highest sum (acc) or the highest sum per byte (acc_norm);
/// LAMBADA counts a document right when every continuation token is the argmax, and its perplexity is
/// exp(-mean log-likelihood) over documents. The model is any <see cref="LogitsFunction"/> (our forward pass or
/// llama.cpp), so each artifact is scored by the runtime that ships it.
/// </summary>
public static class TaskScorer
{
    /// <summary>Summed log-likelihood of the continuation and whether each of its tokens was the greedy choice.</summary>
    public static (double LogLikelihood, bool Greedy) LogLikelihood(LogitsFunction model, ScoredRequest r, int maxContext)
    {
        int[] input = InputOf(r, maxContext);
        int n = Math.Min(r.Continuation.Length, input.Length);
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        Tensor ids = torch.tensor(input.Select(i => (long)i).ToArray()).unsqueeze(0); // host: the model moves the ids
        Tensor logits = model(ids)[0];
        Tensor tail = logits.narrow(0, logits.shape[0] - n, n).to_type(ScalarType.Float64);
        Tensor target = torch.tensor(r.Continuation[^n..].Select(i => (long)i).ToArray(), device: tail.device);
        // On the model's device; two scalars come back.
        double ll = tail.log_softmax(-1).gather(1, target.unsqueeze(1)).sum().item<double>();
        bool greedy = tail.argmax(-1).eq(target).all().item<bool>();
        return (ll, greedy);
    }

    /// <summary>What the model reads for a request: context + continuation without its last token, cut from the left
    /// to <paramref name="maxContext"/>.</summary>
    public static int[] InputOf(ScoredRequest r, int maxContext)
    {
        if (r.Continuation.Length == 0) throw new ArgumentException("empty continuation");
        int[] all = r.Context.Concat(r.Continuation).ToArray();
        int keep = Math.Min(all.Length - 1, maxContext);
        return all[(all.Length - 1 - keep)..^1];
    }

    /// <summary>Every input <see cref="Score"/> will ask the model for, in its order (for batching them ahead).</summary>
    public static IReadOnlyList<int[]> Inputs(IReadOnlyList<ScoredDocument> docs, int maxContext) =>
        docs.SelectMany(d => d.Requests).Select(r => InputOf(r, maxContext)).ToList();

    public static TaskScore Score(string task, bool lastWord, IReadOnlyList<ScoredDocument> docs, LogitsFunction model, int maxContext,
        EvalProgress? progress = null, CancellationToken cancel = default)
    {
        int total = docs.Sum(d => d.Requests.Count), done = 0;
        var correct = new List<double>();
        var correctNorm = new List<double>();
        double llSum = 0;
        foreach (var doc in docs)
        {
            cancel.ThrowIfCancellationRequested();
            var scores = new List<(double Ll, bool Greedy, int Bytes)>();
            foreach (var r in doc.Requests)
            {
                var (ll, greedy) = LogLikelihood(model, r, maxContext);
                scores.Add((ll, greedy, r.ContinuationBytes));
                progress?.Invoke(++done, total);
            }
            if (lastWord)
            {
                correct.Add(scores[0].Greedy ? 1 : 0);
                llSum += scores[0].Ll;
                continue;
            }
            correct.Add(ArgMax(scores.Select(s => s.Ll)) == doc.Gold ? 1 : 0);
            correctNorm.Add(ArgMax(scores.Select(s => s.Ll / Math.Max(1, s.Bytes))) == doc.Gold ? 1 : 0);
        }
        return new TaskScore(task, docs.Count, Mean(correct), lastWord ? null : Mean(correctNorm),
            lastWord ? new Estimate(Math.Exp(-llSum / docs.Count), double.NaN) : null);
    }

    /// <summary>The first index of the maximum, as numpy's argmax (ties go to the earlier choice).</summary>
    static int ArgMax(IEnumerable<double> values)
    {
        int best = -1, i = 0;
        double max = double.NegativeInfinity;
        foreach (double v in values)
        {
            if (best < 0 || v > max) { max = v; best = i; }
            i++;
        }
        return best;
    }

    static Estimate Mean(IReadOnlyList<double> xs)
    {
        double mean = xs.Average();
        double se = xs.Count > 1 ? Math.Sqrt(xs.Sum(x => (x - mean) * (x - mean)) / (xs.Count - 1) / xs.Count) : double.NaN;
        return new Estimate(mean, se);
    }
}
