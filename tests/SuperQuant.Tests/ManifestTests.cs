using System.Text.Json;
using SuperQuant.Manifest;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

[TestClass]
public sealed class ManifestTests
{
    const string Valid = """
        version: 1
        models:
          - id: m
            checkpoint: ckpt.bin
            output: out/m.safetensors
            weight_bits: 3
            block_size: channel
            z: "4.5"
            evaluation_tokens: ids.txt
            export: [packed, {gguf: q3_k_m}]
            gate:
              metric: perplexity
              max_increase: 5%
        """;

    static TempFolder Project(string yaml)
    {
        var dir = new TempFolder();
        File.WriteAllText(dir.File("ckpt.bin"), "x");
        File.WriteAllText(dir.File("ids.txt"), "1 2 3");
        File.WriteAllText(dir.File("quantize.yaml"), yaml);
        return dir;
    }

    static ManifestException Invalid(string yaml)
    {
        using var dir = Project(yaml);
        var e = Assert.ThrowsExactly<ManifestException>(() => ManifestReader.Read(dir.File("quantize.yaml")));
        StringAssert.Contains(e.Message, "quantize.yaml(");
        StringAssert.Contains(e.Message, "error SQ3001");
        return e;
    }

    [TestMethod]
    public void ReadsAValidManifestWithResolvedPaths()
    {
        using var dir = Project(Valid);
        var m = ManifestReader.Read(dir.File("quantize.yaml"));
        var e = m.Models.Single();
        Assert.AreEqual(dir.File("ckpt.bin"), e.Checkpoint);
        Assert.AreEqual(dir.File("out/m.safetensors"), e.Output);
        Assert.AreEqual((3, 0, (double?)4.5), (e.WeightBits, e.BlockSize, e.Z));
        Assert.AreEqual(new QualityGate("perplexity", 5, true, null), e.Gate);
        Assert.AreEqual(10.5, e.Gate.Limit(10), 1e-12);
        Assert.IsTrue(e.Gate.Passes(10.4, 10));
        Assert.IsFalse(e.Gate.Passes(10.6, 10));
        Assert.AreEqual(3, e.Line, "the entry's line, used in gate messages");
    }

    [TestMethod]
    public void GgufTargetsAreASizeOrBitsPerWeight()
    {
        using var dir = Project(Valid.Replace("export: [packed, {gguf: q3_k_m}]",
            "calibration_tokens: ids.txt\n    export: [packed, {gguf_target: {size: 1.5MB}}, {gguf_target: {bpw: 3.25}, path: out/b.gguf}]"));
        var e = ManifestReader.Read(dir.File("quantize.yaml")).Models.Single();
        var targets = e.Exports.Where(x => x.Target is not null).ToList();
        Assert.AreEqual(new GgufTarget(1_500_000, null), targets[0].Target);
        Assert.AreEqual(dir.File("out/m.target.gguf"), targets[0].Path);
        Assert.AreEqual(new GgufTarget(null, 3.25), targets[1].Target);
        Assert.AreEqual(dir.File("out/b.gguf"), targets[1].Path);
        Assert.IsFalse(targets.Any(t => t.IsPacked));
        Assert.AreEqual(1_500_000L, new GgufTarget(null, 3.0).BytesFor(4_000_000), "3 bits/weight of 4M parameters is 1.5 MB");
    }

    [TestMethod]
    [DataRow("{gguf_target: {size: lots}}", "gguf_target.size")]
    [DataRow("{gguf_target: {bpw: -1}}", "gguf_target.bpw")]
    [DataRow("{gguf_target: {size: 1GB, bpw: 3}}", "one of 'size'")]
    [DataRow("{gguf_target: {bytes: 1GB}}", "bytes")]
    [DataRow("{gguf: q4_k_m, gguf_target: {bpw: 3}}", "not both")]
    public void ABadGgufTargetIsAnErrorAtItsLine(string item, string expected)
    {
        var e = Invalid(Valid.Replace("export: [packed, {gguf: q3_k_m}]", $"calibration_tokens: ids.txt\n    export: [{item}]"));
        StringAssert.Contains(e.Message, expected);
    }

    [TestMethod]
    public void AGgufTargetNeedsCalibrationData()
    {
        var e = Invalid(Valid.Replace("export: [packed, {gguf: q3_k_m}]", "export: [{gguf_target: {bpw: 3.5}}]"));
        StringAssert.Contains(e.Message, "calibration");
    }

    [TestMethod]
    public void AccuracyGateByHand()
    {
        var g = new QualityGate("accuracy", 2, false, null);   // max_drop 2 points
        Assert.AreEqual(0.58, g.Limit(0.60), 1e-12);
        Assert.IsTrue(g.Passes(0.58, 0.60));
        Assert.IsFalse(g.Passes(0.5799, 0.60));
        Assert.IsTrue(g.Passes(0.70, 0.60), "a higher accuracy passes");
        Assert.IsFalse(g.Passes(double.NaN, 0.60));
        using var dir = Project(Valid.Replace("    gate:\n      metric: perplexity\n      max_increase: 5%",
            "    tasks: {piqa: ids.txt}\n    gate:\n      metric: accuracy\n      max_drop: 2"));
        var e = ManifestReader.Read(dir.File("quantize.yaml")).Models.Single();
        Assert.AreEqual(("piqa", dir.File("ids.txt")), (e.Tasks.Single().Name, e.Tasks.Single().Path));
        Assert.AreEqual(new QualityGate("accuracy", 2, false, null), e.Gate);
        Assert.IsTrue(e.DataFiles.Contains(dir.File("ids.txt")));
    }

    [TestMethod]
    [DataRow("      metric: perplexity\n      max_increase: 5%", "      metric: accuracy\n      max_increase: 5%", "not 'max_increase'")]
    [DataRow("      metric: perplexity\n      max_increase: 5%", "      metric: accuracy\n      max_drop: 2", "needs the model's 'tasks'")]
    [DataRow("      metric: perplexity\n      max_increase: 5%", "      metric: kl\n      max_drop: 2", "'max_drop' belongs to metric accuracy")]
    [DataRow("    context: 512", "    tasks: {mmlu: ids.txt}", "unknown task 'mmlu'")]
    [DataRow("    context: 512", "    tasks: {piqa: missing.jsonl}", "does not exist")]
    public void AccuracyGateMistakesAreManifestErrors(string from, string to, string reason)
    {
        string yaml = Valid.Replace(from, to);
        if (!yaml.Contains(to)) yaml = Valid.Replace("    evaluation_tokens: ids.txt", "    evaluation_tokens: ids.txt\n" + to);
        Assert.AreNotEqual(Valid, yaml, "the test edit must apply");
        StringAssert.Contains(Invalid(yaml).Reason, reason);
    }

    [TestMethod]
    public void ReadsThePaperVariant()
    {
        using var dir = Project(Valid.Replace("    block_size: channel",
            "    block_size: tensor\n    variant: paper\n    clip: iqr\n    levels: normal-float"));
        var e = ManifestReader.Read(dir.File("quantize.yaml")).Models.Single();
        Assert.AreEqual((Names.TensorBlock, WeightVariant.Paper, ClipMethod.Iqr, LevelKind.NormalFloat), (e.BlockSize, e.Variant, e.Clip, e.Levels));
        Assert.AreNotEqual(ManifestReader.Read(dir.File("quantize.yaml")).Models.Single().SettingsKey,
            e with { Clip = ClipMethod.ZScore } is var other ? other.SettingsKey : "", "the clip method is part of the settings key (incremental builds)");
    }

    [TestMethod]
    public void UnknownKeyPointsAtItsLineAndColumn()
    {
        var e = Invalid(Valid.Replace("    weight_bits: 3", "    weight_bits: 3\n    wieght_bits: 3"));
        Assert.AreEqual((7, 5), (e.Line, e.Column));
        StringAssert.Contains(e.Reason, "unknown key 'wieght_bits'");
    }

    [TestMethod]
    [DataRow("    weight_bits: 3", "    weight_bits: four", "'weight_bits' must be an integer")]
    [DataRow("    weight_bits: 3", "    weight_bits: 9", "'weight_bits' must be in 2..8")]
    [DataRow("    block_size: channel", "    block_size: 16", "'block_size' must be 32..4096")]
    [DataRow("    block_size: channel", "    block_size: 8192", "need variant: paper")]
    [DataRow("    block_size: channel", "    block_size: tensor", "tensor needs variant: paper")]
    [DataRow("    block_size: channel", "    block_size: 96\n    variant: paper", "power of two")]
    [DataRow("    block_size: channel", "    block_size: channel\n    clip: iqr", "add 'variant: paper'")]
    [DataRow("    block_size: channel", "    block_size: channel\n    variant: paper\n    clip: median", "'clip' must be one of")]
    [DataRow("    weight_bits: 3", "    weight_bits: 2\n    variant: paper\n    levels: normal-float", "normal-float levels exist for 3 and 4 bits")]
    [DataRow("      metric: perplexity", "      metric: bleu", "'metric' must be one of")]
    [DataRow("      max_increase: 5%", "      max_increase: lots", "max_increase 'lots'")]
    [DataRow("    checkpoint: ckpt.bin", "    checkpoint: missing.bin", "does not exist")]
    [DataRow("    checkpoint: ckpt.bin", "    checkpoint: ../../etc/passwd", "outside the project folder")]
    [DataRow("    output: out/m.safetensors", "    output: ../escape.safetensors", "outside the project folder")]
    [DataRow("    evaluation_tokens: ids.txt\n", "", "needs 'evaluation_text' or 'evaluation_tokens'")]
    [DataRow("    z: \"4.5\"", "    z: -1", "z '-1'")]
    public void InvalidValuesAreRejectedWithTheReason(string from, string to, string reason)
    {
        string yaml = Valid.Replace(from, to);
        Assert.AreNotEqual(Valid, yaml, "the test edit must apply");
        StringAssert.Contains(Invalid(yaml).Reason, reason);
    }

    [TestMethod]
    public void DuplicateIdsAndBrokenYamlAreRejected()
    {
        string second = Valid[Valid.IndexOf("  - id: m", StringComparison.Ordinal)..].Replace("out/m.safetensors", "out/m2.safetensors");
        StringAssert.Contains(Invalid(Valid + "\n" + second).Reason, "duplicate model id 'm'");
        StringAssert.Contains(Invalid("models: [unclosed").Reason, "not valid YAML");
        StringAssert.Contains(Invalid("version: 2\nmodels: []").Reason, "version 2");
    }

    [TestMethod]
    public void SchemaListsEveryKeyTheReaderAccepts()
    {
        using var schema = JsonDocument.Parse(File.ReadAllText(Path.Combine(RepoPaths.Root, "docs", "quantize.schema.json")));
        var modelProps = schema.RootElement.GetProperty("properties").GetProperty("models").GetProperty("items").GetProperty("properties");
        var keys = modelProps.EnumerateObject().Select(p => p.Name).ToHashSet();
        foreach (string line in Valid.Split('\n').Where(l => l.StartsWith("    ") && !l.StartsWith("      ") && l.Contains(':')))
            Assert.IsTrue(keys.Contains(line.Trim().Split(':')[0].TrimStart('-', ' ')), line);
        Assert.IsTrue(keys.SetEquals(new[] { "id", "checkpoint", "output", "method", "weight_bits", "activation_bits", "block_size", "variant",
            "clip", "levels", "activation_scale", "activation_quantizer", "super_activation", "z", "calibration_text", "calibration_tokens",
            "evaluation_text", "evaluation_tokens", "prompt_tokens", "context", "export", "tasks", "gate" }));
        var top = schema.RootElement.GetProperty("properties");
        CollectionAssert.AreEquivalent(new[] { "version", "device", "memory", "models" }, top.EnumerateObject().Select(p => p.Name).ToArray());
        CollectionAssert.AreEqual(Names.MemoryNames.ToArray(),
            top.GetProperty("memory").GetProperty("enum").EnumerateArray().Select(x => x.GetString()).ToArray());
        CollectionAssert.AreEqual(Names.MemoryNames.ToArray(),
            Enum.GetNames<MemoryMode>().Select(n => n.ToLowerInvariant()).ToArray(), "every mode has a manifest name");
        CollectionAssert.AreEqual(Names.TaskNames.ToArray(),
            modelProps.GetProperty("tasks").GetProperty("properties").EnumerateObject().Select(p => p.Name).ToArray());
        CollectionAssert.AreEqual(Names.TaskNames.ToArray(), Models.Text.TaskFile.TaskNames.ToArray(), "the manifest's task names are the task reader's");
        CollectionAssert.AreEqual(Names.VariantNames.ToArray(),
            modelProps.GetProperty("variant").GetProperty("enum").EnumerateArray().Select(x => x.GetString()).ToArray());
        CollectionAssert.AreEqual(Names.ClipNames.ToArray(),
            modelProps.GetProperty("clip").GetProperty("enum").EnumerateArray().Select(x => x.GetString()).ToArray());
        CollectionAssert.AreEqual(Names.LevelNames.ToArray(),
            modelProps.GetProperty("levels").GetProperty("enum").EnumerateArray().Select(x => x.GetString()).ToArray());
        // The schema's value lists are the names table's, exactly and in order.
        CollectionAssert.AreEqual(Names.MethodNames.ToArray(),
            modelProps.GetProperty("method").GetProperty("enum").EnumerateArray().Select(x => x.GetString()).ToArray());
        var ggufEnum = modelProps.GetProperty("export").GetProperty("items").GetProperty("oneOf")[1].GetProperty("properties").GetProperty("gguf").GetProperty("enum");
        CollectionAssert.AreEqual(Names.GgufTypeNames.ToArray(), ggufEnum.EnumerateArray().Select(x => x.GetString()).ToArray());
        CollectionAssert.AreEqual(QualityGate.Metrics.ToArray(),
            modelProps.GetProperty("gate").GetProperty("properties").GetProperty("metric").GetProperty("enum").EnumerateArray().Select(x => x.GetString()).ToArray());
        // And every name parses back to its value.
        foreach (var m in Enum.GetValues<QuantMethod>()) Assert.AreEqual(m, Names.ParseMethod(m.Name()));
        foreach (var v in Enum.GetValues<WeightVariant>()) Assert.AreEqual(v, Names.ParseVariant(v.Name().ToUpperInvariant()));
        foreach (var c in Enum.GetValues<ClipMethod>()) Assert.AreEqual(c, Names.ParseClip(c.Name()));
        foreach (var l in Enum.GetValues<LevelKind>()) Assert.AreEqual(l, Names.ParseLevels(l.Name()));
        foreach (var mm in Enum.GetValues<MemoryMode>()) Assert.AreEqual(mm, Names.ParseMemory(mm.Name()));
        foreach (var t in Enum.GetValues<GgufFileType>()) Assert.AreEqual(t, Names.ParseGgufType(t.Name()));
    }

    [TestMethod]
    public void SymlinksOutOfTheProjectAreRejectedUnlessAllowed()
    {
        using var outside = new TempFolder();
        File.WriteAllText(outside.File("ckpt.bin"), "x");
        Directory.CreateDirectory(outside.File("hf"));
        File.WriteAllText(outside.File("hf/model.safetensors"), "x");
        using var dir = Project(Valid);
        string manifest = dir.File("quantize.yaml");

        // A checkpoint file that links out.
        File.Delete(dir.File("ckpt.bin"));
        File.CreateSymbolicLink(dir.File("ckpt.bin"), outside.File("ckpt.bin"));
        var e = Assert.ThrowsExactly<ManifestException>(() => ManifestReader.Read(manifest));
        StringAssert.Contains(e.Message, "symbolic link");
        StringAssert.Contains(e.Message, outside.File("ckpt.bin"));
        Assert.AreEqual((4, 17), (e.Line, e.Column), "points at the checkpoint value");
        Assert.AreEqual(dir.File("ckpt.bin"), ManifestReader.Read(manifest, new[] { outside.Path }).Models[0].Checkpoint, "allowed folder");
        Assert.AreEqual(dir.File("ckpt.bin"), ManifestReader.Read(manifest, followSymlinks: true).Models[0].Checkpoint, "explicit option");

        // A link inside the project that stays inside is fine.
        File.Delete(dir.File("ckpt.bin"));
        File.WriteAllText(dir.File("real.bin"), "x");
        File.CreateSymbolicLink(dir.File("ckpt.bin"), "real.bin");
        ManifestReader.Read(manifest);

        // A checkpoint folder whose shard links out (the folder itself is a real folder in the project).
        Directory.CreateDirectory(dir.File("hf"));
        File.CreateSymbolicLink(dir.File("hf/model.safetensors"), outside.File("hf/model.safetensors"));
        File.WriteAllText(manifest, Valid.Replace("checkpoint: ckpt.bin", "checkpoint: hf"));
        StringAssert.Contains(Assert.ThrowsExactly<ManifestException>(() => ManifestReader.Read(manifest)).Message, "model.safetensors");

        // An output folder that is a link out: the artifact would be written outside the project.
        File.WriteAllText(manifest, Valid);
        Directory.CreateSymbolicLink(dir.File("out"), outside.Path);
        e = Assert.ThrowsExactly<ManifestException>(() => ManifestReader.Read(manifest, new[] { outside.Path }));
        StringAssert.Contains(e.Message, "'output'");
    }

    [TestMethod]
    public void RealPathResolvesLinksInEveryComponent()
    {
        using var dir = new TempFolder();
        Directory.CreateDirectory(dir.File("a/b"));
        File.WriteAllText(dir.File("a/b/f"), "x");
        Directory.CreateSymbolicLink(dir.File("l1"), "a");                 // relative target
        Directory.CreateSymbolicLink(dir.File("l2"), dir.File("l1"));      // a link to a link
        Assert.AreEqual(dir.File("a/b/f"), RealPath.Resolve(dir.File("l2/b/f")));
        Assert.AreEqual(dir.File("a/b/missing/x"), RealPath.Resolve(dir.File("l2/b/missing/x")), "missing tail kept");
        Directory.CreateSymbolicLink(dir.File("loop"), dir.File("loop"));
        Assert.ThrowsExactly<IOException>(() => RealPath.Resolve(dir.File("loop/x")));
    }
}
