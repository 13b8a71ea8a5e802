using System.Globalization;
using System.Text.Json;
using QuantSharp.Observers;
using TorchSharp;

namespace QuantSharp.Tests.Observers;

/// <summary>How each observer tag of reference.json was produced (see ../shared/reference/README.md).</summary>
internal static class ReferenceObserverSpecs
{
    /// <summary>How the reference fed its observer.</summary>
    public enum Feeding
    {
        /// <summary>The whole input once.</summary>
        Whole,
        /// <summary>torch.chunk(x, 4, dim=0), in order.</summary>
        FourChunks,
        /// <summary>x, then 0.5 x, then 1.5 x.</summary>
        Scaled,
    }

    /// <summary>The observer name, options and feeding of a tag; throws for a tag this table does not know.</summary>
    public static (string Observer, ObserverOptions Options, Feeding Feeding) For(string tag) => tag switch
    {
        "minmax_affine_qint8" => ("minmax", new() { Type = QuantType.Int8, Scheme = QuantScheme.Affine }, Feeding.Whole),
        "minmax_affine_quint8" => ("minmax", new() { Type = QuantType.UInt8, Scheme = QuantScheme.Affine }, Feeding.Whole),
        "minmax_symmetric_qint8" => ("minmax", new() { Type = QuantType.Int8, Scheme = QuantScheme.Symmetric }, Feeding.Whole),
        "minmax_affine_qint8_reduce_range" => ("minmax", new() { Type = QuantType.Int8, Scheme = QuantScheme.Affine, ReduceRange = true }, Feeding.Whole),
        "minmax_symmetric_int4" => ("minmax", new() { Type = QuantType.Int4, Scheme = QuantScheme.Symmetric }, Feeding.Whole),
        "minmax_affine_uint4" => ("minmax", new() { Type = QuantType.UInt4, Scheme = QuantScheme.Affine }, Feeding.Whole),
        "perchannel_affine_qint8" => ("minmax", new() { Type = QuantType.Int8, Scheme = QuantScheme.Affine, Axis = 0 }, Feeding.Whole),
        "perchannel_symmetric_qint8" => ("minmax", new() { Type = QuantType.Int8, Scheme = QuantScheme.Symmetric, Axis = 0 }, Feeding.Whole),
        "perchannel_symmetric_int4" => ("minmax", new() { Type = QuantType.Int4, Scheme = QuantScheme.Symmetric, Axis = 0 }, Feeding.Whole),
        "perchannel_axis1_symmetric_qint8" => ("minmax", new() { Type = QuantType.Int8, Scheme = QuantScheme.Symmetric, Axis = 1 }, Feeding.Whole),
        "moving_avg_affine_qint8_c0.01" => ("moving-average", new() { Type = QuantType.Int8, Scheme = QuantScheme.Affine, AveragingConstant = 0.01f }, Feeding.FourChunks),
        "moving_avg_symmetric_qint8_c0.1" => ("moving-average", new() { Type = QuantType.Int8, Scheme = QuantScheme.Symmetric, AveragingConstant = 0.1f }, Feeding.FourChunks),
        "moving_avg_perchannel_affine_qint8_c0.01" => ("moving-average", new() { Type = QuantType.Int8, Scheme = QuantScheme.Affine, Axis = 0, AveragingConstant = 0.01f }, Feeding.Scaled),
        "histogram_l2_affine_quint8" => ("histogram", new() { Type = QuantType.UInt8, Scheme = QuantScheme.Affine, Method = HistogramMethod.L2 }, Feeding.FourChunks),
        _ => throw new InvalidOperationException($"Reference tag '{tag}' has no observer spec in this test; add one."),
    };

    /// <summary>Every (case, tag) pair of reference.json's observers.</summary>
    public static IEnumerable<object[]> CaseTags()
    {
        foreach (var c in Reference.Json.GetProperty("cases").EnumerateObject())
        {
            if (!c.Value.TryGetProperty("observers", out var observers)) continue;
            foreach (var tag in observers.EnumerateObject())
                yield return [c.Name, tag.Name];
        }
    }

    /// <summary>Every (case, tag) pair of reference.json's ONNX Runtime calibrations.</summary>
    public static IEnumerable<object[]> OrtCaseTags()
    {
        foreach (var c in Reference.Json.GetProperty("cases").EnumerateObject())
        {
            if (!c.Value.TryGetProperty("ort_calibration", out var ort)) continue;
            foreach (var tag in ort.EnumerateObject())
                yield return [c.Name, tag.Name];
        }
    }

    /// <summary>Feeds <paramref name="input"/> to <paramref name="observer"/> as the reference did.</summary>
    public static void Feed(IObserver observer, torch.Tensor input, Feeding feeding)
    {
        using var scope = torch.NewDisposeScope();
        switch (feeding)
        {
            case Feeding.Whole:
                observer.Observe(input);
                break;
            case Feeding.FourChunks:
                foreach (var chunk in input.chunk(4, 0)) observer.Observe(chunk);
                break;
            case Feeding.Scaled:
                observer.Observe(input);
                observer.Observe(input * 0.5);
                observer.Observe(input * 1.5);
                break;
        }
    }

    public static float[] Floats(JsonElement array) => array.EnumerateArray().Select(e => e.GetSingleValue()).ToArray();

    public static int[] Ints(JsonElement array) => array.EnumerateArray().Select(e => e.GetInt32()).ToArray();

    public static string Show(float[] v) => string.Join(", ", v.Select(x => x.ToString("R", CultureInfo.InvariantCulture)));
}
