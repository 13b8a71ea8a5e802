using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Calibration;

/// <summary>The model with one layer (or every layer) quantized one way, measured against the float model.</summary>
/// <param name="Spec">The weight spec asked for.</param>
/// <param name="Applied">The spec the quantizer used (differs after a group-size fallback, e.g. int4 to int8 for a layer
/// with an odd reduction length).</param>
/// <param name="Bytes">Bytes of the quantized layer(s): integer data, scales, zero points and float biases.</param>
/// <param name="OutputSqnrDb">SQNR (dB) of the model's output against the float model's, over the data.</param>
/// <param name="Metric">The caller's metric (e.g. accuracy) of the model, or null without one.</param>
public sealed record SensitivityMeasurement(QuantSpec Spec, QuantSpec Applied, long Bytes, double OutputSqnrDb, double? Metric)
{
    /// <summary>Why <see cref="Applied"/> differs from <see cref="Spec"/> (the quantizer's fallback message, e.g.
    /// "'conv1.weight' [16, 1, 3, 3]: 4-bit packing needs an even reduction length, got 9; quantized as int8 ... instead"), or null.</summary>
    public string? Fallback { get; init; }
}

/// <summary>One layer quantized alone, each way.</summary>
/// <param name="Layer">Dotted layer name.</param>
/// <param name="ModuleType">Float module type name.</param>
/// <param name="WeightElements">Elements of the layer's weight.</param>
/// <param name="FloatBytes">Bytes of the float layer's parameters.</param>
/// <param name="Measurements">One per spec, in the order of <see cref="SensitivityReport.Specs"/>.</param>
public sealed record LayerSensitivity(string Layer, string ModuleType, long WeightElements, long FloatBytes,
    IReadOnlyList<SensitivityMeasurement> Measurements);

/// <summary>
/// Per-layer sensitivity (<see cref="Measure"/>): the model with one layer quantized at a time, each way, against the
/// float model; and every layer quantized the same way (uniform), for reference.
/// </summary>
public sealed record SensitivityReport
{
    /// <summary>The weight specs tried (e.g. float16, int8 per-channel, int4 group-32).</summary>
    public required IReadOnlyList<QuantSpec> Specs { get; init; }

    /// <summary>The recipe each variant was made from (its weight fields and selection replaced per variant).</summary>
    public required QuantizationRecipe BaseRecipe { get; init; }

    /// <summary>Samples the outputs were compared on.</summary>
    public required long Samples { get; init; }

    /// <summary>The float model's metric, or null without one.</summary>
    public double? FloatMetric { get; init; }

    /// <summary>One entry per quantized layer, in model order.</summary>
    public required IReadOnlyList<LayerSensitivity> Layers { get; init; }

    /// <summary>Every layer quantized with each spec (uniform), in the order of <see cref="Specs"/>.</summary>
    public required IReadOnlyList<SensitivityMeasurement> Uniform { get; init; }

    /// <summary>
    /// The layers from most to least sensitive: by output SQNR with the layer alone quantized with
    /// <paramref name="specIndex"/> (default: the last spec, normally the lowest precision), lowest first; ties by name.
    /// </summary>
    public IReadOnlyList<LayerSensitivity> Ranking(int? specIndex = null)
    {
        int i = specIndex ?? Specs.Count - 1;
        ArgumentOutOfRangeException.ThrowIfNegative(i);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(i, Specs.Count);
        return Layers.OrderBy(l => l.Measurements[i].OutputSqnrDb).ThenBy(l => l.Layer, StringComparer.Ordinal).ToList();
    }

    /// <summary>
    /// Quantizes <paramref name="model"/> one layer at a time with each of <paramref name="specs"/> (and every layer with
    /// each, for reference) through <see cref="Quantizer.Quantize{T}(T, QuantizationRecipe, IEnumerable{CalibrationBatch}, Func{T}?, bool, QuantSpec?, int?, ValidationFailureMode?, IProgress{CalibrationProgress}?)"/>
    /// and measures the model output's SQNR against the float model on <paramref name="data"/>, and
    /// <paramref name="metric"/> if given. The results depend only on the model and the data (no randomness), so the
    /// ranking is reproducible; choose the data with a fixed seed to reproduce a run.
    /// </summary>
    /// <typeparam name="T">The model type.</typeparam>
    /// <param name="model">The float model (not modified).</param>
    /// <param name="factory">Builds a fresh float model of the same architecture (each variant is a copy).</param>
    /// <param name="data">Batches to compare outputs on (enumerated once per variant: give a list).</param>
    /// <param name="specs">Weight specs to try, e.g. float16, int8 per-channel, int4 group-32 (at least one).</param>
    /// <param name="metric">Scores a model (e.g. accuracy on labelled images; higher is better); null for none.</param>
    /// <param name="baseRecipe">Selection and other settings (default int8 weight-only); weight-only: its activation
    /// settings are dropped. Validation is turned off for the variants. With <see cref="QuantizationMethod.Gptq"/> each
    /// variant is rounded by GPTQ with <paramref name="data"/> as calibration data.</param>
    /// <exception cref="ArgumentException">No spec, no data, or what <c>Quantizer.Quantize</c> refuses.</exception>
    public static SensitivityReport Measure<T>(T model, Func<T> factory, IReadOnlyList<CalibrationBatch> data, IReadOnlyList<QuantSpec> specs,
        Func<T, double>? metric = null, QuantizationRecipe? baseRecipe = null) where T : nn.Module
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(factory);
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(specs);
        if (specs.Count == 0) throw new ArgumentException("Give at least one weight spec to try (e.g. int8 per-channel and int4 group-32).", nameof(specs));
        if (data.Count == 0) throw new ArgumentException("Give at least one batch to compare outputs on.", nameof(data));
        var recipe = (baseRecipe ?? QuantizationRecipe.Int8WeightOnly()) with
        {
            Activations = null,
            DynamicActivations = false,
            Validation = new ValidationPolicy { Enabled = false },
        };
        if (recipe.Method == QuantizationMethod.Gptq) recipe = recipe with { CalibrationSamples = (int)Math.Min(data.Sum(b => b.Samples), int.MaxValue) };

        var reference = Outputs(model, data);
        try
        {
            double? floatMetric = metric?.Invoke(model);
            var uniform = new List<SensitivityMeasurement>();
            List<QuantizedLayer>? layers = null;
            foreach (var spec in specs)
            {
                var (m, done) = Run(model, factory, recipe.WithWeights(spec), spec, data, reference, metric);
                uniform.Add(m);
                layers ??= done;
            }
            var result = new List<LayerSensitivity>();
            var weights = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.numel(), StringComparer.Ordinal);
            foreach (var layer in layers!)
            {
                var measurements = specs.Select(spec => Run(model, factory, recipe.WithWeights(spec) with { Include = [layer.Name], Overrides = [] },
                    spec, data, reference, metric).Measurement).ToList();
                result.Add(new LayerSensitivity(layer.Name, layer.ModuleType, ElementsOf(weights, layer.Name), layer.FloatBytes, measurements));
            }
            return new SensitivityReport
            {
                Specs = specs, BaseRecipe = recipe, Samples = data.Sum(b => b.Samples), FloatMetric = floatMetric, Layers = result, Uniform = uniform,
            };
        }
        finally
        {
            foreach (var t in reference) t.Dispose();
        }
    }

    private static (SensitivityMeasurement Measurement, List<QuantizedLayer> Layers) Run<T>(T model, Func<T> factory, QuantizationRecipe recipe,
        QuantSpec spec, IReadOnlyList<CalibrationBatch> data, List<Tensor> reference, Func<T, double>? metric) where T : nn.Module
    {
        // GPTQ rounds with the inputs of each layer: the data is its calibration data.
        var result = recipe.Method == QuantizationMethod.Gptq
            ? Quantizer.Quantize(model, recipe, data, factory: factory)
            : Quantizer.Quantize(model, recipe, factory: factory);
        using var quantized = result.Model;
        var outputs = Outputs(quantized, data);
        try
        {
            var sqnr = new SqnrAccumulator();
            for (int i = 0; i < outputs.Count; i++) sqnr.Add(reference[i], outputs[i]);
            var single = result.Layers.Count == 1 ? result.Layers[0] : null;
            var m = new SensitivityMeasurement(spec, single?.Weights ?? spec, result.Layers.Sum(l => l.QuantizedBytes), sqnr.Db, metric?.Invoke(quantized))
            {
                Fallback = single?.Fallback,
            };
            return (m, result.Layers.ToList());
        }
        finally
        {
            foreach (var t in outputs) t.Dispose();
        }
    }

    /// <summary>The model's float32 outputs on every batch (eval mode, no gradients).</summary>
    internal static List<Tensor> Outputs(nn.Module model, IReadOnlyList<CalibrationBatch> data)
    {
        bool training = model.training;
        model.eval();
        var outputs = new List<Tensor>();
        try
        {
            using var noGrad = no_grad();
            foreach (var batch in data)
            {
                using var scope = NewDisposeScope();
                outputs.Add(batch.Run(model).to(ScalarType.Float32).detach().clone().DetachFromDisposeScope());
            }
            return outputs;
        }
        catch
        {
            foreach (var t in outputs) t.Dispose();
            throw;
        }
        finally
        {
            if (training) model.train();
        }
    }

    /// <summary>Elements of a layer's <c>weight</c> parameter (else of all its parameters).</summary>
    private static long ElementsOf(Dictionary<string, long> parameters, string layer) => parameters.TryGetValue(layer + ".weight", out long n)
        ? n
        : parameters.Where(kv => kv.Key.StartsWith(layer + ".", StringComparison.Ordinal)).Sum(kv => kv.Value);
}
