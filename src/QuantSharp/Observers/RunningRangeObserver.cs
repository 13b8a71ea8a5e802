namespace QuantSharp.Observers;

/// <summary>
/// An observer that keeps one running [min, max] per tensor, channel or group: the first tensor sets the ranges,
/// each later one is folded in by <see cref="Merge"/>.
/// </summary>
internal abstract class RunningRangeObserver : ObserverBase
{
    private float[]? _min, _max;

    protected RunningRangeObserver(ObserverOptions options) : base(options) { }

    /// <summary>Folds this tensor's ranges (<paramref name="min"/>, <paramref name="max"/>) into the running ones.</summary>
    protected abstract void Merge(float[] runningMin, float[] runningMax, float[] min, float[] max);

    protected sealed override void ObserveCore(FloatChunks values)
    {
        var (min, max) = Reduce(values);
        if (_min is null || _max is null)
        {
            (_min, _max) = (min, max);
            return;
        }
        if (min.Length != _min.Length)
            throw new ArgumentException(
                $"Tensor '{TensorName}' has {min.Length} channels/groups, but earlier tensors had {_min.Length}; every observed tensor must have the same channel count.");
        Merge(_min, _max, min, max);
    }

    protected sealed override ObserverResult ComputeCore() => FromRanges((float[])_min!.Clone(), (float[])_max!.Clone());

    protected sealed override void ResetCore() => _min = _max = null;
}
