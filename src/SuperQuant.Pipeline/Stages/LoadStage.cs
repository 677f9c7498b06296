using SuperQuant.Core.Llama;
using SuperQuant.Manifest;
using SuperQuant.Models.Artifacts;
using SuperQuant.Models.Checkpoints;

namespace SuperQuant.Pipeline.Stages;

/// <summary>The checkpoint as loaded: whole or one block at a time (<see cref="MemoryPlan"/>), and its content hash.</summary>
sealed record LoadedModel(LlamaModel Model, bool Streamed, string CheckpointHash);

/// <summary>Load: refuse an already quantized file, hash the checkpoint, decide whole or layer-streamed, load.</summary>
static class LoadStage
{
    public static LoadedModel Run(QuantizationRequest r, PipelineOptions o)
    {
        var log = o.Log;
        RequireSource(r);
        string checkpointHash;
        using (log.Step("hash checkpoint")) checkpointHash = o.CheckpointSha256 ?? CheckpointHash.Compute(r.Checkpoint);
        var (streamed, why) = MemoryPlan.Decide(o.Memory, r.Checkpoint, r);
        if (streamed) MemoryPlan.CheckSupported(r, why);
        log.Info($"{r.Id}: {(streamed ? "layer-streamed" : "whole model in memory")} ({why})");
        LlamaModel model;
        using (log.Step(streamed ? "load (layer-streamed)" : "load")) model = ModelLoader.Load(r.Checkpoint, o.Device, streamed);
        return new LoadedModel(model, streamed, checkpointHash);
    }

    /// <summary>Quantize and gate start from the unquantized checkpoint, which is also the gate's baseline. A GGUF or a
    /// packed artifact is already quantized: re-quantizing it compounds the rounding and measures against the wrong
    /// original. eval, generate, detect and analyze accept those files; this is refused here, naming the key or option.</summary>
    static void RequireSource(QuantizationRequest r)
    {
        var format = ModelLoader.Detect(r.Checkpoint);
        if (format is CheckpointFormat.Gguf or CheckpointFormat.Packed)
            throw r.OriginOf("checkpoint").Error($"{r.Checkpoint} is a {(format == CheckpointFormat.Gguf ? "GGUF file" : "packed artifact")}, an " +
                $"already quantized runtime file; " +
                "quantize from the unquantized checkpoint it was made from: a Hugging Face folder (config.json + *.safetensors) or a llama2.c .bin " +
                "(eval, generate, detect and analyze accept GGUF and packed files)");
    }
}
