using System.Globalization;
using System.Text.Json.Nodes;
using QuantSharp.Serialization;

namespace QuantSharp;

/// <summary>A checkpoint could not be quantized (bad input, bad settings, or the output could not be written).
/// Nothing was written under the output name.</summary>
public sealed class CheckpointQuantizationException : QuantizationException
{
    /// <summary>Creates the exception.</summary>
    public CheckpointQuantizationException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>Validation found problems and the policy was <see cref="ValidationFailureMode.Error"/>: nothing was written
/// under the output name. <see cref="Report"/> lists every tensor.</summary>
public sealed class CheckpointValidationException : QuantizationException
{
    /// <summary>Creates the exception.</summary>
    public CheckpointValidationException(CheckpointQuantizationReport report)
        : base($"Validation failed for {report.Problems.Count} problem(s); nothing was written to '{report.Output}'. " +
            "First: " + (report.Problems.Count > 0 ? report.Problems[0] : "?") +
            " Use --on-failure warn to write anyway, or lower the threshold / change the settings for that tensor.")
    {
        Report = report;
    }

    /// <summary>The full report.</summary>
    public CheckpointQuantizationReport Report { get; }
}

/// <summary>Progress of a long checkpoint operation.</summary>
/// <param name="BytesDone">Input bytes processed.</param>
/// <param name="BytesTotal">Input bytes in all.</param>
/// <param name="Tensor">The tensor being processed.</param>
public readonly record struct CheckpointProgress(long BytesDone, long BytesTotal, string Tensor);

/// <summary>What happened to one tensor.</summary>
/// <param name="Name">Tensor name.</param>
/// <param name="File">Output file (shard) name.</param>
/// <param name="Quantized">True when quantized, false when copied bit-exactly.</param>
/// <param name="Spec">The quantization settings (null when copied).</param>
/// <param name="OriginalDType">Original dtype.</param>
/// <param name="Shape">Shape.</param>
/// <param name="OriginalBytes">Bytes of the original tensor.</param>
/// <param name="StoredBytes">Bytes stored (data + scales + zero points).</param>
/// <param name="SqnrDb">SQNR against the original, dB (null when not measured).</param>
/// <param name="ThresholdDb">The SQNR threshold that applied.</param>
/// <param name="Problems">Validation problems of this tensor.</param>
/// <param name="Fallback">Why <paramref name="Spec"/> differs from the recipe's (a group size that does not divide), or null.</param>
public sealed record TensorQuantizationReport(string Name, string File, bool Quantized, QuantSpec? Spec, SafetensorsDType OriginalDType,
    long[] Shape, long OriginalBytes, long StoredBytes, double? SqnrDb, double? ThresholdDb, IReadOnlyList<string> Problems, string? Fallback = null)
{
    /// <summary>Original bytes / stored bytes.</summary>
    public double Ratio => StoredBytes == 0 ? 1 : (double)OriginalBytes / StoredBytes;

    /// <summary>JSON form (for <c>--json</c>).</summary>
    public JsonObject ToJson() => new()
    {
        ["name"] = Name,
        ["file"] = File,
        ["action"] = Quantized ? "quantized" : "copied",
        ["qtype"] = Spec?.Type.ToName(),
        ["spec"] = Spec?.ToString(),
        ["original_dtype"] = OriginalDType.ToString(),
        ["shape"] = new JsonArray(Shape.Select(d => (JsonNode)JsonValue.Create(d)).ToArray()),
        ["original_bytes"] = OriginalBytes,
        ["stored_bytes"] = StoredBytes,
        ["sqnr_db"] = Json(SqnrDb),
        ["threshold_db"] = ThresholdDb,
        ["passed"] = Problems.Count == 0,
        ["problems"] = new JsonArray(Problems.Select(p => (JsonNode)JsonValue.Create(p)!).ToArray()),
        ["fallback"] = Fallback,
    };

    /// <summary>A number as JSON, which has no infinities or NaN: those become the strings "inf", "-inf" and "nan".</summary>
    internal static JsonNode? Json(double? v) => v switch
    {
        null => null,
        double d when double.IsPositiveInfinity(d) => "inf",
        double d when double.IsNegativeInfinity(d) => "-inf",
        double d when double.IsNaN(d) => "nan",
        double d => Math.Round(d, 4),
    };
}

/// <summary>The result of <see cref="CheckpointQuantizer.Quantize"/>: per-tensor results, sizes, validation.</summary>
public sealed class CheckpointQuantizationReport : Validation.IQuantizationReport
{
    internal CheckpointQuantizationReport(string input, string output, IReadOnlyList<TensorQuantizationReport> tensors,
        IReadOnlyList<string> problems, bool validated, bool written, long inputFileBytes, long outputFileBytes, TimeSpan elapsed)
    {
        Input = input; Output = output; Tensors = tensors; Problems = problems; Validated = validated; Written = written;
        InputFileBytes = inputFileBytes; OutputFileBytes = outputFileBytes; Elapsed = elapsed;
    }

    /// <summary>Input path.</summary>
    public string Input { get; }
    /// <summary>Output path.</summary>
    public string Output { get; }
    /// <summary>Every tensor, in input order.</summary>
    public IReadOnlyList<TensorQuantizationReport> Tensors { get; }
    /// <summary>All validation problems (per-tensor ones and reload/format ones).</summary>
    public IReadOnlyList<string> Problems { get; }
    /// <summary>Warnings that are not validation problems: each weight whose spec fell back (group size that does not
    /// divide), and what the run did not do that you may want to know (side files not copied...).</summary>
    public IReadOnlyList<string> Warnings => [.. Tensors.Where(t => t.Fallback is not null).Select(t => t.Fallback!), .. RunWarnings];
    /// <summary>Warnings of the run itself (side files...).</summary>
    internal IReadOnlyList<string> RunWarnings { get; init; } = [];
    /// <summary>True when validation ran.</summary>
    public bool Validated { get; }
    /// <summary>True when the output was written under its final name.</summary>
    public bool Written { get; }
    /// <summary>True when validation found no problem (or did not run).</summary>
    public bool Passed => Problems.Count == 0;
    /// <summary>Bytes of the input files.</summary>
    public long InputFileBytes { get; }
    /// <summary>Bytes of the output files (0 when not written).</summary>
    public long OutputFileBytes { get; }
    /// <summary>Wall-clock time.</summary>
    public TimeSpan Elapsed { get; }
    /// <summary>Sum of original tensor bytes.</summary>
    public long OriginalTensorBytes => Tensors.Sum(t => t.OriginalBytes);
    /// <summary>Sum of stored tensor bytes.</summary>
    public long StoredTensorBytes => Tensors.Sum(t => t.StoredBytes);
    /// <summary>Original / stored tensor bytes.</summary>
    public double Ratio => StoredTensorBytes == 0 ? 1 : (double)OriginalTensorBytes / StoredTensorBytes;

    /// <summary>JSON form (for <c>--json</c>).</summary>
    public JsonObject ToJson() => new()
    {
        ["input"] = Input,
        ["output"] = Output,
        ["written"] = Written,
        ["validated"] = Validated,
        ["passed"] = Passed,
        ["input_file_bytes"] = InputFileBytes,
        ["output_file_bytes"] = OutputFileBytes,
        ["original_tensor_bytes"] = OriginalTensorBytes,
        ["stored_tensor_bytes"] = StoredTensorBytes,
        ["ratio"] = Math.Round(Ratio, 4),
        ["seconds"] = Math.Round(Elapsed.TotalSeconds, 3),
        ["quantized"] = Tensors.Count(t => t.Quantized),
        ["copied"] = Tensors.Count(t => !t.Quantized),
        ["min_sqnr_db"] = TensorQuantizationReport.Json(Tensors.Where(t => t.SqnrDb is not null).Select(t => t.SqnrDb).DefaultIfEmpty(null).Min()),
        ["problems"] = new JsonArray(Problems.Select(p => (JsonNode)JsonValue.Create(p)!).ToArray()),
        ["warnings"] = new JsonArray(Warnings.Select(p => (JsonNode)JsonValue.Create(p)!).ToArray()),
        ["tensors"] = new JsonArray(Tensors.Select(t => (JsonNode)t.ToJson()).ToArray()),
    };

    long Validation.IQuantizationReport.OriginalBytes => OriginalTensorBytes;
    long Validation.IQuantizationReport.StoredBytes => StoredTensorBytes;
}
