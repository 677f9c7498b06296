using System.Security.Cryptography;
using System.Text;
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
using SuperQuant.Models.Gguf;
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
/// The one quantize -> export -> evaluate path. Every artifact is written to a staging file next to its destination
/// and then measured from that file, by the runtime that will load it: the packed artifact through
/// <see cref="PackedArtifact.Load"/> and our forward pass, each GGUF through llama.cpp itself. The caller promotes a
/// staged file (rename) only when its gate passes, or discards it; nothing unmeasured is shipped.
/// </summary>
public static class QuantizationPipeline
{
    public static PipelineResult Run(QuantizationRequest r, PipelineOptions o)
    {
        r.Validate();
        var log = o.Log;
        var staged = new List<StagedFile>();
        try
        {
            return RunCore(r, o, log, staged);
        }
        catch
        {
            foreach (var f in staged) f.Discard(); // created by this run, never shipped
            throw;
        }
    }

    static PipelineResult RunCore(QuantizationRequest r, PipelineOptions o, StepLog log, List<StagedFile> staged)
    {
        var cleanup = new Cleanup();
        try
        {
            RequireSource(r);
            string checkpointHash;
            using (log.Step("hash checkpoint")) checkpointHash = o.CheckpointSha256 ?? CheckpointHash.Compute(r.Checkpoint);
            var (streamed, why) = MemoryPlan.Decide(o.Memory, r.Checkpoint, r);
            if (streamed) MemoryPlan.CheckSupported(r, why);
            log.Info($"{r.Id}: {(streamed ? "layer-streamed" : "whole model in memory")} ({why})");
            LlamaModel model;
            using (log.Step(streamed ? "load (layer-streamed)" : "load")) model = ModelLoader.Load(r.Checkpoint, o.Device, streamed);
            var artifacts = new List<(ArtifactSpec Spec, StagedFile File, string Layout, double Bpw)>();
            ReferenceFile? reference = null;
            bool referenceCached = false;
            int[]? eval = null;
            IReadOnlyList<SuperWeight> superWeights = Array.Empty<SuperWeight>();
            string detectionText = "not run";
            double? zUsed = null;
            IReadOnlyList<(double, double)> zSearch = Array.Empty<(double, double)>();
            List<(string Name, IReadOnlyList<ScoredDocument> Docs)> tasks = new();
            IReadOnlyList<TaskScore> taskBaselines = Array.Empty<TaskScore>();
            int taskContext = r.Context;
            try
            {
                LlamaConfig c = model.Config;
                string tokenizer = r.TokenizerFolder ?? Tokens.CheckpointFolder(r.Checkpoint);
                int ctx = Math.Min(r.Context, c.MaxPositionEmbeddings), stride = Math.Max(1, ctx / 2);
                eval = r.Evaluation is { } ev ? Tokens.Load(ev, tokenizer, c.VocabSize, minimum: 2) : null;
                int[]? calibration = r.Calibration is { } cal ? Tokens.Load(cal, tokenizer, c.VocabSize, minimum: 2) : null;
                // Detection needs a prompt; an export that quantizes nothing by super weights (rtn, or only F16/BF16
                // GGUF files) needs neither, so a checkpoint without a tokenizer needs no --prompt-tokens for it.
                bool detect = (r.Method == QuantMethod.SuperAware && (r.Packed is not null || r.Ggufs.Any(g => !g.Type.IsFloat())))
                    || r.Method.Transforms() || r.ActivationBits < 16;
                int[] prompt = detect ? Prompt(r, c, tokenizer, calibration, eval) : Array.Empty<int>();
                if (r.Tasks.Count > 0)
                    using (log.Step("tasks (original)"))
                    {
                        Func<string, int[]> encode;
                        try { encode = Tokens.Encoder(tokenizer, c.VocabSize); }
                        catch (SuperQuantException e) when (e.Code == ErrorCodes.TokenizerUnsupported)
                        {
                            throw new SuperQuantException(e.Code, $"{r.Tasks[0].Origin.Where}: zero-shot tasks are text and need the checkpoint's tokenizer: {e.Message}", r.Tasks[0].Origin.File, e);
                        }
                        tasks = r.Tasks.Select(t => (t.Name, TaskRequests.Tokenize(TaskFile.Read(t.Path, t.Name), encode, t.Path))).ToList();
                        taskContext = ctx;
                        taskBaselines = tasks.Select(t =>
                        {
                            var p = log.Progress($"{r.Id}: {t.Name} (original)");
                            var (logits, batches) = MemoryPlan.Requests(model, t.Docs, ctx);
                            using (batches) return TaskScorer.Score(t.Name, t.Name == "lambada", t.Docs, logits, ctx, (d, n) => p(d, n), o.Cancel);
                        }).ToList();
                        foreach (var b in taskBaselines) log.Info($"{r.Id}: {b.Task} original accuracy {b.Accuracy.Value:P2} +/- {b.Accuracy.StandardError:P2} ({b.Documents} documents)");
                    }
    
                if (eval is not null)
                    using (log.Step("reference"))
                    {
                        (reference, referenceCached) = Reference(r, o, model, eval, ctx, stride, checkpointHash, log, cleanup);
                        cleanup.Add(reference); // closed before its temp folder is deleted
                    }
    
                DetectionReport? detection = null;
                if (detect)
                    using (log.Step("detect"))
                    {
                        detection = new SuperWeightDetector().Detect(model, prompt);
                        superWeights = detection.SuperWeights;
                        detectionText = detection.Found
                            ? $"{superWeights.Count} super weight{(superWeights.Count == 1 ? "" : "s")}: " + string.Join(", ", superWeights.Select(s => $"layer {s.Layer} [{s.Row}, {s.Column}] = {s.Value:G4}"))
                            : $"none found (largest down_proj spike {detection.Passes[0].Max(l => l.Output.Magnitude):G3}, threshold {detection.FirstPassThreshold:G3})";
                        log.Info($"{r.Id}: super weights: {detectionText}");
                    }
    
                // GGUF first: it is quantized from the original weights, which the packed path overwrites in place.
                if (r.Ggufs.Any())
                {
                    GgufExporter.CheckSupported(c);
                    CheckBudgets(r, model);
                    var vocabulary = GgufVocabulary.FromCheckpoint(r.Checkpoint, c);
                    // A GGUF without a vocabulary runs only token ids: say so, naming why, rather than write no_vocab silently.
                    if (vocabulary is null && GgufVocabulary.MissingReason(r.Checkpoint) is string noVocabulary)
                        log.Info($"{r.Checkpoint}: warning {ErrorCodes.TokenizerUnsupported}: {r.Id}: the GGUF files carry no vocabulary ({noVocabulary}); llama.cpp will run them on token ids only");
                    CalibrationFolds? folds = null;
                    if (r.Method == QuantMethod.SuperAware && calibration is not null)
                        using (log.Step("calibrate GGUF"))
                        {
                            string scratch = cleanup.Folder ??= Directory.CreateTempSubdirectory("superquant-run-").FullName;
                            folds = CalibrationFolds.Record(model, calibration, ctx, scratch,
                                s => s with { SuperWeights = superWeights, ZCandidates = SuperAwareGguf.ZFor(r.Z), RaiseSuperWeightTensors = o.RaiseSuperWeightTensors },
                                o.Cancel);
                            cleanup.Add(folds);
                        }
                    // rtn with an importance-matrix type: one imatrix over the calibration data, as llama-imatrix records
                    // it, weighting every row (what llama-quantize --imatrix writes).
                    IReadOnlyDictionary<LinearSite, float[]>? imatrix = null;
                    if (r.Ggufs.Any(g => (folds is null && g.Type.NeedsImportance()) || g.Target is not null) && calibration is not null)
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
                            var file = StagedFile.For(g.Path);
                            staged.Add(file);
                            GgufWriteResult written;
                            string perTensor = "";
                            if (g.Target is { } target)
                            {
                                var (budgeted, plan) = GgufBudget.Write(file.StagingPath, model, target, sensitivity!, imatrix!, r.Id, vocabulary, ctx);
                                written = budgeted;
                                log.Info($"{r.Id}: {g.Kind}: {budgeted.FileBytes:N0} bytes for {target.BytesFor(c.ParameterCount):N0}, predicted KL {plan.PredictedKl:G3}");
                                foreach (var t in plan.Tensors) log.Info($"{r.Id}:   {t.Name}: {t.Chosen}");
                                perTensor = "; per tensor: " + string.Join(", ", plan.Tensors.Select(t => $"{t.Name} {t.Chosen}"));
                            }
                            else if (folds is not null)
                            {
                                (written, string choice) = folds.WriteBest(file.StagingPath, model, g.Type, r.Id, vocabulary, o.Threads, o.Cancel,
                                    log.Progress($"{r.Id}: {g.Kind}: candidate files scored on held-out calibration"));
                                log.Info($"{r.Id}: {g.Kind}: {choice}");
                            }
                            else
                                written = GgufExporter.Write(file.StagingPath, model,
                                    new GgufExport { FileType = g.Type, Name = r.Id, Vocabulary = vocabulary, Method = r.Method, SuperWeights = superWeights,
                                        Importance = g.Type.NeedsImportance() ? imatrix : null });
                            log.Info($"{r.Id}: wrote {g.Kind} ({written.FileBytes / 1048576.0:F2} MiB, {written.BitsPerWeight:F2} bits/weight: {written.TypeSummary})");
                            foreach (var t in written.Tensors.Where(t => t.Reason != "mix" && t.Reason != "vector").Take(3))
                                log.Info($"{r.Id}:   {t.Name}: {t.Reason}");
                            // What llama.cpp cannot express (Mistral's window past the context, ...): a warning, and in the
                            // report beside the file's layout; the gate measures the file as llama.cpp runs it.
                            var differences = GgufArchitecture.For(c).RuntimeDifferences(c, ctx).Concat(vocabulary?.RuntimeDifferences ?? Array.Empty<string>()).ToList();
                            foreach (string difference in differences)
                                log.Info($"{g.Path}: warning {ErrorCodes.RuntimeDiffers}: {r.Id}: {difference}; the gate measures the file as llama.cpp runs it");
                            string layout = written.TypeSummary + perTensor + string.Concat(differences.Select(d => $"; runtime differs: {d}"));
                            artifacts.Add((g, file, layout, written.BitsPerWeight));
                        }
                    folds?.Dispose(); // the covariances are large: released before the packed path
                }
    
                if (r.Packed is { } packed)
                {
                    ActivationQuantizer? activations;
                    QuantizationResult result;
                    using (log.Step("calibrate activations"))
                        activations = ActivationPlan.Prepare(model, r.Method, r.WeightBits, r.ActivationBits, calibration ?? prompt, detection, r.Activations);
                    var options = new WeightQuantizationOptions
                    {
                        Method = ActivationPlan.WeightMethodFor(r.Method), Bits = r.WeightBits, BlockSize = r.BlockSize, Z = r.Z,
                        Variant = r.Variant == "paper" ? WeightVariant.Paper : WeightVariant.Packed,
                        Clip = PaperBlockQuantizer.ParseClip(r.Clip), Levels = PaperBlockQuantizer.ParseLevels(r.Levels),
                    };
                    if (streamed)
                    {
                        // One block at a time: z is chosen over the blocks as they stream past, then each block is
                        // read, quantized and written before the next is read.
                        double zs;
                        using (log.Step("z search"))
                            (zs, zSearch) = ModelQuantizer.ChooseZ(model, options, superWeights, calibration, o.Cancel, log.Progress($"{r.Id}: z search"));
                        zUsed = double.IsPositiveInfinity(zs) ? null : zs;
                        var sfile = StagedFile.For(packed.Path);
                        staged.Add(sfile);
                        using (log.Step("quantize + write packed"))
                            PackedArtifact.WriteStreamed(sfile.StagingPath, model, options, zs, superWeights, checkpointHash, o.ManifestSha256, log.Progress($"{r.Id}: quantize"), o.Cancel);
                        artifacts.Add((packed, sfile, Settings(r, zUsed), PackedArtifact.ReadInfo(sfile.StagingPath).BitsPerWeight));
                        goto packedDone;
                    }
                    using (log.Step("quantize packed"))
                        result = ModelQuantizer.Quantize(model, options, r.Method.Transforms() ? Array.Empty<SuperWeight>() : superWeights, calibration,
                            log.Progress($"{r.Id}: quantize"), o.Cancel, log.Progress($"{r.Id}: z search"));
                    using (result)
                    {
                        zUsed = double.IsPositiveInfinity(result.Z) ? null : result.Z;
                        zSearch = result.ZSearch;
                        model.Hooks = activations;
                        var file = StagedFile.For(packed.Path);
                        staged.Add(file);
                        using (log.Step("write packed"))
                            PackedArtifact.Write(file.StagingPath, model, result, checkpointHash, o.ManifestSha256, activations);
                        artifacts.Add((packed, file, Settings(r, zUsed), result.BitsPerWeight));
                    }
                packedDone:;
                }
            }
            finally
            {
                model.Dispose(); // artifacts are measured from disk, one at a time, with the model gone
            }
    
            var results = new List<ArtifactResult>();
            try
            {
                foreach (var (spec, file, layout, bpw) in artifacts)
                    using (log.Step($"evaluate {spec.Kind}"))
                    {
                        o.Cancel.ThrowIfCancellationRequested();
                        var (engine, quality, taskScores) = Measure(spec, file.StagingPath, r, o, reference, eval, tasks, taskContext, log, streamed);
                        results.Add(new ArtifactResult
                        {
                            Spec = spec, File = file, Engine = engine, Bytes = new FileInfo(file.StagingPath).Length,
                            BitsPerWeight = bpw, Layout = layout, Quality = quality, Tasks = taskScores,
                        });
                    }
            }
            finally { }
            return new PipelineResult
            {
                Request = r, CheckpointSha256 = checkpointHash, SuperWeights = superWeights, Detection = detectionText, Z = zUsed, ZSearch = zSearch,
                Artifacts = results, Steps = log.Steps.ToList(), ReferenceFromCache = referenceCached, TokensEvaluated = eval?.Length ?? 0,
                TaskBaselines = taskBaselines,
            };
        
        }
        finally { cleanup.Dispose(); }
    }

    static string Settings(QuantizationRequest r, double? z) =>
        $"{r.Method.Name()} W{r.WeightBits}A{r.ActivationBits}, block {Names.BlockSizeName(r.BlockSize)}" +
        (r.Variant == "paper" ? $", paper ({r.Clip}, {r.Levels})" : "") +
        (z is double zz ? $", z {zz:G3}" : "");

    /// <summary>Quantize and gate start from the unquantized checkpoint, which is also the gate's baseline. A GGUF or a
    /// packed artifact is already quantized: re-quantizing it compounds the rounding and measures against the wrong
    /// original. eval, generate, detect and analyze accept those files; this is refused here, naming the key or option.</summary>
    static void RequireSource(QuantizationRequest r)
    {
        var format = ModelLoader.Detect(r.Checkpoint);
        if (format is CheckpointFormat.Gguf or CheckpointFormat.Packed)
            throw r.OriginOf("checkpoint").Error($"{r.Checkpoint} is a {(format == CheckpointFormat.Gguf ? "GGUF file" : "packed artifact")}, an already quantized runtime file; " +
                "quantize from the unquantized checkpoint it was made from: a Hugging Face folder (config.json + *.safetensors) or a llama2.c .bin " +
                "(eval, generate, detect and analyze accept GGUF and packed files)");
    }

    /// <summary>What a run holds until it ends, released whatever happens: open reference files, then its temp folder.</summary>
    sealed class Cleanup : IDisposable
    {
        readonly List<IDisposable> _items = new();
        string? _folder;
        public string? Folder
        {
            get => _folder;
            set { _folder = value; if (value is not null) OwnedFiles.Add(value); }
        }
        public void Add(IDisposable d) => _items.Add(d);
        public void Dispose()
        {
            foreach (var d in _items) d.Dispose();
            if (Folder is null) return;
            try { Directory.Delete(Folder, recursive: true); } catch (IOException) { }
            OwnedFiles.Remove(Folder);
        }
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
                throw g.Origin.Error($"{g.Path}: the budget {target} ({bytes:N0} bytes) is smaller than the smallest file this model can be written as ({min:N0} bytes, {bpw(min):F2} bits/weight: every matrix at its smallest type); give at least that");
            if (bytes > max)
                throw g.Origin.Error($"{g.Path}: the budget {target} ({bytes:N0} bytes) is larger than the model with every tensor at F16 ({max:N0} bytes, {bpw(max):F2} bits/weight); export gguf f16 instead, or a budget up to that");
        }
    }

    /// <summary>The detection prompt: given ids (checked against the vocabulary), text, or the first tokens of the
    /// calibration (else evaluation) stream; at most the model's context (a longer prompt adds nothing to detection).</summary>
    static int[] Prompt(QuantizationRequest r, LlamaConfig c, string tokenizer, int[]? calibration, int[]? eval)
    {
        int[] ids;
        if (r.PromptTokens is { } given)
        {
            int bad = Array.FindIndex(given, i => i < 0 || i >= c.VocabSize);
            if (given.Length == 0 || bad >= 0)
                throw r.PromptOrigin.Error(given.Length == 0 ? "the prompt has no token ids" : $"token id {given[bad]} is outside the model's vocabulary [0, {c.VocabSize})");
            ids = given;
        }
        else if (r.PromptText is string text) ids = Tokens.Tokenize(text, tokenizer, c.VocabSize, "the prompt");
        else if ((calibration ?? eval) is { } stream) ids = stream[..Math.Min(10, stream.Length)];
        else
        {
            try { ids = Tokens.Tokenize(SuperWeightDetector.PaperPrompt, tokenizer, c.VocabSize, "the prompt"); }
            catch (SuperQuantException e) when (e.Code == ErrorCodes.TokenizerUnsupported)
            {
                throw r.PromptOrigin.Error("the checkpoint has no tokenizer: give the detection prompt as token ids, or calibration data");
            }
        }
        return ids.Length > c.MaxPositionEmbeddings ? ids[..c.MaxPositionEmbeddings] : ids;
    }

    /// <summary>The reference file for this checkpoint, data and window plan: from the cache when present and intact,
    /// else recorded now (into the cache, or a temp folder this run deletes).</summary>
    static (ReferenceFile File, bool Cached) Reference(QuantizationRequest r, PipelineOptions o, LlamaModel model, int[] eval, int ctx, int stride,
        string checkpointHash, StepLog log, Cleanup cleanup)
    {
        string key = ReferenceKey(checkpointHash, eval, ctx, stride);
        // A baseline outside any cache is this run's to delete: handed to the cleanup the moment it exists, so a run
        // cancelled while recording it (SIGTERM, Ctrl+C) removes it too.
        string folder = o.ReferenceCacheFolder ?? (cleanup.Folder = Directory.CreateTempSubdirectory("superquant-ref-").FullName);
        string path = Path.Combine(folder, $"reference-{r.Id}-{key[..16]}.sqref");
        if (ReferenceFile.TryOpen(path, key, model.Config.VocabSize, eval.Length, ctx, stride) is { } cached)
        {
            log.Info($"{r.Id}: baseline from cache ({Path.GetFileName(path)})");
            return (cached, true);
        }
        Directory.CreateDirectory(folder);
        // One baseline per model id: older ones (other checkpoint or data) are this tool's own cache files.
        if (o.ReferenceCacheFolder is not null)
            foreach (string old in Directory.GetFiles(folder, $"reference-{r.Id}-*.sqref").Where(f => InputFiles.NotARegularFile(f) is null)) File.Delete(old);
        var (logits, batches) = MemoryPlan.Windows(model, eval, ctx, stride);
        using (batches)
            ReferenceFile.Record(path, key, logits, eval, ctx, stride, model.Config.VocabSize, log.Progress($"{r.Id}: reference").Invoke, o.Cancel);
        return (ReferenceFile.TryOpen(path, key, model.Config.VocabSize, eval.Length, ctx, stride)
            ?? throw new InvalidOperationException($"the reference just written to {path} does not read back"), false);
    }

    /// <summary>Content key of a baseline: checkpoint bytes, evaluation tokens, window plan and the file format.</summary>
    public static string ReferenceKey(string checkpointHash, IReadOnlyList<int> tokens, int context, int stride)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(Encoding.UTF8.GetBytes($"{checkpointHash}|{context}|{stride}|v{ReferenceFile.Version}|"));
        var buffer = new byte[4 * Math.Min(tokens.Count, 1 << 16)];
        for (int start = 0; start < tokens.Count; start += 1 << 16)
        {
            int n = Math.Min(1 << 16, tokens.Count - start);
            for (int i = 0; i < n; i++) BitConverter.TryWriteBytes(buffer.AsSpan(4 * i), tokens[start + i]);
            sha.AppendData(buffer, 0, 4 * n);
        }
        return Convert.ToHexString(sha.GetHashAndReset()).ToLowerInvariant();
    }

    /// <summary>Reads an artifact back from disk with the runtime that will load it and compares it with the
    /// reference; without evaluation data it is still loaded and run on one token.</summary>
    static (string Engine, DivergenceResult? Quality, IReadOnlyList<TaskScore> Tasks) Measure(ArtifactSpec spec, string path, QuantizationRequest r, PipelineOptions o,
        ReferenceFile? reference, int[]? eval, IReadOnlyList<(string Name, IReadOnlyList<ScoredDocument> Docs)> tasks, int taskContext, StepLog log, bool streamed)
    {
        var progress = log.Progress($"{r.Id}: evaluate {spec.Kind}");
        IReadOnlyList<TaskScore> Score(LogitsFunction logits, LlamaModel? ours = null) => tasks.Select(t =>
        {
            var p = log.Progress($"{r.Id}: {t.Name} ({spec.Kind})");
            var (f, batches) = ours is null ? (logits, null) : MemoryPlan.Requests(ours, t.Docs, taskContext);
            using (batches) return TaskScorer.Score(t.Name, t.Name == "lambada", t.Docs, f, taskContext, (d, n) => p(d, n), o.Cancel);
        }).ToList();
        if (spec is GgufSpec)
        {
            int ctx = reference?.Context ?? 8;
            using var m = LlamaCppEngine.Open(path, tasks.Count > 0 ? Math.Max(ctx, taskContext) : ctx, o.Threads);
            if (m.VocabSize != (reference?.Vocab ?? m.VocabSize))
                throw new SuperQuantException(ErrorCodes.ArtifactFormat, $"llama.cpp reads {m.VocabSize} tokens from {path}, the model has {reference!.Vocab}", path);
            var taskScores = Score(m.Logits);
            if (reference is null || eval is null) { m.Logits(new[] { 0 }); return ("llama.cpp", null, taskScores); }
            return ("llama.cpp", Evaluator.Divergence(reference, m.Logits, eval, (d, t) => progress(d, t), o.Cancel), taskScores);
        }
        var (model, _) = PackedArtifact.Load(path, o.Device.type == DeviceType.CPU ? null : o.Device, streamed);
        using (model)
        {
            var taskScores = Score(t => model.Forward(t), model);
            if (reference is null || eval is null) { model.Forward(new[] { 0 }).Dispose(); return ("superquant", null, taskScores); }
            var (logits, batches) = MemoryPlan.Windows(model, eval, reference.Context, reference.Stride);
            using (batches)
                return ("superquant", Evaluator.Divergence(reference, logits, eval, (d, t) => progress(d, t), o.Cancel), taskScores);
        }
    }
}
