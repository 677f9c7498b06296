using SuperQuant.Core.Llama;
using SuperQuant.Core.Quantization;
using SuperQuant.Core.Quantization.Methods;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Manifest;
using SuperQuant.Models.Artifacts;

namespace SuperQuant.Pipeline.Stages;

/// <summary>The packed artifact as written, with the z the weight quantizer used (null: none) and its search.</summary>
sealed record PackedWritten(WrittenArtifact Artifact, double? Z, IReadOnlyList<(double Z, double Error)> ZSearch);

/// <summary>Calibrate + quantize + export packed: the activation transforms, the weight quantizer (whole model, or
/// one block at a time as the blocks stream past), and the packed file written to its staging path.</summary>
static class PackedStage
{
    public static PackedWritten? Run(QuantizationRequest r, PipelineOptions o, LoadedModel loaded, RunData data, Detected detected, RunScope scope)
    {
        if (r.Packed is not { } packed) return null;
        var log = o.Log;
        var model = loaded.Model;
        ActivationQuantizer? activations;
        using (log.Step("calibrate activations"))
            activations = ActivationPlan.Prepare(model, r.Method, r.WeightBits, r.ActivationBits, data.Calibration ?? data.Prompt, detected.Report,
                r.Activations);
        var options = new WeightQuantizationOptions
        {
            Method = ActivationPlan.WeightMethodFor(r.Method), Bits = r.WeightBits, BlockSize = r.BlockSize, Z = r.Z,
            Variant = r.Variant, Clip = r.Clip, Levels = r.Levels,
        };
        return loaded.Streamed
            ? ByLayer(r, o, model, options, data, detected.SuperWeights, loaded.CheckpointHash, scope.Stage(packed.Path), packed)
            : Whole(r, o, model, options, data, detected.SuperWeights, activations, loaded.CheckpointHash, scope, packed);
    }

    static PackedWritten Whole(QuantizationRequest r, PipelineOptions o, LlamaModel model, WeightQuantizationOptions options, RunData data,
        IReadOnlyList<SuperWeight> superWeights, ActivationQuantizer? activations, string checkpointHash, RunScope scope, ArtifactSpec packed)
    {
        var log = o.Log;
        QuantizationResult result;
        using (log.Step("quantize packed"))
            result = ModelQuantizer.Quantize(model, options, r.Method.Transforms() ? Array.Empty<SuperWeight>() : superWeights, data.Calibration,
                log.Progress($"{r.Id}: quantize"), o.Cancel, log.Progress($"{r.Id}: z search"));
        using (result)
        {
            double? z = double.IsPositiveInfinity(result.Z) ? null : result.Z;
            model.Hooks = activations;
            var file = scope.Stage(packed.Path);
            using (log.Step("write packed"))
                PackedArtifact.Write(file.StagingPath, model, result, checkpointHash, o.ManifestSha256, activations);
            return new PackedWritten(new WrittenArtifact(packed, file, Settings(r, z), result.BitsPerWeight), z, result.ZSearch);
        }
    }

    /// <summary>One block at a time: z is chosen over the blocks as they stream past, then each block is read,
    /// quantized and written before the next is read. The embedding and head are rounded to fp16 in place first, as
    /// the whole-model quantizer does, so what is evaluated is what ships.</summary>
    static PackedWritten ByLayer(QuantizationRequest r, PipelineOptions o, LlamaModel model, WeightQuantizationOptions options, RunData data,
        IReadOnlyList<SuperWeight> superWeights, string checkpointHash, StagedFile file, ArtifactSpec packed)
    {
        var log = o.Log;
        double zs;
        IReadOnlyList<(double, double)> search;
        using (log.Step("z search"))
            (zs, search) = ModelQuantizer.ChooseZ(model, options, superWeights, data.Calibration, o.Cancel, log.Progress($"{r.Id}: z search"));
        double? z = double.IsPositiveInfinity(zs) ? null : zs;
        using (log.Step("quantize + write packed"))
        {
            LlamaConfig c = model.Config;
            var source = model.Weights.Source ?? throw new InvalidOperationException("not a layer-streamed model");
            var progress = log.Progress($"{r.Id}: quantize");
            model.Weights.ReleaseResident(); // the block a previous pass left behind: hold one block, not two
            ModelQuantizer.RoundToHalf(model.Weights.TokenEmbedding);
            if (model.Weights.LmHead is { } head) ModelQuantizer.RoundToHalf(head);
            progress(0, c.NumLayers);
            PackedArtifact.WriteByLayer(file.StagingPath, model, options, zs, superWeights,
                site =>
                {
                    var (rows, cols) = c.MatrixShape(site.Projection);
                    return ModelQuantizer.PlanMatrix(site, rows, cols, options, superWeights);
                },
                l =>
                {
                    o.Cancel.ThrowIfCancellationRequested();
                    var layer = source.Load(l).DetachFromDisposeScopes();
                    try
                    {
                        var matrices = ModelQuantizer.QuantizeLayer(layer, l, options, zs, superWeights);
                        progress(l + 1, c.NumLayers);
                        return (layer, matrices);
                    }
                    catch { layer.Dispose(); throw; }
                },
                checkpointHash, o.ManifestSha256);
        }
        return new PackedWritten(new WrittenArtifact(packed, file, Settings(r, z), PackedArtifact.ReadInfo(file.StagingPath).BitsPerWeight), z, search);
    }

    static string Settings(QuantizationRequest r, double? z) =>
        $"{r.Method.Name()} W{r.WeightBits}A{r.ActivationBits}, block {Names.BlockSizeName(r.BlockSize)}" +
        (r.Variant == WeightVariant.Paper ? $", paper ({r.Clip.Name()}, {r.Levels.Name()})" : "") +
        (z is double zz ? $", z {zz:G3}" : "");
}
