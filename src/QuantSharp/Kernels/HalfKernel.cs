using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace QuantSharp.Kernels;

/// <summary>
/// float32 to float16 / bfloat16 and back, bit-identical to PyTorch's CPU casts: round to nearest even,
/// overflow to infinity, subnormals kept, NaN to the quiet NaN PyTorch produces
/// (float16: sign | 0x7E00; bfloat16: 0x7FC0, as <c>c10::BFloat16</c>'s scalar rounding).
/// The scalar methods are the specification.
/// </summary>
internal static class HalfKernel
{
    /// <summary>float32 to IEEE half bits (round to nearest even).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort ToHalfBits(float value)
    {
        uint x = BitConverter.SingleToUInt32Bits(value);
        uint sign = (x >> 16) & 0x8000u;
        uint a = x & 0x7FFF_FFFFu;
        if (a > 0x7F80_0000u) return (ushort)(sign | 0x7E00u);          // NaN
        if (a >= 0x477F_F000u) return (ushort)(sign | 0x7C00u);         // >= 65520 (and inf) rounds to inf
        if (a >= 0x3880_0000u)                                           // normal half (>= 2^-14)
        {
            uint m = a - 0x3800_0000u;                                   // exponent bias 127 -> 15
            return (ushort)(sign | ((m + 0xFFFu + ((m >> 13) & 1u)) >> 13));
        }
        if (a < 0x3300_0000u) return (ushort)sign;                       // < 2^-25 (2^-25 itself ties to 0)
        // Subnormal half: value / 2^-24, rounded to nearest even.
        int e = (int)(a >> 23);
        uint mant = (a & 0x007F_FFFFu) | 0x0080_0000u;
        int shift = 126 - e;                                             // 14..24
        uint r = mant >> shift;
        uint rem = mant & ((1u << shift) - 1u);
        uint half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u) != 0)) r++;
        return (ushort)(sign | r);
    }

    /// <summary>IEEE half bits to float32 (exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float FromHalfBits(ushort h)
    {
        uint sign = (uint)(h & 0x8000) << 16;
        uint exp = (uint)(h >> 10) & 0x1Fu;
        uint mant = h & 0x3FFu;
        if (exp == 0x1F) return BitConverter.UInt32BitsToSingle(sign | 0x7F80_0000u | (mant << 13));
        if (exp != 0) return BitConverter.UInt32BitsToSingle(sign | ((exp + 112u) << 23) | (mant << 13));
        float v = mant * (1f / 16777216f); // mant * 2^-24, exact
        return sign != 0 ? -v : v;
    }

    /// <summary>float32 to bfloat16 bits (round to nearest even; NaN to 0x7FC0).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort ToBFloat16Bits(float value)
    {
        if (float.IsNaN(value)) return 0x7FC0;
        uint x = BitConverter.SingleToUInt32Bits(value);
        return (ushort)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
    }

    /// <summary>bfloat16 bits to float32 (exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float FromBFloat16Bits(ushort b) => BitConverter.UInt32BitsToSingle((uint)b << 16);

    /// <summary>Span version of <see cref="ToHalfBits"/>, vectorized.</summary>
    /// <remarks>
    /// Normal results round the mantissa with integer arithmetic as the scalar path; subnormal results add 0.5f, whose
    /// unit in the last place is 2^-24 (the half subnormal step), so the float adder rounds to nearest even and the
    /// low bits of the sum are the half's bits.
    /// </remarks>
    public static void ToHalf(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        int n = source.Length;
        ref uint src = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(source));
        ref ushort dst = ref MemoryMarshal.GetReference(destination);
        int i = 0;
        if (Simd.Use256 && n >= 16)
        {
            for (; i <= n - 16; i += 16)
            {
                var a = H256(Vector256.LoadUnsafe(ref src, (nuint)i));
                var b = H256(Vector256.LoadUnsafe(ref src, (nuint)(i + 8)));
                Vector256.Narrow(a, b).StoreUnsafe(ref dst, (nuint)i);
            }
        }
        else if (Simd.Use128 && n >= 8)
        {
            for (; i <= n - 8; i += 8)
            {
                var a = H128(Vector128.LoadUnsafe(ref src, (nuint)i));
                var b = H128(Vector128.LoadUnsafe(ref src, (nuint)(i + 4)));
                Vector128.Narrow(a, b).StoreUnsafe(ref dst, (nuint)i);
            }
        }
        ToHalfScalar(source[i..], destination[i..]);
    }

    /// <summary>The specification of <see cref="ToHalf"/>.</summary>
    public static void ToHalfScalar(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        for (int i = 0; i < source.Length; i++) destination[i] = ToHalfBits(source[i]);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> H256(Vector256<uint> x)
    {
        var sign = (x >> 16) & Vector256.Create(0x8000u);
        var a = x & Vector256.Create(0x7FFF_FFFFu);
        var ai = a.AsInt32();
        var normal = (a - Vector256.Create(0x3800_0000u) + Vector256.Create(0xFFFu) + ((a >> 13) & Vector256.Create(1u))) >> 13;
        var sub = (a.AsSingle() + Vector256.Create(0.5f)).AsUInt32() - Vector256.Create(0x3F00_0000u);
        var r = Vector256.ConditionalSelect(Vector256.LessThan(ai, Vector256.Create(0x3880_0000)).AsUInt32(), sub, normal);
        r = Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(ai, Vector256.Create(0x477F_F000)).AsUInt32(), Vector256.Create(0x7C00u), r);
        r = Vector256.ConditionalSelect(Vector256.GreaterThan(ai, Vector256.Create(0x7F80_0000)).AsUInt32(), Vector256.Create(0x7E00u), r);
        return r | sign;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<uint> H128(Vector128<uint> x)
    {
        var sign = (x >> 16) & Vector128.Create(0x8000u);
        var a = x & Vector128.Create(0x7FFF_FFFFu);
        var ai = a.AsInt32();
        var normal = (a - Vector128.Create(0x3800_0000u) + Vector128.Create(0xFFFu) + ((a >> 13) & Vector128.Create(1u))) >> 13;
        var sub = (a.AsSingle() + Vector128.Create(0.5f)).AsUInt32() - Vector128.Create(0x3F00_0000u);
        var r = Vector128.ConditionalSelect(Vector128.LessThan(ai, Vector128.Create(0x3880_0000)).AsUInt32(), sub, normal);
        r = Vector128.ConditionalSelect(Vector128.GreaterThanOrEqual(ai, Vector128.Create(0x477F_F000)).AsUInt32(), Vector128.Create(0x7C00u), r);
        r = Vector128.ConditionalSelect(Vector128.GreaterThan(ai, Vector128.Create(0x7F80_0000)).AsUInt32(), Vector128.Create(0x7E00u), r);
        return r | sign;
    }

    /// <summary>Every bit of a half but its exponent's: OR-ed into a half, all ones exactly for an infinity or a NaN.</summary>
    internal const ushort NotExponent = 0x83FF;

    /// <summary>
    /// True when none of the <paramref name="count"/> halves at <paramref name="p"/> is an infinity or a NaN (exponent
    /// bits all ones). Vectorized: setting every bit but the exponent's leaves all ones exactly for those, so the
    /// unsigned maximum of the lanes tells (two operations per vector).
    /// </summary>
    public static unsafe bool AllFinite(ushort* p, nint count)
    {
        nint i = 0;
        if (Simd.Use512 && count >= 32)
        {
            var acc = Vector512<ushort>.Zero;
            for (; i <= count - 32; i += 32) acc = Vector512.Max(acc, Vector512.Load(p + i) | Vector512.Create(NotExponent));
            if (Vector512.EqualsAny(acc, Vector512<ushort>.AllBitsSet)) return false;
        }
        else if (Simd.Use256 && count >= 16)
        {
            var acc = Vector256<ushort>.Zero;
            for (; i <= count - 16; i += 16) acc = Vector256.Max(acc, Vector256.Load(p + i) | Vector256.Create(NotExponent));
            if (Vector256.EqualsAny(acc, Vector256<ushort>.AllBitsSet)) return false;
        }
        else if (Simd.Use128 && count >= 8)
        {
            var acc = Vector128<ushort>.Zero;
            for (; i <= count - 8; i += 8) acc = Vector128.Max(acc, Vector128.Load(p + i) | Vector128.Create(NotExponent));
            if (Vector128.EqualsAny(acc, Vector128<ushort>.AllBitsSet)) return false;
        }
        for (; i < count; i++)
            if ((p[i] | NotExponent) == ushort.MaxValue) return false;
        return true;
    }

    /// <summary>
    /// Span version of <see cref="FromHalfBits"/>, vectorized (<see cref="HalfLanes.FromHalf(Vector256{uint})"/>: the same
    /// bits, NaN payloads included): the float32 dequantization of half-precision weights and tensors.
    /// </summary>
    public static void FromHalf(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        int n = source.Length;
        if (destination.Length < n) throw new ArgumentException("The destination is shorter than the source.", nameof(destination));
        ref ushort src = ref MemoryMarshal.GetReference(source);
        ref uint dst = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(destination));
        int i = 0;
        if (Simd.Use512 && n >= 32)
        {
            for (; i <= n - 32; i += 32)
            {
                var (a, b) = Vector512.Widen(Vector512.LoadUnsafe(ref src, (nuint)i));
                HalfLanes.FromHalf(a << 16).AsUInt32().StoreUnsafe(ref dst, (nuint)i);
                HalfLanes.FromHalf(b << 16).AsUInt32().StoreUnsafe(ref dst, (nuint)(i + 16));
            }
        }
        if (Simd.Use256 && n - i >= 16)
        {
            for (; i <= n - 16; i += 16)
            {
                var (a, b) = Vector256.Widen(Vector256.LoadUnsafe(ref src, (nuint)i));
                HalfLanes.FromHalf(a << 16).AsUInt32().StoreUnsafe(ref dst, (nuint)i);
                HalfLanes.FromHalf(b << 16).AsUInt32().StoreUnsafe(ref dst, (nuint)(i + 8));
            }
        }
        else if (Simd.Use128 && n >= 8)
        {
            for (; i <= n - 8; i += 8)
            {
                var (a, b) = Vector128.Widen(Vector128.LoadUnsafe(ref src, (nuint)i));
                HalfLanes.FromHalf(a << 16).AsUInt32().StoreUnsafe(ref dst, (nuint)i);
                HalfLanes.FromHalf(b << 16).AsUInt32().StoreUnsafe(ref dst, (nuint)(i + 4));
            }
        }
        for (; i < n; i++) Unsafe.Add(ref dst, i) = BitConverter.SingleToUInt32Bits(FromHalfBits(Unsafe.Add(ref src, i)));
    }

    /// <summary>Span version of <see cref="ToBFloat16Bits"/>, vectorized.</summary>
    public static void ToBFloat16(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        int n = source.Length;
        ref uint src = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(source));
        ref ushort dst = ref MemoryMarshal.GetReference(destination);
        int i = 0;
        if (Simd.Use256 && n >= 16)
        {
            for (; i <= n - 16; i += 16)
            {
                var a = Vector256.LoadUnsafe(ref src, (nuint)i);
                var b = Vector256.LoadUnsafe(ref src, (nuint)(i + 8));
                Vector256.Narrow(Bf256(a), Bf256(b)).StoreUnsafe(ref dst, (nuint)i);
            }
        }
        else if (Simd.Use128 && n >= 8)
        {
            for (; i <= n - 8; i += 8)
            {
                var a = Vector128.LoadUnsafe(ref src, (nuint)i);
                var b = Vector128.LoadUnsafe(ref src, (nuint)(i + 4));
                Vector128.Narrow(Bf128(a), Bf128(b)).StoreUnsafe(ref dst, (nuint)i);
            }
        }
        ToBFloat16Scalar(source[i..], destination[i..]);
    }

    /// <summary>
    /// IEEE half bits to bfloat16 bits, as libtorch's <c>copy_</c> from float16 to bfloat16 (through float32, exactly,
    /// then <see cref="ToBFloat16Bits"/>'s rounding), vectorized: the bfloat16 route's conversion of float16 weights
    /// (libtorch's own conversion took about 10 ms on a 4096x4096 weight).
    /// </summary>
    public static void HalfToBFloat16(ReadOnlySpan<ushort> source, Span<ushort> destination)
    {
        int n = source.Length;
        if (destination.Length < n) throw new ArgumentException("The destination is shorter than the source.", nameof(destination));
        ref ushort src = ref MemoryMarshal.GetReference(source);
        ref ushort dst = ref MemoryMarshal.GetReference(destination);
        int i = 0;
        if (Simd.Use256 && n >= 16)
        {
            for (; i <= n - 16; i += 16)
            {
                var (a, b) = Vector256.Widen(Vector256.LoadUnsafe(ref src, (nuint)i));
                var fa = HalfLanes.FromHalf(a << 16).AsUInt32();
                var fb = HalfLanes.FromHalf(b << 16).AsUInt32();
                Vector256.Narrow(Bf256(fa), Bf256(fb)).StoreUnsafe(ref dst, (nuint)i);
            }
        }
        else if (Simd.Use128 && n >= 8)
        {
            for (; i <= n - 8; i += 8)
            {
                var (a, b) = Vector128.Widen(Vector128.LoadUnsafe(ref src, (nuint)i));
                var fa = HalfLanes.FromHalf(a << 16).AsUInt32();
                var fb = HalfLanes.FromHalf(b << 16).AsUInt32();
                Vector128.Narrow(Bf128(fa), Bf128(fb)).StoreUnsafe(ref dst, (nuint)i);
            }
        }
        for (; i < n; i++) Unsafe.Add(ref dst, i) = ToBFloat16Bits(FromHalfBits(Unsafe.Add(ref src, i)));
    }

    /// <summary>The specification of <see cref="ToBFloat16"/>.</summary>
    public static void ToBFloat16Scalar(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        for (int i = 0; i < source.Length; i++) destination[i] = ToBFloat16Bits(source[i]);
    }

    /// <summary>float32 bits rounded to bfloat16 bits in the low halves (<see cref="ToBFloat16Bits"/>: nearest even, NaN to 0x7FC0), 16 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<uint> Bf512(Vector512<uint> x)
    {
        var r = (x + Vector512.Create(0x7FFFu) + ((x >> 16) & Vector512.Create(1u))) >> 16;
        var isNan = Vector512.GreaterThan(x & Vector512.Create(0x7FFF_FFFFu), Vector512.Create(0x7F80_0000u));
        return Vector512.ConditionalSelect(isNan, Vector512.Create(0x7FC0u), r);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> Bf256(Vector256<uint> x)
    {
        var r = (x + Vector256.Create(0x7FFFu) + ((x >> 16) & Vector256.Create(1u))) >> 16;
        var isNan = Vector256.GreaterThan(x & Vector256.Create(0x7FFF_FFFFu), Vector256.Create(0x7F80_0000u));
        return Vector256.ConditionalSelect(isNan, Vector256.Create(0x7FC0u), r);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<uint> Bf128(Vector128<uint> x)
    {
        var r = (x + Vector128.Create(0x7FFFu) + ((x >> 16) & Vector128.Create(1u))) >> 16;
        var isNan = Vector128.GreaterThan(x & Vector128.Create(0x7FFF_FFFFu), Vector128.Create(0x7F80_0000u));
        return Vector128.ConditionalSelect(isNan, Vector128.Create(0x7FC0u), r);
    }

    /// <summary>Span version of <see cref="FromBFloat16Bits"/>, vectorized (each value's bits moved to the high half).</summary>
    public static void FromBFloat16(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        int n = source.Length;
        if (destination.Length < n) throw new ArgumentException("The destination is shorter than the source.", nameof(destination));
        ref ushort src = ref MemoryMarshal.GetReference(source);
        ref uint dst = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(destination));
        int i = 0;
        if (Simd.Use256 && n >= 16)
        {
            for (; i <= n - 16; i += 16)
            {
                var (a, b) = Vector256.Widen(Vector256.LoadUnsafe(ref src, (nuint)i));
                (a << 16).StoreUnsafe(ref dst, (nuint)i);
                (b << 16).StoreUnsafe(ref dst, (nuint)(i + 8));
            }
        }
        else if (Simd.Use128 && n >= 8)
        {
            for (; i <= n - 8; i += 8)
            {
                var (a, b) = Vector128.Widen(Vector128.LoadUnsafe(ref src, (nuint)i));
                (a << 16).StoreUnsafe(ref dst, (nuint)i);
                (b << 16).StoreUnsafe(ref dst, (nuint)(i + 4));
            }
        }
        for (; i < n; i++) Unsafe.Add(ref dst, i) = (uint)Unsafe.Add(ref src, i) << 16;
    }
}
