using System.CommandLine;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using SuperQuant.Cli.Gate;
using SuperQuant.Cli.Reports;
using SuperQuant.Core;
using SuperQuant.Manifest;
using SuperQuant.Models.Artifacts;
using SuperQuant.Pipeline;

namespace SuperQuant.Cli.Commands;

/// <summary>`superquant gate`: run quantize.yaml end to end (what `dotnet build` runs through SuperQuant.Build).</summary>
public static class GateCommand
{
    public static Command Create()
    {
        var manifest = new Option<string>("--manifest") { Description = "quantize.yaml", DefaultValueFactory = _ => "quantize.yaml" };
        var reportDir = new Option<string?>("--report-dir") { Description = "folder for superquant-report.json/.md/.html (default: next to the manifest)" };
        var state = new Option<string?>("--state") { Description = "state file with per-model input hashes; unchanged models are not re-quantized" };
        var deps = new Option<string?>("--deps-file") { Description = "write every input file (one per line) here, for incremental builds" };
        var outputs = new Option<string?>("--outputs-file") { Description = "write every output file (one per line) here" };
        var mode = new Option<string>("--gate")
        {
            Description = "error (a failed gate fails, exit 1) or warn",
            DefaultValueFactory = _ => "error"
        }.OneOf("error", "warn");
        var allow = new Option<string[]>("--allow-outside")
        {
            Description = "folders checkpoints and data may also come from (default: none)",
            AllowMultipleArgumentsPerToken = true
        };
        var followLinks = new Option<bool>("--follow-symlinks")
        {
            Description = "accept manifest paths whose symbolic links lead outside the project " +
            "and the allowed folders (default: rejected with SQ3001)"
        };
        var lockTimeout = new Option<int>("--lock-timeout")
        {
            Description = "seconds to wait for another superquant run on the same project",
            DefaultValueFactory = _ => 600
        }.InRange(0, 86400);
        var device = new Option<string?>("--device")
        {
            Description = "auto | cpu | cuda (default: the manifest's device; SUPERQUANT_DEVICE overrides " +
            "the manifest)"
        };
        device.Validators.Add(r =>
        {
            string? v = r.GetValueOrDefault<string?>();
            if (v is not null and not ("auto" or "cpu" or "cuda"))
                r.AddError($"{ErrorCodes.InvalidArgument}: --device '{ManifestReader.Excerpt(v)}' (expected auto, cpu or cuda)");
        });
        var threads = new Option<int?>("--threads") { Description = "llama.cpp threads (default: one per core)" }.InRange(1, 1024);
        var raise = new Option<bool>("--gguf-raise-super") { Description = "super-aware GGUF: ffn_down matrices holding super weights one type higher" };
        var memory = CliSupport.MemoryOption();
        var cmd = new Command("gate", "Quantize every model in quantize.yaml, measure every file it exports as its runtime loads it (packed: our " +
            "loader; GGUF: llama.cpp) against the unquantized checkpoint, and apply the quality gate. Writes the artifacts that passed and " +
            "superquant-report.json/.md/.html.\n" + ExitCodes.HelpText)
        {
            manifest, reportDir, state, deps, outputs, mode, allow, followLinks, device, lockTimeout, threads, raise, memory,
        };
        cmd.SetAction(r => CliSupport.Run(() =>
        {
            QuantizeManifest m = ManifestReader.Read(r.GetValue(manifest)!, r.GetValue(allow) ?? Array.Empty<string>(), r.GetValue(followLinks));
            string reportFolder = Path.GetFullPath(r.GetValue(reportDir) ?? Path.GetDirectoryName(m.Path)!);
            var files = new RunFiles(reportFolder, FullOrNull(r.GetValue(state), "--state"), FullOrNull(r.GetValue(deps), "--deps-file"),
                FullOrNull(r.GetValue(outputs), "--outputs-file"));
            CheckRunFiles(m, files);
            using var held = ProjectLock.Acquire(m, TimeSpan.FromSeconds(r.GetValue(lockTimeout)));
            return Run(m, files, r.GetValue(mode) == "warn", r.GetValue(device), r.GetValue(threads), r.GetValue(raise),
                Names.ParseMemory(r.GetValue(memory) ?? m.Memory));
        }));
        return cmd;
    }

    static string? FullOrNull(string? p, string option) => p is null ? null : CliSupport.OutputFile(p, option);

    sealed record RunFiles(string ReportFolder, string? State, string? Deps, string? Outputs)
    {
        public string Json => Path.Combine(ReportFolder, "superquant-report.json");
        public string Markdown => Path.Combine(ReportFolder, "superquant-report.md");
        public string Html => Path.Combine(ReportFolder, "superquant-report.html");
        /// <summary>The baseline cache lives beside the state file (obj/superquant in a build).</summary>
        public string Cache => State is null ? ReportFolder : Path.GetDirectoryName(State)!;

        public IEnumerable<(string Path, string What)> All => new[] { (Json, "the JSON report"), (Markdown, "the Markdown report"), (Html, "the HTML report") }
            .Concat(new[] { (State, "--state"), (Deps, "--deps-file"),
                (Outputs, "--outputs-file") }.Where(x => x.Item1 is not null).Select(x => (x.Item1!, x.Item2)));
    }

    /// <summary>Reports, state and dependency files are outputs too: none may be an input or an artifact.</summary>
    static void CheckRunFiles(QuantizeManifest m, RunFiles files)
    {
        var check = new FileIdentityCheck();
        check.AddInput(m.Path, "the manifest");
        foreach (var e in m.Models)
        {
            check.AddInput(e.Checkpoint, $"model '{e.Id}''s checkpoint");
            foreach (string d in e.DataFiles) check.AddInput(d, $"model '{e.Id}''s data file");
        }
        foreach (var e in m.Models)
            foreach (var x in e.Exports) check.AddOutput(x.Path, $"model '{e.Id}''s {x.Kind} output"); // checked by the manifest reader
        foreach (var (p, what) in files.All)
        {
            if (check.AddOutput(p, what) is string error) throw new SuperQuantException(ErrorCodes.InvalidArgument, error, p);
            AtomicFile.CheckReplaceable(Path.GetFullPath(p)); // a FIFO or device there: refused before any work, not after shipping
        }
    }

    static int Run(QuantizeManifest m, RunFiles files, bool warnOnly, string? deviceOption, int? threads, bool raise, MemoryMode memory)
    {
        string? env = Environment.GetEnvironmentVariable(ComputeDevice.EnvironmentVariable);
        var dev = CliSupport.ResolveDevice(deviceOption ?? (string.IsNullOrEmpty(env) ? m.Device : env), quiet: false);
        var previous = files.State is not null ? BuildState.ReadState(files.State) : new BuildState.State(new());
        var reports = new List<ModelReport>();
        var keep = new Dictionary<string, BuildState.StateEntry>();
        var shipped = new List<string>();
        bool failed = false;
        string toolVersion = BuildState.ToolVersion();
        string manifestSha = Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(m.Path))).ToLowerInvariant();
        foreach (ModelEntry e in m.Models)
        {
            string checkpointHash = CheckpointHash.Compute(e.Checkpoint); // read once: input hash and artifact provenance
            string hash = BuildState.InputHash(e, toolVersion, checkpointHash);
            if (previous.Models.TryGetValue(e.Id, out var old) && old.InputHash == hash && old.Report.Passed)
            {
                if (BuildState.ChangedOutput(old) is string changed)
                    Console.WriteLine($"{e.Id}: inputs unchanged, but {changed}: re-quantizing");
                else
                {
                    Console.WriteLine($"{e.Id}: up to date (inputs and outputs unchanged), skipped");
                    reports.Add(old.Report with { Status = "up-to-date" });
                    keep[e.Id] = old;
                    shipped.AddRange(old.Outputs);
                    continue;
                }
            }
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var request = ManifestRequests.From(m, e);
            Console.WriteLine($"{e.Id}: quantizing {e.Checkpoint} ({Settings(e)})");
            var result = QuantizationPipeline.Run(request, new PipelineOptions
            {
                Device = dev, ReferenceCacheFolder = files.Cache, Log = new ConsoleLog(), Cancel = CliSupport.Cancellation, Threads = threads,
                ManifestSha256 = manifestSha, CheckpointSha256 = checkpointHash, RaiseSuperWeightTensors = raise, Memory = memory,
            });
            var rows = result.Artifacts.Select(a => GateVerdict.Judge(a, e.Gate, result.TaskBaselines)).ToList();
            var report = new ModelReport
            {
                Id = e.Id, Status = "quantized", Settings = Settings(e), Detection = result.Detection,
                SuperWeights = result.SuperWeights.Select(s => new[] { s.Layer, s.Row, s.Column }).ToList(), Z = result.Z,
                ReferenceFromCache = result.ReferenceFromCache, TokensEvaluated = result.TokensEvaluated, Artifacts = rows,
                Steps = result.Steps.ToList(), InputHash = hash, Seconds = clock.Elapsed.TotalSeconds,
            };
            foreach (var a in rows)
                Console.WriteLine(GateVerdict.Message(m, e, a, warnOnly));
            if (report.Passed || warnOnly)
            {
                foreach (var a in result.Artifacts) a.File.Promote();
                var finals = result.Artifacts.Select(a => a.File.FinalPath).ToList();
                keep[e.Id] = new BuildState.StateEntry(hash, finals, report, finals.ToDictionary(f => f, BuildState.Sha256));
                shipped.AddRange(finals);
            }
            else
            {
                foreach (var a in result.Artifacts) a.File.Discard(); // a model that failed its gate is not shipped
                failed = true;
                report = report with { Status = "failed" };
            }
            reports.Add(report);
        }
        Directory.CreateDirectory(files.ReportFolder);
        CliSupport.WriteAtomically(files.Json, JsonSerializer.Serialize(new
        {
            schema = "superquant.report", schema_version = 2, manifest = m.Path,
            models = reports
        }, AnalysisReport.Json));
        CliSupport.WriteAtomically(files.Markdown, ArtifactReport.Markdown(m.Path, reports));
        CliSupport.WriteAtomically(files.Html, GateHtml.Render(m.Path, reports));
        Console.WriteLine($"report: {files.Json}");
        if (files.State is not null)
            CliSupport.WriteAtomically(files.State, JsonSerializer.Serialize(new BuildState.State(keep, BuildState.State.ChecksumOf(keep)),
                AnalysisReport.Json));
        if (files.Deps is not null)
            CliSupport.WriteAtomically(files.Deps, string.Join('\n', new[] { m.Path, typeof(GateCommand).Assembly.Location }
                .Concat(m.Models.SelectMany(e => CheckpointHash.Files(e.Checkpoint).Concat(e.DataFiles))).Distinct()) + "\n");
        if (files.Outputs is not null)
            CliSupport.WriteAtomically(files.Outputs, string.Join('\n', shipped.Append(files.Json).Append(files.Markdown).Append(files.Html)) + "\n");
        return failed ? ExitCodes.GateFailed : ExitCodes.Success;
    }

    /// <summary>"duquant W4A4, block channel, export packed + gguf q4_k_m": what a report row was quantized with.</summary>
    static string Settings(ModelEntry e) =>
        $"{e.Method.Name()} W{e.WeightBits}A{e.ActivationBits}, block " +
            $"{Names.BlockSizeName(e.BlockSize)}{(e.Variant == WeightVariant.Paper ? $", paper ({e.Clip.Name()}, {e.Levels.Name()})" : "")}, export " +
            $"{string.Join(" + ", e.Exports.Select(x => x.Kind))}";

    static string Fmt(double v) => v.ToString("G5", CultureInfo.InvariantCulture);
}
