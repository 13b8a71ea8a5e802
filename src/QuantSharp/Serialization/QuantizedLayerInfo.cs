using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace QuantSharp.Serialization;

/// <summary>
/// What a quantized checkpoint records about one quantized tensor (the per-layer JSON of
/// <c>quantsharp.layers</c>; see docs/FORMAT.md).
/// </summary>
/// <param name="OriginalDType">The safetensors dtype of the original tensor (<c>F32</c>, <c>BF16</c>, <c>F16</c>...).</param>
/// <param name="Shape">The original (logical) shape.</param>
/// <param name="Type">The quantized type.</param>
/// <param name="Scheme">Symmetric or affine (null for float16/bfloat16).</param>
/// <param name="Granularity">Per-tensor, per-axis or per-group (null for float16/bfloat16).</param>
/// <param name="ReduceRange">Whether one bit of range was left unused.</param>
/// <param name="Observer">The observer that chose the range (<c>minmax</c>...; null for float types).</param>
/// <param name="SqnrDb">SQNR of the dequantized weight against the original, in dB (null when not measured;
/// positive infinity for an exact round trip).</param>
public sealed record QuantizedLayerInfo(
    SafetensorsDType OriginalDType,
    long[] Shape,
    QuantType Type,
    QuantScheme? Scheme,
    Granularity? Granularity,
    bool ReduceRange,
    string? Observer,
    double? SqnrDb)
{
    /// <summary>The format version of the file the entry was read from (<see cref="QuantizedCheckpoint.FormatVersion"/> when written now).</summary>
    internal int FormatVersion { get; init; } = QuantizedCheckpoint.FormatVersion;

    /// <summary>The static input quantization of the layer that owns the weight (W8A8: type, scheme, reduce range;
    /// its scale and zero point are the plain tensors <c>x.input_scale</c>, <c>x.input_zero_point</c>), or null.</summary>
    public QuantSpec? Input { get; init; }

    /// <summary>For a weight quantized by a method judged by its output error (GPTQ): the SQNR (dB) of the layer's output on
    /// the calibration inputs it was quantized with (<see cref="Validation.LayerReport.CalibrationOutputSqnrDb"/>), recorded
    /// because a validator without those inputs cannot measure it; <see cref="Validation.CheckpointValidator"/> gates the
    /// weight on it instead of its weight SQNR. Null for round-to-nearest weights (the key is then absent).</summary>
    public double? CalibrationOutputSqnrDb { get; init; }

    /// <summary>The logical shape of the stored integers: the <c>[d0, d1*...*dn-1]</c> matrix for an integer weight of
    /// rank &gt; 2 (format version 2), else <see cref="Shape"/>.</summary>
    public long[] StoredShape => FormatVersion >= 2 ? Pipeline.WeightGeometry.StorageShape(Type, Shape) : (long[])Shape.Clone();

    /// <summary>The quantization spec these settings describe.</summary>
    public QuantSpec ToSpec() => CheckpointSpecs.Create(Type, Scheme ?? QuantScheme.Symmetric, Granularity ?? QuantSharp.Granularity.Tensor, ReduceRange);

    /// <summary>The integer range [qmin, qmax] (null for float types).</summary>
    public QuantRange? Range => Type.IsInteger() ? QuantRange.For(Type, ReduceRange) : null;

    /// <summary>The JSON object stored in the checkpoint.</summary>
    public JsonObject ToJson()
    {
        var o = new JsonObject
        {
            ["original_dtype"] = OriginalDType.ToString(),
            ["shape"] = new JsonArray(Shape.Select(d => (JsonNode)JsonValue.Create(d)).ToArray()),
            ["qtype"] = Type.ToName(),
        };
        if (Type.IsInteger())
        {
            var range = Range!.Value;
            o["scheme"] = Scheme!.Value.ToString().ToLowerInvariant();
            o["granularity"] = Granularity!.ToString();
            o["axis"] = Granularity is PerAxis a ? a.Axis : null;
            o["group_size"] = Granularity is PerGroup g ? g.GroupSize : null;
            o["reduce_range"] = ReduceRange;
            o["qmin"] = range.QMin;
            o["qmax"] = range.QMax;
            o["observer"] = Observer;
        }
        // JSON has no infinity: an exact round trip is written as the string "inf".
        o["sqnr_db"] = Validation.ReportJson.Number(SqnrDb);
        if (CalibrationOutputSqnrDb is not null) o["calibration_output_sqnr_db"] = Validation.ReportJson.Number(CalibrationOutputSqnrDb);
        if (Input is { } input)
            o["input"] = new JsonObject { ["qtype"] = input.Type.ToName(), ["scheme"] = QuantizationRecipe.SchemeName(input.Scheme), ["reduce_range"] = input.ReduceRange };
        return o;
    }

    /// <summary>The stored type named <paramref name="qtype"/>; an unknown name (a packed type of a newer QuantSharp,
    /// or a damaged file) is refused rather than guessed at.</summary>
    private static QuantType ParseStoredType(string name, string qtype)
    {
        try { return QuantTypeInfo.Parse(qtype); }
        catch (ArgumentException)
        {
            throw new QuantizedFileException($"Layer '{name}' is stored as '{qtype}', a type this QuantSharp does not know (it reads " +
                string.Join(", ", QuantizationRecipe.SupportedWeightTypes.Select(t => t.ToName())) +
                "). The file was probably written by a newer QuantSharp: update QuantSharp to read it; its bytes are not guessed at.");
        }
    }

    /// <summary>An SQNR field: a number, or the strings "inf", "-inf", "nan" (JSON has no infinity); null when absent.</summary>
    private static double? Decibels(JsonElement e, string key) =>
        !e.TryGetProperty(key, out var v) ? null : v.ValueKind switch
        {
            JsonValueKind.Number => v.GetDouble(),
            JsonValueKind.String => double.Parse(v.GetString()!.Replace("inf", "Infinity"), CultureInfo.InvariantCulture),
            _ => null,
        };

    /// <summary>Reads the JSON written by <see cref="ToJson"/>.</summary>
    /// <exception cref="QuantizedFileException">A field is missing or has a wrong value.</exception>
    public static QuantizedLayerInfo FromJson(string name, JsonElement e)
    {
        try
        {
            if (!SafetensorsDTypeInfo.TryParse(e.GetProperty("original_dtype").GetString()!, out var odt))
                throw new QuantizedFileException("unknown original_dtype");
            long[] shape = e.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()).ToArray();
            var type = ParseStoredType(name, e.GetProperty("qtype").GetString()!);
            QuantScheme? scheme = null; Granularity? gran = null; bool reduce = false; string? observer = null;
            if (type.IsInteger())
            {
                scheme = e.GetProperty("scheme").GetString() switch
                {
                    "symmetric" => QuantScheme.Symmetric,
                    "affine" => QuantScheme.Affine,
                    var s => throw new QuantizedFileException($"unknown scheme '{s}'"),
                };
                gran = QuantSharp.Granularity.Parse(e.GetProperty("granularity").GetString()!);
                reduce = e.TryGetProperty("reduce_range", out var rr) && rr.GetBoolean();
                observer = e.TryGetProperty("observer", out var ob) && ob.ValueKind == JsonValueKind.String ? ob.GetString() : null;
            }
            double? sqnr = Decibels(e, "sqnr_db"), calibrationOutputSqnr = Decibels(e, "calibration_output_sqnr_db");
            if (shape.Any(d => d < 0)) throw new FormatException($"negative dimension in shape [{string.Join(", ", shape)}]");
            QuantSpec? input = null;
            if (e.TryGetProperty("input", out var inp) && inp.ValueKind == JsonValueKind.Object)
            {
                input = new QuantSpec(QuantTypeInfo.Parse(inp.GetProperty("qtype").GetString()!),
                    QuantizationRecipe.ParseScheme(inp.GetProperty("scheme").GetString()!), QuantSharp.Granularity.Tensor,
                    inp.TryGetProperty("reduce_range", out var irr) && irr.GetBoolean());
            }
            return new QuantizedLayerInfo(odt, shape, type, scheme, gran, reduce, observer, sqnr) { Input = input, CalibrationOutputSqnrDb = calibrationOutputSqnr };
        }
        catch (Exception ex) when (ex is KeyNotFoundException or InvalidOperationException or ArgumentException or FormatException or OverflowException
            or IndexOutOfRangeException or NotSupportedException)
        {
            throw new QuantizedFileException($"Layer '{name}': malformed quantization entry ({ExceptionText.Clause(ex)}). Re-create the file with 'quantsharp quantize'.", ex);
        }
    }
}

/// <summary>Creates <see cref="QuantSpec"/> values (one place, so that the record's shape is used once).</summary>
internal static class CheckpointSpecs
{
    public static QuantSpec Create(QuantType type, QuantScheme scheme, Granularity granularity, bool reduceRange)
        => new(type, scheme, granularity, reduceRange);
}
