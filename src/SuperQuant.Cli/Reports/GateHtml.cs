using System.Globalization;
using System.Net;
using System.Text;
using SuperQuant.Cli.Commands;

namespace SuperQuant.Cli.Reports;

/// <summary>superquant-report.html: the gate results as one self-contained page (inline SVG, no scripts): per model a
/// bar of the measured value against its limit, the quality numbers and the super-weight table.</summary>
public static class GateHtml
{
    static string F(double v) => v.ToString("G5", CultureInfo.InvariantCulture);
    static string E(string s) => WebUtility.HtmlEncode(s);

    public static string Render(string manifest, IReadOnlyList<GateCommand.ModelResult> results)
    {
        var h = new StringBuilder("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>SuperQuant quality gate</title><style>")
            .Append("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}")
            .Append("td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}")
            .Append(".pass{color:#17702a;font-weight:bold}.fail{color:#b00;font-weight:bold}.near{color:#a65f00;font-weight:bold}</style></head><body>")
            .Append("<h1>SuperQuant quality gate</h1><p>Manifest <code>").Append(E(manifest)).Append("</code></p>");
        foreach (var r in results)
        {
            string verdict = !r.Passed ? "<span class=\"fail\">FAILED</span>" : r.NearMiss ? "<span class=\"near\">near miss</span>" : "<span class=\"pass\">passed</span>";
            h.Append("<h2>").Append(E(r.Id)).Append(" &mdash; ").Append(verdict).Append("</h2>");
            if (r.Settings is { Length: > 0 }) h.Append("<p>").Append(E(r.Settings)).Append("</p>");
            // value vs limit on one axis (baseline at the left edge for kl/perplexity, limit marked)
            double lo = Math.Min(r.Baseline, Math.Min(r.Value, r.Limit)), hi = Math.Max(r.Baseline, Math.Max(r.Value, r.Limit));
            if (hi <= lo) hi = lo + 1;
            double X(double v) => 20 + 560 * (v - lo) / (hi - lo);
            h.Append(CultureInfo.InvariantCulture, $"<svg width=\"600\" height=\"60\" role=\"img\"><rect x=\"20\" y=\"20\" width=\"{X(r.Value) - 20:F1}\" height=\"16\" fill=\"{(r.Passed ? "#4a9d5b" : "#d0584a")}\"><title>{E(r.Metric)} {F(r.Value)}</title></rect>")
             .Append(CultureInfo.InvariantCulture, $"<line x1=\"{X(r.Limit):F1}\" x2=\"{X(r.Limit):F1}\" y1=\"10\" y2=\"46\" stroke=\"#b00\" stroke-dasharray=\"4 3\"/><text x=\"{X(r.Limit) + 4:F1}\" y=\"12\" font-size=\"11\" fill=\"#b00\">limit {F(r.Limit)}</text>")
             .Append(CultureInfo.InvariantCulture, $"<text x=\"20\" y=\"58\" font-size=\"11\">{E(r.Metric)} {F(r.Value)} (baseline {F(r.Baseline)})</text></svg>");
            h.Append("<table><tr><th>metric</th><th>baseline</th><th>value</th><th>limit</th><th>KL</th><th>top-1</th><th>perplexity</th><th>original perplexity</th><th>bits/weight</th><th>z</th></tr>")
             .Append($"<tr><td>{E(r.Metric)}</td><td>{F(r.Baseline)}</td><td>{F(r.Value)}</td><td>{F(r.Limit)}</td><td>{F(r.KlDivergence)}</td><td>{F(r.Top1Agreement)}</td><td>{F(r.Perplexity)}</td><td>{F(r.ReferencePerplexity)}</td><td>{r.BitsPerWeight:F3}</td><td>{(r.Z is double z ? F(z) : "none")}</td></tr></table>");
            h.Append("<p>").Append(E(r.Detection)).Append("</p>");
            if (r.SuperWeights.Count > 0)
            {
                h.Append("<table><tr><th>super weight (kept in fp16)</th></tr>");
                foreach (var s in r.SuperWeights) h.Append($"<tr><td>model.layers.{s[0]}.mlp.down_proj.weight[{s[1]}, {s[2]}]</td></tr>");
                h.Append("</table>");
            }
        }
        return h.Append("</body></html>").ToString();
    }
}
