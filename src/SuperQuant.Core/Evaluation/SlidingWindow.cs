namespace SuperQuant.Core.Evaluation;

/// <summary>
/// Hugging Face-style strided evaluation windows over a long token stream: each window holds up to
/// <c>context</c> tokens and scores only the predictions not scored by an earlier window, so every token after the
/// first is scored exactly once and (after the first window) with at least <c>context - stride</c> tokens of history.
/// </summary>
public readonly record struct EvalWindow(int Start, int Length, int FirstScored)
{
    /// <summary>Enumerates windows. Position i in a window predicts token Start+i+1; positions &gt;= FirstScored count.</summary>
    public static IEnumerable<EvalWindow> Over(int tokenCount, int context, int stride)
    {
        if (context < 2) throw new ArgumentOutOfRangeException(nameof(context), "context must be at least 2 tokens");
        if (stride < 1 || stride > context) throw new ArgumentOutOfRangeException(nameof(stride), $"stride must be in 1..context ({context})");
        int scoredUpTo = 0; // predictions of tokens [1, scoredUpTo] are done
        for (int start = 0; scoredUpTo < tokenCount - 1; start += stride)
        {
            int length = Math.Min(context, tokenCount - start);
            int end = start + length - 1;          // last target token index
            int first = scoredUpTo - start;        // position predicting token scoredUpTo+1
            yield return new EvalWindow(start, length, Math.Max(first, 0));
            scoredUpTo = end;
        }
    }
}
