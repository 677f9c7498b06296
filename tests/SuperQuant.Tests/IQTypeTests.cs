using System.Diagnostics;
using SuperQuant.Core.Llama;
using SuperQuant.Manifest;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Gguf;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

/// <summary>
/// The importance-matrix types against llama.cpp's own tools (../shared/tools/llama.cpp): llama-imatrix records an
/// imatrix of our F16 export on calibration ids, llama-quantize --imatrix writes the file, and our writer given the
/// same importance weights (in_sum2 / counts, as llama-quantize reads them) writes the same bytes: the IQ4 grids,
/// the importance weighting and the mix with an imatrix (first ffn_down layers stay IQ4). Without the imatrix the
/// mix differs (llama.cpp raises those layers to Q5_K), so the comparison sees whether the weights were applied.
/// </summary>
[TestClass]
public sealed class IQTypeTests
{
    static readonly LlamaConfig Config = new()
    {
        Architecture = "llama", HiddenSize = 256, IntermediateSize = 512, NumLayers = 9, NumHeads = 4, NumKvHeads = 2, VocabSize = 256,
        MaxPositionEmbeddings = 256,
    };

    static string Run(string tool, string arguments, params (string, string)[] environment)
    {
        var psi = new ProcessStartInfo(SharedModels.LlamaTool(tool), arguments) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var (k, v) in environment) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.AreEqual(0, p.ExitCode, $"{tool} {arguments}: {stdout}\n{stderr.Result}");
        return stdout + stderr.Result;
    }

    /// <summary>An imatrix GGUF as llama-quantize reads it: per tensor, in_sum2 / counts.</summary>
    static Dictionary<LinearSite, float[]> ReadImatrix(string path)
    {
        var file = GgufFile.Read(path);
        var result = new Dictionary<LinearSite, float[]>();
        foreach (var t in file.Tensors.Where(t => t.Name.EndsWith(".in_sum2", StringComparison.Ordinal)))
        {
            string name = t.Name[..^".in_sum2".Length];
            float count = file.ReadTensor(name + ".counts")[0];
            float[] sums = file.ReadTensor(t.Name);
            var parts = name.Split('.');
            Projection p = parts[2] switch
            {
                "attn_q" => Projection.Q,
                "attn_k" => Projection.K,
                "attn_v" => Projection.V,
                "attn_output" => Projection.O,
                "ffn_gate" => Projection.Gate,
                "ffn_up" => Projection.Up,
                "ffn_down" => Projection.Down,
                _ => throw new InvalidDataException($"unexpected imatrix entry {name}"),
            };
            result[new LinearSite(int.Parse(parts[1]), p)] = sums.Select(s => s / count).ToArray();
        }
        return result;
    }

    /// <summary>llama.cpp's quantizer refuses these without an imatrix (they put IQ2_S in some tensors): compared with
    /// llama-quantize --imatrix here, not with the imatrix-free quantizer elsewhere.</summary>
    public static bool LlamaCppRefusesWithoutImatrix(GgufFileType t) => t is GgufFileType.IQ3_XXS or GgufFileType.IQ2_M;

    [TestMethod]
    [TestCategory(TestCategories.Slow)]
    [DataRow("iq4_xs")]
    [DataRow("iq4_nl")]
    [DataRow("iq3_m")]
    [DataRow("iq3_s")]
    [DataRow("iq3_xxs")]
    [DataRow("iq2_m")]
    public void WithLlamaImatrixsWeightsOurFileIsLlamaQuantizesFile(string typeName)
    {
        var type = Names.ParseGgufType(typeName);
        using var dir = new TempFolder();
        RandomCheckpoint.Write(dir.File("ckpt"), Config, seed: 5, heavyTails: true);
        using (var original = ModelLoader.Load(dir.File("ckpt")))
            GgufExporter.Write(dir.File("f16.gguf"), original, new GgufExport { FileType = GgufFileType.F16, Name = "m" });
        var rng = new Random(9);
        File.WriteAllText(dir.File("ids.txt"), string.Join(' ', Enumerable.Range(0, 1024).Select(_ => rng.Next(2, Config.VocabSize))));
        Run("llama-imatrix", $"-m {dir.File("f16.gguf")} -f {dir.File("ids.txt")} -c 128 -b 128 -o {dir.File("imatrix.gguf")} --no-ppl -t 2",
            ("LLAMA_TOKEN_IDS", "1"));
        Run("llama-quantize", $"--imatrix {dir.File("imatrix.gguf")} {dir.File("f16.gguf")} {dir.File("theirs.gguf")} {typeName} 2");
        var imatrix = ReadImatrix(dir.File("imatrix.gguf"));
        Assert.AreEqual(Config.NumLayers * 7, imatrix.Count, "one entry per linear layer");

        using var model = GgufModelLoader.Load(dir.File("f16.gguf")); // the F16 values llama.cpp's tools see
        var written = GgufExporter.Write(dir.File("ours.gguf"), model, new GgufExport { FileType = type, Name = "m", Importance = imatrix });
        Assert.AreEqual($"identical ({GgufFile.Read(dir.File("ours.gguf")).Tensors.Count} tensors)",
            SuperQuant.Cli.Commands.Bench.BenchGgufCommand.SameBytes(dir.File("ours.gguf"), dir.File("theirs.gguf")), typeName);
        if (type is GgufFileType.IQ4_XS or GgufFileType.IQ4_NL)
        {
            // With an imatrix the first ffn_down layers keep the file's type; without one llama.cpp (and we) raise them.
            Assert.AreEqual(GgufMix.DefaultType(type), written.Tensors.Single(t => t.Name == "blk.0.ffn_down.weight").Type);
            var plain = GgufExporter.PlanTypes(model, new GgufExport { FileType = type, Name = "m" });
            Assert.AreEqual(GgmlType.Q5_K, plain.Single(t => t.Name == "blk.0.ffn_down.weight").Type);
        }
        Console.WriteLine($"{typeName}: {written.TypeSummary}, {written.BitsPerWeight:F2} bits/weight");
    }
}

/// <summary>The IQ types from the command line: refused without calibration data, naming the types that need none;
/// with it, rtn writes llama-quantize --imatrix's rows and super-aware chooses among its candidates, and the gate
/// measures the file in llama.cpp.</summary>
[TestClass]
public sealed class IQTypeCommandTests
{
    [TestMethod]
    public void AnIQTypeNeedsCalibrationDataAndIsGatedWithIt()
    {
        using var dir = new TempFolder();
        Assert.AreEqual(0, CliRunner.Run("demo-checkpoint", "-o", dir.File("ckpt")).ExitCode);
        var rng = new Random(4);
        SuperQuant.Models.Text.TokenIdFile.Write(dir.File("ids.txt"), Enumerable.Range(0, 1024).Select(_ => rng.Next(2, 256)));

        var refused = CliRunner.Run("quantize", "--model", dir.File("ckpt"), "--method", "rtn", "--bits", "4", "--gguf", dir.File("out/m.gguf"),
            "--gguf-type", "iq4_xs", "--device", "cpu");
        Assert.AreEqual(3, refused.ExitCode, refused.Output);
        StringAssert.Contains(refused.Output, "SQ2009");
        StringAssert.Contains(refused.Output, "q4_k_s");
        Assert.IsFalse(File.Exists(dir.File("out/m.gguf")));

        foreach (string method in new[] { "rtn", "super-aware" })
        {
            var r = CliRunner.Run("quantize", "--model", dir.File("ckpt"), "--method", method, "--bits", "4", "--gguf",
                dir.File($"out/{method}.gguf"), "--gguf-type", "iq4_xs",
                "--calibration-tokens", dir.File("ids.txt"), "--eval-tokens", dir.File("ids.txt"), "--context", "128", "--json", "--device", "cpu");
            Assert.AreEqual(0, r.ExitCode, r.Output);
            var file = GgufFile.Read(dir.File($"out/{method}.gguf"));
            Assert.IsTrue(file.Tensors.Count(t => t.Type == GgmlType.IQ4_XS) > 10, string.Join(", ", file.Tensors.Select(t => $"{t.Name} {t.Type}")));
            var artifact = System.Text.Json.JsonDocument.Parse(r.StdOut).RootElement.GetProperty("artifacts")[0];
            double kl = artifact.GetProperty("kl_mean").GetDouble();
            Assert.IsTrue(double.IsFinite(kl) && kl >= 0 && kl < 0.1, $"{method}: KL {kl}");
        }
    }
}
