using QuantSharp.Modules;
using QuantSharp.Observers;
using QuantSharp.Tensors;
using QuantSharp.Validation;
using TorchSharp;
using static QuantSharp.Modules.Hooks;
using static TorchSharp.torch;

namespace QuantSharp.Calibration;

/// <summary>An observer to compare: a label for tables and pictures, its <see cref="ObserverFactory"/> name and options.</summary>
/// <param name="Label">Short unique label (e.g. <c>histogram-50-100</c>).</param>
/// <param name="Observer">The factory name (<c>minmax</c>, <c>moving-average</c>, <c>histogram</c>, <c>percentile</c>).</param>
/// <param name="Options">Options on top of the activation spec's type, scheme and reduce range (null: the defaults).</param>
public sealed record ObserverCandidate(string Label, string Observer, ObserverOptions? Options = null)
{
    /// <summary>
    /// min/max, moving average (PyTorch's 0.01), percentile 99.99, histogram with the KL (entropy) search over every
    /// threshold (ONNX Runtime), the same search restricted to 50-100% of the histogram range (TensorRT), and the
    /// histogram's L2 search (PyTorch).
    /// </summary>
    public static IReadOnlyList<ObserverCandidate> Defaults { get; } =
    [
        new("minmax", "minmax"),
        new("moving-average", "moving-average"),
        new("percentile", "percentile"),
        new("histogram-kl", "histogram"),
        new("histogram-kl-50-100", "histogram", new ObserverOptions { EntropySearchStart = 0.5 }),
        new("histogram-l2", "histogram", new ObserverOptions { Method = HistogramMethod.L2 }),
    ];
}

/// <summary>What one observer chose for one layer's input, and what that choice costs.</summary>
/// <param name="Observer">The candidate's label.</param>
/// <param name="Low">Lowest value the chosen parameters represent: <c>(qmin - zero point) * scale</c>.</param>
/// <param name="High">Highest value the chosen parameters represent: <c>(qmax - zero point) * scale</c>.</param>
/// <param name="Scale">The scale.</param>
/// <param name="ZeroPoint">The zero point.</param>
/// <param name="OutputSqnrDb">SQNR (dB) of the layer's output when its input is quantized with these parameters (float
/// weights), against the float output, over the compared samples: the cost of the choice where it matters.</param>
/// <param name="KlDivergence">The KL divergence of the entropy search (ONNX Runtime's formula) for the clipping range
/// [<paramref name="Low"/>, <paramref name="High"/>] on the input histogram: what the histogram-KL observer minimises.</param>
/// <param name="ClippedPercent">Share of the observed input values clipped, in percent: outside [<paramref name="Low"/>, <paramref name="High"/>]
/// by more than half a step (closer values only round to the end level; the zero point's rounding moves min/max's range by up to a step).</param>
public sealed record ObserverChoice(string Observer, float Low, float High, float Scale, int ZeroPoint, double OutputSqnrDb,
    double KlDivergence, double ClippedPercent);

/// <summary>The observers' choices for one layer's input, with the input histogram they were made on.</summary>
/// <param name="Layer">Dotted layer name.</param>
/// <param name="ModuleType">Module type name (e.g. <c>Conv2d</c>).</param>
/// <param name="Min">Smallest input value observed.</param>
/// <param name="Max">Largest input value observed.</param>
/// <param name="HistogramEdges">Bin edges of the input histogram over [<paramref name="Min"/>, <paramref name="Max"/>] (one more than counts).</param>
/// <param name="HistogramCounts">Values per bin.</param>
/// <param name="Choices">One entry per compared observer, in the order given.</param>
public sealed record LayerObserverComparison(string Layer, string ModuleType, float Min, float Max, IReadOnlyList<float> HistogramEdges,
    IReadOnlyList<long> HistogramCounts, IReadOnlyList<ObserverChoice> Choices)
{
    /// <summary>The choice with the highest output SQNR (the first on ties).</summary>
    public ObserverChoice Best => Choices.Aggregate((a, b) => b.OutputSqnrDb > a.OutputSqnrDb ? b : a);
}

/// <summary>
/// Per-layer comparison of activation observers (<see cref="Compare"/>): for the input of every layer that static
/// quantization quantizes, each observer's range, the SQNR of the layer output with its input quantized that way, and
/// the KL divergence of the range; plus the input histogram, for pictures.
/// </summary>
public sealed record ObserverComparison
{
    /// <summary>The activation spec the observers chose parameters for (e.g. uint8 affine per-tensor).</summary>
    public required QuantSpec Activations { get; init; }

    /// <summary>Samples run through the model (dimension 0 of the batches).</summary>
    public required long Samples { get; init; }

    /// <summary>The compared observers, in order.</summary>
    public required IReadOnlyList<ObserverCandidate> Observers { get; init; }

    /// <summary>One entry per observed layer, in the order the model runs them.</summary>
    public required IReadOnlyList<LayerObserverComparison> Layers { get; init; }

    /// <summary>
    /// <b>Experimental.</b> The automatic observer choice: per layer, the observer whose quantized layer output has the
    /// best SQNR on the compared samples (which are also the calibration samples, so the choice can over-fit them).
    /// </summary>
    /// <returns>Layer name to the chosen candidate.</returns>
    public IReadOnlyDictionary<string, ObserverCandidate> ChooseObservers()
    {
        var byLabel = Observers.ToDictionary(o => o.Label, StringComparer.Ordinal);
        return Layers.ToDictionary(l => l.Layer, l => byLabel[l.Best.Observer], StringComparer.Ordinal);
    }

    /// <summary>
    /// <b>Experimental.</b> A static-activation recipe that applies <see cref="ChooseObservers"/>: <paramref name="baseRecipe"/>
    /// (default <see cref="QuantizationRecipe.Int8Static"/>) with this comparison's <see cref="Activations"/>, <see cref="Samples"/>
    /// calibration samples and, first in its overrides, one per compared layer that sets the layer's chosen activation
    /// observer (on top of the weight fields of the base recipe's first override for that layer, if any). Quantizing the
    /// same model with it and the same batches calibrates each layer's input with exactly the parameters the chosen
    /// observer has in this comparison.
    /// </summary>
    /// <param name="baseRecipe">The recipe to add the choice to (its weights, selection and validation are kept).</param>
    /// <returns>The recipe (<see cref="QuantizationRecipe.Save"/> writes it).</returns>
    /// <exception cref="ArgumentException">A chosen observer has options a recipe cannot carry (only the histogram's
    /// method and entropy search start are per-layer recipe fields), or the base recipe uses dynamic activations or GPTQ.</exception>
    public QuantizationRecipe ToRecipe(QuantizationRecipe? baseRecipe = null)
    {
        var recipe = (baseRecipe ?? QuantizationRecipe.Int8Static()) with { Activations = Activations, CalibrationSamples = (int)Math.Min(Samples, int.MaxValue) };
        var chosen = ChooseObservers();
        var overrides = new List<RecipeOverride>();
        foreach (var layer in Layers)
        {
            var c = chosen[layer.Layer];
            var options = c.Options ?? new ObserverOptions();
            var carried = new ObserverOptions { EntropySearchStart = options.EntropySearchStart, Method = options.Method };
            if (options with { Type = carried.Type, Scheme = carried.Scheme, ReduceRange = false, Axis = null, GroupSize = null, Name = null } != carried)
                throw new ArgumentException($"Layer '{layer.Layer}': observer '{c.Label}' has options a recipe cannot carry (per layer it holds the observer, " +
                    "the histogram method and the entropy search start); compare observers with default options otherwise.", nameof(baseRecipe));
            bool histogram = QuantizationRecipe.NormalizeObserver(c.Observer) == "histogram";
            var weightOverride = recipe.Overrides.FirstOrDefault(o => o.Matches(layer.Layer + ".weight", layer.ModuleType));
            overrides.Add((weightOverride ?? new RecipeOverride(layer.Layer)) with
            {
                Pattern = layer.Layer,
                ActivationObserver = c.Observer,
                EntropySearchStart = histogram ? options.EntropySearchStart : null,
                HistogramMethod = histogram ? options.Method : null,
            });
        }
        recipe = recipe with { Overrides = [.. overrides, .. recipe.Overrides] };
        recipe.Validate();
        return recipe;
    }

    /// <summary>
    /// Runs <paramref name="data"/> through <paramref name="model"/> (eval mode, no gradients) and compares the
    /// observers on the input of each Linear/Conv layer called through <c>call</c>.
    /// </summary>
    /// <param name="model">The float model (not modified; hooks are removed afterwards).</param>
    /// <param name="data">Batches; run until <paramref name="maxSamples"/> samples were seen. Their inputs and outputs
    /// of every compared layer are kept in memory until the comparison is done.</param>
    /// <param name="activations">The activation spec (per-tensor integer; default uint8 affine, as static W8A8).</param>
    /// <param name="observers">The observers (default <see cref="ObserverCandidate.Defaults"/>); labels must be unique.</param>
    /// <param name="maxSamples">Stop after at least this many samples (default 256).</param>
    /// <param name="layers">Only these layers (dotted names); null for all.</param>
    /// <exception cref="ArgumentException">Bad spec, observer, label or layer name, no layer to compare, or no data.</exception>
    public static ObserverComparison Compare(nn.Module model, IEnumerable<CalibrationBatch> data, QuantSpec? activations = null,
        IReadOnlyList<ObserverCandidate>? observers = null, long maxSamples = 256, IReadOnlyCollection<string>? layers = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(data);
        activations ??= QuantizationRecipe.DefaultActivations;
        observers ??= ObserverCandidate.Defaults;
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxSamples);
        activations.Validate();
        if (!activations.Type.IsInteger() || activations.Granularity is not PerTensor)
            throw new ArgumentException($"Observers are compared for per-tensor integer activations, not {activations}.", nameof(activations));
        if (observers.Count == 0) throw new ArgumentException("Give at least one observer to compare.", nameof(observers));
        var duplicate = observers.GroupBy(o => o.Label, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null) throw new ArgumentException($"Observer label '{duplicate.Key}' is given twice; labels must be unique.", nameof(observers));

        var entries = ComparedLayers(model, layers);
        var range = QuantRange.For(activations.Type, activations.ReduceRange);
        var states = entries.Select(e => new LayerState(e, observers.Select(o => ObserverFactory.Create(o.Observer, OptionsFor(o, activations, e.Name))).ToList())).ToList();
        var byModule = states.ToDictionary(s => (object)s.Entry.Module, ReferenceEqualityComparer.Instance);
        var removers = new List<Action>();
        bool wasTraining = model.training;
        long samples = 0;
        try
        {
            foreach (var s in states)
            {
                var state = s;
                removers.Add(Unhook(((nn.Module<Tensor, Tensor>)s.Entry.Module).register_forward_hook((_, x, y) =>
                {
                    state.Observe(x, y);
                    return null!;
                })));
            }
            model.eval();
            using (no_grad())
            {
                foreach (var batch in data)
                {
                    if (batch is null) throw new ArgumentException("A calibration batch is null.", nameof(data));
                    using (NewDisposeScope()) batch.Run(model);
                    samples += batch.Samples;
                    if (samples >= maxSamples) break;
                }
            }
            foreach (var r in removers) r();
            removers.Clear();
            if (samples == 0) throw new ArgumentException("The data yielded no batch; give at least one.", nameof(data));
            var never = states.Where(s => s.Inputs.Count == 0).Select(s => s.Entry.Name).ToList();
            if (never.Count > 0)
                throw new ArgumentException($"Layer(s) {string.Join(", ", never)} never ran: forward hooks fire only when the parent calls child.call(x).");

            var result = new List<LayerObserverComparison>();
            using (no_grad())
            {
                foreach (var s in states)
                    result.Add(s.Compare(observers, range, activations));
            }
            return new ObserverComparison { Activations = activations, Samples = samples, Observers = observers, Layers = result };
        }
        finally
        {
            foreach (var r in removers) r();
            foreach (var s in states) s.Dispose();
            if (wasTraining) model.train();
        }
    }

    /// <summary>The layers whose input static quantization quantizes (Linear, Conv...), in model order.</summary>
    private static List<ModuleEntry> ComparedLayers(nn.Module model, IReadOnlyCollection<string>? names)
    {
        var all = ModuleTree.Walk(model)
            .Where(e => e.Module is nn.Module<Tensor, Tensor> && QuantizedModules.HandlerFor(e.Module.GetType()) is { QuantizesInput: true })
            .ToList();
        if (names is null)
        {
            if (all.Count == 0) throw new ArgumentException($"{model.GetType().Name} has no Linear or Conv layer whose input could be quantized.", nameof(model));
            return all;
        }
        foreach (string n in names)
        {
            if (!all.Any(e => e.Name == n))
                throw new ArgumentException($"No comparable layer named '{n}'. Layers: {string.Join(", ", all.Select(e => e.Name))}.", nameof(names));
        }
        return all.Where(e => names.Contains(e.Name)).ToList();
    }

    private static ObserverOptions OptionsFor(ObserverCandidate c, QuantSpec activations, string layer)
    {
        ArgumentNullException.ThrowIfNull(c);
        return (c.Options ?? new ObserverOptions()) with
        {
            Type = activations.Type,
            Scheme = activations.Scheme,
            ReduceRange = activations.ReduceRange,
            Axis = null,
            GroupSize = null,
            Name = $"input of layer '{layer}' ({c.Label})",
        };
    }

    /// <summary>One layer during the comparison: its observers, input histogram, and the kept inputs and outputs.</summary>
    private sealed class LayerState(ModuleEntry entry, List<IObserver> observers) : IDisposable
    {
        private const int PlotBins = 256;
        private readonly OrtHistogram _histogram = new(2048, absolute: false);
        public ModuleEntry Entry { get; } = entry;
        public List<Tensor> Inputs { get; } = [];
        private readonly List<Tensor> _outputs = [];

        public void Observe(Tensor x, Tensor y)
        {
            var input = x.detach().to(ScalarType.Float32).contiguous().clone().DetachFromDisposeScope();
            Inputs.Add(input);
            _outputs.Add(y.detach().clone().DetachFromDisposeScope());
            foreach (var o in observers) o.Observe(input);
            _histogram.Collect(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(input.bytes));
        }

        public LayerObserverComparison Compare(IReadOnlyList<ObserverCandidate> candidates, QuantRange range, QuantSpec activations)
        {
            var layer = (nn.Module<Tensor, Tensor>)Entry.Module;
            int quantizedBins = 1 << (activations.Type.Bits() - 1);
            long total = Inputs.Sum(t => t.numel());
            var choices = new List<ObserverChoice>();
            for (int i = 0; i < observers.Count; i++)
            {
                var r = observers[i].ComputeQParams();
                float scale = r.Scale[0];
                int zp = r.ZeroPoint[0];
                float low = (range.QMin - zp) * scale, high = (range.QMax - zp) * scale;
                var sqnr = new SqnrAccumulator();
                long clipped = 0;
                using (var s = torch.tensor(scale))
                using (var z = torch.tensor((float)zp))
                using (var kept = new KeptScalars())
                {
                    for (int b = 0; b < Inputs.Count; b++)
                    {
                        using var scope = NewDisposeScope();
                        var xq = WeightQuantizer.FakeQuantize(Inputs[b], s, z, range);
                        sqnr.Add(_outputs[b], layer.call(xq));
                        clipped += (Inputs[b].lt(kept.Of(low - scale / 2)) | Inputs[b].gt(kept.Of(high + scale / 2))).sum().item<long>();
                    }
                }
                choices.Add(new ObserverChoice(candidates[i].Label, low, high, scale, zp, sqnr.Db,
                    _histogram.Divergence(low, high, quantizedBins), 100.0 * clipped / total));
            }
            float min = _histogram.Min, max = _histogram.Max;
            var (edges, counts) = PlotHistogram(min, max);
            return new LayerObserverComparison(Entry.Name, ModuleTree.TypeName(Entry.Module.GetType()), min, max, edges, counts, choices);
        }

        /// <summary>A histogram of the inputs over [min, max] with <see cref="PlotBins"/> bins (the KL histogram spans [-max|x|, max|x|]).</summary>
        private (float[] Edges, long[] Counts) PlotHistogram(float min, float max)
        {
            if (min == max) (min, max) = (min - 0.5f, max + 0.5f);
            var counts = new long[PlotBins];
            using var kept = new KeptScalars();
            foreach (var t in Inputs)
            {
                using var scope = NewDisposeScope();
                var index = t.sub(kept.Of(min)).mul(kept.Of(PlotBins / (max - min))).floor().clamp(kept.Of(0), kept.Of(PlotBins - 1)).to(ScalarType.Int64).flatten();
                var part = torch.bincount(index, minlength: PlotBins).data<long>().ToArray();
                for (int i = 0; i < PlotBins; i++) counts[i] += part[i];
            }
            var edges = new float[PlotBins + 1];
            for (int i = 0; i <= PlotBins; i++) edges[i] = min + (max - min) * i / PlotBins;
            return (edges, counts);
        }

        public void Dispose()
        {
            foreach (var t in Inputs) t.Dispose();
            foreach (var t in _outputs) t.Dispose();
            Inputs.Clear();
            _outputs.Clear();
        }
    }
}
