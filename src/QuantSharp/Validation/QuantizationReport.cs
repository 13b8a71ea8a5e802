using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using QuantSharp.Serialization;

namespace QuantSharp.Validation;

/// <summary>
/// One row of a <see cref="QuantizationReport"/>: a quantized layer of a model, or a tensor of a checkpoint (quantized
/// or copied). The same fields on every path; those only one path knows are null there (<see cref="ModuleType"/>,
/// <see cref="Activations"/> and <see cref="OutputSqnrDb"/> need a model; <see cref="File"/>, <see cref="OriginalDType"/>
/// and <see cref="ThresholdDb"/> come from a checkpoint).
/// </summary>
public sealed record LayerReport
{
    /// <summary>Dotted layer name (model) or tensor name (checkpoint).</summary>
    public required string Name { get; init; }

    /// <summary>The float module type it replaced (e.g. <c>Linear</c>); null in a checkpoint.</summary>
    public string? ModuleType { get; init; }

    /// <summary>True when quantized; false for a checkpoint tensor copied bit-exactly.</summary>
    public bool Quantized { get; init; } = true;

    /// <summary>The weight quantization (after any group-size fallback); null when copied.</summary>
    public QuantSpec? Spec { get; init; }

    /// <summary>Weight quantization as text, e.g. <c>int4 symmetric group:32</c> (<c>-</c> when copied).</summary>
    public string Weights => Spec is null ? "-" : Modules.WeightQuantizer.Describe(Spec);

    /// <summary>Input quantization, e.g. <c>uint8 affine scale=0.0123 zp=17</c>, or null.</summary>
    public string? Activations { get; init; }

    /// <summary>SQNR of the dequantized weight against the float weight (dB); null when not measured.</summary>
    public double? WeightSqnrDb { get; init; }

    /// <summary>SQNR of the layer's output on the first calibration batch, quantized model against float model (dB); null without data.</summary>
    public double? OutputSqnrDb { get; init; }

    /// <summary>For a layer quantized by a method that minimizes its output error (GPTQ): the SQNR (dB) of the layer's
    /// output <c>X·Wqᵀ</c> against <c>X·Wᵀ</c> over the calibration inputs it was quantized with (computed from their second
    /// moment). It replaces <see cref="WeightSqnrDb"/> as the layer's validation gate, with the same per-type threshold
    /// (<see cref="ValidationPolicy.ThresholdFor"/>). <see cref="CheckpointValidator"/> reports the value the file recorded
    /// (<c>calibration_output_sqnr_db</c>) and gates on it the same way. Null for round-to-nearest layers.</summary>
    public double? CalibrationOutputSqnrDb { get; init; }

    /// <summary>The weight SQNR threshold that applied (dB), or null.</summary>
    public double? ThresholdDb { get; init; }

    /// <summary>Bytes of the float layer's parameters (model) or of the original tensor (checkpoint).</summary>
    public long OriginalBytes { get; init; }

    /// <summary>Bytes stored: the quantized layer's parameters and buffers (model), data + scales + zero points (checkpoint).</summary>
    public long StoredBytes { get; init; }

    /// <summary>Stored integers within [qmin, qmax], scales finite and positive.</summary>
    public bool RangeOk { get; init; } = true;

    /// <summary>What failed for this row (empty when it passed).</summary>
    public IReadOnlyList<string> Problems { get; init; } = [];

    /// <summary>Why <see cref="Spec"/> differs from the recipe's (a group size that does not divide), or null.</summary>
    public string? Fallback { get; init; }

    /// <summary>The output file (shard) name; null for a model.</summary>
    public string? File { get; init; }

    /// <summary>The original dtype of a checkpoint tensor; null for a model.</summary>
    public SafetensorsDType? OriginalDType { get; init; }

    /// <summary>The original shape of a checkpoint tensor; null for a model.</summary>
    public long[]? Shape { get; init; }

    /// <summary>Original bytes / stored bytes.</summary>
    public double Ratio => StoredBytes == 0 ? 1 : (double)OriginalBytes / StoredBytes;

    /// <summary>The row as JSON (keys as <c>quantsharp quantize --json</c> prints them; absent fields are omitted).</summary>
    public JsonObject ToJson()
    {
        var o = new JsonObject
        {
            ["name"] = Name,
            ["file"] = File,
            ["module_type"] = ModuleType,
            ["action"] = Quantized ? "quantized" : "copied",
            ["qtype"] = Spec?.Type.ToName(),
            ["spec"] = Spec?.ToString(),
            ["activations"] = Activations,
            ["original_dtype"] = OriginalDType?.ToString(),
            ["shape"] = Shape is null ? null : new JsonArray(Shape.Select(d => (JsonNode)JsonValue.Create(d)).ToArray()),
            ["original_bytes"] = OriginalBytes,
            ["stored_bytes"] = StoredBytes,
            ["sqnr_db"] = ReportJson.Number(WeightSqnrDb),
            ["output_sqnr_db"] = ReportJson.Number(OutputSqnrDb),
            ["calibration_output_sqnr_db"] = ReportJson.Number(CalibrationOutputSqnrDb),
            ["threshold_db"] = ReportJson.Number(ThresholdDb),
            ["range_ok"] = RangeOk,
            ["passed"] = Problems.Count == 0,
            ["problems"] = ReportJson.Strings(Problems),
            ["fallback"] = Fallback,
        };
        foreach (string key in (string[])["file", "module_type", "activations", "original_dtype", "shape", "output_sqnr_db", "calibration_output_sqnr_db"])
            if (o[key] is null) o.Remove(key);
        return o;
    }

    /// <summary>The row of a checkpoint tensor that is stored quantized (<paramref name="spec"/>) in <paramref name="file"/>.</summary>
    internal static LayerReport ForTensor(SafetensorsTensorInfo original, string file, QuantSpec spec, long stored, double? sqnrDb, double? thresholdDb,
        IReadOnlyList<string> problems, bool rangeOk = true, string? fallback = null) => new()
    {
        Name = original.Name, File = file, Spec = spec, OriginalDType = original.DType, Shape = original.Shape, OriginalBytes = original.ByteLength,
        StoredBytes = stored, WeightSqnrDb = sqnrDb, ThresholdDb = thresholdDb, Problems = problems, RangeOk = rangeOk, Fallback = fallback,
    };

    /// <summary>The row of a checkpoint tensor copied bit-exactly into <paramref name="file"/>.</summary>
    internal static LayerReport Copied(SafetensorsTensorInfo original, string file, IReadOnlyList<string> problems) => new()
    {
        Name = original.Name, File = file, Quantized = false, OriginalDType = original.DType, Shape = original.Shape,
        OriginalBytes = original.ByteLength, StoredBytes = original.ByteLength, Problems = problems,
    };

    internal static LayerReport FromJson(JsonObject o) => new()
    {
        Name = o["name"]!.GetValue<string>(),
        File = (string?)o["file"],
        ModuleType = (string?)o["module_type"],
        Quantized = (string?)o["action"] != "copied",
        Spec = (string?)o["spec"] is { } spec ? ReportJson.ReadSpec(spec) : null,
        Activations = (string?)o["activations"],
        OriginalDType = (string?)o["original_dtype"] is { } d ? Enum.Parse<SafetensorsDType>(d) : null,
        Shape = o["shape"] is JsonArray shape ? shape.Select(n => (long)n!).ToArray() : null,
        OriginalBytes = (long)o["original_bytes"]!,
        StoredBytes = (long)o["stored_bytes"]!,
        WeightSqnrDb = ReportJson.ReadNumber(o["sqnr_db"]),
        OutputSqnrDb = ReportJson.ReadNumber(o["output_sqnr_db"]),
        CalibrationOutputSqnrDb = ReportJson.ReadNumber(o["calibration_output_sqnr_db"]),
        ThresholdDb = ReportJson.ReadNumber(o["threshold_db"]),
        RangeOk = (bool?)o["range_ok"] ?? true,
        Problems = ReportJson.ReadStrings(o["problems"]),
        Fallback = (string?)o["fallback"],
    };
}

/// <summary>Why a layer was left in float (<see cref="SkippedLayer.Kind"/>; JSON <c>kind</c>, snake_case).</summary>
public enum SkipKind
{
    /// <summary>An exclude pattern matches its weight (<see cref="QuantizationRecipe.Exclude"/>; <c>excluded</c>).</summary>
    Excluded,
    /// <summary>Not selected: no include pattern matches it, or it has fewer elements than
    /// <see cref="QuantizationRecipe.MinElements"/> (<c>not_selected</c>).</summary>
    NotSelected,
    /// <summary>Its module type is filtered out (<see cref="QuantizationRecipe.ModuleTypes"/>,
    /// <see cref="QuantizationRecipe.ExcludeModuleTypes"/>; <c>module_type_filter</c>).</summary>
    ModuleTypeFilter,
    /// <summary>Its own parameters are all vectors (normalization, gains, biases): nothing a quantizer would store in fewer
    /// bits, as in torchao and quanto (<c>vector_parameters_only</c>).</summary>
    VectorParametersOnly,
    /// <summary>Its module type has a matrix parameter but no quantized module registered (<see cref="Modules.QuantizedModules"/>;
    /// <c>unsupported_module_type</c>).</summary>
    UnsupportedModuleType,
    /// <summary>Its weights cannot take the spec planned for them: a group size that does not divide under
    /// <see cref="QuantizationRecipe.StrictGroupSize"/>, an axis other than the output channels, a non-float weight, a layer
    /// option the quantized module lacks (<c>spec_does_not_fit</c>).</summary>
    SpecDoesNotFit,
}

/// <summary>A layer that was left in float, and why.</summary>
/// <param name="Name">Dotted layer name.</param>
/// <param name="ModuleType">Module type.</param>
/// <param name="Kind">Why, as a kind (what code should test).</param>
/// <param name="Reason">Why, for people (the message names the pattern, type or spec).</param>
public sealed record SkippedLayer(string Name, string ModuleType, SkipKind Kind, string Reason)
{
    /// <summary>True when the result is not what was asked (an unsupported module type, a spec its weights cannot take):
    /// the quantizer then also lists it in <see cref="QuantizationResult.Warnings"/>. False when the recipe's selection
    /// left it out or it has only vector parameters.</summary>
    public bool Unexpected => Kind is SkipKind.UnsupportedModuleType or SkipKind.SpecDoesNotFit;

    /// <summary>The JSON name of <see cref="Kind"/> (snake_case, e.g. <c>module_type_filter</c>).</summary>
    internal static string KindName(SkipKind kind) => System.Text.Json.JsonNamingPolicy.SnakeCaseLower.ConvertName(kind.ToString());

    /// <summary>The kind named <paramref name="name"/> by <see cref="KindName"/>.</summary>
    internal static SkipKind ParseKind(string name) =>
        Enum.GetValues<SkipKind>().Cast<SkipKind?>().FirstOrDefault(k => KindName(k!.Value) == name)
        ?? throw new FormatException($"unknown skipped-layer kind '{name}' (known: {string.Join(", ", Enum.GetValues<SkipKind>().Select(KindName))})");

    internal JsonObject ToJson() => new() { ["name"] = Name, ["module_type"] = ModuleType, ["kind"] = KindName(Kind), ["reason"] = Reason };

    internal static SkippedLayer FromJson(JsonNode n) =>
        new((string)n["name"]!, (string)n["module_type"]!, ParseKind((string?)n["kind"] ?? throw new FormatException("a skipped layer has no \"kind\"")), (string)n["reason"]!);
}

/// <summary>Outcome of a check that may not have run.</summary>
public enum CheckStatus
{
    /// <summary>The check passed.</summary>
    Passed,
    /// <summary>The check failed.</summary>
    Failed,
    /// <summary>The check was not run (see the detail).</summary>
    NotRun,
}

/// <summary>
/// The one report of every path: <see cref="Quantizer"/> (a model: one row per quantized layer, the model's output SQNR,
/// the reload check), <see cref="CheckpointQuantizer.Quantize"/> (a checkpoint: one row per tensor, quantized or copied,
/// and the files) and <see cref="CheckpointValidator.Compare"/> (a quantized checkpoint against its original). The rows
/// (<see cref="Layers"/>), problems, warnings and sizes mean the same everywhere; what only one path knows is null or
/// empty on the others. Both quantizers fill it from the same validate stage (one range check, SQNR in float64, one
/// <see cref="ValidationPolicy"/>). <see cref="ToJson"/> is the JSON <c>quantsharp quantize/validate --json</c> prints;
/// <see cref="Format"/> a text table.
/// </summary>
public sealed class QuantizationReport
{
    /// <summary>Report format version.</summary>
    public int Version { get; init; } = 2;

    /// <summary>One row per quantized layer (model, in model order) or per tensor (checkpoint, in input order).</summary>
    public IReadOnlyList<LayerReport> Layers { get; init; } = [];

    /// <summary>Layers of a model left in float (a checkpoint lists its copied tensors in <see cref="Layers"/>).</summary>
    public IReadOnlyList<SkippedLayer> Skipped { get; init; } = [];

    /// <summary>Every validation problem, one line each naming the layer or tensor (empty when it passed or did not run).</summary>
    public IReadOnlyList<string> Problems { get; init; } = [];

    /// <summary>Weights whose spec differs from the recipe's (group size that does not divide), one line each.</summary>
    public IReadOnlyList<string> Fallbacks => [.. Layers.Where(l => l.Fallback is not null).Select(l => l.Fallback!)];

    /// <summary>What differs from what was asked without failing: the <see cref="Fallbacks"/>, then what the run did not
    /// do that you may want to know (side files of a checkpoint folder not copied...).</summary>
    public IReadOnlyList<string> Warnings => [.. Fallbacks, .. RunWarnings];

    /// <summary>Warnings of the run itself (side files...).</summary>
    internal IReadOnlyList<string> RunWarnings { get; init; } = [];

    /// <summary>True when no check failed (or validation did not run).</summary>
    public bool Passed => Problems.Count == 0;

    /// <summary>True when validation ran.</summary>
    public bool Validated { get; init; } = true;

    /// <summary>Bytes of the float weights, each storage counted once: parameters and buffers of the float model, or the
    /// checkpoint's tensor data.</summary>
    public long OriginalBytes { get; init; }

    /// <summary>Bytes of the quantized form, counted the same way.</summary>
    public long StoredBytes { get; init; }

    /// <summary><see cref="StoredBytes"/> / <see cref="OriginalBytes"/> (the fraction of the float size).</summary>
    public double SizeRatio => OriginalBytes == 0 ? double.NaN : (double)StoredBytes / OriginalBytes;

    /// <summary><see cref="OriginalBytes"/> / <see cref="StoredBytes"/> (how many times smaller).</summary>
    public double Ratio => StoredBytes == 0 ? 1 : (double)OriginalBytes / StoredBytes;

    /// <summary>All stored integers within range and all scales finite and positive.</summary>
    public bool RangeCheckPassed => Layers.All(l => l.RangeOk);

    /// <summary>SQNR of the model's output on the first calibration batch (dB); null without data or for a checkpoint.</summary>
    public double? ModelOutputSqnrDb { get; init; }

    /// <summary>Samples used for calibration (0 without data).</summary>
    public long CalibrationSamples { get; init; }

    /// <summary>Save-then-load gives bit-identical outputs (a model) or the strict reader reads back the bytes written (a checkpoint).</summary>
    public CheckStatus ReloadCheck { get; init; } = CheckStatus.NotRun;

    /// <summary>Why the reload check failed or did not run.</summary>
    public string? ReloadDetail { get; init; }

    /// <summary>The input checkpoint (<see cref="CheckpointValidator.Compare"/>: the original); null for a model.</summary>
    public string? Input { get; init; }

    /// <summary>The output checkpoint (<see cref="CheckpointValidator.Compare"/>: the quantized one); null for a model.</summary>
    public string? Output { get; init; }

    /// <summary>True when the output was written under its final name (a checkpoint).</summary>
    public bool Written { get; init; }

    /// <summary>Bytes of the input files (a checkpoint; 0 for a model).</summary>
    public long InputFileBytes { get; init; }

    /// <summary>Bytes of the output files (a checkpoint; 0 when not written).</summary>
    public long OutputFileBytes { get; init; }

    /// <summary>Wall-clock time of the run.</summary>
    public TimeSpan Elapsed { get; init; }

    /// <summary>The report as JSON: the form <c>quantsharp quantize --json</c> and <c>validate --json</c> print (snake_case
    /// keys; infinite SQNR as <c>"inf"</c>). Keys a path does not fill (files for a model, model output SQNR for a
    /// checkpoint) are omitted.</summary>
    public JsonObject ToJson()
    {
        var o = new JsonObject
        {
            ["version"] = Version,
            ["input"] = Input,
            ["output"] = Output,
            ["written"] = Written,
            ["validated"] = Validated,
            ["passed"] = Passed,
            ["input_file_bytes"] = InputFileBytes,
            ["output_file_bytes"] = OutputFileBytes,
            ["original_tensor_bytes"] = OriginalBytes,
            ["stored_tensor_bytes"] = StoredBytes,
            ["ratio"] = Math.Round(Ratio, 4),
            ["seconds"] = Math.Round(Elapsed.TotalSeconds, 3),
            ["quantized"] = Layers.Count(t => t.Quantized),
            ["copied"] = Layers.Count(t => !t.Quantized),
            ["min_sqnr_db"] = ReportJson.Number(Layers.Where(t => t.WeightSqnrDb is not null).Select(t => t.WeightSqnrDb).DefaultIfEmpty(null).Min()),
            ["model_output_sqnr_db"] = ReportJson.Number(ModelOutputSqnrDb),
            ["calibration_samples"] = CalibrationSamples,
            ["reload_check"] = ReloadCheck.ToString(),
            ["reload_detail"] = ReloadDetail,
            ["problems"] = ReportJson.Strings(Problems),
            ["warnings"] = ReportJson.Strings(Warnings),
            ["run_warnings"] = ReportJson.Strings(RunWarnings),
            ["skipped"] = new JsonArray(Skipped.Select(k => (JsonNode)k.ToJson()).ToArray()),
            ["tensors"] = new JsonArray(Layers.Select(t => (JsonNode)t.ToJson()).ToArray()),
        };
        foreach (string key in (string[])["input", "output", "model_output_sqnr_db", "reload_detail"])
            if (o[key] is null) o.Remove(key);
        return o;
    }

    /// <summary>Reads a report written by <see cref="ToJson"/>.</summary>
    /// <param name="json">The JSON text.</param>
    /// <exception cref="JsonException">Not a report.</exception>
    public static QuantizationReport FromJson(string json)
    {
        var o = JsonNode.Parse(json) as JsonObject ?? throw new JsonException("The JSON text holds no report (expected an object).");
        try
        {
            return new QuantizationReport
            {
                Version = (int?)o["version"] ?? 2,
                Input = (string?)o["input"],
                Output = (string?)o["output"],
                Written = (bool?)o["written"] ?? false,
                Validated = (bool?)o["validated"] ?? true,
                InputFileBytes = (long?)o["input_file_bytes"] ?? 0,
                OutputFileBytes = (long?)o["output_file_bytes"] ?? 0,
                OriginalBytes = (long?)o["original_tensor_bytes"] ?? 0,
                StoredBytes = (long?)o["stored_tensor_bytes"] ?? 0,
                Elapsed = TimeSpan.FromSeconds((double?)o["seconds"] ?? 0),
                ModelOutputSqnrDb = ReportJson.ReadNumber(o["model_output_sqnr_db"]),
                CalibrationSamples = (long?)o["calibration_samples"] ?? 0,
                ReloadCheck = (string?)o["reload_check"] is { } rc ? Enum.Parse<CheckStatus>(rc) : CheckStatus.NotRun,
                ReloadDetail = (string?)o["reload_detail"],
                Problems = ReportJson.ReadStrings(o["problems"]),
                RunWarnings = ReportJson.ReadStrings(o["run_warnings"]),
                Skipped = o["skipped"] is JsonArray sk
                    ? [.. sk.Select(n => SkippedLayer.FromJson(n!))]
                    : [],
                Layers = o["tensors"] is JsonArray rows ? [.. rows.Select(n => LayerReport.FromJson((JsonObject)n!))] : [],
            };
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or ArgumentException or InvalidCastException or NullReferenceException)
        {
            throw new JsonException($"The JSON text is not a report: {e.Message}", e);
        }
    }

    /// <summary>A plain-text table of the report.</summary>
    public string Format()
    {
        var ci = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        // The calibration output SQNR column only when a layer has one (GPTQ), so round-to-nearest tables stay as they were.
        bool calibrationColumn = Layers.Any(l => l.CalibrationOutputSqnrDb is not null);
        List<string> head = ["layer", "type", "weights", "act", "weight SQNR dB", "output SQNR dB", "float KiB", "quant KiB", "range"];
        if (calibrationColumn) head.Insert(5, "calib. output SQNR dB");
        var rows = Layers.Select(l =>
        {
            List<string> cells =
            [
                l.Name, l.ModuleType ?? (l.Quantized ? "tensor" : "copied"), l.Weights, l.Activations ?? "-",
                l.WeightSqnrDb is { } w ? Db(w) : "-", l.OutputSqnrDb is { } o ? Db(o) : "-",
                (l.OriginalBytes / 1024.0).ToString("F1", ci), (l.StoredBytes / 1024.0).ToString("F1", ci),
                l.RangeOk ? "ok" : "FAIL",
            ];
            if (calibrationColumn) cells.Insert(5, l.CalibrationOutputSqnrDb is { } c ? Db(c) : "-");
            return cells.ToArray();
        }).ToList();
        int[] width = head.Select((h, i) => Math.Max(h.Length, rows.Count == 0 ? 0 : rows.Max(r => r[i].Length))).ToArray();
        string Line(string[] cells) => string.Join("  ", cells.Select((c, i) => i >= 4 ? c.PadLeft(width[i]) : c.PadRight(width[i]))).TrimEnd();
        sb.AppendLine(Line([.. head]));
        sb.AppendLine(string.Join("  ", width.Select(w => new string('-', w))));
        foreach (var r in rows) sb.AppendLine(Line(r));
        foreach (var f in Fallbacks) sb.AppendLine(CultureInfo.InvariantCulture, $"fallback {f}");
        foreach (var w in RunWarnings) sb.AppendLine(CultureInfo.InvariantCulture, $"warning {w}");
        foreach (var s in Skipped) sb.AppendLine(CultureInfo.InvariantCulture, $"skipped {s.Name} ({s.ModuleType}): {s.Reason}");
        sb.AppendLine(CultureInfo.InvariantCulture,
            $"size: {OriginalBytes / 1024.0:F1} KiB -> {StoredBytes / 1024.0:F1} KiB ({SizeRatio * 100:F1}% of float)");
        if (ModelOutputSqnrDb is { } m) sb.AppendLine(CultureInfo.InvariantCulture, $"model output SQNR: {Db(m)} dB on {CalibrationSamples} calibration samples' first batch");
        sb.AppendLine(CultureInfo.InvariantCulture, $"reload check: {ReloadCheck}{(ReloadDetail is null ? "" : " (" + ReloadDetail + ")")}");
        sb.AppendLine($"range check: {(RangeCheckPassed ? "passed" : "FAILED")}");
        sb.Append(Passed ? "validation: passed" : "validation: FAILED\n  " + string.Join("\n  ", Problems));
        return sb.ToString();

        string Db(double v) => double.IsPositiveInfinity(v) ? "inf" : v.ToString("F2", ci);
    }

    /// <inheritdoc/>
    public override string ToString() => Format();
}

/// <summary>JSON helpers of the report: numbers that may be infinite, string lists.</summary>
internal static class ReportJson
{
    /// <summary>A number as JSON, which has no infinities or NaN: those become the strings "inf", "-inf" and "nan".</summary>
    public static JsonNode? Number(double? v) => v switch
    {
        null => null,
        double d when double.IsPositiveInfinity(d) => "inf",
        double d when double.IsNegativeInfinity(d) => "-inf",
        double d when double.IsNaN(d) => "nan",
        double d => Math.Round(d, 4),
    };

    /// <summary>Reads what <see cref="Number"/> wrote.</summary>
    public static double? ReadNumber(JsonNode? n) => n switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out string? s) => s switch
        {
            "inf" => double.PositiveInfinity,
            "-inf" => double.NegativeInfinity,
            _ => double.NaN,
        },
        _ => (double)n,
    };

    /// <summary>Reads a spec written by <see cref="QuantSpec.ToString"/> (<c>int4 symmetric group:32</c>, <c>float16</c>).</summary>
    public static QuantSpec ReadSpec(string text)
    {
        string[] parts = text.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        var type = QuantTypeInfo.Parse(parts[0]);
        return parts.Length == 1
            ? new QuantSpec(type)
            : new QuantSpec(type, QuantizationRecipe.ParseScheme(parts[1]), Granularity.Parse(parts[2]), reduceRange: parts.Length > 3);
    }

    public static JsonArray Strings(IEnumerable<string> items) => new(items.Select(p => (JsonNode)JsonValue.Create(p)!).ToArray());

    public static IReadOnlyList<string> ReadStrings(JsonNode? n) => n is JsonArray a ? [.. a.Select(x => (string)x!)] : [];
}

/// <summary>Thrown when post-quantization validation fails and <see cref="ValidationFailureMode.Error"/> is in effect.</summary>
public sealed class QuantizationValidationException : QuantizationException
{
    /// <summary>Creates the exception for <paramref name="report"/>.</summary>
    /// <param name="report">The failed report.</param>
    public QuantizationValidationException(QuantizationReport report)
        : base("Quantization validation failed:\n  " + string.Join("\n  ", report.Problems) +
               "\nPass onFailure: ValidationFailureMode.Warn to keep the model anyway, or change the configuration (e.g. int8 for the failing layers).")
    {
        Report = report;
    }

    /// <summary>The report with the failures.</summary>
    public QuantizationReport Report { get; }
}
