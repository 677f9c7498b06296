using System.CommandLine;
using System.CommandLine.Parsing;
using SuperQuant.Core;

namespace SuperQuant.Cli;

/// <summary>Command-line checks that hold for every option of every command.</summary>
public static class UsageChecks
{
    /// <summary>Options given an empty (or all-blank) value, or one holding a NUL: no option of this tool takes one,
    /// and a path option given "" used to reach Path.GetFullPath and end as an internal error. Each is a usage error
    /// (exit 2) naming the option.</summary>
    public static List<string> EmptyValues(ParseResult parsed)
    {
        var problems = new List<string>();
        for (SymbolResult? c = parsed.CommandResult; c is not null; c = c.Parent)
            foreach (var child in c is CommandResult command ? command.Children : Enumerable.Empty<SymbolResult>())
                if (child is OptionResult o)
                    foreach (var t in o.Tokens)
                        if (string.IsNullOrWhiteSpace(t.Value) || t.Value.Contains('\0'))
                            problems.Add($"{o.Option.Name} was given an empty value; it needs {What(o.Option)}");
        return problems;
    }

    static string What(Option o) => o.ValueType == typeof(string) || o.ValueType == typeof(string[]) ? "a path or a name" : "a value";
}

/// <summary>SUPERQUANT_PEAK_RSS_FILE: where `bench scale` has a child run write its whole-process peak RSS at exit
/// (VmHWM at exit is exact, polling is not). Checked before any work (a folder, or a path in a missing folder, used to
/// end the finished run with an unhandled exception) and written through <see cref="AtomicFile"/>, so it can never
/// overwrite one of the run's inputs.</summary>
public static class PeakRssFile
{
    public const string Variable = "SUPERQUANT_PEAK_RSS_FILE";

    static string? Raw => Environment.GetEnvironmentVariable(Variable) is { Length: > 0 } v ? v : null;

    public static string? Problem()
    {
        if (Raw is not string raw) return null;
        string full;
        try { full = Path.GetFullPath(raw); }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException) { return $"{Variable} '{raw}' is not a valid path"; }
        if (Directory.Exists(full)) return $"{Variable} names {full}, a folder; it must name a file";
        string? dir = Path.GetDirectoryName(full);
        if (dir is null || !Directory.Exists(dir)) return $"{Variable} names {full}, whose folder does not exist";
        return null;
    }

    public static void Write()
    {
        if (Raw is not string raw) return;
        CliSupport.WriteAtomically(raw, ProcessMemory.Peak.ToString(System.Globalization.CultureInfo.InvariantCulture));
    }
}
