using System.CommandLine;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Llama;
using SuperQuant.Core.Quantization;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Manifest;
using SuperQuant.Models.Artifacts;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Gguf;

namespace SuperQuant.Cli.Commands;

/// <summary>`superquant gate`: run quantize.yaml end to end (what `dotnet build` runs through SuperQuant.Build).</summary>
public static class GateCommand
{
    public sealed record ModelResult(string Id, string Status, string Settings, string Metric, double Baseline, double Value, double Limit, bool Passed, bool NearMiss,
        double KlDivergence, double Top1Agreement, double Perplexity, double ReferencePerplexity, double BitsPerWeight, double? Z,
        List<int[]> SuperWeights, string Detection, List<string> Outputs, string InputHash, double Seconds);

    sealed record State(Dictionary<string, ModelResult> Models);

    public static Command Create()
    {
        var manifest = new Option<string>("--manifest") { Description = "quantize.yaml", DefaultValueFactory = _ => "quantize.yaml" };
        var reportDir = new Option<string?>("--report-dir") { Description = "folder for superquant-report.json/.md (default: next to the manifest)" };
        var state = new Option<string?>("--state") { Description = "state file with per-model input hashes; unchanged models are not re-quantized" };
        var deps = new Option<string?>("--deps-file") { Description = "write every input file (one per line) here, for incremental builds" };
        var outputs = new Option<string?>("--outputs-file") { Description = "write every output file (one per line) here" };
        var mode = new Option<string>("--gate") { Description = "error (a failed gate fails, exit 1) or warn", DefaultValueFactory = _ => "error" };
        var allow = new Option<string[]>("--allow-outside") { Description = "folders checkpoints and data may also come from (default: none)", AllowMultipleArgumentsPerToken = true };
        var followLinks = new Option<bool>("--follow-symlinks") { Description = "accept manifest paths whose symbolic links lead outside the project and the allowed folders (default: rejected with SQ3001)" };
        var lockTimeout = new Option<int>("--lock-timeout") { Description = "seconds to wait for another superquant run on the same project", DefaultValueFactory = _ => 600 };
        var device = new Option<string?>("--device") { Description = "auto | cpu | cuda (default: the manifest's device; SUPERQUANT_DEVICE overrides the manifest)" };
        var cmd = new Command("gate", "Quantize every model in quantize.yaml, evaluate it against its unquantized checkpoint and apply its quality gate. Writes artifacts, superquant-report.json and superquant-report.md.\n" + ExitCodes.HelpText)
        {
            manifest, reportDir, state, deps, outputs, mode, allow, followLinks, device, lockTimeout,
        };
        cmd.SetAction(r =>
        {
            try
            {
                QuantizeManifest m = ManifestReader.Read(r.GetValue(manifest)!, r.GetValue(allow) ?? Array.Empty<string>(), r.GetValue(followLinks));
                string lockDir = Path.GetDirectoryName(Path.GetFullPath(r.GetValue(state) ?? Path.Combine(r.GetValue(reportDir) ?? Path.GetDirectoryName(m.Path)!, "x")))!;
                Directory.CreateDirectory(lockDir);
                using var held = AcquireLock(Path.Combine(lockDir, "superquant.lock"), TimeSpan.FromSeconds(r.GetValue(lockTimeout)));
                if (held is null) return ExitCodes.InputError;
                return Run(m, r.GetValue(reportDir), r.GetValue(state), r.GetValue(deps), r.GetValue(outputs),
                    r.GetValue(mode) == "warn", r.GetValue(device));
            }
            catch (ManifestException e)
            {
                Console.Error.WriteLine(e.Message);
                return ExitCodes.InputError;
            }
        });
        return cmd;
    }

    /// <summary>Two builds of one project at once (parallel test runs, an IDE and a terminal) would race on the state
    /// file and the artifacts: the second waits for an exclusive lock under obj/. Null (after printing SQ0005) on timeout.</summary>
    static FileStream? AcquireLock(string path, TimeSpan timeout)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        bool told = false;
        while (true)
        {
            try { return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.DeleteOnClose); }
            catch (IOException)
            {
                if (clock.Elapsed >= timeout)
                {
                    Console.Error.WriteLine($"{path}: error SQ0005: another superquant run still holds this project's lock after {timeout.TotalSeconds:F0} s (is a build stuck? delete the file if no build is running)");
                    return null;
                }
                if (!told) { Console.WriteLine($"waiting for another superquant run on this project (lock: {path})"); told = true; }
                Thread.Sleep(200);
            }
        }
    }

    static int Run(QuantizeManifest m, string? reportDir, string? statePath, string? depsPath, string? outputsPath, bool warnOnly, string? deviceOption)
    {
        int code = CliSupport.Run(() =>
        {
            string? env = Environment.GetEnvironmentVariable(ComputeDevice.EnvironmentVariable);
            var dev = CliSupport.ResolveDevice(deviceOption ?? (string.IsNullOrEmpty(env) ? m.Device : env), quiet: false);
            reportDir ??= Path.GetDirectoryName(m.Path)!;
            var previous = statePath != null && File.Exists(statePath) ? ReadState(statePath) : new State(new());
            var results = new List<ModelResult>();
            string cacheDir = Path.GetDirectoryName(Path.GetFullPath(statePath ?? Path.Combine(reportDir, "x")))!; // beside the state file (obj/)
            bool failed = false;
            string toolVersion = typeof(GateCommand).Assembly.GetName().Version?.ToString() ?? "0";
            foreach (ModelEntry e in m.Models)
            {
                // The checkpoint is read once: its hash feeds both the input hash and the artifact's provenance.
                string checkpointHash = CheckpointHash.Compute(e.Checkpoint);
                string hash = InputHash(e, toolVersion, checkpointHash);
                if (previous.Models.TryGetValue(e.Id, out var old) && old.InputHash == hash && old.Passed && old.Outputs.All(File.Exists))
                {
                    Console.WriteLine($"{e.Id}: up to date (inputs unchanged), skipped");
                    results.Add(old with { Status = "up-to-date" });
                    continue;
                }
                var result = RunModel(m, e, hash, checkpointHash, dev, cacheDir);
                string where = $"{m.Path}({e.Line},1)";
                if (!result.Passed)
                {
                    string msg = $"model '{e.Id}': {e.Gate.Metric} {Fmt(result.Value)} exceeds the gate limit {Fmt(result.Limit)} (baseline {Fmt(result.Baseline)}, max_increase {Fmt(e.Gate.MaxIncrease)}{(e.Gate.Percent ? "%" : "")})";
                    if (warnOnly) Console.WriteLine($"{where}: warning {ErrorCodes.GateFailed}: {msg} (SuperQuantGate=warn)");
                    else
                    {
                        Console.WriteLine($"{where}: error {ErrorCodes.GateFailed}: {msg}");
                        foreach (string o in result.Outputs) File.Delete(o); // a model that failed its gate is not shipped
                        failed = true;
                    }
                }
                else if (result.NearMiss)
                    Console.WriteLine($"{where}: warning SQ1002: model '{e.Id}': {e.Gate.Metric} {Fmt(result.Value)} is within 20% of the gate limit {Fmt(result.Limit)}");
                else Console.WriteLine($"{e.Id}: {e.Gate.Metric} {Fmt(result.Value)} (baseline {Fmt(result.Baseline)}, limit {Fmt(result.Limit)}): passed");
                results.Add(result);
            }
            Directory.CreateDirectory(reportDir);
            string json = Path.Combine(reportDir, "superquant-report.json"), md = Path.Combine(reportDir, "superquant-report.md"), html = Path.Combine(reportDir, "superquant-report.html");
            CliSupport.WriteAtomically(json, JsonSerializer.Serialize(new { schema = "superquant.report", schema_version = 1, manifest = m.Path, models = results }, Reports.AnalysisReport.Json));
            CliSupport.WriteAtomically(md, Markdown(m, results));
            CliSupport.WriteAtomically(html, Reports.GateHtml.Render(m.Path, results));
            Console.WriteLine($"report: {json}");
            if (statePath != null)
            {
                Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(statePath))!);
                var keep = results.Where(x => x.Passed || warnOnly).ToDictionary(x => x.Id, x => x with { Status = "done" });
                CliSupport.WriteAtomically(statePath, JsonSerializer.Serialize(new State(keep), Reports.AnalysisReport.Json));
            }
            if (depsPath != null)
                CliSupport.WriteAtomically(depsPath, string.Join('\n', new[] { m.Path, typeof(GateCommand).Assembly.Location }
                    .Concat(m.Models.SelectMany(e => CheckpointHash.Files(e.Checkpoint).Concat(e.DataFiles))).Distinct()) + "\n");
            if (outputsPath != null)
                CliSupport.WriteAtomically(outputsPath, string.Join('\n', m.Models.SelectMany(OutputsOf).Append(json).Append(md).Append(html)) + "\n");
            return failed ? ExitCodes.GateFailed : ExitCodes.Success;
        });
        return code;
    }

    public static IEnumerable<string> OutputsOf(ModelEntry e)
    {
        if (e.Export.Contains("packed")) yield return e.Output;
        if (e.Export.Any(x => x.StartsWith("gguf", StringComparison.Ordinal))) yield return Path.ChangeExtension(e.Output, ".gguf");
    }

    /// <summary>"duquant W4A4, block channel": what a report row was quantized with.</summary>
    static string SettingsOf(ModelEntry e) =>
        $"{e.Method} W{e.WeightBits}A{e.ActivationBits}, block {(e.BlockSize == 0 ? "channel" : e.BlockSize.ToString(CultureInfo.InvariantCulture))}";

    static ModelResult RunModel(QuantizeManifest m, ModelEntry e, string hash, string checkpointHash, TorchSharp.torch.Device dev, string cacheDir)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        Console.WriteLine($"{e.Id}: quantizing {e.Checkpoint} ({SettingsOf(e)})");
        string folder = EvalCommand.CheckpointFolder(e.Checkpoint);
        using LlamaModel model = ModelLoader.Load(e.Checkpoint, dev);
        int[] Tokens(string? text, string? ids) => EvalCommand.LoadTokens(text, ids, folder, model.Config.VocabSize, model.Config.BosTokenId);
        int[] eval = Tokens(e.EvaluationText, e.EvaluationTokens);
        int[]? calib = e.CalibrationText != null || e.CalibrationTokens != null ? Tokens(e.CalibrationText, e.CalibrationTokens) : null;
        int[] prompt = e.PromptTokens != null
            ? e.PromptTokens.Split(new[] { ' ', ',' }, StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray()
            : (calib ?? eval)[..Math.Min(10, (calib ?? eval).Length)];
        // The unquantized model's logits, recorded before anything changes it: the gate then compares against them
        // without loading the checkpoint a second time (one model in memory instead of two).
        int ctx = Math.Min(e.Context, model.Config.MaxPositionEmbeddings), stride = Math.Max(1, ctx / 2);
        using ReferenceLogits reference = BaselineCache.GetOrRecord(cacheDir, e.Id, checkpointHash, eval, ctx, stride,
            () => Evaluator.RecordReference(t => model.Forward(t), eval, ctx, stride, new ConsoleProgress($"{e.Id}: reference").Report));
        var detection = new SuperWeightDetector().Detect(model, prompt);
        string detectionText = Reports.DetectionSection.From(detection, null, KnownSuperWeights.For(model.Config)).Summary;
        Console.WriteLine($"{e.Id}: {detectionText}");

        if (e.Export.Any(x => x.StartsWith("gguf", StringComparison.Ordinal)))
        {
            var mode = e.Export.Contains("gguf-super-aware") ? GgufMode.SuperAware : e.Export.Contains("gguf-q8_0") ? GgufMode.Q8_0 : e.Export.Contains("gguf-f16") ? GgufMode.F16 : GgufMode.Q4_0;
            var vocabulary = GgufVocabulary.FromCheckpoint(e.Checkpoint, model.Config);
            Console.WriteLine($"{e.Id}: GGUF tokenizer: {vocabulary?.ToString() ?? "none found (no_vocab: llama.cpp runs token ids only)"}");
            GgufWriter.Write(Path.ChangeExtension(e.Output, ".gguf"), model, mode, detection.SuperWeights, e.Id, vocabulary);
        }
        // W/A methods: calibrate and fuse the activation transforms into the weights first, then round the weights
        // like any other model; the hooks quantize activations during evaluation and travel in the artifact.
        bool transformed = ActivationPlan.Transforms(e.Method);
        ActivationQuantizer? activations = ActivationPlan.Prepare(model, e.Method, e.WeightBits, e.ActivationBits, calib ?? prompt, detection);
        if (activations is not null) Console.WriteLine($"{e.Id}: calibrated {e.Method} activation handling ({activations.Transforms.Count} rotations)");
        var options = new WeightQuantizationOptions
        {
            Method = ActivationPlan.WeightMethodFor(e.Method),
            Bits = e.WeightBits, BlockSize = e.BlockSize, Z = QuantizeCommand.ParseZ(e.Z),
        };
        using QuantizationResult result = ModelQuantizer.Quantize(model, options, transformed ? Array.Empty<SuperWeight>() : detection.SuperWeights, calib, new ConsoleProgress($"{e.Id}: quantize").Report);
        model.Hooks = activations;
        if (e.Export.Contains("packed")) PackedArtifact.Write(e.Output, model, result, checkpointHash, ManifestHash(m), activations);

        var d = Evaluator.Divergence(reference, t => model.Forward(t), eval, new ConsoleProgress($"{e.Id}: evaluate").Report);
        (double baseline, double value) = e.Gate.Metric switch
        {
            "perplexity" => (d.ReferencePerplexity.Value, d.ModifiedPerplexity.Value),
            "top1" => (1.0, d.Top1Agreement.Value),
            _ => (0.0, d.KlDivergence.Value),
        };
        if (e.Gate.FixedBaseline is double fixedBaseline) baseline = fixedBaseline;
        return new ModelResult(e.Id, "quantized", SettingsOf(e), e.Gate.Metric, baseline, value, e.Gate.Limit(baseline), e.Gate.Passes(value, baseline), e.Gate.NearMiss(value, baseline),
            d.KlDivergence.Value, d.Top1Agreement.Value, d.ModifiedPerplexity.Value, d.ReferencePerplexity.Value, result.BitsPerWeight,
            double.IsPositiveInfinity(result.Z) ? null : result.Z, detection.SuperWeights.Select(s => new[] { s.Layer, s.Row, s.Column }).ToList(),
            detectionText, OutputsOf(e).ToList(), hash, clock.Elapsed.TotalSeconds);
    }

    /// <summary>Content hash of everything a model's result depends on: its manifest entry, checkpoint, data files
    /// and the tool version. Equal hash = nothing to recompute.</summary>
    static string InputHash(ModelEntry e, string toolVersion, string checkpointHash)
    {
        var sb = new StringBuilder();
        sb.Append(JsonSerializer.Serialize(e with { Line = 0 })).Append('\n').Append(toolVersion).Append('\n').Append(checkpointHash).Append('\n');
        foreach (string f in e.DataFiles) sb.Append(Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f)))).Append('\n');
        return Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(sb.ToString()))).ToLowerInvariant();
    }

    static string ManifestHash(QuantizeManifest m) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(m.Path))).ToLowerInvariant();

    static State ReadState(string path)
    {
        try { return JsonSerializer.Deserialize<State>(File.ReadAllText(path), Reports.AnalysisReport.Json) ?? new State(new()); }
        catch (JsonException) { return new State(new()); } // a damaged state file only costs a re-run
    }

    static string Markdown(QuantizeManifest m, IReadOnlyList<ModelResult> results)
    {
        var sb = new StringBuilder("# SuperQuant quality gate\n\n");
        sb.Append($"Manifest: `{m.Path}`\n\n| model | status | settings | metric | baseline | value | limit | gate | KL | top-1 | perplexity (original) | bits/weight | super weights |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        foreach (var r in results)
            sb.Append($"| {r.Id} | {r.Status} | {r.Settings} | {r.Metric} | {Fmt(r.Baseline)} | {Fmt(r.Value)} | {Fmt(r.Limit)} | {(r.Passed ? (r.NearMiss ? "near miss" : "passed") : "**FAILED**")} | {Fmt(r.KlDivergence)} | {r.Top1Agreement:P1} | {Fmt(r.Perplexity)} ({Fmt(r.ReferencePerplexity)}) | {r.BitsPerWeight:F3} | {(r.SuperWeights.Count == 0 ? "none found" : string.Join(", ", r.SuperWeights.Select(s => $"({s[0]}, {s[1]}, {s[2]})")))} |\n");
        return sb.ToString();
    }

    static string Fmt(double v) => v.ToString("G5", CultureInfo.InvariantCulture);

}
