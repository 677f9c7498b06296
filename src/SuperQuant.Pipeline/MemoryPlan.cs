using SuperQuant.Core;
using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Llama;
using SuperQuant.Manifest;
using SuperQuant.Models.Checkpoints;

namespace SuperQuant.Pipeline;

/// <summary>Chooses the memory mode of a run and says why.</summary>
public static class MemoryPlan
{
    /// <summary>Share of MemAvailable above which auto streams whatever the size: the whole-model path peaks near
    /// 1.2x the fp32 model.</summary>
    public const double AutoShare = 0.6;

    /// <summary>fp32 size from which auto streams: measured on a 5.9 GB checkpoint (docs/performance.md), the streamed
    /// quantize took 0.33x the checkpoint in peak RSS against 1.23x, and less time (44 s vs 55 s); below 1 GiB the
    /// saving is small and the whole-model path is the one with the longest record.</summary>
    public const long AutoStreamBytes = 1L << 30;

    /// <summary>Whether to stream, and the reason for the log. <paramref name="request"/>: auto keeps a request a
    /// streamed run cannot do (<see cref="Unsupported"/>) in memory.</summary>
    public static (bool Streamed, string Why) Decide(MemoryMode mode, string checkpoint, QuantizationRequest? request = null)
    {
        var format = ModelLoader.Detect(checkpoint);
        if (mode == MemoryMode.Layers) return (true, "memory: layers");
        long available = ProcessMemory.Available;
        long fp32 = Fp32Bytes(checkpoint, format);
        string? problem = request is null ? null : Unsupported(request);
        (bool, string) Whole(string why)
        {
            // The whole-model path peaks near 1.2x the fp32 model (docs/performance.md): refuse now rather than be
            // killed by the kernel an hour in, with no code and no message.
            if (available > 0 && fp32 > 0 && WholeModelPeak * fp32 > available)
            {
                string advice = format == CheckpointFormat.HuggingFace && problem is null ? "use memory: layers (or auto)"
                    : problem is not null ? $"this request needs the whole model ({problem}); use a weight-only method with memory: layers, or a " +
                        $"machine with more memory"
                    : $"{format} checkpoints are loaded whole; convert it to a Hugging Face checkpoint to stream it";
                throw new SuperQuantException(ErrorCodes.OutOfMemory,
                    $"{checkpoint}: the whole fp32 model needs about {WholeModelPeak * fp32 / 1048576.0:F0} MiB ({fp32 / 1048576.0:F0} MiB x " +
                        $"{WholeModelPeak}), {available / 1048576.0:F0} MiB is available ({why}): {advice}", checkpoint);
            }
            return (false, why);
        }
        if (mode == MemoryMode.Model) return Whole("memory: model");
        if (format != CheckpointFormat.HuggingFace) return Whole($"auto: {format} checkpoints are loaded whole");
        if (problem is not null) return Whole($"auto: {problem}");
        bool stream = fp32 >= AutoStreamBytes || (available > 0 && fp32 > AutoShare * available);
        string reason = $"auto: fp32 model {fp32 / 1048576.0:F0} MiB, {available / 1048576.0:F0} MiB available -> {(stream ? "layers" : "whole model")}";
        return stream ? (true, reason) : Whole(reason);
    }

    /// <summary>Peak RSS of a whole-model run over its fp32 size (measured 1.11-1.26x).</summary>
    public const double WholeModelPeak = 1.25;

    /// <summary>The model's size in fp32, from its config (0 when not known without loading it).</summary>
    static long Fp32Bytes(string checkpoint, CheckpointFormat format)
    {
        switch (format)
        {
            case CheckpointFormat.HuggingFace:
                string folder = Directory.Exists(checkpoint) ? checkpoint : Path.GetDirectoryName(Path.GetFullPath(checkpoint))!;
                using (var ck = HfCheckpoint.Open(folder)) return 4 * ck.Config.ParameterCount;
            case CheckpointFormat.Llama2c:
                return 4 * Llama2cCheckpoint.ReadHeader(checkpoint).ToConfig().ParameterCount;
            default:
                return 0; // packed and GGUF files load whole (as fp32): their own size understates that; not checked here
        }
    }

    /// <summary>Why a layer-streamed run cannot do <paramref name="r"/>, or null.</summary>
    public static string? Unsupported(QuantizationRequest r) =>
        r.Method.Transforms() || r.ActivationBits < 16 ? $"method {r.Method.Name()} W{r.WeightBits}A{r.ActivationBits} calibrates activation " +
            $"transforms over the whole model; layer streaming supports weight-only rtn and super-aware" :
        null;

    /// <summary>What a layer-streamed run cannot do yet (W/A methods): refused before any work.</summary>
    public static void CheckSupported(QuantizationRequest r, string why)
    {
        if (Unsupported(r) is string problem)
            throw new SuperQuantException(ErrorCodes.UnsupportedQuantization, $"{r.Id}: layer-streamed run ({why}): {problem}");
    }

    /// <summary>The logits of <paramref name="model"/> for a task's requests, in the order the scorer asks for them:
    /// request by request for a model in memory, layer-major batches for a streamed one.</summary>
    public static (LogitsFunction Logits, IDisposable? Batches) Requests(LlamaModel model, IReadOnlyList<ScoredDocument> docs, int context)
    {
        if (!model.Weights.IsStreamed) return (t => model.Forward(t), null);
        var batches = new LayerMajorLogits(model, TaskScorer.Inputs(docs, context));
        return (batches.Logits, batches);
    }

    /// <summary>The logits of <paramref name="model"/> for the windows of <paramref name="tokens"/>: window by window
    /// for a model in memory, layer-major batches for a streamed one.</summary>
    public static (LogitsFunction Logits, IDisposable? Batches) Windows(LlamaModel model, IReadOnlyList<int> tokens, int context, int stride)
    {
        if (!model.Weights.IsStreamed) return (t => model.Forward(t), null);
        var batches = new LayerMajorLogits(model, tokens, context, stride);
        return (batches.Logits, batches);
    }
}
