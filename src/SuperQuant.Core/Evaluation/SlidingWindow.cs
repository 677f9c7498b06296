namespace SuperQuant.Core.Evaluation;

/// <summary>
/// Strided evaluation windows over a long token stream (the Hugging Face perplexity recipe): each window holds at most
/// <c>context</c> tokens and scores only predictions no earlier window scored, so every token after the first is
/// scored exactly once, and after the first window each with at least <c>context - stride</c> tokens of history.
/// </summary>
public readonly record struct EvalWindow(int Start, int Length, int FirstScored)
{
    /// <summary>Enumerates windows. Position i of a window predicts token Start+i+1; positions &gt;= FirstScored count.
    /// <paramref name="stride"/> (new tokens per window) must be below <paramref name="context"/>: the token just
    /// before the first new target has to be inside the window to predict it.</summary>
    public static IEnumerable<EvalWindow> Over(int tokenCount, int context, int stride)
    {
        if (context < 2) throw new ArgumentOutOfRangeException(nameof(context), "context must be at least 2 tokens");
        if (stride < 1 || stride >= context) throw new ArgumentOutOfRangeException(nameof(stride), $"stride must be in 1..{context - 1} (context - 1)");
        int done = 0; // targets 1..done are scored
        bool first = true;
        while (done < tokenCount - 1)
        {
            int end = first ? Math.Min(context, tokenCount) : Math.Min(done + 1 + stride, tokenCount); // exclusive
            int start = Math.Max(0, end - context);
            yield return new EvalWindow(start, end - start, done - start);
            done = end - 1;
            first = false;
        }
    }

    /// <summary>The window's input ids [1, Length] and the actual next tokens of its scored positions.</summary>
    public static (TorchSharp.torch.Tensor Input, TorchSharp.torch.Tensor Targets) Slice(IReadOnlyList<int> tokens, EvalWindow w)
    {
        var input = new long[w.Length];
        for (int i = 0; i < w.Length; i++) input[i] = tokens[w.Start + i];
        var targets = new long[w.Length - 1 - w.FirstScored];
        for (int i = 0; i < targets.Length; i++) targets[i] = tokens[w.Start + w.FirstScored + i + 1];
        return (TorchSharp.torch.tensor(input).unsqueeze(0), TorchSharp.torch.tensor(targets)); // host: Forward moves the ids, scorers move the targets
    }
}
