using System.Globalization;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace SuperQuant.Manifest;

/// <summary>An invalid manifest: code SQ3001, with the file, line and column of the offending node.</summary>
public sealed class ManifestException(string path, int line, int column, string message)
    : Exception($"{path}({line},{column}): error SQ3001: {message}")
{
    public const string Code = "SQ3001";
    public string FilePath { get; } = path;
    public int Line { get; } = line;
    public int Column { get; } = column;
    public string Reason { get; } = message;
}

/// <summary>
/// Reads quantize.yaml with YamlDotNet's representation model (not its object deserializer) so every error can point
/// at the node's line and column: unknown keys, wrong types, numbers that are not finite, missing required keys,
/// duplicate ids, files that do not exist, paths that leave the project folder, and outputs that are inputs or each
/// other (compared as files, <see cref="FileIdentity"/>). Linear in the number of models.
/// </summary>
public static class ManifestReader
{
    /// <summary>Largest manifest read: a few KB is normal; anything near this is not a manifest.</summary>
    public const long MaxBytes = 16L << 20;

    static readonly string[] TopKeys = { "version", "device", "memory", "models" };
    static readonly string[] ModelKeys = { "id", "checkpoint", "output", "method", "weight_bits", "activation_bits", "block_size", "variant", "clip",
        "levels", "activation_scale", "activation_quantizer", "super_activation", "z", "calibration_text", "calibration_tokens", "evaluation_text",
        "evaluation_tokens", "prompt_tokens", "context", "export", "tasks", "gate" };
    static readonly string[] GateKeys = { "metric", "max_increase", "max_drop", "baseline" };
    static readonly string[] ExportKeys = { "gguf", "gguf_target", "path" };
    static readonly string[] TargetKeys = { "size", "bpw" };

    /// <param name="allowOutside">Absolute prefixes checkpoint and data paths may also live under (e.g. a shared model folder).</param>
    /// <param name="followSymlinks">Accept symbolic links that lead out of the project (and the allowed folders);
    /// by default a path is checked where its links really lead, not only where it is written.</param>
    public static QuantizeManifest Read(string path, IReadOnlyList<string>? allowOutside = null, bool followSymlinks = false)
    {
        string full = System.IO.Path.GetFullPath(path);
        if (Directory.Exists(full)) throw new ManifestException(full, 1, 1, "the manifest path is a folder; expected a quantize.yaml file");
        if (!File.Exists(full)) throw new ManifestException(full, 1, 1, "manifest not found");
        if (InputFiles.NotARegularFile(full) is string notFile) throw new ManifestException(full, 1, 1, notFile + "; expected a quantize.yaml file");
        InputFiles.Register(full, "the manifest");
        if (new FileInfo(full).Length > MaxBytes) throw new ManifestException(full, 1, 1, $"the manifest is larger than {MaxBytes >> 20} MiB");
        string dir = System.IO.Path.GetDirectoryName(full)!;
        var yaml = new YamlStream();
        try
        {
            using var reader = new StreamReader(full);
            yaml.Load(reader);
        }
        catch (YamlException e)
        {
            throw new ManifestException(full, (int)e.Start.Line, (int)e.Start.Column, "not valid YAML: " + e.Message);
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException or FormatException)
        {
            // YamlDotNet reports some malformed documents (e.g. duplicate keys) with plain exceptions.
            throw new ManifestException(full, 1, 1, "not valid YAML: " + e.Message);
        }
        if (yaml.Documents.Count == 0) throw new ManifestException(full, 1, 1, "the manifest is empty");
        var root = Map(full, yaml.Documents[0].RootNode, "the manifest");
        CheckKeys(full, root, TopKeys, "top level");
        int version = root.Children.TryGetValue(new YamlScalarNode("version"), out var v) ? Int(full, v, "version") : 1;
        if (version != 1) throw At(full, v!, $"version {version} is not supported (this tool reads version 1)");
        string device = root.Children.TryGetValue(new YamlScalarNode("device"), out var d) ? OneOf(full, d, "device", new[] { "auto", "cpu", "cuda" }) : "auto";
        string memory = root.Children.TryGetValue(new YamlScalarNode("memory"), out var mem) ? OneOf(full, mem, "memory", Names.MemoryNames.ToArray()) : "auto";
        if (!root.Children.TryGetValue(new YamlScalarNode("models"), out var modelsNode) || modelsNode is not YamlSequenceNode models
            || models.Children.Count == 0)
            throw new ManifestException(full, (int)root.Start.Line, (int)root.Start.Column, "'models' must be a non-empty list");
        var roots = new Roots(dir, allowOutside ?? Array.Empty<string>(), followSymlinks);
        var entries = new List<ModelEntry>();
        var ids = new HashSet<string>(StringComparer.Ordinal);
        foreach (var node in models.Children)
        {
            var entry = ReadModel(full, dir, Map(full, node, "a model entry"), roots);
            if (!ids.Add(entry.Id)) throw At(full, node, $"duplicate model id '{entry.Id}'");
            entries.Add(entry);
        }
        CheckFileIdentities(full, entries);
        return new QuantizeManifest(full, version, device, entries) { Memory = memory };
    }

    /// <summary>No output of any model may be an input of any model (or the manifest), lie inside a checkpoint folder,
    /// or be another output: compared as files, after links, so two spellings of one file collide.</summary>
    static void CheckFileIdentities(string file, IReadOnlyList<ModelEntry> entries)
    {
        var check = new FileIdentityCheck();
        check.AddInput(file, "the manifest");
        foreach (var e in entries)
        {
            check.AddInput(e.Checkpoint, $"model '{e.Id}''s checkpoint");
            foreach (string data in e.DataFiles) check.AddInput(data, $"model '{e.Id}''s data file");
        }
        foreach (var e in entries)
            foreach (var x in e.Exports)
                if (check.AddOutput(x.Path, $"model '{e.Id}''s {x.Kind} output") is string error)
                    throw new ManifestException(file, x.At.Line, x.At.Column, error);
    }

    /// <summary>Where paths may lead: the project (manifest) folder, and for inputs the allowed folders; each also
    /// as its real path, so a project that itself sits under a symlinked folder still works.</summary>
    sealed record Roots(string Dir, IReadOnlyList<string> AllowOutside, bool FollowSymlinks)
    {
        public string[] Project { get; } = new[] { Dir, RealPath.Resolve(Dir) };
        public string[] Inputs { get; } = new[] { Dir, RealPath.Resolve(Dir) }
            .Concat(AllowOutside.SelectMany(a => new[] { Path.GetFullPath(a), RealPath.Resolve(a) })).ToArray();
    }

    static ModelEntry ReadModel(string file, string dir, YamlMappingNode m, Roots roots)
    {
        CheckKeys(file, m, ModelKeys, "a model entry");
        var positions = new Dictionary<string, Position>();
        foreach (var (k, val) in m.Children) positions[((YamlScalarNode)k).Value ?? ""] = new Position((int)val.Start.Line, (int)val.Start.Column);
        YamlNode Required(string key) => m.Children.TryGetValue(new YamlScalarNode(key), out var n) ? n
            : throw new ManifestException(file, (int)m.Start.Line, (int)m.Start.Column, $"model entry is missing required key '{key}'");
        YamlNode? Optional(string key) => m.Children.TryGetValue(new YamlScalarNode(key), out var n) ? n : null;
        string? InputFile(string key)
        {
            var n = Optional(key);
            if (n is null) return null;
            string p = Resolve(file, dir, n, key, roots.Inputs, roots.FollowSymlinks);
            if (!File.Exists(p) && !Directory.Exists(p)) throw At(file, n, $"'{key}': {p} does not exist");
            // A FIFO or a device would block or never end the run (and its content hash): refused here, at the line.
            if (InputFiles.NotARegularFile(p) is string special && !Directory.Exists(p)) throw At(file, n, $"'{key}': {special}");
            // A checkpoint folder's files (config, shards, tokenizer) are read too: none may link out either.
            if (Directory.Exists(p) && !roots.FollowSymlinks)
                foreach (string inner in Directory.EnumerateFileSystemEntries(p))
                    CheckRealPath(file, n, key, inner, roots.Inputs);
            return p;
        }
        string id = Str(file, Required("id"), "id");
        if (id.Length == 0 || id.Length > 128 || id.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.')))
            throw At(file, Required("id"), $"id '{Excerpt(id)}' may use ASCII letters, digits, '-', '_' and '.' only (at most 128)");
        var outputNode = Required("output");
        string output = OutputFile(file, dir, outputNode, "output", roots);
        var gateNode = Map(file, Required("gate"), "'gate'");
        CheckKeys(file, gateNode, GateKeys, "'gate'");
        string metric = gateNode.Children.TryGetValue(new YamlScalarNode("metric"), out var mn)
            ? OneOf(file, mn, "metric", QualityGate.Metrics.ToArray()) : "kl";
        double maxIncrease;
        bool percent = false;
        if (metric == "accuracy")
        {
            if (gateNode.Children.TryGetValue(new YamlScalarNode("max_increase"), out var wrong))
                throw At(file, wrong, "metric accuracy is gated by 'max_drop' (accuracy points, e.g. 2), not 'max_increase'");
            if (!gateNode.Children.TryGetValue(new YamlScalarNode("max_drop"), out var drop))
                throw new ManifestException(file, (int)gateNode.Start.Line, (int)gateNode.Start.Column,
                    "metric accuracy needs 'max_drop' (accuracy points per task, e.g. 2)");
            maxIncrease = Dbl(file, drop, "max_drop");
            if (maxIncrease < 0 || maxIncrease > 100) throw At(file, drop, $"max_drop {maxIncrease} must be in 0..100 accuracy points");
            if (Optional("tasks") is null) throw At(file, mn!, "metric accuracy needs the model's 'tasks' (e.g. tasks: {piqa: data/piqa.jsonl})");
        }
        else
        {
            if (gateNode.Children.TryGetValue(new YamlScalarNode("max_drop"), out var drop))
                throw At(file, drop, "'max_drop' belongs to metric accuracy; use 'max_increase' for " + metric);
            if (!gateNode.Children.TryGetValue(new YamlScalarNode("max_increase"), out var inc))
                throw new ManifestException(file, (int)gateNode.Start.Line, (int)gateNode.Start.Column, "'gate' is missing required key 'max_increase'");
            string incText = Str(file, inc, "max_increase").Trim();
            percent = incText.EndsWith('%');
            if (!double.TryParse(percent ? incText[..^1] : incText, NumberStyles.Float, CultureInfo.InvariantCulture, out maxIncrease)
                || !double.IsFinite(maxIncrease) || maxIncrease < 0)
                throw At(file, inc, $"max_increase '{Excerpt(incText)}' must be a finite non-negative number or a percentage like '5%'");
        }
        double? fixedBaseline = null;
        if (gateNode.Children.TryGetValue(new YamlScalarNode("baseline"), out var bn) && !Names.Is(Str(file, bn, "baseline"), "original"))
            fixedBaseline = Dbl(file, bn, "baseline (a number or 'original')");
        string? evalText = InputFile("evaluation_text"), evalTokens = InputFile("evaluation_tokens");
        if (evalText is null && evalTokens is null)
            throw new ManifestException(file, (int)m.Start.Line, (int)m.Start.Column,
                $"model '{id}' needs 'evaluation_text' or 'evaluation_tokens' for its quality gate");
        var method = Optional("method") is { } me
            ? (Names.TryParseMethod(Str(file, me, "method"), out var parsed) ? parsed
                : throw At(file, me, $"'method' must be one of {string.Join(", ", Names.MethodNames)}, got '{Excerpt(Str(file, me, "method"))}'"))
            : QuantMethod.SuperAware;
        var entry = new ModelEntry
        {
            Id = id,
            Checkpoint = InputFile("checkpoint") ?? throw At(file, m, "model entry is missing required key 'checkpoint'"),
            Output = output,
            Method = method,
            WeightBits = Optional("weight_bits") is { } wb ? Range(file, wb, "weight_bits", 2, 8) : 4,
            ActivationBits = Optional("activation_bits") is { } ab ? Range(file, ab, "activation_bits", 4, 16) : 16,
            Variant = Optional("variant") is { } vn ? Names.ParseVariant(OneOf(file, vn, "variant", Names.VariantNames.ToArray())) : WeightVariant.Packed,
            Clip = Optional("clip") is { } cn2 ? Names.ParseClip(OneOf(file, cn2, "clip", Names.ClipNames.ToArray())) : ClipMethod.ZScore,
            Levels = Optional("levels") is { } ln ? Names.ParseLevels(OneOf(file, ln, "levels", Names.LevelNames.ToArray())) : LevelKind.Integer,
            ActivationScale = Optional("activation_scale") is { } asn ? OneOf(file, asn, "activation_scale", new[] { "per-token", "per-tensor" }) : "per-token",
            ActivationQuantizer = Optional("activation_quantizer") is { } aqn
                ? OneOf(file, aqn, "activation_quantizer", new[] { "symmetric", "asymmetric" }) : null,
            SuperActivation = Optional("super_activation") is { } san ? OneOf(file, san, "super_activation", new[] { "channel", "scalar" }) : "channel",
            BlockSize = Optional("block_size") is { } bs ? (Names.ParseBlockSize(Str(file, bs, "block_size")) ?? throw At(file, bs, $"'block_size' " +
                $"must be 32..4096, channel, or (variant paper) a power of two or tensor; got '{Excerpt(Str(file, bs, "block_size"))}'")) : 128,
            Z = Optional("z") is { } zn ? ZValue(file, zn) : null,
            CalibrationText = InputFile("calibration_text"),
            CalibrationTokens = InputFile("calibration_tokens"),
            EvaluationText = evalText,
            EvaluationTokens = evalTokens,
            PromptTokens = Optional("prompt_tokens") is { } pt ? PromptIds(file, pt) : null,
            Context = Optional("context") is { } cn ? Range(file, cn, "context", 2, 1 << 20) : 512,
            Tasks = Optional("tasks") is { } tn ? TaskEntries(file, tn, key => InputFileAt(file, dir, key.Node, "tasks." + key.Name, roots))
                : Array.Empty<TaskEntry>(),
            Exports = Exports(file, dir, Optional("export"), output, new Position((int)outputNode.Start.Line, (int)outputNode.Start.Column), roots),
            Gate = new QualityGate(metric, maxIncrease, percent, fixedBaseline),
            Line = (int)m.Start.Line,
            Positions = positions,
        };
        if (Names.BlockSizeProblem(entry.BlockSize, entry.Variant) is string problem) throw At(file, Optional("block_size")!, problem);
        if (entry.Variant != WeightVariant.Paper && Optional("clip") is { } cpk && entry.Clip is not (ClipMethod.ZScore or ClipMethod.None))
            throw At(file, cpk, $"clip '{entry.Clip.Name()}' is the paper's reference code: add 'variant: paper' (the packed variant clips by zscore or no)");
        if (entry.Variant != WeightVariant.Paper && Optional("levels") is { } lpk && entry.Levels != LevelKind.Integer)
            throw At(file, lpk, $"levels '{entry.Levels.Name()}' is the paper's reference code: add 'variant: paper'");
        if (entry.Levels == LevelKind.NormalFloat && entry.WeightBits is not (3 or 4))
            throw At(file, Optional("levels")!, $"normal-float levels exist for 3 and 4 bits (NF3, NF4), weight_bits is {entry.WeightBits}");
        bool calibrated = entry.CalibrationText is not null || entry.CalibrationTokens is not null;
        if (entry.Method == QuantMethod.SuperAware && entry.Z is null && !calibrated)
            throw new ManifestException(file, (int)m.Start.Line, (int)m.Start.Column,
                $"model '{id}': z: auto needs 'calibration_text' or 'calibration_tokens'");
        if (entry.Method.NeedsCalibration() && !calibrated)
            throw new ManifestException(file, (int)m.Start.Line, (int)m.Start.Column,
                $"model '{id}': {entry.Method.Name()} calibrates its smoothing scales: it needs 'calibration_text' or 'calibration_tokens'");
        foreach (var x in entry.Exports.Where(x => x.Target is not null))
        {
            if (entry.Method is not (QuantMethod.Rtn or QuantMethod.SuperAware))
                throw new ManifestException(file, x.At.Line, x.At.Column,
                    $"model '{id}': a GGUF size budget holds weights only; use method rtn or super-aware");
            if (!calibrated)
                throw new ManifestException(file, x.At.Line, x.At.Column,
                    $"model '{id}': gguf_target chooses each tensor's type from its measured sensitivity on calibration data: it needs " +
                    $"'calibration_text' or 'calibration_tokens'");
        }
        foreach (var x in entry.Exports.Where(x => x.GgufType is not null))
        {
            var t = x.GgufType!.Value;
            if (entry.Method.NeedsRuntimeTransforms(entry.ActivationBits) || entry.Method.Transforms())
                throw new ManifestException(file, x.At.Line, x.At.Column,
                    $"model '{id}': GGUF holds weights only; method {entry.Method.Name()} with activation_bits {entry.ActivationBits} needs run-time " +
                    $"activation handling, which only the packed artifact carries (export: [packed]); for GGUF use method rtn or super-aware");
            if (!t.IsFloat() && t.NominalBits() != entry.WeightBits)
                throw new ManifestException(file, x.At.Line, x.At.Column,
                    $"model '{id}': GGUF type {t.Name()} stores {t.NominalBits()}-bit weights but weight_bits is {entry.WeightBits}; make them agree " +
                    $"(or export f16/bf16)");
        }
        return entry;
    }

    /// <summary>export: a list of `packed` and `{gguf: TYPE}` (optionally `{gguf: TYPE, path: FILE}`); default [packed].</summary>
    static IReadOnlyList<ExportEntry> Exports(string file, string dir, YamlNode? node, string output, Position outputAt, Roots roots)
    {
        if (node is null) return new[] { new ExportEntry(null, output, outputAt) };
        if (node is not YamlSequenceNode seq || seq.Children.Count == 0)
            throw At(file, node, "'export' must be a non-empty list, e.g. [packed, {gguf: q4_k_m}]");
        var list = new List<ExportEntry>();
        foreach (var item in seq.Children)
        {
            var at = new Position((int)item.Start.Line, (int)item.Start.Column);
            if (item is YamlScalarNode s)
            {
                string v = s.Value ?? "";
                if (Names.Is(v, "packed")) { list.Add(new ExportEntry(null, output, outputAt)); continue; }
                string hint = v.StartsWith("gguf", StringComparison.OrdinalIgnoreCase)
                    ? $"; a GGUF export names its type: {{gguf: TYPE}} with TYPE one of {string.Join(", ", Names.GgufTypeNames)} (method super-aware " +
                        $"makes the super-aware GGUF)"
                    : "";
                throw At(file, item, $"'export' items are 'packed' or {{gguf: TYPE}}, got '{Excerpt(v)}'{hint}");
            }
            var map = Map(file, item, "an export item");
            CheckKeys(file, map, ExportKeys, "an export item");
            if (map.Children.TryGetValue(new YamlScalarNode("gguf_target"), out var targetNode))
            {
                if (map.Children.ContainsKey(new YamlScalarNode("gguf")))
                    throw At(file, item, "an export names either 'gguf: TYPE' or 'gguf_target: {size: ..} / {bpw: ..}', not both");
                var target = Target(file, targetNode);
                string targetPath = map.Children.TryGetValue(new YamlScalarNode("path"), out var tpn)
                    ? OutputFile(file, dir, tpn, "path", roots)
                    : DefaultGgufPath(output, "target");
                list.Add(new ExportEntry(null, targetPath, at) { Target = target });
                continue;
            }
            if (!map.Children.TryGetValue(new YamlScalarNode("gguf"), out var typeNode)) throw At(file, item,
                "an export mapping needs 'gguf: TYPE' (or 'gguf_target: {size: 1.9GB}')");
            string typeName = Str(file, typeNode, "gguf");
            if (!Names.TryParseGgufType(typeName, out var type))
                throw At(file, typeNode, $"'gguf' must be one of {string.Join(", ", Names.GgufTypeNames)}, got '{Excerpt(typeName)}'");
            string path = map.Children.TryGetValue(new YamlScalarNode("path"), out var pn)
                ? OutputFile(file, dir, pn, "path", roots)
                : DefaultGgufPath(output, type);
            list.Add(new ExportEntry(type, path, at));
        }
        if (list.Count(x => x.IsPacked) > 1) throw At(file, node, "'packed' is listed twice");
        return list;
    }

    /// <summary>gguf_target: {size: 1.9GB} or {bpw: 3.5}, exactly one of them.</summary>
    static GgufTarget Target(string file, YamlNode node)
    {
        var map = Map(file, node, "'gguf_target'");
        CheckKeys(file, map, TargetKeys, "'gguf_target'");
        if (map.Children.Count != 1) throw At(file, node, "'gguf_target' takes one of 'size' (e.g. 1.9GB) or 'bpw' (bits per weight, e.g. 3.5)");
        var (key, value) = map.Children.First();
        string name = ((YamlScalarNode)key).Value!, text = Str(file, value, "gguf_target." + name);
        return GgufTarget.TryParse($"{name}={text}")
            ?? throw At(file, value, $"'gguf_target.{name}' is '{Excerpt(text)}': expected " +
                $"{(name == "size" ? "a size, " + SuperQuant.Core.ByteSize.Forms : "a positive number of bits per weight")}");
    }

    /// <summary>models/stories.sqpk.safetensors -> models/stories.q4_k_m.gguf</summary>
    public static string DefaultGgufPath(string output, GgufFileType type) => DefaultGgufPath(output, type.Name());

    /// <summary>models/stories.sqpk.safetensors -> models/stories.LABEL.gguf</summary>
    public static string DefaultGgufPath(string output, string label)
    {
        string name = Path.GetFileName(output);
        foreach (string ext in new[] { ".safetensors", ".sqpk" })
            if (name.EndsWith(ext, StringComparison.OrdinalIgnoreCase)) name = name[..^ext.Length];
        return Path.Combine(Path.GetDirectoryName(output)!, $"{name}.{label}.gguf");
    }

    static int[] PromptIds(string file, YamlNode n)
    {
        string s = Str(file, n, "prompt_tokens");
        var ids = new List<int>();
        foreach (string item in s.Split(new[] { ' ', ',', '\t', '\n', '\r' }, StringSplitOptions.RemoveEmptyEntries))
        {
            if (!int.TryParse(item, NumberStyles.None, CultureInfo.InvariantCulture, out int id))
                throw At(file, n, $"'prompt_tokens' must be non-negative integer token ids separated by spaces or commas; '{Excerpt(item)}' is not one");
            ids.Add(id);
        }
        if (ids.Count == 0) throw At(file, n, "'prompt_tokens' holds no token ids");
        return ids.ToArray();
    }

    /// <summary>`tasks: {name: file, ...}`: known task names, each file an input inside the project.</summary>
    static IReadOnlyList<TaskEntry> TaskEntries(string file, YamlNode n, Func<(string Name, YamlNode Node), string> resolve)
    {
        var map = Map(file, n, "'tasks'");
        var list = new List<TaskEntry>();
        foreach (var (k, v) in map.Children)
        {
            string written = Str(file, k, "tasks");
            string name = Names.TaskNames.FirstOrDefault(t => Names.Is(written, t)) ?? written;
            if (!Names.TaskNames.Contains(name)) throw At(file, k, $"unknown task '{Excerpt(name)}' (known: {string.Join(", ", Names.TaskNames)})");
            list.Add(new TaskEntry(name, resolve((name, v)), new Position((int)v.Start.Line, (int)v.Start.Column)));
        }
        if (list.Count == 0) throw At(file, n, "'tasks' is empty");
        return list;
    }

    static string OutputFile(string file, string dir, YamlNode n, string key, Roots roots)
    {
        string p = Resolve(file, dir, n, key, roots.Project, roots.FollowSymlinks);
        return OutputPath.NotAFile(Str(file, n, key), p) is string problem ? throw At(file, n, $"'{key}': {problem}") : p;
    }

    static string InputFileAt(string file, string dir, YamlNode n, string key, Roots roots)
    {
        string p = Resolve(file, dir, n, key, roots.Inputs, roots.FollowSymlinks);
        if (!File.Exists(p)) throw At(file, n, $"'{key}': {p} does not exist");
        if (InputFiles.NotARegularFile(p) is string special) throw At(file, n, $"'{key}': {special}");
        return p;
    }

    static double? ZValue(string file, YamlNode n)
    {
        string s = Str(file, n, "z");
        return Names.TryParseZ(s, out double? z) ? z : throw At(file, n, $"z '{Excerpt(s)}' must be a positive finite number, 'auto' or 'none'");
    }

    /// <summary>Resolves against the manifest's folder; the result, as written and (unless following symlinks) where
    /// its links really lead, must stay inside one of <paramref name="roots"/>.</summary>
    static string Resolve(string file, string dir, YamlNode n, string key, string[] roots, bool followSymlinks)
    {
        string raw = Str(file, n, key);
        if (raw.Length == 0 || raw.Contains('\0')) throw At(file, n, $"'{key}' must be a path");
        string p;
        try { p = System.IO.Path.GetFullPath(System.IO.Path.Combine(dir, raw)); }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw At(file, n,
            $"'{key}': '{Excerpt(raw)}' is not a valid path");
        }
        if (!roots.Any(r => RealPath.IsUnder(p, r))) throw At(file, n, $"'{key}': {Excerpt(raw)} resolves to {p}, outside the project folder {dir}");
        if (!followSymlinks) CheckRealPath(file, n, key, p, roots);
        return p;
    }

    static void CheckRealPath(string file, YamlNode n, string key, string p, string[] roots)
    {
        string real;
        try { real = RealPath.Resolve(p); }
        catch (IOException e) { throw At(file, n, $"'{key}': {p}: {e.Message}"); }
        if (!roots.Any(r => RealPath.IsUnder(real, r)))
            throw At(file, n, $"'{key}': {p} is a symbolic link (or lies under one) to {real}, outside the project; allow that folder " +
                "(SuperQuantAllowOutside item / --allow-outside) or follow links anyway (SuperQuantFollowSymlinks=true / --follow-symlinks)");
    }

    static void CheckKeys(string file, YamlMappingNode m, string[] allowed, string where)
    {
        foreach (var k in m.Children.Keys)
        {
            string key = (k as YamlScalarNode)?.Value ?? "";
            if (!allowed.Contains(key)) throw At(file, k, $"unknown key '{Excerpt(key)}' in {where} (expected one of: {string.Join(", ", allowed)})");
        }
    }

    static YamlMappingNode Map(string file, YamlNode n, string what) => n as YamlMappingNode ?? throw At(file, n, $"{what} must be a mapping");

    static string Str(string file, YamlNode n, string key) => n is YamlScalarNode s && s.Value != null ? s.Value
        : throw At(file, n, $"'{key}' must be a scalar value");

    static int Int(string file, YamlNode n, string key) =>
        int.TryParse(Str(file, n, key), NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v
            : throw At(file, n, $"'{key}' must be an integer, got '{Excerpt(Str(file, n, key))}'");

    static double Dbl(string file, YamlNode n, string key) =>
        double.TryParse(Str(file, n, key), NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && double.IsFinite(v) ? v
            : throw At(file, n, $"'{key}' must be a finite number, got '{Excerpt(Str(file, n, key))}'");

    static int Range(string file, YamlNode n, string key, int lo, int hi)
    {
        int v = Int(file, n, key);
        return v >= lo && v <= hi ? v : throw At(file, n, $"'{key}' must be in {lo}..{hi}, got {v}");
    }

    static string OneOf(string file, YamlNode n, string key, string[] allowed)
    {
        string v = Str(file, n, key);
        // Names compare ordinally, ignoring case (metric: KL, baseline: ORIGINAL), never in the current culture: under
        // tr-TR a culture-aware "ORIGINAL" lowers to "orıgınal". The canonical spelling is returned.
        return allowed.FirstOrDefault(a => Names.Is(v, a)) ?? throw At(file, n, $"'{key}' must be one of {string.Join(", ", allowed)}, got '{Excerpt(v)}'");
    }

    /// <summary>At most 80 characters of a value in a message: a 30 MB value must not make a 30 MB error.</summary>
    public static string Excerpt(string s) => s.Length <= 80 ? s : s[..77] + "...";

    static ManifestException At(string file, YamlNode n, string message) => new(file, (int)n.Start.Line, (int)n.Start.Column, message);
}
