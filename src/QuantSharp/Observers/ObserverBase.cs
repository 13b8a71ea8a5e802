using QuantSharp.Primitives;
using TorchSharp;

namespace QuantSharp.Observers;

/// <summary>
/// Shared plumbing of the observers: checks each tensor (floating point, not empty, finite), copies it out as
/// float32 (as PyTorch's observers convert to float32), and reduces it per tensor, channel or group.
/// </summary>
internal abstract class ObserverBase : IObserver
{
    protected ObserverBase(ObserverOptions options)
    {
        Options = options;
    }

    public ObserverOptions Options { get; }

    // Min and max of the batch being observed, found while checking it for NaN/infinity.
    private float _batchMin, _batchMax;

    public int Count { get; private set; }

    /// <summary>The name used in error messages.</summary>
    protected string TensorName => Options.Name ?? "input";

    public void Observe(torch.Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (!torch.is_floating_point(input))
            throw new ArgumentException(
                $"Tensor '{TensorName}' has dtype {input.dtype}; observers take floating-point tensors (float32, float64, float16, bfloat16).",
                nameof(input));
        long[] shape = input.shape;
        if (input.numel() == 0)
            throw new ArgumentException(
                $"Tensor '{TensorName}' is empty (shape [{string.Join(", ", shape)}]); an observer needs at least one value to choose a scale.",
                nameof(input));
        using var scope = torch.NewDisposeScope();
        // Read in float32 chunks (zero-copy for contiguous float32 on the CPU, else one chunk converted at a time): no
        // span over the whole tensor and no float32 copy of it, so any size is observed.
        ObserveChunks(FloatChunks.Of(input.detach().cpu()));
    }

    /// <summary>Observes values laid out as a contiguous row-major tensor of <paramref name="shape"/>.</summary>
    internal unsafe void ObserveValues(ReadOnlySpan<float> values, long[] shape)
    {
        long numel = shape.Aggregate(1L, (a, b) => a * b);
        if (values.Length == 0 || numel == 0)
            throw new ArgumentException(
                $"Tensor '{TensorName}' is empty (shape [{string.Join(", ", shape)}]); an observer needs at least one value to choose a scale.");
        if (numel != values.Length)
            throw new ArgumentException($"Tensor '{TensorName}': {values.Length} values do not fill shape [{string.Join(", ", shape)}].");
        fixed (float* p = values) ObserveChunks(FloatChunks.Over(p, values.Length, shape));
    }

    /// <summary>
    /// Observes one tensor delivered in chunks (one observation, as if it were one span): a range pass that also
    /// checks every value is finite, then the observer's own passes. Results do not depend on the chunk size.
    /// </summary>
    internal void ObserveChunks(FloatChunks values)
    {
        if (values.Count == 0)
            throw new ArgumentException(
                $"Tensor '{TensorName}' is empty (shape [{string.Join(", ", values.Shape)}]); an observer needs at least one value to choose a scale.");
        float lo = float.PositiveInfinity, hi = float.NegativeInfinity;
        values.ForEach((chunk, offset) =>
        {
            if (!Kernels.MinMaxKernel.FoldFinite(chunk, ref lo, ref hi))
                ThrowNonFinite(chunk, offset);
        });
        (_batchMin, _batchMax) = (lo, hi);
        ObserveCore(values);
        Count++;
    }

    public ObserverResult ComputeQParams()
    {
        if (Count == 0)
            throw new InvalidOperationException($"Observer for '{TensorName}' has not observed any tensor; call Observe first.");
        return ComputeCore();
    }

    public void Reset()
    {
        Count = 0;
        ResetCore();
    }

    /// <summary>Folds one observed tensor into the statistics (<paramref name="values"/> is valid during the call only).</summary>
    protected abstract void ObserveCore(FloatChunks values);

    protected abstract ObserverResult ComputeCore();

    protected abstract void ResetCore();

    /// <summary>Scale and zero point per range with <see cref="QParams.Choose(float, float, QuantRange, QuantScheme)"/>.</summary>
    protected ObserverResult FromRanges(float[] min, float[] max, float[]? threshold = null)
    {
        var scale = new float[min.Length];
        var zeroPoint = new int[min.Length];
        if (threshold is null)
            QParams.Choose(min, max, Options.Range, Options.Scheme, scale, zeroPoint);
        else
            (scale[0], zeroPoint[0]) = QParams.Choose(threshold[0], threshold[1], Options.Range, Options.Scheme);
        return new ObserverResult(scale, zeroPoint, min, max, threshold);
    }

    private void ThrowNonFinite(ReadOnlySpan<float> values, long offset)
    {
        int k = Kernels.MinMaxKernel.FirstNonFinite(values);
        float v = values[k];
        long i = offset + k;
        string what = float.IsNaN(v) ? "NaN" : v > 0 ? "+infinity" : "-infinity";
        throw new ArgumentException(
            $"Tensor '{TensorName}' contains {what} at flat index {i}; observers need finite values. " +
            "Find where the non-finite value comes from (overflow, division by zero, uninitialised data) and fix or mask it before calibrating.");
    }

    /// <summary>
    /// Min and max of each of <paramref name="channels"/> channels of the [outer, channels, inner] view (PyTorch's
    /// PerChannelMinMaxObserver reduction): element e belongs to channel (e / inner) % channels. Chunks may start and
    /// end anywhere, so the result does not depend on how the values are cut.
    /// </summary>
    internal static (float[] Min, float[] Max) ChannelMinMax(FloatChunks values, int channels, long inner)
    {
        var min = new float[channels];
        var max = new float[channels];
        Array.Fill(min, float.PositiveInfinity);
        Array.Fill(max, float.NegativeInfinity);
        values.ForEach((chunk, offset) =>
        {
            for (int pos = 0; pos < chunk.Length;)
            {
                long e = offset + pos, block = e / inner;
                int c = (int)(block % channels);
                int len = (int)Math.Min(chunk.Length - pos, (block + 1) * inner - e);
                Kernels.MinMaxKernel.FoldFinite(chunk.Slice(pos, len), ref min[c], ref max[c]);
                pos += len;
            }
        });
        return (min, max);
    }

    /// <summary>
    /// Min and max per observation unit: one for per-tensor, one per channel, or one per group of G consecutive
    /// elements of the last dimension (the [numel/G, G] view reduced along its axis 1).
    /// </summary>
    protected (float[] Min, float[] Max) Reduce(FloatChunks values)
    {
        long[] shape = values.Shape;
        switch (Options.Granularity)
        {
            case PerGroup g:
            {
                if (shape.Length == 0 || shape[^1] % g.GroupSize != 0)
                    throw new ArgumentException(
                        $"Tensor '{TensorName}' of shape [{string.Join(", ", shape)}]: group size {g.GroupSize} must divide the last dimension" +
                        (shape.Length == 0 ? " (a scalar has none)." : $" ({shape[^1]}). Choose a divisor of {shape[^1]}."));
                return ChannelMinMax(values, checked((int)(values.Count / g.GroupSize)), g.GroupSize);
            }
            case PerAxis a:
            {
                int axis = a.Axis < 0 ? a.Axis + shape.Length : a.Axis;
                if (axis < 0 || axis >= shape.Length)
                    throw new ArgumentException(
                        $"Tensor '{TensorName}' of shape [{string.Join(", ", shape)}] has no axis {a.Axis}; use an axis in [{-shape.Length}, {shape.Length - 1}].");
                long inner = 1;
                for (int d = axis + 1; d < shape.Length; d++) inner *= shape[d];
                return ChannelMinMax(values, checked((int)shape[axis]), inner);
            }
            default:
            {
                return ([_batchMin], [_batchMax]);
            }
        }
    }

    /// <summary>Throws unless the options are per-tensor (the histogram observers are).</summary>
    protected static void RequirePerTensor(ObserverOptions options, string observer)
    {
        if (options.Axis is not null || options.GroupSize is not null)
            throw new ArgumentException(
                $"The {observer} observer is per-tensor only (as PyTorch's HistogramObserver and ONNX Runtime's calibrators); " +
                "drop the axis/group size, or use the minmax or moving-average observer for per-channel or per-group parameters.");
    }
}
