using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using QuantSharp.Observers;
using QuantSharp.Selection;

namespace QuantSharp;

/// <summary>
/// What to quantize and how: the one recipe used by <see cref="Quantizer"/> (a TorchSharp model),
/// <see cref="CheckpointQuantizer"/> (a safetensors checkpoint) and <c>quantsharp quantize --config</c>. Immutable; use
/// a preset and <c>with</c> to change fields. Its JSON form (<see cref="ToJson"/>, <see cref="FromJson"/>) is
/// documented in docs/FORMAT.md and recorded in every quantized file as <c>quantsharp.config</c>.
/// </summary>
/// <remarks>
/// <para><b>Names.</b> Weights are addressed by their parameter name (the <c>state_dict</c> / safetensors name,
/// e.g. <c>fc1.weight</c>, <c>model.layers.0.mlp.up_proj.weight</c>). Patterns are <see cref="Glob"/>s (Python
/// <c>fnmatch</c>: <c>*</c> crosses dots). As a convenience a pattern also matches a weight when it matches the name
/// of the module that owns it (the parameter name without its last <c>.segment</c>): <c>fc1</c> and
/// <c>fc1.weight</c> select the same tensor, as do <c>features.*</c> and <c>features.*.weight</c>.</para>
/// <para><b>Selection.</b> With <see cref="Include"/> empty, the weights of the supported layers (model path) or
/// floating tensors named <c>*.weight</c> with at least two dimensions (checkpoint path) with at least
/// <see cref="MinElements"/> elements are quantized; with <see cref="Include"/> exactly the matching weights are.
/// <see cref="Exclude"/> always wins. <see cref="ModuleTypes"/> / <see cref="ExcludeModuleTypes"/> filter by the
/// owning module's type name (model path only: a checkpoint has no modules, so a recipe with module-type filters is
/// refused there).</para>
/// <para><b>Per-type defaults.</b> <see cref="Granularity"/> left null means per-channel (axis 0) for 8-bit types and
/// <c>group:128</c> for 4-bit types, everywhere. An override that changes the bit width without giving a
/// granularity gets the default of its own type (an int8 override in an int4 recipe is per-channel, not
/// group:128).</para>
/// <para><b>Precedence.</b> Explicit arguments (of <c>Quantize</c>, or command-line options) &gt; the recipe &gt; the
/// defaults shown here; for each weight the first matching <see cref="Overrides"/> entry applies on top of the
/// recipe, field by field.</para>
/// </remarks>
public sealed record QuantizationRecipe
{
    /// <summary>The recipe format version this library writes; it reads every version up to it (docs/FORMAT.md, "Recipe").
    /// Version 2 added <c>method</c>, <c>gptq</c>, the top-level <c>histogram_method</c> and the overrides' activation
    /// observer keys (<c>activation_observer</c>, <c>entropy_search_start</c>, <c>histogram_method</c>).</summary>
    public const int CurrentVersion = 2;

    /// <summary>Default number of calibration samples (counted along the batch dimension).</summary>
    public const int DefaultCalibrationSamples = 150;

    /// <summary>Default group size of 4-bit types.</summary>
    public const int DefaultGroupSize = 128;

    /// <summary>Smallest group size the group-size fallback picks (see <see cref="StrictGroupSize"/>).</summary>
    public const int MinFallbackGroupSize = 16;

    /// <summary>Activation spec of <see cref="Int8Static"/>: uint8 affine per-tensor (PyTorch's default activation observer).</summary>
    public static QuantSpec DefaultActivations { get; } = new(QuantType.UInt8, QuantScheme.Affine, QuantSharp.Granularity.Tensor);

    /// <summary>The types a recipe can quantize weights to (what the quantized file format stores).</summary>
    public static IReadOnlyList<QuantType> SupportedWeightTypes { get; } =
        [QuantType.Int8, QuantType.UInt8, QuantType.Int4, QuantType.UInt4, QuantType.Int2, QuantType.UInt2, QuantType.Float16, QuantType.BFloat16];

    /// <summary>Recipe format version (<see cref="CurrentVersion"/>). A recipe read from an older version is upgraded
    /// (every key keeps its meaning), so it is <see cref="CurrentVersion"/> in memory and <see cref="ToJson"/> writes the
    /// current form; a newer version is refused when read.</summary>
    public int Version { get; init; } = CurrentVersion;

    /// <summary>Weight type (default int8).</summary>
    public QuantType Type { get; init; } = QuantType.Int8;

    /// <summary>Weight scheme (default symmetric). Ignored for float16/bfloat16.</summary>
    public QuantScheme Scheme { get; init; } = QuantScheme.Symmetric;

    /// <summary>Weight granularity; null: the per-type default (per-channel for 8-bit, <c>group:128</c> for 4-bit).</summary>
    public Granularity? Granularity { get; init; }

    /// <summary>Leave one bit of the weight range unused (PyTorch's <c>reduce_range</c>; default false).</summary>
    public bool ReduceRange { get; init; }

    /// <summary>Observer choosing each weight's range: <c>minmax</c> (default), <c>percentile</c>, <c>histogram</c>,
    /// <c>moving-average</c> (<see cref="ObserverFactory"/>).</summary>
    public string WeightObserver { get; init; } = "minmax";

    /// <summary>
    /// Static quantization of each quantized Linear/Conv layer's input (W8A8), or null for weight-only. Per-tensor,
    /// int8 or uint8. Needs calibration data (model path only; the checkpoint path has no activations and ignores it).
    /// </summary>
    public QuantSpec? Activations { get; init; }

    /// <summary>
    /// Dynamic W8A8 (torchao's <c>Int8DynamicActivationInt8WeightConfig</c>): every replaced Linear quantizes each input
    /// row to int8 on the fly (symmetric, <c>scale = max(amax / 127, eps)</c>) and, with int8 per-row weights, multiplies
    /// in integers. Needs no calibration; excludes <see cref="Activations"/>; other layer types stay weight-only. It
    /// belongs to the model in memory (files store weights): quantize again, or set it, after loading.
    /// </summary>
    public bool DynamicActivations { get; init; }

    /// <summary>Observer of the activations during calibration (default <c>minmax</c>).</summary>
    public string ActivationObserver { get; init; } = "minmax";

    /// <summary>
    /// The histogram activation observer's KL search window (<see cref="ObserverOptions.EntropySearchStart"/>): 0
    /// (default) searches every threshold as ONNX Runtime, 0.5 only thresholds in 50-100% of the histogram range, as
    /// TensorRT. Applies when <see cref="ActivationObserver"/> is <c>histogram</c>.
    /// </summary>
    public double EntropySearchStart { get; init; }

    /// <summary>
    /// The histogram activation observer's search (<see cref="ObserverOptions.Method"/>): <see cref="Observers.HistogramMethod.Entropy"/>
    /// (default; KL, ONNX Runtime / TensorRT) or <see cref="Observers.HistogramMethod.L2"/> (PyTorch's <c>HistogramObserver</c>).
    /// Applies when <see cref="ActivationObserver"/> is <c>histogram</c>.
    /// </summary>
    public HistogramMethod HistogramMethod { get; init; }

    /// <summary>
    /// How weights are rounded: <see cref="QuantizationMethod.RoundToNearest"/> (default) or <see cref="QuantizationMethod.Gptq"/>
    /// (layer by layer with error compensation from the calibration inputs, settings in <see cref="GptqOptions"/>). GPTQ needs
    /// a model and calibration data (<c>Quantizer.Quantize(model, recipe, calibrationData)</c>), quantizes weights only, and
    /// is refused by the checkpoint path, which has no activations.
    /// </summary>
    public QuantizationMethod Method { get; init; }

    /// <summary>GPTQ settings (damping, block size, activation order), used when <see cref="Method"/> is <see cref="QuantizationMethod.Gptq"/>.</summary>
    public GptqOptions GptqOptions { get; init; } = new();

    /// <summary>Calibration samples to run (at least this many, counted along dimension 0).</summary>
    public int CalibrationSamples { get; init; } = DefaultCalibrationSamples;

    /// <summary>Smallest element count the default selection quantizes (default 0: every weight).</summary>
    public long MinElements { get; init; }

    /// <summary>Only weights matching one of these globs are quantized (empty: the default selection).</summary>
    public IReadOnlyList<string> Include { get; init; } = [];

    /// <summary>Weights matching one of these globs are never quantized (wins over everything else).</summary>
    public IReadOnlyList<string> Exclude { get; init; } = [];

    /// <summary>Only weights of modules of these type names are quantized (e.g. <c>Linear</c>; empty: all supported types). Model path only.</summary>
    public IReadOnlyList<string> ModuleTypes { get; init; } = [];

    /// <summary>Weights of modules of these type names are never quantized. Model path only.</summary>
    public IReadOnlyList<string> ExcludeModuleTypes { get; init; } = [];

    /// <summary>Per-weight settings; the first entry whose pattern (and module type, if given) matches applies.</summary>
    public IReadOnlyList<RecipeOverride> Overrides { get; init; } = [];

    /// <summary>
    /// False (default): a group size that does not divide a weight's reduction length falls back, for that weight, to
    /// the largest even divisor of the length that is at most the requested size and at least
    /// <see cref="MinFallbackGroupSize"/>, else to 8-bit per-channel (4-bit types also fall back to 8-bit per-channel
    /// when the reduction length is odd); each fallback is listed in the warnings and the report.
    /// True: such a weight is refused with an error instead.
    /// </summary>
    public bool StrictGroupSize { get; init; }

    /// <summary>
    /// False (default): what is probably a mistake in the recipe is a warning (in the report and the CLI output):
    /// a selection that quantizes nothing (an include that matches nothing, <c>exclude: ["*"]</c>, a
    /// <see cref="MinElements"/> above every weight), an include or override pattern that matches no tensor, and a
    /// setting that does not apply (a granularity such as a group size for a float16/bfloat16 weight, a plain cast).
    /// True (CLI <c>--strict</c>): each of these is an error instead, before anything is written.
    /// </summary>
    public bool Strict { get; init; }

    /// <summary>Validation after quantization (SQNR thresholds, reload and range checks, what a failure does).</summary>
    public ValidationPolicy Validation { get; init; } = new();

    /// <summary>Int8 symmetric per-channel weights (the default recipe).</summary>
    public static QuantizationRecipe Int8WeightOnly() => new();

    /// <summary>Int4 symmetric weights in groups of <paramref name="groupSize"/> along the reduction axis.</summary>
    /// <param name="groupSize">Elements per group (e.g. 32, 64, 128).</param>
    public static QuantizationRecipe Int4WeightOnly(int groupSize = DefaultGroupSize) =>
        new() { Type = QuantType.Int4, Granularity = new PerGroup(groupSize) };

    /// <summary>Int8 per-channel weights and calibrated uint8 affine per-tensor activations (static W8A8).</summary>
    public static QuantizationRecipe Int8Static() => new() { Activations = DefaultActivations };

    /// <summary>Int8 per-channel weights and int8 inputs quantized per row on each call (dynamic W8A8, no calibration).</summary>
    public static QuantizationRecipe Int8Dynamic() => new() { DynamicActivations = true };

    /// <summary>Half-precision weights (no scales).</summary>
    public static QuantizationRecipe Float16() => new() { Type = QuantType.Float16 };

    /// <summary>bfloat16 weights (no scales).</summary>
    public static QuantizationRecipe BFloat16() => new() { Type = QuantType.BFloat16 };

    /// <summary>A recipe whose weights follow <paramref name="spec"/> (type, scheme, granularity, reduce range).</summary>
    public static QuantizationRecipe ForWeights(QuantSpec spec) => new QuantizationRecipe().WithWeights(spec);

    /// <summary>This recipe with its weight fields taken from <paramref name="spec"/>.</summary>
    public QuantizationRecipe WithWeights(QuantSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        return this with { Type = spec.Type, Scheme = spec.Scheme, Granularity = spec.Type.IsInteger() ? spec.Granularity : null, ReduceRange = spec.ReduceRange };
    }

    /// <summary>The default granularity of a type: per-channel for 8-bit, <c>group:128</c> for 4-bit and 2-bit, per-tensor for float types.</summary>
    public static Granularity DefaultGranularity(QuantType type) =>
        !type.IsInteger() ? QuantSharp.Granularity.Tensor : type.Bits() == 8 ? new PerAxis(0) : new PerGroup(DefaultGroupSize);

    /// <summary>The weight spec of the recipe itself (no override).</summary>
    public QuantSpec BaseWeights => MakeSpec(Type, Scheme, Granularity, ReduceRange);

    /// <summary>
    /// The weight spec for the parameter <paramref name="parameterName"/> of a module of type
    /// <paramref name="moduleType"/> (null when unknown, e.g. in a checkpoint): the first matching override on top of
    /// the recipe, then the per-type defaults. (Whether the weight is selected at all is a separate question.)
    /// </summary>
    public QuantSpec WeightSpecFor(string parameterName, string? moduleType = null)
    {
        ArgumentNullException.ThrowIfNull(parameterName);
        return SpecOf(Overrides.FirstOrDefault(o => o.Matches(parameterName, moduleType)));
    }

    /// <summary>The spec an override gives on top of this recipe (the recipe's own spec for null).</summary>
    private QuantSpec SpecOf(RecipeOverride? o)
    {
        if (o is null) return BaseWeights;
        var type = o.Type ?? Type;
        var granularity = o.Granularity ?? (type.IsInteger() && type.Bits() == Type.Bits() ? Granularity : null);
        return MakeSpec(type, o.Scheme ?? Scheme, granularity, o.ReduceRange ?? ReduceRange);
    }

    /// <summary>
    /// The activation observer (an <see cref="ObserverFactory"/> name) and its options for the input of the layer that owns
    /// <paramref name="parameterName"/>: the first matching override's activation fields on top of the recipe's, for
    /// per-tensor parameters of <paramref name="activations"/>.
    /// </summary>
    internal (string Observer, ObserverOptions Options) ActivationObserverFor(string parameterName, string? moduleType, QuantSpec activations)
    {
        var o = Overrides.FirstOrDefault(x => x.Matches(parameterName, moduleType));
        var options = new ObserverOptions
        {
            Type = activations.Type, Scheme = activations.Scheme, ReduceRange = activations.ReduceRange,
            EntropySearchStart = o?.EntropySearchStart ?? EntropySearchStart, Method = o?.HistogramMethod ?? HistogramMethod,
        };
        return (NormalizeObserver(o?.ActivationObserver ?? ActivationObserver), options);
    }

    private static QuantSpec MakeSpec(QuantType type, QuantScheme scheme, Granularity? granularity, bool reduceRange) => type.IsInteger()
        ? new QuantSpec(type, scheme, granularity ?? DefaultGranularity(type), reduceRange)
        : new QuantSpec(type, QuantScheme.Symmetric, QuantSharp.Granularity.Tensor);

    /// <summary>True when <paramref name="pattern"/> matches the parameter name or the name of the module that owns it.</summary>
    internal static bool NameMatches(Glob pattern, string parameterName)
    {
        if (pattern.IsMatch(parameterName)) return true;
        int dot = parameterName.LastIndexOf('.');
        return dot > 0 && pattern.IsMatch(parameterName[..dot]);
    }

    /// <summary>Throws <see cref="RecipeException"/> naming the first invalid setting and how to fix it. A setting is named
    /// as a recipe file and the C# API both spell it: <c>"min_elements" (MinElements)</c>.</summary>
    public void Validate() => Validate(null);

    /// <summary><see cref="Validate()"/>, naming the settings in <paramref name="spelling"/> (property name to the user's
    /// spelling, e.g. the CLI's <c>--min-elements</c> for a value given on the command line) as the user wrote them.</summary>
    internal void Validate(IReadOnlyDictionary<string, string>? spelling)
    {
        string N(string property) => spelling?.GetValueOrDefault(property) ?? SettingName(property);
        if (Version < 1 || Version > CurrentVersion)
            throw new RecipeException($"Recipe version {Version} is not supported; this QuantSharp reads versions 1 to {CurrentVersion}.");
        ValidateSpec(BaseWeights, spelling?.GetValueOrDefault(WeightsSetting) ?? "the weight settings (\"qtype\", \"scheme\", \"granularity\", \"reduce_range\"; C# Type, Scheme, Granularity, ReduceRange)");
        foreach (var o in Overrides)
        {
            if (o is null) throw new RecipeException($"{N(nameof(Overrides))}: an entry is null.");
            ValidatePattern(o.Pattern, N(nameof(Overrides)));
            string entry = $"override '{o.Pattern}'";
            ValidateSpec(SpecOf(o), entry);
            if (o.ActivationObserver is not null) CheckObserver(o.ActivationObserver, $"{entry} {SettingName(nameof(ActivationObserver))}");
            if (o.EntropySearchStart is { } start) CheckSearchStart(start, $"{entry} {SettingName(nameof(EntropySearchStart))}");
        }
        if (Activations is { } a)
        {
            try { a.Validate(); }
            catch (ArgumentException e) { throw new RecipeException($"{N(nameof(Activations))}: {ExceptionText.Plain(e)}", e); }
            if (a.Type is not (QuantType.Int8 or QuantType.UInt8))
                throw new RecipeException($"{N(nameof(Activations))}: static activation quantization supports int8 or uint8, not {a.Type.ToName()}. Use uint8 affine (PyTorch's default) or int8.");
            if (a.Granularity is not PerTensor)
                throw new RecipeException($"{N(nameof(Activations))}: only per-tensor activation quantization is supported, not {a.Granularity}.");
        }
        CheckObserver(WeightObserver, N(nameof(WeightObserver)));
        CheckObserver(ActivationObserver, N(nameof(ActivationObserver)));
        if (DynamicActivations && Activations is not null)
            throw new RecipeException($"{N(nameof(DynamicActivations))} and {N(nameof(Activations))} exclude each other: dynamic W8A8 quantizes inputs on the fly, static W8A8 with calibrated ranges. Set one.");
        CheckSearchStart(EntropySearchStart, N(nameof(EntropySearchStart)));
        if (!Enum.IsDefined(HistogramMethod)) throw new RecipeException($"{N(nameof(HistogramMethod))} {(int)HistogramMethod} is not defined. Use Entropy or L2.");
        if (!Enum.IsDefined(Method)) throw new RecipeException($"{N(nameof(Method))} {(int)Method} is not defined. Use RoundToNearest or Gptq.");
        if (GptqOptions is null) throw new RecipeException($"{N(nameof(GptqOptions))} is null; leave it at its default (new GptqOptions()).");
        try { GptqOptions.Validate(); }
        catch (ArgumentException e) { throw new RecipeException(e.Message, e); }
        if (Method == QuantizationMethod.Gptq && (Activations is not null || DynamicActivations))
            throw new RecipeException("Method gptq quantizes weights only: set Activations = null and DynamicActivations = false (JSON \"activations\": null, \"dynamic_activations\": false), or use method rtn for W8A8.");
        if (CalibrationSamples <= 0)
            throw new RecipeException($"{N(nameof(CalibrationSamples))} must be positive, got {CalibrationSamples} (default {DefaultCalibrationSamples}).");
        if (MinElements < 0) throw new RecipeException($"{N(nameof(MinElements))} must be at least 0, got {MinElements}.");
        foreach (var p in Include) ValidatePattern(p, N(nameof(Include)));
        foreach (var p in Exclude) ValidatePattern(p, N(nameof(Exclude)));
        foreach (var t in ModuleTypes.Concat(ExcludeModuleTypes))
            if (string.IsNullOrWhiteSpace(t)) throw new RecipeException($"{N(nameof(ModuleTypes))}/{N(nameof(ExcludeModuleTypes))}: a module type name is empty (use e.g. \"Linear\").");
        Validation.Validate();
    }

    /// <summary>The key of <see cref="Validate(IReadOnlyDictionary{string, string}?)"/>'s spelling for the weight settings as a whole.</summary>
    internal const string WeightsSetting = "Weights";

    /// <summary>A setting as a recipe file and the C# API both name it, e.g. <c>"min_elements" (MinElements)</c>.</summary>
    internal static string SettingName(string property) => $"\"{JsonKey(property)}\" ({property})";

    /// <summary>The recipe file's key of a property: snake case, except <c>qtype</c> (Type) and <c>gptq</c> (GptqOptions).</summary>
    private static string JsonKey(string property) => property switch
    {
        nameof(Type) => "qtype",
        nameof(GptqOptions) => "gptq",
        _ => string.Concat(property.Select((c, i) => char.IsUpper(c) && i > 0 ? "_" + char.ToLowerInvariant(c) : char.ToLowerInvariant(c).ToString())),
    };

    /// <summary>True when the recipe filters by module type (which needs a model).</summary>
    internal bool HasModuleTypeFilters => ModuleTypes.Count > 0 || ExcludeModuleTypes.Count > 0 || Overrides.Any(o => o.ModuleType is not null);

    internal static string NormalizeObserver(string name)
    {
        string n = name.Trim().ToLowerInvariant();
        return n == "min-max" ? "minmax" : n;
    }

    private static void CheckObserver(string? name, string what)
    {
        if (string.IsNullOrWhiteSpace(name) || !ObserverFactory.Names.Contains(NormalizeObserver(name)))
            throw new RecipeException($"{what}: unknown observer '{name}'. Use one of: {string.Join(", ", ObserverFactory.Names)}.");
    }

    private static void CheckSearchStart(double start, string what)
    {
        if (!(start >= 0 && start < 1))
            throw new RecipeException($"{what} must be a fraction in [0, 1), got {start}. Use 0 (every threshold) or 0.5 (TensorRT's 50-100% window).");
    }

    private static void ValidateSpec(QuantSpec spec, string what)
    {
        if (!SupportedWeightTypes.Contains(spec.Type))
            throw new RecipeException($"{what}: {spec.Type.ToName()} weights are not supported; use one of: " +
                string.Join(", ", SupportedWeightTypes.Select(t => t.ToName())) + ".");
        try { spec.Validate(); }
        catch (ArgumentException e) { throw new RecipeException($"{what}: {e.Message}", e); }
    }

    private static void ValidatePattern(string? pattern, string what)
    {
        if (string.IsNullOrWhiteSpace(pattern))
            throw new RecipeException($"{what}: name patterns must not be empty (use '*' to match every weight).");
        try { _ = new Glob(pattern); }
        catch (ArgumentException e) { throw new RecipeException($"{what}: {e.Message}", e); }
    }

    // ---- JSON ----

    /// <summary>The recipe as JSON (every field written, defaults included; docs/FORMAT.md "Recipe").</summary>
    public string ToJson(bool indented = false) => ToJsonNode().ToJsonString(new JsonSerializerOptions { WriteIndented = indented });

    /// <summary>The recipe as a JSON object.</summary>
    internal JsonObject ToJsonNode()
    {
        var o = new JsonObject
        {
            ["version"] = Version,
            ["qtype"] = Type.ToName(),
            ["scheme"] = SchemeName(Scheme),
            ["granularity"] = Granularity?.ToString(),
            ["reduce_range"] = ReduceRange,
            ["weight_observer"] = NormalizeObserver(WeightObserver),
            ["activations"] = Activations is { } a
                ? new JsonObject { ["qtype"] = a.Type.ToName(), ["scheme"] = SchemeName(a.Scheme), ["reduce_range"] = a.ReduceRange }
                : null,
            ["dynamic_activations"] = DynamicActivations,
            ["activation_observer"] = NormalizeObserver(ActivationObserver),
            ["entropy_search_start"] = EntropySearchStart,
            ["histogram_method"] = HistogramMethodName(HistogramMethod),
            ["method"] = MethodName(Method),
            ["gptq"] = new JsonObject { ["damping"] = GptqOptions.DampingFraction, ["block_size"] = GptqOptions.BlockSize, ["act_order"] = GptqOptions.ActOrder },
            ["calibration_samples"] = CalibrationSamples,
            ["min_elements"] = MinElements,
            ["include"] = Strings(Include),
            ["exclude"] = Strings(Exclude),
            ["module_types"] = Strings(ModuleTypes),
            ["exclude_module_types"] = Strings(ExcludeModuleTypes),
            ["overrides"] = new JsonArray(Overrides.Select(ov => (JsonNode)ov.ToJsonNode()).ToArray()),
            ["strict_group_size"] = StrictGroupSize,
            ["strict"] = Strict,
            ["validation"] = Validation.ToJsonNode(),
        };
        return o;

        static JsonArray Strings(IEnumerable<string> s) => new(s.Select(x => (JsonNode)JsonValue.Create(x)!).ToArray());
    }

    internal static string SchemeName(QuantScheme s) => s.ToString().ToLowerInvariant();

    internal static string HistogramMethodName(HistogramMethod m) => m == HistogramMethod.L2 ? "l2" : "entropy";

    internal static string MethodName(QuantizationMethod m) => m == QuantizationMethod.Gptq ? "gptq" : "rtn";

    /// <summary>Reads a recipe file (JSON).</summary>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    /// <exception cref="RecipeException">Not valid JSON, an unknown or duplicate key, or a wrong value (the message names it).</exception>
    public static QuantizationRecipe Load(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (Directory.Exists(path))
            throw new RecipeException($"'{path}' is a folder, not a recipe file; give the recipe (JSON) file itself, e.g. '{Path.Combine(path, "int4-group32.recipe.json")}'.");
        if (!File.Exists(path)) throw new FileNotFoundException($"Recipe file '{path}' does not exist.", path);
        return FromJson(File.ReadAllText(path), path);
    }

    /// <summary>Writes the recipe as indented JSON to <paramref name="path"/> (temporary file, then rename).</summary>
    public void Save(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        string full = Path.GetFullPath(path);
        string temp = full + $".tmp-{Guid.NewGuid():N}";
        try
        {
            File.WriteAllText(temp, ToJson(indented: true) + "\n");
            File.Move(temp, full, overwrite: true);
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
        }
    }

    /// <summary>Parses the JSON form. Missing keys keep their defaults; comments and trailing commas are accepted.</summary>
    /// <param name="json">The JSON text.</param>
    /// <param name="source">Where it came from (for messages).</param>
    /// <exception cref="RecipeException">Not valid JSON, an unknown or duplicate key, or a wrong value.</exception>
    public static QuantizationRecipe FromJson(string json, string source = "recipe")
    {
        ArgumentNullException.ThrowIfNull(json);
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true }); }
        catch (JsonException ex) { throw new RecipeException($"{source}: not valid JSON ({ExceptionText.Clause(ex)}).", ex); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new RecipeException($"{source}: a recipe must be a JSON object.");
            // The version first: a newer recipe is refused for its version, not for the first key this reader does not know.
            if (doc.RootElement.TryGetProperty("version", out var versionElement))
            {
                int version = Field($"{source}: \"version\"", () => ReadInt(versionElement));
                if (version > CurrentVersion)
                    throw new RecipeException($"{source}: recipe version {version} is newer than this QuantSharp reads (versions 1 to {CurrentVersion}); " +
                        "it was written by a newer QuantSharp. Update QuantSharp to read it, or write the recipe with \"version\": " +
                        $"{CurrentVersion} and only the keys docs/FORMAT.md lists.");
            }
            var r = new QuantizationRecipe();
            foreach (var p in Properties(doc.RootElement, source, TopKeys))
            {
                string where = $"{source}: \"{p.Name}\"";
                r = Field(where, () => p.Name switch
                {
                    "version" => r with { Version = ReadInt(p.Value) },
                    "qtype" => r with { Type = QuantTypeInfo.Parse(Str(p.Value)) },
                    "scheme" => r with { Scheme = ParseScheme(Str(p.Value)) },
                    "granularity" => r with { Granularity = p.Value.ValueKind == JsonValueKind.Null ? null : QuantSharp.Granularity.Parse(Str(p.Value)) },
                    "reduce_range" => r with { ReduceRange = ReadBool(p.Value) },
                    "weight_observer" => r with { WeightObserver = Str(p.Value) },
                    "activations" => r with { Activations = p.Value.ValueKind == JsonValueKind.Null ? null : ParseActivations(p.Value, where) },
                    "dynamic_activations" => r with { DynamicActivations = ReadBool(p.Value) },
                    "activation_observer" => r with { ActivationObserver = Str(p.Value) },
                    "entropy_search_start" => r with { EntropySearchStart = ReadDouble(p.Value) },
                    "histogram_method" => r with { HistogramMethod = ParseHistogramMethod(Str(p.Value)) },
                    "method" => r with { Method = ParseMethod(Str(p.Value)) },
                    "gptq" => r with { GptqOptions = ParseGptq(p.Value, where) },
                    "calibration_samples" => r with { CalibrationSamples = ReadInt(p.Value) },
                    "min_elements" => r with { MinElements = ReadLong(p.Value) },
                    "include" => r with { Include = StrList(p.Value) },
                    "exclude" => r with { Exclude = StrList(p.Value) },
                    "module_types" => r with { ModuleTypes = StrList(p.Value) },
                    "exclude_module_types" => r with { ExcludeModuleTypes = StrList(p.Value) },
                    "overrides" => r with { Overrides = Array(p.Value).Select((o, i) => RecipeOverride.FromJson(o, $"{where}[{i}]")).ToList() },
                    "strict_group_size" => r with { StrictGroupSize = ReadBool(p.Value) },
                    "strict" => r with { Strict = ReadBool(p.Value) },
                    "validation" => r with { Validation = ValidationPolicy.FromJson(p.Value, where) },
                    _ => throw new InvalidOperationException("unreachable"),
                });
            }
            try { r.Validate(); }
            catch (RecipeException ex) { throw new RecipeException($"{source}: {ex.Message}", ex); }
            // Version 1 (and files that said 1 while carrying version-2 keys, written before the version was raised) is read
            // as it is: every key keeps its meaning. In memory it is the current version.
            return r with { Version = CurrentVersion };
        }
    }

    private static readonly string[] TopKeys =
    [
        "version", "qtype", "scheme", "granularity", "reduce_range", "weight_observer", "activations", "dynamic_activations", "activation_observer",
        "entropy_search_start", "histogram_method", "method", "gptq", "calibration_samples", "min_elements", "include", "exclude", "module_types", "exclude_module_types", "overrides",
        "strict_group_size", "strict", "validation",
    ];

    private static QuantSpec ParseActivations(JsonElement e, string where)
    {
        QuantType type = DefaultActivations.Type; QuantScheme scheme = DefaultActivations.Scheme; bool reduce = false;
        foreach (var p in Properties(e, where, ["qtype", "scheme", "reduce_range"]))
        {
            switch (p.Name)
            {
                case "qtype": type = QuantTypeInfo.Parse(Str(p.Value)); break;
                case "scheme": scheme = ParseScheme(Str(p.Value)); break;
                default: reduce = ReadBool(p.Value); break;
            }
        }
        return new QuantSpec(type, scheme, QuantSharp.Granularity.Tensor, reduce);
    }

    private static GptqOptions ParseGptq(JsonElement e, string where)
    {
        var g = new GptqOptions();
        foreach (var p in Properties(e, where, ["damping", "block_size", "act_order"]))
        {
            g = Field($"{where}.{p.Name}", () => p.Name switch
            {
                "damping" => g with { DampingFraction = ReadDouble(p.Value) },
                "block_size" => g with { BlockSize = ReadInt(p.Value) },
                _ => g with { ActOrder = ReadBool(p.Value) },
            });
        }
        return g;
    }

    /// <summary>The properties of a JSON object, refusing unknown and duplicate keys by name.</summary>
    internal static IEnumerable<JsonProperty> Properties(JsonElement e, string where, IReadOnlyCollection<string> known)
    {
        if (e.ValueKind != JsonValueKind.Object) throw new RecipeException($"{where}: expected a JSON object, got {Kind(e)}.");
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var list = new List<JsonProperty>();
        foreach (var p in e.EnumerateObject())
        {
            if (!known.Contains(p.Name))
                throw new RecipeException($"{where}: unknown key \"{p.Name}\". Known keys: {string.Join(", ", known)}.");
            if (!seen.Add(p.Name))
                throw new RecipeException($"{where}: key \"{p.Name}\" appears twice; give it once.");
            list.Add(p);
        }
        return list;
    }

    /// <summary>Runs a field parser and turns its errors into one message naming the field.</summary>
    internal static T Field<T>(string where, Func<T> parse)
    {
        try { return parse(); }
        catch (Exception ex) when (ex is ArgumentException or InvalidOperationException or FormatException or KeyNotFoundException)
        {
            throw new RecipeException($"{where}: {ex.Message}", ex);
        }
    }

    private static string Kind(JsonElement e) => e.ValueKind.ToString().ToLowerInvariant();

    // Typed reads that say what the value was ("expected a number, got string"), not System.Text.Json's wording.
    internal static int ReadInt(JsonElement e) => Number(e).TryGetInt32(out int v) ? v : throw new InvalidOperationException($"expected a whole number, got {e.GetRawText()}");

    internal static long ReadLong(JsonElement e) => Number(e).TryGetInt64(out long v) ? v : throw new InvalidOperationException($"expected a whole number, got {e.GetRawText()}");

    internal static double ReadDouble(JsonElement e) => Number(e).GetDouble();

    internal static bool ReadBool(JsonElement e) => e.ValueKind is JsonValueKind.True or JsonValueKind.False
        ? e.GetBoolean()
        : throw new InvalidOperationException($"expected true or false, got {Kind(e)}");

    private static JsonElement Number(JsonElement e) => e.ValueKind == JsonValueKind.Number ? e : throw new InvalidOperationException($"expected a number, got {Kind(e)}");

    internal static string Str(JsonElement e) => e.ValueKind == JsonValueKind.String
        ? e.GetString()!
        : throw new InvalidOperationException($"expected a string, got {Kind(e)}");

    internal static List<string> StrList(JsonElement e) => e.ValueKind == JsonValueKind.Array
        ? e.EnumerateArray().Select(Str).ToList()
        : [Str(e)];

    private static IEnumerable<JsonElement> Array(JsonElement e) => e.ValueKind == JsonValueKind.Array
        ? e.EnumerateArray()
        : throw new InvalidOperationException($"expected an array, got {Kind(e)}");

    /// <summary>Parses <c>symmetric</c> or <c>affine</c>.</summary>
    internal static QuantScheme ParseScheme(string text) => text.Trim().ToLowerInvariant() switch
    {
        "symmetric" or "sym" => QuantScheme.Symmetric,
        "affine" or "asymmetric" or "asym" => QuantScheme.Affine,
        _ => throw new ArgumentException($"Unknown scheme '{text}'. Use symmetric or affine."),
    };

    /// <summary>Parses <c>entropy</c> (or <c>kl</c>) or <c>l2</c>.</summary>
    public static HistogramMethod ParseHistogramMethod(string text) => text.Trim().ToLowerInvariant() switch
    {
        "entropy" or "kl" => HistogramMethod.Entropy,
        "l2" => HistogramMethod.L2,
        _ => throw new ArgumentException($"Unknown histogram method '{text}'. Use entropy (KL, ONNX Runtime/TensorRT) or l2 (PyTorch)."),
    };

    /// <summary>Parses <c>rtn</c> (round to nearest) or <c>gptq</c>.</summary>
    public static QuantizationMethod ParseMethod(string text) => text.Trim().ToLowerInvariant() switch
    {
        "rtn" or "round-to-nearest" => QuantizationMethod.RoundToNearest,
        "gptq" => QuantizationMethod.Gptq,
        _ => throw new ArgumentException($"Unknown method '{text}'. Use rtn (round to nearest) or gptq (needs a model and calibration data)."),
    };

    /// <summary>Parses <c>error</c>, <c>warn</c> or <c>ignore</c>.</summary>
    internal static ValidationFailureMode ParseOnFailure(string text) => text.Trim().ToLowerInvariant() switch
    {
        "error" => ValidationFailureMode.Error,
        "warn" or "warning" => ValidationFailureMode.Warn,
        "ignore" => ValidationFailureMode.Ignore,
        _ => throw new ArgumentException($"Unknown on-failure mode '{text}'. Use error, warn or ignore."),
    };
}

/// <summary>
/// Settings for the weights whose parameter name (or owning module's name) matches <paramref name="Pattern"/>, a
/// <see cref="Glob"/>; null fields keep the recipe's setting (see <see cref="QuantizationRecipe"/> for the granularity rule).
/// </summary>
/// <param name="Pattern">Glob over parameter names, e.g. <c>lm_head.weight</c>, <c>conv1</c>, <c>layers.*.attn.*</c>.</param>
/// <param name="Type">Weight type.</param>
/// <param name="Scheme">Scheme.</param>
/// <param name="Granularity">Granularity.</param>
/// <param name="ReduceRange">Reduce range.</param>
/// <param name="ModuleType">Only weights of modules of this type name (e.g. <c>Linear</c>); model path only.</param>
public sealed record RecipeOverride(string Pattern, QuantType? Type = null, QuantScheme? Scheme = null,
    Granularity? Granularity = null, bool? ReduceRange = null, string? ModuleType = null)
{
    // Compiled patterns, shared by value: a cache field would be copied by `with { Pattern = ... }` and take part in equality.
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, Glob> s_globs = new(StringComparer.Ordinal);

    /// <summary>Observer of the input of the matching layers during calibration (static activations; model path), e.g.
    /// <c>percentile</c>; null keeps <see cref="QuantizationRecipe.ActivationObserver"/>.</summary>
    public string? ActivationObserver { get; init; }

    /// <summary>The histogram activation observer's KL search window for the matching layers; null keeps
    /// <see cref="QuantizationRecipe.EntropySearchStart"/>.</summary>
    public double? EntropySearchStart { get; init; }

    /// <summary>The histogram activation observer's search for the matching layers; null keeps
    /// <see cref="QuantizationRecipe.HistogramMethod"/>.</summary>
    public HistogramMethod? HistogramMethod { get; init; }

    /// <summary>An override that sets every weight field from <paramref name="spec"/>.</summary>
    public static RecipeOverride Of(string pattern, QuantSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        return new(pattern, spec.Type, spec.Scheme, spec.Type.IsInteger() ? spec.Granularity : null, spec.ReduceRange);
    }

    internal bool Matches(string parameterName, string? moduleType) =>
        (ModuleType is null || moduleType is null || ModuleType == moduleType)
        && QuantizationRecipe.NameMatches(s_globs.GetOrAdd(Pattern, p => new Glob(p)), parameterName);

    internal JsonObject ToJsonNode()
    {
        var j = new JsonObject { ["pattern"] = Pattern };
        if (Type is { } t) j["qtype"] = t.ToName();
        if (Scheme is { } s) j["scheme"] = QuantizationRecipe.SchemeName(s);
        if (Granularity is { } g) j["granularity"] = g.ToString();
        if (ReduceRange is { } r) j["reduce_range"] = r;
        if (ModuleType is { } m) j["module_type"] = m;
        if (ActivationObserver is { } a) j["activation_observer"] = QuantizationRecipe.NormalizeObserver(a);
        if (EntropySearchStart is { } e) j["entropy_search_start"] = e;
        if (HistogramMethod is { } h) j["histogram_method"] = QuantizationRecipe.HistogramMethodName(h);
        return j;
    }

    internal static RecipeOverride FromJson(JsonElement e, string where)
    {
        var o = new RecipeOverride("");
        bool hasPattern = false;
        foreach (var p in QuantizationRecipe.Properties(e, where,
                     ["pattern", "qtype", "scheme", "granularity", "reduce_range", "module_type", "activation_observer", "entropy_search_start", "histogram_method"]))
        {
            o = QuantizationRecipe.Field($"{where}.{p.Name}", () => p.Name switch
            {
                "pattern" => o with { Pattern = QuantizationRecipe.Str(p.Value) },
                "qtype" => o with { Type = QuantTypeInfo.Parse(QuantizationRecipe.Str(p.Value)) },
                "scheme" => o with { Scheme = QuantizationRecipe.ParseScheme(QuantizationRecipe.Str(p.Value)) },
                "granularity" => o with { Granularity = QuantSharp.Granularity.Parse(QuantizationRecipe.Str(p.Value)) },
                "reduce_range" => o with { ReduceRange = QuantizationRecipe.ReadBool(p.Value) },
                "activation_observer" => o with { ActivationObserver = QuantizationRecipe.Str(p.Value) },
                "entropy_search_start" => o with { EntropySearchStart = QuantizationRecipe.ReadDouble(p.Value) },
                "histogram_method" => o with { HistogramMethod = QuantizationRecipe.ParseHistogramMethod(QuantizationRecipe.Str(p.Value)) },
                _ => o with { ModuleType = QuantizationRecipe.Str(p.Value) },
            });
            hasPattern |= p.Name == "pattern";
        }
        if (!hasPattern) throw new RecipeException($"{where}: an override needs a \"pattern\".");
        return o;
    }
}

/// <summary>How a recipe rounds weights (<see cref="QuantizationRecipe.Method"/>; JSON <c>"method"</c>).</summary>
public enum QuantizationMethod
{
    /// <summary>Round to nearest with the weight observer's scales (<c>"rtn"</c>, the default; every path).</summary>
    RoundToNearest,
    /// <summary>GPTQ (<c>"gptq"</c>; <see cref="Gptq"/>): needs a model and calibration data, weights only.</summary>
    Gptq,
}

/// <summary>What to do when the post-quantization validation finds a problem.</summary>
public enum ValidationFailureMode
{
    /// <summary>Fail (the default): <see cref="Quantizer"/> throws and <see cref="CheckpointQuantizer"/> writes nothing under the output name.</summary>
    Error,
    /// <summary>Keep the result (model or written file) and list the problems as warnings.</summary>
    Warn,
    /// <summary>Keep the result; problems are only in the report.</summary>
    Ignore,
}

/// <summary>The one validation policy of a <see cref="QuantizationRecipe"/>, used by both quantizers.</summary>
public sealed record ValidationPolicy
{
    /// <summary>
    /// Default weight SQNR thresholds (dB). A uniform quantizer with step Δ has noise power Δ²/12; for roughly Gaussian
    /// weights with per-channel range ±4.5σ, int8 gives about 40 dB and int4 about 15 dB (group-128: about 20 dB);
    /// float16 keeps 11 significant bits (about 70 dB) and bfloat16 8 (about 53 dB). The thresholds leave about
    /// 10 dB for heavy tails and outliers: int8/uint8 30, int4/uint4 12, float16 60, bfloat16 40. 2-bit types have four
    /// levels (group-128: about 5-8 dB, lower for symmetric int2, whose range [-2, 1] leaves one level unused on the
    /// positive side): int2/uint2 1 dB, a floor that only catches broken weights.
    /// </summary>
    public static IReadOnlyDictionary<QuantType, double> DefaultSqnrThresholdsDb { get; } = new Dictionary<QuantType, double>
    {
        [QuantType.Int8] = 30, [QuantType.UInt8] = 30, [QuantType.Int4] = 12, [QuantType.UInt4] = 12,
        [QuantType.Int2] = 1, [QuantType.UInt2] = 1, [QuantType.Float16] = 60, [QuantType.BFloat16] = 40,
    };

    /// <summary>Run the validation (default true).</summary>
    public bool Enabled { get; init; } = true;

    /// <summary>What a failed check does (default <see cref="ValidationFailureMode.Error"/>).</summary>
    public ValidationFailureMode OnFailure { get; init; } = ValidationFailureMode.Error;

    /// <summary>Per-type weight SQNR thresholds in dB, on top of <see cref="DefaultSqnrThresholdsDb"/> (a type given here replaces its default).
    /// A layer quantized by GPTQ is held to its type's threshold on its calibration output SQNR instead of its weight SQNR
    /// (<see cref="Validation.LayerReport.CalibrationOutputSqnrDb"/>).</summary>
    public IReadOnlyDictionary<QuantType, double> SqnrThresholdsDb { get; init; } = new Dictionary<QuantType, double>();

    /// <summary>A layer whose output SQNR (dB) on the first calibration batch is below this fails (null: no bound; model path only).</summary>
    public double? MinOutputSqnrDb { get; init; }

    /// <summary>Save and reload the result and require identical bytes/outputs (default true).</summary>
    public bool ReloadCheck { get; init; } = true;

    /// <summary>The weight SQNR threshold (dB) of <paramref name="type"/>.</summary>
    public double ThresholdFor(QuantType type) =>
        SqnrThresholdsDb.TryGetValue(type, out double v) ? v : DefaultSqnrThresholdsDb.TryGetValue(type, out double d) ? d : double.NegativeInfinity;

    /// <summary>The measure a weight is gated on: its calibration output SQNR when it has one (a layer quantized by GPTQ,
    /// which moves weights away from their float values on purpose), else its weight SQNR.</summary>
    internal static string GateName(double? calibrationOutputSqnrDb) =>
        calibrationOutputSqnrDb is null ? "weight SQNR" : "calibration output SQNR";

    /// <summary>The SQNR gate of one quantized weight, the same on every path (quantizers and validator): the measure of
    /// <see cref="GateName"/> against <paramref name="type"/>'s threshold. Returns the problem, or null when it passes
    /// (or was not measured).</summary>
    internal string? SqnrProblem(QuantType type, double? weightSqnrDb, double? calibrationOutputSqnrDb)
    {
        if ((calibrationOutputSqnrDb ?? weightSqnrDb) is not { } value) return null;
        string what = GateName(calibrationOutputSqnrDb);
        double threshold = ThresholdFor(type);
        if (double.IsNaN(value)) return $"{what} is NaN";
        return value < threshold
            ? $"{what} {value.ToString("F2", CultureInfo.InvariantCulture)} dB is below the {type.ToName()} threshold {F(threshold)} dB"
            : null;
    }

    internal void Validate()
    {
        foreach (var (t, v) in SqnrThresholdsDb)
        {
            if (!double.IsFinite(v))
                throw new RecipeException($"Validation.SqnrThresholdsDb[{t.ToName()}] (sqnr_thresholds_db.{t.ToName()}) is {v}; give a finite number of dB, e.g. 30 (a JSON number like 1e400 overflows).");
        }
        if (MinOutputSqnrDb is { } o && !double.IsFinite(o))
            throw new RecipeException($"Validation.MinOutputSqnrDb (min_output_sqnr_db) is {o}; give a finite number of dB, e.g. 20.");
    }

    internal JsonObject ToJsonNode()
    {
        var th = new JsonObject();
        foreach (var t in QuantizationRecipe.SupportedWeightTypes) th[t.ToName()] = ThresholdFor(t);
        return new JsonObject
        {
            ["enabled"] = Enabled,
            ["on_failure"] = OnFailure.ToString().ToLowerInvariant(),
            ["sqnr_thresholds_db"] = th,
            ["min_output_sqnr_db"] = MinOutputSqnrDb,
            ["reload_check"] = ReloadCheck,
        };
    }

    internal static ValidationPolicy FromJson(JsonElement e, string where)
    {
        var v = new ValidationPolicy();
        foreach (var p in QuantizationRecipe.Properties(e, where, ["enabled", "on_failure", "sqnr_thresholds_db", "min_output_sqnr_db", "reload_check"]))
        {
            v = QuantizationRecipe.Field($"{where}.{p.Name}", () => p.Name switch
            {
                "enabled" => v with { Enabled = QuantizationRecipe.ReadBool(p.Value) },
                "on_failure" => v with { OnFailure = QuantizationRecipe.ParseOnFailure(QuantizationRecipe.Str(p.Value)) },
                "sqnr_thresholds_db" => v with { SqnrThresholdsDb = ParseThresholds(p.Value, $"{where}.sqnr_thresholds_db") },
                "min_output_sqnr_db" => v with { MinOutputSqnrDb = p.Value.ValueKind == JsonValueKind.Null ? null : QuantizationRecipe.ReadDouble(p.Value) },
                _ => v with { ReloadCheck = QuantizationRecipe.ReadBool(p.Value) },
            });
        }
        return v;
    }

    private static Dictionary<QuantType, double> ParseThresholds(JsonElement e, string where)
    {
        var names = QuantizationRecipe.SupportedWeightTypes.Select(t => t.ToName()).ToList();
        return QuantizationRecipe.Properties(e, where, names).ToDictionary(p => QuantTypeInfo.Parse(p.Name), p => QuantizationRecipe.Field($"{where}.{p.Name}", () => QuantizationRecipe.ReadDouble(p.Value)));
    }

    internal static string F(double v) => v.ToString("0.##", CultureInfo.InvariantCulture);
}
