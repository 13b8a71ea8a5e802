using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace QuantSharp.Validation;

/// <summary>
/// What every quantization report says, whichever path made it: <see cref="QuantizationReport"/> (a model, per
/// layer: <see cref="Quantizer.Quantize{T}(T, QuantizationRecipe, Func{T}?, IEnumerable{TorchSharp.torch.Tensor}?, bool, QuantSpec?, int?, ValidationFailureMode?, IProgress{Calibration.CalibrationProgress}?)"/>),
/// <see cref="CheckpointQuantizationReport"/> (a checkpoint, per tensor: <see cref="CheckpointQuantizer.Quantize"/>) and
/// <see cref="CheckpointValidationReport"/> (<see cref="CheckpointValidator.Compare"/>). Both quantizers fill it from the
/// same validate stage (one range check, SQNR in float64, one <see cref="ValidationPolicy"/>), so code that only needs the
/// verdict, the problems and the sizes handles all three through this interface.
/// </summary>
public interface IQuantizationReport
{
    /// <summary>True when validation found no problem (or did not run).</summary>
    bool Passed { get; }

    /// <summary>Every validation problem, each naming the layer or tensor (the model report's <c>Failures</c>).</summary>
    IReadOnlyList<string> Problems { get; }

    /// <summary>What differs from what was asked without failing: group-size fallbacks and the like.</summary>
    IReadOnlyList<string> Warnings { get; }

    /// <summary>Bytes of the float weights (model: parameters and buffers; checkpoint: tensor data), each storage counted once.</summary>
    long OriginalBytes { get; }

    /// <summary>Bytes of the quantized form, counted the same way.</summary>
    long StoredBytes { get; }
}

/// <summary>Validation of one quantized layer.</summary>
/// <param name="Name">Dotted layer name.</param>
/// <param name="ModuleType">The float module type it replaced (e.g. <c>Linear</c>).</param>
/// <param name="Weights">Weight quantization, e.g. <c>int4 symmetric group:32</c>.</param>
/// <param name="Activations">Input quantization, e.g. <c>uint8 affine scale=0.0123 zp=17</c>, or null.</param>
/// <param name="WeightSqnrDb">SQNR of the dequantized weight against the float weight (dB); the validation gate of
/// round-to-nearest layers.</param>
/// <param name="OutputSqnrDb">SQNR of the layer's output on the first calibration batch, quantized model against float model (dB); null without data.</param>
/// <param name="FloatBytes">Bytes of the float layer's parameters.</param>
/// <param name="QuantizedBytes">Bytes of the quantized layer's parameters and buffers.</param>
/// <param name="RangeOk">Stored integers within [qmin, qmax], scales finite and positive.</param>
/// <param name="Problems">What failed for this layer (empty when it passed).</param>
/// <param name="CalibrationOutputSqnrDb">For a layer quantized by a method that minimizes its output error (GPTQ): the
/// SQNR (dB) of the layer's output <c>X·Wqᵀ</c> against <c>X·Wᵀ</c> over the calibration inputs it was quantized with
/// (computed from their second moment). It replaces <paramref name="WeightSqnrDb"/> as the layer's validation gate, with
/// the same per-type threshold (<see cref="ValidationPolicy.ThresholdFor"/>). Null for round-to-nearest layers.</param>
public sealed record LayerReport(
    string Name, string ModuleType, string Weights, string? Activations,
    double WeightSqnrDb, double? OutputSqnrDb, long FloatBytes, long QuantizedBytes, bool RangeOk,
    IReadOnlyList<string> Problems, double? CalibrationOutputSqnrDb = null);

/// <summary>A layer that was left in float, and why.</summary>
/// <param name="Name">Dotted layer name.</param>
/// <param name="ModuleType">Module type.</param>
/// <param name="Reason">Why it was not quantized.</param>
public sealed record SkippedLayer(string Name, string ModuleType, string Reason);

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
/// The validation report produced after quantization: per-layer SQNR and size, range checks, the reload check, and
/// the model's size before and after. <see cref="Format"/> renders a text table; <see cref="ToJson"/> JSON.
/// </summary>
public sealed class QuantizationReport : IQuantizationReport
{
    /// <summary>Report format version.</summary>
    public int Version { get; init; } = 1;

    /// <summary>One entry per quantized layer, in model order.</summary>
    public IReadOnlyList<LayerReport> Layers { get; init; } = [];

    /// <summary>Layers left in float.</summary>
    public IReadOnlyList<SkippedLayer> Skipped { get; init; } = [];

    /// <summary>Weights whose spec differs from the recipe's (group size that does not divide), one line each.</summary>
    public IReadOnlyList<string> Fallbacks { get; init; } = [];

    /// <summary>Parameter + buffer bytes of the float model.</summary>
    public long FloatBytes { get; init; }

    /// <summary>Parameter + buffer bytes of the quantized model.</summary>
    public long QuantizedBytes { get; init; }

    /// <summary><see cref="QuantizedBytes"/> / <see cref="FloatBytes"/>.</summary>
    public double SizeRatio => FloatBytes == 0 ? double.NaN : (double)QuantizedBytes / FloatBytes;

    /// <summary>SQNR of the model's output on the first calibration batch (dB), or null without data.</summary>
    public double? ModelOutputSqnrDb { get; init; }

    /// <summary>Samples used for calibration (0 without data).</summary>
    public long CalibrationSamples { get; init; }

    /// <summary>Save-then-load gives bit-identical outputs.</summary>
    public CheckStatus ReloadCheck { get; init; } = CheckStatus.NotRun;

    /// <summary>Why the reload check failed or did not run.</summary>
    public string? ReloadDetail { get; init; }

    /// <summary>All stored integers within range and all scales finite and positive.</summary>
    public bool RangeCheckPassed => Layers.All(l => l.RangeOk);

    /// <summary>Every failed check, one line each.</summary>
    public IReadOnlyList<string> Failures { get; init; } = [];

    /// <summary>True when no check failed.</summary>
    public bool Passed => Failures.Count == 0;

    IReadOnlyList<string> IQuantizationReport.Problems => Failures;
    IReadOnlyList<string> IQuantizationReport.Warnings => Fallbacks;
    long IQuantizationReport.OriginalBytes => FloatBytes;
    long IQuantizationReport.StoredBytes => QuantizedBytes;

    private static readonly JsonSerializerOptions s_json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.CamelCase) },
    };

    /// <summary>The report as indented JSON (camelCase names; infinite SQNR written as <c>"Infinity"</c>).</summary>
    public string ToJson() => JsonSerializer.Serialize(this, s_json);

    /// <summary>Reads a report written by <see cref="ToJson"/>.</summary>
    /// <param name="json">The JSON text.</param>
    public static QuantizationReport FromJson(string json) =>
        JsonSerializer.Deserialize<QuantizationReport>(json, s_json) ?? throw new ArgumentException("The JSON text holds no report.", nameof(json));

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
                l.Name, l.ModuleType, l.Weights, l.Activations ?? "-",
                Db(l.WeightSqnrDb), l.OutputSqnrDb is { } o ? Db(o) : "-",
                (l.FloatBytes / 1024.0).ToString("F1", ci), (l.QuantizedBytes / 1024.0).ToString("F1", ci),
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
        foreach (var s in Skipped) sb.AppendLine(CultureInfo.InvariantCulture, $"skipped {s.Name} ({s.ModuleType}): {s.Reason}");
        sb.AppendLine(CultureInfo.InvariantCulture,
            $"size: {FloatBytes / 1024.0:F1} KiB -> {QuantizedBytes / 1024.0:F1} KiB ({SizeRatio * 100:F1}% of float)");
        if (ModelOutputSqnrDb is { } m) sb.AppendLine(CultureInfo.InvariantCulture, $"model output SQNR: {Db(m)} dB on {CalibrationSamples} calibration samples' first batch");
        sb.AppendLine(CultureInfo.InvariantCulture, $"reload check: {ReloadCheck}{(ReloadDetail is null ? "" : " (" + ReloadDetail + ")")}");
        sb.AppendLine($"range check: {(RangeCheckPassed ? "passed" : "FAILED")}");
        sb.Append(Passed ? "validation: passed" : "validation: FAILED\n  " + string.Join("\n  ", Failures));
        return sb.ToString();

        string Db(double v) => double.IsPositiveInfinity(v) ? "inf" : v.ToString("F2", ci);
    }

    /// <inheritdoc/>
    public override string ToString() => Format();
}

/// <summary>Thrown when post-quantization validation fails and <see cref="ValidationFailureMode.Error"/> is in effect.</summary>
public sealed class QuantizationValidationException : QuantizationException
{
    /// <summary>Creates the exception for <paramref name="report"/>.</summary>
    /// <param name="report">The failed report.</param>
    public QuantizationValidationException(QuantizationReport report)
        : base("Quantization validation failed:\n  " + string.Join("\n  ", report.Failures) +
               "\nPass onFailure: ValidationFailureMode.Warn to keep the model anyway, or change the configuration (e.g. int8 for the failing layers).")
    {
        Report = report;
    }

    /// <summary>The report with the failures.</summary>
    public QuantizationReport Report { get; }
}
