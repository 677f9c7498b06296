using System.Globalization;
using System.Net;
using System.Text;

namespace SuperQuant.Cli.Reports;

/// <summary>superquant-report.html: the gate results as one self-contained page (inline SVG, no scripts): per artifact a
/// bar of the measured value against its limit, the quality numbers, and the model's super weights and step times.</summary>
public static class GateHtml
{
    static string F(double v) => v.ToString("G5", CultureInfo.InvariantCulture);
    static string E(string s) => WebUtility.HtmlEncode(s);

    public static string Render(string manifest, IReadOnlyList<ModelReport> models)
    {
        var h = new StringBuilder("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>SuperQuant quality gate</title><style>")
            .Append("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}")
            .Append("td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}")
            .Append(".pass{color:#17702a;font-weight:bold}.fail{color:#b00;font-weight:bold}.near{color:#a65f00;font-weight:bold}</style></head><body>")
            .Append("<h1>SuperQuant quality gate</h1><p>Manifest <code>").Append(E(manifest)).Append("</code></p>");
        foreach (var m in models)
        {
            h.Append("<h2>").Append(E(m.Id)).Append(" &mdash; ").Append(Verdict(m.Passed, m.NearMiss)).Append("</h2><p>").Append(E(m.Settings)).Append("</p>");
            foreach (var a in m.Artifacts)
            {
                h.Append("<h3>").Append(E(a.Kind)).Append(" <code>").Append(E(Path.GetFileName(a.Path))).Append("</code> &mdash; " +
                    "").Append(Verdict(a.Passed, a.NearMiss))
                 .Append(" (measured by ").Append(E(a.Engine)).Append(")</h3>");
                double lo = Math.Min(a.Baseline, Math.Min(a.Value, a.Limit)), hi = Math.Max(a.Baseline, Math.Max(a.Value, a.Limit));
                if (!(hi > lo)) hi = lo + 1;
                double X(double v) => double.IsFinite(v) ? 20 + 560 * (v - lo) / (hi - lo) : 580;
                h.Append(CultureInfo.InvariantCulture, $"<svg width=\"600\" height=\"60\" role=\"img\"><rect x=\"20\" y=\"20\" " +
                    $"width=\"{Math.Max(0, X(a.Value) - 20):F1}\" height=\"16\" " +
                    $"fill=\"{(a.Passed ? "#4a9d5b" : "#d0584a")}\"><title>{E(a.Metric ?? "")} {F(a.Value)}</title></rect>")
                 .Append(CultureInfo.InvariantCulture, $"<line x1=\"{X(a.Limit):F1}\" x2=\"{X(a.Limit):F1}\" y1=\"10\" y2=\"46\" stroke=\"#b00\" " +
                     $"stroke-dasharray=\"4 3\"/><text x=\"{X(a.Limit) + 4:F1}\" y=\"12\" font-size=\"11\" fill=\"#b00\">limit {F(a.Limit)}</text>")
                 .Append(CultureInfo.InvariantCulture, $"<text x=\"20\" y=\"58\" font-size=\"11\">{E(a.Metric ?? "")} {F(a.Value)} (baseline " +
                     $"{F(a.Baseline)})</text></svg>");
                h.Append("<table><tr><th>size</th><th>bits/weight</th><th>PPL(Q)</th><th>PPL(base)</th><th>KLD " +
                    "mean</th><th>median</th><th>p99</th><th>p99.9</th><th>max</th><th>same top</th><th>RMS &Delta;p</th></tr>")
                 .Append(CultureInfo.InvariantCulture, $"<tr><td>{a.Bytes / 1048576.0:F2} MiB</td><td>{a.BitsPerWeight:F3}</td><td>{F(a.Perplexity)} " +
                     $"&plusmn; {F(a.PerplexitySe)}</td><td>{F(a.ReferencePerplexity)}</td><td>{F(a.KlMean)} &plusmn; " +
                     $"{F(a.KlMeanSe)}</td><td>{F(a.KlMedian)}</td><td>{F(a.KlP99)}</td><td>{F(a.KlP999)}</td><td>{F(a.KlMax)}</td>" +
                     $"<td>{a.SameTop:P2}</td><td>{a.RmsDeltaP:P3}</td></tr></table>")
                 .Append("<p><small>").Append(E(a.Layout)).Append("</small></p>");
            }
            h.Append("<p>Super weights: ").Append(E(m.Detection)).Append("</p>");
            if (m.SuperWeights.Count > 0)
            {
                h.Append("<table><tr><th>super weight (kept exact)</th></tr>");
                foreach (var s in m.SuperWeights) h.Append($"<tr><td>model.layers.{s[0]}.mlp.down_proj.weight[{s[1]}, {s[2]}]</td></tr>");
                h.Append("</table>");
            }
            if (m.Steps.Count > 0)
            {
                h.Append("<table><tr><th>step</th><th>seconds</th><th>peak memory</th></tr>");
                foreach (var s in m.Steps) h.Append(CultureInfo.InvariantCulture,
                    $"<tr><td>{E(s.Step)}</td><td>{s.Seconds:F2}</td><td>{s.PeakBytes / 1048576.0:F0} MiB</td></tr>");
                h.Append("</table>");
            }
        }
        return h.Append("</body></html>").ToString();
    }

    static string Verdict(bool passed, bool near) =>
        !passed ? "<span class=\"fail\">FAILED</span>" : near ? "<span class=\"near\">near miss</span>" : "<span class=\"pass\">passed</span>";
}
