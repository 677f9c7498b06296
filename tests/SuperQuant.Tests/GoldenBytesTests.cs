using System.Runtime.InteropServices;
using System.Security.Cryptography;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Text;
using SuperQuant.Tests.Support;
using TorchSharp;

namespace SuperQuant.Tests;

/// <summary>
/// Moving code must not move bytes (issue 25): the sample's manifest, and a planted checkpoint through every export path
/// (super-aware and rtn, packed, k-quant and imatrix GGUF, a size budget), are run by `superquant gate` and each shipped
/// file's SHA-256 is compared with the one recorded before the code was restructured.
/// Those bytes come from float arithmetic (our forward pass for the calibration statistics, llama.cpp's for the
/// candidate choice), which may round differently on another CPU kind. So the recorded hashes are keyed by a numerics
/// fingerprint: the SHA-256 of stories260K's logits from our forward pass on fixed tokens. On a CPU whose fingerprint
/// has no record the test is inconclusive and prints the fingerprint and hashes to add; it never passes unchecked.
/// </summary>
[TestClass]
[DoNotParallelize]
public sealed class GoldenBytesTests
{
    /// <summary>Fingerprint -> (shipped file relative to the project -> SHA-256). Recorded at main d934103; the two files
    /// that ship GPTQ rows (iq4_xs, q4_0; and stories260K's q8_0, whose held-out choice ships them) re-recorded when GPTQ's
    /// factor moved to float32 Cholesky and again when it became one Cholesky of H (LDLQ's form; issue 37).</summary>
    static readonly Dictionary<string, Dictionary<string, string>> Recorded = new()
    {
        ["4cf2c90b783a1361"] = new() // Intel Xeon (AVX-512), 2026-12-07
        {
            ["models/planted-q2.q2_k.gguf"] = "a986e04bd7166c5752b269257fd8741129eb229f35bc5afbf36c2561fa24c0e4",
            ["models/planted-rtn.iq3_s.gguf"] = "8b5207abb56cd51a7ce5147ca494452f5a83f4291711a8e9e6d7d97a3e86e051",
            ["models/planted-rtn.iq3_xxs.gguf"] = "71dae81569f71e2ec72630197a3e552c6acff16d153ff91ed241c4837e218f74",
            ["models/planted-rtn.q3_k_m.gguf"] = "6768095d8437901d96cec0e2e0c3361875e60b2aad1628707a3be495eebf4f46",
            ["models/planted-rtn.sqpk.safetensors"] = "b2f988c451fd8b0c2458f115eb9c0f7ff290af00bf114fc45a47457109eaafac",
            ["models/planted-super.iq4_xs.gguf"] = "bee691a891d711f4e169ef78d2f1e25b50d96d30afbf306e14885db12103627e",
            ["models/planted-super.q4_0.gguf"] = "27fd94811d811bc213677eef7edd2eef61822e56b6172ec3777d8496161c813a",
            ["models/planted-super.q4_k_m.gguf"] = "2cf25f963852c765d7c23dc2fe8650f64cb26839d4f2b841d9b38b0f5b58016a",
            ["models/planted-super.sqpk.safetensors"] = "9dbc0079f7d7fa7c57f6a3250293cf89c9644f0f3aa86e0dbca7d285d2cf5b05",
            ["models/planted-super.target.gguf"] = "345ed87273d5d3d4dd7073113a90829ca79695387fe1e8c65e760a34d0e9c7b0",
            ["models/stories260K.q8_0.gguf"] = "50608e5f668875e165ec06572f9580d91edbba40e0b0b2cd2256fe2f8544f532",
            ["models/stories260K.sqpk.safetensors"] = "1c969ff895f34d095a2aaf896dd5486d8399b9b918fa9746debfe65c4e2cfcda",
        },
    };

    [TestMethod]
    public void EveryShippedFileKeepsItsBytes()
    {
        string fingerprint = NumericsFingerprint();
        using var dir = new TempFolder();
        WriteProject(dir);
        // To compare two builds on this project by hand: SUPERQUANT_GOLDEN_PROJECT=folder keeps a copy of it there.
        if (Environment.GetEnvironmentVariable("SUPERQUANT_GOLDEN_PROJECT") is { Length: > 0 } keep && !Directory.Exists(keep))
            CopyFolder(dir.Path, keep);
        var r = CliRunner.Run("gate", "--manifest", dir.File("quantize.yaml"), "--report-dir", dir.File("obj"));
        Assert.AreEqual(0, r.ExitCode, r.Output);
        var actual = Directory.GetFiles(dir.File("models")).OrderBy(f => f, StringComparer.Ordinal)
            .ToDictionary(f => "models/" + Path.GetFileName(f), f => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))).ToLowerInvariant());
        Assert.AreEqual(12, actual.Count, "files shipped: " + string.Join(", ", actual.Keys));
        string listing = string.Join("\n", actual.Select(a => $"[\"{a.Key}\"] = \"{a.Value}\","));
        if (!Recorded.TryGetValue(fingerprint, out var expected))
            Assert.Inconclusive($"no bytes recorded for numerics fingerprint {fingerprint} (another CPU kind rounds differently); record:\n{listing}");
        foreach (var (file, hash) in expected)
        {
            Assert.IsTrue(actual.TryGetValue(file, out var got), $"{file} was not shipped");
            Assert.AreEqual(hash, got, $"{file}: bytes changed\n{listing}");
        }
        CollectionAssert.AreEquivalent(expected.Keys.ToList(), actual.Keys.ToList());
    }

    static void CopyFolder(string from, string to)
    {
        foreach (string d in Directory.GetDirectories(from, "*", SearchOption.AllDirectories)) Directory.CreateDirectory(Path.Combine(to, Path.GetRelativePath(from, d)));
        Directory.CreateDirectory(to);
        foreach (string f in Directory.GetFiles(from, "*", SearchOption.AllDirectories)) File.Copy(f, Path.Combine(to, Path.GetRelativePath(from, f)));
    }

    /// <summary>SHA-256 of stories260K's float32 logits on 24 fixed tokens from our forward pass.</summary>
    static string NumericsFingerprint()
    {
        using var scope = torch.NewDisposeScope();
        using var model = ModelLoader.Load(SharedModels.Stories260K);
        int[] tokens = Enumerable.Range(0, 24).Select(i => 1 + i * 37 % 500).ToArray();
        float[] logits = model.Forward(tokens).to_type(torch.ScalarType.Float32).contiguous().data<float>().ToArray();
        return Convert.ToHexString(SHA256.HashData(MemoryMarshal.AsBytes(logits.AsSpan()))).ToLowerInvariant()[..16];
    }

    static void WriteProject(TempFolder dir)
    {
        string sample = Path.Combine(RepoPaths.Root, "samples", "OnDeviceStories");
        Directory.CreateDirectory(dir.File("data"));
        foreach (string f in new[] { "calibration.tokens.txt", "evaluation.tokens.txt" })
            File.Copy(Path.Combine(sample, "data", f), dir.File(Path.Combine("data", f)));
        // The sample's model exactly as its quantize.yaml has it, the checkpoint copied beside it (a packed artifact
        // records the manifest's SHA-256, so no machine-specific path may appear in it).
        File.Copy(SharedModels.Stories260K, dir.File("stories260K.bin"));
        string sampleYaml = File.ReadAllText(Path.Combine(sample, "quantize.yaml"))
            .Replace("../../../shared/models/stories260K/stories260K.bin", "stories260K.bin");
        Assert.IsTrue(sampleYaml.Contains("checkpoint: stories260K.bin"), "the sample's manifest names stories260K by that path");

        // A planted checkpoint wide enough for the k-quants' 256-blocks (super weight at layer 1 [17, 45]).
        var spec = new TinyModelSpec { Layers = 2, Hidden = 256, Intermediate = 512, Heads = 4, KvHeads = 2, Vocab = 256 };
        SuperWeightPlanter.WriteCheckpoint(dir.File("ckpt"), spec, 1, 17, 45);
        var rng = new Random(25);
        TokenIdFile.Write(dir.File("data/planted-calibration.txt"), Enumerable.Range(0, 1024).Select(_ => rng.Next(256)));
        TokenIdFile.Write(dir.File("data/planted-evaluation.txt"), Enumerable.Range(0, 256).Select(_ => rng.Next(256)));
        string planted(string id, string method, int bits, string exports) => $"""
              - id: {id}
                checkpoint: ckpt
                output: models/{id}.sqpk.safetensors
                method: {method}
                weight_bits: {bits}
                block_size: 128
                z: auto
                calibration_tokens: data/planted-calibration.txt
                evaluation_tokens: data/planted-evaluation.txt
                prompt_tokens: "1 2 3"
                context: 128
                export: {exports}
                gate:
                  metric: kl
                  max_increase: 100

            """;
        string models = sampleYaml[sampleYaml.IndexOf("models:", StringComparison.Ordinal)..].TrimEnd() + "\n"
            + planted("planted-super", "super-aware", 4, "[packed, {gguf: q4_k_m}, {gguf: iq4_xs}, {gguf: q4_0}, {gguf_target: {bpw: 5}}]")
            + planted("planted-rtn", "rtn", 3, "[packed, {gguf: q3_k_m}, {gguf: iq3_s}, {gguf: iq3_xxs}]")
            + planted("planted-q2", "super-aware", 2, "[{gguf: q2_k}]");
        File.WriteAllText(dir.File("quantize.yaml"), "version: 1\ndevice: cpu\n" + models);
    }
}
