using SuperQuant.Manifest;

namespace SuperQuant.Pipeline;

/// <summary>A manifest entry as a <see cref="QuantizationRequest"/>: the same validation as the CLI's, with errors at
/// the entry's lines (SQ3001).</summary>
public static class ManifestRequests
{
    public static QuantizationRequest From(QuantizeManifest m, ModelEntry e)
    {
        Origin At(string key) { var p = e.PositionOf(key); return Origin.Manifest(m.Path, p.Line, p.Column, key); }
        TokenSource? Source(string? text, string? ids, string textKey, string idsKey) =>
            text is not null ? new TokenSource(text, true, At(textKey)) : ids is not null ? new TokenSource(ids, false, At(idsKey)) : null;
        return new QuantizationRequest
        {
            Id = e.Id, Checkpoint = e.Checkpoint, Method = e.Method, WeightBits = e.WeightBits, ActivationBits = e.ActivationBits,
            BlockSize = e.BlockSize, Variant = e.Variant, Clip = e.Clip, Levels = e.Levels, Z = e.Z,
            Activations = new ActivationSettings(e.ActivationScale, e.ActivationQuantizer, e.SuperActivation), Context = e.Context,
            PromptTokens = e.PromptTokens,
            Calibration = Source(e.CalibrationText, e.CalibrationTokens, "calibration_text", "calibration_tokens"),
            Evaluation = Source(e.EvaluationText, e.EvaluationTokens, "evaluation_text", "evaluation_tokens"),
            Artifacts = e.Exports.Select(x => x.Target is { } target
                ? new GgufSpec(x.Path, GgufFileType.Q4_K_M, Origin.Manifest(m.Path, x.At.Line, x.At.Column, "export")) { Target = target }
                : x.GgufType is GgufFileType t
                ? (ArtifactSpec)new GgufSpec(x.Path, t, Origin.Manifest(m.Path, x.At.Line, x.At.Column, "export"))
                : new PackedSpec(x.Path, Origin.Manifest(m.Path, x.At.Line, x.At.Column, "output"))).ToList(),
            Tasks = e.Tasks.Select(t => new TaskSource(t.Name, t.Path, Origin.Manifest(m.Path, t.At.Line, t.At.Column, "tasks." + t.Name))).ToList(),
            OriginOf = key => At(e.Positions.ContainsKey(key) ? key : e.Positions.ContainsKey("method") ? "method" : "id"),
            PromptOrigin = At("prompt_tokens"), ContextOrigin = At("context"), MethodOrigin = At(e.Positions.ContainsKey("method") ? "method" : "id"),
        }.Validate();
    }
}
