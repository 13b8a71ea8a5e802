namespace QuantSharp.Observers;

/// <summary>How a histogram observer chooses its clipping range.</summary>
public enum HistogramMethod
{
    /// <summary>
    /// TensorRT / ONNX Runtime entropy calibration: the range that minimises the KL divergence between the
    /// histogram and its quantized version (ONNX Runtime's <c>HistogramCollector</c>, method "entropy").
    /// </summary>
    Entropy,

    /// <summary>
    /// PyTorch's <c>HistogramObserver</c>: the range that minimises the L2 quantization error
    /// (<c>_non_linear_param_search</c>).
    /// </summary>
    L2,
}

/// <summary>Options of every observer; each observer reads the ones that apply to it.</summary>
/// <remarks>Validate with <see cref="Validate"/>; <see cref="ObserverFactory.Create(string, ObserverOptions)"/> does.</remarks>
public sealed record ObserverOptions
{
    /// <summary>The integer type the parameters are for (default int8).</summary>
    public QuantType Type { get; init; } = QuantType.Int8;

    /// <summary>Symmetric or affine (default affine).</summary>
    public QuantScheme Scheme { get; init; } = QuantScheme.Affine;

    /// <summary>Channel axis for per-channel parameters (negative counts from the end); null for per-tensor.</summary>
    public int? Axis { get; init; }

    /// <summary>Group size along the last dimension for per-group parameters; null for none.</summary>
    public int? GroupSize { get; init; }

    /// <summary>Use one bit less of the range, as PyTorch's <c>reduce_range</c> (int8 becomes [-64, 63]).</summary>
    public bool ReduceRange { get; init; }

    /// <summary>Moving-average weight of each new batch, in (0, 1] (default 0.01, as PyTorch).</summary>
    public float AveragingConstant { get; init; } = 0.01f;

    /// <summary>Percentile observer: the share of values kept, in percent, in (0, 100] (default 99.99).</summary>
    public double Percentile { get; init; } = 99.99;

    /// <summary>Histogram bins (default 2048, as ONNX Runtime and PyTorch).</summary>
    public int Bins { get; init; } = 2048;

    /// <summary>Entropy method: quantized bins compared against; null means 2^(bits-1) (128 for 8-bit, as TensorRT).</summary>
    public int? QuantizedBins { get; init; }

    /// <summary>Histogram observer: entropy (KL, default) or L2 (PyTorch).</summary>
    public HistogramMethod Method { get; init; } = HistogramMethod.Entropy;

    /// <summary>
    /// Histogram observer, entropy method: where the KL threshold search starts, as a fraction of the histogram's half
    /// range max|x|, in [0, 1). 0 (default, ONNX Runtime) tries every window of at least the quantized bins; 0.5 tries
    /// only thresholds in 50-100% of the range, as TensorRT's calibrator, which keeps the search from choosing an overly
    /// narrow range that clips many values.
    /// </summary>
    public double EntropySearchStart { get; init; }

    /// <summary>
    /// ONNX Runtime's histogram observers (entropy, percentile): <see langword="false"/> (default) makes every batch
    /// observed before <see cref="IObserver.ComputeQParams"/> one histogram over the range of all of them, as ONNX
    /// Runtime's calibrators (<c>quantize_static</c>) collect all the batches of a run; the observer keeps a copy of
    /// the values until then. <see langword="true"/> merges each batch into the running histogram as ONNX Runtime
    /// does across separate <c>collect_data</c> calls: memory bounded by the histogram, but when a later batch exceeds
    /// the range the histogram grows by whole bins and the thresholds come out different (by tens of bins).
    /// </summary>
    public bool MergeBatches { get; init; }

    /// <summary>A name for the observed tensor, used in error messages.</summary>
    public string? Name { get; init; }

    /// <summary>The integer range the parameters map onto.</summary>
    public QuantRange Range => QuantRange.For(Type, ReduceRange);

    /// <summary>The granularity these options describe.</summary>
    public Granularity Granularity => GroupSize is int g ? new PerGroup(g) : Axis is int a ? new PerAxis(a) : Granularity.Tensor;

    /// <summary>Checks the options, throwing an <see cref="ArgumentException"/> that names the problem and the fix.</summary>
    public void Validate()
    {
        if (!Type.IsInteger())
            throw new ArgumentException($"Observers choose integer quantization parameters; {Type.ToName()} is a floating-point type that needs none. Use int8, uint8, int4 or uint4.");
        if (Axis is not null && GroupSize is not null)
            throw new ArgumentException("Choose either a channel axis or a group size, not both (groups are always along the last dimension).");
        if (GroupSize is <= 0)
            throw new ArgumentException($"Group size must be positive, got {GroupSize}.");
        if (!(AveragingConstant > 0f && AveragingConstant <= 1f))
            throw new ArgumentException($"Averaging constant must be in (0, 1], got {AveragingConstant}. Use e.g. 0.01 (PyTorch's default).");
        if (!(Percentile > 0 && Percentile <= 100))
            throw new ArgumentException($"Percentile must be in (0, 100], got {Percentile}. Use e.g. 99.99.");
        if (Bins < 2)
            throw new ArgumentException($"Histogram bins must be at least 2, got {Bins}. Use 2048.");
        if (!(EntropySearchStart >= 0 && EntropySearchStart < 1))
            throw new ArgumentException($"Entropy search start must be a fraction in [0, 1), got {EntropySearchStart}. Use 0 (ONNX Runtime) or 0.5 (TensorRT's 50-100% window).");
        if (QuantizedBins is int q && (q < 2 || q > Bins / 2))
            throw new ArgumentException($"Quantized bins must be in [2, bins/2 = {Bins / 2}], got {q}.");
    }
}
