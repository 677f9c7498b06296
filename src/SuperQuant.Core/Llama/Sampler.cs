using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Core.Llama;

/// <summary>Token generation for evaluation streams and demos. With plain weights it keeps a <see cref="KvCache"/> and
/// feeds one token per step; with forward hooks installed (activation quantization, whose per-tensor scales and medians
/// depend on the whole input) and past the model's context length it recomputes the (windowed) sequence per step, so
/// the tokens are those a full forward pass predicts.</summary>
public static class Sampler
{
    /// <summary>Appends <paramref name="count"/> tokens to <paramref name="prompt"/>. Temperature 0 is greedy;
    /// otherwise sampling is reproducible for a given <paramref name="seed"/>.</summary>
    public static int[] Generate(LlamaModel model, IReadOnlyList<int> prompt, int count, double temperature, int seed, Action<int, int>? progress = null,
        bool useCache = true, Action<IReadOnlyList<int>>? onToken = null, int? stopToken = null, CancellationToken cancel = default)
    {
        if (prompt.Count == 0) throw new ArgumentException("the prompt needs at least one token (for llama2.c models, 1 = BOS)");
        var rng = new Random(seed);
        var tokens = new List<int>(prompt);
        int window = model.Config.MaxPositionEmbeddings;
        using var cache = useCache && model.Hooks is null ? new KvCache(model.Config.NumLayers, Math.Min(window, prompt.Count + count)) : null;
        for (int step = 0; step < count; step++)
        {
            cancel.ThrowIfCancellationRequested(); // SIGTERM/Ctrl+C: no output file from a generation cut short
            using var scope = torch.NewDisposeScope();
            Tensor logits;
            if (cache is not null && tokens.Count <= window)
            {
                // First step: the whole prompt; then only the token added last.
                int from = (int)cache.Length;
                using var ids = torch.tensor(tokens.Skip(from).Select(t => (long)t).ToArray(), device: model.Device);
                logits = model.Forward(ids, cache).squeeze(0);
            }
            else
            {
                int from = Math.Max(0, tokens.Count - window);
                logits = model.Forward(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(tokens)[from..]);
            }
            double[] last = logits[-1].to_type(ScalarType.Float64).cpu().data<double>().ToArray();
            tokens.Add(Pick(last, temperature, rng));
            progress?.Invoke(step + 1, count);
            onToken?.Invoke(tokens);
            if (stopToken is int stop && tokens[^1] == stop) break;
        }
        return tokens.ToArray();
    }

    /// <summary>The next token from one position's logits: the argmax at temperature 0, else a draw from the
    /// tempered softmax.</summary>
    public static int Pick(double[] logits, double temperature, Random rng) => temperature <= 0 ? ArgMax(logits) : Sample(logits, temperature, rng);

    static int ArgMax(double[] v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }

    static int Sample(double[] logits, double temperature, Random rng)
    {
        double max = logits.Max(), sum = 0;
        var p = new double[logits.Length];
        for (int i = 0; i < p.Length; i++) { p[i] = Math.Exp((logits[i] - max) / temperature); sum += p[i]; }
        double u = rng.NextDouble() * sum, acc = 0;
        for (int i = 0; i < p.Length; i++)
        {
            acc += p[i];
            if (u < acc) return i;
        }
        return p.Length - 1;
    }
}
