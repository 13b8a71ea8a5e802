using QuantSharp.Calibration;
using QuantSharp.Modules;
using QuantSharp.Tensors;
using QuantSharp.Validation;
using TorchSharp;
using static QuantSharp.Modules.Hooks;
using static TorchSharp.torch;

namespace QuantSharp.Pipeline;

// The one pipeline of both quantizers (docs/QUANTIZER.md, "The pipeline"), stage by stage:
//
//   plan        RecipePlanner: which weights, which spec, the group-size fallback           (both paths)
//   calibrate   IInputStatistics per layer input, filled by forward pre-hooks              (model path: Calibrator for
//               ranges; InputStatistics.Collect for what a weight quantizer asks)
//   quantize    IWeightQuantizer: one planned weight -> its canonical QuantizedTensor       (both paths)
//   validate    WeightChecks: the one range check + SQNR accumulated in float64             (both paths)
//   write       QuantizedCheckpointWriter over SafetensorsStreamWriter                      (both paths)
//
// QuantizationDriver (Driver.cs) runs these stages for both quantizers, from a source (ModelSource / CheckpointSource)
// into a sink (ModelSink / CheckpointSink). A weight quantizer that is Sequential (GPTQ) is run layer by layer by the
// model source: the statistics of layer i are collected on the model whose layers before i are already quantized and
// installed. QAT plugs in at plan (Prepare
// replaces the planned layers by QatLayer) and quantize (Convert builds the canonical weight from the learned qparams).

/// <summary>
/// Statistics of one layer's input collected during calibration (the calibrate/observe stage), for a weight quantizer
/// that needs them (<see cref="IWeightQuantizer.CreateStatistics"/>).
/// </summary>
internal interface IInputStatistics : IDisposable
{
    /// <summary>Adds one batch of the layer's input (any leading dimensions; the last one is the input features).</summary>
    void Observe(Tensor input);

    /// <summary>Input rows observed (the product of the leading dimensions, summed over batches).</summary>
    long Rows { get; }
}

/// <summary>
/// The second moment of a layer's input, <c>H = (2 / n) * sum over rows x of x^T x</c> (float64, <c>[in, in]</c>): the
/// Hessian of the layer-wise squared error that GPTQ uses, instead of ranges. For a convolution the rows are the
/// flattened patches (the caller unfolds them before <see cref="Observe"/>).
/// </summary>
internal sealed class SecondMomentStatistics : IInputStatistics
{
    private Tensor? _sum;

    /// <param name="features">The layer's input features (the last dimension of what is observed).</param>
    public SecondMomentStatistics(long features)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(features);
        Features = features;
    }

    /// <summary>The number of input features.</summary>
    public long Features { get; }

    /// <inheritdoc/>
    public long Rows { get; private set; }

    /// <inheritdoc/>
    public void Observe(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (input.dim() == 0 || input.shape[^1] != Features)
            throw new ArgumentException($"The layer input has shape {QuantSpec.FormatShape(input.shape)}; its last dimension must be the {Features} input features.");
        using var scope = NewDisposeScope();
        var x = input.detach().reshape(-1, Features).to(ScalarType.Float64);
        var xtx = mm(x.t(), x);
        if (_sum is null) _sum = xtx.DetachFromDisposeScope();
        else KeptScalars.PlusInPlace(_sum, xtx);
        Rows += x.shape[0];
    }

    /// <summary><c>H = (2 / n) * sum x^T x</c> (a new tensor; the caller disposes it).</summary>
    /// <exception cref="InvalidOperationException">Nothing was observed.</exception>
    public Tensor Hessian()
    {
        if (_sum is null) throw new InvalidOperationException("No input was observed: run calibration data through the model first.");
        using var kept = new KeptScalars();
        return _sum.mul(kept.Of(2.0 / Rows));
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        _sum?.Dispose();
        _sum = null;
    }
}

/// <summary>The quantize stage: turns one planned weight into its canonical <see cref="QuantizedTensor"/>.</summary>
internal interface IWeightQuantizer
{
    /// <summary>The method's name, recorded per layer (<c>observer</c> in the per-layer metadata): <c>minmax</c>, <c>gptq</c>...</summary>
    string Method { get; }

    /// <summary>
    /// True when layers are quantized one after another, each on the inputs that the already-quantized layers before
    /// it produce (GPTQ); false when every weight is quantized independently (round to nearest), which also allows
    /// quantizing a checkpoint chunk by chunk without its model.
    /// </summary>
    bool Sequential { get; }

    /// <summary>The statistics of the layer's input this method needs, or null when it needs none (round to nearest) or
    /// cannot use them for this layer (it then rounds to nearest).</summary>
    /// <param name="weight">The planned weight.</param>
    /// <param name="layer">The float module that owns it (its type and geometry, e.g. a convolution's kernel and stride).</param>
    IInputStatistics? CreateStatistics(PlannedWeight weight, nn.Module layer);

    /// <summary>Quantizes <paramref name="values"/> (the weight, original shape, any float dtype; or a chunk of its rows when
    /// <see cref="Sequential"/> is false) with <paramref name="weight"/>'s spec, on the <see cref="WeightGeometry.StorageShape"/> view.</summary>
    QuantizedTensor Quantize(PlannedWeight weight, Tensor values, IInputStatistics? statistics);

    /// <summary>The method that actually quantized a weight given these statistics, recorded as its <c>observer</c>:
    /// <see cref="Method"/>, or the method it fell back to for a layer it cannot handle (GPTQ: round to nearest).</summary>
    /// <param name="statistics">What <see cref="CreateStatistics"/> returned for the layer.</param>
    string MethodFor(IInputStatistics? statistics) => Method;

    /// <summary>
    /// The validate stage's measure for a method that minimizes the layer's output error rather than the weight error
    /// (GPTQ): the SQNR (dB) of the layer's output <c>X·Wqᵀ</c> against <c>X·Wᵀ</c> over the calibration inputs it was
    /// quantized with. Null (the default) when the weight is judged by its weight SQNR.
    /// </summary>
    /// <param name="values">The float weight (original shape).</param>
    /// <param name="quantized">Its quantized form.</param>
    /// <param name="statistics">What <see cref="CreateStatistics"/> returned for the layer.</param>
    double? CalibrationOutputSqnrDb(Tensor values, QuantizedWeight quantized, IInputStatistics? statistics) => null;
}

/// <summary>Round to nearest with the recipe's weight observer (min/max by default): what both paths do today.</summary>
internal sealed class RoundToNearest(string observer) : IWeightQuantizer
{
    /// <inheritdoc/>
    public string Method { get; } = QuantizationRecipe.NormalizeObserver(observer);

    /// <inheritdoc/>
    public bool Sequential => false;

    /// <inheritdoc/>
    public IInputStatistics? CreateStatistics(PlannedWeight weight, nn.Module layer) => null;

    /// <inheritdoc/>
    public QuantizedTensor Quantize(PlannedWeight weight, Tensor values, IInputStatistics? statistics)
        => WeightQuantization.Quantize(values, weight.Spec, Method, weight.Name);
}

/// <summary>The stages a recipe selects; the one place where a method (GPTQ...) is chosen for both quantizers.</summary>
internal static class QuantizationPipeline
{
    /// <summary>Test hook: replaces the weight quantizer the recipe selects (on this thread).</summary>
    [ThreadStatic] internal static Func<QuantizationRecipe, IWeightQuantizer>? WeightQuantizerForTests;

    /// <summary>The weight quantizer of <paramref name="recipe"/>: its <see cref="QuantizationRecipe.Method"/> (round to
    /// nearest with its weight observer, or GPTQ with its <see cref="QuantizationRecipe.GptqOptions"/>).</summary>
    public static IWeightQuantizer WeightQuantizerFor(QuantizationRecipe recipe)
        => WeightQuantizerForTests?.Invoke(recipe) ?? (recipe.Method == QuantizationMethod.Gptq
            ? new GptqWeightQuantizer(recipe.GptqOptions, recipe.WeightObserver)
            : new RoundToNearest(recipe.WeightObserver));
}

/// <summary>The calibrate stage for one layer and a weight quantizer's statistics.</summary>
internal static class InputStatistics
{
    /// <summary>
    /// Runs every batch through <paramref name="model"/> (no gradients) and feeds <paramref name="layer"/>'s input to
    /// <paramref name="statistics"/> through a forward pre-hook (which fires on <c>layer.call(x)</c>).
    /// </summary>
    /// <exception cref="ArgumentException">The layer does not take one tensor, or never ran.</exception>
    public static void Collect(nn.Module model, ModuleEntry layer, IReadOnlyList<CalibrationBatch> batches, IInputStatistics statistics)
    {
        if (layer.Module is not nn.Module<Tensor, Tensor> m)
            throw new ModelQuantizationException($"Layer '{layer.Name}' ({layer.Module.GetType().Name}) does not take one tensor; its input statistics cannot be collected.");
        var remove = Unhook(m.register_forward_pre_hook((_, x) =>
        {
            statistics.Observe(x);
            return null!;
        }));
        try
        {
            using var noGrad = no_grad();
            foreach (var batch in batches)
            {
                using var scope = NewDisposeScope();
                batch.Run(model);
            }
        }
        finally
        {
            remove();
        }
        if (statistics.Rows == 0)
            throw new ModelQuantizationException($"Layer '{layer.Name}' never ran on the calibration data (forward hooks fire only through child.call(x)); its input statistics are empty.");
    }
}

/// <summary>The order in which a model calls its layers, for a sequential weight quantizer (GPTQ).</summary>
internal static class CallOrder
{
    /// <summary>
    /// <paramref name="layers"/> in the order <paramref name="model"/> first calls them on <paramref name="batch"/>
    /// (forward pre-hooks, which fire on <c>layer.call(x)</c>), which may differ from the order they are registered in;
    /// layers that did not run (or take other than one tensor) follow in their given order.
    /// </summary>
    public static List<T> Of<T>(nn.Module model, IReadOnlyList<T> layers, Func<T, ModuleEntry> entry, CalibrationBatch batch)
    {
        var firstCall = new Dictionary<int, int>();
        var removers = new List<Action>();
        try
        {
            for (int i = 0; i < layers.Count; i++)
            {
                if (entry(layers[i]).Module is not nn.Module<Tensor, Tensor> m) continue;
                int index = i;
                removers.Add(Unhook(m.register_forward_pre_hook((_, _) =>
                {
                    firstCall.TryAdd(index, firstCall.Count);
                    return null!;
                })));
            }
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            batch.Run(model);
        }
        finally
        {
            foreach (var remove in removers) remove();
        }
        return Enumerable.Range(0, layers.Count)
            .OrderBy(i => firstCall.TryGetValue(i, out int rank) ? rank : firstCall.Count + i)
            .Select(i => layers[i]).ToList();
    }
}

/// <summary>The validate stage's checks of one quantized weight, the same for both quantizers and the validator.</summary>
internal static class WeightChecks
{
    /// <summary>
    /// The one range check: integers within the type's range, scales finite and positive, zero points in range (integer
    /// types); no infinite or NaN value (float16/bfloat16). Returns the problems found, each naming the weight.
    /// </summary>
    public static List<string> RangeProblems(string name, QuantizedTensor q)
    {
        var spec = q.Spec;
        if (spec.Type.IsInteger())
            return TensorChecks.CheckParts(name, spec.Type, QuantRange.For(spec.Type, spec.ReduceRange), q.Data, q.Scale, q.ZeroPoint);
        long bad = TensorChecks.NonFiniteCount(q.Data);
        return bad == 0 ? [] : [$"'{name}': {bad} stored {spec.Type.ToName()} value(s) are infinite or NaN (float32 values beyond the type's range)"];
    }
}
