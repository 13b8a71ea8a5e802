using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace QuantSharp.Kernels;

/// <summary>
/// The path of <see cref="QuantizedMatMul"/> for a few activation rows against a small weight
/// (<see cref="MatMulMethod.DotTiles"/>): each work item owns a block of weight rows, decodes each reduction block of
/// them once into a row-major float tile (in L1), then takes dot products of <see cref="WeightRows"/> tile rows with up
/// to four activation rows read straight from <c>x</c>, vectors along the reduction axis.
/// </summary>
/// <remarks>
/// <para>Against the row kernels it decodes the weight once for all activation rows (they decode it once per four), so
/// the multiply-adds are nearly all the work; against the packed GEMM it neither transposes the decoded tile nor packs
/// the activations: decoding and transposing took about two thirds as many samples as the multiply-adds on 64 x 800
/// int8 at 16 rows (21% against 31% in <c>perf record</c> of <c>PROBE_PROFILE=1 PROBE_SHAPES=64x800 PROBE_ROWS=16
/// small-linear</c>). The price is a horizontal sum per output and reduction block, taken four outputs at a time
/// (<see cref="IFloatWidth{TVec}.Sum4"/>), small beside a block of 256 elements.</para>
/// <para>Sums run in vector lanes and are folded per block, an order of its own: results equal the reference within
/// float32 rounding, as the other paths, but not the bits of the packed GEMM.</para>
/// </remarks>
internal static unsafe class DotTileMatMul
{
    /// <summary>Weight rows per register block (four accumulators per activation row).</summary>
    internal const int WeightRows = 4;

    /// <summary>Most weight rows per work item: a tile of 32 x 256 floats (32 KiB) stays in L1 with the activations' slices.</summary>
    internal const int MaxItemRows = 32;

    /// <summary>Computes <c>y = x w^T + bias</c>; arguments as <see cref="QuantizedMatMul.Run"/>.</summary>
    public static void Run<TW, TVec, TD>(in WeightView w, float* x, int m, nint ldx, float* bias, float* y, nint ldy)
        where TW : IFloatWidth<TVec> where TVec : struct where TD : IWeightDecoder
    {
        int k = w.Cols, blockCapacity = Math.Max(Math.Min(k, PackedMatMul.BlockTarget), 1);
        int itemRows = ItemRows(w.Rows, KernelThreads.Count);
        int items = (w.Rows + itemRows - 1) / itemRows;
        var view = w;
        nint xAddress = (nint)x, yAddress = (nint)y, biasAddress = (nint)bias;
        KernelThreads.For(items, (long)itemRows * m * k, item =>
        {
            int n0 = item * itemRows, rows = Math.Min(itemRows, view.Rows - n0);
            int paddedRows = (rows + WeightRows - 1) / WeightRows * WeightRows;
            float[] scratch = ArrayPool<float>.Shared.Rent(paddedRows * blockCapacity + paddedRows * m);
            try
            {
                fixed (float* tile = scratch)
                {
                    float* sums = tile + paddedRows * blockCapacity; // [paddedRows][m]
                    new Span<float>(tile + rows * blockCapacity, (paddedRows - rows) * blockCapacity).Clear(); // padding rows stay zero
                    new Span<float>(sums, paddedRows * m).Clear();
                    bool finite = PackedMatMul.FiniteHalves<TD>(view, n0, rows);
                    for (int k0 = 0; k0 < k;)
                    {
                        int k1 = PackedMatMul.BlockEnd(view, k0, TW.Count);
                        PackedMatMul.DecodeRows<TW, TVec, TD>(view, n0, rows, k0, k1, tile, blockCapacity, finite);
                        Block<TW, TVec>(tile, blockCapacity, paddedRows, (float*)xAddress + k0, ldx, m, k1 - k0, sums);
                        k0 = k1;
                    }
                    float* b = (float*)biasAddress;
                    for (int i = 0; i < m; i++)
                    {
                        float* dst = (float*)yAddress + i * ldy + n0;
                        for (int r = 0; r < rows; r++) dst[r] = sums[r * m + i] + (b == null ? 0f : b[n0 + r]);
                    }
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(scratch);
            }
        });
    }

    /// <summary>
    /// Weight rows per work item: a multiple of <see cref="WeightRows"/>, at most <see cref="MaxItemRows"/>, and small
    /// enough for two items per thread where the weight has the rows.
    /// </summary>
    internal static int ItemRows(int weightRows, int threads)
    {
        int perItem = (weightRows + 2 * Math.Max(threads, 1) - 1) / (2 * Math.Max(threads, 1));
        perItem = (perItem + WeightRows - 1) / WeightRows * WeightRows;
        return Math.Clamp(perItem, WeightRows, MaxItemRows);
    }

    /// <summary>One reduction block of <paramref name="steps"/> elements: every activation row against every tile row, added to <c>sums[r * m + i]</c>.</summary>
    private static void Block<TW, TVec>(float* tile, nint ldt, int rows, float* x, nint ldx, int m, int steps, float* sums)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        // Four activation rows need 16 accumulators and 4 weight vectors: 32 vector registers hold them (AVX-512),
        // 16 do not, so narrower vectors take two rows at a time.
        int i = 0;
        if (TW.Count >= 16)
            for (; i + 4 <= m; i += 4)
                for (int r = 0; r < rows; r += WeightRows) Dots<TW, TVec, Four>(tile + r * ldt, ldt, x + i * ldx, ldx, steps, sums + r * m + i, m);
        for (; i + 2 <= m; i += 2)
            for (int r = 0; r < rows; r += WeightRows) Dots<TW, TVec, Two>(tile + r * ldt, ldt, x + i * ldx, ldx, steps, sums + r * m + i, m);
        if (i < m)
            for (int r = 0; r < rows; r += WeightRows) Dots<TW, TVec, One>(tile + r * ldt, ldt, x + i * ldx, ldx, steps, sums + r * m + i, m);
    }

    /// <summary>
    /// Four tile rows (<paramref name="ldt"/> apart) against <c>TR.Count</c> activation rows over <paramref name="steps"/>
    /// elements: <c>sums[r * lds + i] += dot(tile row r, x row i)</c>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Dots<TW, TVec, TR>(float* t, nint ldt, float* x, nint ldx, int steps, float* sums, nint lds)
        where TW : IFloatWidth<TVec> where TVec : struct where TR : IRowCount
    {
        int c = TW.Count, s = 0;
        float* t0 = t, t1 = t + ldt, t2 = t + 2 * ldt, t3 = t + 3 * ldt;
        float* x0 = x, x1 = x + ldx, x2 = x + 2 * ldx, x3 = x + 3 * ldx;
        TVec a0 = TW.Zero, a1 = TW.Zero, a2 = TW.Zero, a3 = TW.Zero; // activation row 0 against tile rows 0-3
        TVec b0 = TW.Zero, b1 = TW.Zero, b2 = TW.Zero, b3 = TW.Zero; // row 1
        TVec c0 = TW.Zero, c1 = TW.Zero, c2 = TW.Zero, c3 = TW.Zero; // row 2
        TVec d0 = TW.Zero, d1 = TW.Zero, d2 = TW.Zero, d3 = TW.Zero; // row 3
        for (; s + c <= steps; s += c)
        {
            TVec w0 = TW.Load(t0 + s), w1 = TW.Load(t1 + s), w2 = TW.Load(t2 + s), w3 = TW.Load(t3 + s);
            TVec v = TW.Load(x0 + s);
            a0 = TW.MultiplyAdd(w0, v, a0); a1 = TW.MultiplyAdd(w1, v, a1); a2 = TW.MultiplyAdd(w2, v, a2); a3 = TW.MultiplyAdd(w3, v, a3);
            if (TR.Count > 1)
            {
                v = TW.Load(x1 + s);
                b0 = TW.MultiplyAdd(w0, v, b0); b1 = TW.MultiplyAdd(w1, v, b1); b2 = TW.MultiplyAdd(w2, v, b2); b3 = TW.MultiplyAdd(w3, v, b3);
            }
            if (TR.Count > 2)
            {
                v = TW.Load(x2 + s);
                c0 = TW.MultiplyAdd(w0, v, c0); c1 = TW.MultiplyAdd(w1, v, c1); c2 = TW.MultiplyAdd(w2, v, c2); c3 = TW.MultiplyAdd(w3, v, c3);
                v = TW.Load(x3 + s);
                d0 = TW.MultiplyAdd(w0, v, d0); d1 = TW.MultiplyAdd(w1, v, d1); d2 = TW.MultiplyAdd(w2, v, d2); d3 = TW.MultiplyAdd(w3, v, d3);
            }
        }
        Fold<TW, TVec>(a0, a1, a2, a3, t0, t1, t2, t3, x0, s, steps, sums, lds);
        if (TR.Count > 1) Fold<TW, TVec>(b0, b1, b2, b3, t0, t1, t2, t3, x1, s, steps, sums + 1, lds);
        if (TR.Count > 2)
        {
            Fold<TW, TVec>(c0, c1, c2, c3, t0, t1, t2, t3, x2, s, steps, sums + 2, lds);
            Fold<TW, TVec>(d0, d1, d2, d3, t0, t1, t2, t3, x3, s, steps, sums + 3, lds);
        }
    }

    /// <summary>Whether <see cref="Fold"/> sums the four accumulators together (<see cref="IFloatWidth{TVec}.Sum4"/>) rather than one by one (the probe turns it off to measure the difference).</summary>
    internal static bool FourSums = true;

    /// <summary>Adds one activation row's four lane sums, and its products over the scalar tail <c>[s, steps)</c>, to its four sums.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Fold<TW, TVec>(TVec a0, TVec a1, TVec a2, TVec a3, float* t0, float* t1, float* t2, float* t3, float* x, int s, int steps, float* sums, nint lds)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        float s0, s1, s2, s3;
        if (FourSums)
        {
            var total = TW.Sum4(a0, a1, a2, a3);
            s0 = total.GetElement(0); s1 = total.GetElement(1); s2 = total.GetElement(2); s3 = total.GetElement(3);
        }
        else
        {
            s0 = TW.Sum(a0); s1 = TW.Sum(a1); s2 = TW.Sum(a2); s3 = TW.Sum(a3);
        }
        for (; s < steps; s++)
        {
            float v = x[s];
            s0 += t0[s] * v; s1 += t1[s] * v; s2 += t2[s] * v; s3 += t3[s] * v;
        }
        sums[0] += s0; sums[lds] += s1; sums[2 * lds] += s2; sums[3 * lds] += s3;
    }
}
