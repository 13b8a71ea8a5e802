using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QuantSharp.Kernels;

/// <summary>Which instruction set a kernel runs on. <see cref="Auto"/> takes the widest the CPU (and <see cref="Simd.MaxBits"/>) allows.</summary>
internal enum KernelPath
{
    /// <summary>The widest supported path.</summary>
    Auto,
    /// <summary>One lane of plain scalar code (runs everywhere).</summary>
    Scalar,
    /// <summary>128-bit vectors (SSE4.1).</summary>
    V128,
    /// <summary>256-bit vectors (AVX2, FMA).</summary>
    V256,
    /// <summary>512-bit vectors (AVX-512F/BW).</summary>
    V512,
    /// <summary>256-bit AVX-VNNI <c>vpdpbusd</c> (integer kernels only).</summary>
    Vnni256,
    /// <summary>
    /// 512-bit AVX512-VNNI <c>vpdpbusd</c> (integer kernels only): the packed GEMM through <see cref="Vnni512Kernel"/>;
    /// its row kernels are those of <see cref="Vnni256"/> (or <see cref="V512"/> without AVX-VNNI).
    /// </summary>
    Vnni512,
}

/// <summary>Which loop structure multiplies a weight into the activations.</summary>
internal enum MatMulMethod
{
    /// <summary><see cref="Packed"/> from <see cref="QuantizedMatMul.PackedMinRows"/> activation rows (fewer for small weights), <see cref="DotTiles"/> for 3-23 rows of some small 4-bit and half-precision weights, <see cref="Rows"/> below (<see cref="QuantizedMatMul.ChooseMethod"/>).</summary>
    Auto,
    /// <summary>Decode each weight chunk in registers and multiply it into 1 to 4 activation rows (small batches).</summary>
    Rows,
    /// <summary>Decode blocks of weights into a float tile once for the whole batch, then a register-blocked GEMM (<see cref="PackedMatMul"/>).</summary>
    Packed,
    /// <summary>
    /// <see cref="Packed"/> on transposed operands: x holds <c>x^T</c> (K rows of m floats, ldx apart) and y receives
    /// <c>y^T</c> (N rows of m floats, ldy apart), as a 1x1 convolution's images <c>[C, H*W]</c> and <c>[O, H*W]</c>.
    /// </summary>
    Transposed,
    /// <summary>Decode each block of weight rows once into a float tile, then dot products with up to four activation rows at a time (<see cref="DotTileMatMul"/>).</summary>
    DotTiles,
}

/// <summary>
/// <c>y[m, n] = sum_k x[m, k] * w[n, k] + bias[n]</c> for float32 activations and a quantized or half-precision
/// weight read straight from its buffers (<see cref="WeightView"/>): each weight vector is widened and dequantized in
/// registers (<c>q * scale - zeroPoint * scale</c>, one multiply-add) and multiplied into up to four activation rows,
/// so no float copy of the weight is ever built. Rows of the output are split over threads; activation rows are
/// blocked so a block stays in cache while the weights stream past.
/// </summary>
/// <remarks>
/// <see cref="Reference"/> is the specification: dequantize exactly as <see cref="WeightView.Dequantized"/>, accumulate
/// in float64. The vector paths differ from it only by float32 rounding (the order of the sum, and the fused
/// dequantization), bounded in the tests by a relative tolerance of the sum of absolute products.
/// </remarks>
internal static unsafe class QuantizedMatMul
{
    private const int RowsPerBlock = 32; // activation rows kept in cache while a block of weight rows passes

    /// <summary>
    /// Activation rows from which <see cref="MatMulMethod.Auto"/> takes the packed GEMM: below it the row kernels
    /// decode each weight once per four rows and win by not packing; above it the GEMM's reuse wins (measured with
    /// <c>quantsharp bench</c>, docs/BENCHMARKS.md).
    /// </summary>
    internal static int PackedMinRows = 24;

    /// <summary>
    /// Activation rows from which a small weight (below <see cref="SmallWeightElements"/>) takes the packed GEMM. Its
    /// weight-strip layout decodes the weight once for all rows, where the row kernels decode it once per four rows
    /// and split a weight of few rows over few threads (64 x 800 int4 was one item, one thread): int4 group 32 at 12-20
    /// rows took 0.93-2.52x float32's time on 64x800, 384x384, 512x512, 1536x384 and 384x1536 with the row kernels,
    /// 0.83-1.54x packed; int8 0.66-1.42x against 0.75-1.30x (384x1536 int8 alone is better on rows). Below 12 rows (two whole tiles) the row kernels stay ahead, and on
    /// large weights, whose rows stream from memory, up to 24 (4096 x 4096 int8 at 12-20 rows: 2.8-4.9 ms rows,
    /// 4.0-6.5 ms packed). docs/BENCHMARKS.md, stop 13.
    /// </summary>
    internal static int PackedMinRowsSmallWeight = 12;

    /// <summary>
    /// Activation rows from which weights of more than <see cref="DotTilesMaxWeightRows"/> rows take the packed GEMM on
    /// the 256-bit path (no AVX-512), whatever their size: the 256-bit row kernels decode each weight once per four rows
    /// at half the 512-bit width. Measured on an AVX2 machine emulated on the development machine (.NET without AVX-512,
    /// MKL and oneDNN limited to AVX2; docs/BENCHMARKS.md, stop 21), two processes each, against float32 at 8-20 rows:
    /// 1024x1024 int4 group 32 1.10-2.22x -> 0.67-0.73x, float16 0.88-1.53x -> 0.69-0.77x, int8 0.65-0.99x ->
    /// 0.64-0.68x; 4096x4096 int4 0.72-1.75x -> 0.55-0.75x, float16 0.57-1.21x -> 0.50-0.58x; 384x1536 as fast either
    /// way; at 4 rows the row kernels stay ahead. Weights of at most 64 rows keep their dot tiles (64x800 at 8 rows
    /// packed: int4 1.16-1.20x, bfloat16 1.02-1.04x, against 0.90-1.22x and 0.77-0.90x). The other widths keep the rules
    /// measured with AVX-512. Since stop 56 large weights wait for <see cref="PackedMinRows256LargeWeight"/>.
    /// </summary>
    internal static int PackedMinRows256 = 8;

    /// <summary>
    /// <see cref="PackedMinRows256"/> for large weights (at least <see cref="SmallWeightElements"/>): since the row
    /// kernels' four-row passes fit 16 registers (<see cref="SixteenRegisters"/>) and 4-bit weights at 256 bits take
    /// <see cref="NibbleFractionRows"/>. Emulated AVX2, one process a side, the best of three rounds' medians
    /// (docs/BENCHMARKS.md, stop 56), row kernels against the packed GEMM: 4096x4096 at 8 rows int8 1.96 against 2.54 ms,
    /// float16 2.52 against 3.56, bfloat16 2.27 against 2.98 (at 294a11c), int4 group 128 2.51 against 3.10 (at 6ad9c8e);
    /// 11008x4096 int8 5.80 against 7.74, float16 7.25 against 10.0, bfloat16 6.77 against 9.4. On these two the rows
    /// stay ahead at 10 and 12 rows and are even or behind at 16; on 1024x1024 and 2048x2048 they are even at 10 and
    /// behind at 12 for int4 and float16: one threshold, 12, for every large weight. Small weights keep
    /// <see cref="PackedMinRows256"/> (1536x384 at 8 rows faster packed).
    /// </summary>
    internal static int PackedMinRows256LargeWeight = 12;

    /// <summary>Weights below this many elements (4 MiB of float32) count as small for <see cref="PackedMinRowsSmallWeight"/>.</summary>
    internal const long SmallWeightElements = 1 << 20;

    /// <summary>
    /// Weights of at most this many rows (half a 512-bit strip) leave the packed GEMM's lanes half empty whichever
    /// operand fills them, and make one work item on one thread where the activations fill one strip: they take it
    /// only from <see cref="PackedMinRows"/> rows, or from <see cref="FewRowsLongPackedMinRows"/> when their rows have
    /// at least <see cref="FewRowsLongReduction"/> elements. 16x512 and 16x1024 at 12-48 rows took 1.2-2.4x float32's
    /// time packed, 0.6-1.05x on the dot tiles (4-bit, half) and 0.7-1.3x on the row kernels (int8); 8x512 at 24-48
    /// rows 0.9-1.3x against 0.6-0.8x; 16x128 at 12-20 rows 0.7-1.1x either way, but packed from 24 rows is the
    /// faster there (docs/BENCHMARKS.md, stop 16). Measured with AVX-512; the rule applies at every width (a 256-bit
    /// strip has 16 lanes, so there only the single work item remains, not measured).
    /// </summary>
    internal const int FewWeightRows = 16;

    /// <summary>Row length from which a weight of at most <see cref="FewWeightRows"/> rows waits for <see cref="FewRowsLongPackedMinRows"/>.</summary>
    internal const int FewRowsLongReduction = 512;

    /// <summary>Activation rows from which a weight of at most <see cref="FewWeightRows"/> rows of at least <see cref="FewRowsLongReduction"/> elements takes the packed GEMM.</summary>
    internal const int FewRowsLongPackedMinRows = 64;

    /// <summary>
    /// Activation rows from which a small 4-bit weight in groups of at most <see cref="DotTilesMaxGroup"/> elements (or
    /// of at most <see cref="DotTilesMaxWeightRows"/> rows) takes <see cref="MatMulMethod.DotTiles"/>, up to
    /// <see cref="PackedMinRowsSmallWeight"/>. The row kernels rebuild a group's nibble lookup for every group, row and
    /// pass of four activation rows, and put a weight of 64 rows on one thread; the dot tiles decode each weight once.
    /// int4 group 32 at 6-10 rows: 64x768 1.15-1.85x float32's time -> 0.60-0.91x, 384x384 0.99-1.15x -> 0.84-1.04x,
    /// 512x512 0.77-1.13x -> 0.74-0.88x; at 2-4 rows and for int8 the row kernels stay as fast or faster
    /// (docs/BENCHMARKS.md, stop 14).
    /// </summary>
    internal static int DotTilesMinRows = 5;

    /// <summary>Largest group of a 4-bit weight that <see cref="DotTilesMinRows"/> sends to the dot tiles whatever its rows.</summary>
    internal const int DotTilesMaxGroup = 64;

    /// <summary>
    /// A small 4-bit, float16 or bfloat16 weight of at most this many rows takes the dot tiles whatever its groups, from
    /// <see cref="DotTilesMinRowsFewWeightRows"/> activation rows (the row kernels make it one work item): float16 64x800
    /// at 5-11 rows 1.11-1.59x float32's time -> 0.77-1.06x, bfloat16 1.01-1.28x -> 0.71-0.92x (docs/BENCHMARKS.md,
    /// stop 15).
    /// </summary>
    internal const int DotTilesMaxWeightRows = 64;

    /// <summary>
    /// Activation rows from which a weight of at most <see cref="DotTilesMaxWeightRows"/> rows takes the dot tiles. At 3-4
    /// rows on 64x800: float16 0.87-1.01x float32's time -> 0.72-0.77x, bfloat16 0.72-0.90x -> 0.59-0.64x, int4 group 32
    /// 0.91-1.01x -> 0.68-0.75x; at 1-2 rows the row kernels are faster (float16 1.35-1.38x against 2.04x at one row,
    /// before <see cref="FiniteHalfDecoder"/>). docs/BENCHMARKS.md, stop 15.
    /// </summary>
    internal static int DotTilesMinRowsFewWeightRows = 3;

    /// <summary>
    /// Activation rows from which a small float16 weight of more than <see cref="DotTilesMaxWeightRows"/> rows takes
    /// the dot tiles: its decode is then done once, not once per four rows (measured with the exact decoder, about seven
    /// vector operations per 16 halves; <see cref="FiniteHalfDecoder"/> has since cut that to three for finite weights).
    /// float16 at 6-11 rows on 384x384, 512x512, 1536x384, 384x1536: 0.79-1.46x float32's time with the row kernels,
    /// 0.74-1.24x with the dot tiles, better or equal from 6 rows; at 5 rows the row kernels were as fast or faster.
    /// bfloat16 (a shift to decode) stays on the row kernels there: the dot tiles measured slower (1536x384 at 5-7 rows
    /// 0.53-0.67x -> 0.65-0.84x). docs/BENCHMARKS.md, stop 15.
    /// </summary>
    internal const int Float16DotTilesMinRows = 6;

    /// <summary>
    /// Activation rows from which a small 4-bit weight in groups of at most <see cref="DotTilesMaxGroup"/> or a small
    /// float16 weight of more than <see cref="FewWeightRows"/> rows takes the packed GEMM at 512 bits, instead of
    /// <see cref="PackedMinRowsSmallWeight"/>: since the dot tiles fold their sums four at a time
    /// (<see cref="DotTileMatMul.FourSums"/>) they were as fast or faster than the packed GEMM at 12-20 rows on 64x800,
    /// 384x384 and 384x1536, int4 group 32 and float16 (docs/BENCHMARKS.md, stop 25). bfloat16 and int8 keep the packed
    /// GEMM from 12 rows, as do the other widths (not measured).
    /// </summary>
    internal static int PackedMinRowsDotTiles = 24;

    /// <summary>The loop structure <see cref="MatMulMethod.Auto"/> takes for <paramref name="m"/> activation rows and a <c>[rows, cols]</c> weight.</summary>
    internal static MatMulMethod ChooseMethod(int m, int rows, int cols, WeightFormat format, int groupSize, KernelPath path = KernelPath.V512)
    {
        bool small = (long)rows * cols < SmallWeightElements;
        int packedMin = !small ? PackedMinRows
            : rows > FewWeightRows ? Math.Min(PackedMinRows, PackedMinRowsSmallWeight)
            : cols >= FewRowsLongReduction ? Math.Max(PackedMinRows, FewRowsLongPackedMinRows)
            : PackedMinRows;
        if (path == KernelPath.V512 && small && rows > FewWeightRows && DotTilesFormat(format, groupSize))
            packedMin = Math.Max(packedMin, PackedMinRowsDotTiles);
        if (path == KernelPath.V256 && rows > DotTilesMaxWeightRows)
            packedMin = Math.Min(packedMin, small ? PackedMinRows256 : PackedMinRows256LargeWeight);
        if (m >= packedMin) return MatMulMethod.Packed;
        if (!small || WeightView.IsInteger8(format)) return MatMulMethod.Rows;
        if (rows <= DotTilesMaxWeightRows) return m >= DotTilesMinRowsFewWeightRows ? MatMulMethod.DotTiles : MatMulMethod.Rows;
        if (m < DotTilesMinRows) return MatMulMethod.Rows;
        bool tiles = DotTilesFormat(format, groupSize) && (WeightView.IsPacked(format) || m >= Float16DotTilesMinRows);
        return tiles ? MatMulMethod.DotTiles : MatMulMethod.Rows;
    }

    /// <summary>Whether a small weight of more than <see cref="DotTilesMaxWeightRows"/> rows can take the dot tiles: 4-bit in groups of at most <see cref="DotTilesMaxGroup"/>, or float16.</summary>
    private static bool DotTilesFormat(WeightFormat format, int groupSize) =>
        WeightView.IsPacked(format) ? groupSize <= DotTilesMaxGroup : format == WeightFormat.Float16;

    /// <summary>
    /// Batch 1 streams each weight row once. A row is a new stream of a few KiB that the hardware prefetcher picks up
    /// late (it does not follow into the next row), so each pass of the batch-1 kernels asks for the same columns of
    /// the next pass's four rows: without it every pass starts with a memory stall (1.4-2x slower on 11008x4096).
    /// Into L2 (<c>prefetcht1</c>), not L1: for a weight read from memory, not the caches (<c>quantsharp bench --cold</c>),
    /// the calls took 0.45-0.49 ms against 0.63-0.68 on 4096x4096 int8 and 0.39-0.40 against 0.43-0.52 for int4 group 128
    /// (half precision and 11008x4096 less too; called again right after themselves and at batch 8 the same or less;
    /// docs/BENCHMARKS.md, stop 55). Why was not measured; the likely reason is the L1's few miss buffers, which the four
    /// prefetched rows and the current four's loads share.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PrefetchNextFourRows(byte* p, nint rowBytes)
    {
        if (!Sse.IsSupported) return;
        byte* next = p + 4 * rowBytes;
        Sse.Prefetch1(next);
        Sse.Prefetch1(next + rowBytes);
        Sse.Prefetch1(next + 2 * rowBytes);
        Sse.Prefetch1(next + 3 * rowBytes);
    }

    /// <summary>Computes <c>y = x w^T + bias</c>.</summary>
    /// <param name="w">The weight, <c>[N, K]</c>.</param>
    /// <param name="x">Activations, <paramref name="m"/> rows of K floats, rows <paramref name="ldx"/> floats apart.</param>
    /// <param name="m">Activation rows.</param>
    /// <param name="ldx">Distance between activation rows, in floats (at least K).</param>
    /// <param name="bias">N floats, or null.</param>
    /// <param name="y">Output, <paramref name="m"/> rows of N floats, <paramref name="ldy"/> floats apart.</param>
    /// <param name="ldy">Distance between output rows (at least N).</param>
    /// <param name="path">Instruction set; <see cref="KernelPath.Auto"/> for the widest available.</param>
    /// <param name="method">Loop structure; <see cref="MatMulMethod.Auto"/> chooses by batch size.</param>
    /// <param name="unfold">
    /// With <see cref="MatMulMethod.Transposed"/>: a convolution whose column matrix (im2col, <c>[K, m]</c>) is
    /// <c>x^T</c>, unfolded from the image at <paramref name="x"/> as the GEMM packs it (<paramref name="ldx"/> unused).
    /// </param>
    /// <param name="bfloat16">
    /// With <see cref="MatMulMethod.Transposed"/> at 512 bits and an even reduction length: multiply in bfloat16 (<see cref="PackedMatMul.Run"/>); float32 otherwise.
    /// </param>
    public static void Run(in WeightView w, float* x, int m, nint ldx, float* bias, float* y, nint ldy, KernelPath path = KernelPath.Auto, MatMulMethod method = MatMulMethod.Auto, Im2Col? unfold = null, bool bfloat16 = false)
    {
        if (unfold is { } u && (method != MatMulMethod.Transposed || u.Rows != w.Cols || u.Positions != m))
            throw new ArgumentException($"An unfolded image needs the transposed method, {w.Cols} rows and {m} positions; got {method}, {u.Rows} and {u.Positions}.", nameof(unfold));
        if (method == MatMulMethod.Auto) method = ChooseMethod(m, w.Rows, w.Cols, w.Format, w.GroupSize, Resolve(path));
        var (xRow, yRow) = method == MatMulMethod.Transposed ? (unfold is null ? m : 0, m) : (w.Cols, w.Rows);
        if (ldx < xRow || ldy < yRow) throw new ArgumentException($"Row strides {ldx}/{ldy} are shorter than the rows {xRow}/{yRow}.");
        if (m == 0 || w.Rows == 0) return;
        // The row kernels decode and multiply at one width; the packed GEMMs and the dot tiles narrow only their
        // decoding (PackedMatMul.DecodeRows).
        switch (path == KernelPath.Auto && method == MatMulMethod.Rows ? RowKernelWidth(Resolve(path), w, m) : Resolve(path))
        {
            case KernelPath.V512: ByFormat<Float512, Vector512<float>>(w, x, m, ldx, bias, y, ldy, method, unfold, bfloat16); break;
            case KernelPath.V256: ByFormat<Float256, Vector256<float>>(w, x, m, ldx, bias, y, ldy, method, unfold, bfloat16); break;
            case KernelPath.V128: ByFormat<Float128, Vector128<float>>(w, x, m, ldx, bias, y, ldy, method, unfold, bfloat16); break;
            default: ByFormat<Float1, float>(w, x, m, ldx, bias, y, ldy, method, unfold, bfloat16); break;
        }
    }

    /// <summary>True when <paramref name="path"/> can run on this CPU (Auto and Scalar always can).</summary>
    public static bool IsSupported(KernelPath path) => path switch
    {
        KernelPath.V512 => Float512.IsSupported,
        KernelPath.V256 => Float256.IsSupported,
        KernelPath.V128 => Float128.IsSupported,
        KernelPath.Vnni256 or KernelPath.Vnni512 => false,
        _ => true,
    };

    /// <summary>
    /// The widest of <paramref name="widest"/> and narrower paths whose chunk (two vectors) fits in a group of
    /// <paramref name="w"/>, for the row kernels (the packed GEMMs narrow only their decoding,
    /// <see cref="PackedMatMul.DecodeRows"/>): every kernel decodes whole chunks inside a group and the rest element by element, so int4
    /// in groups of 16 ran entirely in scalars at 512 bits (32 x 144 at one row: 13 us against float32's 4 us in
    /// <c>quantsharp bench --model</c> on the int4 model of <c>quantsharp demo --save DIR</c>; docs/BENCHMARKS.md, stop 14). Weights
    /// of one group per row (per channel, per tensor) keep the widest path: their short rows have a scalar tail at most.
    /// </summary>
    internal static KernelPath WidthForGroups(KernelPath widest, in WeightView w)
    {
        var path = widest;
        while (path != KernelPath.Scalar && ChunkExceedsGroups(Lanes(path), w))
            path = path switch { KernelPath.V512 => KernelPath.V256, KernelPath.V256 => KernelPath.V128, _ => KernelPath.Scalar };
        return path;
    }

    /// <summary>
    /// The width the row kernels run at for <paramref name="m"/> activation rows: <see cref="WidthForGroups"/>, except
    /// where a nibble-step kernel takes 4-bit weights at the widest width (<see cref="TakesNibbleSteps"/>): batch 1
    /// (int4 in groups of 16 on 4096x4096 ran in 0.39-0.43 ms at 512 bits against 0.52-0.55 narrowed; docs/BENCHMARKS.md,
    /// stop 22) and, for groups shorter than a step, more rows (<see cref="NibbleFractionRows"/>, stop 23).
    /// </summary>
    internal static KernelPath RowKernelWidth(KernelPath widest, in WeightView w, int m)
        => TakesNibbleSteps(Lanes(widest), w, out bool shortGroups) && (m == 1 || (shortGroups && ShortGroupFractions)) ? widest : WidthForGroups(widest, w);

    /// <summary>Whether <see cref="WidthForGroups"/> and <see cref="PackedMatMul.DecodeRows"/> narrow (the probe turns it off to measure the difference).</summary>
    internal static bool NarrowForGroups = true;

    /// <summary>
    /// Whether a chunk (two vectors of <paramref name="lanes"/>) is longer than the groups of <paramref name="w"/>, so that a
    /// narrower width decodes more of it in whole chunks (<see cref="WidthForGroups"/>, <see cref="PackedMatMul.DecodeRows"/>);
    /// false for one group per row and where <see cref="NarrowForGroups"/> is off.
    /// </summary>
    internal static bool ChunkExceedsGroups(int lanes, in WeightView w) => NarrowForGroups && w.GroupSize < w.Cols && 2 * lanes > w.GroupSize;

    private static int Lanes(KernelPath path) => path switch { KernelPath.V512 => Float512.Count, KernelPath.V256 => Float256.Count, KernelPath.V128 => Float128.Count, _ => Float1.Count };

    private static KernelPath Resolve(KernelPath path)
    {
        if (path == KernelPath.Auto)
            return Float512.IsSupported ? KernelPath.V512 : Float256.IsSupported ? KernelPath.V256 : Float128.IsSupported ? KernelPath.V128 : KernelPath.Scalar;
        if (!IsSupported(path)) throw new PlatformNotSupportedException($"Kernel path {path} is not supported on this CPU.");
        return path;
    }

    private static void ByFormat<TW, TVec>(in WeightView w, float* x, int m, nint ldx, float* bias, float* y, nint ldy, MatMulMethod method, Im2Col? unfold, bool bfloat16)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        switch (w.Format)
        {
            case WeightFormat.Int8: Drive<TW, TVec, Int8Decoder>(w, x, m, ldx, bias, y, ldy, method, unfold, bfloat16); break;
            case WeightFormat.UInt8: Drive<TW, TVec, UInt8Decoder>(w, x, m, ldx, bias, y, ldy, method, unfold, bfloat16); break;
            case WeightFormat.Int4: Nibbles<TW, TVec, SignedNibbles>(w, x, m, ldx, bias, y, ldy, method, unfold, bfloat16); break;
            case WeightFormat.UInt4: Nibbles<TW, TVec, UnsignedNibbles>(w, x, m, ldx, bias, y, ldy, method, unfold, bfloat16); break;
            case WeightFormat.Float16: Drive<TW, TVec, HalfDecoder>(w, x, m, ldx, bias, y, ldy, method, unfold, bfloat16); break;
            default: Drive<TW, TVec, BFloat16Decoder>(w, x, m, ldx, bias, y, ldy, method, unfold, bfloat16); break;
        }
    }

    /// <summary>
    /// Packed 4-bit weights at one activation row (batch 1) in groups a nibble step fits (<see cref="TakesNibbleSteps"/>):
    /// <see cref="NibbleRows"/> (the 512-bit lookup) for groups of whole steps at 512 bits, <see cref="NibbleRowsBySums"/>
    /// for the rest; everything else the generic row kernels or the packed GEMM.
    /// </summary>
    private static void Nibbles<TW, TVec, TSign>(in WeightView w, float* x, int m, nint ldx, float* bias, float* y, nint ldy, MatMulMethod method, Im2Col? unfold, bool bfloat16)
        where TW : IFloatWidth<TVec> where TVec : struct where TSign : struct, ISignedness
    {
        int k = w.Cols, step = NibbleStep<TW, TVec>(), c = TW.Count;
        if (method == MatMulMethod.Rows && m > 1 && ShortGroupFractions && TakesNibbleSteps(c, w, out bool shortSteps) && (shortSteps || typeof(TW) == typeof(Float256)))
        {
            NibbleFractionRows<TW, TVec, TSign>(w, x, m, ldx, bias, y, ldy);
            return;
        }
        if (method != MatMulMethod.Rows || m != 1 || !TakesNibbleSteps(c, w, out bool shortGroups))
        {
            Drive<TW, TVec, NibbleDecoder<TSign>>(w, x, m, ldx, bias, y, ldy, method, unfold, bfloat16);
            return;
        }
        // NibbleRowsBySums needs the activations' lane sums per block (a group, or a step of short groups); the
        // 512-bit lookup does not. One buffer: the reordered row, then the sums.
        bool bySums = shortGroups || typeof(TW) != typeof(Float512);
        int block = Math.Max(w.GroupSize, step), sumCount = bySums ? k / block * c : 0;
        float* ordered = (float*)NativeMemory.Alloc((nuint)(k + sumCount), sizeof(float));
        try
        {
            float* sums = ordered + k;
            OrderForNibbleSteps<TW, TVec>(x, k, block, sumCount, ordered, sums);
            var view = w;
            int rowsPerItem = (int)Math.Clamp(32768 / Math.Max(w.RowBytes, 1), 4, 64) & ~3;
            int items = (w.Rows + rowsPerItem - 1) / rowsPerItem;
            nint xAddress = (nint)ordered, sumsAddress = (nint)sums, yAddress = (nint)y, biasAddress = (nint)bias;
            KernelThreads.For(items, (long)rowsPerItem * k, item =>
            {
                float* xs = (float*)xAddress, sum = (float*)sumsAddress, b = (float*)biasAddress, outputs = (float*)yAddress;
                int n = item * rowsPerItem, n1 = Math.Min(view.Rows, n + rowsPerItem);
                for (; n + 4 <= n1; n += 4)
                {
                    if (bySums) NibbleRowsBySums<TW, TVec, TSign, Four>(view, n, xs, sum, b, outputs);
                    else NibbleRows<TSign, Four>(view, n, xs, b, outputs);
                }
                for (; n < n1; n++)
                {
                    if (bySums) NibbleRowsBySums<TW, TVec, TSign, One>(view, n, xs, sum, b, outputs);
                    else NibbleRows<TSign, One>(view, n, xs, b, outputs);
                }
            });
        }
        finally
        {
            NativeMemory.Free(ordered);
        }
    }

    /// <summary>Whether batch 1 takes <see cref="NibbleRowsBySums"/> for groups shorter than a step (the probe turns it off to measure the difference).</summary>
    internal static bool ShortNibbleGroups = true;

    /// <summary>
    /// Whether batch 1 on the packed 4-bit weights <paramref name="w"/> runs a nibble-step kernel at
    /// <paramref name="lanes"/> lanes (a step is eight nibbles per lane): groups of whole steps, or
    /// (<paramref name="shortGroups"/>) steps of whole groups of whole lanes with the reduction a whole number of steps.
    /// </summary>
    internal static bool TakesNibbleSteps(int lanes, in WeightView w, out bool shortGroups)
    {
        int step = 8 * lanes, g = w.GroupSize;
        shortGroups = false;
        if (!WeightView.IsPacked(w.Format)) return false;
        if (g % step == 0) return true;
        shortGroups = ShortNibbleGroups && step % g == 0 && g % 8 == 0 && w.Cols % step == 0;
        return shortGroups;
    }

    /// <summary>
    /// Batch 1 on packed 4-bit weights at the widths that decode by arithmetic, and at 512 bits for groups shorter than
    /// a <see cref="NibbleStep"/> (16, 32 or 64 elements: a whole number of them per step, each a whole number of 32-bit
    /// lanes). Each nibble is taken as <c>f = 1 + u / 16</c> (<see cref="IFloatWidth{TVec}.NibbleFraction"/>: a shift and
    /// an and-or, no conversion) and multiplied by its activation; at the end of each block (a group, or a step of short
    /// groups) every lane applies its own group's constants,
    /// <c>sum w x = scale * sum (u - c) x = 16 * scale * (sum f x - (1 + c / 16) * sum x)</c> with <c>c = zeroPoint</c>
    /// (+ 8 for int4, whose codes are <c>u = q + 8</c>) and <paramref name="laneSums"/> the activations' sums per block
    /// and lane (<see cref="IFloatWidth{TVec}.GroupLanes"/> spreads the scales over their lanes); the factor 16 is applied
    /// to the row's total (exact). Against dequantizing each nibble (a conversion and a multiply-add before the product)
    /// this saves two operations per eight weights; short groups at 512 bits had run in the generic row kernels, a
    /// widening load per 16 nibbles. Rounding differs from theirs (sum order, the offset applied to sums), within the
    /// kernel tests' tolerance.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void NibbleRowsBySums<TW, TVec, TSign, TR>(in WeightView w, int n, float* x, float* laneSums, float* bias, float* y)
        where TW : IFloatWidth<TVec> where TVec : struct where TSign : struct, ISignedness where TR : IRowCount
    {
        int step = NibbleStep<TW, TVec>(), c = TW.Count, k = w.Cols, g = w.GroupSize, block = Math.Max(g, step);
        int lanesPerGroup = g / 8, groupsPerBlock = block / g;
        nint rowBytes = w.RowBytes, scaleStride = w.ScaleRowStride;
        byte* w0 = w.Data + n * rowBytes, w1 = w0 + rowBytes, w2 = w1 + rowBytes, w3 = w2 + rowBytes;
        float* s0 = w.Scale + n * scaleStride;
        int* z0 = w.ZeroPoint == null ? null : w.ZeroPoint + n * scaleStride;
        var offset = TW.Create(TSign.Signed ? -1.5f : -1f); // -(1 + c / 16) without a zero point
        TVec r0 = TW.Zero, r1 = TW.Zero, r2 = TW.Zero, r3 = TW.Zero;
        for (int k0 = 0, gi = 0; k0 < k; k0 += block, gi += groupsPerBlock)
        {
            TVec a0 = TW.Zero, b0 = TW.Zero, a1 = TW.Zero, b1 = TW.Zero, a2 = TW.Zero, b2 = TW.Zero, a3 = TW.Zero, b3 = TW.Zero;
            for (int kk = k0; kk < k0 + block; kk += step)
            {
                float* xk = x + kk;
                int b = kk >> 1;
                EightFractions<TW, TVec>(TW.LoadNibbleCodes(w0 + b, TSign.Signed), xk, ref a0, ref b0);
                if (TR.Count > 1)
                {
                    PrefetchNextFourRows(w0 + b, rowBytes);
                    EightFractions<TW, TVec>(TW.LoadNibbleCodes(w1 + b, TSign.Signed), xk, ref a1, ref b1);
                    EightFractions<TW, TVec>(TW.LoadNibbleCodes(w2 + b, TSign.Signed), xk, ref a2, ref b2);
                    EightFractions<TW, TVec>(TW.LoadNibbleCodes(w3 + b, TSign.Signed), xk, ref a3, ref b3);
                }
            }
            var sums = TW.Load(laneSums + k0 / block * c);
            r0 = BlockEnd<TW, TVec>(s0 + gi, z0 == null ? null : z0 + gi, lanesPerGroup, TW.Add(a0, b0), sums, offset, r0);
            if (TR.Count > 1)
            {
                r1 = BlockEnd<TW, TVec>(s0 + scaleStride + gi, z0 == null ? null : z0 + scaleStride + gi, lanesPerGroup, TW.Add(a1, b1), sums, offset, r1);
                r2 = BlockEnd<TW, TVec>(s0 + 2 * scaleStride + gi, z0 == null ? null : z0 + 2 * scaleStride + gi, lanesPerGroup, TW.Add(a2, b2), sums, offset, r2);
                r3 = BlockEnd<TW, TVec>(s0 + 3 * scaleStride + gi, z0 == null ? null : z0 + 3 * scaleStride + gi, lanesPerGroup, TW.Add(a3, b3), sums, offset, r3);
            }
        }
        y[n] = 16f * TW.Sum(r0) + (bias == null ? 0f : bias[n]);
        if (TR.Count > 1)
        {
            y[n + 1] = 16f * TW.Sum(r1) + (bias == null ? 0f : bias[n + 1]);
            y[n + 2] = 16f * TW.Sum(r2) + (bias == null ? 0f : bias[n + 2]);
            y[n + 3] = 16f * TW.Sum(r3) + (bias == null ? 0f : bias[n + 3]);
        }
    }

    /// <summary>
    /// An activation row of <paramref name="k"/> elements reordered for the nibble-step kernels into
    /// <paramref name="ordered"/> (within each step, position <c>i * Count + j</c> holds element <c>8j + i</c>: the nibble
    /// at bits <c>4i</c> of lane <c>j</c>), and its lane sums per block of <paramref name="block"/> elements into
    /// <paramref name="sums"/> (<paramref name="sumCount"/> floats: <c>Count</c> per block; none for 0).
    /// </summary>
    private static void OrderForNibbleSteps<TW, TVec>(float* x, int k, int block, int sumCount, float* ordered, float* sums)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        int step = NibbleStep<TW, TVec>(), c = TW.Count;
        for (int k0 = 0; k0 < k; k0 += step)
            for (int i = 0; i < 8; i++)
                for (int j = 0; j < c; j++) ordered[k0 + i * c + j] = x[k0 + 8 * j + i];
        for (int e0 = 0, s = 0; s < sumCount; e0 += block, s += c)
        {
            var total = TW.Zero;
            for (int e = e0; e < e0 + block; e += c) total = TW.Add(total, TW.Load(ordered + e));
            TW.Store(total, sums + s);
        }
    }

    /// <summary>Whether 2 or more activation rows on the row kernels take <see cref="NibbleFractionRows"/> for groups shorter than a nibble step, and at 256 bits for every group a step fits (the probe turns it off to measure the difference).</summary>
    internal static bool ShortGroupFractions = true;

    /// <summary>
    /// Several activation rows (the row kernels' batches) on packed 4-bit weights in groups shorter than a nibble step
    /// (<see cref="TakesNibbleSteps"/>'s short groups: 16, 32 or 64 elements at 512 bits): the arithmetic of
    /// <see cref="NibbleRowsBySums"/> with each weight row's nibbles read once per step for up to four activation rows.
    /// The generic row kernels prepare a 16-value lookup per group and weight row and decode every chunk through it, as
    /// many operations per group of 32 as the multiply-adds themselves; here a step of 128 weights costs one load and
    /// eight shift-and-place operations, and the groups' constants are applied once per step. Every activation row is
    /// reordered and its lane sums taken once per call; work items as <see cref="Drive"/>'s, the reduction walked in
    /// blocks of whole steps (<see cref="ReductionBlock"/>) with each output's running sum carried from block to block.
    /// At 256 bits groups of whole steps (64 elements or a multiple) take it too: on emulated AVX2, 4096x4096 int4 group
    /// 128 at 4 rows 1.29 ms (median of five processes) against 1.46 in the generic row kernels (three), at 8 rows 2.51
    /// against 3.10 packed (docs/BENCHMARKS.md, stop 56); at 512 bits the two measured as fast in a scratch build.
    /// </summary>
    private static void NibbleFractionRows<TW, TVec, TSign>(in WeightView w, float* x, int m, nint ldx, float* bias, float* y, nint ldy)
        where TW : IFloatWidth<TVec> where TVec : struct where TSign : struct, ISignedness
    {
        int k = w.Cols, step = NibbleStep<TW, TVec>(), sumsPerRow = k / step * TW.Count;
        float* ordered = (float*)NativeMemory.Alloc((nuint)m * (nuint)(k + sumsPerRow), sizeof(float));
        try
        {
            float* sums = ordered + (nint)m * k;
            for (int i = 0; i < m; i++) OrderForNibbleSteps<TW, TVec>(x + i * ldx, k, step, sumsPerRow, ordered + (nint)i * k, sums + (nint)i * sumsPerRow);
            var (rowsPerItem, nBlocks) = RowItems(w, m);
            int mBlocks = (m + RowsPerBlock - 1) / RowsPerBlock;
            var view = w;
            nint xAddress = (nint)ordered, sumsAddress = (nint)sums, yAddress = (nint)y, biasAddress = (nint)bias;
            KernelThreads.For(nBlocks * mBlocks, (long)Math.Min(m, RowsPerBlock) * rowsPerItem * k, item =>
            {
                int mb = item / nBlocks, nb = item % nBlocks;
                int i = mb * RowsPerBlock, m1 = Math.Min(m, i + RowsPerBlock);
                int n0 = nb * rowsPerItem, n1 = Math.Min(view.Rows, n0 + rowsPerItem);
                float* xs = (float*)xAddress, ls = (float*)sumsAddress, b = (float*)biasAddress, outputs = (float*)yAddress;
                for (; i + 4 <= m1; i += 4) FractionPass<TW, TVec, TSign, Four>(view, xs + (nint)i * k, ls + (nint)i * sumsPerRow, sumsPerRow, b, outputs + i * ldy, ldy, n0, n1);
                if (m1 - i >= 2)
                {
                    FractionPass<TW, TVec, TSign, Two>(view, xs + (nint)i * k, ls + (nint)i * sumsPerRow, sumsPerRow, b, outputs + i * ldy, ldy, n0, n1);
                    i += 2;
                }
                if (i < m1) FractionPass<TW, TVec, TSign, One>(view, xs + (nint)i * k, ls + (nint)i * sumsPerRow, sumsPerRow, b, outputs + i * ldy, ldy, n0, n1);
            });
        }
        finally
        {
            NativeMemory.Free(ordered);
        }
    }

    /// <summary>
    /// Weight rows <c>[n0, n1)</c> against <c>TR.Count</c> reordered activation rows (<paramref name="x"/>, <c>Cols</c>
    /// apart; their lane sums per step at <paramref name="laneSums"/>, <paramref name="sumsStride"/> apart), one
    /// reduction block of whole steps at a time, so the activations of a block stay in L1 while the item's weight rows pass.
    /// </summary>
    private static void FractionPass<TW, TVec, TSign, TR>(in WeightView w, float* x, float* laneSums, nint sumsStride, float* bias, float* y, nint ldy, int n0, int n1)
        where TW : IFloatWidth<TVec> where TVec : struct where TSign : struct, ISignedness where TR : IRowCount
    {
        int k = w.Cols, step = NibbleStep<TW, TVec>(), block = Math.Max(ReductionBlock / step, 1) * step;
        var carried = RowSums<TVec>.Rent(n1 - n0);
        for (int k0 = 0; k0 < k; k0 += block)
        {
            int k1 = Math.Min(k, k0 + block);
            int n = n0;
            for (; n + 2 <= n1; n += 2) FractionRow<TW, TVec, TSign, Two, TR>(w, n, x, laneSums, sumsStride, k0, k1, ref carried[n - n0], ref carried[n - n0 + 1]);
            if (n < n1) FractionRow<TW, TVec, TSign, One, TR>(w, n, x, laneSums, sumsStride, k0, k1, ref carried[n - n0], ref carried[n - n0]);
        }
        // The factor 16 of 1 + u / 16, on each output's total (exact).
        for (int n = n0; n < n1; n++) carried[n - n0].WriteScaled<TW>(y + n, ldy, bias == null ? 0f : bias[n], TR.Count, 16f, 0f, null);
    }

    /// <summary>
    /// Weight rows <c>n..n+TN.Count-1</c> (one or two) over the steps of <c>[k0, k1)</c> against <c>TR.Count</c>
    /// activation rows: per step each nibble as <c>1 + u / 16</c> times every row's activations (two weight rows share
    /// each activation load: at one 512-bit load per cycle a one-row step was bound by its loads), then every lane's
    /// group constants on the step's sums (<see cref="NibbleRowsBySums"/>), added to each output's running sum (the
    /// <c>A</c> vectors of <paramref name="sums0"/> and <paramref name="sums1"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void FractionRow<TW, TVec, TSign, TN, TR>(in WeightView w, int n, float* x, float* laneSums, nint sumsStride, int k0, int k1, ref RowSums<TVec> sums0, ref RowSums<TVec> sums1)
        where TW : IFloatWidth<TVec> where TVec : struct where TSign : struct, ISignedness where TN : IRowCount where TR : IRowCount
    {
        int step = NibbleStep<TW, TVec>(), c = TW.Count, k = w.Cols, g = w.GroupSize, lanesPerGroup = g / 8;
        nint rowBytes = w.RowBytes, scaleStride = w.ScaleRowStride;
        byte* row0 = w.Data + n * rowBytes, row1 = row0 + rowBytes;
        float* scales0 = w.Scale + n * scaleStride, scales1 = scales0 + scaleStride;
        int* zeros0 = w.ZeroPoint == null ? null : w.ZeroPoint + n * scaleStride, zeros1 = zeros0 == null ? null : zeros0 + scaleStride;
        var offset = TW.Create(TSign.Signed ? -1.5f : -1f); // -(1 + c / 16) without a zero point
        var (r0, _, r1, _, r2, _, r3, _) = sums0.Load<TR>();
        var (t0, _, t1, _, t2, _, t3, _) = TN.Count > 1 ? sums1.Load<TR>() : default;
        float* x0 = x, x1 = x + k, x2 = x + 2 * k, x3 = x + 3 * k;
        int ahead = (k1 - k0) >> 1;
        for (int kk = k0; kk < k1; kk += step)
        {
            int b = kk >> 1;
            if (Sse.IsSupported)
            {
                Sse.Prefetch0(row0 + b + ahead);
                if (TN.Count > 1) Sse.Prefetch0(row1 + b + ahead);
            }
            var codes0 = TW.LoadNibbleCodes(row0 + b, TSign.Signed);
            var codes1 = TN.Count > 1 ? TW.LoadNibbleCodes(row1 + b, TSign.Signed) : TW.Zero;
            // a: weight row n, e: row n + 1, one accumulator per activation row (eight chains at two by four rows).
            TVec a0 = TW.Zero, a1 = TW.Zero, a2 = TW.Zero, a3 = TW.Zero, e0 = TW.Zero, e1 = TW.Zero, e2 = TW.Zero, e3 = TW.Zero;
            FractionTimes<TW, TVec, TN, TR>(codes0, codes1, 0, x0, x1, x2, x3, kk, ref a0, ref a1, ref a2, ref a3, ref e0, ref e1, ref e2, ref e3);
            FractionTimes<TW, TVec, TN, TR>(codes0, codes1, 4, x0, x1, x2, x3, kk + c, ref a0, ref a1, ref a2, ref a3, ref e0, ref e1, ref e2, ref e3);
            FractionTimes<TW, TVec, TN, TR>(codes0, codes1, 8, x0, x1, x2, x3, kk + 2 * c, ref a0, ref a1, ref a2, ref a3, ref e0, ref e1, ref e2, ref e3);
            FractionTimes<TW, TVec, TN, TR>(codes0, codes1, 12, x0, x1, x2, x3, kk + 3 * c, ref a0, ref a1, ref a2, ref a3, ref e0, ref e1, ref e2, ref e3);
            FractionTimes<TW, TVec, TN, TR>(codes0, codes1, 16, x0, x1, x2, x3, kk + 4 * c, ref a0, ref a1, ref a2, ref a3, ref e0, ref e1, ref e2, ref e3);
            FractionTimes<TW, TVec, TN, TR>(codes0, codes1, 20, x0, x1, x2, x3, kk + 5 * c, ref a0, ref a1, ref a2, ref a3, ref e0, ref e1, ref e2, ref e3);
            FractionTimes<TW, TVec, TN, TR>(codes0, codes1, 24, x0, x1, x2, x3, kk + 6 * c, ref a0, ref a1, ref a2, ref a3, ref e0, ref e1, ref e2, ref e3);
            FractionTimes<TW, TVec, TN, TR>(codes0, codes1, 28, x0, x1, x2, x3, kk + 7 * c, ref a0, ref a1, ref a2, ref a3, ref e0, ref e1, ref e2, ref e3);
            int gi = kk / g;
            float* s = laneSums + kk / step * c;
            StepEnd<TW, TVec, TR>(scales0 + gi, zeros0 == null ? null : zeros0 + gi, lanesPerGroup, offset, s, sumsStride, a0, a1, a2, a3, ref r0, ref r1, ref r2, ref r3);
            if (TN.Count > 1)
                StepEnd<TW, TVec, TR>(scales1 + gi, zeros1 == null ? null : zeros1 + gi, lanesPerGroup, offset, s, sumsStride, e0, e1, e2, e3, ref t0, ref t1, ref t2, ref t3);
        }
        sums0.Store<TR>(r0, TW.Zero, r1, TW.Zero, r2, TW.Zero, r3, TW.Zero);
        if (TN.Count > 1) sums1.Store<TR>(t0, TW.Zero, t1, TW.Zero, t2, TW.Zero, t3, TW.Zero);
    }

    /// <summary>
    /// The nibbles at bit <paramref name="shift"/> of one or two weight rows' codes as <c>1 + u / 16</c>, times
    /// <c>TR.Count</c> activation rows' vectors at <paramref name="at"/> (each loaded once for both weight rows).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void FractionTimes<TW, TVec, TN, TR>(TVec codes0, TVec codes1, [ConstantExpected(Min = 0, Max = 28)] int shift, float* x0, float* x1, float* x2, float* x3, int at,
        ref TVec a0, ref TVec a1, ref TVec a2, ref TVec a3, ref TVec e0, ref TVec e1, ref TVec e2, ref TVec e3)
        where TW : IFloatWidth<TVec> where TVec : struct where TN : IRowCount where TR : IRowCount
    {
        var f = TW.NibbleFraction(codes0, shift);
        var h = TN.Count > 1 ? TW.NibbleFraction(codes1, shift) : TW.Zero;
        var v = TW.Load(x0 + at);
        a0 = TW.MultiplyAdd(f, v, a0);
        if (TN.Count > 1) e0 = TW.MultiplyAdd(h, v, e0);
        if (TR.Count > 1)
        {
            v = TW.Load(x1 + at);
            a1 = TW.MultiplyAdd(f, v, a1);
            if (TN.Count > 1) e1 = TW.MultiplyAdd(h, v, e1);
        }
        if (TR.Count > 2)
        {
            v = TW.Load(x2 + at);
            a2 = TW.MultiplyAdd(f, v, a2);
            if (TN.Count > 1) e2 = TW.MultiplyAdd(h, v, e2);
            v = TW.Load(x3 + at);
            a3 = TW.MultiplyAdd(f, v, a3);
            if (TN.Count > 1) e3 = TW.MultiplyAdd(h, v, e3);
        }
    }

    /// <summary>A step's group constants on one weight row's sums against <c>TR.Count</c> activation rows: <c>r += scale * (sum f x - (1 + c / 16) * sum x)</c>, lane by lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StepEnd<TW, TVec, TR>(float* scales, int* zeroPoints, int lanesPerGroup, TVec offset, float* laneSums, nint sumsStride,
        TVec a0, TVec a1, TVec a2, TVec a3, ref TVec r0, ref TVec r1, ref TVec r2, ref TVec r3)
        where TW : IFloatWidth<TVec> where TVec : struct where TR : IRowCount
    {
        var (scale, negative) = LaneConstants<TW, TVec>(scales, zeroPoints, lanesPerGroup, offset);
        r0 = TW.MultiplyAdd(scale, TW.MultiplyAdd(negative, TW.Load(laneSums), a0), r0);
        if (TR.Count > 1) r1 = TW.MultiplyAdd(scale, TW.MultiplyAdd(negative, TW.Load(laneSums + sumsStride), a1), r1);
        if (TR.Count > 2)
        {
            r2 = TW.MultiplyAdd(scale, TW.MultiplyAdd(negative, TW.Load(laneSums + 2 * sumsStride), a2), r2);
            r3 = TW.MultiplyAdd(scale, TW.MultiplyAdd(negative, TW.Load(laneSums + 3 * sumsStride), a3), r3);
        }
    }

    /// <summary><c>r + scale * (fractionProducts - (1 + c / 16) * activationSums)</c>, lane by lane, with each lane's group constants (<see cref="NibbleRowsBySums"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TVec BlockEnd<TW, TVec>(float* scales, int* zeroPoints, int lanesPerGroup, TVec fractionProducts, TVec activationSums, TVec offset, TVec r)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        var (scale, negative) = LaneConstants<TW, TVec>(scales, zeroPoints, lanesPerGroup, offset);
        return TW.MultiplyAdd(scale, TW.MultiplyAdd(negative, activationSums, fractionProducts), r);
    }

    /// <summary>
    /// Each lane's group scale and <c>-(1 + c / 16)</c> (<paramref name="offset"/> without zero points: -1.5 for int4,
    /// -1 for uint4; with them, less a sixteenth of each lane's zero point) for the nibble-step kernels' block ends.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (TVec Scale, TVec Negative) LaneConstants<TW, TVec>(float* scales, int* zeroPoints, int lanesPerGroup, TVec offset)
        where TW : IFloatWidth<TVec> where TVec : struct
        => (TW.GroupLanes(scales, lanesPerGroup),
            zeroPoints == null ? offset : TW.MultiplyAdd(TW.GroupLaneIntegers(zeroPoints, lanesPerGroup), TW.Create(-1f / 16), offset));

    /// <summary>The eight nibbles of every lane of <paramref name="words"/>, as <c>1 + u / 16</c>, times their activations, into two accumulators.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void EightFractions<TW, TVec>(TVec words, float* x, ref TVec a, ref TVec b)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        int c = TW.Count;
        a = TW.MultiplyAdd(TW.NibbleFraction(words, 0), TW.Load(x), a);
        b = TW.MultiplyAdd(TW.NibbleFraction(words, 4), TW.Load(x + c), b);
        a = TW.MultiplyAdd(TW.NibbleFraction(words, 8), TW.Load(x + 2 * c), a);
        b = TW.MultiplyAdd(TW.NibbleFraction(words, 12), TW.Load(x + 3 * c), b);
        a = TW.MultiplyAdd(TW.NibbleFraction(words, 16), TW.Load(x + 4 * c), a);
        b = TW.MultiplyAdd(TW.NibbleFraction(words, 20), TW.Load(x + 5 * c), b);
        a = TW.MultiplyAdd(TW.NibbleFraction(words, 24), TW.Load(x + 6 * c), a);
        b = TW.MultiplyAdd(TW.NibbleFraction(words, 28), TW.Load(x + 7 * c), b);
    }

    /// <summary>Elements of a row <see cref="NibbleRows"/> decodes per step: eight nibbles in each 32-bit lane.</summary>
    private static int NibbleStep<TW, TVec>() where TW : IFloatWidth<TVec> where TVec : struct => 8 * TW.Count;

    /// <summary>
    /// Packed 4-bit weight rows <c>n..n+TR.Count-1</c> against one activation row, reordered by <see cref="Nibbles"/>, at
    /// 512 bits in groups of whole steps: each step loads 64 bytes of a row once and takes its eight nibbles of every
    /// lane with a shift and a lookup in the group's 16 dequantized values (<see cref="Float512.NibbleAt"/>), so no
    /// widening load per vector of weights and the specification's dequantized values.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void NibbleRows<TSign, TR>(in WeightView w, int n, float* x, float* bias, float* y)
        where TSign : struct, ISignedness where TR : IRowCount
    {
        int step = NibbleStep<Float512, Vector512<float>>(), g = w.GroupSize;
        nint rowBytes = w.RowBytes;
        byte* w0 = w.Data + n * rowBytes, w1 = w0 + rowBytes, w2 = w1 + rowBytes, w3 = w2 + rowBytes;
        Vector512<float> a0 = default, b0 = default, a1 = default, b1 = default, a2 = default, b2 = default, a3 = default, b3 = default;
        Vector512<float> p1 = default, p2 = default, p3 = default;
        int groups = w.GroupsPerRow;
        for (int gi = 0; gi < groups; gi++)
        {
            var p0 = NibbleGroup<TSign>(w, n, gi);
            if (TR.Count > 1)
            {
                p1 = NibbleGroup<TSign>(w, n + 1, gi);
                p2 = NibbleGroup<TSign>(w, n + 2, gi);
                p3 = NibbleGroup<TSign>(w, n + 3, gi);
            }
            for (int k = gi * g, end = k + g; k < end; k += step)
            {
                float* xk = x + k;
                int b = k >> 1;
                EightNibbles(Float512.LoadNibbleWords(w0 + b), p0, xk, ref a0, ref b0);
                if (TR.Count > 1)
                {
                    PrefetchNextFourRows(w0 + b, rowBytes);
                    EightNibbles(Float512.LoadNibbleWords(w1 + b), p1, xk, ref a1, ref b1);
                    EightNibbles(Float512.LoadNibbleWords(w2 + b), p2, xk, ref a2, ref b2);
                    EightNibbles(Float512.LoadNibbleWords(w3 + b), p3, xk, ref a3, ref b3);
                }
            }
        }
        y[n] = Vector512.Sum(a0 + b0) + (bias == null ? 0f : bias[n]);
        if (TR.Count > 1)
        {
            y[n + 1] = Vector512.Sum(a1 + b1) + (bias == null ? 0f : bias[n + 1]);
            y[n + 2] = Vector512.Sum(a2 + b2) + (bias == null ? 0f : bias[n + 2]);
            y[n + 3] = Vector512.Sum(a3 + b3) + (bias == null ? 0f : bias[n + 3]);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> NibbleGroup<TSign>(in WeightView w, int n, int g) where TSign : struct, ISignedness
    {
        var (s, z) = w.Params(n, g);
        return Float512.NibbleLookup(s, z, TSign.Signed);
    }

    /// <summary>The eight nibbles of every lane of <paramref name="words"/> looked up in <paramref name="lookup"/>, times their activations, into two accumulators.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void EightNibbles(Vector512<float> words, Vector512<float> lookup, float* x, ref Vector512<float> a, ref Vector512<float> b)
    {
        const int c = 16;
        a = Avx512F.FusedMultiplyAdd(Float512.NibbleAt(words, 0, lookup), Vector512.Load(x), a);
        b = Avx512F.FusedMultiplyAdd(Float512.NibbleAt(words, 4, lookup), Vector512.Load(x + c), b);
        a = Avx512F.FusedMultiplyAdd(Float512.NibbleAt(words, 8, lookup), Vector512.Load(x + 2 * c), a);
        b = Avx512F.FusedMultiplyAdd(Float512.NibbleAt(words, 12, lookup), Vector512.Load(x + 3 * c), b);
        a = Avx512F.FusedMultiplyAdd(Float512.NibbleAt(words, 16, lookup), Vector512.Load(x + 4 * c), a);
        b = Avx512F.FusedMultiplyAdd(Float512.NibbleAt(words, 20, lookup), Vector512.Load(x + 5 * c), b);
        a = Avx512F.FusedMultiplyAdd(Float512.NibbleAt(words, 24, lookup), Vector512.Load(x + 6 * c), a);
        b = Avx512F.FusedMultiplyAdd(Float512.NibbleAt(words, 28, lookup), Vector512.Load(x + 7 * c), b);
    }

    private static void Drive<TW, TVec, TD>(WeightView w, float* x, int m, nint ldx, float* bias, float* y, nint ldy, MatMulMethod method, Im2Col? unfold, bool bfloat16)
        where TW : IFloatWidth<TVec> where TVec : struct where TD : IWeightDecoder
    {
        int k = w.Cols;
        if (method == MatMulMethod.DotTiles)
        {
            DotTileMatMul.Run<TW, TVec, TD>(w, x, m, ldx, bias, y, ldy);
            return;
        }
        if (method != MatMulMethod.Rows)
        {
            PackedMatMul.Run<TW, TVec, TD>(w, x, m, ldx, bias, y, ldy, method == MatMulMethod.Transposed, unfold, bfloat16);
            return;
        }
        int[]? order = TD.Deinterleaved && TW.Count > 1 ? CachedChunkOrder(k, w.GroupSize, 2 * TW.Count) : null;
        float* permuted = null;
        if (order != null)
        {
            permuted = (float*)NativeMemory.Alloc((nuint)m * (nuint)Math.Max(k, 1), sizeof(float));
            for (int i = 0; i < m; i++) Gather(x + i * ldx, order, permuted + (nint)i * k);
            x = permuted;
            ldx = k;
        }
        // The activation rows' sums for the zero points of int8/uint8 on the unscaled path (PassRows), once per call:
        // per pass of four rows they were summed again by every work item (4096 x 4096 uint8 at batch 8: 512 items).
        float* xSums = null;
        if (UnscaledBytes<TD>(w) && w.ZeroPoint != null && m > 1)
        {
            xSums = (float*)NativeMemory.Alloc((nuint)m, sizeof(float));
            for (int i = 0; i < m; i++) xSums[i] = Sum<TW, TVec>(x + i * ldx, k);
        }
        // float16: the activation rows (reordered above, so contiguous) times 2^112 for ScaledHalfDecoder, where every
        // product stays exact.
        float* scaled = null;
        if (typeof(TD) == typeof(HalfDecoder) && ldx == k && (long)m * k <= int.MaxValue && TakesScaledHalves(TW.Count, (long)w.Rows * k))
        {
            scaled = (float*)NativeMemory.Alloc((nuint)Math.Max(m * k, 1), sizeof(float));
            if (!HalfLanes.ScaleUp(x, scaled, m * k))
            {
                NativeMemory.Free(scaled);
                scaled = null;
            }
        }
        try
        {
            var (rowsPerItem, nBlocks) = RowItems(w, m);
            int mBlocks = (m + RowsPerBlock - 1) / RowsPerBlock;
            long workPerItem = (long)Math.Min(m, RowsPerBlock) * rowsPerItem * k;
            var view = w;
            nint xAddress = (nint)x, yAddress = (nint)y, biasAddress = (nint)bias, sumsAddress = (nint)xSums, scaledAddress = (nint)scaled;
            KernelThreads.For(nBlocks * mBlocks, workPerItem, item =>
            {
                int mb = item / nBlocks, nb = item % nBlocks;
                int m0 = mb * RowsPerBlock, m1 = Math.Min(m, m0 + RowsPerBlock);
                int n0 = nb * rowsPerItem, n1 = Math.Min(view.Rows, n0 + rowsPerItem);
                // float16 weights without infinities or NaNs (nearly all) decode without their select (and, on
                // activations scaled by 2^112, without the multiply); one activation row (batch 1, or the last of a
                // call) takes the four-row kernel, which tests them as it decodes them.
                if (typeof(TD) == typeof(HalfDecoder) && m1 - m0 == 1 && FusedFiniteTest)
                    BatchOneHalves<TW, TVec>(view, (float*)xAddress + m0 * ldx, scaledAddress == 0 ? null : (float*)scaledAddress + m0 * ldx, (float*)biasAddress, (float*)yAddress + m0 * ldy, n0, n1);
                else if (PackedMatMul.FiniteHalves<TD>(view, n0, n1 - n0))
                {
                    if (scaledAddress != 0) Block<TW, TVec, ScaledHalfDecoder>(view, (float*)scaledAddress, ldx, (float*)biasAddress, (float*)yAddress, ldy, m0, m1, n0, n1, null);
                    else Block<TW, TVec, FiniteHalfDecoder>(view, (float*)xAddress, ldx, (float*)biasAddress, (float*)yAddress, ldy, m0, m1, n0, n1, null);
                }
                else
                    Block<TW, TVec, TD>(view, (float*)xAddress, ldx, (float*)biasAddress, (float*)yAddress, ldy, m0, m1, n0, n1, (float*)sumsAddress);
            });
        }
        finally
        {
            if (permuted != null) NativeMemory.Free(permuted);
            if (xSums != null) NativeMemory.Free(xSums);
            if (scaled != null) NativeMemory.Free(scaled);
        }
    }

    /// <summary>
    /// The row kernels' work items over the weight rows for <paramref name="m"/> activation rows (in blocks of
    /// <see cref="RowsPerBlock"/>): rows per item and the number of row blocks. An item holds about 32 KiB of stored
    /// weights, so a block stays in L1/L2 while the activation rows of the block pass over it; with fewer items than
    /// threads on a call that runs on several (a weight of few rows, 16 x 512 int8 at 24 rows was one item) the weight
    /// rows are split between the threads, in runs of four.
    /// </summary>
    private static (int RowsPerItem, int Blocks) RowItems(in WeightView w, int m)
    {
        int rowsPerItem = (int)Math.Clamp(32768 / Math.Max(w.RowBytes, 1), 4, 64);
        int nBlocks = (w.Rows + rowsPerItem - 1) / rowsPerItem, mBlocks = (m + RowsPerBlock - 1) / RowsPerBlock;
        int threads = KernelThreads.Count;
        if (nBlocks * mBlocks < threads && KernelThreads.RunsInParallel((long)m * w.Rows * w.Cols))
        {
            rowsPerItem = Math.Max(4, ((w.Rows + threads - 1) / threads + 3) / 4 * 4);
            nBlocks = (w.Rows + rowsPerItem - 1) / rowsPerItem;
        }
        return (rowsPerItem, nBlocks);
    }

    /// <summary>Weight rows <c>[n0, n1)</c> against activation rows <c>[m0, m1)</c>; <paramref name="xSums"/> holds every activation row's sum where <see cref="PassRows"/> needs them (else null).</summary>
    private static void Block<TW, TVec, TD>(in WeightView w, float* x, nint ldx, float* bias, float* y, nint ldy, int m0, int m1, int n0, int n1, float* xSums)
        where TW : IFloatWidth<TVec> where TVec : struct where TD : IWeightDecoder
    {
        int i = m0;
        for (; i + 4 <= m1; i += 4) Pass<TW, TVec, TD, Four>(w, x + i * ldx, ldx, bias, y + i * ldy, ldy, n0, n1, xSums == null ? null : xSums + i);
        if (m1 - i >= 2)
        {
            Pass<TW, TVec, TD, Two>(w, x + i * ldx, ldx, bias, y + i * ldy, ldy, n0, n1, xSums == null ? null : xSums + i);
            i += 2;
        }
        if (i < m1)
        {
            // One activation row (batch 1): four weight rows per pass share each activation load.
            int n = n0;
            if (ScalesByGroup(w.Format) && w.GroupSize >= 2 * TW.Count)
                for (; n + 4 <= n1; n += 4) FourRowsByGroup<TW, TVec, TD>(w, n, x + i * ldx, bias, y + i * ldy + n);
            for (; n + 4 <= n1; n += 4) FourWeightRows<TW, TVec, TD>(w, n, x + i * ldx, bias, y + i * ldy + n);
            for (; n < n1; n++)
            {
                var sums = default(RowSums<TVec>);
                Row<TW, TVec, TD, One, One>(w, n, x + i * ldx, ldx, 0, w.Cols, ref sums, ref sums);
                Tails<TW, TVec, TD, One>(w, n, x + i * ldx, ldx, ref sums);
                sums.Write<TW>(y + i * ldy + n, ldy, bias == null ? 0f : bias[n], 1);
            }
        }
    }

    /// <summary>
    /// Switch for measurements and tests: false tests batch 1's float16 weight rows for infinities and NaNs in a pass of
    /// their own (<see cref="HalfKernel.AllFinite"/>) before decoding them, as the other row counts do.
    /// </summary>
    internal static bool FusedFiniteTest = true;

    /// <summary>
    /// Switch for measurements and tests: false keeps the row kernels' float16 decode multiplying each vector by 2^112
    /// (<see cref="FiniteHalfDecoder"/>) instead of scaling the activations once per call (<see cref="ScaledHalfDecoder"/>).
    /// </summary>
    internal static bool ScaledHalves = true;

    /// <summary>
    /// Weight elements up to which the 512-bit kernels take <see cref="ScaledHalves"/>. Batch 1, 5 s processes, two to
    /// ten per setting (docs/BENCHMARKS.md, stop 24): 64x800 to 4096x4096 (16M elements, 32 MiB) 11-27% faster with it;
    /// 11008x4096 (45M, read from memory at its bandwidth either way) 3-13% slower in 9 of 10 pairs of processes. 256-bit kernels,
    /// bound by their arithmetic, take it at every size (11008x4096 on the emulated AVX2 machine: 2.41-2.70 ms against
    /// 2.99-3.06). At 2-16 rows (the row kernels' passes) 1024x1024 and 4096x4096 were faster in 21 of 24 pairs.
    /// </summary>
    internal const long ScaledHalvesMaxElements512 = 1L << 24;

    /// <summary>Whether the row kernels on a float16 weight of <paramref name="elements"/> elements take <see cref="ScaledHalfDecoder"/> with vectors of <paramref name="lanes"/> floats (the scalar width has no such decoder).</summary>
    internal static bool TakesScaledHalves(int lanes, long elements) =>
        ScaledHalves && lanes > 1 && (lanes < 16 || elements <= ScaledHalvesMaxElements512);

    /// <summary>
    /// Batch 1 on float16 weight rows <c>[n0, n1)</c>: four rows at a time decoded without the infinity and NaN select
    /// while being tested for them (<see cref="FourWeightRows"/>), again with the exact decoder where the test fails; the
    /// rows left after the last four tested first. A test pass of its own before each work item read the item's rows from
    /// memory with nothing else to do, then the decode read them again from the cache. Given <paramref name="scaled"/>,
    /// the activations times 2^112 (<see cref="HalfLanes.ScaleUp"/>), the four rows decode without the multiply that
    /// re-biases the exponent (<see cref="ScaledHalfDecoder"/>): the same products, so the same bits.
    /// </summary>
    private static void BatchOneHalves<TW, TVec>(in WeightView w, float* x, float* scaled, float* bias, float* y, int n0, int n1)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        int n = n0;
        for (; n + 4 <= n1; n += 4)
        {
            bool finite = scaled != null
                ? FourWeightRows<TW, TVec, ScaledHalfDecoder>(w, n, scaled, bias, y + n)
                : FourWeightRows<TW, TVec, FiniteHalfDecoder>(w, n, x, bias, y + n);
            if (!finite) FourWeightRows<TW, TVec, HalfDecoder>(w, n, x, bias, y + n);
        }
        if (n == n1) return;
        if (PackedMatMul.FiniteHalves<HalfDecoder>(w, n, n1 - n))
            Block<TW, TVec, FiniteHalfDecoder>(w, x, 0, bias, y, 0, 0, 1, n, n1, null);
        else
            Block<TW, TVec, HalfDecoder>(w, x, 0, bias, y, 0, 0, 1, n, n1, null);
    }

    /// <summary>
    /// Reduction elements per block of <see cref="Pass"/>: <c>TR.Count</c> activation rows of this many floats (8 KiB
    /// for four rows) stay in L1 while every weight row of the item passes over them. Without blocking, each weight row
    /// re-read the whole activation rows from L2 (batch 8, K = 4096: 128 KiB per weight row), which bounded batch 2-23
    /// by L2 bandwidth. Internal and settable so the tests can check that blocking leaves every bit unchanged.
    /// </summary>
    internal static int ReductionBlock = 512;

    /// <summary>
    /// Whether a pass of <c>TR.Count</c> activation rows at width <typeparamref name="TW"/> must fit in 16 vector
    /// registers: four rows, vectors of more than one float, and no AVX-512 (which gives 32). Two weight rows against
    /// four activation rows keep 16 accumulators (a chunk's two vectors apart), with the decoded vectors on top: more
    /// than the registers (the JIT's code for int8 there moved accumulators to and from the stack 14 times per chunk of
    /// 16 weights, 16 multiply-adds). On emulated AVX2 (docs/BENCHMARKS.md, stop 56) such a pass therefore adds both vectors of a chunk into one accumulator (eight, still
    /// enough independent multiply-adds), and packed nibbles, whose decode holds four more constants, take one weight
    /// row at a time. The 128-bit path (16 registers too) takes the same passes; not measured there.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool SixteenRegisters<TW, TVec, TR>() where TW : IFloatWidth<TVec> where TVec : struct where TR : IRowCount =>
        TR.Count == 4 && TW.Count > 1 && !Avx512F.IsSupported;

    /// <summary>Whether <typeparamref name="TD"/> decodes packed nibbles.</summary>
    private static bool IsNibbleDecoder<TD>() where TD : IWeightDecoder =>
        typeof(TD) == typeof(NibbleDecoder<SignedNibbles>) || typeof(TD) == typeof(NibbleDecoder<UnsignedNibbles>);

    /// <summary>
    /// Weight rows <c>[n0, n1)</c> against <c>TR.Count</c> activation rows, one reduction block at a time
    /// (<see cref="ReductionBlock"/>): each row's accumulators are carried from block to block
    /// (<see cref="RowSums{TVec}"/>), so every output gets exactly the operations, in the same order, of one
    /// unblocked pass over the row.
    /// </summary>
    private static void Pass<TW, TVec, TD, TR>(in WeightView w, float* x, nint ldx, float* bias, float* y, nint ldy, int n0, int n1, float* xSums)
        where TW : IFloatWidth<TVec> where TVec : struct where TD : IWeightDecoder where TR : IRowCount
    {
        // int8/uint8 with one scale per row: the rows' sums of plain integer products, each scaled once at the end
        // (4096 x 4096 int8 at batch 8: about a fifth of the call's time was the per-vector multiply-add).
        if (UnscaledBytes<TD>(w))
            PassRows<TW, TVec, ByteIntegers<TD>, TR>(w, x, ldx, bias, y, ldy, n0, n1, xSums);
        else
            PassRows<TW, TVec, TD, TR>(w, x, ldx, bias, y, ldy, n0, n1, null);
    }

    /// <summary>Whether the row kernels' passes take <see cref="ByteIntegers{TB}"/>: int8/uint8 with one scale per row.</summary>
    private static bool UnscaledBytes<TD>(in WeightView w) where TD : IWeightDecoder =>
        BytesByGroup && (typeof(TD) == typeof(Int8Decoder) || typeof(TD) == typeof(UInt8Decoder)) && w.GroupsPerRow == 1;

    /// <summary><see cref="Pass"/> with the decoder chosen; <paramref name="xSums"/>: the <c>TR.Count</c> activation rows' sums (read for zero points of an unscaled decoder).</summary>
    private static void PassRows<TW, TVec, TD, TR>(in WeightView w, float* x, nint ldx, float* bias, float* y, nint ldy, int n0, int n1, float* xSums)
        where TW : IFloatWidth<TVec> where TVec : struct where TD : IWeightDecoder where TR : IRowCount
    {
        int k = w.Cols, g = w.GroupSize, rows = n1 - n0;
        int block = Math.Max(ReductionBlock / (2 * TW.Count), 1) * 2 * TW.Count; // whole chunks
        var sums = RowSums<TVec>.Rent(rows);
        for (int k0 = 0, k1; k0 < k; k0 = k1)
        {
            // A block holds whole groups, or, inside a group longer than a block, whole chunks (its last block ends at
            // the group's end and takes the group's scalar tail).
            int groupEnd = (k0 / g + 1) * g;
            k1 = g <= block ? Math.Min(k, k0 + Math.Max(block / g, 1) * g) : groupEnd - k0 <= block ? groupEnd : k0 + block;
            int n = n0;
            if (!(SixteenRegisters<TW, TVec, TR>() && IsNibbleDecoder<TD>()))
                for (; n + 2 <= n1; n += 2) Row<TW, TVec, TD, Two, TR>(w, n, x, ldx, k0, k1, ref sums[n - n0], ref sums[n - n0 + 1]);
            for (; n < n1; n++) Row<TW, TVec, TD, One, TR>(w, n, x, ldx, k0, k1, ref sums[n - n0], ref sums[n - n0]);
        }
        // Unscaled sums: output = scale * sum(q * x) - zeroPoint * scale * sum(x) + bias.
        for (int n = n0; n < n1; n++)
        {
            Tails<TW, TVec, TD, TR>(w, n, x, ldx, ref sums[n - n0]);
            float b = bias == null ? 0f : bias[n];
            if (TD.Unscaled)
            {
                var (s, z) = w.Params(n, 0);
                sums[n - n0].WriteScaled<TW>(y + n, ldy, b, TR.Count, s, -z * s, xSums);
            }
            else
            {
                sums[n - n0].Write<TW>(y + n, ldy, b, TR.Count);
            }
        }
    }

    /// <summary>The sum of <paramref name="count"/> floats at <paramref name="x"/>.</summary>
    private static float Sum<TW, TVec>(float* x, int count) where TW : IFloatWidth<TVec> where TVec : struct
    {
        TVec acc = TW.Zero;
        int i = 0;
        for (; i + TW.Count <= count; i += TW.Count) acc = TW.Add(acc, TW.Load(x + i));
        float sum = TW.Sum(acc);
        for (; i < count; i++) sum += x[i];
        return sum;
    }

    /// <summary>
    /// Weight rows <c>n..n+TN.Count-1</c> (one or two) against <c>TR.Count</c> activation rows (1, 2 or 4) over
    /// reduction elements <c>[k0, k1)</c> (whole groups, or whole chunks of one group), added to <paramref name="sums0"/>
    /// and <paramref name="sums1"/>. Two weight rows share each activation load: at 64 bytes per load, the loads of
    /// the activations, not the multiply-adds, bound a one-row pass.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Row<TW, TVec, TD, TN, TR>(in WeightView w, int n, float* x, nint ldx, int k0, int k1, ref RowSums<TVec> sums0, ref RowSums<TVec> sums1)
        where TW : IFloatWidth<TVec> where TVec : struct where TD : IWeightDecoder where TN : IRowCount where TR : IRowCount
    {
        int chunk = 2 * TW.Count, g = w.GroupSize;
        nint rowBytes = w.RowBytes;
        byte* row0 = w.Data + n * rowBytes, row1 = row0 + rowBytes;
        int halfBytes = (int)(2 * rowBytes / Math.Max(w.Cols, 1)); // bytes per two elements
        int ahead = k1 - k0;
        float* x0 = x, x1 = x + ldx, x2 = x + 2 * ldx, x3 = x + 3 * ldx;
        // a, b: weight row n (first and second vector of each chunk); c, d: row n + 1.
        var (a0, b0, a1, b1, a2, b2, a3, b3) = sums0.Load<TR>();
        var (c0, d0, c1, d1, c2, d2, c3, d3) = TN.Count > 1 ? sums1.Load<TR>() : default;
        bool merge = TN.Count > 1 && SixteenRegisters<TW, TVec, TR>(); // a and c take both vectors of a chunk; b and d stay as loaded
        for (int gi = k0 / g; gi * g < k1; gi++)
        {
            var (s, offset) = GroupScale<TD>(w, n, gi);
            var (gp, gq) = TD.Prepare<TW, TVec>(s, offset);
            TVec hp = TW.Zero, hq = TW.Zero;
            if (TN.Count > 1)
            {
                var (s1, offset1) = GroupScale<TD>(w, n + 1, gi);
                (hp, hq) = TD.Prepare<TW, TVec>(s1, offset1);
            }
            int k = Math.Max(k0, gi * g), end = Math.Min(k1, gi * g + g);
            for (; k + chunk <= end; k += chunk)
            {
                // The weights stream from memory once (in the first pass over the activation rows), a block of each row
                // at a time: fetch the rows' next block ahead (read after every row's current block).
                if (Sse.IsSupported)
                {
                    Sse.Prefetch0(row0 + (((k + ahead) * halfBytes) >> 1));
                    if (TN.Count > 1) Sse.Prefetch0(row1 + (((k + ahead) * halfBytes) >> 1));
                }
                var (wa, wb) = TD.Decode<TW, TVec>(row0, k, gp, gq);
                TVec va = TW.Zero, vb = TW.Zero;
                if (TN.Count > 1) (va, vb) = TD.Decode<TW, TVec>(row1, k, hp, hq);
                Chunk<TW, TVec, TN>(wa, wb, va, vb, x0 + k, ref a0, ref b0, ref c0, ref d0, merge);
                if (TR.Count > 1) Chunk<TW, TVec, TN>(wa, wb, va, vb, x1 + k, ref a1, ref b1, ref c1, ref d1, merge);
                if (TR.Count > 2)
                {
                    Chunk<TW, TVec, TN>(wa, wb, va, vb, x2 + k, ref a2, ref b2, ref c2, ref d2, merge);
                    Chunk<TW, TVec, TN>(wa, wb, va, vb, x3 + k, ref a3, ref b3, ref c3, ref d3, merge);
                }
            }
        }
        sums0.Store<TR>(a0, b0, a1, b1, a2, b2, a3, b3);
        if (TN.Count > 1) sums1.Store<TR>(c0, d0, c1, d1, c2, d2, c3, d3);
    }

    /// <summary>
    /// One chunk of one activation row (<paramref name="x"/>) times the decoded chunk of weight row n (<paramref name="wa"/>,
    /// <paramref name="wb"/>: its first and second vector) and, for two rows, of row n + 1 (<paramref name="va"/>, <paramref name="vb"/>);
    /// with <paramref name="merge"/> (<see cref="SixteenRegisters"/>) both vectors into <paramref name="a"/> and <paramref name="c"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Chunk<TW, TVec, TN>(TVec wa, TVec wb, TVec va, TVec vb, float* x, ref TVec a, ref TVec b, ref TVec c, ref TVec d, bool merge)
        where TW : IFloatWidth<TVec> where TVec : struct where TN : IRowCount
    {
        TVec xa = TW.Load(x), xb = TW.Load(x + TW.Count);
        if (merge)
        {
            a = TW.MultiplyAdd(wb, xb, TW.MultiplyAdd(wa, xa, a));
            if (TN.Count > 1) c = TW.MultiplyAdd(vb, xb, TW.MultiplyAdd(va, xa, c));
            return;
        }
        a = TW.MultiplyAdd(wa, xa, a);
        b = TW.MultiplyAdd(wb, xb, b);
        if (TN.Count > 1)
        {
            c = TW.MultiplyAdd(va, xa, c);
            d = TW.MultiplyAdd(vb, xb, d);
        }
    }

    /// <summary>
    /// The scalar tails of weight row <paramref name="n"/>'s groups (the elements after a group's last whole chunk)
    /// against <c>TR.Count</c> activation rows, into <c>R</c>. Kept out of <see cref="Row"/>: a call there (the decoders'
    /// scalar reads are not always inlined) makes the JIT keep every vector accumulator in memory.
    /// </summary>
    private static void Tails<TW, TVec, TD, TR>(in WeightView w, int n, float* x, nint ldx, ref RowSums<TVec> sums)
        where TW : IFloatWidth<TVec> where TVec : struct where TD : IWeightDecoder where TR : IRowCount
    {
        int g = w.GroupSize, chunk = 2 * TW.Count, start = g / chunk * chunk;
        if (start == g) return;
        byte* row = w.Data + n * w.RowBytes;
        for (int g0 = 0; g0 < w.Cols; g0 += g)
        {
            var (s, offset) = GroupScale<TD>(w, n, g0 / g);
            for (int k = g0 + start; k < g0 + g; k++)
            {
                float wk = TD.One(row, k) * s + offset;
                sums.R0 += wk * x[k];
                if (TR.Count > 1) sums.R1 += wk * x[ldx + k];
                if (TR.Count > 2)
                {
                    sums.R2 += wk * x[2 * ldx + k];
                    sums.R3 += wk * x[3 * ldx + k];
                }
            }
        }
    }

    /// <summary>
    /// Weight rows <c>n..n+3</c> against one activation row (batch 1): each activation vector is loaded once for four
    /// rows, and eight independent accumulators keep the multiply-add units busy while the weights stream from memory.
    /// With a decoder that assumes finite halves (<see cref="IWeightDecoder.AssumesFiniteHalves"/>) the halves are tested
    /// as they are decoded (<see cref="IFloatWidth{TVec}.FoldHalfExponents"/>): returns false, the outputs not valid,
    /// where a row held an infinity or a NaN; true otherwise.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static bool FourWeightRows<TW, TVec, TD>(in WeightView w, int n, float* x, float* bias, float* y)
        where TW : IFloatWidth<TVec> where TVec : struct where TD : IWeightDecoder
    {
        bool test = TD.AssumesFiniteHalves;
        TVec seen = TW.Zero;
        int c = TW.Count, chunk = 2 * c, g = w.GroupSize, whole = g / chunk * chunk;
        nint rowBytes = w.RowBytes;
        byte* w0 = w.Data + n * rowBytes, w1 = w0 + rowBytes, w2 = w1 + rowBytes, w3 = w2 + rowBytes;
        TVec a0 = TW.Zero, b0 = TW.Zero, a1 = TW.Zero, b1 = TW.Zero, a2 = TW.Zero, b2 = TW.Zero, a3 = TW.Zero, b3 = TW.Zero;
        int groups = w.GroupsPerRow;
        int halfBytes = (int)(2 * w.RowBytes / Math.Max(w.Cols, 1)); // bytes per two elements: k * halfBytes / 2 is k's offset
        for (int gi = 0; gi < groups; gi++)
        {
            var (s0, o0) = GroupScale<TD>(w, n, gi);
            var (s1, o1) = GroupScale<TD>(w, n + 1, gi);
            var (s2, o2) = GroupScale<TD>(w, n + 2, gi);
            var (s3, o3) = GroupScale<TD>(w, n + 3, gi);
            var (p0, q0) = TD.Prepare<TW, TVec>(s0, o0);
            var (p1, q1) = TD.Prepare<TW, TVec>(s1, o1);
            var (p2, q2) = TD.Prepare<TW, TVec>(s2, o2);
            var (p3, q3) = TD.Prepare<TW, TVec>(s3, o3);
            for (int k = gi * g, end = k + whole; k < end; k += chunk)
            {
                TVec xa = TW.Load(x + k), xb = TW.Load(x + k + c);
                PrefetchNextFourRows(w0 + ((k * halfBytes) >> 1), rowBytes);
                var (wa, wb) = TD.Decode<TW, TVec>(w0, k, p0, q0);
                a0 = TW.MultiplyAdd(wa, xa, a0);
                b0 = TW.MultiplyAdd(wb, xb, b0);
                (wa, wb) = TD.Decode<TW, TVec>(w1, k, p1, q1);
                a1 = TW.MultiplyAdd(wa, xa, a1);
                b1 = TW.MultiplyAdd(wb, xb, b1);
                (wa, wb) = TD.Decode<TW, TVec>(w2, k, p2, q2);
                a2 = TW.MultiplyAdd(wa, xa, a2);
                b2 = TW.MultiplyAdd(wb, xb, b2);
                (wa, wb) = TD.Decode<TW, TVec>(w3, k, p3, q3);
                a3 = TW.MultiplyAdd(wa, xa, a3);
                b3 = TW.MultiplyAdd(wb, xb, b3);
                if (test)
                {
                    seen = TW.FoldHalfExponents(seen, (ushort*)w0 + k);
                    seen = TW.FoldHalfExponents(seen, (ushort*)w1 + k);
                    seen = TW.FoldHalfExponents(seen, (ushort*)w2 + k);
                    seen = TW.FoldHalfExponents(seen, (ushort*)w3 + k);
                }
            }
        }
        if (test && TW.AnyNonFiniteHalf(seen)) return false;
        float v0 = TW.Sum(TW.Add(a0, b0)), v1 = TW.Sum(TW.Add(a1, b1)), v2 = TW.Sum(TW.Add(a2, b2)), v3 = TW.Sum(TW.Add(a3, b3));
        var (r0, r1, r2, r3) = GroupTails<TD>(w, n, whole, x);
        y[0] = v0 + r0 + (bias == null ? 0f : bias[n]);
        y[1] = v1 + r1 + (bias == null ? 0f : bias[n + 1]);
        y[2] = v2 + r2 + (bias == null ? 0f : bias[n + 2]);
        y[3] = v3 + r3 + (bias == null ? 0f : bias[n + 3]);
        return true;
    }

    /// <summary>
    /// <see cref="FourWeightRows"/> for integer weights in groups of at least one chunk (packed 4-bit ones in groups
    /// shorter than <see cref="NibbleRows"/> takes, bytes in any): each group's chunks are decoded to the plain integers
    /// <c>q</c> (nibbles with constants set once per call, not a lookup table or a scale and offset per group and row;
    /// bytes with a widening load alone, <see cref="Integers"/>), their products with the activations summed, and that
    /// sum multiplied by the group's scale once; a zero point adds <c>-zeroPoint * scale</c> times the group's activation
    /// sum. 1024 x 1024 int4 group 32 at one row: 62-67 us before, 51-56 us with it (docs/BENCHMARKS.md, stop 13).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void FourRowsByGroup<TW, TVec, TD>(in WeightView w, int n, float* x, float* bias, float* y)
        where TW : IFloatWidth<TVec> where TVec : struct where TD : IWeightDecoder
    {
        int c = TW.Count, chunk = 2 * c, g = w.GroupSize, groups = w.GroupsPerRow, whole = g / chunk * chunk;
        nint rowBytes = w.RowBytes, stride = w.ScaleRowStride;
        byte* w0 = w.Data + n * rowBytes, w1 = w0 + rowBytes, w2 = w1 + rowBytes, w3 = w2 + rowBytes;
        float* s0 = w.Scale + n * stride, s1 = s0 + stride, s2 = s1 + stride, s3 = s2 + stride;
        int* z0 = w.ZeroPoint == null ? null : w.ZeroPoint + n * stride;
        int* z1 = z0 + stride, z2 = z1 + stride, z3 = z2 + stride;
        var (p, q) = TD.Prepare<TW, TVec>(1f, -TD.OffsetBias); // decodes q itself, exactly
        int shift = WeightView.IsPacked(w.Format) ? 1 : 0; // bytes of k elements: k >> shift
        TVec a0 = TW.Zero, a1 = TW.Zero, a2 = TW.Zero, a3 = TW.Zero;
        for (int gi = 0; gi < groups; gi++)
        {
            TVec t0 = TW.Zero, u0 = TW.Zero, t1 = TW.Zero, u1 = TW.Zero, t2 = TW.Zero, u2 = TW.Zero, t3 = TW.Zero, u3 = TW.Zero, xs = TW.Zero;
            int k = gi * g, end = k + whole;
            for (; k < end; k += chunk)
            {
                TVec xa = TW.Load(x + k), xb = TW.Load(x + k + c);
                PrefetchNextFourRows(w0 + (k >> shift), rowBytes);
                var (wa, wb) = Integers<TW, TVec, TD>(w0, k, p, q);
                t0 = TW.MultiplyAdd(wa, xa, t0);
                u0 = TW.MultiplyAdd(wb, xb, u0);
                (wa, wb) = Integers<TW, TVec, TD>(w1, k, p, q);
                t1 = TW.MultiplyAdd(wa, xa, t1);
                u1 = TW.MultiplyAdd(wb, xb, u1);
                (wa, wb) = Integers<TW, TVec, TD>(w2, k, p, q);
                t2 = TW.MultiplyAdd(wa, xa, t2);
                u2 = TW.MultiplyAdd(wb, xb, u2);
                (wa, wb) = Integers<TW, TVec, TD>(w3, k, p, q);
                t3 = TW.MultiplyAdd(wa, xa, t3);
                u3 = TW.MultiplyAdd(wb, xb, u3);
                if (z0 != null) xs = TW.Add(xs, TW.Add(xa, xb));
            }
            a0 = TW.MultiplyAdd(TW.Add(t0, u0), TW.Create(s0[gi]), a0);
            a1 = TW.MultiplyAdd(TW.Add(t1, u1), TW.Create(s1[gi]), a1);
            a2 = TW.MultiplyAdd(TW.Add(t2, u2), TW.Create(s2[gi]), a2);
            a3 = TW.MultiplyAdd(TW.Add(t3, u3), TW.Create(s3[gi]), a3);
            if (z0 != null)
            {
                a0 = TW.MultiplyAdd(xs, TW.Create(-z0[gi] * s0[gi]), a0);
                a1 = TW.MultiplyAdd(xs, TW.Create(-z1[gi] * s1[gi]), a1);
                a2 = TW.MultiplyAdd(xs, TW.Create(-z2[gi] * s2[gi]), a2);
                a3 = TW.MultiplyAdd(xs, TW.Create(-z3[gi] * s3[gi]), a3);
            }
        }
        float v0 = TW.Sum(a0), v1 = TW.Sum(a1), v2 = TW.Sum(a2), v3 = TW.Sum(a3);
        var (r0, r1, r2, r3) = GroupTails<TD>(w, n, whole, x);
        y[0] = v0 + r0 + (bias == null ? 0f : bias[n]);
        y[1] = v1 + r1 + (bias == null ? 0f : bias[n + 1]);
        y[2] = v2 + r2 + (bias == null ? 0f : bias[n + 2]);
        y[3] = v3 + r3 + (bias == null ? 0f : bias[n + 3]);
    }

    /// <summary>Weight formats whose batch-1 rows <see cref="FourRowsByGroup"/> takes (groups of at least a chunk).</summary>
    internal static bool ScalesByGroup(WeightFormat format) =>
        WeightView.IsPacked(format) || (BytesByGroup && format is WeightFormat.Int8 or WeightFormat.UInt8);

    /// <summary>
    /// Whether int8/uint8 sum plain integer products and scale them per group (<see cref="FourRowsByGroup"/> at one
    /// row, <see cref="Pass"/> with one scale per row at more); the probe turns it off to measure the difference.
    /// </summary>
    internal static bool BytesByGroup = true;

    /// <summary>
    /// The integers <c>q</c> of elements <c>[k, k + 2 * Count)</c>: bytes by a widening load (<see cref="ByteIntegers{TB}"/>), other formats by
    /// <see cref="IWeightDecoder.Decode"/> with <paramref name="p"/> and <paramref name="q"/> from <c>Prepare(1, -OffsetBias)</c>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (TVec A, TVec B) Integers<TW, TVec, TD>(byte* row, int k, TVec p, TVec q)
        where TW : IFloatWidth<TVec> where TVec : struct where TD : IWeightDecoder
    {
        if (typeof(TD) == typeof(Int8Decoder) || typeof(TD) == typeof(UInt8Decoder)) return ByteIntegers<TD>.Decode<TW, TVec>(row, k, p, q);
        return TD.Decode<TW, TVec>(row, k, p, q);
    }

    /// <summary>
    /// The elements after the first <paramref name="whole"/> of every group of rows <c>n..n+3</c> (what the chunk loops
    /// leave), in scalars, group by group. Called after the vector accumulators are summed: the JIT keeps a vector
    /// live across a call in memory, storing it after every multiply-add of the loop (the batch-1 float16 loop ran
    /// with eight such stores per chunk when the tails were done group by group inside it).
    /// </summary>
    private static (float R0, float R1, float R2, float R3) GroupTails<TD>(in WeightView w, int n, int whole, float* x)
        where TD : IWeightDecoder
    {
        float r0 = 0, r1 = 0, r2 = 0, r3 = 0;
        int g = w.GroupSize;
        if (whole < g)
            for (int gi = 0, groups = w.GroupsPerRow; gi < groups; gi++)
                GroupTail<TD>(w, n, gi, gi * g + whole, gi * g + g, x, ref r0, ref r1, ref r2, ref r3);
        return (r0, r1, r2, r3);
    }

    /// <summary>Elements <c>[start, end)</c> of group <paramref name="gi"/> (after its last whole chunk) of rows <c>n..n+3</c>, in scalars, added to <paramref name="r0"/>..<paramref name="r3"/>.</summary>
    private static void GroupTail<TD>(in WeightView w, int n, int gi, int start, int end, float* x, ref float r0, ref float r1, ref float r2, ref float r3)
        where TD : IWeightDecoder
    {
        nint rowBytes = w.RowBytes;
        byte* w0 = w.Data + n * rowBytes, w1 = w0 + rowBytes, w2 = w1 + rowBytes, w3 = w2 + rowBytes;
        var (s0, o0) = GroupScale<TD>(w, n, gi);
        var (s1, o1) = GroupScale<TD>(w, n + 1, gi);
        var (s2, o2) = GroupScale<TD>(w, n + 2, gi);
        var (s3, o3) = GroupScale<TD>(w, n + 3, gi);
        for (int k = start; k < end; k++)
        {
            float xk = x[k];
            r0 += (TD.One(w0, k) * s0 + o0) * xk;
            r1 += (TD.One(w1, k) * s1 + o1) * xk;
            r2 += (TD.One(w2, k) * s2 + o2) * xk;
            r3 += (TD.One(w3, k) * s3 + o3) * xk;
        }
    }

    /// <summary>Scale and offset (<c>-(zeroPoint + OffsetBias) * scale</c>) of row <paramref name="n"/>, group <paramref name="g"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static (float Scale, float Offset) GroupScale<TD>(in WeightView w, int n, int g) where TD : IWeightDecoder
    {
        if (TD.Unscaled) return (1f, 0f);
        var (s, z) = w.Params(n, g);
        return (s, -(z + TD.OffsetBias) * s);
    }

    /// <summary>
    /// <see cref="ChunkOrder"/>, built once per (K, group, chunk) and kept: a model has few distinct triples, and
    /// building one per call (an array of K ints, allocated, zeroed and filled) took about 6% of a 64 x 800 int4
    /// layer's call at batch 1 (perf: 7.7% + 5.2% memset before, 5.0% + 1.7% after; docs/BENCHMARKS.md, stop 13).
    /// The arrays are never written after they are added.
    /// </summary>
    internal static int[] CachedChunkOrder(int k, int groupSize, int chunk) =>
        ChunkOrders.GetOrAdd((k, groupSize, chunk), key => ChunkOrder(key.K, key.GroupSize, key.Chunk));

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<(int K, int GroupSize, int Chunk), int[]> ChunkOrders = new();

    /// <summary>
    /// The activation column each position reads when the weights are packed nibbles: within each group, each full
    /// chunk of <paramref name="chunk"/> elements lists its even columns, then its odd ones (the decoder's low and high
    /// nibbles); the rest of a group stays in order.
    /// </summary>
    internal static int[] ChunkOrder(int k, int groupSize, int chunk)
    {
        var order = new int[k];
        int half = chunk / 2;
        for (int g0 = 0; g0 < k; g0 += groupSize)
        {
            int end = g0 + groupSize, i = g0;
            for (; i + chunk <= end; i += chunk)
            {
                for (int j = 0; j < half; j++)
                {
                    order[i + j] = i + 2 * j;
                    order[i + half + j] = i + 2 * j + 1;
                }
            }
            for (; i < end; i++) order[i] = i;
        }
        return order;
    }

    /// <summary><c>dst[p] = src[order[p]]</c> for every position of <paramref name="order"/>: eight at a time with <c>vgatherdps</c> where the CPU has AVX2.</summary>
    internal static void Gather(float* src, int[] order, float* dst)
    {
        int k = order.Length, p = 0;
        fixed (int* o = order)
        {
            if (Avx2.IsSupported)
                for (; p + 8 <= k; p += 8) Avx.Store(dst + p, Avx2.GatherVector256(src, Avx.LoadVector256(o + p), 4));
            for (; p < k; p++) dst[p] = src[o[p]];
        }
    }

    /// <summary>The specification: <see cref="WeightView.Dequantized"/> weights, products summed in float64.</summary>
    public static void Reference(in WeightView w, float* x, int m, nint ldx, float* bias, float* y, nint ldy)
    {
        var row = new float[w.Cols];
        for (int n = 0; n < w.Rows; n++)
        {
            for (int k = 0; k < w.Cols; k++) row[k] = w.Dequantized(n, k);
            for (int i = 0; i < m; i++)
            {
                double sum = bias == null ? 0 : bias[n];
                for (int k = 0; k < w.Cols; k++) sum += (double)x[i * ldx + k] * row[k];
                y[i * ldy + n] = (float)sum;
            }
        }
    }
}

/// <summary>Compile-time number of activation rows a kernel pass handles (1, 2 or 4).</summary>
internal interface IRowCount
{
    static abstract int Count { get; }
}

internal readonly struct One : IRowCount
{
    public static int Count => 1;
}

internal readonly struct Two : IRowCount
{
    public static int Count => 2;
}

internal readonly struct Four : IRowCount
{
    public static int Count => 4;
}

/// <summary>
/// The running sums of one weight row against up to four activation rows (<c>A</c>: the first vector of each chunk,
/// <c>B</c>: the second, <c>R</c>: scalar group tails), carried between reduction blocks.
/// </summary>
internal struct RowSums<TVec> where TVec : struct
{
    public TVec A0, B0, A1, B1, A2, B2, A3, B3;
    public float R0, R1, R2, R3;

    /// <summary>The vector sums of the first <c>TR.Count</c> activation rows (zero for the others).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly (TVec, TVec, TVec, TVec, TVec, TVec, TVec, TVec) Load<TR>() where TR : IRowCount
    {
        var z = default(TVec);
        return (A0, B0, TR.Count > 1 ? A1 : z, TR.Count > 1 ? B1 : z, TR.Count > 2 ? A2 : z, TR.Count > 2 ? B2 : z, TR.Count > 2 ? A3 : z, TR.Count > 2 ? B3 : z);
    }

    /// <summary>Stores the vector sums of the first <c>TR.Count</c> activation rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Store<TR>(TVec a0, TVec b0, TVec a1, TVec b1, TVec a2, TVec b2, TVec a3, TVec b3) where TR : IRowCount
    {
        (A0, B0) = (a0, b0);
        if (TR.Count > 1) (A1, B1) = (a1, b1);
        if (TR.Count > 2) (A2, B2, A3, B3) = (a2, b2, a3, b3);
    }

    [ThreadStatic] private static RowSums<TVec>[]? t_buffer;

    /// <summary>This thread's zeroed sums for <paramref name="rows"/> weight rows (reused from call to call).</summary>
    public static Span<RowSums<TVec>> Rent(int rows)
    {
        if (t_buffer is null || t_buffer.Length < rows) t_buffer = new RowSums<TVec>[Math.Max(rows, 64)];
        var span = t_buffer.AsSpan(0, rows);
        span.Clear();
        return span;
    }

    /// <summary>
    /// <see cref="Write"/> for sums of unscaled integer products (<see cref="IWeightDecoder.Unscaled"/>): each output is
    /// <c>scale * (lanes + tail) + offset * xSums[r] + bias</c> (<c>offset = -zeroPoint * scale</c>, <c>xSums[r]</c> the
    /// sum of activation row r, read only when <paramref name="offset"/> is not zero).
    /// </summary>
    public readonly unsafe void WriteScaled<TW>(float* y, nint ld, float bias, int count, float scale, float offset, float* xSums)
        where TW : IFloatWidth<TVec>
    {
        y[0] = (TW.Sum(TW.Add(A0, B0)) + R0) * scale + (offset == 0 ? 0f : offset * xSums[0]) + bias;
        if (count > 1) y[ld] = (TW.Sum(TW.Add(A1, B1)) + R1) * scale + (offset == 0 ? 0f : offset * xSums[1]) + bias;
        if (count > 2)
        {
            y[2 * ld] = (TW.Sum(TW.Add(A2, B2)) + R2) * scale + (offset == 0 ? 0f : offset * xSums[2]) + bias;
            y[3 * ld] = (TW.Sum(TW.Add(A3, B3)) + R3) * scale + (offset == 0 ? 0f : offset * xSums[3]) + bias;
        }
    }

    /// <summary>Writes the <paramref name="count"/> outputs (<paramref name="ld"/> floats apart): lanes summed, plus the tail and the bias.</summary>
    public readonly unsafe void Write<TW>(float* y, nint ld, float bias, int count) where TW : IFloatWidth<TVec>
    {
        y[0] = TW.Sum(TW.Add(A0, B0)) + R0 + bias;
        if (count > 1) y[ld] = TW.Sum(TW.Add(A1, B1)) + R1 + bias;
        if (count > 2)
        {
            y[2 * ld] = TW.Sum(TW.Add(A2, B2)) + R2 + bias;
            y[3 * ld] = TW.Sum(TW.Add(A3, B3)) + R3 + bias;
        }
    }
}
