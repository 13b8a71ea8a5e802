namespace QuantSharp.Observers;

/// <summary>
/// Exponential moving average of the minimum and maximum (PyTorch's <c>MovingAverageMinMaxObserver</c> and
/// <c>MovingAveragePerChannelMinMaxObserver</c>): the first tensor sets min/max, each later one moves them by
/// <c>min += c * (min_now - min)</c>, in float32 as PyTorch does.
/// </summary>
internal sealed class MovingAverageMinMaxObserver : ObserverBase
{
    private float[]? _min, _max;

    public MovingAverageMinMaxObserver(ObserverOptions options) : base(options) { }

    protected override void ObserveCore(ReadOnlySpan<float> values, long[] shape)
    {
        var (min, max) = Reduce(values, shape);
        if (_min is null || _max is null)
        {
            (_min, _max) = (min, max);
            return;
        }
        if (min.Length != _min.Length)
            throw new ArgumentException(
                $"Tensor '{TensorName}' has {min.Length} channels/groups, but earlier tensors had {_min.Length}; every observed tensor must have the same channel count.");
        float c = Options.AveragingConstant;
        for (int i = 0; i < min.Length; i++)
        {
            // Separate float32 operations, as torch evaluates min_val + c * (min_cur - min_val).
            float dMin = min[i] - _min[i];
            float dMax = max[i] - _max[i];
            float stepMin = c * dMin;
            float stepMax = c * dMax;
            _min[i] += stepMin;
            _max[i] += stepMax;
        }
    }

    protected override ObserverResult ComputeCore() => FromRanges((float[])_min!.Clone(), (float[])_max!.Clone());

    protected override void ResetCore() => _min = _max = null;
}
