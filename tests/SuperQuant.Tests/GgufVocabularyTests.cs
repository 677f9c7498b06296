using Google.Protobuf;
using SuperQuant.Core;
using SuperQuant.Core.Llama;
using SuperQuant.Core.SuperWeights;
using SuperQuant.Models.Checkpoints;
using SuperQuant.Models.Gguf;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

/// <summary>The tokenizer in GGUF files (tokenizer.ggml.*), from a SentencePiece tokenizer.model or a byte-level BPE
/// tokenizer.json in the checkpoint folder.</summary>
[TestClass]
public sealed class GgufVocabularyTests
{
    static readonly (string Piece, float Score, int Type)[] Pieces =
    {
        ("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3), ("<0x0A>", 0, 6), ("<0xE2>", 0, 6),
        ("▁", -1f, 1), ("▁the", -2.5f, 1), ("▁a", -3f, 1), ("s", -4f, 1), ("é", -5.25f, 1), ("▁café", -6f, 1),
        ("t", -10f, 1), ("h", -11f, 1), ("e", -12f, 1), ("th", -7f, 1), ("the", -8f, 1), // merges t+h, th+e, then ▁+the
    };

    /// <summary>A SentencePiece ModelProto: pieces (field 1) and a trainer spec (field 2) with unk/bos/eos/pad ids.</summary>
    public static void WriteSentencePieceModel(string path, int unk = 0, int bos = 1, int eos = 2)
    {
        using var file = File.Create(path);
        var o = new CodedOutputStream(file);
        foreach (var (piece, score, type) in Pieces)
        {
            using var ms = new MemoryStream();
            var p = new CodedOutputStream(ms);
            p.WriteTag(1, WireFormat.WireType.LengthDelimited); p.WriteString(piece);
            p.WriteTag(2, WireFormat.WireType.Fixed32); p.WriteFloat(score);
            if (type != 1) { p.WriteTag(3, WireFormat.WireType.Varint); p.WriteEnum(type); }
            p.Flush();
            o.WriteTag(1, WireFormat.WireType.LengthDelimited); o.WriteBytes(ByteString.CopyFrom(ms.ToArray()));
        }
        using (var ms = new MemoryStream())
        {
            var t = new CodedOutputStream(ms);
            t.WriteTag(3, WireFormat.WireType.Varint); t.WriteEnum(2);   // model_type BPE (a field the exporter skips)
            t.WriteTag(4, WireFormat.WireType.Varint); t.WriteInt32(Pieces.Length); // vocab_size (skipped too)
            t.WriteTag(40, WireFormat.WireType.Varint); t.WriteInt32(unk);
            t.WriteTag(41, WireFormat.WireType.Varint); t.WriteInt32(bos);
            t.WriteTag(42, WireFormat.WireType.Varint); t.WriteInt32(eos);
            t.WriteTag(35, WireFormat.WireType.Varint); t.WriteBool(true); // byte_fallback
            t.Flush();
            o.WriteTag(2, WireFormat.WireType.LengthDelimited); o.WriteBytes(ByteString.CopyFrom(ms.ToArray()));
        }
        using (var ms = new MemoryStream())
        {
            // normalizer_spec as Llama's: identity, add a dummy prefix, escape whitespace as U+2581.
            var n = new CodedOutputStream(ms);
            n.WriteTag(1, WireFormat.WireType.LengthDelimited); n.WriteString("identity");
            n.WriteTag(2, WireFormat.WireType.LengthDelimited); n.WriteBytes(ByteString.Empty);
            n.WriteTag(3, WireFormat.WireType.Varint); n.WriteBool(true);
            n.WriteTag(4, WireFormat.WireType.Varint); n.WriteBool(false);
            n.WriteTag(5, WireFormat.WireType.Varint); n.WriteBool(true);
            n.Flush();
            o.WriteTag(3, WireFormat.WireType.LengthDelimited); o.WriteBytes(ByteString.CopyFrom(ms.ToArray()));
        }
        o.Flush();
    }

    [TestMethod]
    public void SentencePieceVocabularyIsWrittenAsLlamaCppReadsIt()
    {
        using var dir = new TempFolder();
        TinyCheckpointFactory.Write(dir.Path, new TinyModelSpec());
        WriteSentencePieceModel(dir.File("tokenizer.model"));
        using LlamaModel model = ModelLoader.Load(dir.Path);
        var vocabulary = GgufVocabulary.FromCheckpoint(dir.Path, model.Config);
        Assert.IsNotNull(vocabulary);
        GgufExporter.Write(dir.File("m.gguf"), model, new GgufExport { FileType = SuperQuant.Manifest.GgufFileType.F16, Name = "m", Vocabulary = vocabulary });

        var g = GgufFile.Read(dir.File("m.gguf"));
        Assert.AreEqual("llama", g.Metadata["tokenizer.ggml.model"]);
        var tokens = ((object[])g.Metadata["tokenizer.ggml.tokens"]).Cast<string>().ToList();
        var scores = ((object[])g.Metadata["tokenizer.ggml.scores"]).Cast<float>().ToList();
        var types = ((object[])g.Metadata["tokenizer.ggml.token_type"]).Cast<int>().ToList();
        Assert.HasCount(48, tokens, "padded to the model's vocabulary, as llama.cpp requires");
        CollectionAssert.AreEqual(Pieces.Select(p => p.Piece).ToList(), tokens.Take(Pieces.Length).ToList());
        CollectionAssert.AreEqual(Pieces.Select(p => p.Score).ToList(), scores.Take(Pieces.Length).ToList());
        CollectionAssert.AreEqual(Pieces.Select(p => p.Type).ToList(), types.Take(Pieces.Length).ToList());
        Assert.AreEqual($"[PAD{Pieces.Length}]", tokens[Pieces.Length]);
        Assert.AreEqual((int)GgufTokenType.Unused, types[^1]);
        Assert.AreEqual((0u, 1u, 2u), ((uint)g.Metadata["tokenizer.ggml.unknown_token_id"], (uint)g.Metadata["tokenizer.ggml.bos_token_id"],
            (uint)g.Metadata["tokenizer.ggml.eos_token_id"]));
        Assert.IsTrue((bool)g.Metadata["tokenizer.ggml.add_bos_token"]);
        Assert.IsFalse(g.Metadata.ContainsKey("tokenizer.ggml.merges"));
        GgufIndependentParserTests.AssertSameMetadata(dir.File("m.gguf"));
    }

    [TestMethod]
    public void ByteLevelBpeVocabularyCarriesItsMergesAndSpecialTokens()
    {
        using var dir = new TempFolder();
        TinyCheckpointFactory.Write(dir.Path, new TinyModelSpec());
        File.WriteAllText(dir.File("tokenizer.json"), """
            {
              "added_tokens": [ { "id": 5, "content": "<|begin_of_text|>", "special": true }, { "id": 6, "content": "<tool>", "special": false } ],
              "pre_tokenizer": { "type": "ByteLevel", "add_prefix_space": false },
              "model": { "type": "BPE", "vocab": { "a": 0, "b": 1, "ab": 2, "Ġ": 3, "Ġab": 4 }, "merges": [ "a b", [ "Ġ", "ab" ] ] }
            }
            """);
        File.WriteAllText(dir.File("tokenizer_config.json"), """{ "add_bos_token": true }""");
        using LlamaModel model = ModelLoader.Load(dir.Path);
        var v = GgufVocabulary.FromCheckpoint(dir.Path, model.Config)!;
        Assert.AreEqual("gpt2", v.Model);
        Assert.AreEqual("gpt-2", v.Pre, "no Split regex: GPT-2's own ByteLevel regex, llama.cpp's \"gpt-2\" pre-tokenizer");
        CollectionAssert.AreEqual(new[] { "a b", "Ġ ab" }, v.Merges!.ToArray(), "both merge spellings");
        CollectionAssert.AreEqual(new[] { "a", "b", "ab", "Ġ", "Ġab", "<|begin_of_text|>", "<tool>", "[PAD7]" }, v.Tokens.Take(8).ToArray());
        CollectionAssert.AreEqual(new[] { 1, 1, 1, 1, 1, 3, 4, 5 }, v.TokenTypes.Take(8).ToArray());
        Assert.IsTrue(v.AddBos, "tokenizer_config.json says so");
        GgufExporter.Write(dir.File("b.gguf"), model, new GgufExport { FileType = SuperQuant.Manifest.GgufFileType.F16, Name = "b", Vocabulary = v });
        GgufIndependentParserTests.AssertSameMetadata(dir.File("b.gguf"));
    }

    [TestMethod]
    public void TheSameTokenizerModelLoadsAsATextTokenizer()
    {
        using var dir = new TempFolder();
        WriteSentencePieceModel(dir.File("tokenizer.model"));
        var tokenizer = SuperQuant.Models.Text.TokenizerLoader.Load(dir.Path);
        // SentencePiece BPE: a dummy prefix makes "▁the", built by the highest-scoring merges; BOS first.
        CollectionAssert.AreEqual(new[] { 1, 6 }, tokenizer.Encode("the"));
        Assert.AreEqual("the", tokenizer.Decode(new[] { 1, 6 }));
    }

    [TestMethod]
    public void NoTokenizerMeansNoVocabAndAnOversizedOneIsACodedError()
    {
        using var dir = new TempFolder();
        TinyCheckpointFactory.Write(dir.Path, new TinyModelSpec { Vocab = 8 });
        using LlamaModel model = ModelLoader.Load(dir.Path);
        Assert.IsNull(GgufVocabulary.FromCheckpoint(dir.Path, model.Config));
        WriteSentencePieceModel(dir.File("tokenizer.model"));
        var e = Assert.ThrowsExactly<SuperQuantException>(() => GgufVocabulary.FromCheckpoint(dir.Path, model.Config));
        Assert.AreEqual(ErrorCodes.TokenizerUnsupported, e.Code);
        StringAssert.Contains(e.Message, "16 tokens but the model's vocabulary is 8");
    }
}
