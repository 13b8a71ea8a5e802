using QuantSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tensors;

/// <summary>
/// A layer weight stored quantized: the one weight abstraction of every quantized module (replaced layers and
/// float modules whose weights are materialized around their forward). It holds the original shape and dtype, the
/// spec, and a <see cref="WeightLayout"/> that keeps the values and runs the operations (linear, row gather,
/// dequantize). <see cref="ToCanonical"/> gives the canonical parts of docs/FORMAT.md whatever the layout.
/// </summary>
/// <remarks>
/// Geometry is decided here only (<see cref="StorageShape"/>): an integer weight <c>[d0, d1, ...]</c> is stored as the
/// matrix <c>[d0, d1*d2*...]</c> (rows = output channels, K = reduction axis, along which groups and 4-bit packing
/// run); a float16/bfloat16 weight keeps its shape.
/// </remarks>
public sealed class QuantizedWeight : IDisposable
{
    private readonly long[] _shape;
    private bool _disposed;

    private QuantizedWeight(long[] shape, ScalarType originalDType, WeightLayout layout)
    {
        _shape = (long[])shape.Clone();
        OriginalDType = originalDType;
        Layout = layout;
    }

    /// <summary>How the weight is quantized.</summary>
    public QuantSpec Spec => Layout.Spec;

    /// <summary>The original (float) weight's shape, e.g. <c>[out, in]</c> or <c>[out, in/groups, kh, kw]</c>.</summary>
    public IReadOnlyList<long> Shape => _shape;

    /// <summary>The original weight's dtype (float32, float16, bfloat16...); materialized weights take it back.</summary>
    public ScalarType OriginalDType { get; }

    /// <summary>SQNR (dB) of the dequantized weight against the float weight it was quantized from (null: not measured); recorded in saved files.</summary>
    internal double? SqnrDb { get; set; }

    /// <summary>SQNR (dB) of the layer's output on its calibration inputs, for a method judged by its output error (GPTQ;
    /// <see cref="Pipeline.IWeightQuantizer.CalibrationOutputSqnrDb"/>); null otherwise.</summary>
    internal double? CalibrationOutputSqnrDb { get; set; }

    /// <summary>The observer that chose the range (null for float16/bfloat16 or unknown); recorded in saved files.</summary>
    internal string? Observer { get; set; } = "minmax";

    /// <summary>The in-memory layout (owned by this weight).</summary>
    public WeightLayout Layout { get; }

    /// <summary>Bytes of storage held by the layout.</summary>
    public long StorageBytes => Layout.StorageBytes;

    /// <summary>The storage matrix of a weight of <paramref name="shape"/> quantized as <paramref name="spec"/> (see the type remarks).</summary>
    /// <param name="spec">The spec.</param>
    /// <param name="shape">The original weight shape.</param>
    public static long[] StorageShape(QuantSpec spec, IReadOnlyList<long> shape)
    {
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(shape);
        return Pipeline.WeightGeometry.StorageShape(spec.Type, [.. shape]);
    }

    /// <summary>Why <paramref name="spec"/> cannot quantize a weight of <paramref name="shape"/>, or null.</summary>
    /// <param name="spec">The spec.</param>
    /// <param name="shape">The original weight shape.</param>
    public static string? Unsupported(QuantSpec spec, IReadOnlyList<long> shape) => WeightQuantizer.Unsupported(spec, [.. shape]);

    /// <summary>Quantizes <paramref name="weight"/> (any float dtype, not modified) as <paramref name="spec"/>.</summary>
    /// <param name="weight">The float weight, rank 2 or more.</param>
    /// <param name="spec">Type, scheme, granularity (per-channel means axis 0 of the weight).</param>
    /// <exception cref="ArgumentException">The spec does not fit the weight (the message says why and what to do).</exception>
    public static QuantizedWeight Quantize(Tensor weight, QuantSpec spec)
    {
        ArgumentNullException.ThrowIfNull(weight);
        ArgumentNullException.ThrowIfNull(spec);
        long[] shape = weight.shape;
        if (!weight.is_floating_point())
            throw new ArgumentException($"Only floating-point weights can be quantized; got {weight.dtype}.", nameof(weight));
        string? why = Unsupported(spec, shape);
        if (why != null) throw new ArgumentException($"Cannot quantize a weight of shape {QuantSpec.FormatShape(shape)} as {WeightQuantizer.Describe(spec)}: {why}.", nameof(spec));
        QuantizedTensor parts;
        using (var scope = NewDisposeScope())
        using (no_grad())
        {
            var matrix = weight.detach().reshape(StorageShape(spec, shape));
            parts = QuantizedTensor.Quantize(matrix, spec);
        }
        return new QuantizedWeight(shape, weight.dtype, WeightLayouts.Create(parts));
    }

    /// <summary>
    /// Builds a weight from canonical parts (e.g. read from a file), taking ownership of <paramref name="canonical"/>.
    /// </summary>
    /// <param name="canonical">The parts over the storage matrix of <paramref name="shape"/>.</param>
    /// <param name="shape">The original weight shape.</param>
    /// <param name="originalDType">The original weight dtype.</param>
    /// <exception cref="ArgumentException">The parts do not have the storage shape of <paramref name="shape"/>.</exception>
    public static QuantizedWeight FromCanonical(QuantizedTensor canonical, IReadOnlyList<long> shape, ScalarType originalDType = ScalarType.Float32)
    {
        ArgumentNullException.ThrowIfNull(canonical);
        ArgumentNullException.ThrowIfNull(shape);
        long[] expected = StorageShape(canonical.Spec, shape);
        if (!canonical.Shape.SequenceEqual(expected))
            throw new ArgumentException(
                $"A weight of shape {QuantSpec.FormatShape([.. shape])} quantized as {WeightQuantizer.Describe(canonical.Spec)} is stored as {QuantSpec.FormatShape(expected)}, " +
                $"but the parts have shape {QuantSpec.FormatShape(canonical.Shape)}.", nameof(canonical));
        return new QuantizedWeight([.. shape], originalDType, WeightLayouts.Create(canonical));
    }

    /// <summary>The canonical parts (new tensors over <see cref="StorageShape(QuantSpec, IReadOnlyList{long})"/>); dispose them.</summary>
    public QuantizedTensor ToCanonical()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return Layout.ToCanonical();
    }

    /// <summary>The weight dequantized to a new float32 tensor of <see cref="Shape"/>.</summary>
    public Tensor Dequantize()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        using var scope = NewDisposeScope();
        return Layout.Dequantize().reshape(_shape).MoveToOuterDisposeScope();
    }

    /// <summary><c>input W^T + bias</c> for a <c>[out, in]</c> weight, through the layout's kernel.</summary>
    /// <param name="input">float32 input, last dimension <c>in</c>.</param>
    /// <param name="bias">float32 bias or null.</param>
    public Tensor Linear(Tensor input, Tensor? bias)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return Layout.Linear(input, bias);
    }

    /// <summary>Rows of a <c>[rows, dim]</c> weight (embedding lookup), dequantized to float32 <c>[n, dim]</c>.</summary>
    /// <param name="indices">int64 row indices, 1-D, in range.</param>
    public Tensor GatherRows(Tensor indices)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return Layout.GatherRows(indices);
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        Layout.Dispose();
    }

    /// <inheritdoc/>
    public override string ToString() =>
        $"QuantizedWeight({WeightQuantizer.Describe(Spec)}, shape {QuantSpec.FormatShape(_shape)}, {Layout.Name}, {StorageBytes} bytes)";
}

/// <summary>
/// The names of a quantized weight's parts, generated here only: in a module's state (<c>weight</c>,
/// <c>weight_scale</c>, <c>weight_zero_point</c>; module state names cannot contain the parameter's dots) and in a
/// checkpoint file (<c>x.weight</c>, <c>x.weight.scale</c>, <c>x.weight.zero_point</c>, docs/FORMAT.md).
/// </summary>
internal static class QuantizedWeightNames
{
    /// <summary>Name of <paramref name="part"/> of the quantized parameter <paramref name="parameter"/> in its module's state.</summary>
    /// <param name="parameter">The float parameter's name in its module, e.g. <c>weight</c> or <c>in_proj_weight</c>.</param>
    /// <param name="part">The part.</param>
    public static string InModule(string parameter, WeightPart part) => part switch
    {
        WeightPart.Data => parameter,
        WeightPart.Scale => parameter + "_scale",
        _ => parameter + "_zero_point",
    };

    /// <summary>Name of <paramref name="part"/> of the quantized tensor <paramref name="tensor"/> in a checkpoint file.</summary>
    /// <param name="tensor">The full tensor name, e.g. <c>layers.0.fc1.weight</c>.</param>
    /// <param name="part">The part.</param>
    public static string InFile(string tensor, WeightPart part) => part switch
    {
        WeightPart.Data => tensor,
        WeightPart.Scale => tensor + Serialization.QuantizedCheckpoint.ScaleSuffix,
        _ => tensor + Serialization.QuantizedCheckpoint.ZeroPointSuffix,
    };

    /// <summary>Every part.</summary>
    public static IReadOnlyList<WeightPart> Parts { get; } = [WeightPart.Data, WeightPart.Scale, WeightPart.ZeroPoint];
}
