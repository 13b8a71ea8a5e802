namespace QuantSharp.Observers;

/// <summary>
/// Per-tensor histogram observer. <see cref="HistogramMethod.Entropy"/> (default): TensorRT-style KL-divergence
/// threshold search as ONNX Runtime's entropy calibrator (one histogram of all observed values on [-max|x|, max|x|],
/// or, with <see cref="ObserverOptions.MergeBatches"/>, one per batch merged by whole bins; thresholds clipped to the
/// data's [min, max]; <see cref="ObserverOptions.EntropySearchStart"/> limits the search to wider windows, as TensorRT).
/// <see cref="HistogramMethod.L2"/>: PyTorch's <c>HistogramObserver</c> (L2-error search).
/// The scale and zero point come from the chosen thresholds, reported in <see cref="ObserverResult.Threshold"/>;
/// <see cref="ObserverResult.Min"/>/<see cref="ObserverResult.Max"/> are the observed data range.
/// </summary>
internal sealed class HistogramObserver : ObserverBase
{
    private readonly OrtHistogram? _entropy;
    private readonly TorchHistogram? _l2;

    public HistogramObserver(ObserverOptions options) : base(options)
    {
        RequirePerTensor(options, "histogram");
        if (options.Method == HistogramMethod.L2)
            _l2 = new TorchHistogram(options.Bins, 1 << options.Type.Bits());
        else
            _entropy = new OrtHistogram(options.Bins, absolute: false, options.MergeBatches);
    }

    /// <summary>Quantized bins of the entropy search: the option, else 2^(bits-1) (128 for 8-bit, as TensorRT).</summary>
    private int QuantizedBins => Options.QuantizedBins ?? 1 << (Options.Type.Bits() - 1);

    protected override void ObserveCore(FloatChunks values)
    {
        if (_l2 is not null) _l2.Observe(values);
        else _entropy!.Collect(values);
    }

    protected override ObserverResult ComputeCore()
    {
        if (_l2 is not null)
        {
            var (lo, hi) = _l2.L2Search();
            return FromRanges([_l2.Min], [_l2.Max], [lo, hi]);
        }
        if (QuantizedBins > Options.Bins / 2)
            throw new InvalidOperationException($"Entropy calibration needs at least 2 x {QuantizedBins} bins; use Bins >= {2 * QuantizedBins}.");
        var (low, high) = _entropy!.EntropyThresholds(QuantizedBins, Options.EntropySearchStart);
        return FromRanges([_entropy.Min], [_entropy.Max], [low, high]);
    }

    protected override void ResetCore()
    {
        _l2?.Reset();
        _entropy?.Reset();
    }
}
