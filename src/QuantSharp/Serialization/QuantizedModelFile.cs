using QuantSharp.Modules;
using QuantSharp.Pipeline;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Serialization;

/// <summary>
/// Saves a model quantized by <see cref="Quantizer"/> as the one quantized file form (<see cref="QuantizedCheckpoint"/>,
/// docs/FORMAT.md) and rebuilds a model from any such file, whether written by <see cref="Quantizer.Save"/> or by
/// <c>quantsharp quantize</c>, and a factory of the float architecture.
/// </summary>
/// <remarks>
/// The mapping between a quantized layer's state and file names lives here only (<see cref="ModuleStateNames"/>):
/// its <c>x.weight</c>, <c>x.weight_scale</c>, <c>x.weight_zero_point</c> buffers are the one quantized tensor
/// <c>x.weight</c> (data), <c>x.weight.scale</c>, <c>x.weight.zero_point</c> of the file; every other state entry
/// (biases, float layers, the W8A8 input scale and zero point <c>x.input_scale</c>, <c>x.input_zero_point</c>) is a
/// plain tensor under its own name. The per-layer entry records the original dtype and shape, the SQNR and (W8A8) the
/// input quantization; <c>quantsharp.config</c> is the recipe.
/// </remarks>
internal static class QuantizedModelFile
{
    /// <summary>The module state entries of quantized layer <paramref name="layer"/> that form its quantized weight in the file.</summary>
    private static IEnumerable<string> ModuleStateNames(string layer) => [layer + ".weight", layer + ".weight_scale", layer + ".weight_zero_point"];

    public static void Save(nn.Module model, string path)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        var quantized = ModuleTree.Walk(model).Where(e => e.Module is QuantizedModule).ToList();
        if (quantized.Count == 0)
            throw new ArgumentException("The model has no quantized layers; quantize it with Quantizer.Quantize before saving.", nameof(model));

        var owned = new List<QuantizedTensor>();
        try
        {
            var byWeight = quantized.ToDictionary(e => e.Name + ".weight", e => (QuantizedModule)e.Module, StringComparer.Ordinal);
            var parts = quantized.SelectMany(e => ModuleStateNames(e.Name)).ToHashSet(StringComparer.Ordinal);
            var entries = new List<CheckpointEntry>();
            foreach (var (name, t) in model.state_dict())
            {
                if (byWeight.TryGetValue(name, out var q))
                {
                    var qt = QuantizedTensor.FromParts(q.WeightSpec, q.StorageShape, q.WeightData.detach().clone(),
                        q.WeightScale?.detach().clone(), q.WeightZeroPoint?.detach().clone());
                    owned.Add(qt);
                    entries.Add(CheckpointEntry.Of(name, qt, LayerInfo(q)));
                }
                else if (!parts.Contains(name))
                {
                    entries.Add(CheckpointEntry.Plain(name, t));
                }
            }
            QuantizedCheckpoint.Save(path, entries, null, Quantizer.RecipeOf(model)?.ToJsonNode());
        }
        finally
        {
            foreach (var q in owned) q.Dispose();
        }
    }

    /// <summary>The per-layer entry of a quantized layer's weight.</summary>
    private static QuantizedLayerInfo LayerInfo(QuantizedModule q)
    {
        var spec = q.WeightSpec;
        bool integer = spec.Type.IsInteger();
        return new QuantizedLayerInfo(q.OriginalDType, q.WeightShape.ToArray(), spec.Type, integer ? spec.Scheme : null,
            integer ? spec.Granularity : null, spec.ReduceRange, integer ? q.WeightObserver : null, q.WeightSqnrDb)
        {
            Input = q.InputQuantization is { } a ? new QuantSpec(a.Type, a.Scheme, Granularity.Tensor, a.ReduceRange) : null,
        };
    }

    public static nn.Module Load(Func<nn.Module> factory, string path)
    {
        ArgumentNullException.ThrowIfNull(factory);
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        using var ckpt = QuantizedCheckpoint.Load(path);
        var model = factory() ?? throw new ArgumentException("The model factory returned null.", nameof(factory));
        bool ok = false;
        try
        {
            var entries = ModuleTree.Walk(model).ToDictionary(e => e.Name, StringComparer.Ordinal);
            var parts = new HashSet<string>(StringComparer.Ordinal);
            foreach (var (tensorName, info) in ckpt.Layers)
            {
                string layer = tensorName.EndsWith(".weight", StringComparison.Ordinal) ? tensorName[..^".weight".Length] : "";
                if (!entries.TryGetValue(layer, out var entry))
                    throw new InvalidDataException($"{path}: quantized tensor '{tensorName}' is not the weight of a layer of the factory's {model.GetType().Name}" +
                        (layer.Length > 0 ? $" (closest layer names: {string.Join(", ", NameGlob.Closest(layer, entries.Keys))})" : "") +
                        ". The factory must build the architecture the file was made from; tensors quantized by name patterns must be layer weights.");
                var floatModule = entry.Module;
                var floatWeight = floatModule.named_parameters(recurse: false).FirstOrDefault(p => p.name == "weight").parameter;
                var qt = ckpt.Quantized[tensorName];
                if (floatWeight is null || !qt.Shape.SequenceEqual(WeightGeometry.StorageShape(info.Type, floatWeight.shape)))
                    throw new InvalidDataException($"{path}: '{tensorName}' is stored as [{string.Join(", ", qt.Shape)}] (original [{string.Join(", ", info.Shape)}], " +
                        $"format version {info.FormatVersion}) but the factory's {floatModule.GetType().Name} '{layer}' has a weight [{string.Join(", ", floatWeight?.shape ?? [])}].");
                var act = ReadActivation(ckpt, layer, info.Input, path);
                QuantizedModule q;
                try
                {
                    q = QuantizedModules.FromParts(floatModule, qt.Spec, qt.Data.detach().clone(), qt.Scale?.detach().clone(), qt.ZeroPoint?.detach().clone(), act);
                }
                catch (ArgumentException ex)
                {
                    throw new InvalidDataException($"{path}: layer '{layer}' cannot hold its quantized weight: {ex.Message}", ex);
                }
                q.LayerName = layer;
                q.OriginalDType = info.OriginalDType;
                q.WeightSqnrDb = info.SqnrDb;
                q.WeightObserver = info.Observer;
                if (ModuleTree.CannotReplace(entry, q.GetType()) is { } why)
                    throw new InvalidDataException($"{path}: layer '{layer}' cannot be replaced by its quantized form: {why}.");
                ModuleTree.Replace(entry, q);
                parts.UnionWith(ModuleStateNames(layer));
            }

            // Everything else (float layers, biases, activation qparams, buffers) comes from the plain tensors.
            var state = model.state_dict();
            var missing = new List<string>();
            using (no_grad())
            {
                foreach (var (key, t) in state)
                {
                    if (!ckpt.Tensors.TryGetValue(key, out var stored))
                    {
                        if (!parts.Contains(key)) missing.Add(key);
                        continue;
                    }
                    if (!stored.shape.SequenceEqual(t.shape) || stored.dtype != t.dtype)
                        throw new InvalidDataException($"{path}: '{key}' is {stored.dtype} [{string.Join(", ", stored.shape)}] in the file but {t.dtype} [{string.Join(", ", t.shape)}] in the model.");
                    t.copy_(stored);
                }
            }
            if (missing.Count > 0)
                throw new InvalidDataException($"{path}: the file lacks {string.Join(", ", missing.Take(5))}{(missing.Count > 5 ? $" and {missing.Count - 5} more" : "")} of the factory's model.");
            var extra = ckpt.Tensors.Keys.Where(k => !state.ContainsKey(k)).ToList();
            if (extra.Count > 0)
                throw new InvalidDataException($"{path}: the file has tensors the factory's model lacks: {string.Join(", ", extra.Take(5))}. The factory must build the architecture the file was saved from.");
            if (ckpt.Metadata.TryGetValue(QuantizedCheckpoint.ConfigKey, out string? recipe))
            {
                try { Quantizer.SetRecipe(model, QuantizationRecipe.FromJson(recipe, $"{path}: {QuantizedCheckpoint.ConfigKey}")); }
                catch (InvalidDataException) { } // an older recipe form: the model loads, Save then records no recipe
            }
            model.eval();
            ok = true;
            return model;
        }
        finally
        {
            if (!ok) model.Dispose();
        }
    }

    private static ActivationQuantization? ReadActivation(QuantizedCheckpoint ckpt, string layer, QuantSpec? input, string path)
    {
        if (input is null) return null;
        if (!ckpt.Tensors.TryGetValue(layer + ".input_scale", out var s) || !ckpt.Tensors.TryGetValue(layer + ".input_zero_point", out var z))
            throw new InvalidDataException($"{path}: layer '{layer}' records input quantization but '{layer}.input_scale' or '{layer}.input_zero_point' is missing.");
        return new ActivationQuantization(input.Type, input.Scheme, input.ReduceRange, s.to(ScalarType.Float32).item<float>(), z.to(ScalarType.Int32).item<int>());
    }
}
