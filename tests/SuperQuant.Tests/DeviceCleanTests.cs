using System.Text.RegularExpressions;
using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

/// <summary>
/// Device mistakes (a tensor made on the CPU meeting one on the GPU, data&lt;T&gt;() on a GPU tensor) made
/// `quantize --device cuda` crash on a lent H100. This machine has no GPU, so a source check stands in: every tensor
/// made in device code names its device (or says why it is host data), and no GPU tensor's memory is read without
/// .cpu(). (PyTorch's meta device was tried as a stand-in GPU: libtorch without Python registers no meta kernel for
/// index_select, so a forward pass cannot run on it.)
/// </summary>
[TestClass]
public sealed class DeviceCleanTests
{
    /// <summary>Code that runs on the model's device. Models/ (file readers and writers) works on host bytes by
    /// design and moves results with .to(device); the CLI only calls into these.</summary>
    static readonly string[] DeviceFolders = { "src/SuperQuant.Core", "src/SuperQuant.Pipeline" };

    static readonly Regex Factory = new(@"\btorch\.(tensor|arange|linspace|zeros|ones|full|empty|eye|randn|rand|randint|zeros_like|ones_like)\(",
        RegexOptions.Compiled);
    static readonly Regex HostRead = new(@"\.data<|\.bytes\b", RegexOptions.Compiled);

    /// <summary>Lines that make a tensor without naming a device, or read one's memory without .cpu(), unless the line
    /// (or the comment line above it) says <c>host</c>, or the file is marked <c>// host-only:</c>.</summary>
    public static IReadOnlyList<string> Violations(string file, string[] lines)
    {
        var found = new List<string>();
        if (lines.Any(l => l.TrimStart().StartsWith("// host-only:", StringComparison.Ordinal))) return found;
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i];
            string code = line.TrimStart();
            if (code.StartsWith("//", StringComparison.Ordinal) || code.StartsWith("///", StringComparison.Ordinal)) continue;
            bool excused = line.Contains("// host", StringComparison.Ordinal)
                || (i > 0 && lines[i - 1].TrimStart().StartsWith("// host", StringComparison.Ordinal));
            if (excused) continue;
            if (Factory.IsMatch(line) && !line.Contains("device:", StringComparison.Ordinal) && !line.Contains("like.device", StringComparison.Ordinal))
                found.Add($"{file}:{i + 1}: tensor made without a device: {code}");
            if (HostRead.IsMatch(line) && !line.Contains(".cpu()", StringComparison.Ordinal))
                found.Add($"{file}:{i + 1}: tensor memory read without .cpu(): {code}");
        }
        return found;
    }

    [TestMethod]
    public void EveryTensorMadeInDeviceCodeNamesItsDevice()
    {
        var all = new List<string>();
        int files = 0;
        foreach (string folder in DeviceFolders)
            foreach (string path in Directory.EnumerateFiles(Path.Combine(RepoPaths.Root, folder), "*.cs", SearchOption.AllDirectories))
            {
                if (path.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}")
                    || path.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}")) continue;
                files++;
                all.AddRange(Violations(Path.GetRelativePath(RepoPaths.Root, path), File.ReadAllLines(path)));
            }
        Assert.IsTrue(files > 40, $"scanned {files} files: the folders moved?");
        Assert.AreEqual(0, all.Count, "device mistakes:\n" + string.Join("\n", all));
    }

    [TestMethod]
    public void TheSourceCheckFlagsTheMistakeThatCrashedOnCuda()
    {
        // The H100 crash: ZTuner sampled rows with an index made on the CPU while the activations were on cuda:0.
        string[] before = { "using var idx = torch.linspace(0, t - 1, rows).round().to_type(ScalarType.Int64);", "Inputs[site] = x.index_select(0, idx);" };
        string[] after = { "using var idx = torch.linspace(0, t - 1, rows, device: x.device).round().to_type(ScalarType.Int64);" };
        string[] read = { "double[] last = logits[-1].data<double>().ToArray();" };
        string[] excused = { "// host: decoded from file bytes", "Tensor c = torch.tensor(codes);" };
        Assert.AreEqual(1, Violations("a.cs", before).Count);
        Assert.AreEqual(0, Violations("a.cs", after).Count);
        Assert.AreEqual(1, Violations("a.cs", read).Count);
        Assert.AreEqual(0, Violations("a.cs", excused).Count);
    }
}
