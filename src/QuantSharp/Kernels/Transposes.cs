using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QuantSharp.Kernels;

/// <summary>
/// 8 x 8 register transposes (AVX; callers check <see cref="Avx.IsSupported"/>) for the packed GEMMs (packing
/// activation rows into strips and writing <c>y^T</c> tiles into output rows) and the depthwise kernel's channels in
/// lanes (planes into a padded tile and back). The moves are bitwise (unpacks, shuffles
/// and 128-bit permutes never change a value), so they also move int32 lanes.
/// </summary>
internal static unsafe class Transposes
{
    /// <summary>
    /// Transposes 8 x 8 floats: <c>dst[j * ldd + i] = src[i * lds + j]</c> (rows of <paramref name="src"/> become
    /// columns of <paramref name="dst"/>), with two rounds of in-lane unpacks and shuffles and one of 128-bit permutes.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Transpose8x8(float* src, nint lds, float* dst, nint ldd) => Transpose8x8(src, lds, dst, ldd, false, default);

    /// <summary>
    /// <see cref="Transpose8x8(float*, nint, float*, nint)"/>, plus <paramref name="addend"/> on every output row (lane
    /// <c>i</c>: source row <c>i</c>) when <paramref name="add"/> (false: pure moves, so a -0 stays -0).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Transpose8x8(float* src, nint lds, float* dst, nint ldd, bool add, Vector256<float> addend)
    {
        Columns(src, lds, out var c0, out var c1, out var c2, out var c3, out var c4, out var c5, out var c6, out var c7);
        Avx.Store(dst, Plus(c0, add, addend));
        Avx.Store(dst + ldd, Plus(c1, add, addend));
        Avx.Store(dst + 2 * ldd, Plus(c2, add, addend));
        Avx.Store(dst + 3 * ldd, Plus(c3, add, addend));
        Avx.Store(dst + 4 * ldd, Plus(c4, add, addend));
        Avx.Store(dst + 5 * ldd, Plus(c5, add, addend));
        Avx.Store(dst + 6 * ldd, Plus(c6, add, addend));
        Avx.Store(dst + 7 * ldd, Plus(c7, add, addend));

        static Vector256<float> Plus(Vector256<float> v, bool add, Vector256<float> addend) => add ? Avx.Add(v, addend) : v;
    }

    /// <summary>
    /// <see cref="Transpose8x8(float*, nint, float*, nint)"/> with the output rows where <paramref name="rowOffsets"/>
    /// puts them: column <c>j</c> of <paramref name="src"/> to <c>dst + rowOffsets[j]</c> (rows of a padded tile that
    /// are not evenly spaced).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Transpose8x8(float* src, nint lds, float* dst, int* rowOffsets)
    {
        Columns(src, lds, out var c0, out var c1, out var c2, out var c3, out var c4, out var c5, out var c6, out var c7);
        Avx.Store(dst + rowOffsets[0], c0);
        Avx.Store(dst + rowOffsets[1], c1);
        Avx.Store(dst + rowOffsets[2], c2);
        Avx.Store(dst + rowOffsets[3], c3);
        Avx.Store(dst + rowOffsets[4], c4);
        Avx.Store(dst + rowOffsets[5], c5);
        Avx.Store(dst + rowOffsets[6], c6);
        Avx.Store(dst + rowOffsets[7], c7);
    }

    /// <summary>
    /// <see cref="Transpose8x8(float*, nint, float*, nint)"/> into the first <paramref name="rows"/> rows of
    /// <paramref name="dst"/> only, each only its first <paramref name="count"/> values (1 to 8; fewer than 8 through a
    /// masked store, which writes nothing past them: AVX-512VL's where it runs (as <see cref="Epilogue512"/>'s), whose masked stores are plain stores; AVX's
    /// <c>vmaskmovps</c> store elsewhere, which took the quad convolution on 7x7 planes at batch 8 from 0.77-0.87x
    /// float32's time to 1.06-1.15x on the Zen 4 VM: docs/BENCHMARKS.md, stop 48).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Transpose8x8(float* src, nint lds, float* dst, nint ldd, int rows, int count)
    {
        Columns(src, lds, out var c0, out var c1, out var c2, out var c3, out var c4, out var c5, out var c6, out var c7);
        var mask = Vector256.LessThan(Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7), Vector256.Create(count)).AsSingle();
        Store(dst, c0, count, mask);
        if (rows > 1) Store(dst + ldd, c1, count, mask);
        if (rows > 2) Store(dst + 2 * ldd, c2, count, mask);
        if (rows > 3) Store(dst + 3 * ldd, c3, count, mask);
        if (rows > 4) Store(dst + 4 * ldd, c4, count, mask);
        if (rows > 5) Store(dst + 5 * ldd, c5, count, mask);
        if (rows > 6) Store(dst + 6 * ldd, c6, count, mask);
        if (rows > 7) Store(dst + 7 * ldd, c7, count, mask);

        static void Store(float* at, Vector256<float> v, int count, Vector256<float> mask)
        {
            if (count == 8) Avx.Store(at, v);
            else if (Avx512F.VL.IsSupported) Avx512F.VL.MaskStore(at, mask, v);
            else Avx.MaskStore(at, mask, v);
        }
    }

    /// <summary>The eight columns of the 8 x 8 floats at <paramref name="src"/> (rows <paramref name="lds"/> apart).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Columns(float* src, nint lds, out Vector256<float> c0, out Vector256<float> c1, out Vector256<float> c2, out Vector256<float> c3,
        out Vector256<float> c4, out Vector256<float> c5, out Vector256<float> c6, out Vector256<float> c7)
    {
        var r0 = Avx.LoadVector256(src);
        var r1 = Avx.LoadVector256(src + lds);
        var r2 = Avx.LoadVector256(src + 2 * lds);
        var r3 = Avx.LoadVector256(src + 3 * lds);
        var r4 = Avx.LoadVector256(src + 4 * lds);
        var r5 = Avx.LoadVector256(src + 5 * lds);
        var r6 = Avx.LoadVector256(src + 6 * lds);
        var r7 = Avx.LoadVector256(src + 7 * lds);
        // Pairs of rows interleaved: t0 = r0[0] r1[0] r0[1] r1[1] | r0[4] r1[4] r0[5] r1[5], ...
        var t0 = Avx.UnpackLow(r0, r1); var t1 = Avx.UnpackHigh(r0, r1);
        var t2 = Avx.UnpackLow(r2, r3); var t3 = Avx.UnpackHigh(r2, r3);
        var t4 = Avx.UnpackLow(r4, r5); var t5 = Avx.UnpackHigh(r4, r5);
        var t6 = Avx.UnpackLow(r6, r7); var t7 = Avx.UnpackHigh(r6, r7);
        // Four rows per column within each 128-bit half: u0 = column 0 of rows 0-3 | column 4 of rows 0-3, ...
        var u0 = Avx.Shuffle(t0, t2, 0x44); var u1 = Avx.Shuffle(t0, t2, 0xEE);
        var u2 = Avx.Shuffle(t1, t3, 0x44); var u3 = Avx.Shuffle(t1, t3, 0xEE);
        var u4 = Avx.Shuffle(t4, t6, 0x44); var u5 = Avx.Shuffle(t4, t6, 0xEE);
        var u6 = Avx.Shuffle(t5, t7, 0x44); var u7 = Avx.Shuffle(t5, t7, 0xEE);
        // Rows 0-3 and 4-7 of one column joined across the halves.
        c0 = Avx.Permute2x128(u0, u4, 0x20);
        c1 = Avx.Permute2x128(u1, u5, 0x20);
        c2 = Avx.Permute2x128(u2, u6, 0x20);
        c3 = Avx.Permute2x128(u3, u7, 0x20);
        c4 = Avx.Permute2x128(u0, u4, 0x31);
        c5 = Avx.Permute2x128(u1, u5, 0x31);
        c6 = Avx.Permute2x128(u2, u6, 0x31);
        c7 = Avx.Permute2x128(u3, u7, 0x31);
    }
}
