using SuperQuant.Core.Llama;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Evaluation;

/// <summary>
/// Layer-major evaluation of a layer-streamed model (<see cref="LlamaWeights.Source"/>). The evaluator, the reference
/// recorder and the task scorer ask for one sequence's logits at a time, in an order known in advance (evaluation
/// windows, or task requests); a streamed model would read every block from disk once per sequence. This runs the next
/// sequences as one batch [sequences, tokens] (one pass over the blocks, each block applied to all their hidden states)
/// and hands out their logits in turn. Shorter sequences are padded on the right: attention is causal, so a position
/// never sees the padding after it, and only the real positions' logits are handed out. Batches are sized so that
/// their logits stay under <see cref="LogitBudgetBytes"/>; a request that is not the expected next sequence is run on
/// its own, so the answer is always the model's.
/// </summary>
public sealed class LayerMajorLogits : IDisposable
{
    /// <summary>Logits held per batch (fp32): 512 MiB, e.g. 8 windows of 512 tokens over a 32,000-word vocabulary.</summary>
    public const long LogitBudgetBytes = 512L << 20;

    readonly LlamaModel _model;
    readonly IReadOnlyList<int[]> _sequences;
    readonly int? _maxBatch;
    int _next;              // the sequence expected next
    int _batchStart = -1;   // first sequence of the held batch
    int _batchCount;
    Tensor? _batch;         // [sequences, longest, vocab]

    /// <summary>Passes over the blocks so far (for tests and the report).</summary>
    public int Passes { get; private set; }

    /// <summary>The sequences (token ids) that will be asked for, in order.</summary>
    public LayerMajorLogits(LlamaModel model, IReadOnlyList<int[]> sequences, int? maxBatch = null)
    {
        _model = model; _sequences = sequences; _maxBatch = maxBatch;
    }

    /// <summary>The windows of <paramref name="tokens"/> as <see cref="EvalWindow.Over"/> cuts them.</summary>
    public LayerMajorLogits(LlamaModel model, IReadOnlyList<int> tokens, int context, int stride, int? maxBatch = null)
        : this(model, EvalWindow.Over(tokens.Count, context,
            stride).Select(w => Enumerable.Range(w.Start, w.Length).Select(i => tokens[i]).ToArray()).ToList(), maxBatch)
    { }

    /// <summary>A <see cref="LogitsFunction"/>: [1, T] ids in, [1, T, vocab] logits out.</summary>
    public Tensor Logits(Tensor input)
    {
        if (_next >= _sequences.Count || !Matches(input, _sequences[_next]))
        {
            Passes++;
            return _model.Forward(input); // not the sequence expected: answer it directly
        }
        int i = _next++;
        if (_batch is null || i < _batchStart || i >= _batchStart + _batchCount) RunBatchFrom(i);
        return _batch![i - _batchStart].narrow(0, 0, _sequences[i].Length).unsqueeze(0); // a view into the held batch
    }

    void RunBatchFrom(int first)
    {
        _batch?.Dispose();
        _batch = null;
        long vocabBytes = 4L * _model.Config.VocabSize;
        int longest = _sequences[first].Length, count = 1;
        while (first + count < _sequences.Count && count < (_maxBatch ?? 64))
        {
            int wider = Math.Max(longest, _sequences[first + count].Length);
            if ((long)(count + 1) * wider * vocabBytes > LogitBudgetBytes) break;
            longest = wider; count++;
        }
        var ids = new long[(long)count * longest]; // padding: token 0, after each sequence's end
        for (int b = 0; b < count; b++)
        {
            int[] s = _sequences[first + b];
            for (int t = 0; t < s.Length; t++) ids[(long)b * longest + t] = s[t];
        }
        using var scope = torch.NewDisposeScope();
        using var input = torch.tensor(ids, new long[] { count, longest }, dtype: ScalarType.Int64); // host: Forward moves ids to the model's device
        _batch = _model.Forward(input).DetachFromDisposeScope();
        _batchStart = first;
        _batchCount = count;
        Passes++;
    }

    static bool Matches(Tensor input, int[] expected)
    {
        if (input.dim() != 2 || input.shape[0] != 1 || input.shape[1] != expected.Length) return false;
        using var ids64 = input.to_type(ScalarType.Int64);
        using var cpu = ids64.cpu(); var ids = cpu.data<long>(); // a [1, T] id row, read on the host
        for (int t = 0; t < expected.Length; t++) if (ids[t] != expected[t]) return false;
        return true;
    }

    public void Dispose()
    {
        _batch?.Dispose();
        _batch = null;
    }
}
