using SuperQuant.Tests.Support;

namespace SuperQuant.Tests;

/// <summary>What .editorconfig says and no formatter enforces: C# lines under 160 characters (`dotnet format`, run by
/// .ci/run, checks the rest of the formatting). Tests are exempt: their fixtures hold long literal strings.</summary>
[TestClass]
public sealed class SourceStyleTests
{
    const int MaxLine = 160;

    [TestMethod]
    public void NoSourceLineIsLongerThanTheEditorConfigSays()
    {
        StringAssert.Contains(File.ReadAllText(Path.Combine(RepoPaths.Root, ".editorconfig")), $"max_line_length = {MaxLine}");
        var over = new List<string>();
        foreach (string folder in new[] { "src", "samples", "build" })
            foreach (string file in Directory.EnumerateFiles(Path.Combine(RepoPaths.Root, folder), "*.cs", SearchOption.AllDirectories))
            {
                string relative = Path.GetRelativePath(RepoPaths.Root, file);
                if (relative.Split(Path.DirectorySeparatorChar).Any(p => p is "bin" or "obj")) continue;
                var lines = File.ReadAllLines(file);
                for (int i = 0; i < lines.Length; i++)
                    if (lines[i].Length > MaxLine) over.Add($"{relative}:{i + 1} ({lines[i].Length} characters)");
            }
        Assert.IsEmpty(over, "lines over " + MaxLine + " characters:\n" + string.Join("\n", over));
    }
}
