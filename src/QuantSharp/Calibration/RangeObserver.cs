using QuantSharp.Observers;
using static TorchSharp.torch;

namespace QuantSharp.Calibration;

/// <summary>What calibration needs from an observer: take tensors, count them, give per-tensor qparams.</summary>
internal interface IRangeObserver
{
    /// <summary>Records the statistics of <paramref name="x"/> (the tensor is not kept).</summary>
    void Observe(Tensor x);

    /// <summary>Number of <see cref="Observe"/> calls.</summary>
    long Calls { get; }

    /// <summary>The observer's range (min, max), or null before any observation.</summary>
    (float Min, float Max)? Range { get; }

    /// <summary>Scale and zero point for the observed values.</summary>
    (float Scale, int ZeroPoint) ComputeQParams();
}

/// <summary>Per-tensor calibration through one of the observers of <see cref="ObserverFactory"/>.</summary>
internal sealed class FactoryRangeObserver(IObserver inner) : IRangeObserver
{
    public long Calls { get; private set; }

    public (float Min, float Max)? Range
    {
        get
        {
            if (inner.Count == 0) return null;
            var r = inner.ComputeQParams();
            return (r.Min[0], r.Max[0]);
        }
    }

    public void Observe(Tensor x)
    {
        Calls++;
        inner.Observe(x);
    }

    public (float Scale, int ZeroPoint) ComputeQParams()
    {
        var r = inner.ComputeQParams();
        return (r.Scale[0], r.ZeroPoint[0]);
    }
}

/// <summary>Creates the calibration observers by name (<see cref="ObserverFactory.Names"/>).</summary>
internal static class RangeObservers
{
    /// <summary>A factory of per-tensor observers for <paramref name="spec"/>; its argument names the observed tensor in errors.</summary>
    public static Func<string, IRangeObserver> Factory(string name, QuantSpec spec, double entropySearchStart = 0) =>
        Factory(name, new ObserverOptions { Type = spec.Type, Scheme = spec.Scheme, ReduceRange = spec.ReduceRange, EntropySearchStart = entropySearchStart });

    /// <summary>A factory of observers <paramref name="name"/> with <paramref name="options"/>; its argument names the observed tensor in errors.</summary>
    public static Func<string, IRangeObserver> Factory(string name, ObserverOptions options)
    {
        ObserverFactory.Create(name, options); // fail early on an unknown name or bad options
        return tensorName => new FactoryRangeObserver(ObserverFactory.Create(name, options with { Name = tensorName }));
    }

    /// <summary>
    /// The calibration observers of <paramref name="recipe"/>: for each layer the activation observer the recipe gives its
    /// weight <paramref name="parameters"/>[layer] (the first matching override's, else the recipe's), for <paramref name="spec"/>.
    /// </summary>
    public static Func<string, string, IRangeObserver> ForRecipe(QuantizationRecipe recipe, QuantSpec spec,
        IReadOnlyDictionary<string, (string Parameter, string ModuleType)> parameters)
    {
        var factories = parameters.ToDictionary(kv => kv.Key, kv =>
        {
            var (observer, options) = recipe.ActivationObserverFor(kv.Value.Parameter, kv.Value.ModuleType, spec);
            return Factory(observer, options);
        }, StringComparer.Ordinal);
        return (layer, tensorName) => factories[layer](tensorName);
    }
}
