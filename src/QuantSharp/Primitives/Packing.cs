namespace QuantSharp.Primitives;

/// <summary>
/// Packs 4-bit and 2-bit integers into bytes, low bits first, and unpacks them exactly.
/// </summary>
/// <remarks>
/// <code>
/// 4-bit, two per byte:   byte k = [ v(2k+1) : high nibble | v(2k) : low nibble ]
///                          bit    7  6  5  4   3  2  1  0
/// 2-bit, four per byte:  byte k = [ v(4k+3) | v(4k+2) | v(4k+1) | v(4k) ]   (v(4k) in bits 1..0)
/// </code>
/// Signed values are stored in two's complement within their field (-8 is 0b1000, -1 is 0b1111) and sign-extended
/// on unpacking. A trailing partial byte is padded with zero bits. Values outside the field are truncated to it
/// (callers clamp to the range first).
/// </remarks>
internal static class Packing
{
    /// <summary>Bytes needed for <paramref name="count"/> values of <paramref name="bits"/> bits (2, 4 or 8).</summary>
    public static long PackedLength(long count, int bits)
    {
        int perByte = ValuesPerByte(bits);
        return (count + perByte - 1) / perByte;
    }

    /// <summary>Packs <paramref name="values"/> (each in the <paramref name="bits"/>-bit range) into bytes.</summary>
    /// <param name="values">Values, signed or unsigned, already within range.</param>
    /// <param name="bits">2, 4 or 8.</param>
    /// <param name="destination">At least <see cref="PackedLength"/> bytes.</param>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is too short, or <paramref name="bits"/> is not 2, 4 or 8.</exception>
    public static void Pack(ReadOnlySpan<sbyte> values, int bits, Span<byte> destination)
    {
        long need = PackedLength(values.Length, bits);
        if (destination.Length < need)
            throw new ArgumentException($"destination has {destination.Length} bytes; {values.Length} values of {bits} bits need {need}.", nameof(destination));
        switch (bits)
        {
            case 8:
                for (int i = 0; i < values.Length; i++) destination[i] = (byte)values[i];
                break;
            case 4:
            {
                int pairs = values.Length / 2;
                for (int k = 0; k < pairs; k++)
                    destination[k] = (byte)((values[2 * k] & 0x0F) | ((values[2 * k + 1] & 0x0F) << 4));
                if ((values.Length & 1) != 0) destination[pairs] = (byte)(values[^1] & 0x0F);
                break;
            }
            default: // 2
            {
                for (int k = 0; k < need; k++)
                {
                    int b = 0;
                    for (int j = 0; j < 4; j++)
                    {
                        int idx = 4 * k + j;
                        if (idx < values.Length) b |= (values[idx] & 0x03) << (2 * j);
                    }
                    destination[k] = (byte)b;
                }
                break;
            }
        }
    }

    /// <summary>Unpacks <paramref name="destination"/>.Length values of <paramref name="bits"/> bits from <paramref name="packed"/>.</summary>
    /// <param name="packed">Packed bytes (see <see cref="Pack"/>).</param>
    /// <param name="bits">2, 4 or 8.</param>
    /// <param name="signed">Sign-extend each field (int4/int2) instead of reading it as unsigned (uint4/uint2).</param>
    /// <param name="destination">Receives the values; its length is the number of values.</param>
    /// <exception cref="ArgumentException"><paramref name="packed"/> is too short, or <paramref name="bits"/> is not 2, 4 or 8.</exception>
    public static void Unpack(ReadOnlySpan<byte> packed, int bits, bool signed, Span<sbyte> destination)
    {
        long need = PackedLength(destination.Length, bits);
        if (packed.Length < need)
            throw new ArgumentException($"packed has {packed.Length} bytes; {destination.Length} values of {bits} bits need {need}.", nameof(packed));
        if (bits == 4)
        {
            int pairs = destination.Length / 2;
            for (int k = 0; k < pairs; k++)
            {
                int b = packed[k];
                destination[2 * k] = signed ? (sbyte)((sbyte)(b << 4) >> 4) : (sbyte)(b & 0x0F);
                destination[2 * k + 1] = signed ? (sbyte)((sbyte)b >> 4) : (sbyte)(b >> 4);
            }
            if ((destination.Length & 1) != 0)
            {
                int b = packed[pairs];
                destination[^1] = signed ? (sbyte)((sbyte)(b << 4) >> 4) : (sbyte)(b & 0x0F);
            }
            return;
        }
        int shift = 8 - bits; // move the field to the top of a byte, then shift back (arithmetic for signed)
        int mask = (1 << bits) - 1;
        int perByte = 8 / bits;
        for (int i = 0; i < destination.Length; i++)
        {
            int field = (packed[i / perByte] >> (bits * (i % perByte))) & mask;
            destination[i] = signed ? (sbyte)((sbyte)(field << shift) >> shift) : (sbyte)field;
        }
    }

    private static int ValuesPerByte(int bits) => bits switch
    {
        8 => 1,
        4 => 2,
        2 => 4,
        _ => throw new ArgumentException($"Cannot pack {bits}-bit values; use 2, 4 or 8.", nameof(bits)),
    };
}
