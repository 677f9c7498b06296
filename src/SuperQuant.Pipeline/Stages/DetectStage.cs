using SuperQuant.Core.Llama;
using SuperQuant.Core.SuperWeights;

namespace SuperQuant.Pipeline.Stages;

/// <summary>What detection found (or "not run" when the request quantizes nothing by super weights).</summary>
sealed record Detected(DetectionReport? Report, IReadOnlyList<SuperWeight> SuperWeights, string Text)
{
    public static Detected NotRun { get; } = new(null, Array.Empty<SuperWeight>(), "not run");
}

/// <summary>Detect: the paper's super weight detection on the prompt (§3).</summary>
static class DetectStage
{
    public static Detected Run(QuantizationRequest r, PipelineOptions o, LlamaModel model, RunData data)
    {
        if (!data.Detects) return Detected.NotRun;
        using (o.Log.Step("detect"))
        {
            var detection = new SuperWeightDetector().Detect(model, data.Prompt);
            var superWeights = detection.SuperWeights;
            string text = detection.Found
                ? $"{superWeights.Count} super weight{(superWeights.Count == 1 ? "" : "s")}: "
                    + string.Join(", ", superWeights.Select(s => $"layer {s.Layer} [{s.Row}, {s.Column}] = {s.Value:G4}"))
                : $"none found (largest down_proj spike {detection.Passes[0].Max(l => l.Output.Magnitude):G3}, threshold {detection.FirstPassThreshold:G3})";
            o.Log.Info($"{r.Id}: super weights: {text}");
            return new Detected(detection, superWeights, text);
        }
    }
}
