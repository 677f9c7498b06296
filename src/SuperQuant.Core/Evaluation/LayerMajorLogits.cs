using SuperQuant.Core.Llama;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Evaluation;

/// <summary>
/// Layer-major evaluation of a layer-streamed model (<see cref="LlamaWeights.Source"/>). The evaluator and the reference
/// recorder ask for one window's logits at a time, in window order; a streamed model would read every block from disk
/// once per window. This runs the next windows of equal length as one batch [windows, tokens] (one pass over the
/// blocks, each block applied to all their hidden states) and hands out their logits in turn. Batches are sized so
/// that their logits stay under <see cref="LogitBudgetBytes"/>; a request that is not the expected next window is run
/// on its own, so the answer is always the model's.
/// </summary>
public sealed class LayerMajorLogits : IDisposable
{
    /// <summary>Logits held per batch (fp32): 512 MiB, e.g. 8 windows of 512 tokens over a 32,000-word vocabulary.</summary>
    public const long LogitBudgetBytes = 512L << 20;

    readonly LlamaModel _model;
    readonly IReadOnlyList<int> _tokens;
    readonly IReadOnlyList<EvalWindow> _windows;
    readonly int _maxBatch;
    int _next;              // the window expected next
    int _batchStart = -1;   // first window of the held batch
    Tensor? _batch;         // [windows, tokens, vocab]

    /// <summary>Passes over the blocks so far (for tests and the report).</summary>
    public int Passes { get; private set; }

    public LayerMajorLogits(LlamaModel model, IReadOnlyList<int> tokens, IReadOnlyList<EvalWindow> windows, int? maxBatch = null)
    {
        _model = model; _tokens = tokens; _windows = windows;
        long perWindow = Math.Max(1, (long)windows.Select(w => w.Length).DefaultIfEmpty(1).Max() * model.Config.VocabSize * 4);
        _maxBatch = maxBatch ?? (int)Math.Clamp(LogitBudgetBytes / perWindow, 1, 64);
    }

    /// <summary>Windows of <paramref name="tokens"/> as <see cref="EvalWindow.Over"/> cuts them.</summary>
    public LayerMajorLogits(LlamaModel model, IReadOnlyList<int> tokens, int context, int stride, int? maxBatch = null)
        : this(model, tokens, EvalWindow.Over(tokens.Count, context, stride).ToList(), maxBatch) { }

    /// <summary>A <see cref="LogitsFunction"/>: [1, T] ids in, [1, T, vocab] logits out.</summary>
    public Tensor Logits(Tensor input)
    {
        if (_next >= _windows.Count || !Matches(input, _windows[_next]))
        {
            Passes++;
            return _model.Forward(input); // not the window expected: answer it directly
        }
        int i = _next++;
        if (_batch is null || i < _batchStart || i >= _batchStart + _batch.shape[0]) RunBatchFrom(i);
        return _batch![i - _batchStart].unsqueeze(0); // a view into the held batch
    }

    void RunBatchFrom(int first)
    {
        _batch?.Dispose();
        _batch = null;
        int length = _windows[first].Length, count = 1;
        while (count < _maxBatch && first + count < _windows.Count && _windows[first + count].Length == length) count++;
        var ids = new long[(long)count * length];
        for (int b = 0; b < count; b++)
            for (int t = 0; t < length; t++) ids[(long)b * length + t] = _tokens[_windows[first + b].Start + t];
        using var scope = torch.NewDisposeScope();
        using var input = torch.tensor(ids, new long[] { count, length }, dtype: ScalarType.Int64); // host: Forward moves ids to the model's device
        _batch = _model.Forward(input).DetachFromDisposeScope();
        _batchStart = first;
        Passes++;
    }

    bool Matches(Tensor input, EvalWindow w)
    {
        if (input.dim() != 2 || input.shape[0] != 1 || input.shape[1] != w.Length) return false;
        using var ids64 = input.to_type(ScalarType.Int64);
        using var cpu = ids64.cpu(); var ids = cpu.data<long>(); // a [1, T] id row, read on the host
        for (int t = 0; t < w.Length; t++) if (ids[t] != _tokens[w.Start + t]) return false;
        return true;
    }

    public void Dispose()
    {
        _batch?.Dispose();
        _batch = null;
    }
}
