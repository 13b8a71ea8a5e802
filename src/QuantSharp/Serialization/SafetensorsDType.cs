using TorchSharp;

namespace QuantSharp.Serialization;

/// <summary>The element types of the safetensors format.</summary>
public enum SafetensorsDType
{
    /// <summary>Boolean, one byte.</summary>
    BOOL,
    /// <summary>Unsigned 8-bit integer.</summary>
    U8,
    /// <summary>Signed 8-bit integer.</summary>
    I8,
    /// <summary>float8 e4m3 (finite, no infinities).</summary>
    F8_E4M3,
    /// <summary>float8 e5m2.</summary>
    F8_E5M2,
    /// <summary>Signed 16-bit integer.</summary>
    I16,
    /// <summary>Unsigned 16-bit integer.</summary>
    U16,
    /// <summary>IEEE half precision.</summary>
    F16,
    /// <summary>bfloat16.</summary>
    BF16,
    /// <summary>Signed 32-bit integer.</summary>
    I32,
    /// <summary>Unsigned 32-bit integer.</summary>
    U32,
    /// <summary>IEEE single precision.</summary>
    F32,
    /// <summary>Signed 64-bit integer.</summary>
    I64,
    /// <summary>Unsigned 64-bit integer.</summary>
    U64,
    /// <summary>IEEE double precision.</summary>
    F64,
}

/// <summary>Sizes and TorchSharp equivalents of <see cref="SafetensorsDType"/>.</summary>
public static class SafetensorsDTypeInfo
{
    /// <summary>Bytes per element.</summary>
    public static int ElementSize(this SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.BOOL or SafetensorsDType.U8 or SafetensorsDType.I8 or SafetensorsDType.F8_E4M3 or SafetensorsDType.F8_E5M2 => 1,
        SafetensorsDType.I16 or SafetensorsDType.U16 or SafetensorsDType.F16 or SafetensorsDType.BF16 => 2,
        SafetensorsDType.I32 or SafetensorsDType.U32 or SafetensorsDType.F32 => 4,
        SafetensorsDType.I64 or SafetensorsDType.U64 or SafetensorsDType.F64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, null),
    };

    /// <summary>True for F16, BF16, F32, F64 and the float8 types.</summary>
    public static bool IsFloatingPoint(this SafetensorsDType dtype) => dtype is SafetensorsDType.F16 or SafetensorsDType.BF16
        or SafetensorsDType.F32 or SafetensorsDType.F64 or SafetensorsDType.F8_E4M3 or SafetensorsDType.F8_E5M2;

    /// <summary>Parses the header's dtype string (exact, upper case).</summary>
    public static bool TryParse(string text, out SafetensorsDType dtype)
    {
        // Enum.TryParse accepts numbers and ignores nothing we want; be exact.
        foreach (SafetensorsDType d in Enum.GetValues<SafetensorsDType>())
        {
            if (d.ToString() == text) { dtype = d; return true; }
        }
        dtype = default;
        return false;
    }

    /// <summary>The TorchSharp scalar type holding the same bits, or null where TorchSharp has none (U16, U32, U64).</summary>
    public static torch.ScalarType? ToScalarType(this SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.BOOL => torch.ScalarType.Bool,
        SafetensorsDType.U8 => torch.ScalarType.Byte,
        SafetensorsDType.I8 => torch.ScalarType.Int8,
        SafetensorsDType.I16 => torch.ScalarType.Int16,
        SafetensorsDType.F16 => torch.ScalarType.Float16,
        SafetensorsDType.BF16 => torch.ScalarType.BFloat16,
        SafetensorsDType.I32 => torch.ScalarType.Int32,
        SafetensorsDType.F32 => torch.ScalarType.Float32,
        SafetensorsDType.I64 => torch.ScalarType.Int64,
        SafetensorsDType.F64 => torch.ScalarType.Float64,
        _ => null,
    };

    /// <summary>The safetensors dtype of a TorchSharp scalar type.</summary>
    public static SafetensorsDType FromScalarType(torch.ScalarType type) => type switch
    {
        torch.ScalarType.Bool => SafetensorsDType.BOOL,
        torch.ScalarType.Byte => SafetensorsDType.U8,
        torch.ScalarType.Int8 => SafetensorsDType.I8,
        torch.ScalarType.Int16 => SafetensorsDType.I16,
        torch.ScalarType.Float16 => SafetensorsDType.F16,
        torch.ScalarType.BFloat16 => SafetensorsDType.BF16,
        torch.ScalarType.Int32 => SafetensorsDType.I32,
        torch.ScalarType.Float32 => SafetensorsDType.F32,
        torch.ScalarType.Int64 => SafetensorsDType.I64,
        torch.ScalarType.Float64 => SafetensorsDType.F64,
        _ => throw new NotSupportedException($"Tensors of type {type} cannot be stored in safetensors by QuantSharp."),
    };
}
