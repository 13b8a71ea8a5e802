using QuantSharp.Calibration;
using QuantSharp.Modules;
using QuantSharp.Pipeline;
using QuantSharp.Selection;
using QuantSharp.Serialization;
using QuantSharp.Tensors;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp;

/// <summary>A layer the quantizer replaced.</summary>
/// <param name="Name">Dotted layer name.</param>
/// <param name="ModuleType">The float module type (e.g. <c>Conv2d</c>).</param>
/// <param name="Weights">The weight spec used (the config's or an override's).</param>
/// <param name="Input">The calibrated input quantization, or null (weight-only).</param>
/// <param name="FloatBytes">Bytes of the float layer's parameters.</param>
/// <param name="QuantizedBytes">Bytes of the quantized layer's parameters and buffers.</param>
public sealed record QuantizedLayer(string Name, string ModuleType, QuantSpec Weights, ActivationQuantization? Input, long FloatBytes, long QuantizedBytes)
{
    /// <summary>Why <see cref="Weights"/> differs from what the recipe asked for this layer (a group-size or packing
    /// fallback, e.g. int4 to int8 per-channel for an odd reduction length), or null when it is as asked.</summary>
    public string? Fallback { get; init; }
}

/// <summary>What <see cref="Quantizer.Quantize{T}(T, QuantizationRecipe, Func{T}?, IEnumerable{Tensor}?, bool, QuantSpec?, int?, ValidationFailureMode?, IProgress{CalibrationProgress}?)"/> produced.</summary>
public class QuantizationResult
{
    internal QuantizationResult(nn.Module model, QuantizationRecipe recipe, IReadOnlyList<QuantizedLayer> layers, IReadOnlyList<SkippedLayer> skipped,
        QuantizationReport? report, IReadOnlyList<string> warnings, long calibrationSamples)
    {
        Model = model; Recipe = recipe; Layers = layers; Skipped = skipped; Report = report; Warnings = warnings; CalibrationSamples = calibrationSamples;
    }

    /// <summary>The quantized model (a new model built by the factory, or the caller's model when quantized in place); in eval mode.</summary>
    public nn.Module Model { get; }

    /// <summary>The effective recipe (explicit arguments applied); <see cref="Quantizer.Save"/> records it as <c>quantsharp.config</c>.</summary>
    public QuantizationRecipe Recipe { get; }

    /// <summary>The layers that were quantized, in model order.</summary>
    public IReadOnlyList<QuantizedLayer> Layers { get; }

    /// <summary>Layers that stay float, with the reason (unsupported type, excluded, cannot be swapped).</summary>
    public IReadOnlyList<SkippedLayer> Skipped { get; }

    /// <summary>The validation report, or null when validation was disabled.</summary>
    public QuantizationReport? Report { get; }

    /// <summary>
    /// Group-size fallbacks (one line per weight whose spec differs from the recipe's), layers left float for a reason
    /// other than the recipe's selection, layers whose input could not be quantized, and validation problems kept as
    /// warnings (<see cref="ValidationFailureMode.Warn"/>).
    /// </summary>
    public IReadOnlyList<string> Warnings { get; }

    /// <summary>Samples run through the model for calibration (0 without data).</summary>
    public long CalibrationSamples { get; }
}

/// <summary>What <c>Quantizer.Quantize</c> produced, with the model typed as the caller's model.</summary>
/// <typeparam name="T">The model type.</typeparam>
public sealed class QuantizationResult<T> : QuantizationResult where T : nn.Module
{
    internal QuantizationResult(T model, QuantizationRecipe recipe, IReadOnlyList<QuantizedLayer> layers, IReadOnlyList<SkippedLayer> skipped,
        QuantizationReport? report, IReadOnlyList<string> warnings, long calibrationSamples)
        : base(model, recipe, layers, skipped, report, warnings, calibrationSamples) { }

    /// <summary>The quantized model (see <see cref="QuantizationResult.Model"/>).</summary>
    public new T Model => (T)base.Model;
}

/// <summary>
/// The entry point: quantizes the Linear, Conv1d, Conv2d and Embedding layers of a TorchSharp model.
/// </summary>
/// <example>
/// <code>
/// var recipe = QuantizationRecipe.Int4WeightOnly(groupSize: 32) with
/// {
///     Overrides = [new("conv1", QuantType.Int8), new("fc2", QuantType.Int8)],   // int8 per-channel there
/// };
/// var result = Quantizer.Quantize(model, recipe, factory: () => new MyNet());
/// Console.WriteLine(result.Report);
/// Quantizer.Save(result.Model, "mynet.int4.safetensors");
/// MyNet reloaded = Quantizer.Load(() => new MyNet(), "mynet.int4.safetensors");
/// </code>
/// </example>
public static class Quantizer
{
    /// <summary>
    /// Returns a quantized copy of <paramref name="model"/> (or quantizes it in place with <paramref name="inPlace"/>).
    /// </summary>
    /// <remarks>
    /// <para>TorchSharp cannot deep-copy an arbitrary module, so a copy needs <paramref name="factory"/>: a function that
    /// builds a fresh float model of the same architecture (e.g. <c>() =&gt; new MyNet()</c>). The original's
    /// <c>state_dict</c> is loaded into it (separate storage) and its layers are then replaced; the caller's model is not
    /// modified (its hooks are not touched and it is never run). Without a factory, pass <c>inPlace: true</c>.</para>
    /// <para>The layer types are those registered in <see cref="QuantizedModules"/>. A layer is swapped for its quantized
    /// module through its parent where the parent can hold it: a <c>Sequential</c>, a <c>ModuleList</c>/<c>ModuleDict</c>
    /// of <c>Module&lt;Tensor, Tensor&gt;</c>, or a field declared as <c>Module&lt;Tensor, Tensor&gt;</c>. Elsewhere (a
    /// field declared as the sealed <c>Linear</c>, a <c>ModuleList&lt;Linear&gt;</c>) and for TorchSharp's native modules
    /// (<c>MultiheadAttention</c>, <c>TransformerEncoderLayer</c>, <c>LSTM</c>, <c>GRU</c>...) the float module is kept and
    /// its weights are stored quantized, materialized around each forward (docs/QUANTIZER.md compares the costs). Layers
    /// of other types with parameters stay float and are listed in <see cref="QuantizationResult.Skipped"/> and
    /// <see cref="QuantizationResult.Warnings"/>. A weight tied between layers is quantized once and stays shared.</para>
    /// <para>The plan follows the same rules as <see cref="CheckpointQuantizer"/> (weights addressed by parameter name,
    /// e.g. <c>fc1.weight</c>; see <see cref="QuantizationRecipe"/>), so <see cref="Save"/> then writes the file
    /// <c>quantsharp quantize</c> writes for the model's <c>state_dict</c> and the same recipe.</para>
    /// <para>Precedence: the explicit arguments <paramref name="weights"/>, <paramref name="calibrationSamples"/> and
    /// <paramref name="onFailure"/> override <paramref name="recipe"/>, which overrides the defaults.</para>
    /// <para>With <paramref name="inPlace"/>, the model is switched to eval mode and its layers are replaced before the
    /// validation runs: if validation then throws, the model is already quantized (the exception carries the report).
    /// Recipe, layer-name and data errors are all detected before any layer is replaced.</para>
    /// <para>The quantizer never disposes the calibration tensors it is given.</para>
    /// <para>Calibration runs <paramref name="calibrationData"/> (inputs; use <see cref="CalibrationData.FromPairs"/> for
    /// (input, target) pairs) through the model in eval mode with forward hooks until at least
    /// <see cref="QuantizationRecipe.CalibrationSamples"/> samples (dimension 0) were seen. It is required for
    /// <see cref="QuantizationRecipe.Activations"/>; otherwise the first batch only feeds the validation report.</para>
    /// </remarks>
    /// <typeparam name="T">The model type (the result's <c>Model</c> has it).</typeparam>
    /// <param name="model">The float model (a <c>Module&lt;Tensor, Tensor&gt;</c> when data is run through it).</param>
    /// <param name="recipe">What to quantize and how.</param>
    /// <param name="factory">Builds a fresh float model of the same architecture; needed unless <paramref name="inPlace"/>, and for the reload check.</param>
    /// <param name="calibrationData">Calibration inputs (batches); may be null for weight-only quantization.</param>
    /// <param name="inPlace">Quantize <paramref name="model"/> itself instead of a copy.</param>
    /// <param name="weights">Overrides the recipe's weight type, scheme, granularity and reduce range.</param>
    /// <param name="calibrationSamples">Overrides <see cref="QuantizationRecipe.CalibrationSamples"/>.</param>
    /// <param name="onFailure">Overrides <see cref="ValidationPolicy.OnFailure"/>.</param>
    /// <param name="progress">Receives calibration progress after each batch.</param>
    /// <returns>The quantized model, what was quantized or skipped, and the validation report.</returns>
    /// <exception cref="RecipeException">Invalid recipe, a pattern that names no weight, a spec a weight cannot take.</exception>
    /// <exception cref="ModelQuantizationException">A bare layer (the model is itself a Linear, Conv2d, ...), no quantizable layer, an already quantized model, or data the method cannot use.</exception>
    /// <exception cref="ArgumentException">A missing or wrong factory, or missing calibration data the recipe needs.</exception>
    /// <exception cref="QuantizationValidationException">Validation failed with <see cref="ValidationFailureMode.Error"/>.</exception>
    public static QuantizationResult<T> Quantize<T>(
        T model,
        QuantizationRecipe recipe,
        Func<T>? factory = null,
        IEnumerable<Tensor>? calibrationData = null,
        bool inPlace = false,
        QuantSpec? weights = null,
        int? calibrationSamples = null,
        ValidationFailureMode? onFailure = null,
        IProgress<CalibrationProgress>? progress = null) where T : nn.Module =>
        QuantizeCore(model, recipe, factory,
            calibrationData?.Select(t => t is null || t.IsInvalid ? null! : CalibrationBatch.Of(t)), // null batches are reported by number
            inPlace, weights, calibrationSamples, onFailure, progress);

    /// <summary>
    /// Quantizes a model of any forward signature, calibrated by callbacks that run it on each batch (e.g. a model
    /// taking token ids and an attention mask). Otherwise as
    /// <see cref="Quantize{T}(T, QuantizationRecipe, Func{T}?, IEnumerable{Tensor}?, bool, QuantSpec?, int?, ValidationFailureMode?, IProgress{CalibrationProgress}?)"/>.
    /// </summary>
    /// <remarks>
    /// Each batch runs the float model during calibration, and its first batch runs the quantized and the reloaded
    /// models during validation (output SQNR, reload check); the layers observed are those that take and return one
    /// tensor (<c>Module&lt;Tensor, Tensor&gt;</c>, called with <c>call</c>).
    /// </remarks>
    /// <typeparam name="T">The model type (the result's <c>Model</c> has it).</typeparam>
    /// <param name="model">The float model.</param>
    /// <param name="recipe">What to quantize and how.</param>
    /// <param name="calibration">The batches (see <see cref="CalibrationBatch"/>).</param>
    /// <param name="factory">Builds a fresh float model of the same architecture; needed unless <paramref name="inPlace"/>, and for the reload check.</param>
    /// <param name="inPlace">Quantize <paramref name="model"/> itself instead of a copy.</param>
    /// <param name="weights">Overrides the recipe's weight type, scheme, granularity and reduce range.</param>
    /// <param name="calibrationSamples">Overrides <see cref="QuantizationRecipe.CalibrationSamples"/>.</param>
    /// <param name="onFailure">Overrides <see cref="ValidationPolicy.OnFailure"/>.</param>
    /// <param name="progress">Receives calibration progress after each batch.</param>
    /// <returns>The quantized model, what was quantized or skipped, and the validation report.</returns>
    /// <exception cref="RecipeException">Invalid recipe, a pattern that names no weight, a spec a weight cannot take.</exception>
    /// <exception cref="ModelQuantizationException">A bare layer (the model is itself a Linear, Conv2d, ...), no quantizable layer, an already quantized model, or a layer the calibration data never reaches.</exception>
    /// <exception cref="ArgumentException">A missing or wrong factory, empty data, or a batch the model fails on.</exception>
    /// <exception cref="QuantizationValidationException">Validation failed with <see cref="ValidationFailureMode.Error"/>.</exception>
    public static QuantizationResult<T> Quantize<T>(
        T model,
        QuantizationRecipe recipe,
        IEnumerable<CalibrationBatch> calibration,
        Func<T>? factory = null,
        bool inPlace = false,
        QuantSpec? weights = null,
        int? calibrationSamples = null,
        ValidationFailureMode? onFailure = null,
        IProgress<CalibrationProgress>? progress = null) where T : nn.Module
    {
        ArgumentNullException.ThrowIfNull(calibration);
        return QuantizeCore(model, recipe, factory, calibration, inPlace, weights, calibrationSamples, onFailure, progress);
    }

    /// <summary>
    /// Why <paramref name="model"/> cannot be quantized as a model when it is itself a quantizable layer with none
    /// inside it (a bare <c>Conv2d</c> or <c>Linear</c>): the quantizer replaces layers inside a model, and a root has no
    /// parent to be replaced in (torchao's <c>quantize_</c> swaps the weight instead, so a bare layer works there). Null
    /// otherwise.
    /// </summary>
    /// <param name="model">The model given.</param>
    /// <param name="gptq">True for GPTQ (<see cref="Gptq"/>, or a recipe whose method is GPTQ), which has no single-layer form.</param>
    internal static string? BareLayer(nn.Module model, bool gptq = false)
    {
        var type = model.GetType();
        if (!ModuleTree.IsBareLayer(model, m => QuantizedModules.IsRegistered(m.GetType()))) return null;
        const string wrap = "put it in a model (e.g. nn.Sequential((\"layer\", layer))) and quantize that";
        return gptq
            ? $"{type.Name} is itself a layer, and Gptq.Quantize replaces the layers inside a model: {wrap}."
            : $"{type.Name} is itself a layer, and Quantizer.Quantize replaces the layers inside a model: quantize one layer with " +
              "QuantizedModules.Quantize(layer, recipe.BaseWeights) (namespace QuantSharp.Modules; it returns the quantized layer and " +
              $"leaves this one unchanged), or {wrap}.";
    }

    /// <summary>The one quantization path; <paramref name="method"/> replaces the recipe's weight quantizer (GPTQ).</summary>
    internal static QuantizationResult<T> QuantizeCore<T>(T model, QuantizationRecipe recipe, Func<T>? factory,
        IEnumerable<CalibrationBatch>? calibrationData, bool inPlace, QuantSpec? weights, int? calibrationSamples,
        ValidationFailureMode? onFailure, IProgress<CalibrationProgress>? progress, IWeightQuantizer? method = null) where T : nn.Module
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(recipe);
        var cfg = weights is null ? recipe : recipe.WithWeights(weights);
        cfg = cfg with
        {
            CalibrationSamples = calibrationSamples ?? cfg.CalibrationSamples,
            Validation = cfg.Validation with { OnFailure = onFailure ?? cfg.Validation.OnFailure },
        };
        var planner = new RecipePlanner(cfg); // validates
        var recipeWarnings = planner.IneffectiveSettings().ToList();
        if (BareLayer(model, gptq: cfg.Method == QuantizationMethod.Gptq || method is not null) is { } bare) throw new ModelQuantizationException(bare);
        if (!inPlace && factory is null)
            throw new ArgumentException(
                "Quantize returns a quantized copy, and TorchSharp cannot copy an arbitrary module by itself: pass factory: () => new YourModel(...) " +
                "(a fresh float model of the same architecture), or pass inPlace: true to quantize this model itself.", nameof(factory));
        if (cfg.Activations is not null && calibrationData is null)
            throw new ArgumentException(
                "Static activation quantization (recipe.Activations) needs calibration data: pass calibrationData (e.g. 150 training inputs), " +
                "or set Activations = null for weight-only quantization.", nameof(calibrationData));

        var originalEntries = ModuleTree.Walk(model);
        if (originalEntries.Any(e => e.Module is QuantizedModule) || model is QuantizedModule)
            throw new ModelQuantizationException("The model already contains quantized layers; quantize the float model instead.");
        CheckPatterns(cfg, model.named_parameters().Select(p => p.name).ToList());

        // Plan on the original (read-only), so that errors come before any copy is made.
        var (plan, skipped) = Plan(originalEntries, planner);
        if (plan.Count == 0)
        {
            string why = skipped.Count == 0
                ? "it has no layer of a type registered in QuantizedModules (Linear, Conv1d, Conv2d, Embedding, MultiheadAttention, Transformer*, LSTM, GRU, RNN...)"
                : "none of its layers can be quantized: " + string.Join("; ", skipped.Select(s => $"{s.Name} ({s.ModuleType}): {s.Reason}"));
            throw new ModelQuantizationException($"Nothing to quantize in {model.GetType().Name}: {why}.");
        }
        recipeWarnings.AddRange(WeightGeometry.StorageWarnings(plan.Select(p => p.Weight)));
        if (planner.StrictRefusal(recipeWarnings) is { } refusal) throw new RecipeException(refusal);

        T work = inPlace ? model : (T)Copy(model, () => factory!());
        bool ok = false;
        try
        {
            var r = Run(work, cfg, plan, skipped, factory is null ? null : () => factory(), calibrationData, progress, disposeReplaced: !inPlace, method);
            s_recipes.AddOrUpdate(work, cfg);
            ok = true;
            return new QuantizationResult<T>(work, cfg, r.Layers, r.Skipped, r.Report, [.. recipeWarnings, .. r.Warnings], r.CalibrationSamples);
        }
        finally
        {
            if (!ok && !inPlace) work.Dispose();
        }
    }

    /// <summary>The recipe each quantized (or loaded) model was made with, for <see cref="Save"/>'s <c>quantsharp.config</c>.</summary>
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<nn.Module, QuantizationRecipe> s_recipes = new();

    internal static QuantizationRecipe? RecipeOf(nn.Module model) => s_recipes.TryGetValue(model, out var r) ? r : null;

    internal static void SetRecipe(nn.Module model, QuantizationRecipe recipe) => s_recipes.AddOrUpdate(model, recipe);

    private static (List<PlannedLayer> Plan, List<SkippedLayer> Skipped) Plan(List<ModuleEntry> entries, RecipePlanner planner)
    {
        var plan = new List<PlannedLayer>();
        var skipped = new List<SkippedLayer>();
        // Children of a module that is quantized as a whole (a materialized native module) are not planned again.
        var covered = new HashSet<string>(StringComparer.Ordinal);
        foreach (var e in entries)
        {
            if (covered.Any(c => e.Name.StartsWith(c + ".", StringComparison.Ordinal))) continue;
            var type = e.Module.GetType();
            string typeName = ModuleTree.TypeName(type);
            var handler = QuantizedModules.HandlerFor(type);
            if (handler is null && QuantizedModules.MaterializedFilter(type) is null)
            {
                var own = e.Module.named_parameters(recurse: false).Select(p => p.parameter).ToList();
                // Vectors only (LayerNorm, BatchNorm, a gain): nothing a quantizer would store in fewer bits, as in
                // torchao and quanto; listed as skipped but not warned about.
                if (own.Count > 0 && own.All(p => p.dim() <= 1))
                    skipped.Add(new SkippedLayer(e.Name, typeName, SkipKind.VectorParametersOnly, $"only vector parameters (biases, gains, normalization), kept float ({typeName})"));
                else if (own.Count > 0)
                    skipped.Add(new SkippedLayer(e.Name, typeName, SkipKind.UnsupportedModuleType, $"unsupported module type {typeName} (register it with QuantizedModules.Register); its parameters stay float"));
                continue;
            }
            // The layer's weight is addressed by its parameter name (a replaced layer's weight; a materialized module by its own name).
            var weight = handler is null ? null : QuantizedModules.Parameter(e.Module, handler.WeightName);
            string parameter = handler is null ? e.Name + ".weight" : e.Name + "." + handler.WeightName;
            long elements = weight?.numel() ?? e.Module.parameters().Sum(p => p.numel());
            if (planner.NotSelected(parameter, typeName, elements) is { } notSelected)
            {
                skipped.Add(new SkippedLayer(e.Name, typeName, notSelected.Kind, notSelected.Reason));
                continue;
            }
            var planned = weight is not null && weight.is_floating_point()
                ? planner.Plan(parameter, typeName, weight.shape)
                : new PlannedWeight(parameter, weight?.shape ?? [], planner.Recipe.WeightSpecFor(parameter, typeName), null);
            var (layer, why) = ModuleQuantization.Plan(e, planned.Spec);
            if (layer is null)
            {
                skipped.Add(new SkippedLayer(e.Name, typeName, SkipKind.SpecDoesNotFit, $"{why ?? "nothing to quantize"} (spec {WeightQuantizer.Describe(planned.Spec)})"));
                continue;
            }
            plan.Add(new PlannedLayer(layer, planned));
            if (layer.Mechanism == QuantizationMechanism.Materialize) covered.Add(e.Name);
        }
        return (plan, skipped);
    }

    private static void CheckPatterns(QuantizationRecipe cfg, List<string> parameterNames)
    {
        var patterns = cfg.Include.Select(p => (p, "Include"))
            .Concat(cfg.Exclude.Select(p => (p, "Exclude")))
            .Concat(cfg.Overrides.Select(o => (o.Pattern, "Overrides")));
        foreach (var (p, where) in patterns)
        {
            var glob = new Glob(p);
            if (parameterNames.Any(n => QuantizationRecipe.NameMatches(glob, n))) continue;
            var close = NameGlob.Closest(p, parameterNames);
            throw new RecipeException(
                $"{where} pattern '{p}' matches no weight of the model. " +
                (close.Count > 0 ? $"Closest parameter names: {string.Join(", ", close)}. " : "The model has no parameters. ") +
                "Names are state_dict names (e.g. fc1.weight) or their module's name (fc1); '*' matches any characters (dots too), '?' one.");
        }
    }

    /// <summary>Builds a fresh model with <paramref name="factory"/> and loads <paramref name="model"/>'s state into it (separate storage).</summary>
    internal static nn.Module Copy(nn.Module model, Func<nn.Module> factory)
    {
        nn.Module copy = factory() ?? throw new ArgumentException("The model factory returned null; it must build a new float model.", nameof(factory));
        if (ReferenceEquals(copy, model))
            throw new ArgumentException("The model factory returned the model itself; it must build a NEW model of the same architecture (e.g. () => new MyNet()).", nameof(factory));
        try
        {
            var source = model.state_dict();
            var target = copy.state_dict();
            var missing = target.Keys.Except(source.Keys).ToList();
            var extra = source.Keys.Except(target.Keys).ToList();
            if (missing.Count > 0 || extra.Count > 0)
                throw new ArgumentException(
                    $"The factory builds a {copy.GetType().Name} whose state_dict does not match the model's " +
                    $"(only in the factory's model: {List(missing)}; only in the model: {List(extra)}). The factory must build the same architecture.", nameof(factory));
            foreach (var (k, v) in source)
            {
                var t = target[k];
                if (!t.shape.SequenceEqual(v.shape) || t.dtype != v.dtype)
                    throw new ArgumentException(
                        $"The factory's model has '{k}' as {t.dtype} [{string.Join(", ", t.shape)}] but the model has {v.dtype} [{string.Join(", ", v.shape)}]; build it with the same sizes.", nameof(factory));
            }
            using (no_grad()) copy.load_state_dict(source, strict: true);
            if (model.training) copy.train(); else copy.eval();
            return copy;
        }
        catch
        {
            copy.Dispose();
            throw;
        }

        static string List(List<string> keys) => keys.Count == 0 ? "none" : string.Join(", ", keys.Take(5)) + (keys.Count > 5 ? $", ... ({keys.Count})" : "");
    }

    /// <summary>Runs the one pipeline: the planned layers of <paramref name="work"/> (<see cref="ModelSource"/>, calibrated on
    /// <paramref name="data"/>) installed into it (<see cref="ModelSink"/>).</summary>
    private static QuantizationResult Run(nn.Module work, QuantizationRecipe cfg, List<PlannedLayer> planned, List<SkippedLayer> skipped,
        Func<nn.Module>? factory, IEnumerable<CalibrationBatch>? data, IProgress<CalibrationProgress>? progress, bool disposeReplaced,
        IWeightQuantizer? method = null)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        work.eval();
        using var source = new ModelSource(work, cfg, planned, data, progress, method);
        var sink = new ModelSink(work, cfg, factory, disposeReplaced, source, skipped);
        var run = QuantizationDriver.Run(source, sink, cfg.Validation, clock);
        var fallbacks = planned.Where(p => p.Weight.Fallback is not null).Select(p => p.Weight.Fallback!);
        // Layers left float for a reason other than the caller's choice are warnings (the result is not what was asked).
        var notChosen = skipped.Where(k => k.Unexpected).Select(k => $"{k.Name} ({k.ModuleType}) stays float: {k.Reason}.");
        return new QuantizationResult(work, cfg, sink.Layers, skipped, cfg.Validation.Enabled ? run.Report : null,
            [.. fallbacks, .. source.Warnings, .. notChosen, .. run.Warnings], source.Calibrator?.Samples ?? 0);
    }

    /// <summary>
    /// Saves a model quantized by <c>Quantize</c> (or loaded by <see cref="Load{T}"/>) as the one quantized file
    /// form (safetensors, written to a temporary file and renamed into place; docs/FORMAT.md): the same tensor names,
    /// dtypes, shapes, bytes and per-layer metadata as <c>quantsharp quantize</c> writes for the model's <c>state_dict</c>
    /// with the same recipe, which is recorded as <c>quantsharp.config</c>.
    /// </summary>
    /// <param name="model">The quantized model (<see cref="QuantizationResult.Model"/>).</param>
    /// <param name="path">The <c>.safetensors</c> file to write.</param>
    /// <exception cref="ArgumentException">The model has no quantized layers.</exception>
    /// <exception cref="IOException">The path is a folder, or the file cannot be written.</exception>
    public static void Save(nn.Module model, string path) => QuantizedModelFile.Save(model, path);

    /// <summary>
    /// Rebuilds a quantized model from a quantized file, written by <see cref="Save"/> or by <c>quantsharp quantize</c>:
    /// <paramref name="factory"/> builds the float architecture (as for <c>Quantize</c>), each layer whose
    /// weight the file stores quantized is replaced by its quantized form, and every other tensor is loaded from the file.
    /// The result gives bit-identical outputs to the saved model; it is in eval mode.
    /// </summary>
    /// <typeparam name="T">The model type.</typeparam>
    /// <param name="factory">Builds a fresh float model of the saved architecture.</param>
    /// <param name="path">The quantized file.</param>
    /// <exception cref="QuantizedFileException">The file is not a quantized file of this architecture (the message names the layer or tensor).</exception>
    public static T Load<T>(Func<T> factory, string path) where T : nn.Module
    {
        ArgumentNullException.ThrowIfNull(factory);
        return (T)QuantizedModelFile.Load(() => factory(), path);
    }
}
