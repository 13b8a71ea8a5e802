using System.Runtime.CompilerServices;

namespace QuantSharp.Kernels;

/// <summary>
/// One width of the packed GEMMs' micro-kernel (<see cref="MicroKernel"/>): vectors of <see cref="Lanes"/> elements of
/// <typeparamref name="T"/> (float32 values, or int32 lanes each holding a group of integer codes), a broadcast of one
/// weight element, and the multiply-accumulate.
/// </summary>
internal interface IMicroWidth<TVec, T> where TVec : struct where T : unmanaged
{
    /// <summary>Elements of <typeparamref name="T"/> per vector.</summary>
    static abstract int Lanes { get; }

    static abstract unsafe TVec Load(T* p);

    static abstract unsafe void Store(TVec v, T* p);

    /// <summary>The weight element <paramref name="a"/> in every lane.</summary>
    static abstract TVec Broadcast(T a);

    /// <summary><c>acc + a * b</c> per lane (for integer widths, the dot product of each 32-bit group).</summary>
    static abstract TVec MultiplyAccumulate(TVec acc, TVec b, TVec a);
}

/// <summary>The float widths as micro-kernel widths: broadcast, then fused multiply-add (<see cref="IFloatWidth{TVec}.MultiplyAdd"/>).</summary>
internal readonly struct FloatMicro<TW, TVec> : IMicroWidth<TVec, float> where TW : IFloatWidth<TVec> where TVec : struct
{
    public static int Lanes => TW.Count;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe TVec Load(float* p) => TW.Load(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe void Store(TVec v, float* p) => TW.Store(v, p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static TVec Broadcast(float a) => TW.Create(a);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static TVec MultiplyAccumulate(TVec acc, TVec b, TVec a) => TW.MultiplyAdd(a, b, acc);
}

/// <summary>
/// The register-blocked micro-kernel of <see cref="PackedMatMul"/> (float) and <see cref="PackedIntegerMatMul"/> (integer):
/// <c>TH.Count</c> (4, 6 or 8) weight rows x 2 vectors of activations, two accumulators per row. Per step: two vector
/// loads of the strip, one broadcast per weight row, two multiply-accumulates per row.
/// </summary>
/// <remarks>
/// Each row's sums get the same operations in the same order whatever the tile height, so the tiling of a call
/// (<see cref="NextTile"/>) never changes a bit. Eight rows (16 accumulators, 19 registers) need the 32 vector
/// registers of AVX-512; with 16 registers the tiles are six rows high, and four to end on an even count.
/// </remarks>
internal static unsafe class MicroKernel
{
    /// <summary>Weight rows per tile of the integer GEMM, and the float GEMM's tile where 8 does not apply.</summary>
    internal const int Rows = 6;

    /// <summary>
    /// The height of the next tile over <paramref name="remaining"/> rows: tiles of 8 (where <paramref name="wide"/>:
    /// 512-bit vectors), 6 and 4 that cover an even count exactly (an odd count is padded by one row, fewer than four
    /// rows to four). 16 rows run as 8 + 8 instead of 6 + 6 + 6, 32 as four 8s instead of 36 rows of 6s.
    /// </summary>
    internal static int NextTile(int remaining, bool wide)
    {
        int even = (remaining + 1) & ~1;
        if (wide && even >= 8 && even != 10 && even != 12) return 8;
        if (even >= 6 && even != 8) return 6;
        return 4;
    }

    /// <summary>Rows the tiles of <see cref="NextTile"/> cover for <paramref name="rows"/> rows (the last tile may pass the end).</summary>
    internal static int PaddedRows(int rows, bool wide)
    {
        int i = 0;
        while (i < rows) i += NextTile(rows - i, wide);
        return i;
    }

    /// <summary>
    /// Where each tile of <see cref="NextTile"/> over <paramref name="rows"/> rows starts, then where the last one ends
    /// (<see cref="PaddedRows"/>): tile <c>t</c> covers rows <c>[starts[t], starts[t + 1])</c>. Only the last tile can
    /// pass <paramref name="rows"/>.
    /// </summary>
    internal static int[] TileStarts(int rows, bool wide)
    {
        int tiles = 0;
        for (int i = 0; i < rows; tiles++) i += NextTile(rows - i, wide);
        var starts = new int[tiles + 1];
        for (int t = 0; t < tiles; t++) starts[t + 1] = starts[t] + NextTile(rows - starts[t], wide);
        return starts;
    }

    /// <summary>
    /// <see cref="Run{TM, TVec, T, TH}"/> for a tile of <paramref name="height"/> rows (<see cref="NextTile"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void RunTile<TM, TVec, T>(int height, T* a, nint lda, T* b, int steps, T* c, nint ldc)
        where TM : IMicroWidth<TVec, T> where TVec : struct where T : unmanaged =>
        RunTile<TM, TVec, T, PackedSteps>(height, a, lda, b, null, steps, c, ldc);

    /// <summary>
    /// <see cref="RunTile{TM, TVec, T}"/> with the strip's steps where <typeparamref name="TS"/> finds them
    /// (<see cref="OffsetSteps"/>: step <c>s</c> at <c>b + offsets[s]</c>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void RunTile<TM, TVec, T, TS>(int height, T* a, nint lda, T* b, int* offsets, int steps, T* c, nint ldc)
        where TM : IMicroWidth<TVec, T> where TVec : struct where T : unmanaged where TS : IStripSteps
    {
        if (height == 8) Run<TM, TVec, T, Eight, TS>(a, lda, b, offsets, steps, c, ldc);
        else if (height == 6) Run<TM, TVec, T, Six, TS>(a, lda, b, offsets, steps, c, ldc);
        else Run<TM, TVec, T, Four, TS>(a, lda, b, offsets, steps, c, ldc);
    }

    /// <summary><see cref="Run{TM, TVec, T, TH, TS}"/> over a packed strip (two vectors per step, contiguous).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Run<TM, TVec, T, TH>(T* a, nint lda, T* b, int steps, T* c, nint ldc)
        where TM : IMicroWidth<TVec, T> where TVec : struct where T : unmanaged where TH : IRowCount =>
        Run<TM, TVec, T, TH, PackedSteps>(a, lda, b, null, steps, c, ldc);

    /// <summary>
    /// <c>c[j, :] += sum_s a[j, s] * b[s, :]</c> for <c>TH.Count</c> weight rows j (rows <paramref name="lda"/>
    /// elements apart) over <paramref name="steps"/> steps of one strip (two vectors per step, found by
    /// <typeparamref name="TS"/>: contiguous from <paramref name="b"/>, or at <paramref name="b"/> plus each step's
    /// offset); <paramref name="c"/> rows are <paramref name="ldc"/> elements apart.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Run<TM, TVec, T, TH, TS>(T* a, nint lda, T* b, int* offsets, int steps, T* c, nint ldc)
        where TM : IMicroWidth<TVec, T> where TVec : struct where T : unmanaged where TH : IRowCount where TS : IStripSteps
    {
        int n = TM.Lanes;
        T* a0 = a, a1 = a + lda, a2 = a + 2 * lda, a3 = a + 3 * lda, a4 = a + 4 * lda, a5 = a + 5 * lda, a6 = a + 6 * lda, a7 = a + 7 * lda;
        T* c0 = c, c1 = c + ldc, c2 = c + 2 * ldc, c3 = c + 3 * ldc, c4 = c + 4 * ldc, c5 = c + 5 * ldc, c6 = c + 6 * ldc, c7 = c + 7 * ldc;
        TVec s00 = TM.Load(c0), s01 = TM.Load(c0 + n), s10 = TM.Load(c1), s11 = TM.Load(c1 + n);
        TVec s20 = TM.Load(c2), s21 = TM.Load(c2 + n), s30 = TM.Load(c3), s31 = TM.Load(c3 + n);
        TVec s40 = default, s41 = default, s50 = default, s51 = default, s60 = default, s61 = default, s70 = default, s71 = default;
        if (TH.Count > 4) (s40, s41, s50, s51) = (TM.Load(c4), TM.Load(c4 + n), TM.Load(c5), TM.Load(c5 + n));
        if (TH.Count > 6) (s60, s61, s70, s71) = (TM.Load(c6), TM.Load(c6 + n), TM.Load(c7), TM.Load(c7 + n));
        for (int s = 0; s < steps; s++)
        {
            T* bs = TS.Step(b, offsets, s, n);
            TVec b0 = TM.Load(bs), b1 = TM.Load(bs + n);
            TVec v = TM.Broadcast(a0[s]);
            s00 = TM.MultiplyAccumulate(s00, b0, v);
            s01 = TM.MultiplyAccumulate(s01, b1, v);
            v = TM.Broadcast(a1[s]);
            s10 = TM.MultiplyAccumulate(s10, b0, v);
            s11 = TM.MultiplyAccumulate(s11, b1, v);
            v = TM.Broadcast(a2[s]);
            s20 = TM.MultiplyAccumulate(s20, b0, v);
            s21 = TM.MultiplyAccumulate(s21, b1, v);
            v = TM.Broadcast(a3[s]);
            s30 = TM.MultiplyAccumulate(s30, b0, v);
            s31 = TM.MultiplyAccumulate(s31, b1, v);
            if (TH.Count > 4)
            {
                v = TM.Broadcast(a4[s]);
                s40 = TM.MultiplyAccumulate(s40, b0, v);
                s41 = TM.MultiplyAccumulate(s41, b1, v);
                v = TM.Broadcast(a5[s]);
                s50 = TM.MultiplyAccumulate(s50, b0, v);
                s51 = TM.MultiplyAccumulate(s51, b1, v);
            }
            if (TH.Count > 6)
            {
                v = TM.Broadcast(a6[s]);
                s60 = TM.MultiplyAccumulate(s60, b0, v);
                s61 = TM.MultiplyAccumulate(s61, b1, v);
                v = TM.Broadcast(a7[s]);
                s70 = TM.MultiplyAccumulate(s70, b0, v);
                s71 = TM.MultiplyAccumulate(s71, b1, v);
            }
        }
        TM.Store(s00, c0); TM.Store(s01, c0 + n);
        TM.Store(s10, c1); TM.Store(s11, c1 + n);
        TM.Store(s20, c2); TM.Store(s21, c2 + n);
        TM.Store(s30, c3); TM.Store(s31, c3 + n);
        if (TH.Count > 4)
        {
            TM.Store(s40, c4); TM.Store(s41, c4 + n);
            TM.Store(s50, c5); TM.Store(s51, c5 + n);
        }
        if (TH.Count > 6)
        {
            TM.Store(s60, c6); TM.Store(s61, c6 + n);
            TM.Store(s70, c7); TM.Store(s71, c7 + n);
        }
    }
}

/// <summary>Where the micro-kernel (<see cref="MicroKernel"/>) finds each step of a strip: two vectors of <c>lanes</c> elements from the address it gives.</summary>
internal interface IStripSteps
{
    static abstract unsafe T* Step<T>(T* b, int* offsets, int s, int lanes) where T : unmanaged;
}

/// <summary>A packed strip: step <c>s</c> at <c>b + 2 * lanes * s</c>.</summary>
internal readonly struct PackedSteps : IStripSteps
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe T* Step<T>(T* b, int* offsets, int s, int lanes) where T : unmanaged => b + (nint)s * 2 * lanes;
}

/// <summary>
/// A strip read in place (<see cref="PackedMatMul"/> on a <see cref="PhaseGrid"/>): step <c>s</c> at
/// <c>b + offsets[s]</c>, the reduction row's run of the padded image.
/// </summary>
internal readonly struct OffsetSteps : IStripSteps
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe T* Step<T>(T* b, int* offsets, int s, int lanes) where T : unmanaged => b + offsets[s];
}

internal readonly struct Six : IRowCount
{
    public static int Count => 6;
}

internal readonly struct Eight : IRowCount
{
    public static int Count => 8;
}
