using QuantSharp.Modules;
using QuantSharp.Pipeline;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp;

/// <summary>
/// Quantization-aware training (QAT): <see cref="Prepare{T}"/> puts fake quantization into a float model with the same
/// <see cref="QuantizationRecipe"/> (selection, overrides, group-size fallback) as <see cref="Quantizer"/>; the user
/// trains it with ordinary TorchSharp optimizers and losses; <see cref="Convert{T}"/> replaces each prepared layer with
/// the quantized module post-training quantization would make, storing the trained weights with the learned (or last
/// observed) scales, so <see cref="Quantizer.Save"/> writes the same checkpoint format.
/// </summary>
/// <example>
/// <code>
/// var recipe = QuantizationRecipe.Int4WeightOnly(groupSize: 32);
/// var qat = QuantizationAwareTraining.Prepare(model, recipe, factory: () => new MyNet(),
///     options: new FakeQuantizeOptions { Learnable = true });
/// var opt = torch.optim.Adam(qat.parameters(), 1e-4);
/// // ... train qat as usual ...
/// QuantizationAwareTraining.Convert(qat);
/// Quantizer.Save(qat, "mynet.int4.safetensors");
/// </code>
/// </example>
public static class QuantizationAwareTraining
{
    /// <summary>
    /// Returns a copy of <paramref name="model"/> (or the model itself with <paramref name="inPlace"/>) whose selected
    /// <c>Linear</c>, <c>Conv1d</c> and <c>Conv2d</c> layers are <see cref="QatLayer"/>s with weight fake quantization.
    /// </summary>
    /// <param name="model">The float model.</param>
    /// <param name="recipe">The weight recipe (integer types: int8, uint8, int4, uint4, int2, uint2).</param>
    /// <param name="factory">Builds a fresh float model of the same architecture (needed unless <paramref name="inPlace"/>).</param>
    /// <param name="inPlace">Prepare <paramref name="model"/> itself.</param>
    /// <param name="options">Fake-quantize options; null: straight-through with the recipe's weight observer
    /// (<see cref="FakeQuantizeOptions.Learnable"/> for LSQ).</param>
    /// <returns>The prepared model, in training mode.</returns>
    /// <exception cref="RecipeException">A float or dynamic-activation recipe, or an invalid one.</exception>
    /// <exception cref="ModelQuantizationException">A bare layer (the model is itself a Linear, Conv1d or Conv2d), nothing to prepare, an already prepared layer, or a selected layer whose
    /// parent cannot hold another module type.</exception>
    /// <exception cref="ArgumentException">No factory without <paramref name="inPlace"/>.</exception>
    public static T Prepare<T>(T model, QuantizationRecipe recipe, Func<T>? factory = null, bool inPlace = false, FakeQuantizeOptions? options = null)
        where T : nn.Module
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(recipe);
        var planner = new RecipePlanner(recipe);
        options ??= new FakeQuantizeOptions { Observer = recipe.WeightObserver };
        if (recipe.DynamicActivations)
            throw new RecipeException("Dynamic activation quantization has no parameters to train: prepare the weight recipe (DynamicActivations = false) " +
                "and set it again after Convert, or use static Activations.");
        // A bare layer has no parent to be replaced in (as for Quantizer.Quantize).
        if (ModuleTree.IsBareLayer(model, Preparable))
            throw new ModelQuantizationException($"{model.GetType().Name} is itself a layer, and Prepare replaces the layers inside a model: " +
                "put it in a model (e.g. nn.Sequential((\"layer\", layer))) and prepare that.");
        // Static activations: each prepared layer fake-quantizes its input per tensor with the recipe's activation spec and
        // the layer's activation observer (an override's, else the recipe's; learned with LSQ like the weight); Convert
        // stores that scale and zero point as the layer's input quantization.
        if (!inPlace && factory is null)
            throw new ArgumentException("Prepare returns a prepared copy: pass factory: () => new YourModel(...), or inPlace: true to prepare this model itself.", nameof(factory));

        // Plan on the original (read-only), so that errors come before any copy is made.
        var planned = new List<(string Name, QuantSpec Spec, FakeQuantizeOptions? InputOptions)>();
        foreach (var e in ModuleTree.Walk(model))
        {
            if (e.Module is QatLayer or QuantizedModule)
                throw new ModelQuantizationException($"Layer '{e.Name}' is already prepared or quantized; prepare the float model.");
            if (!Preparable(e.Module)) continue;
            string type = e.Module.GetType().Name;
            var w = QuantizedModules.Parameter(e.Module, "weight");
            if (w is null) continue;
            string weightName = e.Name + ".weight";
            if (planner.NotSelected(weightName, type, w.numel()) is not null) continue;
            var spec = planner.Plan(weightName, type, w.shape).Spec;
            if (!spec.Type.IsInteger())
                throw new RecipeException($"'{weightName}' would be {spec.Type.ToName()}, a plain cast: quantization-aware training simulates integer types (int8, uint8, int4, uint4, int2, uint2).");
            if (ModuleTree.CannotReplace(e, typeof(QatLayer)) is { } why)
                throw new ModelQuantizationException($"Cannot prepare layer '{e.Name}': {why}. Declare it as Module<Tensor, Tensor> or exclude it.");
            var inputOptions = recipe.Activations is null ? null
                : options with { Observer = recipe.ActivationObserverFor(weightName, type, recipe.Activations).Observer };
            planned.Add((e.Name, spec, inputOptions));
        }
        if (planned.Count == 0)
            throw new ModelQuantizationException($"Nothing to prepare in {model.GetType().Name}: no selected Linear, Conv1d or Conv2d layer.");

        T work = inPlace ? model : (T)Quantizer.Copy(model, () => factory!());
        var entries = ModuleTree.Walk(work).ToDictionary(e => e.Name, StringComparer.Ordinal);
        foreach (var (name, spec, inputOptions) in planned)
            ModuleTree.Replace(entries[name], new QatLayer(entries[name].Module, spec, options, recipe.Activations, inputOptions));
        Quantizer.SetRecipe(work, recipe);
        work.train();
        return work;
    }

    /// <summary>
    /// Replaces every <see cref="QatLayer"/> of <paramref name="model"/> (in place) with the registered quantized module
    /// holding the trained weight quantized with the layer's scales and zero points; the model is switched to eval mode.
    /// </summary>
    /// <param name="model">A model prepared by <see cref="Prepare{T}"/> and trained.</param>
    /// <returns><paramref name="model"/>, ready for <see cref="Quantizer.Save"/>.</returns>
    /// <exception cref="ModelQuantizationException">The model has no prepared layer (or was converted already).</exception>
    public static T Convert<T>(T model) where T : nn.Module
    {
        ArgumentNullException.ThrowIfNull(model);
        var layers = ModuleTree.Walk(model).Where(e => e.Module is QatLayer).ToList();
        if (layers.Count == 0)
            throw new ModelQuantizationException(ModuleTree.Walk(model).Any(e => e.Module is QuantizedModule)
                ? $"{model.GetType().Name} is already converted (its layers are quantized); Convert runs once, on a prepared model: save this one with Quantizer.Save."
                : $"{model.GetType().Name} has no layer prepared for quantization-aware training; call QuantizationAwareTraining.Prepare first.");
        foreach (var e in layers)
        {
            var qat = (QatLayer)e.Module;
            var handler = QuantizedModules.HandlerFor(qat.FloatModule.GetType())!;
            var weight = qat.ToQuantizedWeight();
            var q = handler.Create(qat.FloatModule, weight, handler.QuantizesInput ? qat.ToInputQuantization() : null);
            q.LayerName = e.Name;
            q.FloatTypeName = qat.FloatModule.GetType().Name;
            ModuleTree.Replace(e, q);
        }
        model.eval();
        return model;
    }

    /// <summary>The layer types <see cref="Prepare{T}"/> replaces.</summary>
    private static bool Preparable(nn.Module module) =>
        module is TorchSharp.Modules.Linear or TorchSharp.Modules.Conv1d or TorchSharp.Modules.Conv2d;
}
