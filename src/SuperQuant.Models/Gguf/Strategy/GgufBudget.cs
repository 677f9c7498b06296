using System.Globalization;
using SuperQuant.Core;
using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Llama;
using SuperQuant.Manifest;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Models.Gguf;

/// <summary>
/// Per-tensor types for a size budget, chosen from each tensor's measured sensitivity on the calibration data (the
/// direction of llama.cpp's proposal for target-size quantization, ggml-org/llama.cpp pull 15550). For every matrix
/// and every type of <see cref="Ladder"/> that its rows hold: the layer-output error of its imatrix-weighted rows,
/// E = sum over rows of dw H dw^T (H = X^T X / n of the layer's calibration inputs; the imatrix diagonal where H is
/// not kept; token-frequency-weighted |dw|^2 for the token embedding). How much a layer's output error costs the
/// model is measured once per tensor: its error at a probe type is injected into the forward pass (a hook adds
/// x dW^T to the layer's output) and the KL divergence from the unquantized model on calibration windows is taken;
/// gain = KL / E. The predicted KL of a choice is then gain * E, summed over tensors, and the choice minimises it
/// under the budget: a Lagrangian sweep (each tensor takes argmin gain E + lambda bytes) followed by a greedy fill of
/// what is left, best KL saved per byte first. Norms and biases stay F32; the file's rows are llama.cpp's imatrix
/// rows for the chosen types.
/// </summary>
public static class GgufBudget
{
    /// <summary>The types a tensor may get, smallest first.</summary>
    public static readonly GgmlType[] Ladder =
    {
        GgmlType.IQ2_S, GgmlType.Q2_K, GgmlType.IQ3_XXS, GgmlType.IQ3_S, GgmlType.Q3_K, GgmlType.IQ4_XS, GgmlType.Q4_K,
        GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.Q8_0, GgmlType.F16,
    };

    /// <summary>The type whose error is injected to measure a tensor's gain.</summary>
    const GgmlType ProbeType = GgmlType.Q3_K;

    public sealed record Option(GgmlType Type, long Bytes, double Error);
    public sealed record TensorChoice(string Name, IReadOnlyList<Option> Options, double Gain, GgmlType Chosen)
    {
        public Option ChosenOption => Options.First(o => o.Type == Chosen);
    }

    /// <summary>The chosen types (matrix tensors only) and what the choice predicts.</summary>
    public sealed record Plan(IReadOnlyList<TensorChoice> Tensors, long MatrixBytes, double PredictedKl)
    {
        public IReadOnlyDictionary<string, GgmlType> Types => Tensors.ToDictionary(t => t.Name, t => t.Chosen);
        public long MinimumBytes => Tensors.Sum(t => t.Options.Min(o => o.Bytes));
        public long MaximumBytes => Tensors.Sum(t => t.Options.Max(o => o.Bytes));
    }

    /// <summary>Errors and gains of every matrix tensor (the expensive part), with no budget applied yet.</summary>
    public static IReadOnlyList<TensorChoice> Measure(LlamaModel model, IReadOnlyDictionary<LinearSite, float[]> importance,
        IReadOnlyDictionary<LinearSite, Tensor>? covariance, IReadOnlyList<int> calibration, int context, int probeTokens = 2048,
        CancellationToken cancel = default, Action<int, int>? progress = null)
    {
        using var _ = torch.no_grad();
        var c = model.Config;
        var layout = GgufExporter.Layout(model).Where(t => t.IsMatrix).ToList();
        var frequency = TokenFrequency(calibration, c.VocabSize);
        // The reference log-probabilities are kept: at most 2^26 floats (256 MiB), whatever the vocabulary.
        probeTokens = (int)Math.Max(Math.Min(context, calibration.Count), Math.Min(probeTokens, (1L << 26) / c.VocabSize));
        int[] probe = calibration.Take(Math.Min(calibration.Count, probeTokens)).ToArray();
        var reference = ReferenceLogProbs(model, probe, context, cancel);
        var result = new List<TensorChoice>();
        int done = 0;
        foreach (var t in layout)
        {
            cancel.ThrowIfCancellationRequested();
            var options = new List<Option>();
            using (var scope = torch.NewDisposeScope())
            {
                Tensor values = t.Values();
                float[]? imp = t.Site is LinearSite s && importance.TryGetValue(s, out var w) ? w : null;
                Tensor? h = t.Site is LinearSite hs && covariance?.TryGetValue(hs, out var hv) == true && hv.shape[0] == t.RowLength ? hv.cpu() : null;
                foreach (var type in Ladder)
                {
                    var shape = new GgufTensorShape(t.Name, t.RowLength, true);
                    GgmlType effective = GgufMix.Fallback(shape, type).Type;
                    if (options.Any(o => o.Type == effective)) continue;
                    Tensor dw = Dequantized(values, effective, imp) - values;
                    options.Add(new Option(effective, GgmlQuants.RowBytes(effective, t.RowLength) * t.Rows,
                        Error(dw, h, imp, t.Site is null ? frequency : null)));
                }
            }
            double probeError = options.First(o => o.Type == GgufMix.Fallback(new GgufTensorShape(t.Name, t.RowLength, true), ProbeType).Type).Error;
            double kl = probeError > 0 ? ProbeKl(model, t, importance, probe, context, reference, cancel) : 0;
            result.Add(new TensorChoice(t.Name, Pareto(options), probeError > 0 ? Math.Max(0, kl) / probeError : 0, options[0].Type));
            progress?.Invoke(++done, layout.Count);
        }
        return result;
    }

    /// <summary>The smallest and largest file this model can be written as (every matrix at the smallest type that fits
    /// its rows, or F16), with the other tensors and the header estimated: budgets outside are refused up front.</summary>
    public static (long Minimum, long Maximum) Bounds(LlamaModel model)
    {
        long min = 0, max = 0, other = 0;
        foreach (var t in GgufExporter.Layout(model))
        {
            if (!t.IsMatrix) { other += 4 * t.Rows * t.RowLength; continue; }
            var sizes = Ladder.Select(type => GgmlQuants.RowBytes(GgufMix.Fallback(new GgufTensorShape(t.Name, t.RowLength, true), type).Type,
                t.RowLength) * t.Rows).ToList();
            min += sizes.Min(); max += sizes.Max();
        }
        return (min + other, max + other);
    }

    /// <summary>Writes the file for <paramref name="target"/>: allocates, writes, and when the header and padding moved
    /// the size off the budget, allocates again for the measured overhead and rewrites.</summary>
    public static (GgufWriteResult Result, Plan Plan) Write(string path, LlamaModel model, GgufTarget target, IReadOnlyList<TensorChoice> measured,
        IReadOnlyDictionary<LinearSite, float[]> importance, string name, GgufVocabulary? vocabulary, int? context)
    {
        long parameters = model.Config.ParameterCount, targetBytes = target.BytesFor(parameters);
        long overhead = GgufExporter.Layout(model).Where(t => !t.IsMatrix).Sum(t => 4 * t.Rows * t.RowLength) + 4096;
        GgufWriteResult? result = null;
        Plan? plan = null;
        for (int pass = 0; pass < 3; pass++)
        {
            plan = Allocate(measured, targetBytes - overhead);
            result = GgufExporter.Write(path, model, new GgufExport
            {
                FileType = target.NearestNamedType(parameters), Name = name, Vocabulary = vocabulary, Context = context,
                Importance = importance, ImatrixRows = true, TypeOverrides = plan.Types, OverrideReason = $"budget ({target})",
            });
            long measuredOverhead = result.FileBytes - plan.MatrixBytes;
            if (measuredOverhead == overhead || (result.FileBytes <= targetBytes && result.FileBytes >= targetBytes * 0.99)) break;
            overhead = measuredOverhead;
        }
        return (result!, plan!);
    }

    /// <summary>The choice for <paramref name="matrixBudget"/> bytes of matrix data: never above it when the smallest
    /// types fit, as close below as the tensors' sizes allow.</summary>
    public static Plan Allocate(IReadOnlyList<TensorChoice> tensors, long matrixBudget)
    {
        // Lagrangian sweep: a larger lambda prices bytes higher; find the smallest lambda whose choice fits.
        int[] Choose(double lambda) => tensors.Select(t =>
        {
            int best = 0;
            for (int i = 1; i < t.Options.Count; i++)
                if (t.Gain * t.Options[i].Error + lambda * t.Options[i].Bytes < t.Gain * t.Options[best].Error + lambda * t.Options[best].Bytes) best = i;
            return best;
        }).ToArray();
        long Bytes(int[] pick) => tensors.Select((t, i) => t.Options[pick[i]].Bytes).Sum();
        int[] choice = Choose(0);
        if (Bytes(choice) > matrixBudget)
        {
            double lo = 0, hi = 1e-12;
            while (Bytes(Choose(hi)) > matrixBudget && hi < 1e30) hi *= 4;
            for (int iter = 0; iter < 200; iter++)
            {
                double mid = (lo + hi) / 2;
                if (Bytes(Choose(mid)) > matrixBudget) lo = mid; else hi = mid;
            }
            choice = Choose(hi);
            if (Bytes(choice) > matrixBudget) choice = tensors.Select(_ => 0).ToArray(); // only the smallest types fit (or none)
            // Greedy fill: the upgrade that saves the most predicted KL per byte, while it fits.
            long used = Bytes(choice);
            while (true)
            {
                int bestTensor = -1, bestOption = -1;
                double bestRate = 0;
                for (int i = 0; i < tensors.Count; i++)
                {
                    var t = tensors[i];
                    var current = t.Options[choice[i]];
                    for (int o = choice[i] + 1; o < t.Options.Count; o++)
                    {
                        long extra = t.Options[o].Bytes - current.Bytes;
                        if (extra <= 0 || used + extra > matrixBudget) continue;
                        double rate = t.Gain * (current.Error - t.Options[o].Error) / extra;
                        if (rate > bestRate) { bestRate = rate; bestTensor = i; bestOption = o; }
                    }
                }
                if (bestTensor < 0) break;
                used += tensors[bestTensor].Options[bestOption].Bytes - tensors[bestTensor].Options[choice[bestTensor]].Bytes;
                choice[bestTensor] = bestOption;
            }
        }
        var chosen = tensors.Select((t, i) => t with { Chosen = t.Options[choice[i]].Type }).ToList();
        return new Plan(chosen, Bytes(choice), chosen.Sum(t => t.Gain * t.ChosenOption.Error));
    }

    /// <summary>Options no other option beats in both bytes and error, smallest first.</summary>
    static IReadOnlyList<Option> Pareto(List<Option> options)
    {
        var sorted = options.OrderBy(o => o.Bytes).ThenBy(o => o.Error).ToList();
        var kept = new List<Option>();
        foreach (var o in sorted)
            if (kept.Count == 0 || o.Error < kept[^1].Error) kept.Add(o);
        return kept;
    }

    /// <summary>Host tensors in and out: the ggml formats work on host floats.</summary>
    static Tensor Dequantized(Tensor values, GgmlType type, float[]? importance)
    {
        var format = GgmlFormat.Of(type);
        long rowLength = values.shape[1];
        float[] x = values.data<float>().ToArray(); // host: values come from Layout (.cpu()) or a .cpu() copy
        byte[] q = GgmlQuants.Quantize(type, x, rowLength, format.UsesImportance ? importance : null);
        return torch.tensor(GgmlQuants.Dequantize(type, q, x.Length), values.shape); // host
    }

    /// <summary>dw H dw^T summed over rows (the squared layer-output error on the calibration inputs), the imatrix
    /// diagonal without H, token-frequency-weighted |dw|^2 for the token embedding.</summary>
    static double Error(Tensor dw, Tensor? h, float[]? importance, Tensor? frequency)
    {
        if (h is not null) return (dw.matmul(h) * dw).sum().item<float>();
        if (importance is not null) return (dw.pow(2) * torch.tensor(importance)).sum().item<float>(); // host: dw and H are host tensors
        if (frequency is not null) return (dw.pow(2).sum(new long[] { 1 }) * frequency).sum().item<float>();
        return dw.pow(2).sum().item<float>();
    }

    static Tensor TokenFrequency(IReadOnlyList<int> tokens, int vocab)
    {
        var counts = new float[vocab];
        foreach (int t in tokens) if (t >= 0 && t < vocab) counts[t]++;
        return torch.tensor(counts) / Math.Max(1, tokens.Count); // host
    }

    /// <summary>Log-probabilities of the unquantized model on the probe windows (kept for every gain measurement).</summary>
    static List<Tensor> ReferenceLogProbs(LlamaModel model, int[] tokens, int context, CancellationToken cancel)
    {
        var list = new List<Tensor>();
        foreach (var window in Windows(tokens, context))
        {
            cancel.ThrowIfCancellationRequested();
            using var logits = model.Forward(window);
            list.Add(logits.to_type(ScalarType.Float32).log_softmax(-1).cpu().DetachFromDisposeScope());
        }
        return list;
    }

    static IEnumerable<int[]> Windows(int[] tokens, int context)
    {
        for (int start = 0; start + 1 < tokens.Length; start += context)
            yield return tokens[start..Math.Min(tokens.Length, start + context)];
    }

    /// <summary>Mean KL(reference || model with tensor t's probe-type error injected) over the probe tokens.</summary>
    static double ProbeKl(LlamaModel model, GgufTensor t, IReadOnlyDictionary<LinearSite, float[]> importance, int[] tokens, int context,
        List<Tensor> reference, CancellationToken cancel)
    {
        using var scope = torch.NewDisposeScope();
        var hooks = new ErrorInjection();
        foreach (var (site, weight) in Sites(model, t))
        {
            var format = GgmlFormat.Of(GgufMix.Fallback(new GgufTensorShape(t.Name, weight.shape[1], true), ProbeType).Type);
            Tensor w = weight.to_type(ScalarType.Float32).cpu().contiguous();
            float[]? imp = site.Layer != int.MinValue && importance.TryGetValue(site, out var v) ? v : null; // the untied embedding has none
            Tensor dw = Dequantized(w, format.Type, imp) - w;
            if (site.Layer == int.MinValue) hooks.Embedding = dw.to(model.Device).to_type(model.Dtype);
            else hooks.Output[site] = dw.to(model.Device).to_type(model.Dtype);
            if (t.Name == "token_embd.weight" && site.Layer != int.MinValue) hooks.Embedding = hooks.Output[site]; // tied: both uses
        }
        IForwardHooks? previous = model.Hooks;
        model.Hooks = hooks;
        double sum = 0;
        long count = 0;
        try
        {
            int i = 0;
            foreach (var window in Windows(tokens, context))
            {
                cancel.ThrowIfCancellationRequested();
                using var inner = torch.NewDisposeScope();
                using var logits = model.Forward(window);
                Tensor logq = logits.to_type(ScalarType.Float32).log_softmax(-1).cpu();
                Tensor logp = reference[i++];
                sum += (logp.exp() * (logp - logq)).sum().item<float>();
                count += window.Length;
            }
        }
        finally { model.Hooks = previous; }
        return sum / Math.Max(1, count);
    }

    /// <summary>The model-space weights a file tensor holds (fused tensors hold several; the untied token embedding is
    /// marked by layer int.MinValue), for injecting its error where the forward pass uses them.</summary>
    static IEnumerable<(LinearSite Site, Tensor Weight)> Sites(LlamaModel model, GgufTensor t)
    {
        var w = model.Weights;
        if (t.Name == "token_embd.weight")
        {
            yield return w.LmHead is null ? (new LinearSite(-1, Projection.LmHead), w.TokenEmbedding)
                : (new LinearSite(int.MinValue, Projection.LmHead), w.TokenEmbedding);
            yield break;
        }
        if (t.Site is not LinearSite s) yield break;
        if (s.Projection == Projection.LmHead) { yield return (s, w.LmHead!); yield break; }
        var layer = w.Layer(s.Layer);
        if (t.Name.EndsWith("attn_qkv.weight", StringComparison.Ordinal))
        {
            yield return (new LinearSite(s.Layer, Projection.Q), layer.Wq);
            yield return (new LinearSite(s.Layer, Projection.K), layer.Wk);
            yield return (new LinearSite(s.Layer, Projection.V), layer.Wv);
            yield break;
        }
        if (s.Projection == Projection.Gate && t.Name.EndsWith("ffn_up.weight", StringComparison.Ordinal)) // fused gate+up
        {
            yield return (new LinearSite(s.Layer, Projection.Gate), layer.WGate);
            yield return (new LinearSite(s.Layer, Projection.Up), layer.WUp);
            yield break;
        }
        yield return (s, layer.Matrix(s.Projection));
    }

    /// <summary>Adds x dW^T to the outputs of the chosen linear layers, and dE[token] to the token embeddings.</summary>
    sealed class ErrorInjection : IForwardHooks
    {
        public readonly Dictionary<LinearSite, Tensor> Output = new();
        public Tensor? Embedding;
        readonly Dictionary<LinearSite, Tensor> _inputs = new();

        public Tensor OnEmbedding(Tensor tokens, Tensor embedded) =>
            Embedding is null ? embedded : embedded + Embedding.index_select(0, tokens.flatten()).view(embedded.shape);

        public Tensor OnLinearInput(LinearSite site, Tensor input)
        {
            if (Output.ContainsKey(site)) _inputs[site] = input;
            return input;
        }

        public Tensor OnLinearOutput(LinearSite site, Tensor output)
        {
            if (!Output.TryGetValue(site, out var dw)) return output;
            Tensor x = _inputs[site];
            _inputs.Remove(site);
            return output + torch.nn.functional.linear(x, dw);
        }
    }
}
