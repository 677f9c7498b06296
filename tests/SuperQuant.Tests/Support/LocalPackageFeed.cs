namespace SuperQuant.Tests.Support;

/// <summary>
/// The SuperQuant.Build NuGet package, packed from this repository once per test run into a temporary folder feed,
/// with one private package folder (NUGET_PACKAGES) shared by every consumer project: the ~150 MB package is extracted
/// once, and never into the user's NuGet cache. Packing builds Release outputs of the repository's projects, so packs
/// are serialized (<see cref="RepositoryBuildLock"/>).
/// </summary>
public static class LocalPackageFeed
{
    /// <summary>Held by every test that builds this repository's projects in Release (pack), which share obj/ folders.</summary>
    public static readonly object RepositoryBuildLock = new();

    static readonly Lazy<(string Root, string Version)> Packed = new(Pack, LazyThreadSafetyMode.ExecutionAndPublication);

    public static string Version => Packed.Value.Version;
    public static string Feed => Path.Combine(Packed.Value.Root, "feed");
    public static string PackagesFolder => Path.Combine(Packed.Value.Root, "nuget-packages");

    /// <summary>Environment for `dotnet build` of a consumer: the private package folder, no MSBuild node reuse.</summary>
    public static Dictionary<string, string> Environment => new()
    {
        ["NUGET_PACKAGES"] = PackagesFolder, ["MSBUILDDISABLENODEREUSE"] = "1", ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1",
    };

    /// <summary>Makes <paramref name="projectFolder"/> restore from the feed only.</summary>
    public static void WriteNuGetConfig(string projectFolder) => File.WriteAllText(Path.Combine(projectFolder, "nuget.config"), $"""
        <?xml version="1.0" encoding="utf-8"?>
        <configuration><packageSources><clear /><add key="local" value="{Feed}" /></packageSources></configuration>
        """);

    static (string, string) Pack()
    {
        string root = Directory.CreateTempSubdirectory("superquant-feed-").FullName;
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(root, recursive: true); } catch (IOException) { } };
        string version = "0.1.0-test." + DateTime.UtcNow.ToString("yyyyMMddHHmmss");
        ProcessRunner.Result r;
        lock (RepositoryBuildLock)
            r = ProcessRunner.Run("dotnet", RepoPaths.Root, new Dictionary<string, string>(), TimeSpan.FromMinutes(8),
                "pack", "src/SuperQuant.Build", "-c", "Release", "-o", Path.Combine(root, "feed"), $"-p:Version={version}");
        if (r.ExitCode != 0) throw new InvalidOperationException("dotnet pack src/SuperQuant.Build failed:\n" + r.Output);
        return (root, version);
    }
}
