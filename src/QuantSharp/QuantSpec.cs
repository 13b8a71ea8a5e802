using System.Globalization;

namespace QuantSharp;

/// <summary>
/// What a tensor is quantized to: the storage <see cref="QuantType"/>, the <see cref="QuantScheme"/>, which elements
/// share a scale (<see cref="QuantSharp.Granularity"/>) and whether the integer range is reduced by one bit
/// (PyTorch's <c>reduce_range</c>).
/// </summary>
/// <remarks>
/// A spec is a small immutable value; <see cref="Validate(ReadOnlySpan{long})"/> checks it against a tensor shape and
/// throws an <see cref="ArgumentException"/> that names the problem and the fix.
/// </remarks>
public sealed record QuantSpec
{
    /// <summary>Creates a spec.</summary>
    /// <param name="type">Storage type.</param>
    /// <param name="scheme">Symmetric (default) or affine. Ignored by the floating-point types.</param>
    /// <param name="granularity">Which elements share a scale; <see langword="null"/> means per-tensor.</param>
    /// <param name="reduceRange">Use one bit less of the 8-bit range, as PyTorch's <c>reduce_range=True</c>.</param>
    public QuantSpec(QuantType type, QuantScheme scheme = QuantScheme.Symmetric, Granularity? granularity = null, bool reduceRange = false)
    {
        Type = type;
        Scheme = scheme;
        Granularity = granularity ?? Granularity.Tensor;
        ReduceRange = reduceRange;
    }

    /// <summary>Storage type.</summary>
    public QuantType Type { get; init; }

    /// <summary>Symmetric or affine (integer types only).</summary>
    public QuantScheme Scheme { get; init; }

    /// <summary>Which elements share one scale and zero point; per-tensor for the floating-point types.</summary>
    public Granularity Granularity { get; init; }

    /// <summary>One bit less of the 8-bit range (int8 [-64, 63], uint8 [0, 127]), as PyTorch's <c>reduce_range</c>.</summary>
    public bool ReduceRange { get; init; }

    /// <summary>The integer range values are clamped to.</summary>
    /// <exception cref="ArgumentException">The type is a floating-point type.</exception>
    public QuantRange Range => QuantRange.For(Type, ReduceRange);

    /// <summary>True when the zero point is always 0 (symmetric signed types), so no zero point needs storing.</summary>
    public bool HasZeroPoint => Type.IsInteger() && !(Scheme == QuantScheme.Symmetric && Type.IsSigned());

    /// <summary>
    /// Checks the spec on its own (without a shape): granularity and reduce-range fit the type.
    /// </summary>
    /// <exception cref="ArgumentException">The spec is inconsistent; the message says how to fix it.</exception>
    public void Validate()
    {
        if (!Enum.IsDefined(Type))
            throw new ArgumentException($"Unknown quantization type {(int)Type}.", nameof(Type));
        if (!Enum.IsDefined(Scheme))
            throw new ArgumentException($"Unknown quantization scheme {(int)Scheme}.", nameof(Scheme));
        if (Granularity is null)
            throw new ArgumentException("Granularity is null; use Granularity.Tensor, new PerAxis(axis) or new PerGroup(size).", nameof(Granularity));
        if (!Type.IsInteger())
        {
            if (Granularity is not PerTensor)
                throw new ArgumentException(
                    $"{Type.ToName()} is a plain cast and takes no granularity (got {Granularity}); leave Granularity per-tensor.", nameof(Granularity));
            if (ReduceRange)
                throw new ArgumentException($"{Type.ToName()} has no integer range to reduce; set ReduceRange to false.", nameof(ReduceRange));
            return;
        }
        if (ReduceRange && Type.Bits() != 8)
            throw new ArgumentException(
                $"ReduceRange applies to 8-bit types only (PyTorch's reduce_range); {Type.ToName()} already has {Type.Bits()} bits. Set ReduceRange to false.",
                nameof(ReduceRange));
        if (Granularity is PerGroup { GroupSize: <= 0 } g)
            throw new ArgumentException($"Group size must be positive (got {g.GroupSize}); typical sizes are 32, 64 or 128.", nameof(Granularity));
    }

    /// <summary>Checks the spec against the shape of the tensor it will quantize.</summary>
    /// <param name="shape">The tensor's shape.</param>
    /// <exception cref="ArgumentException">The spec does not fit the shape; the message says how to fix it.</exception>
    public void Validate(ReadOnlySpan<long> shape)
    {
        Validate();
        foreach (long d in shape)
        {
            if (d < 0) throw new ArgumentException($"Shape {FormatShape(shape)} has a negative dimension.", nameof(shape));
        }
        switch (Granularity)
        {
            case PerAxis a:
                if (shape.Length == 0)
                    throw new ArgumentException(
                        $"Per-channel quantization (axis {a.Axis}) needs a tensor with at least one dimension; this one is a scalar. Use per-tensor.", nameof(shape));
                if (a.Axis < 0 || a.Axis >= shape.Length)
                    throw new ArgumentException(
                        $"Channel axis {a.Axis} is out of range for shape {FormatShape(shape)} (rank {shape.Length}); use an axis from 0 to {shape.Length - 1}.",
                        nameof(shape));
                break;
            case PerGroup g:
                if (shape.Length == 0)
                    throw new ArgumentException(
                        $"Per-group quantization (group size {g.GroupSize}) needs a tensor with at least one dimension; this one is a scalar. Use per-tensor.", nameof(shape));
                long last = shape[^1];
                if (last % g.GroupSize != 0)
                    throw new ArgumentException(
                        $"Group size {g.GroupSize} does not divide the last dimension {last} of shape {FormatShape(shape)}. {SuggestDivisor(last, g.GroupSize)}",
                        nameof(shape));
                break;
        }
    }

    /// <summary>The number of scales (and zero points) this spec produces for <paramref name="shape"/>.</summary>
    /// <param name="shape">The tensor's shape (validated).</param>
    public long ParameterCount(ReadOnlySpan<long> shape) => Granularity switch
    {
        PerAxis a => shape[a.Axis],
        PerGroup g => Product(shape) / g.GroupSize,
        _ => 1,
    };

    /// <summary>The shape of the scale (and zero point) tensors for <paramref name="shape"/>: [] per-tensor, [C] per-axis, [rows..., last/G] per-group.</summary>
    /// <param name="shape">The tensor's shape (validated).</param>
    public long[] ParameterShape(ReadOnlySpan<long> shape)
    {
        switch (Granularity)
        {
            case PerAxis a:
                return [shape[a.Axis]];
            case PerGroup g:
                long[] s = shape.ToArray();
                s[^1] /= g.GroupSize;
                return s;
            default:
                return [];
        }
    }

    /// <inheritdoc/>
    public override string ToString() => Type.IsInteger()
        ? $"{Type.ToName()} {Scheme.ToString().ToLowerInvariant()} {Granularity}{(ReduceRange ? " reduce-range" : "")}"
        : Type.ToName();

    internal static long Product(ReadOnlySpan<long> shape)
    {
        long n = 1;
        foreach (long d in shape) n = checked(n * d);
        return n;
    }

    internal static string FormatShape(ReadOnlySpan<long> shape)
    {
        var parts = new string[shape.Length];
        for (int i = 0; i < shape.Length; i++) parts[i] = shape[i].ToString(CultureInfo.InvariantCulture);
        return "[" + string.Join(", ", parts) + "]";
    }

    private static string SuggestDivisor(long last, int groupSize)
    {
        if (last == 0) return "The last dimension is empty.";
        long below = 0, above = 0;
        for (long d = Math.Min(groupSize, last); d >= 1; d--)
        {
            if (last % d == 0) { below = d; break; }
        }
        for (long d = groupSize + 1; d <= last; d++)
        {
            if (last % d == 0) { above = d; break; }
        }
        return above > 0 && above != last
            ? $"Use a divisor of {last}, such as {below} or {above}."
            : $"Use a divisor of {last}, such as {below}.";
    }
}
