using QuantSharp.Primitives;
using static TorchSharp.torch;

namespace QuantSharp.Calibration;

/// <summary>
/// What calibration needs from an observer: take tensors, count them, give qparams. Adapts the observer
/// implementations so that the calibration code does not depend on one of them.
/// </summary>
internal interface IRangeObserver
{
    /// <summary>Records the range of <paramref name="x"/> (not kept).</summary>
    void Observe(Tensor x);

    /// <summary>Number of <see cref="Observe"/> calls.</summary>
    long Calls { get; }

    /// <summary>Smallest and largest value seen, or null before any observation.</summary>
    (float Min, float Max)? Range { get; }

    /// <summary>Scale and zero point for the observed values.</summary>
    (float Scale, int ZeroPoint) ComputeQParams();
}

/// <summary>Running min/max (PyTorch's <c>MinMaxObserver</c>, per-tensor).</summary>
internal sealed class MinMaxRangeObserver(QuantSpec spec) : IRangeObserver
{
    private float _min = float.PositiveInfinity, _max = float.NegativeInfinity;

    public long Calls { get; private set; }

    public (float Min, float Max)? Range => Calls == 0 || float.IsInfinity(_min) ? null : (_min, _max);

    public void Observe(Tensor x)
    {
        Calls++;
        if (x.numel() == 0) return;
        using var scope = NewDisposeScope();
        var f = x.detach().to(ScalarType.Float32);
        float mn = f.min().item<float>(), mx = f.max().item<float>();
        if (!float.IsFinite(mn) || !float.IsFinite(mx))
            throw new ArgumentException("Calibration saw NaN or infinity in a layer's activations; check the model and the data.");
        _min = MathF.Min(_min, mn);
        _max = MathF.Max(_max, mx);
    }

    public (float Scale, int ZeroPoint) ComputeQParams()
    {
        if (Range is not { } r) throw new InvalidOperationException("The observer has seen no data.");
        return QParams.Choose(r.Min, r.Max, QuantRange.For(spec.Type, spec.ReduceRange), spec.Scheme);
    }
}

/// <summary>Creates the calibration observers by name.</summary>
internal static class RangeObservers
{
    public static readonly string[] Names = ["minmax"];

    public static Func<IRangeObserver> Factory(string name, QuantSpec spec) => name.Trim().ToLowerInvariant() switch
    {
        "minmax" or "min-max" => () => new MinMaxRangeObserver(spec),
        _ => throw new ArgumentException($"Unknown observer '{name}'. Use one of: {string.Join(", ", Names)}."),
    };
}
