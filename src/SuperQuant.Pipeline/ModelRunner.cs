using SuperQuant.Core;
using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Llama;
using SuperQuant.LlamaCpp;
using SuperQuant.Manifest;
using SuperQuant.Models.Checkpoints;

namespace SuperQuant.Pipeline;

/// <summary>A model file opened with the runtime that executes it: a GGUF in llama.cpp (LLamaSharp), a packed artifact
/// or checkpoint in our forward pass (whole or layer-streamed). `eval` and the pipeline's measure stage both open
/// files through it.</summary>
public sealed class ModelRunner : IDisposable
{
    public required string Path { get; init; }
    public required string Engine { get; init; }
    public required int VocabSize { get; init; }
    public int? Bos { get; init; }
    public int MaxContext { get; init; }
    public required LogitsFunction Logits { get; init; }
    public Func<string, int[]>? Tokenize { get; init; }
    public required IDisposable Owner { get; init; }
    /// <summary>fp32 / bf16 / fp16 for our forward pass; the GGUF's own types for llama.cpp.</summary>
    public string Dtype { get; init; } = "fp32";
    /// <summary>Our forward pass's model (null for llama.cpp).</summary>
    public LlamaModel? Model { get; init; }

    /// <summary>The logits of the windows of <paramref name="ids"/>: a layer-streamed model runs them layer-major in
    /// batches (each batch reads every block once); everything else window by window.</summary>
    public (LogitsFunction Logits, IDisposable? Batches) Windows(IReadOnlyList<int> ids, int context, int stride) =>
        Model is { Weights.IsStreamed: true } streamed ? MemoryPlan.Windows(streamed, ids, context, stride) : (Logits, null);

    /// <summary>The logits of a task's requests: layer-major batches for a streamed model, request by request else.</summary>
    public (LogitsFunction Logits, IDisposable? Batches) Requests(IReadOnlyList<ScoredDocument> docs, int context) =>
        Model is { Weights.IsStreamed: true } streamed ? MemoryPlan.Requests(streamed, docs, context) : (Logits, null);

    public void Dispose() => Owner.Dispose();

    /// <summary>Opens <paramref name="path"/>: engine auto (GGUF in llama.cpp, the rest in our forward pass), llama.cpp
    /// (GGUF only) or torch (a GGUF dequantized into our forward pass). <paramref name="dtype"/>: the floats our forward
    /// pass runs in (null: as loaded).</summary>
    public static ModelRunner Open(string path, string engine, int context, int? threads, TorchSharp.torch.Device dev,
        TorchSharp.torch.ScalarType? dtype, MemoryMode memory)
    {
        var format = ModelLoader.Detect(path);
        if (engine == "llama.cpp" && format != CheckpointFormat.Gguf)
            throw new SuperQuantException(ErrorCodes.InvalidArgument,
                $"--engine llama.cpp runs GGUF files; {path} is a {format} model (use --engine auto or torch)", path);
        // A GGUF written without a vocabulary ("no_vocab") cannot tokenize: llama.cpp aborts the process if asked to.
        bool ggufVocabulary = format == CheckpointFormat.Gguf
            && SuperQuant.Models.Gguf.GgufFile.Read(path).HasVocabulary;
        int[] NoVocabulary(string _) => throw new SuperQuantException(ErrorCodes.TokenizerUnsupported,
            $"{path} holds no vocabulary (tokenizer.ggml.model is no_vocab): give token ids (--tokens), or export the GGUF from a checkpoint with a " +
                $"tokenizer", path);
        if (format == CheckpointFormat.Gguf && memory == MemoryMode.Layers)
            throw new SuperQuantException(ErrorCodes.InvalidArgument,
                $"{path}: --memory layers streams Hugging Face checkpoints and packed artifacts; a GGUF file is run by llama.cpp, which maps it " +
                $"itself (leave --memory out)", path);
        if (format == CheckpointFormat.Gguf && engine != "torch")
        {
            var llama = LlamaCppEngine.Open(path, context, threads);
            LlamaCppModel? tok = null;
            return new ModelRunner
            {
                Path = path, Engine = "llama.cpp", Dtype = "gguf", VocabSize = llama.VocabSize, MaxContext = context, Logits = llama.Logits,
                Tokenize = ggufVocabulary ? text => (tok ??= LlamaCppModel.Load(path, 8, 1)).Tokenize(text, addBos: true) : NoVocabulary,
                Owner = new Both(llama, () => tok?.Dispose()),
            };
        }
        bool streamed = format is CheckpointFormat.HuggingFace or CheckpointFormat.Packed && MemoryPlan.Decide(memory, path).Streamed;
        if (memory == MemoryMode.Layers && !streamed)
            throw new SuperQuantException(ErrorCodes.UnsupportedQuantization,
                $"{path}: --memory layers reads Hugging Face checkpoints and packed artifacts, not {format} files", path);
        if (streamed && dtype is not (null or TorchSharp.torch.ScalarType.Float32))
            throw new SuperQuantException(ErrorCodes.InvalidArgument, "--dtype bf16/fp16 needs the whole model in memory (--memory model)");
        LlamaModel m = ModelLoader.Load(path, dev, streamed);
        if (!streamed && dtype is { } floats) m.ConvertTo(floats);
        Func<string, int[]>? tokenize = null;
        if (format == CheckpointFormat.Gguf)
            tokenize = ggufVocabulary ? text => { using var t = LlamaCppModel.Load(path, 8, 1); return t.Tokenize(text, addBos: true); } : NoVocabulary;
        return new ModelRunner
        {
            Path = path, Engine = "superquant", Dtype = dtype switch
            {
                TorchSharp.torch.ScalarType.BFloat16 => "bf16",
                TorchSharp.torch.ScalarType.Float16 => "fp16",
                _ => "fp32"
            }, VocabSize = m.Config.VocabSize, Bos = m.Config.BosTokenId,
            MaxContext = m.Config.MaxPositionEmbeddings,
            Logits = t => m.Forward(t), Tokenize = tokenize, Owner = m, Model = m,
        };
    }

    sealed class Both(IDisposable a, Action b) : IDisposable
    {
        public void Dispose() { a.Dispose(); b(); }
    }
}
