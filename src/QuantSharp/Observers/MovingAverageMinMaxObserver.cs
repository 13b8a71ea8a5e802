namespace QuantSharp.Observers;

/// <summary>
/// Exponential moving average of the minimum and maximum (PyTorch's <c>MovingAverageMinMaxObserver</c> and
/// <c>MovingAveragePerChannelMinMaxObserver</c>): the first tensor sets min/max, each later one moves them by
/// <c>min += c * (min_now - min)</c>, in float32 as PyTorch does.
/// </summary>
internal sealed class MovingAverageMinMaxObserver : RunningRangeObserver
{
    public MovingAverageMinMaxObserver(ObserverOptions options) : base(options) { }

    protected override void Merge(float[] runningMin, float[] runningMax, float[] min, float[] max)
    {
        float c = Options.AveragingConstant;
        for (int i = 0; i < min.Length; i++)
        {
            // Separate float32 operations, as torch evaluates min_val + c * (min_cur - min_val).
            float dMin = min[i] - runningMin[i];
            float dMax = max[i] - runningMax[i];
            float stepMin = c * dMin;
            float stepMax = c * dMax;
            runningMin[i] += stepMin;
            runningMax[i] += stepMax;
        }
    }
}
