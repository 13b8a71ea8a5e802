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
/// two's complement; Int2/UInt2 -> Byte <c>[rows, K/4]</c>, four values per byte, element 4j in bits 1..0 up to
/// 4j+3 in bits 7..6, signed values as 2-bit two's complement; Float16/BFloat16 -> the original shape cast to that type. Scale is float32
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
        if (!spec.Type.IsInteger()) return null;
        long k = Cols(shape);
        switch (spec.Granularity)
        {
            case PerAxis a when a.Axis != 0:
                return $"per-channel axis {a.Axis} is not supported for layer weights (use axis 0, the output channels)";
            case PerGroup g when k % g.GroupSize != 0:
                return $"group size {g.GroupSize} does not divide the reduction length {k} (weight shape [{string.Join(", ", shape)}]); override this layer with another group size or per-channel";
        }
        if (PackingProblem(spec.Type, k) is { } packing) return packing;
        return null;
    }

    /// <summary>Values per stored byte: 2 for 4-bit types, 4 for 2-bit types, 1 otherwise.</summary>
    public static int ValuesPerByte(QuantType type) => type.IsInteger() ? 8 / type.Bits() : 1;

    /// <summary>Why a row of <paramref name="k"/> values of <paramref name="type"/> cannot be packed whole bytes per row, or null.</summary>
    public static string? PackingProblem(QuantType type, long k)
    {
        int perByte = ValuesPerByte(type);
        if (perByte == 1 || k % perByte == 0) return null;
        return perByte == 2
            ? $"4-bit packing needs an even reduction length, got {k}"
            : $"2-bit packing needs a reduction length divisible by 4, got {k}";
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
        using var kept = new KeptScalars();
        var q = KeptScalars.Plus((x * scale.reciprocal()).round(), zeroPoint).clamp(kept.Of(range.QMin), kept.Of(range.QMax));
        return (q - zeroPoint) * scale;
    }

    /// <summary>Unpacks bytes <c>[rows, K/2]</c> (4-bit) or <c>[rows, K/4]</c> (2-bit) into float32 values <c>[rows, K]</c>
    /// (sign-extended when signed).</summary>
    public static Tensor Unpack(Tensor packed, QuantType type)
    {
        // One gather from a 256 x n table (byte -> its n values, lowest bits first) instead of shifts, masks and a stack.
        int perByte = ValuesPerByte(type);
        var table = s_tables[TableIndex(type)].Value;
        return table.index_select(0, packed.flatten().to(ScalarType.Int64)).reshape(packed.shape[0], packed.shape[1] * perByte);
    }

    private static int TableIndex(QuantType type) => type switch
    {
        QuantType.Int4 => 0,
        QuantType.UInt4 => 1,
        QuantType.Int2 => 2,
        QuantType.UInt2 => 3,
        _ => throw new ArgumentException($"{type.ToName()} is not a packed type.", nameof(type)),
    };

    private static readonly Lazy<Tensor>[] s_tables =
        [.. new[] { QuantType.Int4, QuantType.UInt4, QuantType.Int2, QuantType.UInt2 }.Select(t => new Lazy<Tensor>(() => UnpackTable(t)))];

    /// <summary>byte -> its values (float32 <c>[256, 8 / bits]</c>), decoded by <see cref="Packing.Unpack"/> (the one definition).</summary>
    private static Tensor UnpackTable(QuantType type)
    {
        int perByte = ValuesPerByte(type);
        var values = new float[256 * perByte];
        Span<sbyte> field = stackalloc sbyte[perByte];
        for (int b = 0; b < 256; b++)
        {
            Packing.Unpack([(byte)b], type.Bits(), type.IsSigned(), field);
            for (int j = 0; j < perByte; j++) values[perByte * b + j] = field[j];
        }
        // Shared by every call: kept out of any caller's dispose scope.
        return torch.tensor(values, [256, perByte]).DetachFromDisposeScope();
    }

    /// <summary>The stored integers as float32 values <c>[rows, K]</c>.</summary>
    public static Tensor IntegerValues(Tensor data, QuantType type) => ValuesPerByte(type) > 1
        ? Unpack(data, type)
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
