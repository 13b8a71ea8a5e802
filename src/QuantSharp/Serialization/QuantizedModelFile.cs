using System.Text.Json;
using System.Text.Json.Nodes;
using QuantSharp.Modules;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Serialization;

/// <summary>
/// Saves a model quantized by <see cref="Quantizer"/> as a <see cref="QuantizedCheckpoint"/> and rebuilds it from the
/// file and a factory of the float architecture.
/// </summary>
/// <remarks>
/// Every entry of the model's <c>state_dict</c> is stored under its own name, except that each quantized weight
/// (the parts named by <see cref="QuantizedWeightNames.InModule"/>) becomes one quantized tensor in its canonical
/// form (<see cref="QuantizedWeight.ToCanonical"/>): <c>x.weight</c> (data), <c>x.weight.scale</c>,
/// <c>x.weight.zero_point</c>. A weight shared by two layers (tied) is stored once, under the first name.
/// <see cref="ModulesKey"/> records, per quantized layer: the float module type, the mechanism (<c>replace</c>:
/// swapped for a quantized module; <c>materialize</c>: float module kept, weights materialized around its forward),
/// each quantized parameter's original shape and dtype (and <c>tied_to</c> for a shared weight), and the input
/// (activation) quantization, whose scale and zero point are the plain tensors <c>x.input_scale</c> and
/// <c>x.input_zero_point</c>.
/// </remarks>
internal static class QuantizedModelFile
{
    /// <summary>Metadata key with the JSON object: layer name -> { kind, mechanism, weights, input }.</summary>
    public const string ModulesKey = "quantsharp_model.modules";

    private const string Replace = "replace";
    private const string Materialize = "materialize";

    public static void Save(nn.Module model, string path)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        var holders = ModuleTree.Walk(model).Select(e => (e.Name, e.Module, Weights: ModuleQuantization.WeightsOf(e.Module))).Where(h => h.Weights.Count > 0).ToList();
        if (holders.Count == 0)
            throw new ArgumentException("The model has no quantized layers; quantize it with Quantizer.Quantize before saving.", nameof(model));

        var modules = new JsonObject();
        var owned = new List<QuantizedTensor>();
        try
        {
            var data = new Dictionary<string, QuantizedTensor>(StringComparer.Ordinal); // module-state key of the data -> canonical parts
            var skip = new HashSet<string>(StringComparer.Ordinal);
            var firstName = new Dictionary<QuantizedWeight, string>(ReferenceEqualityComparer.Instance);
            var layerInfo = new Dictionary<string, QuantizedLayerInfo>(StringComparer.Ordinal); // per-layer entry of each stored weight
            foreach (var (name, module, weights) in holders)
            {
                var infos = new JsonObject();
                foreach (var (param, w) in weights)
                {
                    string full = name + "." + param;
                    var info = new JsonObject
                    {
                        ["shape"] = new JsonArray(w.Shape.Select(d => (JsonNode)JsonValue.Create(d)).ToArray()),
                        ["dtype"] = w.OriginalDType.ToString(),
                    };
                    if (firstName.TryGetValue(w, out string? first))
                    {
                        info["tied_to"] = first;
                        foreach (var part in QuantizedWeightNames.Parts) skip.Add(name + "." + QuantizedWeightNames.InModule(param, part));
                    }
                    else
                    {
                        firstName[w] = full;
                        var qt = w.Layout.CanonicalView(); // the stored parts themselves: no copy of the model's weights
                        owned.Add(qt);
                        data[name + "." + QuantizedWeightNames.InModule(param, WeightPart.Data)] = qt;
                        layerInfo[name + "." + QuantizedWeightNames.InModule(param, WeightPart.Data)] = LayerInfo(w, (module as QuantizedModule)?.InputQuantization);
                        skip.Add(name + "." + QuantizedWeightNames.InModule(param, WeightPart.Scale));
                        skip.Add(name + "." + QuantizedWeightNames.InModule(param, WeightPart.ZeroPoint));
                    }
                    infos[param] = info;
                }
                var q = module as QuantizedModule;
                modules[name] = new JsonObject
                {
                    ["kind"] = q is null ? module.GetType().Name : q.FloatTypeName
                        ?? throw new ArgumentException($"Layer '{name}' ({q.GetType().Name}) was not made by Quantizer.Quantize, so the float type it stands for is unknown; save models quantized by Quantizer.Quantize.", nameof(model)),
                    ["mechanism"] = q is null ? Materialize : Replace,
                    ["weights"] = infos,
                    ["input"] = q?.InputQuantization is { } a
                        ? new JsonObject { ["type"] = a.Type.ToName(), ["scheme"] = a.Scheme.ToString().ToLowerInvariant(), ["reduce_range"] = a.ReduceRange }
                        : null,
                };
            }
            var entries = new List<CheckpointEntry>();
            foreach (var (key, t) in model.state_dict())
            {
                if (skip.Contains(key)) continue;
                // The data part's module-state key is the file's tensor name (QuantizedWeightNames: the parameter's name).
                entries.Add(data.TryGetValue(key, out var qt) ? CheckpointEntry.Of(key, qt, layerInfo[key]) : CheckpointEntry.Plain(key, t));
            }
            QuantizedCheckpoint.Save(path, entries, new Dictionary<string, string> { [ModulesKey] = modules.ToJsonString() },
                Quantizer.RecipeOf(model)?.ToJsonNode());
        }
        finally
        {
            foreach (var q in owned) q.Dispose();
        }
    }

    public static nn.Module Load(Func<nn.Module> factory, string path)
    {
        ArgumentNullException.ThrowIfNull(factory);
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        using var ckpt = QuantizedCheckpoint.Load(path);
        JsonObject? modules = null;
        if (ckpt.Metadata.TryGetValue(ModulesKey, out string? json))
        {
            try
            {
                using (var doc = JsonDocument.Parse(json))
                {
                    if (StrictJson.FirstDuplicateKeyAnywhere(doc.RootElement) is { } dup)
                        throw new QuantizedFileException($"{path}: '{ModulesKey}' has the key '{dup}' twice; save the model again with Quantizer.Save.");
                }
                modules = JsonNode.Parse(json) as JsonObject ?? throw new QuantizedFileException($"{path}: '{ModulesKey}' is not a JSON object.");
            }
            catch (JsonException ex)
            {
                throw new QuantizedFileException($"{path}: '{ModulesKey}' is not valid JSON ({ExceptionText.Clause(ex)}).", ex);
            }
        }

        var model = factory() ?? throw new ArgumentException("The model factory returned null.", nameof(factory));
        bool ok = false;
        try
        {
            var entries = ModuleTree.Walk(model).ToDictionary(e => e.Name, StringComparer.Ordinal);
            // A file written by `quantsharp quantize` (no model structure recorded): each quantized tensor is the
            // parameter of the factory's layer that owns it, replaced where it can be, materialized otherwise.
            modules ??= Describe(ckpt, entries, path);
            var built = new Dictionary<string, QuantizedWeight>(StringComparer.Ordinal);
            var quantizedKeys = new HashSet<string>(StringComparer.Ordinal);
            foreach (var (name, node) in modules)
            {
                if (!entries.TryGetValue(name, out var entry))
                    throw new QuantizedFileException($"{path}: quantized layer '{name}' does not exist in the factory's {model.GetType().Name}. " +
                        $"Closest names: {string.Join(", ", NameGlob.Closest(name, entries.Keys))}. The factory must build the architecture the file was saved from.");
                var info = node!.AsObject();
                string kind = info["kind"]!.GetValue<string>();
                var floatModule = entry.Module;
                string actual = floatModule.GetType().Name;
                if (actual != kind)
                    throw new QuantizedFileException($"{path}: layer '{name}' was a {kind} but the factory's model has a {actual} there.");
                var weights = new List<(string Name, QuantizedWeight Weight)>();
                foreach (var (param, wnode) in info["weights"]!.AsObject())
                {
                    string full = name + "." + param;
                    foreach (var part in QuantizedWeightNames.Parts) quantizedKeys.Add(name + "." + QuantizedWeightNames.InModule(param, part));
                    var winfo = wnode!.AsObject();
                    long[] shape = winfo["shape"]!.AsArray().Select(d => d!.GetValue<long>()).ToArray();
                    var floatWeight = QuantizedModules.Parameter(floatModule, param);
                    string? tiedTo = winfo["tied_to"]?.GetValue<string>();
                    // A tied twin of a materialized weight is already emptied: its shape is the stored weight's.
                    if (floatWeight is null || (tiedTo is null && !floatWeight.shape.SequenceEqual(shape)))
                        throw new QuantizedFileException($"{path}: '{full}' has shape {QuantSpec.FormatShape(shape)} in the file but " +
                            $"{(floatWeight is null ? "does not exist" : QuantSpec.FormatShape(floatWeight.shape))} in the factory's model.");
                    QuantizedWeight w;
                    if (tiedTo is not null)
                    {
                        w = built.GetValueOrDefault(tiedTo) ?? throw new QuantizedFileException($"{path}: '{full}' is tied to '{tiedTo}', which is not stored before it.");
                    }
                    else
                    {
                        if (!ckpt.Quantized.TryGetValue(full, out var qt))
                            throw new QuantizedFileException($"{path}: quantized layer '{name}' has no quantized tensor '{full}'.");
                        var dtype = Enum.Parse<ScalarType>(winfo["dtype"]!.GetValue<string>());
                        // Aliases keep the tensors read from the file alive after the checkpoint is disposed: no copy.
                        var parts = QuantizedTensor.FromParts(qt.Spec, qt.Shape, qt.Data.alias(), qt.Scale?.alias(), qt.ZeroPoint?.alias());
                        try
                        {
                            w = QuantizedWeight.FromCanonical(parts, shape, dtype);
                        }
                        catch (ArgumentException ex)
                        {
                            parts.Dispose();
                            throw new QuantizedFileException($"{path}: '{full}': {ex.Message}", ex);
                        }
                    }
                    if (ckpt.Layers.TryGetValue(full, out var recorded) && tiedTo is null)
                    {
                        // What the file says about the weight goes back into it, so that saving again writes the same entry.
                        w.SqnrDb = recorded.SqnrDb;
                        w.CalibrationOutputSqnrDb = recorded.CalibrationOutputSqnrDb;
                        w.Observer = recorded.Observer;
                    }
                    built[full] = w;
                    weights.Add((param, w));
                }
                if (info["mechanism"]?.GetValue<string>() == Materialize)
                {
                    MaterializedWeights.Attach(floatModule, weights);
                    continue;
                }
                var handler = QuantizedModules.HandlerFor(floatModule.GetType())
                    ?? throw new QuantizedFileException($"{path}: layer '{name}' is a {actual}, which has no quantized module registered (QuantizedModules.Register).");
                var q = handler.Create(floatModule, weights[0].Weight, ReadActivation(ckpt, name, info["input"]));
                q.LayerName = name;
                q.FloatTypeName = actual;
                ModuleTree.Replace(entry, q);
            }

            // Everything else (float layers, biases, activation qparams, buffers) comes from the plain tensors.
            var state = model.state_dict();
            var missing = new List<string>();
            using (no_grad())
            {
                foreach (var (key, t) in state)
                {
                    if (quantizedKeys.Contains(key)) continue;
                    if (!ckpt.Tensors.TryGetValue(key, out var stored))
                    {
                        missing.Add(key);
                        continue;
                    }
                    if (!stored.shape.SequenceEqual(t.shape) || stored.dtype != t.dtype)
                        throw new QuantizedFileException($"{path}: '{key}' is {stored.dtype} [{string.Join(", ", stored.shape)}] in the file but {t.dtype} [{string.Join(", ", t.shape)}] in the model.");
                    t.copy_(stored);
                }
            }
            if (missing.Count > 0)
                throw new QuantizedFileException($"{path}: the file lacks {string.Join(", ", missing.Take(5))}{(missing.Count > 5 ? $" and {missing.Count - 5} more" : "")} of the factory's model.");
            var extra = ckpt.Tensors.Keys.Where(k => !state.ContainsKey(k)).ToList();
            if (extra.Count > 0)
                throw new QuantizedFileException($"{path}: the file has tensors the factory's model lacks: {string.Join(", ", extra.Take(5))}. The factory must build the architecture the file was saved from.");
            if (ckpt.Metadata.TryGetValue(QuantizedCheckpoint.ConfigKey, out string? recipe))
            {
                try { Quantizer.SetRecipe(model, QuantizationRecipe.FromJson(recipe, $"{path}: {QuantizedCheckpoint.ConfigKey}")); }
                catch (RecipeException) { } // an older recipe form: the model loads; Save then records no recipe
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

    /// <summary>The per-layer entry of a stored weight (the same fields the checkpoint path records).</summary>
    private static QuantizedLayerInfo LayerInfo(QuantizedWeight w, ActivationQuantization? input)
    {
        var spec = w.Spec;
        bool integer = spec.Type.IsInteger();
        return new QuantizedLayerInfo(SafetensorsDTypeInfo.FromScalarType(w.OriginalDType), [.. w.Shape], spec.Type, integer ? spec.Scheme : null,
            integer ? spec.Granularity : null, spec.ReduceRange, integer ? w.Observer : null, w.SqnrDb)
        {
            Input = input is null ? null : new QuantSpec(input.Type, input.Scheme, Granularity.Tensor, input.ReduceRange),
            CalibrationOutputSqnrDb = w.CalibrationOutputSqnrDb,
        };
    }

    /// <summary>The module structure of a file that records none (<c>quantsharp quantize</c> output), from the factory's model.</summary>
    private static JsonObject Describe(QuantizedCheckpoint ckpt, Dictionary<string, ModuleEntry> entries, string path)
    {
        var modules = new JsonObject();
        foreach (var (tensor, info) in ckpt.Layers)
        {
            // The owning layer: the longest dotted prefix that is a quantizable layer of the model.
            ModuleEntry? entry = null;
            string param = tensor;
            for (int dot = tensor.LastIndexOf('.'); dot > 0 && entry is null; dot = tensor.LastIndexOf('.', dot - 1))
            {
                if (entries.TryGetValue(tensor[..dot], out var e) && (QuantizedModules.HandlerFor(e.Module.GetType()) is not null
                    || QuantizedModules.MaterializedFilter(e.Module.GetType()) is not null))
                {
                    entry = e;
                    param = tensor[(dot + 1)..];
                }
            }
            if (entry is null)
                throw new QuantizedFileException($"{path}: quantized tensor '{tensor}' is not a parameter of a quantizable layer of the factory's model " +
                    $"(closest layer names: {string.Join(", ", NameGlob.Closest(tensor, entries.Keys))}). The factory must build the architecture the file was made from.");
            var type = entry.Module.GetType();
            var handler = QuantizedModules.HandlerFor(type);
            bool replace = handler is not null && handler.WeightName == param && ModuleTree.CannotReplace(entry, typeof(QuantizedModule)) is null;
            if (modules[entry.Name] is not JsonObject node)
            {
                node = new JsonObject
                {
                    ["kind"] = type.Name,
                    ["mechanism"] = replace ? Replace : Materialize,
                    ["weights"] = new JsonObject(),
                    ["input"] = info.Input is { } a
                        ? new JsonObject { ["type"] = a.Type.ToName(), ["scheme"] = QuantizationRecipe.SchemeName(a.Scheme), ["reduce_range"] = a.ReduceRange }
                        : null,
                };
                modules[entry.Name] = node;
            }
            node["weights"]![param] = new JsonObject
            {
                ["shape"] = new JsonArray(info.Shape.Select(d => (JsonNode)JsonValue.Create(d)).ToArray()),
                ["dtype"] = (info.OriginalDType.ToScalarType() ?? ScalarType.Float32).ToString(),
            };
        }
        return modules;
    }

    private static ActivationQuantization? ReadActivation(QuantizedCheckpoint ckpt, string name, JsonNode? node)
    {
        if (node is null) return null;
        var o = node.AsObject();
        var type = QuantTypeInfo.Parse(o["type"]!.GetValue<string>());
        var scheme = Enum.Parse<QuantScheme>(o["scheme"]!.GetValue<string>(), ignoreCase: true);
        bool reduce = o["reduce_range"]?.GetValue<bool>() ?? false;
        if (!ckpt.Tensors.TryGetValue(name + ".input_scale", out var s) || !ckpt.Tensors.TryGetValue(name + ".input_zero_point", out var z))
            throw new QuantizedFileException($"Layer '{name}' records input quantization but '{name}.input_scale' or '{name}.input_zero_point' is missing.");
        return new ActivationQuantization(type, scheme, reduce, s.to(ScalarType.Float32).item<float>(), z.to(ScalarType.Int32).item<int>());
    }
}
