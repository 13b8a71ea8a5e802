using QuantSharp.Calibration;
using QuantSharp.Modules;

namespace QuantSharp;

/// <summary>
/// What <see cref="Quantizer.Quantize(TorchSharp.torch.nn.Module, QuantizationConfig, Func{TorchSharp.torch.nn.Module}?, IEnumerable{TorchSharp.torch.Tensor}?, bool, QuantSpec?, int?, ValidationFailureMode?, IProgress{CalibrationProgress}?)"/>
/// does: the weight spec, optional static activation quantization, which layers, and per-layer overrides.
/// Immutable and validated by <see cref="Validate"/> (called by the quantizer).
/// </summary>
/// <remarks>
/// Precedence: explicit arguments of <c>Quantize</c> &gt; this object &gt; the defaults shown here.
/// Layer names are the dotted names of <c>named_modules()</c> (e.g. <c>features.0</c>, <c>classifier</c>);
/// patterns are globs where <c>*</c> matches any run of characters (dots included) and <c>?</c> one character.
/// </remarks>
public sealed record QuantizationConfig
{
    /// <summary>Configuration format version (written to checkpoints).</summary>
    public const int Version = 1;

    /// <summary>Default weight spec: int8, symmetric, per output channel (as torchao's int8 weight-only).</summary>
    public static QuantSpec DefaultWeights { get; } = new(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0));

    /// <summary>Default activation spec for W8A8: uint8 affine per-tensor (PyTorch's default activation observer).</summary>
    public static QuantSpec DefaultActivations { get; } = new(QuantType.UInt8, QuantScheme.Affine, Granularity.Tensor);

    /// <summary>Default number of calibration samples (counted along the batch dimension).</summary>
    public const int DefaultCalibrationSamples = 150;

    /// <summary>Weight quantization for every selected layer without an override.</summary>
    public QuantSpec Weights { get; init; } = DefaultWeights;

    /// <summary>
    /// Static activation quantization of each selected Linear/Conv layer's input (W8A8 with int8 weights), or null
    /// for weight-only quantization. Must be per-tensor with an 8-bit integer type. Requires calibration data.
    /// </summary>
    public QuantSpec? Activations { get; init; }

    /// <summary>
    /// Dynamic W8A8 (torchao's <c>Int8DynamicActivationInt8WeightConfig</c>): every replaced Linear quantizes each input
    /// row to int8 on the fly (symmetric, <c>scale = max(amax / 127, eps)</c>) and, with int8 per-row weights, multiplies
    /// in integers. Needs no calibration; excludes <see cref="Activations"/>. Other layer types stay weight-only. The
    /// setting belongs to the model in memory: files store the weights, so set it again after loading.
    /// </summary>
    public bool DynamicActivations { get; init; }

    /// <summary>Observer used for activations: <c>minmax</c> (default), <c>moving-average</c>, <c>histogram</c> or <c>percentile</c> (<see cref="Observers.ObserverFactory"/>).</summary>
    public string Observer { get; init; } = "minmax";

    /// <summary>Calibration samples to run (stop after at least this many, counted along dimension 0).</summary>
    public int CalibrationSamples { get; init; } = DefaultCalibrationSamples;

    /// <summary>Only these module types are quantized (empty: all supported types). E.g. <c>typeof(Linear)</c>.</summary>
    public IReadOnlyList<Type> IncludeTypes { get; init; } = [];

    /// <summary>Module types never quantized.</summary>
    public IReadOnlyList<Type> ExcludeTypes { get; init; } = [];

    /// <summary>Only layers whose name matches one of these globs are quantized (empty: all).</summary>
    public IReadOnlyList<string> Include { get; init; } = [];

    /// <summary>Layers whose name matches one of these globs are never quantized. Exclusion wins over inclusion and overrides.</summary>
    public IReadOnlyList<string> Exclude { get; init; } = [];

    /// <summary>
    /// Per-layer weight specs: the first pattern (in order) that matches a selected layer's name sets its spec,
    /// e.g. <c>[("features.0", int8 per-channel), ("classifier", int8 per-channel)]</c> with <see cref="Weights"/> int4 group:32.
    /// </summary>
    public IReadOnlyList<KeyValuePair<string, QuantSpec>> Overrides { get; init; } = [];

    /// <summary>Validation after quantization (SQNR, size, reload and range checks).</summary>
    public ValidationOptions Validation { get; init; } = new();

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid setting and how to fix it.</summary>
    public void Validate()
    {
        ValidateWeights(Weights, nameof(Weights));
        foreach (var (pattern, spec) in Overrides)
        {
            ValidatePattern(pattern, nameof(Overrides));
            ValidateWeights(spec, $"{nameof(Overrides)}['{pattern}']");
        }
        if (Activations is { } a)
        {
            try
            {
                a.Validate();
            }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"Activations: {e.Message}", e);
            }
            if (a.Type is not (QuantType.Int8 or QuantType.UInt8))
                throw new ArgumentException($"Activations: static activation quantization supports int8 or uint8, not {a.Type.ToName()}. Use uint8 affine (PyTorch's default) or int8.");
            if (a.Granularity is not PerTensor)
                throw new ArgumentException($"Activations: only per-tensor activation quantization is supported, not {a.Granularity}.");
        }
        if (DynamicActivations && Activations is not null)
            throw new ArgumentException("DynamicActivations and Activations exclude each other: dynamic W8A8 quantizes inputs on the fly, static W8A8 with calibrated ranges. Set one.");
        if (CalibrationSamples <= 0)
            throw new ArgumentException($"CalibrationSamples must be positive, got {CalibrationSamples} (default {DefaultCalibrationSamples}).");
        if (string.IsNullOrWhiteSpace(Observer) || !Observers.ObserverFactory.Names.Contains(Observer.Trim().ToLowerInvariant()) && Observer.Trim().ToLowerInvariant() != "min-max")
            throw new ArgumentException($"Unknown observer '{Observer}'. Use one of: {string.Join(", ", Observers.ObserverFactory.Names)}.");
        foreach (var p in Include) ValidatePattern(p, nameof(Include));
        foreach (var p in Exclude) ValidatePattern(p, nameof(Exclude));
        foreach (var t in IncludeTypes.Concat(ExcludeTypes))
        {
            if (t is null || !typeof(TorchSharp.torch.nn.Module).IsAssignableFrom(t))
                throw new ArgumentException($"IncludeTypes/ExcludeTypes must hold TorchSharp module types (e.g. typeof(Linear)), got {t?.FullName ?? "null"}.");
        }
        Validation.Validate();
    }

    private static void ValidateWeights(QuantSpec? spec, string what)
    {
        if (spec is null) throw new ArgumentException($"{what}: a weight spec is required (e.g. int8 symmetric per-channel).");
        try
        {
            spec.Validate();
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"{what}: {e.Message}", e);
        }
        if (spec.Type is QuantType.Int2 or QuantType.UInt2)
            throw new ArgumentException($"{what}: {spec.Type.ToName()} weights are not supported by the quantized modules; use int4/uint4, int8/uint8, float16 or bfloat16.");
        if (spec.Granularity is PerAxis { Axis: not 0 })
            throw new ArgumentException($"{what}: layer weights are quantized per output channel (axis 0); {spec.Granularity} is not supported.");
        if (spec.Granularity is PerGroup { GroupSize: <= 0 or > int.MaxValue })
            throw new ArgumentException($"{what}: group size must be positive.");
    }

    private static void ValidatePattern(string? pattern, string what)
    {
        if (string.IsNullOrWhiteSpace(pattern))
            throw new ArgumentException($"{what}: layer name patterns must not be empty (use '*' to match every layer).");
    }

    /// <summary>Int8 symmetric per-channel weights (the default).</summary>
    public static QuantizationConfig Int8WeightOnly() => new();

    /// <summary>Int4 symmetric weights in groups of <paramref name="groupSize"/> along the reduction axis.</summary>
    /// <param name="groupSize">Elements per group (e.g. 32, 64, 128).</param>
    public static QuantizationConfig Int4WeightOnly(int groupSize = 128) =>
        new() { Weights = new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(groupSize)) };

    /// <summary>Int8 per-channel weights and calibrated uint8 affine activations (static W8A8).</summary>
    public static QuantizationConfig Int8Static() => new() { Activations = DefaultActivations };

    /// <summary>Int8 per-channel weights and int8 inputs quantized per row on each call (dynamic W8A8, no calibration).</summary>
    public static QuantizationConfig Int8Dynamic() => new() { DynamicActivations = true };

    /// <summary>Half-precision weights (no scales).</summary>
    public static QuantizationConfig Float16() =>
        new() { Weights = new QuantSpec(QuantType.Float16, QuantScheme.Symmetric, Granularity.Tensor) };

    /// <summary>bfloat16 weights (no scales).</summary>
    public static QuantizationConfig BFloat16() =>
        new() { Weights = new QuantSpec(QuantType.BFloat16, QuantScheme.Symmetric, Granularity.Tensor) };
}

/// <summary>What to do when the post-quantization validation finds a problem.</summary>
public enum ValidationFailureMode
{
    /// <summary>Fail (the default): <see cref="Quantizer"/> throws <see cref="Validation.QuantizationValidationException"/>;
    /// <see cref="CheckpointQuantizer"/> writes nothing under the output name and the report says why.</summary>
    Error,
    /// <summary>Keep the result (model or written file) and list the problems as warnings.</summary>
    Warn,
    /// <summary>Keep the result; problems are only in the report.</summary>
    Ignore,
}

/// <summary>Settings of the validation report that follows quantization.</summary>
public sealed record ValidationOptions
{
    /// <summary>Run the validation (default true).</summary>
    public bool Enabled { get; init; } = true;

    /// <summary>What a failed check does (default <see cref="ValidationFailureMode.Error"/>).</summary>
    public ValidationFailureMode OnFailure { get; init; } = ValidationFailureMode.Error;

    /// <summary>A layer whose weight SQNR (dB) is below this fails (null: no bound).</summary>
    public double? MinWeightSqnrDb { get; init; }

    /// <summary>A layer whose output SQNR (dB) on the calibration batch is below this fails (null: no bound).</summary>
    public double? MinOutputSqnrDb { get; init; }

    /// <summary>Save and reload the quantized model (needs a model factory) and require identical outputs (default true).</summary>
    public bool ReloadCheck { get; init; } = true;

    internal void Validate()
    {
        if (MinWeightSqnrDb is { } w && double.IsNaN(w)) throw new ArgumentException("Validation.MinWeightSqnrDb must be a number.");
        if (MinOutputSqnrDb is { } o && double.IsNaN(o)) throw new ArgumentException("Validation.MinOutputSqnrDb must be a number.");
    }
}
