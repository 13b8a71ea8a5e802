using System.Buffers.Binary;
using System.Text;
using QuantSharp.Serialization;

namespace QuantSharp.Tests.Serialization;

/// <summary>Byte-level construction of safetensors files and element decoding from first principles.</summary>
internal static class SafetensorsTestUtil
{
    /// <summary>8-byte little-endian length (the header's own length unless overridden), header bytes, data.</summary>
    public static byte[] Build(byte[] header, byte[] data, ulong? declaredLength = null)
    {
        var bytes = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, declaredLength ?? (ulong)header.Length);
        header.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + header.Length);
        return bytes;
    }

    public static byte[] Build(string headerJson, byte[] data, ulong? declaredLength = null) =>
        Build(Encoding.UTF8.GetBytes(headerJson), data, declaredLength);

    public static byte[] Floats(params float[] values)
    {
        var b = new byte[values.Length * 4];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(4 * i), values[i]);
        return b;
    }

    /// <summary>A fresh empty folder under the system temp folder.</summary>
    public static string NewTempDir()
    {
        string dir = Path.Combine(Path.GetTempPath(), "qs-st-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(dir);
        return dir;
    }

    /// <summary>Decodes element <paramref name="i"/> of raw little-endian bytes as a double (first principles, no TorchSharp).</summary>
    public static double Element(ReadOnlySpan<byte> bytes, SafetensorsDType dtype, int i) => dtype switch
    {
        SafetensorsDType.BOOL => bytes[i] != 0 ? 1 : 0,
        SafetensorsDType.U8 => bytes[i],
        SafetensorsDType.I8 => (sbyte)bytes[i],
        SafetensorsDType.I16 => BinaryPrimitives.ReadInt16LittleEndian(bytes[(2 * i)..]),
        SafetensorsDType.U16 => BinaryPrimitives.ReadUInt16LittleEndian(bytes[(2 * i)..]),
        SafetensorsDType.I32 => BinaryPrimitives.ReadInt32LittleEndian(bytes[(4 * i)..]),
        SafetensorsDType.U32 => BinaryPrimitives.ReadUInt32LittleEndian(bytes[(4 * i)..]),
        SafetensorsDType.I64 => BinaryPrimitives.ReadInt64LittleEndian(bytes[(8 * i)..]),
        SafetensorsDType.U64 => BinaryPrimitives.ReadUInt64LittleEndian(bytes[(8 * i)..]),
        SafetensorsDType.F16 => (double)BinaryPrimitives.ReadHalfLittleEndian(bytes[(2 * i)..]),
        SafetensorsDType.BF16 => BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(bytes[(2 * i)..]) << 16),
        SafetensorsDType.F32 => BinaryPrimitives.ReadSingleLittleEndian(bytes[(4 * i)..]),
        SafetensorsDType.F64 => BinaryPrimitives.ReadDoubleLittleEndian(bytes[(8 * i)..]),
        SafetensorsDType.F8_E4M3 => Float8(bytes[i], exponentBits: 4, bias: 7, hasInfinity: false),
        SafetensorsDType.F8_E5M2 => Float8(bytes[i], exponentBits: 5, bias: 15, hasInfinity: true),
        _ => throw new ArgumentOutOfRangeException(nameof(dtype)),
    };

    /// <summary>float8 e4m3fn (no infinities; S.1111.111 is NaN) and e5m2 (IEEE-like).</summary>
    private static double Float8(byte b, int exponentBits, int bias, bool hasInfinity)
    {
        int mantissaBits = 7 - exponentBits;
        int sign = b >> 7, exp = (b >> mantissaBits) & ((1 << exponentBits) - 1), man = b & ((1 << mantissaBits) - 1);
        int maxExp = (1 << exponentBits) - 1;
        double value;
        if (hasInfinity && exp == maxExp) value = man == 0 ? double.PositiveInfinity : double.NaN;
        else if (!hasInfinity && exp == maxExp && man == (1 << mantissaBits) - 1) value = double.NaN;
        else if (exp == 0) value = man / (double)(1 << mantissaBits) * Math.Pow(2, 1 - bias);
        else value = (1 + man / (double)(1 << mantissaBits)) * Math.Pow(2, exp - bias);
        return sign == 1 ? -value : value;
    }

    public static double Sum(ReadOnlySpan<byte> bytes, SafetensorsDType dtype)
    {
        int n = bytes.Length / dtype.ElementSize();
        double s = 0;
        for (int i = 0; i < n; i++) s += Element(bytes, dtype, i);
        return s;
    }
}
