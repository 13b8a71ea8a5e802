using QuantSharp.Calibration;
using ScottPlot;

namespace QuantSharp.Cli.Calibrate;

/// <summary>
/// The calibration pictures, drawn with ScottPlot (SkiaSharp underneath, headless): each layer's input histogram with
/// every observer's range, and the per-layer sensitivity ranking. Each is written as PNG and SVG, to a temporary file
/// first and then renamed into place.
/// </summary>
internal static class CalibrationPlots
{
    public const int Width = 900;
    public const int Height = 520;

    /// <summary>One picture per layer, <c>DIR/histogram-LAYER.png</c> and <c>.svg</c>; returns the files written.</summary>
    public static List<string> Histograms(ObserverComparison comparison, string directory)
    {
        var files = new List<string>();
        foreach (var layer in comparison.Layers)
        {
            var plot = new Plot();
            var edges = layer.HistogramEdges;
            double width = edges[1] - edges[0];
            // log10(count + 1): the spike at zero after a ReLU would flatten everything else on a linear axis.
            var centers = Enumerable.Range(0, layer.HistogramCounts.Count).Select(i => (double)edges[i] + width / 2).ToArray();
            var heights = layer.HistogramCounts.Select(c => Math.Log10(c + 1)).ToArray();
            var bars = plot.Add.Bars(centers, heights);
            foreach (var bar in bars.Bars)
            {
                bar.Size = width;
                bar.LineWidth = 0;
                bar.FillColor = Colors.Gray.WithAlpha(0.6);
            }
            bars.LegendText = "input values";
            var palette = new ScottPlot.Palettes.Category10();
            for (int i = 0; i < layer.Choices.Count; i++)
            {
                var c = layer.Choices[i];
                var color = palette.GetColor(i);
                foreach (double x in new double[] { c.Low, c.High })
                {
                    var line = plot.Add.VerticalLine(x, 2, color);
                    line.LinePattern = i % 2 == 0 ? LinePattern.Solid : LinePattern.Dashed;
                    if (x == c.Low) line.LegendText = $"{c.Observer} [{c.Low:G4}, {c.High:G4}] {c.OutputSqnrDb:F1} dB";
                }
            }
            plot.Title($"{layer.Layer} ({layer.ModuleType}): input histogram and each observer's range ({comparison.Activations})");
            plot.XLabel("input value");
            plot.YLabel("log10(count + 1)");
            plot.ShowLegend(Alignment.UpperRight);
            files.AddRange(Save(plot, Path.Combine(directory, $"histogram-{Safe(layer.Layer)}")));
        }
        return files;
    }

    /// <summary>The sensitivity ranking, <c>DIR/sensitivity.png</c> and <c>.svg</c>: output SQNR per layer and spec, most sensitive first.</summary>
    public static List<string> Sensitivity(SensitivityReport report, string directory)
    {
        var plot = new Plot();
        var ranking = report.Ranking();
        int specs = report.Specs.Count;
        double group = 0.8 / specs;
        var palette = new ScottPlot.Palettes.Category10();
        for (int s = 0; s < specs; s++)
        {
            int spec = s;
            var positions = ranking.Select((_, i) => i - 0.4 + group * (spec + 0.5)).ToArray();
            var values = ranking.Select(l => Finite(l.Measurements[spec].OutputSqnrDb)).ToArray();
            var bars = plot.Add.Bars(positions, values);
            foreach (var bar in bars.Bars)
            {
                bar.Size = group * 0.9;
                bar.FillColor = palette.GetColor(spec);
            }
            bars.LegendText = report.Specs[spec].ToString();
        }
        var ticks = ranking.Select((l, i) => new Tick(i, l.Layer)).ToArray();
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(ticks);
        plot.Axes.Margins(bottom: 0);
        plot.Title($"Sensitivity: output SQNR, one layer quantized (most sensitive left; {report.Samples} samples)");
        plot.XLabel("layer");
        plot.YLabel("model output SQNR (dB)");
        plot.ShowLegend(Edge.Bottom);
        return Save(plot, Path.Combine(directory, "sensitivity"));
    }

    private static double Finite(double db) => double.IsFinite(db) ? db : 200;

    private static string Safe(string name) => string.Concat(name.Select(c => char.IsLetterOrDigit(c) || c is '.' or '-' or '_' ? c : '_'));

    /// <summary>Writes <paramref name="stem"/>.png and .svg through temporary files renamed into place.</summary>
    private static List<string> Save(Plot plot, string stem)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(stem))!);
        var files = new List<string>();
        foreach (var (ext, write) in new (string, Action<string>)[]
                 {
                     (".png", p => plot.SavePng(p, Width, Height)),
                     (".svg", p => plot.SaveSvg(p, Width, Height)),
                 })
        {
            string final = stem + ext;
            string temp = $"{final}.tmp-{Guid.NewGuid():N}{ext}";
            try
            {
                write(temp);
                File.Move(temp, final, overwrite: true);
            }
            finally
            {
                if (File.Exists(temp)) File.Delete(temp);
            }
            files.Add(final);
        }
        return files;
    }
}
