using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QuantSharp.Kernels;

/// <summary>
/// Affine quantization of float32 to 8-bit integers, PyTorch's arithmetic in float32:
/// <c>q = clamp(roundToEven(x * invScale) + zeroPoint, qmin, qmax)</c> with <c>invScale = 1f / scale</c> computed first.
/// This one form serves every granularity: it is what <c>torch.quantize_per_tensor</c>/<c>_per_channel</c>
/// (<c>inv_scale = 1.0f / scale</c>, then <c>nearbyint(x * inv_scale)</c>), PyTorch's fake-quantize kernels and torchao's
/// <c>quantize_affine</c> (<c>round(x * (1.0 / scale))</c>, used for per-group) compute. Dividing (<c>x / scale</c>) is
/// not the same arithmetic: where <c>x / scale</c> is an exact tie (e.g. <c>-127.5</c>), <c>x * (1f / scale)</c> can
/// land one ulp off it and round the other way.
/// NaN becomes <c>qmin</c> (as PyTorch on x86). The scalar methods are the specification; the vector paths
/// (512-, 256-, 128-bit) compute exactly the same float operations in the same order and are tested against them.
/// </summary>
/// <remarks>
/// Results are written as the low 8 bits of the integer (two's complement), so the same kernel serves int8
/// (<c>sbyte</c>) and uint8 (<c>byte</c>, reinterpreted) destinations; the caller guarantees the range fits.
/// </remarks>
internal static class QuantizeKernel
{
    // ---------------- one scale for the whole span ----------------

    /// <summary>Quantizes <paramref name="source"/> with one scale and zero point (an integer value: the vector paths add it as one).</summary>
    public static void Quantize(ReadOnlySpan<float> source, float invScale, float zeroPoint, float qmin, float qmax, Span<sbyte> destination) =>
        Quantize<NoSum>(source, invScale, zeroPoint, qmin, qmax, destination);

    /// <summary>
    /// <see cref="Quantize(ReadOnlySpan{float}, float, float, float, float, Span{sbyte})"/>, returning the sum of the
    /// integers written (before their truncation to 8 bits): the code sum an integer GEMM's zero-point correction needs,
    /// without a second pass over the codes.
    /// </summary>
    public static int QuantizeAndSum(ReadOnlySpan<float> source, float invScale, float zeroPoint, float qmin, float qmax, Span<sbyte> destination) =>
        Quantize<WithSum>(source, invScale, zeroPoint, qmin, qmax, destination);

    private static int Quantize<TSum>(ReadOnlySpan<float> source, float invScale, float zeroPoint, float qmin, float qmax, Span<sbyte> destination)
        where TSum : struct, ISumFlag
    {
        int sum = 0;
        int n = source.Length;
        ref float src = ref MemoryMarshal.GetReference(source);
        ref sbyte dst = ref MemoryMarshal.GetReference(destination);
        int i = 0;
        if (Simd.Use512 && Avx512F.IsSupported && n >= 16)
        {
            var vInv = Vector512.Create(invScale);
            var vLo = Vector512.Create(qmin - zeroPoint);
            var vHi = Vector512.Create(qmax - zeroPoint);
            var vZp = Vector512.Create((int)zeroPoint);
            var acc = Vector512<int>.Zero;
            for (; i <= n - 64; i += 64)
            {
                var a = QClamped512(Vector512.LoadUnsafe(ref src, (nuint)i), vInv, vLo, vHi, vZp);
                var b = QClamped512(Vector512.LoadUnsafe(ref src, (nuint)(i + 16)), vInv, vLo, vHi, vZp);
                var c = QClamped512(Vector512.LoadUnsafe(ref src, (nuint)(i + 32)), vInv, vLo, vHi, vZp);
                var d = QClamped512(Vector512.LoadUnsafe(ref src, (nuint)(i + 48)), vInv, vLo, vHi, vZp);
                Vector512.Narrow(Vector512.Narrow(a, b), Vector512.Narrow(c, d)).StoreUnsafe(ref dst, (nuint)i);
                if (TSum.On) acc += (a + b) + (c + d);
            }
            // Then 16 at a time, and the rest as the last 16 values again, over codes already written (the same codes;
            // summed in their new lanes only): the scalar form took rows of a few dozen values (41 of a 13x13 plane's 169).
            for (; i <= n - 16; i += 16)
            {
                var a = QClamped512(Vector512.LoadUnsafe(ref src, (nuint)i), vInv, vLo, vHi, vZp);
                Avx512F.ConvertToVector128SByte(a).StoreUnsafe(ref dst, (nuint)i); // the low 8 bits, as Narrow
                if (TSum.On) acc += a;
            }
            if (i < n)
            {
                int last = n - 16;
                var a = QClamped512(Vector512.LoadUnsafe(ref src, (nuint)last), vInv, vLo, vHi, vZp);
                Avx512F.ConvertToVector128SByte(a).StoreUnsafe(ref dst, (nuint)last);
                if (TSum.On) acc += a & Vector512.GreaterThanOrEqual(Vector512<int>.Indices, Vector512.Create(i - last));
                i = n;
            }
            if (TSum.On) sum = Vector512.Sum(acc);
        }
        else if (Simd.Use256 && Avx.IsSupported && n >= 8)
        {
            var vInv = Vector256.Create(invScale);
            var vLo = Vector256.Create(qmin - zeroPoint);
            var vHi = Vector256.Create(qmax - zeroPoint);
            var vZp = Vector256.Create((int)zeroPoint);
            var acc = Vector256<int>.Zero;
            for (; i <= n - 32; i += 32)
            {
                var a = QClamped256(Vector256.LoadUnsafe(ref src, (nuint)i), vInv, vLo, vHi, vZp);
                var b = QClamped256(Vector256.LoadUnsafe(ref src, (nuint)(i + 8)), vInv, vLo, vHi, vZp);
                var c = QClamped256(Vector256.LoadUnsafe(ref src, (nuint)(i + 16)), vInv, vLo, vHi, vZp);
                var d = QClamped256(Vector256.LoadUnsafe(ref src, (nuint)(i + 24)), vInv, vLo, vHi, vZp);
                Vector256.Narrow(Vector256.Narrow(a, b), Vector256.Narrow(c, d)).StoreUnsafe(ref dst, (nuint)i);
                if (TSum.On) acc += (a + b) + (c + d);
            }
            // 8 at a time, and the rest as the last 8 again (as the 512-bit loop).
            for (; i <= n - 8; i += 8)
            {
                var a = QClamped256(Vector256.LoadUnsafe(ref src, (nuint)i), vInv, vLo, vHi, vZp);
                StoreLow8(a, ref Unsafe.Add(ref dst, i));
                if (TSum.On) acc += a;
            }
            if (i < n)
            {
                int last = n - 8;
                var a = QClamped256(Vector256.LoadUnsafe(ref src, (nuint)last), vInv, vLo, vHi, vZp);
                StoreLow8(a, ref Unsafe.Add(ref dst, last));
                if (TSum.On) acc += a & Vector256.GreaterThanOrEqual(Vector256<int>.Indices, Vector256.Create(i - last));
                i = n;
            }
            if (TSum.On) sum = Vector256.Sum(acc);
        }
        else if (Simd.Use128 && n >= 16)
        {
            var vInv = Vector128.Create(invScale);
            var vZp = Vector128.Create(zeroPoint);
            var vMin = Vector128.Create(qmin);
            var vMax = Vector128.Create(qmax);
            var acc = Vector128<int>.Zero;
            for (; i <= n - 16; i += 16)
            {
                var a = Q128(Vector128.LoadUnsafe(ref src, (nuint)i), vInv, vZp, vMin, vMax);
                var b = Q128(Vector128.LoadUnsafe(ref src, (nuint)(i + 4)), vInv, vZp, vMin, vMax);
                var c = Q128(Vector128.LoadUnsafe(ref src, (nuint)(i + 8)), vInv, vZp, vMin, vMax);
                var d = Q128(Vector128.LoadUnsafe(ref src, (nuint)(i + 12)), vInv, vZp, vMin, vMax);
                Vector128.Narrow(Vector128.Narrow(a, b), Vector128.Narrow(c, d)).StoreUnsafe(ref dst, (nuint)i);
                if (TSum.On) acc += (a + b) + (c + d);
            }
            // 4 at a time, and the rest as the last 4 again (as the wider loops).
            for (; i <= n - 4; i += 4)
            {
                var a = Q128(Vector128.LoadUnsafe(ref src, (nuint)i), vInv, vZp, vMin, vMax);
                StoreLow4(a, ref Unsafe.Add(ref dst, i));
                if (TSum.On) acc += a;
            }
            if (i < n)
            {
                int last = n - 4;
                var a = Q128(Vector128.LoadUnsafe(ref src, (nuint)last), vInv, vZp, vMin, vMax);
                StoreLow4(a, ref Unsafe.Add(ref dst, last));
                if (TSum.On) acc += a & Vector128.GreaterThanOrEqual(Vector128<int>.Indices, Vector128.Create(i - last));
                i = n;
            }
            if (TSum.On) sum = Vector128.Sum(acc);
        }
        for (; i < n; i++)
        {
            int q = QuantizeOne(Unsafe.Add(ref src, i), invScale, zeroPoint, qmin, qmax);
            Unsafe.Add(ref dst, i) = (sbyte)q;
            if (TSum.On) sum += q;
        }
        return sum;
    }

    /// <summary>Whether <see cref="QuantizeQuads"/> runs in 512-bit vectors here (else the caller quantizes channel by channel).</summary>
    public static bool QuadsInVectors => Simd.Use512 && Avx512F.IsSupported;

    /// <summary>
    /// Four channels of <paramref name="n"/> values (at least 16) quantized as <see cref="Quantize"/> quantizes them, a
    /// position's four codes in one 32-bit value: <c>dst[j] = q(c0[j]) | q(c1[j]) &lt;&lt; 8 | q(c2[j]) &lt;&lt; 16 |
    /// q(c3[j]) &lt;&lt; 24</c>, a null channel the zero point's code. For codes within <c>[0, 255]</c> (qmin at least 0,
    /// qmax at most 255). 16 positions at a time, the rest as the last 16 again; only where <see cref="QuadsInVectors"/>.
    /// One pass instead of four channels quantized into bytes and then interleaved.
    /// </summary>
    public static unsafe void QuantizeQuads(float* c0, float* c1, float* c2, float* c3, int n, float invScale, float zeroPoint, float qmin, float qmax, uint* dst)
    {
        if (!QuadsInVectors || n < 16 || qmin < 0 || qmax > 255)
            throw new ArgumentException($"QuantizeQuads takes 16 values or more into codes within [0, 255] where AVX-512 runs; got {n} values into [{qmin}, {qmax}].", nameof(n));
        var vInv = Vector512.Create(invScale);
        var vLo = Vector512.Create(qmin - zeroPoint);
        var vHi = Vector512.Create(qmax - zeroPoint);
        var vZp = Vector512.Create((int)zeroPoint);
        for (int j = 0; j < n; j += 16)
        {
            int at = Math.Min(j, n - 16);
            var a = c0 == null ? vZp : QClamped512(Vector512.Load(c0 + at), vInv, vLo, vHi, vZp);
            var b = c1 == null ? vZp : QClamped512(Vector512.Load(c1 + at), vInv, vLo, vHi, vZp);
            var c = c2 == null ? vZp : QClamped512(Vector512.Load(c2 + at), vInv, vLo, vHi, vZp);
            var d = c3 == null ? vZp : QClamped512(Vector512.Load(c3 + at), vInv, vLo, vHi, vZp);
            (a | b << 8 | c << 16 | d << 24).AsUInt32().Store(dst + at);
        }
    }

    /// <summary>The low 8 bits of <paramref name="values"/>' eight lanes, in order, to <paramref name="destination"/> (8 bytes).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreLow8(Vector256<int> values, ref sbyte destination)
    {
        var half = Vector256.Narrow(values, values);
        Unsafe.WriteUnaligned(ref Unsafe.As<sbyte, byte>(ref destination), Vector256.Narrow(half, half).AsInt64().ToScalar());
    }

    /// <summary>The low 8 bits of <paramref name="values"/>' four lanes, in order, to <paramref name="destination"/> (4 bytes).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreLow4(Vector128<int> values, ref sbyte destination)
    {
        var half = Vector128.Narrow(values, values);
        Unsafe.WriteUnaligned(ref Unsafe.As<sbyte, byte>(ref destination), Vector128.Narrow(half, half).AsInt32().ToScalar());
    }

    /// <summary>Compile-time switch of the summing variant of <see cref="QuantizeAndSum"/>.</summary>
    private interface ISumFlag
    {
        static abstract bool On { get; }
    }

    private readonly struct NoSum : ISumFlag
    {
        public static bool On => false;
    }

    private readonly struct WithSum : ISumFlag
    {
        public static bool On => true;
    }

    /// <summary>The specification of <see cref="Quantize"/>.</summary>
    public static void QuantizeScalar(ReadOnlySpan<float> source, float invScale, float zeroPoint, float qmin, float qmax, Span<sbyte> destination)
    {
        for (int i = 0; i < source.Length; i++)
            destination[i] = (sbyte)QuantizeOne(source[i], invScale, zeroPoint, qmin, qmax);
    }

    /// <summary>One value: <c>clamp(round(x * invScale) + zp, qmin, qmax)</c> (NaN to qmin).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int QuantizeOne(float x, float invScale, float zeroPoint, float qmin, float qmax)
    {
        float r = MathF.Round(x * invScale) + zeroPoint;
        r = r > qmin ? r : qmin; // NaN compares false: qmin
        r = r < qmax ? r : qmax;
        return (int)r;
    }

    /// <summary>
    /// <see cref="QuantizeOne"/> on 16 lanes in five instructions: <c>x * invScale</c> clamped to
    /// <c>[qmin - zp, qmax - zp]</c> (<c>vmaxps</c> returns its second operand for a NaN, so NaN becomes the lower bound),
    /// converted with the CPU's rounding, to nearest even (<c>vcvtps2dq</c>), then <c>+ zp</c> in integers. The same
    /// integers: rounding is monotone and keeps the integer bounds, and the scalar form's float <c>+ zp</c> is exact
    /// wherever the clamp does not decide. (<c>Vector512.Round</c>, compares, selects and the saturating
    /// <c>ConvertToInt32</c> took about twice the instructions.)
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> QClamped512(Vector512<float> x, Vector512<float> inv, Vector512<float> lo, Vector512<float> hi, Vector512<int> zp) =>
        Avx512F.ConvertToVector512Int32(Avx512F.Min(Avx512F.Max(x * inv, lo), hi)) + zp;

    /// <summary><see cref="QClamped512"/> on 8 lanes (AVX: <c>vmaxps</c>, <c>vminps</c>, <c>vcvtps2dq</c>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> QClamped256(Vector256<float> x, Vector256<float> inv, Vector256<float> lo, Vector256<float> hi, Vector256<int> zp) =>
        Avx.ConvertToVector256Int32(Avx.Min(Avx.Max(x * inv, lo), hi)) + zp;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Q256(Vector256<float> x, Vector256<float> inv, Vector256<float> zp, Vector256<float> min, Vector256<float> max)
    {
        var r = Vector256.Round(x * inv) + zp;
        r = Vector256.ConditionalSelect(Vector256.GreaterThan(r, min), r, min);
        r = Vector256.ConditionalSelect(Vector256.LessThan(r, max), r, max);
        return Vector256.ConvertToInt32(r);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<int> Q128(Vector128<float> x, Vector128<float> inv, Vector128<float> zp, Vector128<float> min, Vector128<float> max)
    {
        var r = Vector128.Round(x * inv) + zp;
        r = Vector128.ConditionalSelect(Vector128.GreaterThan(r, min), r, min);
        r = Vector128.ConditionalSelect(Vector128.LessThan(r, max), r, max);
        return Vector128.ConvertToInt32(r);
    }

    // ---------------- one scale per element position (channel axis = last axis) ----------------

    /// <summary>
    /// Quantizes one row whose element <c>j</c> uses <c>invScale[j]</c> and <c>zeroPoint[j]</c>
    /// (per-channel along the last axis).
    /// </summary>
    public static void QuantizePerElement(ReadOnlySpan<float> source, ReadOnlySpan<float> invScale, ReadOnlySpan<float> zeroPoint,
        float qmin, float qmax, Span<sbyte> destination)
    {
        int n = source.Length;
        ref float src = ref MemoryMarshal.GetReference(source);
        ref float inv = ref MemoryMarshal.GetReference(invScale);
        ref float zp = ref MemoryMarshal.GetReference(zeroPoint);
        ref sbyte dst = ref MemoryMarshal.GetReference(destination);
        int i = 0;
        if (Simd.Use256 && n >= 32)
        {
            var vMin = Vector256.Create(qmin);
            var vMax = Vector256.Create(qmax);
            for (; i <= n - 32; i += 32)
            {
                var a = Q256(Vector256.LoadUnsafe(ref src, (nuint)i), Vector256.LoadUnsafe(ref inv, (nuint)i), Vector256.LoadUnsafe(ref zp, (nuint)i), vMin, vMax);
                var b = Q256(Vector256.LoadUnsafe(ref src, (nuint)(i + 8)), Vector256.LoadUnsafe(ref inv, (nuint)(i + 8)), Vector256.LoadUnsafe(ref zp, (nuint)(i + 8)), vMin, vMax);
                var c = Q256(Vector256.LoadUnsafe(ref src, (nuint)(i + 16)), Vector256.LoadUnsafe(ref inv, (nuint)(i + 16)), Vector256.LoadUnsafe(ref zp, (nuint)(i + 16)), vMin, vMax);
                var d = Q256(Vector256.LoadUnsafe(ref src, (nuint)(i + 24)), Vector256.LoadUnsafe(ref inv, (nuint)(i + 24)), Vector256.LoadUnsafe(ref zp, (nuint)(i + 24)), vMin, vMax);
                Vector256.Narrow(Vector256.Narrow(a, b), Vector256.Narrow(c, d)).StoreUnsafe(ref dst, (nuint)i);
            }
        }
        else if (Simd.Use128 && n >= 16)
        {
            var vMin = Vector128.Create(qmin);
            var vMax = Vector128.Create(qmax);
            for (; i <= n - 16; i += 16)
            {
                var a = Q128(Vector128.LoadUnsafe(ref src, (nuint)i), Vector128.LoadUnsafe(ref inv, (nuint)i), Vector128.LoadUnsafe(ref zp, (nuint)i), vMin, vMax);
                var b = Q128(Vector128.LoadUnsafe(ref src, (nuint)(i + 4)), Vector128.LoadUnsafe(ref inv, (nuint)(i + 4)), Vector128.LoadUnsafe(ref zp, (nuint)(i + 4)), vMin, vMax);
                var c = Q128(Vector128.LoadUnsafe(ref src, (nuint)(i + 8)), Vector128.LoadUnsafe(ref inv, (nuint)(i + 8)), Vector128.LoadUnsafe(ref zp, (nuint)(i + 8)), vMin, vMax);
                var d = Q128(Vector128.LoadUnsafe(ref src, (nuint)(i + 12)), Vector128.LoadUnsafe(ref inv, (nuint)(i + 12)), Vector128.LoadUnsafe(ref zp, (nuint)(i + 12)), vMin, vMax);
                Vector128.Narrow(Vector128.Narrow(a, b), Vector128.Narrow(c, d)).StoreUnsafe(ref dst, (nuint)i);
            }
        }
        QuantizePerElementScalar(source[i..], invScale[i..], zeroPoint[i..], qmin, qmax, destination[i..]);
    }

    /// <summary>The specification of <see cref="QuantizePerElement"/>.</summary>
    public static void QuantizePerElementScalar(ReadOnlySpan<float> source, ReadOnlySpan<float> invScale, ReadOnlySpan<float> zeroPoint,
        float qmin, float qmax, Span<sbyte> destination)
    {
        for (int i = 0; i < source.Length; i++)
            destination[i] = (sbyte)QuantizeOne(source[i], invScale[i], zeroPoint[i], qmin, qmax);
    }

    // ---------------- fake quantization (quantize, then dequantize) ----------------

    /// <summary><c>(clamp(round(x * invScale) + zp, qmin, qmax) - zp) * scale</c>, all in float32.</summary>
    public static void FakeQuantize(ReadOnlySpan<float> source, float scale, float invScale, float zeroPoint, float qmin, float qmax, Span<float> destination)
    {
        int n = source.Length;
        ref float src = ref MemoryMarshal.GetReference(source);
        ref float dst = ref MemoryMarshal.GetReference(destination);
        int i = 0;
        if (Simd.Use512 && Avx512F.IsSupported && n >= 16)
        {
            // The clamps as vmaxps/vminps (a NaN takes the second operand, qmin, as the compares below do; round + zp
            // is never -0, so equal operands are equal bits), two instructions fewer than compare and select.
            var vInv = Vector512.Create(invScale);
            var vScale = Vector512.Create(scale);
            var vZp = Vector512.Create(zeroPoint);
            var vMin = Vector512.Create(qmin);
            var vMax = Vector512.Create(qmax);
            for (; i <= n - 16; i += 16)
            {
                var r = Vector512.Round(Vector512.LoadUnsafe(ref src, (nuint)i) * vInv) + vZp;
                r = Avx512F.Min(Avx512F.Max(r, vMin), vMax);
                ((r - vZp) * vScale).StoreUnsafe(ref dst, (nuint)i);
            }
        }
        else if (Simd.Use256 && n >= 8)
        {
            var vInv = Vector256.Create(invScale);
            var vScale = Vector256.Create(scale);
            var vZp = Vector256.Create(zeroPoint);
            var vMin = Vector256.Create(qmin);
            var vMax = Vector256.Create(qmax);
            for (; i <= n - 8; i += 8)
            {
                var r = Vector256.Round(Vector256.LoadUnsafe(ref src, (nuint)i) * vInv) + vZp;
                r = Vector256.ConditionalSelect(Vector256.GreaterThan(r, vMin), r, vMin);
                r = Vector256.ConditionalSelect(Vector256.LessThan(r, vMax), r, vMax);
                ((r - vZp) * vScale).StoreUnsafe(ref dst, (nuint)i);
            }
        }
        else if (Simd.Use128 && n >= 4)
        {
            var vInv = Vector128.Create(invScale);
            var vScale = Vector128.Create(scale);
            var vZp = Vector128.Create(zeroPoint);
            var vMin = Vector128.Create(qmin);
            var vMax = Vector128.Create(qmax);
            for (; i <= n - 4; i += 4)
            {
                var r = Vector128.Round(Vector128.LoadUnsafe(ref src, (nuint)i) * vInv) + vZp;
                r = Vector128.ConditionalSelect(Vector128.GreaterThan(r, vMin), r, vMin);
                r = Vector128.ConditionalSelect(Vector128.LessThan(r, vMax), r, vMax);
                ((r - vZp) * vScale).StoreUnsafe(ref dst, (nuint)i);
            }
        }
        FakeQuantizeScalar(source[i..], scale, invScale, zeroPoint, qmin, qmax, destination[i..]);
    }

    /// <summary>The specification of <see cref="FakeQuantize"/>.</summary>
    public static void FakeQuantizeScalar(ReadOnlySpan<float> source, float scale, float invScale, float zeroPoint, float qmin, float qmax, Span<float> destination)
    {
        for (int i = 0; i < source.Length; i++)
            destination[i] = (QuantizeOne(source[i], invScale, zeroPoint, qmin, qmax) - zeroPoint) * scale;
    }

    // ---------------- dequantization ----------------

    /// <summary><c>(q - zp) * scale</c> for signed 8-bit values.</summary>
    public static void Dequantize(ReadOnlySpan<sbyte> source, float scale, float zeroPoint, Span<float> destination)
    {
        int n = source.Length;
        ref sbyte src = ref MemoryMarshal.GetReference(source);
        ref float dst = ref MemoryMarshal.GetReference(destination);
        int i = 0;
        if (Simd.Use256 && n >= 32)
        {
            var vScale = Vector256.Create(scale);
            var vZp = Vector256.Create(zeroPoint);
            for (; i <= n - 32; i += 32)
            {
                var (lo, hi) = Vector256.Widen(Vector256.LoadUnsafe(ref src, (nuint)i));
                var (a, b) = Vector256.Widen(lo);
                var (c, d) = Vector256.Widen(hi);
                ((Vector256.ConvertToSingle(a) - vZp) * vScale).StoreUnsafe(ref dst, (nuint)i);
                ((Vector256.ConvertToSingle(b) - vZp) * vScale).StoreUnsafe(ref dst, (nuint)(i + 8));
                ((Vector256.ConvertToSingle(c) - vZp) * vScale).StoreUnsafe(ref dst, (nuint)(i + 16));
                ((Vector256.ConvertToSingle(d) - vZp) * vScale).StoreUnsafe(ref dst, (nuint)(i + 24));
            }
        }
        else if (Simd.Use128 && n >= 16)
        {
            var vScale = Vector128.Create(scale);
            var vZp = Vector128.Create(zeroPoint);
            for (; i <= n - 16; i += 16)
            {
                var (lo, hi) = Vector128.Widen(Vector128.LoadUnsafe(ref src, (nuint)i));
                var (a, b) = Vector128.Widen(lo);
                var (c, d) = Vector128.Widen(hi);
                ((Vector128.ConvertToSingle(a) - vZp) * vScale).StoreUnsafe(ref dst, (nuint)i);
                ((Vector128.ConvertToSingle(b) - vZp) * vScale).StoreUnsafe(ref dst, (nuint)(i + 4));
                ((Vector128.ConvertToSingle(c) - vZp) * vScale).StoreUnsafe(ref dst, (nuint)(i + 8));
                ((Vector128.ConvertToSingle(d) - vZp) * vScale).StoreUnsafe(ref dst, (nuint)(i + 12));
            }
        }
        DequantizeScalar(source[i..], scale, zeroPoint, destination[i..]);
    }

    /// <summary>The specification of <see cref="Dequantize(ReadOnlySpan{sbyte}, float, float, Span{float})"/>.</summary>
    public static void DequantizeScalar(ReadOnlySpan<sbyte> source, float scale, float zeroPoint, Span<float> destination)
    {
        for (int i = 0; i < source.Length; i++)
            destination[i] = (source[i] - zeroPoint) * scale;
    }

    /// <summary><c>(q - zp) * scale</c> for unsigned 8-bit values.</summary>
    public static void Dequantize(ReadOnlySpan<byte> source, float scale, float zeroPoint, Span<float> destination)
    {
        int n = source.Length;
        ref byte src = ref MemoryMarshal.GetReference(source);
        ref float dst = ref MemoryMarshal.GetReference(destination);
        int i = 0;
        if (Simd.Use256 && n >= 32)
        {
            var vScale = Vector256.Create(scale);
            var vZp = Vector256.Create(zeroPoint);
            for (; i <= n - 32; i += 32)
            {
                var (lo, hi) = Vector256.Widen(Vector256.LoadUnsafe(ref src, (nuint)i));
                var (a, b) = Vector256.Widen(lo);
                var (c, d) = Vector256.Widen(hi);
                ((Vector256.ConvertToSingle(a.AsInt32()) - vZp) * vScale).StoreUnsafe(ref dst, (nuint)i);
                ((Vector256.ConvertToSingle(b.AsInt32()) - vZp) * vScale).StoreUnsafe(ref dst, (nuint)(i + 8));
                ((Vector256.ConvertToSingle(c.AsInt32()) - vZp) * vScale).StoreUnsafe(ref dst, (nuint)(i + 16));
                ((Vector256.ConvertToSingle(d.AsInt32()) - vZp) * vScale).StoreUnsafe(ref dst, (nuint)(i + 24));
            }
        }
        else if (Simd.Use128 && n >= 16)
        {
            var vScale = Vector128.Create(scale);
            var vZp = Vector128.Create(zeroPoint);
            for (; i <= n - 16; i += 16)
            {
                var (lo, hi) = Vector128.Widen(Vector128.LoadUnsafe(ref src, (nuint)i));
                var (a, b) = Vector128.Widen(lo);
                var (c, d) = Vector128.Widen(hi);
                ((Vector128.ConvertToSingle(a.AsInt32()) - vZp) * vScale).StoreUnsafe(ref dst, (nuint)i);
                ((Vector128.ConvertToSingle(b.AsInt32()) - vZp) * vScale).StoreUnsafe(ref dst, (nuint)(i + 4));
                ((Vector128.ConvertToSingle(c.AsInt32()) - vZp) * vScale).StoreUnsafe(ref dst, (nuint)(i + 8));
                ((Vector128.ConvertToSingle(d.AsInt32()) - vZp) * vScale).StoreUnsafe(ref dst, (nuint)(i + 12));
            }
        }
        DequantizeScalar(source[i..], scale, zeroPoint, destination[i..]);
    }

    /// <summary>The specification of <see cref="Dequantize(ReadOnlySpan{byte}, float, float, Span{float})"/>.</summary>
    public static void DequantizeScalar(ReadOnlySpan<byte> source, float scale, float zeroPoint, Span<float> destination)
    {
        for (int i = 0; i < source.Length; i++)
            destination[i] = (source[i] - zeroPoint) * scale;
    }
}

/// <summary>Static per-tensor fake quantization of a kernel's float input (<see cref="QuantizeKernel.FakeQuantize"/>'s arguments).</summary>
/// <param name="Scale">The scale.</param>
/// <param name="InvScale"><c>1 / Scale</c>, as the tensor formula multiplies by it.</param>
/// <param name="ZeroPoint">The zero point.</param>
/// <param name="QMin">Lowest code.</param>
/// <param name="QMax">Highest code.</param>
internal readonly record struct InputFakeQuantization(float Scale, float InvScale, float ZeroPoint, float QMin, float QMax)
{
    /// <summary>Fake-quantizes <paramref name="source"/> into <paramref name="destination"/>.</summary>
    public void Apply(ReadOnlySpan<float> source, Span<float> destination) =>
        QuantizeKernel.FakeQuantize(source, Scale, InvScale, ZeroPoint, QMin, QMax, destination);
}
