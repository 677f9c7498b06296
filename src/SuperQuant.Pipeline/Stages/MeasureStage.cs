using SuperQuant.Core;
using SuperQuant.Core.Evaluation;
using SuperQuant.Manifest;
using TorchSharp;

namespace SuperQuant.Pipeline.Stages;

/// <summary>What measuring one file found: the engine that ran it, its divergence from the reference, its task scores.</summary>
sealed record Measured(string Engine, DivergenceResult? Quality, IReadOnlyList<TaskScore> Tasks);

/// <summary>Measure: each artifact read back from disk with the runtime that will load it (<see cref="ModelRunner"/>:
/// GGUF in llama.cpp, packed in our loader and forward pass) and compared with the reference; without evaluation
/// data it is still loaded and run on one token.</summary>
static class MeasureStage
{
    public static Measured Run(WrittenArtifact artifact, QuantizationRequest r, PipelineOptions o, ReferenceFile? reference, int[]? eval,
        TaskSet tasks, bool streamed)
    {
        var (spec, path) = (artifact.Spec, artifact.File.StagingPath);
        var log = o.Log;
        var progress = log.Progress($"{r.Id}: evaluate {spec.Kind}");
        bool gguf = spec is GgufSpec;
        int context = reference?.Context ?? 8;
        if (gguf && tasks.Tasks.Count > 0) context = Math.Max(context, tasks.Context);
        // Packed files run in the memory mode the checkpoint ran in; llama.cpp maps a GGUF itself.
        var memory = gguf ? MemoryMode.Auto : streamed ? MemoryMode.Layers : MemoryMode.Model;
        using var runner = ModelRunner.Open(path, "auto", context, o.Threads, o.Device, dtype: null, memory);
        if (gguf && runner.VocabSize != (reference?.Vocab ?? runner.VocabSize))
            throw new SuperQuantException(ErrorCodes.ArtifactFormat,
                $"llama.cpp reads {runner.VocabSize} tokens from {path}, the model has {reference!.Vocab}", path);
        var taskScores = tasks.Tasks.Select(t =>
        {
            var p = log.Progress($"{r.Id}: {t.Name} ({spec.Kind})");
            var (logits, batches) = runner.Requests(t.Docs, tasks.Context);
            using (batches) return TaskScorer.Score(t.Name, t.Name == "lambada", t.Docs, logits, tasks.Context, (d, n) => p(d, n), o.Cancel);
        }).ToList();
        if (reference is null || eval is null)
        {
            runner.Logits(torch.tensor(new long[] { 0 }, new long[] { 1, 1 })).Dispose(); // host: token ids
            return new Measured(runner.Engine, null, taskScores);
        }
        if (gguf) return new Measured(runner.Engine, Evaluator.Divergence(reference, runner.Logits, eval, (d, t) => progress(d, t), o.Cancel), taskScores);
        var (windows, windowBatches) = runner.Windows(eval, reference.Context, reference.Stride);
        using (windowBatches)
            return new Measured(runner.Engine, Evaluator.Divergence(reference, windows, eval, (d, t) => progress(d, t), o.Cancel), taskScores);
    }
}
