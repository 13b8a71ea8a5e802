using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using QuantSharp.Tensors;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Modules;

/// <summary>How a layer's weights end up stored quantized.</summary>
internal enum QuantizationMechanism
{
    /// <summary>The float module is swapped for a <see cref="QuantizedModule"/> in its parent.</summary>
    Replace,

    /// <summary>The float module is kept; its weights are stored quantized and materialized around each forward (<see cref="MaterializedWeights"/>).</summary>
    Materialize,
}

/// <summary>What will be done to one layer.</summary>
/// <param name="Entry">The layer.</param>
/// <param name="Mechanism">Replacement or materialization.</param>
/// <param name="Parameters">The float parameters to quantize (names within the module).</param>
/// <param name="Handler">The replacement handler (also set when a registered type must be materialized because its slot is typed).</param>
/// <param name="Note">Why the layer is materialized rather than replaced, or parameters left float; null otherwise.</param>
internal sealed record LayerPlan(ModuleEntry Entry, QuantizationMechanism Mechanism, IReadOnlyList<string> Parameters, QuantizedModuleHandler? Handler, string? Note);

/// <summary>One layer's weights, quantized but not yet installed.</summary>
/// <param name="Plan">The plan.</param>
/// <param name="Weights">The quantized weights (parameter name within the module, weight; tied weights are shared objects).</param>
/// <param name="WeightSqnrDb">The lowest SQNR of a weight against its float values.</param>
/// <param name="FloatBytes">Bytes of the float parameters that were quantized plus the module's other own parameters.</param>
/// <param name="CalibrationOutputSqnrDb">The lowest calibration output SQNR of its weights (<see cref="Pipeline.IWeightQuantizer.CalibrationOutputSqnrDb"/>),
/// or null when they are judged by their weight SQNR.</param>
internal sealed record PreparedLayer(LayerPlan Plan, IReadOnlyList<(string Name, QuantizedWeight Weight)> Weights, double WeightSqnrDb, long FloatBytes,
    double? CalibrationOutputSqnrDb = null);

/// <summary>Deciding per layer how its weights get quantized, and doing it (replacement or materialization), tied weights once.</summary>
internal static class ModuleQuantization
{
    /// <summary>
    /// The plan for <paramref name="entry"/> with <paramref name="spec"/>: (plan, null) when it can be quantized,
    /// (null, reason) when it is a quantizable type that cannot take the spec, (null, null) when its type is not registered.
    /// </summary>
    public static (LayerPlan? Plan, string? Reason) Plan(ModuleEntry entry, QuantSpec spec)
    {
        var module = entry.Module;
        var type = module.GetType();
        if (QuantizedModules.HandlerFor(type) is { } handler)
        {
            var w = QuantizedModules.Parameter(module, handler.WeightName);
            string? reason = w is null ? $"it has no parameter '{handler.WeightName}'" : WeightProblem(w, spec) ?? handler.Unsupported(module);
            if (reason != null) return (null, reason);
            string? slot = ModuleTree.CannotReplace(entry, typeof(QuantizedModule));
            return slot is null
                ? (new LayerPlan(entry, QuantizationMechanism.Replace, [handler.WeightName], handler, null), null)
                : (new LayerPlan(entry, QuantizationMechanism.Materialize, [handler.WeightName], handler,
                    $"kept as {type.Name} with its weight materialized around each forward ({slot})"), null);
        }
        if (QuantizedModules.MaterializedFilter(type) is { } filter)
        {
            var chosen = new List<string>();
            var left = new List<string>();
            foreach (var (name, p) in module.named_parameters())
            {
                if (!filter(name, p)) continue;
                if (WeightProblem(p, spec) is { } why) left.Add($"{name}: {why}");
                else chosen.Add(name);
            }
            if (chosen.Count == 0)
                return (null, left.Count == 0 ? "it has no parameter to quantize" : string.Join("; ", left));
            string? note = left.Count == 0 ? null : "parameters left float: " + string.Join("; ", left);
            return (new LayerPlan(entry, QuantizationMechanism.Materialize, chosen, null, note), null);
        }
        return (null, null);
    }

    private static string? WeightProblem(Tensor w, QuantSpec spec) =>
        !w.is_floating_point() ? $"its weight is {w.dtype}, not a floating-point type" : QuantizedWeight.Unsupported(spec, w.shape);

    /// <summary>
    /// Quantizes the planned parameters, reusing <paramref name="tied"/>'s weight for a storage already quantized. Run it
    /// for every layer before <see cref="Install"/> changes any (a materialized module empties its parameters, which
    /// would empty a tied twin).
    /// </summary>
    /// <param name="plan">The layer.</param>
    /// <param name="spec">The planned spec of its weights.</param>
    /// <param name="tied">Weights quantized so far, by storage.</param>
    /// <param name="statistics">The layer input's statistics, for a weight quantizer that asked for them (<see cref="Pipeline.IWeightQuantizer.CreateStatistics"/>).</param>
    public static PreparedLayer Prepare(LayerPlan plan, QuantSpec spec, TiedWeights tied, Pipeline.IInputStatistics? statistics = null)
    {
        var module = plan.Entry.Module;
        var weights = new List<(string Name, QuantizedWeight Weight)>();
        double sqnr = double.PositiveInfinity;
        double? outputSqnr = null;
        long floatBytes = 0;
        foreach (var name in plan.Parameters)
        {
            var p = QuantizedModules.Parameter(module, name)!;
            floatBytes += p.numel() * p.element_size();
            var w = tied.GetOrQuantize(p, spec, plan.Entry.Name + "." + name, statistics);
            sqnr = Lowest(sqnr, w.SqnrDb ?? Pipeline.WeightQuantization.Sqnr(p, w));
            if (w.CalibrationOutputSqnrDb is { } o) outputSqnr = Lowest(outputSqnr ?? double.PositiveInfinity, o);
            weights.Add((name, w));
        }
        // The module's other own parameters (a bias) stay as they are.
        floatBytes += module.parameters(recurse: false).Where(p => p.dim() < 2).Sum(p => p.numel() * p.element_size());
        return new PreparedLayer(plan, weights, sqnr, floatBytes, outputSqnr);

        static double Lowest(double lowest, double s) => double.IsNaN(s) || s < lowest ? s : lowest;
    }

    /// <summary>Replaces or hooks the module; returns the module now in the model. The float module of a replacement is left to the caller.</summary>
    public static nn.Module Install(PreparedLayer layer, ActivationQuantization? input)
    {
        var plan = layer.Plan;
        if (plan.Mechanism == QuantizationMechanism.Replace)
        {
            var q = plan.Handler!.Create(plan.Entry.Module, layer.Weights[0].Weight, plan.Handler.QuantizesInput ? input : null);
            q.LayerName = plan.Entry.Name;
            q.FloatTypeName = plan.Entry.Module.GetType().Name;
            q.eval();
            ModuleTree.Replace(plan.Entry, q);
            return q;
        }
        MaterializedWeights.Attach(plan.Entry.Module, layer.Weights);
        return plan.Entry.Module;
    }

    /// <summary>The quantized weights a module holds (a quantized module's one weight, or a materialized module's), or none.</summary>
    public static IReadOnlyList<(string Name, QuantizedWeight Weight)> WeightsOf(nn.Module module) => module switch
    {
        QuantizedModule q => [("weight", q.weight)],
        _ => MaterializedWeights.Of(module)?.Weights.ToList() ?? [],
    };

    /// <summary>A key naming the memory a contiguous CPU tensor's data starts at (tied weights share it), or null for an empty tensor.</summary>
    public static (nint Address, long Count, ScalarType Type)? StorageKey(Tensor t)
    {
        if (t.numel() == 0 || t.device_type != DeviceType.CPU || !t.is_contiguous()) return null;
        return (TensorSpans.Address(t), t.numel(), t.dtype);
    }
}

/// <summary>Quantized weights by the float storage they came from, so that a weight tied between two layers is quantized once and stays shared.</summary>
/// <param name="quantizer">The quantize stage (<see cref="Pipeline.QuantizationPipeline.WeightQuantizerFor"/>; round to nearest with min/max when null).</param>
/// <param name="measure">Record each weight's SQNR (validation on), as the checkpoint path records it in the file.</param>
internal sealed class TiedWeights(Pipeline.IWeightQuantizer? quantizer = null, bool measure = true)
{
    private readonly Dictionary<(nint, long, ScalarType), QuantizedWeight> _byStorage = [];
    private readonly Pipeline.IWeightQuantizer _quantizer = quantizer ?? new Pipeline.RoundToNearest("minmax");

    /// <summary>The weight already quantized from <paramref name="parameter"/>'s storage, or a new one.</summary>
    public QuantizedWeight GetOrQuantize(Tensor parameter, QuantSpec spec, string name, Pipeline.IInputStatistics? statistics = null)
    {
        var key = ModuleQuantization.StorageKey(parameter);
        if (key is { } k && _byStorage.TryGetValue(k, out var existing)) return existing;
        // The shared quantize stage (same method and storage view as the checkpoint path).
        var planned = new Pipeline.PlannedWeight(name, parameter.shape, spec, null);
        var w = QuantizedWeight.FromCanonical(_quantizer.Quantize(planned, parameter, statistics), parameter.shape, parameter.dtype);
        w.Observer = spec.Type.IsInteger() ? _quantizer.MethodFor(statistics) : null;
        if (measure)
        {
            w.SqnrDb = Pipeline.WeightQuantization.Sqnr(parameter, w);
            w.CalibrationOutputSqnrDb = _quantizer.CalibrationOutputSqnrDb(parameter, w, statistics);
        }
        if (key is { } k2) _byStorage[k2] = w;
        return w;
    }

    /// <summary>Whether <paramref name="parameter"/>'s storage was quantized already.</summary>
    public bool Contains(Tensor parameter) => ModuleQuantization.StorageKey(parameter) is { } k && _byStorage.ContainsKey(k);
}
