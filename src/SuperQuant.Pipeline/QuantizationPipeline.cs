using SuperQuant.Core;
using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Llama;
using SuperQuant.Core.Quantization;
using SuperQuant.Core.Quantization.Methods;
using SuperQuant.Core.SuperWeights;
using SuperQuant.LlamaCpp;
using SuperQuant.Manifest;
using SuperQuant.Models.Artifacts;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Text;
using SuperQuant.Pipeline.Stages;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Pipeline;

/// <summary>How to run, as opposed to what to make (<see cref="QuantizationRequest"/>).</summary>
public sealed record PipelineOptions
{
    public Device Device { get; init; } = torch.CPU;
    /// <summary>Folder for the recorded reference (obj/superquant for builds); it is reused while the checkpoint,
    /// evaluation tokens and window plan are unchanged. Null: a temp folder, deleted after the run.</summary>
    public string? ReferenceCacheFolder { get; init; }
    public StepLog Log { get; init; } = StepLog.Silent;
    public CancellationToken Cancel { get; init; }
    /// <summary>Threads for llama.cpp (default: one per core).</summary>
    public int? Threads { get; init; }
    /// <summary>SHA-256 of the manifest, recorded in packed artifacts.</summary>
    public string? ManifestSha256 { get; init; }
    /// <summary>Checkpoint hash when the caller already computed it (the gate hashes once per run).</summary>
    public string? CheckpointSha256 { get; init; }
    /// <summary>Raise the type of GGUF matrices holding super weights (super-aware only).</summary>
    public bool RaiseSuperWeightTensors { get; init; }
    /// <summary>Whole model in memory, or one decoder block at a time (<see cref="MemoryMode"/>).</summary>
    public MemoryMode Memory { get; init; } = MemoryMode.Auto;
    /// <summary>How the super-aware GGUF export decides what ships (<see cref="GgufChoice"/>).</summary>
    public GgufChoice GgufChoice { get; init; } = GgufChoice.Auto;
}

/// <summary>An artifact as written to its staging file and measured from there.</summary>
public sealed record ArtifactResult
{
    public required ArtifactSpec Spec { get; init; }
    public required StagedFile File { get; init; }
    /// <summary>"superquant" (our loader and forward pass) or "llama.cpp" (LLamaSharp 0.30.0).</summary>
    public required string Engine { get; init; }
    public required long Bytes { get; init; }
    public required double BitsPerWeight { get; init; }
    /// <summary>Per-tensor types (GGUF) or the packed settings, for the report.</summary>
    public required string Layout { get; init; }
    /// <summary>Null when no evaluation data was given (the file was still loaded back and run once).</summary>
    public DivergenceResult? Quality { get; init; }
    /// <summary>Zero-shot task scores of this file, measured by its runtime (empty when the request lists no tasks).</summary>
    public IReadOnlyList<TaskScore> Tasks { get; init; } = Array.Empty<TaskScore>();
}

public sealed record PipelineResult
{
    public required QuantizationRequest Request { get; init; }
    public required string CheckpointSha256 { get; init; }
    public required IReadOnlyList<SuperWeight> SuperWeights { get; init; }
    public required string Detection { get; init; }
    public double? Z { get; init; }
    public IReadOnlyList<(double Z, double Error)> ZSearch { get; init; } = Array.Empty<(double, double)>();
    public required IReadOnlyList<ArtifactResult> Artifacts { get; init; }
    public required IReadOnlyList<StepTiming> Steps { get; init; }
    /// <summary>Whether the reference was read from the cache (no reference pass ran).</summary>
    public bool ReferenceFromCache { get; init; }
    public int TokensEvaluated { get; init; }
    /// <summary>The unquantized model's task scores (our forward pass), the accuracy gate's baselines.</summary>
    public IReadOnlyList<TaskScore> TaskBaselines { get; init; } = Array.Empty<TaskScore>();
}

/// <summary>
/// The one quantize -> export -> evaluate path, as named stages (Stages/): load, data, tasks, reference, detect,
/// export GGUF, export packed, measure. Every artifact is written to a staging file next to its destination and then
/// measured from that file, by the runtime that will load it: the packed artifact through
/// <see cref="PackedArtifact.Load"/> and our forward pass, each GGUF through llama.cpp itself. The caller (quantize,
/// gate, and through gate the MSBuild task) promotes a staged file (rename) only when its gate passes, or discards it;
/// nothing unmeasured is shipped.
/// </summary>
public static class QuantizationPipeline
{
    public static PipelineResult Run(QuantizationRequest r, PipelineOptions o)
    {
        r.Validate();
        using var scope = new RunScope();
        try
        {
            return RunStages(r, o, scope);
        }
        catch
        {
            foreach (var f in scope.Staged) f.Discard(); // created by this run, never shipped
            throw;
        }
    }

    static PipelineResult RunStages(QuantizationRequest r, PipelineOptions o, RunScope scope)
    {
        var log = o.Log;
        var loaded = LoadStage.Run(r, o);
        var written = new List<WrittenArtifact>();
        RunData data;
        TaskSet tasks;
        ReferenceFile? reference = null;
        bool referenceCached = false;
        Detected detected;
        PackedWritten? packed;
        try
        {
            var model = loaded.Model;
            data = DataStage.Run(r, model.Config);
            tasks = TaskStage.Run(r, o, model, data);
            if (data.Evaluation is { } eval)
                using (log.Step("reference"))
                {
                    (reference, referenceCached) = ReferenceStage.Run(r, o, model, data, eval, loaded.CheckpointHash, scope);
                    scope.Add(reference); // closed before its temp folder is deleted
                }
            detected = DetectStage.Run(r, o, model, data);
            written.AddRange(GgufStage.Run(r, o, model, data, detected, scope)); // first: the packed path overwrites the weights
            packed = PackedStage.Run(r, o, loaded, data, detected, scope);
            if (packed is not null) written.Add(packed.Artifact);
        }
        finally
        {
            loaded.Model.Dispose(); // artifacts are measured from disk, one at a time, with the model gone
        }

        var results = new List<ArtifactResult>();
        foreach (var artifact in written)
            using (log.Step($"evaluate {artifact.Spec.Kind}"))
            {
                o.Cancel.ThrowIfCancellationRequested();
                var measured = MeasureStage.Run(artifact, r, o, reference, data.Evaluation, tasks, loaded.Streamed);
                results.Add(new ArtifactResult
                {
                    Spec = artifact.Spec, File = artifact.File, Engine = measured.Engine, Bytes = new FileInfo(artifact.File.StagingPath).Length,
                    BitsPerWeight = artifact.BitsPerWeight, Layout = artifact.Layout, Quality = measured.Quality, Tasks = measured.Tasks,
                });
            }
        return new PipelineResult
        {
            Request = r, CheckpointSha256 = loaded.CheckpointHash, SuperWeights = detected.SuperWeights, Detection = detected.Text,
            Z = packed?.Z, ZSearch = packed?.ZSearch ?? Array.Empty<(double, double)>(),
            Artifacts = results, Steps = log.Steps.ToList(), ReferenceFromCache = referenceCached, TokensEvaluated = data.Evaluation?.Length ?? 0,
            TaskBaselines = tasks.Baselines,
        };
    }
}
