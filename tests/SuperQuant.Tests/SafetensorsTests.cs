using System.Text;
using SuperQuant.Core;
using SuperQuant.Models.Safetensors;
using SuperQuant.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace SuperQuant.Tests;

[TestClass]
public sealed class SafetensorsTests
{
    static string WriteRaw(TempFolder dir, string header, int dataBytes, string name = "t.safetensors")
    {
        byte[] h = Encoding.UTF8.GetBytes(header);
        string path = dir.File(name);
        using var fs = File.Create(path);
        fs.Write(BitConverter.GetBytes((ulong)h.Length));
        fs.Write(h);
        fs.Write(new byte[dataBytes]);
        return path;
    }

    static SuperQuantException ExpectCorrupt(string path, params string[] mustMention)
    {
        var e = Assert.ThrowsExactly<SuperQuantException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.AreEqual(ErrorCodes.CheckpointFormat, e.Code, e.Message);
        StringAssert.Contains(e.Message, path);
        foreach (string m in mustMention) StringAssert.Contains(e.Message, m);
        return e;
    }

    [TestMethod]
    public void RoundTripsEveryWrittenDtypeBitForBit()
    {
        using var dir = new TempFolder();
        var tensors = new Dictionary<string, Tensor>
        {
            ["f32"] = torch.randn(3, 5),
            ["f16"] = torch.randn(4, 2).to_type(ScalarType.Float16),
            ["bf16"] = torch.randn(7).to_type(ScalarType.BFloat16),
            ["i8"] = torch.randint(-100, 100, new long[] { 9 }, dtype: ScalarType.Int8),
            ["u8"] = torch.randint(0, 255, new long[] { 2, 2 }, dtype: ScalarType.Byte),
            ["i64"] = torch.tensor(new long[] { long.MinValue, 0, long.MaxValue }),
            ["empty"] = torch.zeros(0, 4),
        };
        string path = dir.File("all.safetensors");
        SafetensorsWriter.Write(path, tensors, new Dictionary<string, string> { ["k"] = "v" });
        using var f = SafetensorsFile.Open(path);
        Assert.AreEqual("v", f.Metadata["k"]);
        foreach (var (name, expected) in tensors)
        {
            using Tensor got = f.Read(name);
            Assert.AreEqual(expected.dtype, got.dtype, name);
            CollectionAssert.AreEqual(expected.shape, got.shape, name);
            CollectionAssert.AreEqual(expected.bytes.ToArray(), got.bytes.ToArray(), name);
        }
        Assert.IsFalse(Directory.GetFiles(dir.Path, "*.tmp").Any(), "no temp file left behind");
    }

    [TestMethod]
    public void ConvertsHalfPrecisionToFloat32OnRead()
    {
        using var dir = new TempFolder();
        using Tensor bf = torch.tensor(new float[] { 1.5f, -2.25f, 1e-3f }).to_type(ScalarType.BFloat16);
        SafetensorsWriter.Write(dir.File("x.safetensors"), new Dictionary<string, Tensor> { ["w"] = bf });
        using var f = SafetensorsFile.Open(dir.File("x.safetensors"));
        using Tensor w = f.Read("w", ScalarType.Float32);
        using Tensor expected = bf.to_type(ScalarType.Float32);
        Assert.AreEqual(ScalarType.Float32, w.dtype);
        Assert.IsTrue(w.equal(expected).all().item<bool>());
    }

    [TestMethod]
    public void RejectsInvalidJson()
    {
        using var dir = new TempFolder();
        ExpectCorrupt(WriteRaw(dir, "{\"a\": {\"dtype\": ", 0), "not valid JSON");
    }

    [TestMethod]
    public void RejectsOffsetsPastTheData()
    {
        using var dir = new TempFolder();
        ExpectCorrupt(WriteRaw(dir, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8), "'w'", "past the data section");
    }

    [TestMethod]
    public void RejectsOverlappingTensors()
    {
        using var dir = new TempFolder();
        ExpectCorrupt(WriteRaw(dir,
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12),
            "'a'", "'b'", "overlap");
    }

    [TestMethod]
    public void RejectsUnknownDtype()
    {
        using var dir = new TempFolder();
        ExpectCorrupt(WriteRaw(dir, "{\"w\":{\"dtype\":\"F12\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4), "'w'", "unknown dtype 'F12'");
    }

    [TestMethod]
    public void RejectsShapeByteCountMismatch()
    {
        using var dir = new TempFolder();
        ExpectCorrupt(WriteRaw(dir, "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8), "'w'", "needs 12 bytes", "span 8");
    }

    [TestMethod]
    public void RejectsHugeShapeBeforeAllocating()
    {
        using var dir = new TempFolder();
        // 10^12 elements claimed over 8 bytes of data: must fail on the header, not in an allocation.
        ExpectCorrupt(WriteRaw(dir, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1000000,1000000],\"data_offsets\":[0,8]}}", 8), "'w'");
    }

    [TestMethod]
    public void RejectsHeaderLengthBeyondFile()
    {
        using var dir = new TempFolder();
        string path = dir.File("h.safetensors");
        File.WriteAllBytes(path, BitConverter.GetBytes(ulong.MaxValue).Concat(new byte[16]).ToArray());
        ExpectCorrupt(path, "header length");
    }

    [TestMethod]
    public void RejectsTruncatedFile()
    {
        using var dir = new TempFolder();
        string path = dir.File("full.safetensors");
        SafetensorsWriter.Write(path, new Dictionary<string, Tensor> { ["w"] = torch.ones(64) });
        byte[] all = File.ReadAllBytes(path);
        File.WriteAllBytes(path, all[..(all.Length - 10)]);
        ExpectCorrupt(path, "'w'", "truncated");
        File.WriteAllBytes(path, all[..5]);
        ExpectCorrupt(path, "shorter than the 8-byte header length");
    }

    [TestMethod]
    public void MissingTensorIsNamed()
    {
        using var dir = new TempFolder();
        SafetensorsWriter.Write(dir.File("m.safetensors"), new Dictionary<string, Tensor> { ["a"] = torch.ones(1) });
        using var f = SafetensorsFile.Open(dir.File("m.safetensors"));
        var e = Assert.ThrowsExactly<SuperQuantException>(() => f.Read("model.norm.weight"));
        Assert.AreEqual(ErrorCodes.CheckpointMissingTensor, e.Code);
        StringAssert.Contains(e.Message, "model.norm.weight");
    }

    [TestMethod]
    public void LargeTensorsAreReadInChunksCorrectly()
    {
        using var dir = new TempFolder();
        // 2^26 + 3 floats: crosses the 2^26-element chunk boundary of the reader and writer.
        using Tensor big = torch.arange(0, (1 << 26) + 3, dtype: ScalarType.Float32);
        SafetensorsWriter.Write(dir.File("big.safetensors"), new Dictionary<string, Tensor> { ["big"] = big });
        using var f = SafetensorsFile.Open(dir.File("big.safetensors"));
        using Tensor got = f.Read("big");
        Assert.IsTrue(got.equal(big).all().item<bool>());
    }
}
