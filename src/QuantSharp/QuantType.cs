namespace QuantSharp;

/// <summary>The storage type a tensor is quantized to.</summary>
public enum QuantType
{
    /// <summary>Signed 8-bit integers, range [-128, 127].</summary>
    Int8,
    /// <summary>Unsigned 8-bit integers, range [0, 255].</summary>
    UInt8,
    /// <summary>Signed 4-bit integers, range [-8, 7], packed two per byte.</summary>
    Int4,
    /// <summary>Unsigned 4-bit integers, range [0, 15], packed two per byte.</summary>
    UInt4,
    /// <summary>Signed 2-bit integers, range [-2, 1], packed four per byte.</summary>
    Int2,
    /// <summary>Unsigned 2-bit integers, range [0, 3], packed four per byte.</summary>
    UInt2,
    /// <summary>IEEE 754 half precision (no scale, a plain cast).</summary>
    Float16,
    /// <summary>bfloat16 (no scale, a plain cast).</summary>
    BFloat16,
}

/// <summary>How the zero point is chosen.</summary>
public enum QuantScheme
{
    /// <summary>Range symmetric around zero; zero point 0 for signed types (the range midpoint for unsigned).</summary>
    Symmetric,
    /// <summary>Range [min, max] mapped onto [qmin, qmax] with an integer zero point.</summary>
    Affine,
}

/// <summary>Facts about each <see cref="QuantType"/>.</summary>
public static class QuantTypeInfo
{
    /// <summary>Bits per stored value.</summary>
    public static int Bits(this QuantType type) => type switch
    {
        QuantType.Int8 or QuantType.UInt8 => 8,
        QuantType.Int4 or QuantType.UInt4 => 4,
        QuantType.Int2 or QuantType.UInt2 => 2,
        QuantType.Float16 or QuantType.BFloat16 => 16,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, null),
    };

    /// <summary>True for the integer types, which need a scale (and zero point).</summary>
    public static bool IsInteger(this QuantType type) => type is not (QuantType.Float16 or QuantType.BFloat16);

    /// <summary>True for the signed integer types.</summary>
    public static bool IsSigned(this QuantType type) => type is QuantType.Int8 or QuantType.Int4 or QuantType.Int2;

    /// <summary>Smallest representable integer (full range; see <see cref="QuantRange"/> for reduce-range).</summary>
    public static int QMin(this QuantType type)
    {
        RequireInteger(type);
        return type.IsSigned() ? -(1 << (type.Bits() - 1)) : 0;
    }

    /// <summary>Largest representable integer.</summary>
    public static int QMax(this QuantType type)
    {
        RequireInteger(type);
        return type.IsSigned() ? (1 << (type.Bits() - 1)) - 1 : (1 << type.Bits()) - 1;
    }

    /// <summary>Parses the CLI/JSON name (<c>int8</c>, <c>uint4</c>, <c>float16</c>/<c>fp16</c>, <c>bfloat16</c>/<c>bf16</c>...).</summary>
    public static QuantType Parse(string name) => name.Trim().ToLowerInvariant() switch
    {
        "int8" or "qint8" => QuantType.Int8,
        "uint8" or "quint8" => QuantType.UInt8,
        "int4" => QuantType.Int4,
        "uint4" => QuantType.UInt4,
        "int2" => QuantType.Int2,
        "uint2" => QuantType.UInt2,
        "float16" or "fp16" or "half" => QuantType.Float16,
        "bfloat16" or "bf16" => QuantType.BFloat16,
        _ => throw new ArgumentException(
            $"Unknown quantization type '{name}'. Use one of: int8, uint8, int4, uint4, int2, uint2, float16, bfloat16.", nameof(name)),
    };

    /// <summary>The lower-case name used by the CLI and in checkpoint metadata.</summary>
    public static string ToName(this QuantType type) => type.ToString().ToLowerInvariant();

    private static void RequireInteger(QuantType type)
    {
        if (!type.IsInteger())
            throw new ArgumentException($"{type} is a floating-point type and has no integer range.", nameof(type));
    }
}

/// <summary>An integer range [QMin, QMax] that values are clamped to.</summary>
/// <param name="QMin">Smallest integer.</param>
/// <param name="QMax">Largest integer.</param>
public readonly record struct QuantRange(int QMin, int QMax)
{
    /// <summary>
    /// The range of <paramref name="type"/>; with <paramref name="reduceRange"/> one bit less, as PyTorch's
    /// observers do (int8 becomes [-64, 63], uint8 [0, 127]).
    /// </summary>
    public static QuantRange For(QuantType type, bool reduceRange = false)
    {
        int qmin = type.QMin(), qmax = type.QMax();
        if (reduceRange)
        {
            if (type.IsSigned()) { qmin /= 2; qmax = (qmax - 1) / 2; }
            else { qmax /= 2; }
        }
        return new QuantRange(qmin, qmax);
    }
}
