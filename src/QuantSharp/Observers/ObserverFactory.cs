namespace QuantSharp.Observers;

/// <summary>Creates observers by name.</summary>
public static class ObserverFactory
{
    /// <summary>The names <see cref="Create(string, ObserverOptions)"/> accepts.</summary>
    public static IReadOnlyList<string> Names { get; } = ["minmax", "moving-average", "histogram", "percentile"];

    /// <summary>Creates an observer.</summary>
    /// <param name="name"><c>minmax</c>, <c>moving-average</c>, <c>histogram</c> or <c>percentile</c>.</param>
    /// <param name="options">Options (validated here); null for the defaults.</param>
    /// <exception cref="ArgumentException">Unknown name, invalid options, or options the observer cannot honour
    /// (e.g. a channel axis for the histogram observers, which are per-tensor).</exception>
    public static IObserver Create(string name, ObserverOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(name);
        options ??= new ObserverOptions();
        options.Validate();
        return name.Trim().ToLowerInvariant() switch
        {
            "minmax" or "min-max" => new MinMaxObserver(options),
            "moving-average" or "moving_average" or "movingaverage" => new MovingAverageMinMaxObserver(options),
            "histogram" => new HistogramObserver(options),
            "percentile" => new PercentileObserver(options),
            _ => throw new ArgumentException(
                $"Unknown observer '{name}'. Use one of: {string.Join(", ", Names)}.", nameof(name)),
        };
    }
}
