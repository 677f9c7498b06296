using SuperQuant.Core.Llama;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Quantization;

/// <summary>
/// llama.cpp's importance matrix (its imatrix tool): for every linear layer, the mean of x_j^2 over calibration tokens
/// for each input column j. A k-quant's scale search weighted by it spends its precision where the inputs are large,
/// which is where rounding error reaches the output (the error of y = W x is sum_j (W_ij - Q_ij) x_j). The super
/// activation's input channel gets a huge weight, so the super weight's column is kept accurately.
/// </summary>
public sealed class ImportanceRecorder : IForwardHooks
{
    /// <summary>Widest input whose full second moment X^T X / n is kept (4096^2 float64 = 128 MiB).</summary>
    public const int MaxCovarianceWidth = 4096;

    readonly Dictionary<LinearSite, (Tensor Sum, long Count)> _sums = new();
    readonly Dictionary<LinearSite, Tensor> _gram = new();
    readonly bool _covariance;
    readonly int _skipFirst;

    ImportanceRecorder(bool covariance, int skipFirst = 0) { _covariance = covariance; _skipFirst = skipFirst; }

    public Tensor OnLinearInput(LinearSite site, Tensor input)
    {
        using var _ = torch.no_grad();
        Tensor kept = _skipFirst > 0 && input.dim() == 3 && input.shape[1] > _skipFirst ? input.narrow(1, _skipFirst, input.shape[1] - _skipFirst) : input;
        Tensor x = kept.reshape(-1, input.shape[^1]).to(ScalarType.Float64);
        Tensor s = x.pow(2).sum(new long[] { 0 }).cpu(); // not sum(0): TorchSharp binds that 0 to a dtype
        if (_sums.TryGetValue(site, out var acc))
        {
            acc.Sum.add_(s);
            _sums[site] = (acc.Sum, acc.Count + x.shape[0]);
            s.Dispose();
        }
        else _sums[site] = (s.DetachFromDisposeScope(), x.shape[0]);
        // q/k/v (and gate/up) read the same input: one covariance serves the group, kept under its first member.
        if (_covariance && x.shape[1] <= MaxCovarianceWidth && SpilledInputs.Owner(site) == site)
        {
            Tensor g = x.t().matmul(x).cpu();
            if (_gram.TryGetValue(site, out var acc2)) { acc2.add_(g); g.Dispose(); }
            else _gram[site] = g.DetachFromDisposeScope();
        }
        return input;
    }

    /// <summary>Per linear layer, X^T X / n of its inputs on the calibration data (the layer-output error of a weight
    /// change dW is dW H dW^T); q/k/v share q's, gate/up share gate's. Only inputs up to
    /// <see cref="MaxCovarianceWidth"/> wide.</summary>
    public static Dictionary<LinearSite, Tensor> Covariances(LlamaModel model, IReadOnlyList<int> tokens, int context, int maxTokens = 1 << 16,
        CancellationToken cancel = default)
    {
        var rec = Run(model, tokens, context, maxTokens, cancel, covariance: true);
        var result = new Dictionary<LinearSite, Tensor>();
        foreach (var (site, g) in rec._gram)
        {
            long n = rec._sums[site].Count;
            Tensor h = (g / Math.Max(1, n)).to(ScalarType.Float32).DetachFromDisposeScope();
            g.Dispose();
            result[site] = h;
            foreach (var other in SpilledInputs.Sharing(site)) result[other] = h;
        }
        foreach (var (s, _) in rec._sums.Values) s.Dispose();
        return result;
    }

    static ImportanceRecorder Run(LlamaModel model, IReadOnlyList<int> tokens, int context, int maxTokens, CancellationToken cancel, bool covariance,
        int skipFirst = 0)
    {
        var rec = new ImportanceRecorder(covariance, skipFirst);
        IForwardHooks? previous = model.Hooks;
        model.Hooks = rec;
        try { ForEachWindow(model, tokens, context, maxTokens, cancel); }
        finally { model.Hooks = previous; }
        return rec;
    }

    /// <summary>Runs the model's forward pass (its hooks recording) over the first <paramref name="maxTokens"/> of
    /// <paramref name="tokens"/> in windows of <paramref name="context"/>; <paramref name="afterWindow"/> hears each
    /// window's length.</summary>
    public static void ForEachWindow(LlamaModel model, IReadOnlyList<int> tokens, int context, int maxTokens, CancellationToken cancel,
        Action<int>? afterWindow = null)
    {
        int total = Math.Min(tokens.Count, maxTokens);
        for (int start = 0; start < total; start += context)
        {
            cancel.ThrowIfCancellationRequested();
            int n = Math.Min(context, total - start);
            if (n < 1) break;
            var window = new int[n];
            for (int i = 0; i < n; i++) window[i] = tokens[start + i];
            model.Forward(window).Dispose();
            afterWindow?.Invoke(n);
        }
    }

    /// <summary>Runs <paramref name="model"/> over <paramref name="tokens"/> in windows of its context (at most
    /// <paramref name="maxTokens"/> tokens) and returns the per-column mean squares of every linear input.
    /// <paramref name="skipFirstPositions"/> leaves each window's first positions out of the means (the attention-sink
    /// position carries the massive activations; docs/gguf.md, "Why an imatrix can make llama.cpp worse").</summary>
    public static Dictionary<LinearSite, float[]> Record(LlamaModel model, IReadOnlyList<int> tokens, int context, int maxTokens = 1 << 16,
        CancellationToken cancel = default, int skipFirstPositions = 0)
    {
        var rec = Run(model, tokens, context, maxTokens, cancel, covariance: false, skipFirstPositions);
        var result = new Dictionary<LinearSite, float[]>();
        foreach (var (site, (sum, count)) in rec._sums)
        {
            using (sum) result[site] = (sum / Math.Max(1, count)).to(ScalarType.Float32).cpu().data<float>().ToArray();
        }
        return result;
    }
}
