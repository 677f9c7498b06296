using SuperQuant.Core;
using SuperQuant.Core.Llama;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Models.Gguf;

/// <summary>
/// Writes a model as GGUF for llama.cpp / LLamaSharp: the tensors in llama.cpp's names and layouts
/// (<see cref="GgufTensorLayout"/>), each tensor's type (<see cref="GgufTensorTypes"/>), the metadata
/// (<see cref="GgufMetadata"/>), and each tensor's rows (<see cref="GgufRowQuantizer"/>) quantized one tensor at a time
/// straight from the model's memory into the container (<see cref="GgufWriter"/>).
/// </summary>
public static class GgufExporter
{
    /// <summary>The tensors a file of <paramref name="model"/> holds, in file order.</summary>
    public static IReadOnlyList<GgufTensor> Layout(LlamaModel model) => GgufTensorLayout.Of(model);

    /// <summary>Checks a model can be exported (architecture, RoPE); throws SQ4001 otherwise.</summary>
    public static void CheckSupported(LlamaConfig c) => GgufArchitecture.For(c);

    /// <summary>The tensor list and types a file would get, without writing it.</summary>
    public static IReadOnlyList<GgufTensorType> PlanTypes(LlamaModel model, GgufExport export)
        => GgufTensorTypes.Plan(model.Config, GgufTensorLayout.Of(model), export);

    /// <summary>Writes the file; <paramref name="progress"/> hears (tensors written, tensors) as the data goes out.</summary>
    public static GgufWriteResult Write(string path, LlamaModel model, GgufExport export, Action<int, int>? progress = null)
    {
        LlamaConfig c = model.Config;
        CheckSupported(c);
        if (export.Vocabulary is not null && export.Vocabulary.Tokens.Count != c.VocabSize)
            throw new SuperQuantException(ErrorCodes.InvalidArgument, $"the vocabulary has {export.Vocabulary.Tokens.Count} tokens, the model {c.VocabSize}");
        var tensors = GgufTensorLayout.Of(model);
        var types = GgufTensorTypes.Plan(c, tensors, export);
        // GPTQ's factor of the last H: q/k/v share one H, gate/up another, each group written in a row, so one held
        // factor serves the group and memory stays one factor whatever the depth.
        var factors = new GgufRowQuantizer.FactorCache();
        try
        {
            int done = 0;
            progress?.Invoke(0, tensors.Count);
            GgufWriter.Write(path, GgufMetadata.For(c, export), tensors.Select((t, i) =>
                new GgufWriter.Entry(t.Name, t.Dims, types[i].Type, fs =>
                {
                    GgufRowQuantizer.Write(fs, t, types[i].Type, export, factors);
                    progress?.Invoke(++done, tensors.Count);
                })).ToList());
        }
        finally { factors.Dispose(); }
        if (model.Weights.IsStreamed) model.Weights.ReleaseResident();
        return new GgufWriteResult(types, new FileInfo(path).Length,
            c.ParameterCount)
        { RuntimeDifferences = GgufArchitecture.For(c).RuntimeDifferences(c, export.Context) };
    }
}
