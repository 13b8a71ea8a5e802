using QuantSharp.Calibration;

namespace QuantSharp.Cli;

/// <summary>
/// A one-line text progress bar for calibration (<c>calibrating [#####.....] 128/256 samples</c>), redrawn in
/// place with a carriage return. Synchronous, unlike <see cref="Progress{T}"/>, so it never lags the work.
/// </summary>
internal sealed class CalibrationProgressBar(TextWriter writer, int width = 30) : IProgress<CalibrationProgress>
{
    /// <summary>The line the bar shows for <paramref name="p"/> (without the carriage return).</summary>
    internal static string Render(CalibrationProgress p, int width)
    {
        double fraction = p.TargetSamples <= 0 ? 1 : Math.Clamp((double)p.Samples / p.TargetSamples, 0, 1);
        int filled = (int)Math.Round(fraction * width);
        return $"calibrating [{new string('#', filled)}{new string('.', width - filled)}] {p.Samples}/{p.TargetSamples} samples";
    }

    /// <inheritdoc/>
    public void Report(CalibrationProgress value)
    {
        writer.Write("\r" + Render(value, width));
        if (value.Samples >= value.TargetSamples) writer.WriteLine();
        writer.Flush();
    }
}
