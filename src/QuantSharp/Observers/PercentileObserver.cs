namespace QuantSharp.Observers;

/// <summary>
/// Per-tensor percentile observer as ONNX Runtime's percentile calibrator. With
/// <see cref="QuantScheme.Symmetric"/>: a histogram of |x| and the threshold t where <see cref="ObserverOptions.Percentile"/>%
/// of the values lie below it, range (-t, t). With <see cref="QuantScheme.Affine"/>: two-sided, cutting
/// (100 - p)/2 % on each side of a histogram of the values. Both clipped to the data's [min, max].
/// </summary>
internal sealed class PercentileObserver : ObserverBase
{
    private readonly OrtHistogram _histogram;

    public PercentileObserver(ObserverOptions options) : base(options)
    {
        RequirePerTensor(options, "percentile");
        _histogram = new OrtHistogram(options.Bins, absolute: options.Scheme == QuantScheme.Symmetric, options.MergeBatches);
    }

    protected override void ObserveCore(FloatChunks values) => _histogram.Collect(values);

    protected override ObserverResult ComputeCore()
    {
        var (low, high) = _histogram.PercentileThresholds(Options.Percentile);
        return FromRanges([_histogram.Min], [_histogram.Max], [low, high]);
    }

    protected override void ResetCore() => _histogram.Reset();
}
