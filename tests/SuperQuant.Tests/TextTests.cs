using System.Text.Json;
using SuperQuant.Core;
using SuperQuant.Models.Text;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

[TestClass]
public sealed class TextTests
{
    /// <summary>A byte-level BPE tokenizer.json in the Hugging Face layout (GPT-2 byte mapping: space is 'Ġ').</summary>
    static void WriteByteLevelTokenizer(string folder)
    {
        var vocab = new Dictionary<string, int>();
        foreach (string t in new[] { "h", "e", "l", "o", "Ġ", "w", "r", "d", "he", "ll", "hell", "hello", "Ġw", "Ġwo", "Ġwor", "Ġworld", "or", "ld",
            "<|end|>" })
            vocab[t] = vocab.Count;
        var doc = new
        {
            version = "1.0",
            added_tokens = new[] { new { id = vocab["<|end|>"], content = "<|end|>", special = true } },
            pre_tokenizer = new { type = "ByteLevel", add_prefix_space = false, use_regex = true },
            decoder = new { type = "ByteLevel" },
            model = new
            {
                type = "BPE",
                vocab,
                merges = new object[] { "h e", "l l", "he ll", "hell o", new[] { "Ġ", "w" }, "Ġw o", "o r", "Ġwo r", "l d", "Ġwor ld" },
            },
        };
        File.WriteAllText(Path.Combine(folder, "tokenizer.json"), JsonSerializer.Serialize(doc));
    }

    [TestMethod]
    public void ByteLevelBpeTokenizerJsonEncodesWithMergesAndRoundTrips()
    {
        using var dir = new TempFolder();
        WriteByteLevelTokenizer(dir.Path);
        var tok = TokenizerLoader.Load(dir.Path);
        var ids = tok.Encode("hello world");
        CollectionAssert.AreEqual(new[] { 11, 15 }, ids.ToArray(), string.Join(",", ids)); // "hello", "Ġworld"
        Assert.AreEqual("hello world", tok.Decode(ids));
    }

    [TestMethod]
    public void UnsupportedTokenizerJsonGivesCodedError()
    {
        using var dir = new TempFolder();
        File.WriteAllText(dir.File("tokenizer.json"), "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}");
        var e = Assert.ThrowsExactly<SuperQuantException>(() => TokenizerLoader.Load(dir.Path));
        Assert.AreEqual(ErrorCodes.TokenizerUnsupported, e.Code);
        StringAssert.Contains(e.Message, "--tokens");
    }

    [TestMethod]
    public void FolderWithoutTokenizerGivesCodedError()
    {
        using var dir = new TempFolder();
        var e = Assert.ThrowsExactly<SuperQuantException>(() => TokenizerLoader.Load(dir.Path));
        Assert.AreEqual(ErrorCodes.TokenizerUnsupported, e.Code);
    }

    [TestMethod]
    public void TokenIdFileParsesCommentsAndSeparatorsAndChecksRange()
    {
        using var dir = new TempFolder();
        File.WriteAllText(dir.File("ids.txt"), "# seed 42\n1 2, 3\n\n4\t5 # trailing\n");
        CollectionAssert.AreEqual(new[] { 1, 2, 3, 4, 5 }, TokenIdFile.Read(dir.File("ids.txt"), 10));
        File.WriteAllText(dir.File("bad.txt"), "1 2\n3 512\n");
        var e = Assert.ThrowsExactly<SuperQuantException>(() => TokenIdFile.Read(dir.File("bad.txt"), 512));
        Assert.AreEqual(ErrorCodes.TokenFileInvalid, e.Code);
        StringAssert.Contains(e.Message, "(2)");
        StringAssert.Contains(e.Message, "512");
        File.WriteAllText(dir.File("nan.txt"), "1 x 3");
        Assert.AreEqual(ErrorCodes.TokenFileInvalid, Assert.ThrowsExactly<SuperQuantException>(() => TokenIdFile.Read(dir.File("nan.txt"), 10)).Code);
    }

    [TestMethod]
    public void TokenIdFileWriteReadRoundTrip()
    {
        using var dir = new TempFolder();
        int[] ids = Enumerable.Range(0, 100).Select(i => i * 3 % 97).ToArray();
        TokenIdFile.Write(dir.File("t.txt"), ids, "generated");
        CollectionAssert.AreEqual(ids, TokenIdFile.Read(dir.File("t.txt"), 97));
    }
}
