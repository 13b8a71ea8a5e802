using QuantSharp.Primitives;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Modules;

/// <summary>
/// Torch-op helpers of the canonical weight layouts (<see cref="QuantizedWeight"/>): which specs fit a layer weight,
/// 4-bit unpacking and row dequantization with TorchSharp tensor operations.
/// </summary>
/// <remarks>
/// A weight of shape <c>[rows, d1, d2, ...]</c> is viewed as the matrix <c>[rows, K]</c>, <c>K = d1*d2*...</c>
/// (for a convolution: output channels by the flattened <c>in/groups * kh * kw</c> reduction axis).
/// Per-axis means axis 0 (one scale per row), per-group means groups of G consecutive elements of a row.
/// Storage: Int8 -> Int8 <c>[rows, K]</c>; UInt8 -> Byte <c>[rows, K]</c>; Int4/UInt4 -> Byte <c>[rows, K/2]</c>,
/// two values per byte, element 2j in the low nibble and 2j+1 in the high nibble, signed values as 4-bit
/// two's complement; Float16/BFloat16 -> the original shape cast to that type. Scale is float32
/// (<c>[]</c>, <c>[rows]</c> or <c>[rows, K/G]</c>), zero point int32 of the same shape, stored only when some
/// zero point can be non-zero (affine, or an unsigned type).
/// <code>
///   byte j of a row:  bit 7..4 = q[2j+1] &amp; 0xF   bit 3..0 = q[2j] &amp; 0xF
/// </code>
/// </remarks>
internal static class WeightQuantizer
{
    /// <summary>Why <paramref name="spec"/> cannot quantize a weight of <paramref name="shape"/>, or null.</summary>
    public static string? Unsupported(QuantSpec spec, long[] shape)
    {
        if (shape.Length < 2) return $"weight of rank {shape.Length} (need at least 2)";
        if (spec.Type is QuantType.Int2 or QuantType.UInt2) return $"{spec.Type.ToName()} weights are not supported by the quantized modules (use int4 or int8)";
        if (!spec.Type.IsInteger()) return null;
        long k = Cols(shape);
        switch (spec.Granularity)
        {
            case PerAxis a when a.Axis != 0:
                return $"per-channel axis {a.Axis} is not supported for layer weights (use axis 0, the output channels)";
            case PerGroup g when k % g.GroupSize != 0:
                return $"group size {g.GroupSize} does not divide the reduction length {k} (weight shape [{string.Join(", ", shape)}]); override this layer with another group size or per-channel";
        }
        if (spec.Type.Bits() == 4 && k % 2 != 0)
            return $"4-bit packing needs an even reduction length, got {k}";
        return null;
    }

    public static long Cols(long[] shape)
    {
        long k = 1;
        for (int i = 1; i < shape.Length; i++) k *= shape[i];
        return k;
    }

    /// <summary>Quantize then dequantize with one scale and zero point (float32 scalar tensors): <c>(clamp(round(x/s) + z) - z) * s</c>.</summary>
    public static Tensor FakeQuantize(Tensor x, Tensor scale, Tensor zeroPoint, QuantRange range)
    {
        var q = ((x * scale.reciprocal()).round() + zeroPoint).clamp(range.QMin, range.QMax);
        return (q - zeroPoint) * scale;
    }

    /// <summary>Unpacks bytes <c>[rows, K/2]</c> into float32 values <c>[rows, K]</c> (sign-extended when signed).</summary>
    public static Tensor Unpack4(Tensor packed, bool signed)
    {
        // One gather from a 256 x 2 table (byte -> [low value, high value]) instead of shifts, masks and a stack.
        var table = signed ? s_signedNibbles.Value : s_unsignedNibbles.Value;
        return table.index_select(0, packed.flatten().to(ScalarType.Int64)).reshape(packed.shape[0], packed.shape[1] * 2);
    }

    private static readonly Lazy<Tensor> s_signedNibbles = new(() => NibbleTable(signed: true));
    private static readonly Lazy<Tensor> s_unsignedNibbles = new(() => NibbleTable(signed: false));

    private static Tensor NibbleTable(bool signed)
    {
        var values = new float[512];
        for (int b = 0; b < 256; b++)
        {
            int lo = b & 15, hi = b >> 4;
            values[2 * b] = signed && lo >= 8 ? lo - 16 : lo;
            values[2 * b + 1] = signed && hi >= 8 ? hi - 16 : hi;
        }
        // Shared by every call: kept out of any caller's dispose scope.
        return torch.tensor(values, [256, 2]).DetachFromDisposeScope();
    }

    /// <summary>The stored integers as float32 values <c>[rows, K]</c>.</summary>
    public static Tensor IntegerValues(Tensor data, QuantType type) => type.Bits() == 4
        ? Unpack4(data, type.IsSigned())
        : data.to(ScalarType.Float32);

    /// <summary>Dequantizes float32 integral values <c>[n, K]</c> with per-row/per-group scales of the same rows.</summary>
    public static Tensor DequantizeRows(Tensor q, Tensor scale, Tensor? zeroPoint, QuantSpec spec)
    {
        switch (spec.Granularity)
        {
            case PerGroup g:
            {
                long n = q.shape[0], k = q.shape[1];
                var v = q.reshape(n, k / g.GroupSize, g.GroupSize);
                if (zeroPoint is not null) v = v - zeroPoint.to(ScalarType.Float32).unsqueeze(-1);
                return (v * scale.unsqueeze(-1)).reshape(n, k);
            }
            case PerAxis:
            {
                var v = q;
                if (zeroPoint is not null) v = v - zeroPoint.to(ScalarType.Float32).unsqueeze(-1);
                return v * scale.unsqueeze(-1);
            }
            default:
            {
                var v = q;
                if (zeroPoint is not null) v = v - zeroPoint.to(ScalarType.Float32);
                return v * scale;
            }
        }
    }

    /// <summary>Short text such as <c>int4 symmetric group:32</c>.</summary>
    public static string Describe(QuantSpec spec) => spec.Type.IsInteger()
        ? $"{spec.Type.ToName()} {spec.Scheme.ToString().ToLowerInvariant()} {spec.Granularity}{(spec.ReduceRange ? " reduce-range" : "")}"
        : spec.Type.ToName();
}
