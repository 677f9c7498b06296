using SuperQuant.Core;
using SuperQuant.Manifest;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Gguf;
using SuperQuant.Models.Safetensors;
using SuperQuant.Tests.Support;
using TorchSharp;

namespace SuperQuant.Tests;

/// <summary>
/// Bounded mutation fuzzing of every reader: byte flips, byte runs set to 0x00/0xFF/0x7F, truncation, insertion and
/// appended garbage, from a valid seed file, with a fixed seed per format. A reader may accept a mutant or reject it
/// with a coded error (SuperQuantException / ManifestException); any other exception fails the test with the case
/// number so it can be replayed.
/// </summary>
[TestClass]
public sealed class FuzzTests
{
    public const int CasesPerFormat = 2000;
    /// <summary>Bound on managed allocation per case: a fixed allowance (exception objects, stack traces, JSON and
    /// YAML parser state) plus a multiple of the input's size.</summary>
    const long AllocationAllowance = 256 << 10, AllocationPerInputByte = 16;

    static byte[] Mutate(byte[] seed, Random rng, int protectPrefix = 0)
    {
        var b = new List<byte>(seed);
        int edits = 1 + rng.Next(4);
        for (int e = 0; e < edits; e++)
        {
            int pos = protectPrefix + rng.Next(Math.Max(1, b.Count - protectPrefix));
            switch (rng.Next(6))
            {
                case 0: if (pos < b.Count) b[pos] ^= (byte)(1 << rng.Next(8)); break;
                case 1: for (int i = pos; i < Math.Min(b.Count, pos + 1 + rng.Next(8)); i++) b[i] = new byte[] { 0, 0xFF, 0x7F, (byte)'9' }[rng.Next(4)]; break;
                case 2: if (b.Count > 1) b.RemoveRange(Math.Min(pos, b.Count - 1), b.Count - Math.Min(pos, b.Count - 1)); break;
                case 3: b.InsertRange(Math.Min(pos, b.Count), Enumerable.Range(0, 1 + rng.Next(16)).Select(_ => (byte)rng.Next(256))); break;
                case 4: b.AddRange(Enumerable.Range(0, 1 + rng.Next(64)).Select(_ => (byte)rng.Next(256))); break;
                default: if (pos < b.Count) b[pos] = (byte)rng.Next(256); break;
            }
        }
        return b.ToArray();
    }

    static void Fuzz(string name, byte[] seed, string extension, Action<string> read, int seedValue)
    {
        using var dir = new TempFolder();
        var rng = new Random(seedValue);
        int accepted = 0, rejected = 0;
        long worstAllocation = 0, worstLength = 0;
        string path = dir.File("case" + extension);
        read(WriteSeed(path, seed)); // the seed itself must be valid
        for (int i = 0; i < CasesPerFormat; i++)
        {
            byte[] mutant = Mutate(seed, rng);
            File.WriteAllBytes(path, mutant);
            long before = GC.GetAllocatedBytesForCurrentThread();
            try { read(path); accepted++; }
            catch (Exception e) when (e is SuperQuantException or ManifestException) { rejected++; }
            catch (Exception e)
            {
                Assert.Fail($"{name} case {i} (seed {seedValue}): {e.GetType().Name}: {e.Message}\n{e.StackTrace}");
            }
            // Managed bytes this case allocated beyond a fixed allowance, per byte of input: a reader that sized a
            // buffer from an unchecked header claim would show up here (native tensor memory is bounded by the same
            // header checks: every tensor must lie inside the file before it is read).
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            if (allocated > worstAllocation) { worstAllocation = allocated; worstLength = mutant.Length; }
            Assert.IsLessThanOrEqualTo(AllocationAllowance + AllocationPerInputByte * mutant.Length, allocated,
                $"{name} case {i} (seed {seedValue}) allocated {allocated} managed bytes for a {mutant.Length}-byte file");
        }
        Assert.AreEqual(CasesPerFormat, accepted + rejected);
        Assert.IsTrue(rejected > CasesPerFormat / 10, $"{name}: only {rejected} of {CasesPerFormat} mutants were rejected: the mutator is not " +
            $"reaching the parser");
        Console.WriteLine($"{name}: {CasesPerFormat} cases, {rejected} rejected with a code, {accepted} accepted; " +
            $"largest managed allocation in one case {worstAllocation / 1024} KiB for a {worstLength}-byte file (bound: {AllocationAllowance / 1024} " +
                $"KiB + {AllocationPerInputByte}x the file)");
    }

    static string WriteSeed(string path, byte[] seed) { File.WriteAllBytes(path, seed); return path; }

    [TestMethod]
    public void SafetensorsReaderSeesOnlyCodedErrors()
    {
        using var dir = new TempFolder();
        string seedPath = dir.File("seed.safetensors");
        SafetensorsWriter.Write(seedPath, new Dictionary<string, torch.Tensor>
        {
            ["a"] = torch.randn(3, 4), ["b"] = torch.ones(5).to_type(torch.ScalarType.BFloat16), ["c"] = torch.tensor(new long[] { 1, 2 }),
        }, new Dictionary<string, string> { ["format"] = "pt" });
        Fuzz("safetensors", File.ReadAllBytes(seedPath), ".safetensors", p =>
        {
            using var f = SafetensorsFile.Open(p);
            foreach (string n in f.Tensors.Keys) f.Read(n).Dispose();
        }, 101);
    }

    [TestMethod]
    public void GgufReaderSeesOnlyCodedErrors()
    {
        using var dir = new TempFolder();
        var spec = new TinyModelSpec { Layers = 1, Hidden = 32, Intermediate = 64, Vocab = 40 };
        TinyCheckpointFactory.Write(dir.File("ckpt"), spec);
        using var model = ModelLoader.Load(dir.File("ckpt"));
        string seedPath = dir.File("seed.gguf");
        GgufExporter.Write(seedPath, model, new GgufExport { FileType = SuperQuant.Manifest.GgufFileType.Q4_0, Name = "fuzz" });
        Fuzz("gguf", File.ReadAllBytes(seedPath), ".gguf", p =>
        {
            var g = GgufFile.Read(p);
            foreach (var t in g.Tensors) g.ReadTensor(t.Name);
        }, 202);
    }

    [TestMethod]
    public void Llama2cReaderSeesOnlyCodedErrors()
    {
        var header = new Llama2cCheckpoint.Header(8, 16, 1, 2, 2, 10, true, 4);
        var rng = new Random(3);
        var bytes = new List<byte>();
        foreach (int v in new[] { 8, 16, 1, 2, 2, 10, 4 }) bytes.AddRange(BitConverter.GetBytes(v));
        for (long i = 0; i < header.FloatCount(true); i++) bytes.AddRange(BitConverter.GetBytes((float)(rng.NextDouble() - 0.5)));
        Fuzz("llama2.c", bytes.ToArray(), ".bin", p => Llama2cCheckpoint.Load(p).Dispose(), 303);
    }

    [TestMethod]
    public void ManifestReaderSeesOnlyCodedErrors()
    {
        using var dir = new TempFolder();
        File.WriteAllText(dir.File("ckpt.bin"), "x");
        File.WriteAllText(dir.File("ids.txt"), "1 2");
        string yaml = """
            version: 1
            device: cpu
            models:
              - id: m
                checkpoint: ckpt.bin
                output: out/m.safetensors
                weight_bits: 4
                block_size: 64
                z: auto
                calibration_tokens: ids.txt
                evaluation_tokens: ids.txt
                export: [packed, {gguf: q4_k_m}]
                gate:
                  metric: kl
                  max_increase: 5%
            """;
        // The manifest must live beside its files, so fuzz in that folder.
        var rng = new Random(404);
        byte[] seed = System.Text.Encoding.UTF8.GetBytes(yaml);
        string path = dir.File("quantize.yaml");
        File.WriteAllBytes(path, seed);
        ManifestReader.Read(path);
        int rejected = 0;
        for (int i = 0; i < CasesPerFormat; i++)
        {
            File.WriteAllBytes(path, Mutate(seed, rng));
            try { ManifestReader.Read(path); }
            catch (ManifestException e) { rejected++; StringAssert.Contains(e.Message, "error SQ3001"); }
            catch (Exception e) { Assert.Fail($"yaml case {i}: {e.GetType().Name}: {e.Message}"); }
        }
        Assert.IsTrue(rejected > CasesPerFormat / 10, $"only {rejected} rejected");
        Console.WriteLine($"yaml: {CasesPerFormat} cases, {rejected} rejected with SQ3001");
    }

    [TestMethod]
    public void TokenIdFileReaderSeesOnlyCodedErrors()
    {
        byte[] seed = System.Text.Encoding.UTF8.GetBytes("# superquant generate --seed 2\n1 461 392, 390 446\n300 288 424 # end of line\n\t422 293 276\n");
        Fuzz("token-id file", seed, ".txt", p => SuperQuant.Models.Text.TokenIdFile.Read(p, 500), 505);
    }

    [TestMethod]
    public void ShardIndexReaderSeesOnlyCodedErrors()
    {
        using var dir = new TempFolder();
        Directory.CreateDirectory(dir.File("hf"));
        byte[] seed = System.Text.Encoding.UTF8.GetBytes("""{"metadata": {"total_size": 64}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}}""");
        Fuzz("model.safetensors.index.json", seed, ".json", p =>
        {
            File.Copy(p, dir.File("hf/model.safetensors.index.json"), overwrite: true);
            HfCheckpoint.ShardFiles(dir.File("hf"));
        }, 606);
    }

    /// <summary>The gate's state file is ours to read and never trusted: whatever it holds, reading it either recovers
    /// entries or starts afresh (a re-run); it never throws.</summary>
    [TestMethod]
    public void StateFileReaderNeverFails()
    {
        using var dir = new TempFolder();
        byte[] seed = System.Text.Encoding.UTF8.GetBytes("""{"models":{"tiny":{"input_hash":"ab12","outputs":["/p/models/tiny.sqpk.safetensors"],"report":{"id":"tiny","status":"done","settings":"s","detection":"d","super_weights":[[1,17,45]],"artifacts":[{"kind":"packed","path":"/p/x","engine":"superquant","bytes":1,"bits_per_weight":4.5,"layout":"l","passed":true}],"input_hash":"ab12"}}}}""");
        // A state proves itself by the checksum of its models: the seed gets the one the tool would write.
        var parsed = System.Text.Json.JsonSerializer.Deserialize<SuperQuant.Cli.Gate.BuildState.State>(seed, SuperQuant.Cli.Reports.AnalysisReport.Json)!;
        seed = System.Text.Encoding.UTF8.GetBytes(System.Text.Json.JsonSerializer.Serialize(
            parsed with { Checksum = SuperQuant.Cli.Gate.BuildState.State.ChecksumOf(parsed.Models) }, SuperQuant.Cli.Reports.AnalysisReport.Json));
        var rng = new Random(707);
        string path = dir.File("state.json");
        File.WriteAllBytes(path, seed);
        Assert.HasCount(1, SuperQuant.Cli.Gate.BuildState.ReadState(path).Models, "the seed is a valid state");
        int recovered = 0;
        for (int i = 0; i < CasesPerFormat; i++)
        {
            File.WriteAllBytes(path, Mutate(seed, rng));
            try { recovered += SuperQuant.Cli.Gate.BuildState.ReadState(path).Models.Count; }
            catch (Exception e) { Assert.Fail($"state case {i}: {e.GetType().Name}: {e.Message}"); }
        }
        Console.WriteLine($"state file: {CasesPerFormat} cases, {recovered} kept an entry, the rest started afresh");
    }
}
