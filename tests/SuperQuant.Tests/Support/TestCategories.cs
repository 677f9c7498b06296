namespace SuperQuant.Tests.Support;

/// <summary>Test categories. The quick inner loop skips the slow ones:
/// <c>dotnet test SuperQuant.Build.sln --filter "TestCategory!=Slow"</c>; CI (<c>.ci/run</c>) runs everything.</summary>
public static class TestCategories
{
    /// <summary>Tests that take more than ~5 s each on a 2-core machine (builds, packaging, long evaluations, fuzzing).</summary>
    public const string Slow = "Slow";
}
