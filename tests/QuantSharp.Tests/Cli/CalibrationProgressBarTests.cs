using QuantSharp.Calibration;
using QuantSharp.Cli;

namespace QuantSharp.Tests.Cli;

public class CalibrationProgressBarTests
{
    [Fact]
    public void BarFillsInProportionAndEndsTheLineWhenDone()
    {
        Assert.Equal("calibrating [..........] 0/256 samples", CalibrationProgressBar.Render(new CalibrationProgress(0, 256, 0), 10));
        Assert.Equal("calibrating [#####.....] 128/256 samples", CalibrationProgressBar.Render(new CalibrationProgress(128, 256, 2), 10));
        // Calibration stops after the batch that reaches the target: more samples than asked still draw a full bar.
        Assert.Equal("calibrating [##########] 300/256 samples", CalibrationProgressBar.Render(new CalibrationProgress(300, 256, 5), 10));

        var text = new StringWriter();
        var bar = new CalibrationProgressBar(text, 4);
        bar.Report(new CalibrationProgress(64, 128, 1));
        bar.Report(new CalibrationProgress(128, 128, 2));
        Assert.Equal("\rcalibrating [##..] 64/128 samples\rcalibrating [####] 128/128 samples" + Environment.NewLine, text.ToString());
    }
}
