namespace QuantSharp.Observers;

/// <summary>
/// Running minimum and maximum (PyTorch's <c>MinMaxObserver</c> and <c>PerChannelMinMaxObserver</c>), per tensor,
/// per channel along any axis, or per group.
/// </summary>
internal sealed class MinMaxObserver : RunningRangeObserver
{
    public MinMaxObserver(ObserverOptions options) : base(options) { }

    protected override void Merge(float[] runningMin, float[] runningMax, float[] min, float[] max)
    {
        for (int i = 0; i < min.Length; i++)
        {
            runningMin[i] = MathF.Min(runningMin[i], min[i]);
            runningMax[i] = MathF.Max(runningMax[i], max[i]);
        }
    }
}
