using YamlDotNet.Core;
using YamlDotNet.Core.Events;

namespace SuperQuant.Manifest;

/// <summary>User values written into YAML text (`superquant init`): always as double-quoted scalars emitted by
/// YamlDotNet, so a '#', ':', quote, newline or leading '-' in a path can never become a comment or new syntax.</summary>
public static class YamlText
{
    public static string Quote(string value)
    {
        using var w = new StringWriter();
        var e = new Emitter(w);
        e.Emit(new StreamStart());
        e.Emit(new DocumentStart(null, null, isImplicit: true));
        e.Emit(new Scalar(null, null, value, ScalarStyle.DoubleQuoted, isPlainImplicit: false, isQuotedImplicit: true));
        e.Emit(new DocumentEnd(isImplicit: true));
        e.Emit(new StreamEnd());
        string s = w.ToString().Trim();
        return s.EndsWith("...", StringComparison.Ordinal) ? s[..^3].Trim() : s;
    }
}
