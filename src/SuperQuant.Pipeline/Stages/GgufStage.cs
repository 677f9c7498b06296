using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Core.Quantization;
using SuperQuant.Manifest;
using SuperQuant.Models.Gguf;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Pipeline.Stages;

/// <summary>Export GGUF: the statistics the request's files need (calibration folds for super-aware candidates, an
/// imatrix, each tensor's sensitivity for size budgets), then each file written to its staging path. Runs before the
/// packed export: GGUF is quantized from the original weights, which the packed path overwrites in place.</summary>
static class GgufStage
{
    public static IReadOnlyList<WrittenArtifact> Run(QuantizationRequest r, PipelineOptions o, LlamaModel model, RunData data, Detected detected,
        RunScope scope)
    {
        var written = new List<WrittenArtifact>();
        if (!r.Ggufs.Any()) return written;
        var log = o.Log;
        LlamaConfig c = model.Config;
        int ctx = data.Context;
        int[]? calibration = data.Calibration;
        GgufExporter.CheckSupported(c);
        CheckBudgets(r, model);
        var vocabulary = GgufVocabulary.FromCheckpoint(r.Checkpoint, c);
        // A GGUF without a vocabulary runs only token ids: say so, naming why, rather than write no_vocab silently.
        if (vocabulary is null && GgufVocabulary.MissingReason(r.Checkpoint) is string noVocabulary)
            log.Info($"{r.Checkpoint}: warning {ErrorCodes.TokenizerUnsupported}: {r.Id}: the GGUF files carry no vocabulary ({noVocabulary}); " +
                $"llama.cpp will run them on token ids only");
        CalibrationFolds? folds = null;
        SpilledInputs? inputs = null;
        bool oneBuild = SuperAwareGguf.IsOneBuild(o.GgufChoice, c.ParameterCount);
        if (r.Method == QuantMethod.SuperAware && calibration is not null && oneBuild)
            using (log.Step("calibrate GGUF"))
            {
                // One pass: every input's mean squares, and its rows spilled to disk for H, read back a group at a time.
                inputs = SpilledInputs.Record(model, calibration, ctx,
                    Path.Combine(scope.Folder ??= Directory.CreateTempSubdirectory("superquant-run-").FullName, "inputs"), cancel: o.Cancel);
                scope.Add(inputs);
            }
        else if (r.Method == QuantMethod.SuperAware && calibration is not null)
            using (log.Step("calibrate GGUF"))
            {
                folds = CalibrationFolds.Record(model, calibration, ctx, scope.Folder ??= Directory.CreateTempSubdirectory("superquant-run-").FullName,
                    s => s with
                    {
                        SuperWeights = detected.SuperWeights,
                        ZCandidates = SuperAwareGguf.ZFor(r.Z),
                        RaiseSuperWeightTensors = o.RaiseSuperWeightTensors
                    },
                    o.Cancel);
                scope.Add(folds);
            }
        // rtn with an importance-matrix type: one imatrix over the calibration data, as llama-imatrix records
        // it, weighting every row (what llama-quantize --imatrix writes).
        IReadOnlyDictionary<LinearSite, float[]>? imatrix = null;
        if (inputs is not null) imatrix = inputs.Importance;
        else if (r.Ggufs.Any(g => (folds is null && g.Type.NeedsImportance()) || g.Target is not null) && calibration is not null)
            using (log.Step("imatrix"))
                imatrix = ImportanceRecorder.Record(model, calibration, ctx, cancel: o.Cancel);
        // Size budgets: one sensitivity measurement serves every target of the model.
        IReadOnlyList<GgufBudget.TensorChoice>? sensitivity = null;
        if (r.Ggufs.Any(g => g.Target is not null) && calibration is not null && imatrix is not null)
            using (log.Step("tensor sensitivity"))
            {
                var covariance = ImportanceRecorder.Covariances(model, calibration, ctx, cancel: o.Cancel);
                try
                {
                    sensitivity = GgufBudget.Measure(model, imatrix, covariance, calibration, ctx, cancel: o.Cancel,
                        progress: log.Progress($"{r.Id}: tensor sensitivity (each type's error, each tensor's effect on the logits)"));
                }
                finally { foreach (var h in covariance.Values.Distinct(ReferenceEqualityComparer.Instance)) ((Tensor)h!).Dispose(); }
            }
        foreach (var g in r.Ggufs)
            using (log.Step($"export {g.Kind}"))
            {
                o.Cancel.ThrowIfCancellationRequested();
                var file = scope.Stage(g.Path);
                GgufWriteResult result;
                string perTensor = "";
                if (g.Target is { } target)
                {
                    var (budgeted, plan) = GgufBudget.Write(file.StagingPath, model, target, sensitivity!, imatrix!, r.Id, vocabulary, ctx);
                    result = budgeted;
                    log.Info($"{r.Id}: {g.Kind}: {budgeted.FileBytes:N0} bytes for {target.BytesFor(c.ParameterCount):N0}, predicted KL {plan.PredictedKl:G3}");
                    foreach (var t in plan.Tensors) log.Info($"{r.Id}:   {t.Name}: {t.Chosen}");
                    perTensor = "; per tensor: " + string.Join(", ", plan.Tensors.Select(t => $"{t.Name} {t.Chosen}"));
                }
                else if (inputs is not null)
                {
                    var aware = new SuperAwareGguf
                    {
                        Importance = inputs.Importance, Covariance = inputs, SuperWeights = detected.SuperWeights, ZCandidates = SuperAwareGguf.ZFor(r.Z),
                        RaiseSuperWeightTensors = o.RaiseSuperWeightTensors,
                    };
                    result = GgufExporter.Write(file.StagingPath, model, aware.OneBuild(g.Type, r.Id, vocabulary, inputs),
                        log.Progress($"{r.Id}: {g.Kind}: tensors written"));
                    log.Info($"{r.Id}: {g.Kind}: one build ({(o.GgufChoice == GgufChoice.OneBuild ? "asked for" : $"{c.ParameterCount / 1e6:F0}M " +
                        $"parameters, over the held-out choice's {SuperAwareGguf.HeldOutChoiceMaxParameters / 1e6:F0}M")}): per row the lowest " +
                        "layer-output error among llama.cpp's and error-compensated rows");
                }
                else if (folds is not null)
                {
                    (result, string choice) = folds.WriteBest(file.StagingPath, model, g.Type, r.Id, vocabulary, o.Threads, o.Cancel,
                        log.Progress($"{r.Id}: {g.Kind}: candidate files scored on held-out calibration"));
                    log.Info($"{r.Id}: {g.Kind}: {choice}");
                }
                else
                    result = GgufExporter.Write(file.StagingPath, model,
                        new GgufExport
                        {
                            FileType = g.Type, Name = r.Id, Vocabulary = vocabulary, Method = r.Method, SuperWeights = detected.SuperWeights,
                            Importance = g.Type.NeedsImportance() ? imatrix : null
                        });
                log.Info($"{r.Id}: wrote {g.Kind} ({result.FileBytes / 1048576.0:F2} MiB, {result.BitsPerWeight:F2} bits/weight: {result.TypeSummary})");
                foreach (var t in result.Tensors.Where(t => t.Reason != "mix" && t.Reason != "vector").Take(3))
                    log.Info($"{r.Id}:   {t.Name}: {t.Reason}");
                // What llama.cpp cannot express (Mistral's window past the context, ...): a warning, and in the
                // report beside the file's layout; the gate measures the file as llama.cpp runs it.
                var differences = GgufArchitecture.For(c).RuntimeDifferences(c, ctx).Concat(vocabulary?.RuntimeDifferences ?? Array.Empty<string>()).ToList();
                foreach (string difference in differences)
                    log.Info($"{g.Path}: warning {ErrorCodes.RuntimeDiffers}: {r.Id}: {difference}; the gate measures the file as llama.cpp runs it");
                string layout = result.TypeSummary + perTensor + string.Concat(differences.Select(d => $"; runtime differs: {d}"));
                written.Add(new WrittenArtifact(g, file, layout, result.BitsPerWeight));
            }
        folds?.Dispose(); // the covariances are large: released before the packed path
        inputs?.Dispose(); // the spilled rows are deleted
        return written;
    }

    /// <summary>A size budget no file of this model can meet is refused before any work, saying what would fit.</summary>
    static void CheckBudgets(QuantizationRequest r, LlamaModel model)
    {
        if (!r.Ggufs.Any(g => g.Target is not null)) return;
        var (min, max) = GgufBudget.Bounds(model);
        foreach (var g in r.Ggufs)
        {
            if (g.Target is not { } target) continue;
            long bytes = target.BytesFor(model.Config.ParameterCount);
            double bpw(long b) => 8.0 * b / model.Config.ParameterCount;
            if (bytes < min)
                throw g.Origin.Error($"{g.Path}: the budget {target} ({bytes:N0} bytes) is smaller than the smallest file this model can be written " +
                    $"as ({min:N0} bytes, {bpw(min):F2} bits/weight: every matrix at its smallest type); give at least that");
            if (bytes > max)
                throw g.Origin.Error($"{g.Path}: the budget {target} ({bytes:N0} bytes) is larger than the model with every tensor at F16 ({max:N0} " +
                    $"bytes, {bpw(max):F2} bits/weight); export gguf f16 instead, or a budget up to that");
        }
    }
}
