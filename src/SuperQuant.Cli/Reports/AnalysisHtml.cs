using System.Globalization;
using System.Net;
using System.Text;

namespace SuperQuant.Cli.Reports;

/// <summary>
/// Renders analysis.json as one self-contained HTML page (inline CSS and SVG, no scripts, no network): spikes per
/// layer, the scaling curve, stopword bars and the tables behind them. Hand-written SVG because a chart library
/// would mean JavaScript from a CDN, and the report must open offline from a CI artifact.
/// </summary>
public static class AnalysisHtml
{
    /// <summary>How every number is printed, in the page and by tests that look for it.</summary>
    public static string Fmt(double v) => double.IsNaN(v) ? "n/a" : v.ToString("G5", CultureInfo.InvariantCulture);

    static string E(string s) => WebUtility.HtmlEncode(s);

    public static string Render(AnalysisReport r)
    {
        var h = new StringBuilder();
        h.Append("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>SuperQuant analysis: ").Append(E(r.Model)).Append("</title><style>")
         .Append("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}")
         .Append("td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}")
         .Append(".found{color:#b00;font-weight:bold}.none{color:#555}svg{background:#fafafa;border:1px solid #ddd}figure{margin:1em 0}")
         .Append("</style></head><body>");
        h.Append("<h1>Super weight analysis</h1><p>Model <code>").Append(E(r.Model)).Append("</code> (").Append(E(r.Architecture)).Append(")</p>");

        var d = r.Detection;
        h.Append("<h2>Detection</h2><p class=\"").Append(d.SuperWeights.Count > 0 ? "found" : "none").Append("\">").Append(E(d.Summary)).Append("</p>");
        h.Append("<p>Rule: ").Append(E(d.Rule)).Append("; threshold ").Append(Fmt(d.Threshold)).Append("; ").Append(d.Iterations).Append(" pass(es)")
         .Append(d.StoppedAtMaxIterations ? " (stopped at the iteration limit)" : "").Append(". Prompt: ")
         .Append(E(d.PromptText ?? string.Join(' ', d.PromptTokens))).Append("</p>");
        if (d.SuperWeights.Count > 0)
        {
            h.Append("<table><tr><th>super weight</th><th>value</th><th>found in pass</th></tr>");
            foreach (var s in d.SuperWeights)
                h.Append($"<tr><td>model.layers.{s.Layer}.mlp.down_proj.weight[{s.Row}, {s.Column}]</td><td>{Fmt(s.Value)}</td><td>{s.Iteration}</td></tr>");
            h.Append("</table><table><tr><th>super activation (layer, channel, token)</th><th>value</th><th>input channel</th><th>input value</th></tr>");
            foreach (var a in d.SuperActivations)
                h.Append($"<tr><td>({a.Layer}, {a.Channel}, {a.Token})</td><td>{Fmt(a.Value)}</td><td>{a.InputChannel}</td><td>{Fmt(a.InputValue)}</td></tr>");
            h.Append("</table>");
        }
        foreach (var hint in d.KnownModelHints)
            h.Append("<p>Published coordinates for a model of this shape (").Append(E(hint.Model)).Append("): ")
             .Append(string.Join(", ", hint.Coordinates.Select(c => $"({c[0]}, {c[1]}, {c[2]})")))
             .Append(hint.AllDetected ? " &mdash; all detected here."
                 : " &mdash; not all detected here (a different checkpoint of the same shape?).").Append("</p>");

        h.Append("<h3>down_proj max |input| and |output| per layer (log scale)</h3>");
        h.Append(BarChart(d.Spikes.Select(s => ($"L{s.Layer}", s.InputMagnitude, s.OutputMagnitude)).ToList(), "max |input|", "max |output|",
            logScale: true, threshold: d.Threshold));
        h.Append("<table><tr><th>layer</th><th>max |input|</th><th>input channel</th><th>token</th><th>max |output|</th><th>output " +
            "channel</th><th>token</th></tr>");
        foreach (var s in d.Spikes)
            h.Append($"<tr><td>{s.Layer}</td><td>{Fmt(s.InputMagnitude)}</td><td>{s.InputChannel}</td><td>{s.InputToken}</td>")
                .Append($"<td>{Fmt(s.OutputMagnitude)}</td><td>{s.OutputChannel}</td><td>{s.OutputToken}</td></tr>");
        h.Append("</table>");

        if (r.Evaluation is { } ev)
            h.Append("<h2>Quality</h2><p>").Append(ev.Tokens).Append(" tokens from <code>").Append(E(ev.Source)).Append("</code>, context ").Append(ev.Context)
             .Append(", stride ").Append(ev.Stride).Append(". Original perplexity ").Append(Fmt(ev.Perplexity)).Append(" &plusmn; " +
                 "").Append(Fmt(ev.PerplexitySe)).Append(".</p>");
        if (r.AblationsSkipped != null) h.Append("<p class=\"none\">Ablations skipped: ").Append(E(r.AblationsSkipped)).Append("</p>");
        if (r.Conditions.Count > 0)
        {
            h.Append("<table><tr><th>condition</th><th>perplexity</th><th>&plusmn;</th><th>KL vs original</th><th>&plusmn;</th><th>top-1 agreement</th></tr>");
            foreach (var c in r.Conditions)
                h.Append($"<tr><td title=\"{E(c.Description)}\">{E(c.Name)}</td><td>{Fmt(c.Perplexity)}</td><td>{Fmt(c.PerplexitySe)}</td>")
                    .Append($"<td>{Fmt(c.KlDivergence)}</td><td>{Fmt(c.KlDivergenceSe)}</td><td>{Fmt(c.Top1Agreement)}</td></tr>");
            if (r.Control is { } ctl)
                h.Append($"<tr><td>control: {ctl.WeightsZeroed} largest other weights " +
                    $"zeroed</td><td>{Fmt(ctl.Perplexity)}</td><td>{Fmt(ctl.PerplexitySe)}</td><td>{Fmt(ctl.KlDivergence)}</td><td></td>" +
                    $"<td>{Fmt(ctl.Top1Agreement)}</td></tr>");
            h.Append("</table>");
        }
        if (r.Scaling.Count > 0)
        {
            h.Append("<h3>Scaling the super weights</h3>");
            h.Append(LineChart(r.Scaling.Select(s => (s.Scale, s.Perplexity)).ToList(), "scale", "perplexity"));
            h.Append("<table><tr><th>scale</th><th>perplexity</th><th>&plusmn;</th><th>KL vs original</th><th>top-1 agreement</th></tr>");
            foreach (var s in r.Scaling)
                h.Append($"<tr><td>{Fmt(s.Scale)}</td><td>{Fmt(s.Perplexity)}</td><td>{Fmt(s.PerplexitySe)}</td>")
                    .Append($"<td>{Fmt(s.KlDivergence)}</td><td>{Fmt(s.Top1Agreement)}</td></tr>");
            h.Append("</table>");
        }
        if (r.Stopwords is { } sw)
        {
            h.Append("<h3>Stopword probabilities</h3><p>Mean next-token probability over ").Append(sw.Prompts).Append(" prompt(s); tokens: " +
                "").Append(E(sw.Source)).Append(".</p>");
            h.Append(BarChart(sw.Tokens.Select(t => (t.Label, t.Original, t.Zeroed)).ToList(), "original", "super weights zeroed", logScale: false,
                threshold: null));
            h.Append("<table><tr><th>token</th><th>id</th><th>original</th><th>zeroed</th><th>ratio</th></tr>");
            foreach (var t in sw.Tokens)
                h.Append($"<tr><td>{E(t.Label)}</td><td>{t.TokenId}</td><td>{Fmt(t.Original)}</td><td>{Fmt(t.Zeroed)}</td><td>{Fmt(t.Ratio)}</td></tr>");
            h.Append("</table>");
        }
        h.Append("<p><small>").Append(AnalysisReport.SchemaName).Append(" v").Append(r.SchemaVersion).Append(", written by superquant " +
            "analyze.</small></p></body></html>");
        return h.ToString();
    }

    static string BarChart(IReadOnlyList<(string Label, double A, double B)> rows, string aName, string bName, bool logScale, double? threshold)
    {
        const int width = 900, height = 260, left = 60, bottom = 30, top = 20;
        double Y(double v)
        {
            double max = rows.Select(r => Math.Max(r.A, r.B)).Append(threshold ?? 0).Max();
            if (logScale)
            {
                double lo = Math.Log10(Math.Max(1e-3, rows.Select(r => Math.Min(r.A, r.B)).Where(x => x > 0).DefaultIfEmpty(1e-3).Min()) / 2);
                double hi = Math.Log10(Math.Max(max, 1e-3) * 2);
                return top + (height - top - bottom) * (1 - (Math.Log10(Math.Max(v, 1e-3)) - lo) / (hi - lo));
            }
            return top + (height - top - bottom) * (1 - v / (max > 0 ? max * 1.1 : 1));
        }
        var s = new StringBuilder($"<figure><svg width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\">");
        double slot = (width - left - 10.0) / Math.Max(1, rows.Count);
        for (int i = 0; i < rows.Count; i++)
        {
            double x = left + i * slot;
            double bw = slot * 0.35;
            foreach (var (v, dx, color) in new[] { (rows[i].A, 0.1, "#4a7bd0"), (rows[i].B, 0.5, "#d0584a") })
            {
                double y = Y(v);
                s.Append(CultureInfo.InvariantCulture, $"<rect x=\"{x + slot * dx:F1}\" y=\"{y:F1}\" width=\"{bw:F1}\" " +
                    $"height=\"{Math.Max(0, height - bottom - y):F1}\" fill=\"{color}\"><title>{E(rows[i].Label)}: {Fmt(v)}</title></rect>");
            }
            s.Append(CultureInfo.InvariantCulture, $"<text x=\"{x + slot / 2:F1}\" y=\"{height - 10}\" font-size=\"11\" " +
                $"text-anchor=\"middle\">{E(rows[i].Label)}</text>");
        }
        if (threshold is double t)
            s.Append(CultureInfo.InvariantCulture, $"<line x1=\"{left}\" x2=\"{width - 10}\" y1=\"{Y(t):F1}\" y2=\"{Y(t):F1}\" stroke=\"#b00\" " +
                $"stroke-dasharray=\"4 3\"/><text x=\"{left + 4}\" y=\"{Y(t) - 4:F1}\" font-size=\"11\" fill=\"#b00\">threshold {Fmt(t)}</text>");
        s.Append($"<text x=\"{left}\" y=\"14\" font-size=\"12\" fill=\"#4a7bd0\">&#9632; {E(aName)}</text><text x=\"{left + 160}\" y=\"14\" " +
            $"font-size=\"12\" fill=\"#d0584a\">&#9632; {E(bName)}</text>");
        return s.Append("</svg></figure>").ToString();
    }

    static string LineChart(IReadOnlyList<(double X, double Y)> points, string xName, string yName)
    {
        const int width = 600, height = 260, left = 60, bottom = 40, top = 20, right = 20;
        double xMin = points.Min(p => p.X), xMax = points.Max(p => p.X), yMin = points.Min(p => p.Y), yMax = points.Max(p => p.Y);
        if (xMax == xMin) xMax = xMin + 1;
        if (yMax == yMin) yMax = yMin + 1;
        double X(double v) => left + (width - left - right) * (v - xMin) / (xMax - xMin);
        double Y(double v) => top + (height - top - bottom) * (1 - (v - yMin) / (yMax - yMin));
        var s = new StringBuilder($"<figure><svg width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\">");
        s.Append("<polyline fill=\"none\" stroke=\"#4a7bd0\" stroke-width=\"2\" points=\"")
         .Append(string.Join(' ', points.Select(p => string.Create(CultureInfo.InvariantCulture, $"{X(p.X):F1},{Y(p.Y):F1}")))).Append("\"/>");
        foreach (var p in points)
            s.Append(CultureInfo.InvariantCulture, $"<circle cx=\"{X(p.X):F1}\" cy=\"{Y(p.Y):F1}\" r=\"4\" fill=\"#4a7bd0\"><title>{E(xName)} " +
                $"{Fmt(p.X)}: {E(yName)} {Fmt(p.Y)}</title></circle><text x=\"{X(p.X):F1}\" y=\"{height - 22}\" font-size=\"11\" " +
                $"text-anchor=\"middle\">{Fmt(p.X)}</text>");
        s.Append(CultureInfo.InvariantCulture, $"<text x=\"4\" y=\"{Y(yMax) + 4:F1}\" font-size=\"11\">{Fmt(yMax)}</text><text x=\"4\" " +
            $"y=\"{Y(yMin):F1}\" font-size=\"11\">{Fmt(yMin)}</text>");
        s.Append($"<text x=\"{width / 2}\" y=\"{height - 4}\" font-size=\"12\" text-anchor=\"middle\">{E(xName)} (1 = original) &rarr; {E(yName)}</text>");
        return s.Append("</svg></figure>").ToString();
    }
}
