using SuperQuant.Core;
using SuperQuant.LlamaCpp;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Pipeline;

/// <summary>A GGUF file run by llama.cpp, as an evaluator's logits function; llama.cpp failures become SQ4002 naming the file.</summary>
public sealed class LlamaCppEngine : IDisposable
{
    readonly LlamaCppModel _model;
    public int VocabSize => _model.VocabSize;

    LlamaCppEngine(LlamaCppModel model) { _model = model; }

    public static LlamaCppEngine Open(string path, int context, int? threads = null)
    {
        try { return new LlamaCppEngine(LlamaCppModel.Load(path, Math.Max(context, 8), threads)); }
        catch (LlamaCppException e) { throw new SuperQuantException(ErrorCodes.ArtifactFormat, e.Message, path, e); }
    }

    /// <summary>Logits [1, T, vocab] for ids [1, T] (or [T]).</summary>
    public Tensor Logits(Tensor tokens)
    {
        long[] ids = tokens.flatten().cpu().data<long>().ToArray();
        return Logits(ids.Select(i => (int)i).ToArray()).unsqueeze(0);
    }

    /// <summary>Logits [T, vocab].</summary>
    public Tensor Logits(int[] ids)
    {
        var output = new float[(long)ids.Length * VocabSize];
        try { _model.Logits(ids, output); }
        catch (LlamaCppException e) { throw new SuperQuantException(ErrorCodes.ArtifactFormat, e.Message, _model.Path, e); }
        return torch.tensor(output, new long[] { ids.Length, VocabSize }); // host: llama.cpp's logits; the scorer moves them to the reference's device
    }

    public void Dispose() => _model.Dispose();
}
