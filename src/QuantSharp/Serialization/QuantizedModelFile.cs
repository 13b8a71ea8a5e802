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
/// Every entry of the model's <c>state_dict</c> is stored under its own name, except that a quantized layer's
/// <c>x.weight</c>, <c>x.weight_scale</c>, <c>x.weight_zero_point</c> buffers become one quantized tensor in the
/// checkpoint format: <c>x.weight</c> (data), <c>x.weight.scale</c>, <c>x.weight.zero_point</c>. Convolution weights
/// with an integer type are stored as the matrix <c>[out, in/groups * kernel]</c> (the axis their groups and packing
/// run along); <see cref="ModulesKey"/> records each quantized layer's kind, original weight shape and input
/// (activation) quantization, whose scale and zero point are the plain tensors <c>x.input_scale</c> and
/// <c>x.input_zero_point</c>.
/// </remarks>
internal static class QuantizedModelFile
{
    /// <summary>Metadata key with the JSON object: layer name -> { kind, weight_shape, input }.</summary>
    public const string ModulesKey = "quantsharp_model.modules";

    public static void Save(nn.Module model, string path)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        var quantized = ModuleTree.Walk(model).Where(e => e.Module is QuantizedModule).ToList();
        if (quantized.Count == 0)
            throw new ArgumentException("The model has no quantized layers; quantize it with Quantizer.Quantize before saving.", nameof(model));

        var modules = new JsonObject();
        var owned = new List<QuantizedTensor>();
        try
        {
            var byWeight = new Dictionary<string, QuantizedModule>(StringComparer.Ordinal);
            var skip = new HashSet<string>(StringComparer.Ordinal);
            foreach (var e in quantized)
            {
                var q = (QuantizedModule)e.Module;
                byWeight[e.Name + ".weight"] = q;
                skip.Add(e.Name + ".weight_scale");
                skip.Add(e.Name + ".weight_zero_point");
                modules[e.Name] = new JsonObject
                {
                    ["kind"] = Kind(q),
                    ["weight_shape"] = new JsonArray(q.WeightShape.Select(d => (JsonNode)JsonValue.Create(d)).ToArray()),
                    ["input"] = q.InputQuantization is { } a
                        ? new JsonObject { ["type"] = a.Type.ToName(), ["scheme"] = a.Scheme.ToString().ToLowerInvariant(), ["reduce_range"] = a.ReduceRange }
                        : null,
                };
            }
            var entries = new List<CheckpointEntry>();
            foreach (var (name, t) in model.state_dict())
            {
                if (skip.Contains(name)) continue;
                if (byWeight.TryGetValue(name, out var q))
                {
                    var qt = QuantizedTensor.FromParts(q.WeightSpec, q.StorageShape, q.WeightData.detach().clone(),
                        q.WeightScale?.detach().clone(), q.WeightZeroPoint?.detach().clone());
                    owned.Add(qt);
                    entries.Add(CheckpointEntry.Of(name, qt));
                }
                else
                {
                    entries.Add(CheckpointEntry.Plain(name, t));
                }
            }
            QuantizedCheckpoint.Save(path, entries, new Dictionary<string, string> { [ModulesKey] = modules.ToJsonString() });
        }
        finally
        {
            foreach (var q in owned) q.Dispose();
        }
    }

    private static string Kind(QuantizedModule q) => q switch
    {
        QuantizedLinear => "Linear",
        QuantizedEmbedding => "Embedding",
        QuantizedConv c => c.SpatialDims == 1 ? "Conv1d" : "Conv2d",
        _ => throw new InvalidOperationException($"Unknown quantized module {q.GetType().Name}."),
    };

    public static nn.Module Load(Func<nn.Module> factory, string path)
    {
        ArgumentNullException.ThrowIfNull(factory);
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        using var ckpt = QuantizedCheckpoint.Load(path);
        if (!ckpt.Metadata.TryGetValue(ModulesKey, out string? json))
            throw new InvalidDataException($"{path}: no '{ModulesKey}' metadata; this checkpoint was not written by Quantizer.Save (load it with QuantizedCheckpoint.Load instead).");
        JsonObject modules;
        try
        {
            modules = JsonNode.Parse(json) as JsonObject ?? throw new InvalidDataException($"{path}: '{ModulesKey}' is not a JSON object.");
        }
        catch (JsonException ex)
        {
            throw new InvalidDataException($"{path}: '{ModulesKey}' is not valid JSON ({ex.Message}).", ex);
        }

        var model = factory() ?? throw new ArgumentException("The model factory returned null.", nameof(factory));
        bool ok = false;
        try
        {
            var entries = ModuleTree.Walk(model).ToDictionary(e => e.Name, StringComparer.Ordinal);
            foreach (var (name, node) in modules)
            {
                if (!entries.TryGetValue(name, out var entry))
                    throw new InvalidDataException($"{path}: quantized layer '{name}' does not exist in the factory's {model.GetType().Name}. " +
                        $"Closest names: {string.Join(", ", NameGlob.Closest(name, entries.Keys))}. The factory must build the architecture the file was saved from.");
                var info = node!.AsObject();
                string kind = info["kind"]!.GetValue<string>();
                long[] weightShape = info["weight_shape"]!.AsArray().Select(d => d!.GetValue<long>()).ToArray();
                var floatModule = entry.Module;
                string actual = floatModule.GetType().Name;
                if (actual != kind)
                    throw new InvalidDataException($"{path}: layer '{name}' was a {kind} but the factory's model has a {actual} there.");
                if (!ckpt.Quantized.TryGetValue(name + ".weight", out var qt))
                    throw new InvalidDataException($"{path}: quantized layer '{name}' has no quantized tensor '{name}.weight'.");
                var floatWeight = floatModule.named_parameters(recurse: false).FirstOrDefault(p => p.name == "weight").parameter;
                if (floatWeight is null || !floatWeight.shape.SequenceEqual(weightShape))
                    throw new InvalidDataException($"{path}: layer '{name}' has weight shape [{string.Join(", ", weightShape)}] in the file but " +
                        $"[{string.Join(", ", floatWeight?.shape ?? [])}] in the factory's model.");
                var act = ReadActivation(ckpt, name, info["input"]);
                Tensor? bias = ckpt.Tensors.TryGetValue(name + ".bias", out var b) ? b.detach().clone() : null;
                var spec = qt.Spec;
                var data = qt.Data.detach().clone();
                var scale = qt.Scale?.detach().clone();
                var zp = qt.ZeroPoint?.detach().clone();
                QuantizedModule q = floatModule switch
                {
                    TorchSharp.Modules.Linear => new QuantizedLinear(spec, weightShape, data, scale, zp, bias, act),
                    TorchSharp.Modules.Embedding => new QuantizedEmbedding(spec, weightShape, data, scale, zp),
                    TorchSharp.Modules.Convolution c => QuantizedConv.FromParts(c, spec, data, scale, zp, bias, act),
                    _ => throw new InvalidDataException($"{path}: layer '{name}' is a {actual}, which QuantSharp does not quantize."),
                };
                q.LayerName = name;
                ModuleTree.Replace(entry, q);
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
                        if (!IsQuantizedPart(key, modules)) missing.Add(key);
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
            model.eval();
            ok = true;
            return model;
        }
        finally
        {
            if (!ok) model.Dispose();
        }
    }

    private static bool IsQuantizedPart(string key, JsonObject modules)
    {
        foreach (var (name, _) in modules)
            if (key == name + ".weight" || key == name + ".weight_scale" || key == name + ".weight_zero_point") return true;
        return false;
    }

    private static ActivationQuantization? ReadActivation(QuantizedCheckpoint ckpt, string name, JsonNode? node)
    {
        if (node is null) return null;
        var o = node.AsObject();
        var type = QuantTypeInfo.Parse(o["type"]!.GetValue<string>());
        var scheme = Enum.Parse<QuantScheme>(o["scheme"]!.GetValue<string>(), ignoreCase: true);
        bool reduce = o["reduce_range"]?.GetValue<bool>() ?? false;
        if (!ckpt.Tensors.TryGetValue(name + ".input_scale", out var s) || !ckpt.Tensors.TryGetValue(name + ".input_zero_point", out var z))
            throw new InvalidDataException($"Layer '{name}' records input quantization but '{name}.input_scale' or '{name}.input_zero_point' is missing.");
        return new ActivationQuantization(type, scheme, reduce, s.to(ScalarType.Float32).item<float>(), z.to(ScalarType.Int32).item<int>());
    }
}
