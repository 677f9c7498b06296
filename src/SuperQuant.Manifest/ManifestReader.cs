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
/// at the node's line and column: unknown keys, wrong types, missing required keys, duplicate ids, files that do not
/// exist, and paths that leave the project folder.
/// </summary>
public static class ManifestReader
{
    static readonly string[] TopKeys = { "version", "device", "models" };
    static readonly string[] ModelKeys = { "id", "checkpoint", "output", "method", "weight_bits", "activation_bits", "block_size", "z", "calibration_text", "calibration_tokens", "evaluation_text", "evaluation_tokens", "prompt_tokens", "context", "export", "gate" };
    static readonly string[] GateKeys = { "metric", "max_increase", "baseline" };
    static readonly string[] Methods = { "rtn", "super-aware", "smoothquant", "hadamard", "duquant" };
    static readonly string[] Exports = { "packed", "gguf", "gguf-super-aware", "gguf-q8_0", "gguf-f16" };

    /// <param name="allowOutside">Absolute prefixes checkpoint and data paths may also live under (e.g. a shared model folder).</param>
    /// <param name="followSymlinks">Accept symbolic links that lead out of the project (and the allowed folders);
    /// by default a path is checked where its links really lead, not only where it is written.</param>
    public static QuantizeManifest Read(string path, IReadOnlyList<string>? allowOutside = null, bool followSymlinks = false)
    {
        string full = System.IO.Path.GetFullPath(path);
        if (!File.Exists(full)) throw new ManifestException(full, 1, 1, "manifest not found");
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
        if (!root.Children.TryGetValue(new YamlScalarNode("models"), out var modelsNode) || modelsNode is not YamlSequenceNode models || models.Children.Count == 0)
            throw new ManifestException(full, (int)root.Start.Line, (int)root.Start.Column, "'models' must be a non-empty list");
        var entries = new List<ModelEntry>();
        foreach (var node in models.Children)
        {
            var entry = ReadModel(full, dir, Map(full, node, "a model entry"), new Roots(dir, allowOutside ?? Array.Empty<string>(), followSymlinks));
            if (entries.Any(e => e.Id == entry.Id)) throw At(full, node, $"duplicate model id '{entry.Id}'");
            if (entries.Any(e => e.Output == entry.Output)) throw At(full, node, $"model '{entry.Id}' writes the same output as another model");
            entries.Add(entry);
        }
        return new QuantizeManifest(full, version, device, entries);
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
        YamlNode Required(string key) => m.Children.TryGetValue(new YamlScalarNode(key), out var n) ? n
            : throw new ManifestException(file, (int)m.Start.Line, (int)m.Start.Column, $"model entry is missing required key '{key}'");
        YamlNode? Optional(string key) => m.Children.TryGetValue(new YamlScalarNode(key), out var n) ? n : null;
        string? InputFile(string key, bool mustExist = true)
        {
            var n = Optional(key);
            if (n is null) return null;
            string p = Resolve(file, dir, n, key, roots.Inputs, roots.FollowSymlinks);
            if (mustExist && !File.Exists(p) && !Directory.Exists(p)) throw At(file, n, $"'{key}': {p} does not exist");
            // A checkpoint folder's files (config, shards, tokenizer) are read too: none may link out either.
            if (Directory.Exists(p) && !roots.FollowSymlinks)
                foreach (string inner in Directory.EnumerateFileSystemEntries(p))
                    CheckRealPath(file, n, key, inner, roots.Inputs);
            return p;
        }
        string id = Str(file, Required("id"), "id");
        if (id.Length == 0 || id.Any(c => !(char.IsLetterOrDigit(c) || c is '-' or '_' or '.'))) throw At(file, Required("id"), $"id '{id}' may use letters, digits, '-', '_' and '.' only");
        var outputNode = Required("output");
        string output = Resolve(file, dir, outputNode, "output", roots.Project, roots.FollowSymlinks);
        var gateNode = Map(file, Required("gate"), "'gate'");
        CheckKeys(file, gateNode, GateKeys, "'gate'");
        string metric = gateNode.Children.TryGetValue(new YamlScalarNode("metric"), out var mn) ? OneOf(file, mn, "metric", new[] { "perplexity", "kl", "top1" }) : "kl";
        if (!gateNode.Children.TryGetValue(new YamlScalarNode("max_increase"), out var inc))
            throw new ManifestException(file, (int)gateNode.Start.Line, (int)gateNode.Start.Column, "'gate' is missing required key 'max_increase'");
        string incText = Str(file, inc, "max_increase").Trim();
        bool percent = incText.EndsWith('%');
        if (!double.TryParse(percent ? incText[..^1] : incText, NumberStyles.Float, CultureInfo.InvariantCulture, out double maxIncrease) || maxIncrease < 0)
            throw At(file, inc, $"max_increase '{incText}' must be a non-negative number or a percentage like '5%'");
        double? fixedBaseline = null;
        if (gateNode.Children.TryGetValue(new YamlScalarNode("baseline"), out var bn) && Str(file, bn, "baseline") != "original")
            fixedBaseline = Dbl(file, bn, "baseline (a number or 'original')");
        var export = Optional("export") switch
        {
            null => new List<string> { "packed" },
            YamlSequenceNode seq => seq.Children.Select(x => OneOf(file, x, "export", Exports)).ToList(),
            var other => throw At(file, other, "'export' must be a list, e.g. [packed, gguf-super-aware]"),
        };
        string? evalText = InputFile("evaluation_text"), evalTokens = InputFile("evaluation_tokens");
        if (evalText is null && evalTokens is null)
            throw new ManifestException(file, (int)m.Start.Line, (int)m.Start.Column, $"model '{id}' needs 'evaluation_text' or 'evaluation_tokens' for its quality gate");
        var entry = new ModelEntry
        {
            Id = id,
            Checkpoint = InputFile("checkpoint") ?? throw At(file, m, "model entry is missing required key 'checkpoint'"),
            Output = output,
            Method = Optional("method") is { } me ? OneOf(file, me, "method", Methods) : "super-aware",
            WeightBits = Optional("weight_bits") is { } wb ? Range(file, wb, "weight_bits", 2, 8) : 4,
            ActivationBits = Optional("activation_bits") is { } ab ? Range(file, ab, "activation_bits", 4, 16) : 16,
            BlockSize = Optional("block_size") is { } bs ? (Str(file, bs, "block_size") is "channel" ? 0 : Range(file, bs, "block_size", 32, 4096)) : 128,
            Z = Optional("z") is { } zn ? ZValue(file, zn) : "auto",
            CalibrationText = InputFile("calibration_text"),
            CalibrationTokens = InputFile("calibration_tokens"),
            EvaluationText = evalText,
            EvaluationTokens = evalTokens,
            PromptTokens = Optional("prompt_tokens") is { } pt ? Str(file, pt, "prompt_tokens") : null,
            Context = Optional("context") is { } cn ? Range(file, cn, "context", 2, 1 << 20) : 512,
            Export = export,
            Gate = new QualityGate(metric, maxIncrease, percent, fixedBaseline),
            Line = (int)m.Start.Line,
        };
        bool calibrated = entry.CalibrationText is not null || entry.CalibrationTokens is not null;
        if (entry.Method == "super-aware" && entry.Z == "auto" && !calibrated)
            throw new ManifestException(file, (int)m.Start.Line, (int)m.Start.Column, $"model '{id}': z: auto needs 'calibration_text' or 'calibration_tokens'");
        if (entry.Method is "smoothquant" or "duquant" && !calibrated)
            throw new ManifestException(file, (int)m.Start.Line, (int)m.Start.Column, $"model '{id}': {entry.Method} calibrates its smoothing scales: it needs 'calibration_text' or 'calibration_tokens'");
        if (entry.UsesActivationTransforms && entry.Export.Any(x => x.StartsWith("gguf", StringComparison.Ordinal)))
            throw At(file, Optional("export")!, $"model '{id}': GGUF holds weights only; method {entry.Method} with activation_bits {entry.ActivationBits} needs its run-time activation transforms, which only the packed artifact carries (export: [packed])");
        return entry;
    }

    static string ZValue(string file, YamlNode n)
    {
        string s = Str(file, n, "z");
        if (s is "auto" or "none") return s;
        return double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double z) && z > 0 ? s : throw At(file, n, $"z '{s}' must be a positive number, 'auto' or 'none'");
    }

    /// <summary>Resolves against the manifest's folder; the result, as written and (unless following symlinks) where
    /// its links really lead, must stay inside one of <paramref name="roots"/>.</summary>
    static string Resolve(string file, string dir, YamlNode n, string key, string[] roots, bool followSymlinks)
    {
        string raw = Str(file, n, key);
        string p = System.IO.Path.GetFullPath(System.IO.Path.Combine(dir, raw));
        if (!roots.Any(r => RealPath.IsUnder(p, r))) throw At(file, n, $"'{key}': {raw} resolves to {p}, outside the project folder {dir}");
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
            if (!allowed.Contains(key)) throw At(file, k, $"unknown key '{key}' in {where} (expected one of: {string.Join(", ", allowed)})");
        }
    }

    static YamlMappingNode Map(string file, YamlNode n, string what) => n as YamlMappingNode ?? throw At(file, n, $"{what} must be a mapping");

    static string Str(string file, YamlNode n, string key) => n is YamlScalarNode s && s.Value != null ? s.Value : throw At(file, n, $"'{key}' must be a scalar value");

    static int Int(string file, YamlNode n, string key) =>
        int.TryParse(Str(file, n, key), NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v : throw At(file, n, $"'{key}' must be an integer, got '{Str(file, n, key)}'");

    static double Dbl(string file, YamlNode n, string key) =>
        double.TryParse(Str(file, n, key), NumberStyles.Float, CultureInfo.InvariantCulture, out double v) ? v : throw At(file, n, $"'{key}' must be a number, got '{Str(file, n, key)}'");

    static int Range(string file, YamlNode n, string key, int lo, int hi)
    {
        int v = Int(file, n, key);
        return v >= lo && v <= hi ? v : throw At(file, n, $"'{key}' must be in {lo}..{hi}, got {v}");
    }

    static string OneOf(string file, YamlNode n, string key, string[] allowed)
    {
        string v = Str(file, n, key);
        return allowed.Contains(v) ? v : throw At(file, n, $"'{key}' must be one of {string.Join(", ", allowed)}, got '{v}'");
    }

    static ManifestException At(string file, YamlNode n, string message) => new(file, (int)n.Start.Line, (int)n.Start.Column, message);
}
