namespace QuantSharp.Observers;

/// <summary>
/// Running minimum and maximum (PyTorch's <c>MinMaxObserver</c> and <c>PerChannelMinMaxObserver</c>), per tensor,
/// per channel along any axis, or per group.
/// </summary>
internal sealed class MinMaxObserver : ObserverBase
{
    private float[]? _min, _max;

    public MinMaxObserver(ObserverOptions options) : base(options) { }

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
        for (int i = 0; i < min.Length; i++)
        {
            _min[i] = MathF.Min(_min[i], min[i]);
            _max[i] = MathF.Max(_max[i], max[i]);
        }
    }

    protected override ObserverResult ComputeCore() => FromRanges((float[])_min!.Clone(), (float[])_max!.Clone());

    protected override void ResetCore() => _min = _max = null;
}
