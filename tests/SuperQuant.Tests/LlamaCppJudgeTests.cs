using System.Security.Cryptography;
using SuperQuant.Core.Evaluation;
using SuperQuant.Core.Llama;
using SuperQuant.LlamaCpp;
using SuperQuant.Manifest;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Gguf;
using SuperQuant.Models.Text;
using SuperQuant.Pipeline;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

/// <summary>
/// llama.cpp (LLamaSharp 0.30.0, in-process) as the independent judge of the GGUF files we write: it loads them with
/// its normal loader, its perplexity of an F16/BF16 export equals our forward pass's, its own quantizer writes the same
/// bytes as ours for every type and named mix, and its tokenizer reads our exported vocabulary as Microsoft.ML.Tokenizers
/// reads the same SentencePiece model.
/// </summary>
[TestClass]
public sealed class LlamaCppJudgeTests
{
    /// <summary>k-quant-friendly shapes (rows multiples of 256), 9 layers so llama.cpp's "more bits" layer pattern
    /// differs from a uniform one, 4 query heads per KV head (Q2_K's attn_v rule), an untied output head.</summary>
    static LlamaConfig KQuantConfig(bool tied = false) => new()
    {
        Architecture = "llama", HiddenSize = 256, IntermediateSize = 512, NumLayers = 9, NumHeads = 4, NumKvHeads = 1, VocabSize = 256,
        MaxPositionEmbeddings = 256, TieWordEmbeddings = tied,
    };

    static int[] Tokens(int n, int vocab, int seed)
    {
        var rng = new Random(seed);
        return new[] { 1 }.Concat(Enumerable.Range(0, n - 1).Select(_ => rng.Next(2, vocab))).ToArray();
    }

    /// <param name="tolerance">0.5%, except BF16 on stories260K: llama.cpp's CPU BF16 matmul rounds the activations to
    /// BF16 as well (its vec_dot type), 8 bits of mantissa, and this model moves ~0.5% under that noise (1% bound).</param>
    [TestMethod]
    [DataRow("stories260K", "f16", 0.005)]
    [DataRow("stories260K", "bf16", 0.01)]
    [DataRow("random-gqa", "f16", 0.005)]
    [DataRow("random-gqa", "bf16", 0.005)]
    public void LlamaCppPerplexityOfAFloatExportEqualsOurForwardPass(string which, string type, double tolerance)
    {
        using var dir = new TempFolder();
        string ckpt = which == "stories260K" ? SharedModels.Stories260K : dir.File("ckpt");
        if (which != "stories260K") RandomCheckpoint.Write(ckpt, KQuantConfig(tied: true) with { NumLayers = 3 }, seed: 2, heavyTails: true);
        using var model = ModelLoader.Load(ckpt);
        string gguf = dir.File("m.gguf");
        GgufExporter.Write(gguf, model, new GgufExport { FileType = Names.ParseGgufType(type), Name = "m" });
        int[] ids = which == "stories260K" ? TokenIdFile.Read(Path.Combine(RepoPaths.Root, "samples/OnDeviceStories/data/evaluation.tokens.txt"),
            512) : Tokens(300, 256, 5);
        int ctx = which == "stories260K" ? 512 : 128; // stories260K is judged from BOS, as it is used
        using var llama = LlamaCppEngine.Open(gguf, ctx);
        var theirs = Evaluator.Perplexity(llama.Logits, ids, ctx, ctx / 2);
        // Our forward pass on exactly the exported weights: the export (names, layout, RoPE order) and both evaluators agree.
        using var exported = GgufModelLoader.Load(gguf);
        var ours = Evaluator.Perplexity(t => exported.Forward(t), ids, ctx, ctx / 2);
        Assert.IsLessThan(tolerance, Math.Abs(theirs.Perplexity.Value / ours.Perplexity.Value - 1),
            $"{which} {type}: llama.cpp {theirs.Perplexity.Value:F4} vs ours on the exported weights {ours.Perplexity.Value:F4}");
        if (type == "f16")
        {
            // F16 keeps 11 bits of mantissa: against the fp32 original too (BF16's 8 bits move this model ~1%).
            var original = Evaluator.Perplexity(t => model.Forward(t), ids, ctx, ctx / 2);
            Assert.IsLessThan(0.005, Math.Abs(theirs.Perplexity.Value / original.Perplexity.Value - 1),
                $"{which}: llama.cpp F16 {theirs.Perplexity.Value:F4} vs our fp32 original {original.Perplexity.Value:F4}");
        }
    }

    /// <summary>The same F16 export quantized by llama.cpp's quantizer (llama_model_quantize, llama-quantize's
    /// defaults) and by ours: every tensor of every named type has the same ggml type and the same bytes.</summary>
    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    [TestCategory(TestCategories.Slow)]
    public void OurQuantizerWritesLlamaCppsBytesForEveryType(bool tied)
    {
        using var dir = new TempFolder();
        RandomCheckpoint.Write(dir.File("ckpt"), KQuantConfig(tied), seed: 3, heavyTails: true);
        using (var original = ModelLoader.Load(dir.File("ckpt")))
            GgufExporter.Write(dir.File("f16.gguf"), original, new GgufExport { FileType = GgufFileType.F16, Name = "m" });
        using var model = GgufModelLoader.Load(dir.File("f16.gguf")); // F16-exact values, as llama.cpp's quantizer sees them
        foreach (var type in Enum.GetValues<GgufFileType>().Where(t => t != GgufFileType.F16 && !IQTypeTests.LlamaCppRefusesWithoutImatrix(t)))
        {
            string ours = dir.File($"ours.{type.Name()}.gguf"), theirs = dir.File($"llama.{type.Name()}.gguf");
            GgufExporter.Write(ours, model, new GgufExport { FileType = type, Name = "m" });
            LlamaCppQuantizer.Quantize(dir.File("f16.gguf"), theirs, type.Name());
            Assert.AreEqual($"identical ({GgufFile.Read(ours).Tensors.Count} tensors)",
                SuperQuant.Cli.Commands.Bench.BenchGgufCommand.SameBytes(ours, theirs), type.Name());
        }
    }

    /// <summary>stories260K's 64- and 172-wide rows cannot hold k-quant blocks: llama.cpp falls back per tensor, and we
    /// follow it exactly; where it has no fallback (a 32-block type on 172-wide rows) it refuses the file, we write F16.</summary>
    [TestMethod]
    public void FallbacksOnRowsThatDoNotFitFollowLlamaCpp()
    {
        using var dir = new TempFolder();
        using (var original = Llama2cCheckpoint.Load(SharedModels.Stories260K))
            GgufExporter.Write(dir.File("f16.gguf"), original, new GgufExport { FileType = GgufFileType.F16, Name = "s" });
        using var model = GgufModelLoader.Load(dir.File("f16.gguf"));
        foreach (var type in new[] { GgufFileType.Q4_K_M, GgufFileType.Q6_K, GgufFileType.Q3_K_M, GgufFileType.Q2_K, GgufFileType.Q5_K_S, GgufFileType.IQ4_XS })
        {
            var result = GgufExporter.Write(dir.File("ours.gguf"), model, new GgufExport { FileType = type, Name = "s" });
            LlamaCppQuantizer.Quantize(dir.File("f16.gguf"), dir.File("llama.gguf"), type.Name());
            StringAssert.StartsWith(SuperQuant.Cli.Commands.Bench.BenchGgufCommand.SameBytes(dir.File("ours.gguf"), dir.File("llama.gguf")),
                "identical", type.Name());
            if (type == GgufFileType.IQ4_XS)
            {
                // 64-wide rows take IQ4_NL's 32-blocks; 172-wide ffn_down rows fit neither and are F16 in both files.
                var q = result.Tensors.Single(t => t.Name == "blk.0.attn_q.weight");
                Assert.AreEqual(GgmlType.IQ4_NL, q.Type);
                StringAssert.Contains(q.Reason, "falls back to IQ4_NL");
                Assert.AreEqual(GgmlType.F16, result.Tensors.Single(t => t.Name == "blk.0.ffn_down.weight").Type);
            }
        }
        var refused = Assert.ThrowsExactly<LlamaCppException>(() => LlamaCppQuantizer.Quantize(dir.File("f16.gguf"), dir.File("llama.gguf"), "q8_0"));
        StringAssert.Contains(refused.Message, "no tensor type fallback");
        var written = GgufExporter.Write(dir.File("ours.gguf"), model, new GgufExport { FileType = GgufFileType.Q8_0, Name = "s" });
        var down = written.Tensors.Single(t => t.Name == "blk.0.ffn_down.weight");
        Assert.AreEqual(GgmlType.F16, down.Type);
        StringAssert.Contains(down.Reason, "llama.cpp's quantizer refuses");
        using var loaded = LlamaCppEngine.Open(dir.File("ours.gguf"), 16); // and llama.cpp loads what it would not write
    }

    /// <summary>Our forward pass on a quantized GGUF's exact dequantized weights against llama.cpp on the same file.
    /// They differ because llama.cpp's CPU kernels round the activations to 8 bits (Q8_0 / Q8_K blocks of 32 / 256)
    /// before every quantized matmul; that rounding adds about as much noise as a Q8_0 weight quantization of the
    /// activations, so the two perplexities may differ by a few percent (measured: stories260K F16 0.004%, Q8_0 3%). The
    /// tolerance is |ln(PPL_llama.cpp / PPL_ours)| &lt;= 0.05.</summary>
    [TestMethod]
    [DataRow("q8_0")]
    [DataRow("q4_k_m")]
    public void DequantizedEvaluationStaysWithinTheActivationRoundingTolerance(string type)
    {
        using var dir = new TempFolder();
        string gguf = dir.File("m.gguf");
        using (var model = Llama2cCheckpoint.Load(SharedModels.Stories260K))
            GgufExporter.Write(gguf, model, new GgufExport { FileType = Names.ParseGgufType(type), Name = "s" });
        int[] ids = TokenIdFile.Read(Path.Combine(RepoPaths.Root, "samples/OnDeviceStories/data/evaluation.tokens.txt"), 512);
        using var dequantized = GgufModelLoader.Load(gguf);
        var ours = Evaluator.Perplexity(t => dequantized.Forward(t), ids, 256, 128);
        using var llama = LlamaCppEngine.Open(gguf, 256);
        var theirs = Evaluator.Perplexity(llama.Logits, ids, 256, 128);
        double lnRatio = Math.Log(theirs.Perplexity.Value / ours.Perplexity.Value);
        Assert.IsLessThan(0.05, Math.Abs(lnRatio), $"{type}: llama.cpp {theirs.Perplexity.Value:F3}, ours on its dequantized weights " +
            $"{ours.Perplexity.Value:F3}");
    }

    /// <summary>A GGUF made with the real LLaMA-2 SentencePiece model: llama.cpp's tokenizer gives the ids
    /// Microsoft.ML.Tokenizers' LlamaTokenizer gives for the same tokenizer.model.</summary>
    [TestMethod]
    public void ExportedLlama2VocabularyTokenizesInLlamaCppAsInMicrosoftMlTokenizers()
    {
        using var dir = new TempFolder();
        string ckpt = dir.File("ckpt");
        TinyCheckpointFactory.Write(ckpt, new TinyModelSpec { Vocab = 32000, Hidden = 32, Intermediate = 64, Layers = 1 });
        File.Copy(SharedModels.Llama2Tokenizer, Path.Combine(ckpt, "tokenizer.model"));
        using var model = ModelLoader.Load(ckpt);
        var vocabulary = GgufVocabulary.FromCheckpoint(ckpt, model.Config);
        Assert.IsNotNull(vocabulary);
        GgufExporter.Write(dir.File("m.gguf"), model, new GgufExport { FileType = GgufFileType.F16, Name = "m", Vocabulary = vocabulary });
        var ml = TokenizerLoader.Load(ckpt);
        using var llama = LlamaCppModel.Load(dir.File("m.gguf"), 64, 1);
        foreach (string text in new[]
        {
            "Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine!",
            "The year 1969: Apollo 11 landed; 3.14159 is pi, and 42 is the answer (isn't it?).",
            "Grüße aus München — naïve café, 東京タワー, Ελληνικά, emoji 🙂 and tabs\tand   spaces.",
            "def f(x):\n    return x ** 2  # comment\n\n\"quoted\" 'single' [brackets] {braces} <angle>",
        })
        {
            int[] expected = new[] { 1 }.Concat(ml.Encode(text).Where(id => id != 1)).ToArray();
            int[] actual = llama.Tokenize(text, addBos: true);
            CollectionAssert.AreEqual(expected, actual, $"ids differ for: {text}\nML.Tokenizers: {string.Join(' ', expected)}\nllama.cpp: " +
                $"    {string.Join(' ', actual)}");
        }
    }

    const string ChatMl = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% " +
        "endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    /// <summary>The chat template travels into the GGUF (tokenizer_config.json's chat_template, or chat_template.jinja,
    /// which wins), and llama.cpp itself reads it back and formats a conversation with it.</summary>
    [TestMethod]
    [DataRow("tokenizer_config")]
    [DataRow("jinja")]
    [DataRow("named list")]
    public void TheChatTemplateReachesLlamaCpp(string source)
    {
        using var dir = new TempFolder();
        string ckpt = dir.File("ckpt");
        TinyCheckpointFactory.Write(ckpt, new TinyModelSpec { Vocab = 32000, Hidden = 32, Intermediate = 64, Layers = 1 });
        File.Copy(SharedModels.Llama2Tokenizer, Path.Combine(ckpt, "tokenizer.model"));
        string config = source switch
        {
            "named list" => System.Text.Json.JsonSerializer.Serialize(new
            {
                add_bos_token = true,
                chat_template = new object[] { new { name = "default", template = ChatMl }, new { name = "tool_use", template = "{{ messages }}" } }
            }),
            "jinja" => System.Text.Json.JsonSerializer.Serialize(new { add_bos_token = true, chat_template = "{{ 'not this one' }}" }),
            _ => System.Text.Json.JsonSerializer.Serialize(new { add_bos_token = true, chat_template = ChatMl }),
        };
        File.WriteAllText(Path.Combine(ckpt, "tokenizer_config.json"), config);
        if (source == "jinja") File.WriteAllText(Path.Combine(ckpt, "chat_template.jinja"), ChatMl);
        using var model = ModelLoader.Load(ckpt);
        GgufExporter.Write(dir.File("m.gguf"), model, new GgufExport
        {
            FileType = GgufFileType.F16, Name = "m",
            Vocabulary = GgufVocabulary.FromCheckpoint(ckpt, model.Config)
        });
        using var llama = LlamaCppModel.Load(dir.File("m.gguf"), 64, 1);
        Assert.AreEqual(ChatMl, llama.Metadata["tokenizer.chat_template"], "llama.cpp reads the template we wrote");
        if (source == "named list") Assert.AreEqual("{{ messages }}", llama.Metadata["tokenizer.chat_template.tool_use"]);
        string prompt = llama.ApplyChatTemplate(new[] { ("system", "Be brief."), ("user", "Hello!") });
        Assert.AreEqual("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n", prompt);
    }

    /// <summary>A model without a tokenizer and without super weights (what the sample writes): LLamaSharp's normal
    /// loader opens it (an empty metadata string crashed it before), and it runs token ids.</summary>
    [TestMethod]
    public void AGgufWithoutTokenizerOrSuperWeightsOpensInLLamaSharpsNormalLoader()
    {
        using var dir = new TempFolder();
        using (var model = Llama2cCheckpoint.Load(SharedModels.Stories260K))
            GgufExporter.Write(dir.File("m.gguf"), model, new GgufExport { FileType = GgufFileType.Q8_0, Name = "s" });
        foreach (var (key, value) in GgufFile.Read(dir.File("m.gguf")).Metadata)
            if (value is string s) Assert.AreNotEqual("", s, $"{key} is an empty string");
        LlamaCppRuntime.EnsureLoaded();
        using var weights = LLama.LLamaWeights.LoadFromFile(new LLama.Common.ModelParams(dir.File("m.gguf")) { ContextSize = 32 });
        Assert.AreEqual(512, weights.Vocab.Count);
        Assert.AreEqual("no_vocab", weights.Metadata["tokenizer.ggml.model"]);
    }

    /// <summary>Fixtures made by llama.cpp itself (ggml_quantize_chunk of LLamaSharp 0.30.0) on the deterministic
    /// matrix of <see cref="GgmlFormatTests.TestMatrix"/>: the SHA-256 of its bytes per type. Our quantizer must give
    /// the same bytes even where llama.cpp is not at hand, and a changed llama.cpp shows up here.</summary>
    [TestMethod]
    public void GoldenHashesFromLlamaCpp()
    {
        var golden = new Dictionary<GgmlType, string>
        {
            [GgmlType.Q4_0] = Golden.Q4_0, [GgmlType.Q4_1] = Golden.Q4_1, [GgmlType.Q5_0] = Golden.Q5_0, [GgmlType.Q5_1] = Golden.Q5_1,
            [GgmlType.Q8_0] = Golden.Q8_0, [GgmlType.Q2_K] = Golden.Q2_K, [GgmlType.Q3_K] = Golden.Q3_K, [GgmlType.Q4_K] = Golden.Q4_K,
            [GgmlType.Q5_K] = Golden.Q5_K, [GgmlType.Q6_K] = Golden.Q6_K, [GgmlType.BF16] = Golden.BF16, [GgmlType.F16] = Golden.F16,
        };
        float[] x = GgmlFormatTests.TestMatrix(1);
        foreach (var (type, hash) in golden)
        {
            string ours = Convert.ToHexString(SHA256.HashData(GgmlQuants.Quantize(type, x, 1024))).ToLowerInvariant();
            Assert.AreEqual(hash, ours, $"{type}: our bytes differ from llama.cpp's recorded ones");
            var theirs = new byte[GgmlQuants.RowBytes(type, 1024) * 24];
            GgmlReference.Quantize((int)type, x, theirs, 24, 1024);
            Assert.AreEqual(hash, Convert.ToHexString(SHA256.HashData(theirs)).ToLowerInvariant(),
                $"{type}: the llama.cpp in use is not the one the fixture was made with");
        }
    }

    /// <summary>The fixture values: generated once with <c>GgmlReference.Quantize</c> (llama.cpp build of
    /// LLamaSharp.Backend.Cpu 0.30.0); regenerate them only when llama.cpp is deliberately upgraded.</summary>
    static class Golden
    {
        public const string Q4_0 = "fdd2ab3aab15acee7b0b8735f7505ae7e9d9785a0bd09ea0cf179b2a13f89934";
        public const string Q4_1 = "c49e11d83bec098fdce21a2dcca69c21b51261563b1f57a3d6cce52747fb558d";
        public const string Q5_0 = "f73527fdb8eb2582dfc4297dc1140656893166a40bf46722ac3d598e5be41565";
        public const string Q5_1 = "83166387ba29f91ad122a7a3965fdea1a7cd621f381470661155d376fcdbab43";
        public const string Q8_0 = "482db6a36ea2cad5eec7a7d83505e885f4bbaad510ac9fa1a7e769dbbcf869c9";
        public const string Q2_K = "c6aa2590b7749d787bcc03457c02024af76c45852c9e23a2706086ac7488853c";
        public const string Q3_K = "338d9ed31ccb26e590c2695360e6d95a8690d6569ea9283172790b15901c40f2";
        public const string Q4_K = "e1754683f53ce398e719c41e4aa7d8f26370da18c386479ca154f81e0acfef9a";
        public const string Q5_K = "d3ca313b42f9231fbe20dc75388e153807505aa433877fe6ca884c0ce8c6a91e";
        public const string Q6_K = "c890441b908a6066832c6d1dba76faa95cdcd8cb146c2cdf7f6fbbfc8bf1f6b0";
        public const string BF16 = "afc624496399d71ad843aec40206bd74cbccdf7175e6cd72869dee5ef5f10780";
        public const string F16 = "8bfd9911feec4524deddd686882a9534435b031bd5687004dd254cdb758c0b47";
    }
}
