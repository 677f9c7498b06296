using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

/// <summary>
/// A GGUF whose header would make llama.cpp abort the process (GGML_ASSERT, exit 134 with a native backtrace) is
/// refused before llama.cpp sees it: SQ4002 naming the file and the key, exit 3. The unmodified file runs; a seeded
/// fuzz over the header's integers and floats never ends in 134 or 4.
/// </summary>
[TestClass]
public sealed class HostileGgufTests
{
    static string Original(TempFolder dir)
    {
        TokenizerCheckpoint.Write(dir.File("ckpt"), "llama3.1", layers: 2);
        var r = CliRunner.Run("quantize", "--model", dir.File("ckpt"), "--method", "rtn", "--gguf", dir.File("m.gguf"), "--gguf-type", "f16",
            "--device", "cpu");
        Assert.AreEqual(0, r.ExitCode, r.Output);
        SuperQuant.Models.Text.TokenIdFile.Write(dir.File("ids.txt"), Enumerable.Range(1, 16));
        return dir.File("m.gguf");
    }

    static ProcessRunner.Result Eval(TempFolder dir, string gguf) => CliRunner.Run("eval", "-m", gguf, "--tokens", dir.File("ids.txt"), "--context", "8");

    public static IEnumerable<object[]> Mutations => new (string Key, object? Value)[]
    {
        ("llama.block_count", 0u), ("llama.block_count", 1000u), ("llama.block_count", uint.MaxValue), ("llama.block_count", 1u),
        ("llama.attention.layer_norm_rms_epsilon", -1e-5f), ("llama.attention.layer_norm_rms_epsilon", float.NaN),
        ("llama.expert_count", 4u), ("llama.expert_used_count", 8u),
        ("llama.attention.head_count_kv", 3u), ("llama.attention.head_count", 0u), ("llama.embedding_length", 48u),
        ("tokenizer.ggml.tokens", new object[] { 1u, 2u, 3u }), ("tokenizer.ggml.token_type", new object[] { "x" }),
        ("tokenizer.ggml.scores", new object[] { 1f }), ("general.architecture", 7u),
    }.Select(m => new object[] { m.Key, m.Value! });

    [TestMethod]
    [TestCategory(TestCategories.Slow)]
    public void EveryHostileHeaderValueIsSQ4002NamingTheKey()
    {
        using var dir = new TempFolder();
        string original = Original(dir);
        var ok = Eval(dir, original);
        Assert.AreEqual(0, ok.ExitCode, ok.Output);
        var failures = new List<string>();
        int i = 0;
        foreach (var m in Mutations)
        {
            string key = (string)m[0];
            object value = m[1];
            string bad = dir.File($"bad{i++}.gguf");
            GgufRewriter.Rewrite(original, bad, meta =>
            {
                meta[key] = value;
                if (key == "llama.expert_count") meta["llama.expert_used_count"] = 8u; // used > count
            });
            var r = Eval(dir, bad);
            if (r.ExitCode != 3 || !r.Output.Contains("SQ4002") || !r.Output.Contains(key.Contains("expert") ? "expert_" : key)
                || r.Output.Contains("internal error"))
                failures.Add($"{key} = {value}: exit {r.ExitCode}\n{r.Output.Trim().Split('\n').LastOrDefault()}");
        }
        Assert.IsEmpty(failures, string.Join("\n", failures));
    }

    [TestMethod]
    [TestCategory(TestCategories.Slow)]
    public void AFuzzedHeaderNeverAbortsTheProcess()
    {
        using var dir = new TempFolder();
        string original = Original(dir);
        var keys = SuperQuant.Models.Gguf.GgufFile.Read(original).Metadata.Where(kv => kv.Value is uint or float or int).Select(kv => kv.Key).OrderBy(k => k).ToList();
        var rng = new Random(36);
        var counts = new Dictionary<int, int>();
        for (int run = 0; run < 16; run++)
        {
            string bad = dir.File($"fuzz{run}.gguf");
            var changes = new List<string>();
            GgufRewriter.Rewrite(original, bad, meta =>
            {
                for (int c = 0; c < 1 + rng.Next(3); c++)
                {
                    string key = keys[rng.Next(keys.Count)];
                    object value = meta[key] switch
                    {
                        uint old => (object)(rng.Next(4) switch
                        {
                            0 => 0u,
                            1 => uint.MaxValue,
                            2 => (uint)rng.Next(1, 5000),
                            _ => (uint)Math.Max(0, rng.Next(-3, 3) + (long)old)
                        }),
                        int => rng.Next(-10, 10),
                        _ => rng.Next(3) switch { 0 => float.NaN, 1 => -1f, _ => (float)(rng.NextDouble() * 1e6) },
                    };
                    meta[key] = value;
                    changes.Add($"{key}={value}");
                }
            });
            var r = Eval(dir, bad);
            counts[r.ExitCode] = counts.GetValueOrDefault(r.ExitCode) + 1;
            Assert.IsTrue(r.ExitCode is 0 or 3, $"run {run} ({string.Join(", ", changes)}): exit {r.ExitCode}\n{r.Output}");
            Assert.DoesNotContain("internal error", r.Output);
        }
        Console.WriteLine("exit codes: " + string.Join(", ", counts.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key}: {kv.Value}")));
    }
}
