using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QuantSharp.Kernels;

/// <summary>
/// The large-batch path of <see cref="QuantizedMatMul"/>: a cache-blocked GEMM that decodes each block of weights once
/// into a small float tile and multiplies it into every activation row, so the decoding is paid once per weight for
/// the whole batch instead of once per four rows.
/// </summary>
/// <remarks>
/// <para>It computes the transposed product <c>y^T = W x^T</c>, which needs no transposition of the weights:</para>
/// <list type="bullet">
/// <item>The activations are packed once per call as <c>x^T</c> in strips of <c>2 * Count</c> rows
/// (<c>xt[strip][k][lane]</c>, zero-padded to whole strips), so one vector holds one column of <c>2 * Count</c> rows.</item>
/// <item>Each work item owns <see cref="ItemRows"/> weight rows. For each block of the reduction axis (about
/// <see cref="BlockTarget"/> long, cut at group boundaries or at chunk boundaries inside a group, so the decoders see
/// the same chunks as the row kernels) it decodes its rows' slices into a float tile (row-major, in order: the
/// even/odd halves of nibble and half-pair chunks interleaved back), then runs the micro-kernel over every strip.</item>
/// <item>Micro-kernel (<see cref="MicroKernel"/>, shared by both packed GEMMs): tiles of 4-8 weight rows (<see cref="MicroKernel.NextTile"/>) x 2 vectors of activation rows, two accumulators per row: per
/// reduction step two vector loads of <c>x^T</c>, one broadcast and two multiply-adds per weight row. The tile of the
/// strip (<c>BlockTarget * 2 * Count</c> floats) stays in L1 while the weight rows pass.</item>
/// <item>Partial sums live in a per-item <c>y^T</c> buffer (contiguous vector loads and stores); the item writes
/// <c>y</c> (plus bias) once at the end.</item>
/// <item>Few activation rows (below 128) run with the roles swapped where that fills the lanes at least as well
/// (<see cref="PackedLayout.ByWeightStrips"/>): weight rows in the lanes, activation rows broadcast, <c>y</c> written
/// directly.</item>
/// </list>
/// <para>This decodes the weights into a scratch tile of <c>ItemRows x BlockTarget</c> floats per thread; the whole
/// weight never exists in float. Accumulation order differs from the row kernels only in float32 rounding.</para>
/// </remarks>
internal static unsafe class PackedMatMul
{
    /// <summary>Weight rows per micro-kernel call (broadcast operands).</summary>
    internal const int TileRows = MicroKernel.Rows;

    /// <summary>Weight rows per work item (a multiple of <see cref="TileRows"/>).</summary>
    internal const int ItemRows = 8 * TileRows;

    /// <summary>Target length of a reduction block.</summary>
    internal const int BlockTarget = 256;

    /// <summary>Computes <c>y = x w^T + bias</c> for <paramref name="m"/> rows (any m; meant for large batches).</summary>
    /// <remarks>Arguments as <see cref="QuantizedMatMul.Run"/>.</remarks>
    /// <param name="w">The weight, <c>[N, K]</c>.</param>
    /// <param name="x">Activations, <paramref name="m"/> rows <paramref name="ldx"/> floats apart.</param>
    /// <param name="m">Activation rows.</param>
    /// <param name="ldx">Distance between activation rows, in floats.</param>
    /// <param name="bias">N floats, or null.</param>
    /// <param name="y">Output rows, <paramref name="ldy"/> floats apart.</param>
    /// <param name="ldy">Distance between output rows.</param>
    /// <param name="transposed">
    /// True when <paramref name="x"/> holds <c>x^T</c> (K rows of <paramref name="m"/> floats, <paramref name="ldx"/>
    /// apart) and <paramref name="y"/> receives <c>y^T</c> (N rows, <paramref name="ldy"/> apart): a 1x1
    /// convolution's image <c>[C, H*W]</c> in and <c>[O, H*W]</c> out, with no transposition on either side.
    /// </param>
    /// <param name="unfold">
    /// With <paramref name="transposed"/>: the convolution whose column matrix (im2col) is <c>x^T</c>, unfolded from the
    /// image at <paramref name="x"/> while packing (<paramref name="ldx"/> unused); null when <paramref name="x"/> holds
    /// <c>x^T</c> itself.
    /// </param>
    /// <param name="bfloat16">
    /// With <paramref name="transposed"/> at 512 bits, where <see cref="BFloat16Fits"/>: multiply in bfloat16
    /// (<see cref="ItemBFloat16"/>); elsewhere ignored (float32).
    /// </param>
    public static void Run<TW, TVec, TD>(in WeightView w, float* x, int m, nint ldx, float* bias, float* y, nint ldy, bool transposed = false, Im2Col? unfold = null, bool bfloat16 = false)
        where TW : IFloatWidth<TVec> where TVec : struct where TD : IWeightDecoder
    {
        bfloat16 &= transposed && typeof(TW) == typeof(Float512) && BFloat16Fits(w);
        if (bfloat16 && unfold is { } pairs && ReadsPairsInPlace(pairs, w.Rows))
        {
            ByPairImages<TD>(w, x, bias, y, ldy, pairs);
            return;
        }
        int k = w.Cols, stripWidth = 2 * TW.Count;
        int strips = (m + stripWidth - 1) / stripWidth;
        var layout = ForcedLayout ?? ChooseLayout(w.Rows, k, m, stripWidth, KernelThreads.Count);
        if (!transposed && layout == PackedLayout.ByWeightStrips)
        {
            ByWeightStrips<TW, TVec, TD>(w, x, m, ldx, bias, y, ldy);
            return;
        }
        if (transposed || layout == PackedLayout.ByPositions)
        {
            ByPositions<TW, TVec, TD>(w, x, m, ldx, bias, y, ldy, transposed, unfold, bfloat16);
            return;
        }
        int paddedM = strips * stripWidth;
        var split = WorkSplit.For(w.Rows, strips, KernelThreads.Count);
        bool shared = layout == PackedLayout.Shared;
        float[]? packed = shared ? ArrayPool<float>.Shared.Rent(checked(paddedM * Math.Max(k, 1))) : null;
        try
        {
            fixed (float* xt = packed)
            {
                nint xAddress = (nint)x, xtAddress = (nint)xt;
                if (shared) KernelThreads.For(strips, (long)stripWidth * k * 8, s => PackStrip((float*)xAddress, m, ldx, k, (float*)xtAddress + (nint)s * k * stripWidth, s, stripWidth));

                var view = w;
                nint yAddress = (nint)y, biasAddress = (nint)bias;
                int blockCapacity = Math.Min(k, BlockTarget), ldt = split.GroupStrips * stripWidth;
                int ownStrips = shared ? 0 : checked(ldt * Math.Max(k, 1));
                KernelThreads.For(split.Items, (long)split.Rows * ldt * k, item =>
                {
                    int n0 = split.RowStart(item), s0 = split.StripStart(item), s1 = Math.Min(strips, s0 + split.GroupStrips);
                    float[] scratch = ArrayPool<float>.Shared.Rent(split.Rows * blockCapacity + split.Rows * ldt + ownStrips);
                    try
                    {
                        fixed (float* tile = scratch)
                        {
                            // Without shared packing the item packs its strips after its tile and partial sums.
                            float* strips0 = shared ? (float*)xtAddress : tile + split.Rows * (blockCapacity + ldt);
                            if (!shared)
                                for (int s = s0; s < s1; s++)
                                    PackStrip((float*)xAddress, m, ldx, k, strips0 + (nint)(s - s0) * k * stripWidth, s, stripWidth);
                            Item<TW, TVec, TD>(view, strips0, new StripBlock(s0, s1, m, shared ? 0 : s0), blockCapacity, tile,
                                (float*)biasAddress, (float*)yAddress, ldy, n0, Math.Min(split.Rows, view.Rows - n0), transposed: false);
                        }
                    }
                    finally
                    {
                        ArrayPool<float>.Shared.Return(scratch);
                    }
                });
            }
        }
        finally
        {
            if (packed is not null) ArrayPool<float>.Shared.Return(packed);
        }
    }

    /// <summary>
    /// How a call with activation rows (not transposed) packs and splits. Shared packing (one pass over the strips, then
    /// items reading them) makes cache lines change hands between cores twice per call (written by one thread, read by
    /// the other; on this VM about 1 ns per float): packing a 64 x 800 input took 55 us inside a call against 5 us
    /// alone, more than the multiply-adds. So where the activations have a strip per thread and the weight is small
    /// (it has too few rows for two items per thread, or at most <see cref="PositionMajorMaxWeight"/> elements), the
    /// call runs position-major: each thread packs the strips it multiplies and runs every weight row over them. Else,
    /// up to two row items per thread, each item packs its own strips; beyond, the packing is shared. Packing again per
    /// item costs about a sixth of an item's multiply-adds (int8) and as much as them where the activations are
    /// gathered in the nibble decoders' order (as it was then): 24 rows through 1024 x 1024 int4 ran 1.25x float32's time with per-item
    /// packing, 0.8x shared.
    /// </summary>
    /// <remarks>
    /// Before those: a call of fewer than <see cref="WeightStripsMaxRows"/> activation rows whose lanes the weight-row
    /// strips of <see cref="ByWeightStrips"/> fill at least as well runs that way (<see cref="WeightStripsFillAsMany"/>):
    /// 24 rows in a strip of 32 left a quarter of every multiply-add idle (and both items packed the one strip), 40 rows
    /// in two strips 37%. On 64 x 800 int8 at 40 rows that took 1.62-1.81x float32's time, 0.97-1.01x this way; at 100
    /// rows 1.25-1.26x against 0.92-0.95x (docs/BENCHMARKS.md, stop 13).
    /// </remarks>
    internal static PackedLayout ChooseLayout(int weightRows, int weightCols, int m, int stripWidth, int threads)
    {
        int strips = (m + stripWidth - 1) / stripWidth;
        if (m < WeightStripsMaxRows && WeightStripsFillAsMany(weightRows, m, stripWidth)) return PackedLayout.ByWeightStrips;
        int rowItems = (weightRows + ItemRows - 1) / ItemRows;
        if (threads > 1 && strips >= threads && (rowItems < 2 * threads || (long)weightRows * weightCols <= PositionMajorMaxWeight)) return PackedLayout.ByPositions;
        return rowItems <= 2 * threads ? PackedLayout.PerItem : PackedLayout.Shared;
    }

    /// <summary>
    /// Activation rows below which <see cref="ChooseLayout"/> considers <see cref="PackedLayout.ByWeightStrips"/>. At
    /// 128 rows and 512 bits, forcing it measured no better than the activation strips (docs/BENCHMARKS.md, stop 13).
    /// </summary>
    internal static int WeightStripsMaxRows = 128;

    /// <summary>
    /// True when <see cref="ByWeightStrips"/> keeps at least as many multiply-add lanes busy as the activation strips:
    /// the fraction of useful lanes is <c>m / (strips * stripWidth)</c> one way and <c>m / (tiles * TileRows)</c> times
    /// <c>N / (weight strips * stripWidth)</c> the other. On a tie it wins by what it does not do (pack the activations,
    /// transpose the output, decode the weight once per strip group): 96 rows at 512 bits (both fill every lane)
    /// 0.70-0.83x float32 against 0.93-1.02x, 48 rows at 256 bits 0.86-0.99x against 1.14-1.29x (int8).
    /// </summary>
    internal static bool WeightStripsFillAsMany(int weightRows, int m, int stripWidth)
    {
        // Counted in tiles of six rows, as the rule was measured: with the exact tiles of eight, the ties it would add
        // lose (384 x 384 int8 at 64 rows 120-132 us by weight strips against 106-115 us, docs/BENCHMARKS.md, stop 16).
        int strips = (m + stripWidth - 1) / stripWidth, tiles = (m + TileRows - 1) / TileRows;
        int weightStrips = (weightRows + stripWidth - 1) / stripWidth;
        // m / (strips * w) <= m / (tiles * T) * N / (weightStrips * w), cross-multiplied (all positive).
        return (long)tiles * TileRows * weightStrips * stripWidth <= (long)strips * stripWidth * weightRows;
    }

    /// <summary>Whether the micro-kernel takes tiles of eight rows at this width (<see cref="MicroKernel.NextTile"/>): 512-bit vectors, 32 registers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool Wide<TW, TVec>() where TW : IFloatWidth<TVec> where TVec : struct => TW.Count >= 16;

    /// <summary>Weights up to this many elements run position-major whatever their rows: each item decodes the weight again, a few microseconds for an L2-sized weight.</summary>
    internal const long PositionMajorMaxWeight = 1 << 20;

    /// <summary>Tests force a layout on their thread (null: <see cref="ChooseLayout"/>); every layout gives the same bits.</summary>
    [ThreadStatic] internal static PackedLayout? ForcedLayout;

    /// <summary>
    /// Bytes of packed activations a position-major work item keeps (in L2) while every weight row passes. Not for a
    /// convolution of one or two images (<see cref="BlockFits"/>): there a strip of a long reduction is larger than
    /// this by itself (K = 4,608 for 512->512 3x3: 590 KB), so each item of one strip decoded its weight rows again for
    /// every strip; with blocks up to all of an image's strips (<see cref="PositionSplit.For"/> weighing the decoding
    /// against the packing) the packed kernels took up to 16% less time on ResNet's stride-2 and 7x7 layers at batch 1
    /// and 2, float16 weights most, and none more beyond noise (docs/BENCHMARKS.md, stop 29).
    /// </summary>
    internal static int PositionBlockBytes = 256 << 10;

    /// <summary>Images up to which a convolution's position-major blocks may hold all of an image's strips (<see cref="BlockFits"/>).</summary>
    internal const int WholeImageBlocksMaxImages = 2;

    /// <summary>
    /// Strips a position-major block may hold (<see cref="PositionSplit.For"/>'s <c>fits</c>): as many as fit in
    /// <see cref="PositionBlockBytes"/> (at least one), or all of an image's strips for a convolution of one or two
    /// images.
    /// </summary>
    /// <param name="k">Reduction length.</param>
    /// <param name="stripWidth">Positions per strip.</param>
    /// <param name="strips">Strips per image (or of the activation rows).</param>
    /// <param name="unfold">The convolution's geometry; null for activation rows.</param>
    internal static int BlockFits(int k, int stripWidth, int strips, Im2Col? unfold)
    {
        if (unfold is { } u && u.Images <= WholeImageBlocksMaxImages) return Math.Max(strips, 1);
        long stripBytes = 4L * Math.Max(k, 1) * stripWidth;
        return (int)Math.Clamp(PositionBlockBytes / stripBytes, 1, Math.Max(strips, 1));
    }

    /// <summary>
    /// Transposed operands (<c>x^T</c> in, <c>y^T</c> out: a convolution), and activation rows against a weight of few
    /// rows (<see cref="ChooseLayout"/>), run position-major: there the activations are the large operand and the
    /// weight the small one, so each work item owns a block of positions (whole strips of one image, or of the rows),
    /// packs them (unfolding the image on the fly) into a block of about <see cref="PositionBlockBytes"/> that stays in
    /// its thread's cache, and runs every weight row over it (or, where that evens out the threads, one run of the
    /// weight's rows: <see cref="PositionSplit"/>). Packing and the multiply-adds then read the activations once from
    /// memory; each item decodes its weight rows again, tile by tile, which costs little against the block's
    /// multiply-adds (the weight is small). A convolution whose strips are read in place (<see cref="ReadsInPlace"/>)
    /// pads its images once and packs nothing: its blocks are all of an image's strips on the wide grid.
    /// </summary>
    private static void ByPositions<TW, TVec, TD>(in WeightView w, float* x, int m, nint ldx, float* bias, float* y, nint ldy, bool transposed, Im2Col? unfold, bool bfloat16 = false)
        where TW : IFloatWidth<TVec> where TVec : struct where TD : IWeightDecoder
    {
        int k = w.Cols, stripWidth = 2 * TW.Count, images = unfold?.Images ?? 1;
        // In place (ReadsInPlace): the strips run over each image's wide grid of positions, nothing is packed. The
        // bfloat16 mode always packs (its strips are pairs of bfloat16 steps).
        var grid = transposed && !bfloat16 && unfold is { } g && ReadsInPlace(g) ? new PhaseGrid(g) : (PhaseGrid?)null;
        int positions = grid is { } pg ? unfold!.Value.OutH * pg.PhaseWidth : m;
        int strips = (positions + stripWidth - 1) / stripWidth;
        long stripFloats = grid is null ? (long)Math.Max(k, 1) * stripWidth : 0;
        // In place, a block is no buffer of its own: every strip of an image (each item decodes its weight rows once per block).
        int fits = grid is null ? BlockFits(k, stripWidth, strips, unfold) : Math.Max(strips, 1);
        var split = PositionSplit.For(strips, images, fits, w.Rows, KernelThreads.Count, packs: grid is null);
        int blockStrips = split.BlockStrips, blocks = split.Blocks, parts = split.Parts;
        int blockCapacity = Math.Min(k, BlockTarget), blockM = blockStrips * stripWidth;
        long imageSize = grid is { } ig ? ig.ImageValues : unfold?.ImageSize ?? 0;
        var view = w;
        var columns = unfold;
        float* padded = null;
        int* offsets = null;
        uint* weightPairs = null;
        try
        {
            // The weight rounded to bfloat16 once per call: [N, K / 2] pairs of consecutive terms.
            if (bfloat16) weightPairs = WeightPairs<TD>(w, taps: 0);
            if (grid is { } phases)
            {
                // Every image padded (and split into stride phases) once, as the small kernel reads it.
                padded = DirectConvolution.PaddedCopy(unfold!.Value, phases, x, stripWidth, null);
                offsets = (int*)NativeMemory.Alloc((nuint)Math.Max(k, 1), sizeof(int));
                for (int j = 0; j < k; j++) offsets[j] = phases.Offset(j);
                x = padded;
            }
            nint xAddress = (nint)x, yAddress = (nint)y, biasAddress = (nint)bias, offsetsAddress = (nint)offsets, pairsAddress = (nint)weightPairs;
            int outW = grid is null ? 0 : unfold!.Value.OutW, wideRow = grid?.PhaseWidth ?? 0;
            KernelThreads.For(images * blocks * parts, (long)w.Rows / parts * blockM * k, item =>
            {
                int part = item % parts, image = item / parts / blocks, s0 = item / parts % blocks * blockStrips, s1 = Math.Min(strips, s0 + blockStrips);
                int rows0 = part * split.PartRows, rows1 = Math.Min(view.Rows, rows0 + split.PartRows);
                float[] scratch = ArrayPool<float>.Shared.Rent(checked((int)(blockStrips * stripFloats) + ItemRows * blockCapacity + ItemRows * blockM));
                try
                {
                    fixed (float* packed = scratch)
                    {
                        float* xi = (float*)xAddress + image * imageSize, yi = (float*)yAddress + image * view.Rows * ldy;
                        var source = new StripSource((int*)offsetsAddress, wideRow, outW);
                        if (offsetsAddress == 0)
                        {
                            for (int s = s0; s < s1; s++)
                            {
                                if (transposed) PackStripTransposed(xi, m, ldx, k, packed + (s - s0) * stripFloats, s, stripWidth, columns);
                                else PackStrip(xi, m, ldx, k, packed + (s - s0) * stripFloats, s, stripWidth);
                                if (bfloat16) PairSteps(packed + (s - s0) * stripFloats, k);
                            }
                        }
                        float* tile = packed + blockStrips * stripFloats;
                        var block = new StripBlock(s0, s1, positions, s0);
                        for (int n0 = rows0; n0 < rows1; n0 += ItemRows)
                            if (bfloat16)
                                ItemBFloat16((uint*)pairsAddress, k, packed, block, tile, (float*)biasAddress, yi, ldy, n0, Math.Min(ItemRows, rows1 - n0));
                            else
                                Item<TW, TVec, TD>(view, offsetsAddress == 0 ? packed : xi, block, blockCapacity, tile, (float*)biasAddress, yi, ldy, n0, Math.Min(ItemRows, rows1 - n0), transposed, source);
                    }
                }
                finally
                {
                    ArrayPool<float>.Shared.Return(scratch);
                }
            });
        }
        finally
        {
            if (padded != null) NativeMemory.AlignedFree(padded);
            if (weightPairs != null) NativeMemory.AlignedFree(weightPairs);
            if (offsets != null) NativeMemory.Free(offsets);
        }
    }

    /// <summary>
    /// Whether a convolution's strips are read in place from its padded images (<see cref="PhaseGrid"/>: each reduction
    /// row of a strip is a run of the padded copy, at the row's offset) instead of being packed (tests and the bench set
    /// <see cref="ForcedReadsInPlace"/>; null: this rule): stride-1 3x3 convolutions of at least
    /// <see cref="InPlaceMinChannels"/> channels onto 28x28 outputs, where that made the packed kernels faster than
    /// libtorch's float32 convolution (<see cref="QuantSharp.Modules.ConvolutionCost"/>; 16x16 to 40x40 outputs other
    /// than 28x28 lost, 1.09-1.21x, as did 14x14 and 56x56). Elsewhere packing won: the
    /// padded copy's rows hold the wide grid's extra positions (30 per 28 outputs here), and a strip read in place
    /// gathers each step's two vectors from a different row of the image, where a packed strip is one contiguous run
    /// (docs/BENCHMARKS.md, stop 31: in place 0.95-1.78x packing's time on the strided, few-position, pointwise and
    /// Conv1d layers the packed kernels take, faster in 5 of 72 pairs; 0.66-0.97x on 64->64 on 56x56, whose packing
    /// took 39% of the samples, but there still slower than libtorch's route).
    /// </summary>
    internal static bool ReadsInPlace(Im2Col unfold) => ForcedReadsInPlace ?? InPlacePays(unfold);

    /// <summary><see cref="ReadsInPlace"/>'s rule, whatever a test forces.</summary>
    internal static bool InPlacePays(Im2Col unfold) => unfold.StrideH == 1 && unfold.StrideW == 1
        && unfold.KernelH == 3 && unfold.KernelW == 3 && unfold.DilationH == 1 && unfold.DilationW == 1
        && unfold.OutH == 28 && unfold.OutW == 28 && unfold.Channels >= InPlaceMinChannels;

    /// <summary>
    /// Input channels from which <see cref="ReadsInPlace"/> holds: 128, 256 and 512 gained at every batch measured from
    /// 2 to 8; 64 lost at batch 2 (1.06x float32's time, docs/BENCHMARKS.md stop 31), though it and 16-32 gained at 4.
    /// </summary>
    internal const int InPlaceMinChannels = 128;

    /// <summary>Tests and the bench force <see cref="ReadsInPlace"/> on their thread (null: the rule); both give the same bits.</summary>
    [ThreadStatic] internal static bool? ForcedReadsInPlace;

    /// <summary>
    /// Where an item's strips are: packed (<see cref="Offsets"/> null), or read in place from a padded image whose
    /// reduction rows start at <see cref="Offsets"/>, its positions on a wide grid of rows <see cref="WideRow"/> long of
    /// which the first <see cref="OutW"/> are outputs.
    /// </summary>
    private readonly struct StripSource(int* offsets, int wideRow, int outW)
    {
        public int* Offsets { get; } = offsets;
        public int WideRow { get; } = wideRow;
        public int OutW { get; } = outW;
    }

    /// <summary>
    /// How <see cref="ByPositions"/> cuts its work into items: each image's <see cref="Strips"/> activation strips in
    /// blocks of <see cref="BlockStrips"/>, and the weight's <see cref="WeightRows"/> rows in runs of
    /// <see cref="PartRows"/>. Each item packs its block and decodes its rows (the micro-kernel's tiles give each row the
    /// same sums, in the same order, wherever a run starts, so every cut gives the same bits).
    /// </summary>
    internal readonly record struct PositionSplit(int Strips, int BlockStrips, int WeightRows, int PartRows, bool Packs = true)
    {
        /// <summary>Weight rows of a run are a multiple of this (two 8-row tiles).</summary>
        internal const int PartStep = 16;

        /// <summary>
        /// What decoding a weight row costs in eighths of multiplying it into one strip (<see cref="BusiestLoad"/>):
        /// a float16 chunk's decode and store take about 6 vector operations per 16 elements against the strip's
        /// broadcast and two multiply-adds per element; int8 less, int4 about as much.
        /// </summary>
        internal const int DecodeEighths = 1;

        /// <summary>
        /// What packing a strip costs in eighths of multiplying one weight row into it: moving 32 floats per reduction
        /// step through the register transposes, about three rows' broadcasts and multiply-adds. Every item packs its
        /// own block, so a block in two runs of weight rows is packed twice (32 x 256 at 64 rows: two items of both
        /// strips and half the weight took 0.78-0.86x float32's time against 0.67-0.71x for two of one strip each).
        /// </summary>
        internal const int PackEighths = 24;

        /// <summary>Blocks of strips per image.</summary>
        public int Blocks => (Strips + BlockStrips - 1) / BlockStrips;

        /// <summary>Runs of weight rows.</summary>
        public int Parts => (WeightRows + PartRows - 1) / PartRows;

        /// <summary>
        /// Blocks as large as fit in <see cref="PositionBlockBytes"/> (<paramref name="fits"/> strips) with at least two
        /// items per thread, so that no thread waits on one long item. Where that leaves few items (up to 16 per
        /// thread), the cut whose busiest thread has the least work (<see cref="BusiestLoad"/>: multiplying, decoding
        /// and packing), of blocks of one or two strips and the weight whole or in one run per thread; on a tie, the fewer
        /// items. 512 x 512 at 128 rows (four strips at 512 bits): four items of one strip took 5-15% longer than two of
        /// two (each item decodes the whole weight); at 160 rows (five strips) one thread multiplied three strips against
        /// the other's two, where blocks of two over the weight's halves even them out (int8 1.04-1.13x float32's time to
        /// 0.97-1.06x, float16 1.12-1.22x to 1.01-1.02x; docs/BENCHMARKS.md, stop 17).
        /// </summary>
        /// <param name="strips">Activation strips per image.</param>
        /// <param name="images">Images (1 for activation rows).</param>
        /// <param name="fits">Strips whose packed block fits in <see cref="PositionBlockBytes"/> (at least 1).</param>
        /// <param name="weightRows">The weight's rows.</param>
        /// <param name="threads">Threads of the call.</param>
        /// <param name="packs">False where the strips are read in place (<see cref="ReadsInPlace"/>): no item packs.</param>
        public static PositionSplit For(int strips, int images, int fits, int weightRows, int threads, bool packs = true)
        {
            int first = (int)Math.Max(1, Math.Min(fits, (long)strips * images / (2L * threads)));
            int rows = Math.Max(1, weightRows);
            var best = new PositionSplit(strips, first, rows, rows, packs);
            if ((long)images * best.Blocks > 16L * threads) return best;
            long bestLoad = long.MaxValue; // the first candidate is the first rule's cut
            int largest = first == 1 && fits >= 2 ? 2 : first;
            for (int blockStrips = first; blockStrips <= largest; blockStrips++)
            {
                foreach (int parts in (ReadOnlySpan<int>)[1, threads])
                {
                    int partRows = parts == 1 ? rows : Math.Min(rows, ((rows + parts - 1) / parts + PartStep - 1) / PartStep * PartStep);
                    var candidate = new PositionSplit(strips, blockStrips, rows, partRows, packs);
                    long load = candidate.BusiestLoad(images, threads);
                    if (load < bestLoad || (load == bestLoad && candidate.Blocks * candidate.Parts < best.Blocks * best.Parts))
                        (best, bestLoad) = (candidate, load);
                }
            }
            return best;
        }

        /// <summary>
        /// The work of the busiest of <paramref name="threads"/> threads, in eighths of a strip times a weight row (an
        /// item of <c>s</c> strips and <c>r</c> rows: <c>r * (8 s + </c><see cref="DecodeEighths"/><c>) + s * </c><see cref="PackEighths"/>), when each
        /// item in turn goes to the thread with the least so far, as <see cref="KernelThreads.For"/>'s shared counter
        /// hands items to whichever thread is free (it hands out runs of two from 16 items per thread, which this ignores).
        /// </summary>
        internal long BusiestLoad(int images, int threads)
        {
            Span<long> load = threads <= 64 ? stackalloc long[threads] : new long[threads];
            for (int item = 0; item < images * Blocks * Parts; item++)
            {
                int s0 = item / Parts % Blocks * BlockStrips, n0 = item % Parts * PartRows;
                int least = 0;
                for (int t = 1; t < threads; t++)
                    if (load[t] < load[least]) least = t;
                int strips = Math.Min(BlockStrips, Strips - s0);
                load[least] += (long)Math.Min(PartRows, WeightRows - n0) * (8 * strips + DecodeEighths) + (Packs ? PackEighths * strips : 0);
            }
            long busiest = 0;
            foreach (long l in load) busiest = Math.Max(busiest, l);
            return busiest;
        }
    }

    /// <summary>
    /// Few activation rows (fewer than <see cref="WeightStripsMaxRows"/>) against a weight of many rows, with the
    /// operands' roles swapped: each work item owns a strip of <c>2 * Count</c> weight rows, decodes each reduction block of them into a tile
    /// and transposes it (<c>wt[k][row]</c>, so one vector holds one column of the strip's rows), then the micro-kernel
    /// broadcasts tiles of activation rows straight from <paramref name="x"/> against it, accumulating
    /// into the item's <c>[rows][strip]</c> block of y. Nothing is packed but the activations' last partial tile; the
    /// weight is decoded exactly once; the output needs no transposition. The sums are those of the other layouts (same
    /// products, same order of additions), so the bits are too.
    /// </summary>
    private static void ByWeightStrips<TW, TVec, TD>(in WeightView w, float* x, int m, nint ldx, float* bias, float* y, nint ldy)
        where TW : IFloatWidth<TVec> where TVec : struct where TD : IWeightDecoder
    {
        int k = w.Cols, width = 2 * TW.Count, kk = Math.Max(k, 1);
        bool wide = Wide<TW, TVec>();
        int strips = (w.Rows + width - 1) / width;
        int[] starts = MicroKernel.TileStarts(m, wide);
        int tiles = starts.Length - 1, padded = starts[tiles];
        // Activation rows the micro-kernel cannot read from x itself: those of the last tile when it passes the last
        // row, zero-padded to the whole tile.
        int copiedFrom = padded > m ? starts[tiles - 1] : m;
        int copied = (padded - copiedFrom) * kk;
        float[]? copy = copied > 0 ? ArrayPool<float>.Shared.Rent(copied) : null;
        try
        {
            fixed (float* xc = copy)
            {
                if (xc != null)
                {
                    int rowsCopied = m - copiedFrom; // then zero rows up to the whole tile
                    new Span<float>(xc + (nint)rowsCopied * kk, copied - rowsCopied * kk).Clear();
                    for (int i = copiedFrom; i < m; i++)
                        new ReadOnlySpan<float>(x + i * ldx, k).CopyTo(new Span<float>(xc + (nint)(i - copiedFrom) * kk, k));
                }
                var view = w;
                int blockCapacity = Math.Min(k, BlockTarget);
                // Fewer weight strips than threads (a weight of 32 rows or fewer at 512 bits) on a call that runs on
                // several threads: the tiles of activation rows are split into groups too, each item decoding its
                // strip again (a small cost against idle threads; on one thread only a cost).
                int groups = KernelThreads.RunsInParallel((long)strips * width * m * k) ? Math.Clamp(KernelThreads.Count / strips, 1, tiles) : 1;
                nint xAddress = (nint)x, copyAddress = (nint)xc, yAddress = (nint)y, biasAddress = (nint)bias;
                KernelThreads.For(strips * groups, (long)width * m * k / groups, item =>
                {
                    int n0 = item % strips * width, rows = Math.Min(width, view.Rows - n0), group = item / strips;
                    // Activation rows [r0, r1) of this group: whole tiles (r1 passes m on the padded last tile).
                    int t0 = group * tiles / groups, t1 = (group + 1) * tiles / groups, r0 = starts[t0], r1 = starts[t1];
                    float[] scratch = ArrayPool<float>.Shared.Rent(2 * width * blockCapacity + padded * width);
                    try
                    {
                        fixed (float* a = scratch)
                        {
                            float* wt = a + width * blockCapacity, c = wt + width * blockCapacity;
                            new Span<float>(c + r0 * width, (r1 - r0) * width).Clear();
                            bool finite = FiniteHalves<TD>(view, n0, rows);
                            for (int k0 = 0; k0 < k;)
                            {
                                int k1 = BlockEnd(view, k0, TW.Count), steps = k1 - k0;
                                DecodeRows<TW, TVec, TD>(view, n0, rows, k0, k1, a, blockCapacity, finite);
                                // The strip's rows, transposed as activation rows are packed (lanes past the weight's last row: zeros).
                                PackStrip(a, rows, blockCapacity, steps, wt, 0, width);
                                for (int t = t0; t < t1; t++)
                                {
                                    int i0 = starts[t], h = starts[t + 1] - i0;
                                    bool direct = i0 < copiedFrom;
                                    float* xs = direct ? (float*)xAddress + i0 * ldx : (float*)copyAddress + (nint)(i0 - copiedFrom) * kk;
                                    nint ld = direct ? ldx : kk;
                                    MicroKernel.RunTile<FloatMicro<TW, TVec>, TVec, float>(h, xs + k0, ld, wt, steps, c + i0 * width, width);
                                }
                                k0 = k1;
                            }
                            float* b = (float*)biasAddress;
                            for (int i = r0, end = Math.Min(r1, m); i < end; i++)
                            {
                                float* dst = (float*)yAddress + i * ldy + n0, src = c + i * width;
                                for (int r = 0; r < rows; r++) dst[r] = src[r] + (b == null ? 0f : b[n0 + r]);
                            }
                        }
                    }
                    finally
                    {
                        ArrayPool<float>.Shared.Return(scratch);
                    }
                });
            }
        }
        finally
        {
            if (copy is not null) ArrayPool<float>.Shared.Return(copy);
        }
    }

    /// <summary>Strips <c>[S0, S1)</c> of a call with <paramref name="M"/> activation rows; the packed pointer holds strips from <paramref name="First"/> on.</summary>
    private readonly record struct StripBlock(int S0, int S1, int M, int First);

    /// <summary>Reduction steps packed at once: the block of the strip (<c>PackBlock * width</c> floats, 8 KiB at 32 lanes) stays in L1 while every row is written into it.</summary>
    private const int PackBlock = 64;

    /// <summary>Writes strip <paramref name="s"/> of <c>x^T</c> into <paramref name="strip"/>: <c>strip[kk * width + lane] = x[s * width + lane, kk]</c>.</summary>
    /// <remarks>
    /// Eight rows at a time go through 8 x 8 register transposes (<see cref="Transposes.Transpose8x8(float*, nint, float*, nint)"/>)
    /// where the CPU has AVX (the scalar loop, one strided store per element, cost about 2.3 cycles per element, a
    /// quarter of a 64 x 800 layer's call at 64 rows), block by block of <see cref="PackBlock"/> steps: walking each
    /// group of eight rows over the whole length wrote 32 bytes per cache line of a strip larger than L1 (100 KiB at
    /// K = 800), so the next group fetched the lines again. It only moves floats.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackStrip(float* x, int m, nint ldx, int k, float* strip, int s, int width)
    {
        int row0 = s * width, valid = Math.Clamp(m - row0, 0, width);
        int vectorLanes = Avx.IsSupported ? valid / 8 * 8 : 0;
        for (int k0 = 0; k0 < k; k0 += PackBlock)
        {
            int n = Math.Min(PackBlock, k - k0);
            float* block = strip + (nint)k0 * width;
            for (int lane = 0; lane < vectorLanes; lane += 8)
            {
                float* src = x + (row0 + lane) * ldx + k0;
                float* dst = block + lane;
                int kk = 0;
                for (; kk + 8 <= n; kk += 8) Transposes.Transpose8x8(src + kk, ldx, dst + (nint)kk * width, width);
                for (; kk < n; kk++)
                    for (int r = 0; r < 8; r++) dst[(nint)kk * width + r] = src[r * ldx + kk];
            }
            for (int lane = vectorLanes; lane < width; lane++)
            {
                float* dst = block + lane;
                if (lane >= valid)
                {
                    for (int kk = 0; kk < n; kk++) dst[(nint)kk * width] = 0f;
                    continue;
                }
                float* src = x + (row0 + lane) * ldx;
                for (int kk = 0; kk < n; kk++) dst[(nint)kk * width] = src[k0 + kk];
            }
        }
    }

    /// <summary>
    /// Strip <paramref name="s"/> of <c>x^T</c>, into <paramref name="strip"/>, from <c>x^T</c> itself (each packed step copies a run of
    /// <paramref name="width"/> contiguous floats) or from the image of <paramref name="unfold"/> (<see cref="Im2Col.PackStrip"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackStripTransposed(float* xt, int m, nint ldx, int k, float* strip, int s, int width, Im2Col? unfold)
    {
        int row0 = s * width, valid = Math.Min(width, m - row0);
        if (unfold is { } u)
        {
            u.PackStrip(xt, row0, valid, width, strip);
            return;
        }
        for (int kk = 0; kk < k; kk++)
        {
            float* dst = strip + (nint)kk * width;
            new ReadOnlySpan<float>(xt + kk * ldx + row0, valid).CopyTo(new Span<float>(dst, valid));
            new Span<float>(dst + valid, width - valid).Clear();
        }
    }

    /// <summary>One work item: weight rows <c>[n0, n0 + rows)</c> (<paramref name="scratch"/> holds <c>rows</c> rounded up to whole tiles x (<paramref name="blockCapacity"/> + the strips' lanes) floats) against the activation rows of the strips of <paramref name="block"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Item<TW, TVec, TD>(in WeightView w, float* xt, StripBlock block, int blockCapacity, float* scratch, float* bias, float* y, nint ldy, int n0, int rows, bool transposed, StripSource source = default)
        where TW : IFloatWidth<TVec> where TVec : struct where TD : IWeightDecoder
    {
        int k = w.Cols, stripWidth = 2 * TW.Count;
        int ldt = (block.S1 - block.S0) * stripWidth;      // y^T row length
        bool wide = Wide<TW, TVec>();
        int tileRows = MicroKernel.PaddedRows(rows, wide);
        float* a = scratch;                               // [tileRows][blockCapacity] decoded weights
        float* yt = scratch + tileRows * blockCapacity;   // [tileRows][ldt] partial y^T
        new Span<float>(yt, tileRows * ldt).Clear();
        // Rows past the last weight row stay zero: the micro-kernel always runs whole tiles.
        new Span<float>(a + rows * blockCapacity, (tileRows - rows) * blockCapacity).Clear();
        bool finite = FiniteHalves<TD>(w, n0, rows);
        for (int k0 = 0; k0 < k;)
        {
            int k1 = BlockEnd(w, k0, TW.Count);
            DecodeRows<TW, TVec, TD>(w, n0, rows, k0, k1, a, blockCapacity, finite);
            for (int s = block.S0; s < block.S1; s++)
            {
                float* c = yt + (s - block.S0) * stripWidth;
                // In place: the strip's positions from s * stripWidth on the wide grid, each step at its row's offset.
                if (source.Offsets != null)
                    Tiles<TW, TVec, OffsetSteps>(rows, wide, a, blockCapacity, xt + (nint)s * stripWidth, source.Offsets + k0, k1 - k0, c, ldt);
                else
                    Tiles<TW, TVec, PackedSteps>(rows, wide, a, blockCapacity, xt + ((nint)(s - block.First) * k + k0) * stripWidth, null, k1 - k0, c, ldt);
            }
            k0 = k1;
        }
        int i0 = block.S0 * stripWidth, count = Math.Min(block.M, block.S1 * stripWidth) - i0;
        if (source.Offsets != null)
        {
            WriteWide(yt, ldt, rows, bias, y, ldy, n0, i0, count, source.WideRow, source.OutW);
            return;
        }
        if (transposed)
        {
            WriteTransposed(yt, ldt, rows, bias, y, ldy, n0, i0, count);
            return;
        }
        // y rows are far apart: y^T (in cache) is transposed into them 8 x 8 where the CPU has AVX, each output row's
        // run written contiguously; the same sums plus the same bias either way.
        int r8 = 0, i8 = Avx.IsSupported ? count / 8 * 8 : 0;
        if (i8 > 0)
            for (; r8 + 8 <= rows; r8 += 8)
            {
                var add = bias == null ? Vector256<float>.Zero : Vector256.Load(bias + n0 + r8);
                for (int i = 0; i < i8; i += 8) Transposes.Transpose8x8(yt + r8 * ldt + i, ldt, y + (i0 + i) * ldy + n0 + r8, ldy, true, add);
            }
        for (int i = 0; i < count; i++)
        {
            float* dst = y + (i0 + i) * ldy + n0;
            for (int r = i < i8 ? r8 : 0; r < rows; r++) dst[r] = yt[r * ldt + i] + (bias == null ? 0f : bias[n0 + r]);
        }
    }

    /// <summary>
    /// Whether a call may multiply in bfloat16 (<see cref="ItemBFloat16"/>): an even reduction length, so that every row of
    /// the weight rounded to bfloat16 (<see cref="PairWeightRow"/>) is whole pairs of terms.
    /// </summary>
    internal static bool BFloat16Fits(in WeightView w) => w.Cols % 2 == 0;

    /// <summary>Weight rows per tile of the bfloat16 micro-kernel (<see cref="Vnni512Kernel.MicroBFloat16"/>).</summary>
    private const int BFloat16TileRows = 6;

    /// <summary>
    /// Whether <see cref="ItemBFloat16"/> runs the generated <see cref="Vnni512Kernel.MicroBFloat16"/> where the CPU has
    /// AVX512-BF16 (tests turn it off to run <see cref="Vnni512Kernel.MicroBFloat16Twin"/>, which runs everywhere).
    /// </summary>
    internal static volatile bool UseNativeBFloat16 = true;

    /// <summary>
    /// A packed strip of <paramref name="k"/> steps (<c>strip[kk * 32 + lane]</c>, float32) rewritten in place as
    /// bfloat16 pairs: <c>pairs[g * 32 + lane]</c> holds step <c>2g</c> in its low half and step <c>2g + 1</c> (zero past
    /// the last step) in its high half, each rounded to nearest even (<see cref="HalfKernel.Bf512"/>). Pair g is
    /// written where steps before <c>2g</c> were, after both of its steps are read.
    /// </summary>
    internal static void PairSteps(float* strip, int k)
    {
        const int Width = 32;
        uint* pairs = (uint*)strip;
        for (int g = 0, n = (k + 1) / 2; g < n; g++)
        {
            float* even = strip + (nint)2 * g * Width, odd = even + Width;
            bool hasOdd = 2 * g + 1 < k;
            for (int l = 0; l < Width; l += 16)
            {
                var low = HalfKernel.Bf512(Vector512.Load((uint*)even + l));
                var high = hasOdd ? HalfKernel.Bf512(Vector512.Load((uint*)odd + l)) : Vector512<uint>.Zero;
                (low | high << 16).Store(pairs + (nint)g * Width + l);
            }
        }
    }

    /// <summary>
    /// Row <paramref name="n"/> of <paramref name="w"/> decoded as the float kernels decode it (<see cref="DecodeSlice"/>'s
    /// chunks and elements) and rounded to bfloat16 (<see cref="HalfKernel.Bf512"/>, <see cref="HalfKernel.ToBFloat16Bits"/>) into <paramref name="dst"/>
    /// (K values), chunk by chunk with no float row in between; groups shorter than a 512-bit chunk go through
    /// <see cref="DecodeRows"/> into a float row first. Tiered as any method, not compiled once fully optimized
    /// (<c>AggressiveOptimization</c>, as until stop 36): so compiled on its first call, here from the pair-image
    /// route, the int4 decoder's, <see cref="Float512.Interleave"/>'s and <see cref="HalfKernel.Bf512"/>'s calls stayed
    /// calls for the process (a profile showed them as functions of their own), and ResNet 512->512 on 7x7 at batch 1
    /// in int4, on packed strips after the conv table's pair-image layers, took 1.5x float32's time against 0.64x
    /// tiered (docs/BENCHMARKS.md, stop 36).
    /// </summary>
    internal static void PairWeightRow<TD>(in WeightView w, int n, ushort* dst) where TD : IWeightDecoder
    {
        int k = w.Cols, g = w.GroupSize;
        if (QuantizedMatMul.ChunkExceedsGroups(Float512.Count, w))
        {
            float[] rented = ArrayPool<float>.Shared.Rent(k);
            try
            {
                fixed (float* p = rented)
                {
                    DecodeRows<Float512, Vector512<float>, TD>(w, n, 1, 0, k, p, k, finite: false);
                    HalfKernel.ToBFloat16(new ReadOnlySpan<float>(p, k), new Span<ushort>(dst, k));
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(rented);
            }
            return;
        }
        byte* row = w.Data + n * w.RowBytes;
        for (int kk = 0; kk < k;)
        {
            int gi = kk / g, end = Math.Min(k, (gi + 1) * g);
            var (scale, offset) = QuantizedMatMul.GroupScale<TD>(w, n, gi);
            var (gp, gq) = TD.Prepare<Float512, Vector512<float>>(scale, offset);
            for (; kk + 32 <= end; kk += 32)
            {
                var (wa, wb) = TD.Decode<Float512, Vector512<float>>(row, kk, gp, gq);
                if (TD.Deinterleaved) (wa, wb) = Float512.Interleave(wa, wb);
                Vector512.Narrow(HalfKernel.Bf512(wa.AsUInt32()), HalfKernel.Bf512(wb.AsUInt32())).Store(dst + kk);
            }
            for (; kk < end; kk++) dst[kk] = HalfKernel.ToBFloat16Bits(TD.One(row, kk) * scale + offset);
        }
    }

    /// <summary>
    /// A work item of a transposed call in bfloat16 (<see cref="Run"/>'s <c>bfloat16</c>): weight rows <c>[n0, n0 +
    /// rows)</c> of <paramref name="weightPairs"/> (the weight rounded to bfloat16 once per call, <c>[N, k / 2]</c> pairs,
    /// zero rows up to whole tiles) against the strips of <paramref name="block"/>, packed as bfloat16 pairs
    /// (<see cref="PairSteps"/>) at <paramref name="xt"/>: <see cref="Vnni512Kernel.MicroBFloat16"/> in tiles of six rows,
    /// reduction blocks of <see cref="BlockTarget"/> steps (the block of a strip stays in L1), sums in float32 in
    /// <c>y^T</c> (<paramref name="scratch"/>), then written with the bias as in <see cref="Item"/>. <c>vdpbf16ps</c> does
    /// two multiply-adds per lane per instruction, twice <c>vfmadd231ps</c>; the rounding is libtorch's bfloat16
    /// convolution's (inputs and weights to bfloat16, sums in float32).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ItemBFloat16(uint* weightPairs, int k, float* xt, StripBlock block, float* scratch, float* bias, float* y, nint ldy, int n0, int rows)
    {
        const int Width = 32;
        int ldt = (block.S1 - block.S0) * Width, half = k / 2;
        float* yt = scratch; // [tiles * 6][ldt] partial y^T
        new Span<float>(yt, (rows + BFloat16TileRows - 1) / BFloat16TileRows * BFloat16TileRows * ldt).Clear();
        bool native = UseNativeBFloat16 && Vnni512Kernel.BFloat16Supported;
        for (int g0 = 0; g0 < half; g0 += BlockTarget / 2)
        {
            int pairs = Math.Min(half - g0, BlockTarget / 2);
            for (int s = block.S0; s < block.S1; s++)
            {
                uint* b = (uint*)(xt + (nint)(s - block.First) * k * Width) + (nint)g0 * Width;
                for (int t = 0; t < rows; t += BFloat16TileRows)
                {
                    uint* a = weightPairs + (nint)(n0 + t) * half + g0;
                    float* c = yt + t * ldt + (s - block.S0) * Width;
                    if (native) Vnni512Kernel.MicroBFloat16(a, (nint)half * 4, b, pairs, c, ldt * 4);
                    else Vnni512Kernel.MicroBFloat16Twin(a, (nint)half * 4, b, pairs, c, ldt * 4);
                }
            }
        }
        int i0 = block.S0 * Width;
        WriteTransposed(yt, ldt, rows, bias, y, ldy, n0, i0, Math.Min(block.M, block.S1 * Width) - i0);
    }

    /// <summary>
    /// A transposed item's output on a wide grid (<see cref="PhaseGrid"/>): positions <c>[i0, i0 + count)</c> of grid rows
    /// <paramref name="wideRow"/> long, of which each row's first <paramref name="outW"/> are output positions (the rest
    /// are dropped), written with the bias into <c>y</c>'s rows <c>[n0, n0 + rows)</c>; with <paramref name="factors"/>,
    /// each sum first multiplied by its row's factor in double and rounded to float32, as the integer kernels' epilogue
    /// does (<see cref="GroupedCodes"/>).
    /// </summary>
    private static void WriteWide(float* yt, int ldt, int rows, float* bias, float* y, nint ldy, int n0, int i0, int count, int wideRow, int outW, double* factors = null)
    {
        // A grid without dropped columns (a pointwise call's) is one run from row to row.
        bool whole = wideRow == outW;
        for (int r = 0; r < rows; r++)
        {
            float b = bias == null ? 0f : bias[n0 + r];
            for (int q = i0, end = i0 + count; q < end;)
            {
                int oh = q / wideRow, ow = q - oh * wideRow, run = whole ? end - q : Math.Min(end - q, wideRow - ow);
                float* dst = y + (n0 + r) * ldy + (nint)oh * outW + ow, src = yt + r * ldt + (q - i0);
                int n = whole ? run : Math.Min(run, outW - ow);
                if (factors == null)
                    AddRun(src, dst, n, b);
                else
                    ScaleRun(src, dst, n, factors[n0 + r], b);
                q += run;
            }
        }
    }

    /// <summary>
    /// <c>dst[j] = src[j] + bias</c> for <c>j &lt; n</c> (<paramref name="src"/> and <paramref name="dst"/> apart): a vector
    /// of the widest float width the CPU and <see cref="Simd"/> allow (<see cref="Float512"/>, <see cref="Float256"/>,
    /// <see cref="Float128"/>) at a time, the last vector again from <c>n - Count</c> (the same values) where n is no
    /// multiple; element by element below four values or with no vectors. Every path gives the
    /// scalar loop's bits (the same single additions); the scalar loop was 27% of the samples of a 1x1 64->64 call on
    /// 56x56 from pair images.
    /// </summary>
    internal static void AddRun(float* src, float* dst, int n, float bias)
    {
        if (Float512.IsSupported && n >= Float512.Count) AddRun<Float512, Vector512<float>>(src, dst, n, bias);
        else if (Float256.IsSupported && n >= Float256.Count) AddRun<Float256, Vector256<float>>(src, dst, n, bias);
        else if (Float128.IsSupported && n >= Float128.Count) AddRun<Float128, Vector128<float>>(src, dst, n, bias);
        else
            for (int j = 0; j < n; j++) dst[j] = src[j] + bias;
    }

    /// <summary><see cref="AddRun(float*, float*, int, float)"/> in vectors of <typeparamref name="TW"/> (n at least one vector).</summary>
    private static void AddRun<TW, TVec>(float* src, float* dst, int n, float bias) where TW : IFloatWidth<TVec> where TVec : struct
    {
        var b = TW.Create(bias);
        for (int j = 0; ; j += TW.Count)
        {
            if (j + TW.Count > n) j = n - TW.Count;
            TW.Store(TW.Add(TW.Load(src + j), b), dst + j);
            if (j + TW.Count == n) return;
        }
    }

    /// <summary>
    /// <c>dst[j] = (float)(factor * src[j]) + bias</c> for <c>j &lt; n</c>, the product in double: a vector of the
    /// integer GEMM's epilogue (<see cref="Epilogue512"/>, <see cref="Epilogue256"/>) at a time, the last vector again
    /// from <c>n - Count</c> (the same values) where n is no multiple; element by element below one vector. The
    /// conversions round to nearest as the casts do, so every path gives the scalar loop's bits.
    /// </summary>
    private static void ScaleRun(float* src, float* dst, int n, double factor, float bias)
    {
        if (Epilogue512.IsSupported && n >= Epilogue512.Count) ScaleRun<Epilogue512, Vector512<double>>(src, dst, n, factor, bias);
        else if (Epilogue256.IsSupported && n >= Epilogue256.Count) ScaleRun<Epilogue256, Vector256<double>>(src, dst, n, factor, bias);
        else
            for (int j = 0; j < n; j++) dst[j] = (float)(factor * src[j]) + bias;
    }

    /// <summary><see cref="ScaleRun(float*, float*, int, double, float)"/> in vectors of <typeparamref name="TE"/> (n at least one vector).</summary>
    private static void ScaleRun<TE, TV>(float* src, float* dst, int n, double factor, float bias) where TE : IEpilogueWidth<TV> where TV : struct
    {
        var f = TE.Create(factor);
        for (int j = 0; ; j += TE.Count)
        {
            if (j + TE.Count > n) j = n - TE.Count;
            TE.StoreSingle(TE.Multiply(TE.LoadSingle(src + j), f), bias, dst + j);
            if (j + TE.Count == n) return;
        }
    }

    /// <summary>
    /// Whether a bfloat16 convolution reads its strips in place from pair images (<see cref="ByPairImages"/>) instead of
    /// packing them: an even number of input channels (a pair image pairs them), and, unless a test or the bench sets
    /// <see cref="ForcedPairsInPlace"/>, <see cref="PairsInPlacePays"/>.
    /// </summary>
    internal static bool ReadsPairsInPlace(Im2Col unfold, long outputs) =>
        ForcedPairsInPlace is { } forced ? forced && unfold.Channels % 2 == 0 : PairsInPlacePays(unfold, outputs);

    /// <summary>
    /// <see cref="ReadsPairsInPlace"/>'s rule: an even channel count, and more than one tap onto output rows of at least
    /// <see cref="PairsInPlaceMinWidth"/> positions and at least <see cref="PairsInPlaceMinPositions"/> positions per
    /// image; or a pointwise call (1x1, stride 1, no padding) into at least <see cref="PairsInPlacePointwiseMinOutputs"/>
    /// channels of at least <see cref="PairsInPlacePointwiseMinImages"/> images onto at least
    /// <see cref="PairsInPlacePointwiseMinPositions"/> positions per image, or of at least
    /// <see cref="PairsInPlacePointwiseManyImages"/> onto at least <see cref="PairsInPlacePointwiseManyMinPositions"/> from
    /// at least <see cref="PairsInPlacePointwiseManyMinChannels"/> channels. Measured on the Zen 5 VM, both
    /// implementations forced on the conv table's layers with an even channel count (docs/BENCHMARKS.md, stop 36): pair
    /// images faster on the 3x3 layers onto 28x28 to 112x112 (stride 1 and 2) and the long Conv1d layers, where packing
    /// unfolds every position's taps (ResNet 64->64 on 56x56: 0.5-0.8x the packed strips' time); onto 14x14 even at batch 1
    /// and faster at batch 8 (0.62-0.77x float32's time against 0.80-0.98x); slower on the Conv1d layers over 48 and 128
    /// steps (0.71-0.89x against 0.44-0.76x), on narrower outputs, whose wide grid adds two or more positions per row of 7
    /// to 11 (7x7, 8x8, MNIST conv2). The pointwise part was measured again on the Zen 4 VM once both routes' writers added
    /// the bias a vector at a time (stop 51; both forced, paired with float32 in two processes, one of each order, int8,
    /// 1-8 images): onto 56x56 pair images from 2 images (256->64 and 256->128 0.57-0.87x float32's time against
    /// 0.72-1.05x for packed strips, 64->64 0.60-1.22x against 0.75-1.48x; 64->256 mixed at 2 images, pair images from 3),
    /// a tie at one; onto 28x28 and smaller packed strips (64->128 and 80->320 onto 28x28, 64->384, 256->256 and 1024->256
    /// onto 14x14, 512->2048 and 2048->512 onto 7x7: 0.46-0.94x against 0.56-2.52x), but from 4 images over 128 or more
    /// channels onto 28x28 (512->128 0.62-0.69x against 0.68-0.88x, 128->512 0.55-0.59x against 0.55-0.66x).
    /// </summary>
    internal static bool PairsInPlacePays(Im2Col unfold, long outputs)
    {
        if (unfold.Channels % 2 != 0) return false;
        if (unfold.IsPointwise)
            return outputs >= PairsInPlacePointwiseMinOutputs
                && ((unfold.Images >= PairsInPlacePointwiseMinImages && unfold.Positions >= PairsInPlacePointwiseMinPositions)
                    || (unfold.Images >= PairsInPlacePointwiseManyImages && unfold.Positions >= PairsInPlacePointwiseManyMinPositions
                        && unfold.Channels >= PairsInPlacePointwiseManyMinChannels));
        return unfold.KernelH * unfold.KernelW > 1 && unfold.OutW >= PairsInPlaceMinWidth && unfold.Positions >= PairsInPlaceMinPositions;
    }

    /// <summary>Output row length from which <see cref="PairsInPlacePays"/> (more than one tap).</summary>
    internal const int PairsInPlaceMinWidth = 14;

    /// <summary>Output positions per image from which <see cref="PairsInPlacePays"/> (more than one tap).</summary>
    internal const int PairsInPlaceMinPositions = 196;

    /// <summary>Images from which a pointwise call reads pair images of <see cref="PairsInPlacePointwiseMinPositions"/> or more positions (<see cref="PairsInPlacePays"/>).</summary>
    internal const int PairsInPlacePointwiseMinImages = 2;

    /// <summary>Positions per image from which a pointwise call of <see cref="PairsInPlacePointwiseMinImages"/> or more images reads pair images (<see cref="PairsInPlacePays"/>): 56x56.</summary>
    internal const int PairsInPlacePointwiseMinPositions = 3136;

    /// <summary>Images from which a pointwise call onto fewer than <see cref="PairsInPlacePointwiseMinPositions"/> positions reads pair images (<see cref="PairsInPlacePays"/>).</summary>
    internal const int PairsInPlacePointwiseManyImages = 4;

    /// <summary>Positions per image from which a pointwise call of <see cref="PairsInPlacePointwiseManyImages"/> or more images reads pair images (<see cref="PairsInPlacePays"/>): 28x28.</summary>
    internal const int PairsInPlacePointwiseManyMinPositions = 784;

    /// <summary>Input channels from which a pointwise call of <see cref="PairsInPlacePointwiseManyImages"/> or more images onto fewer than <see cref="PairsInPlacePointwiseMinPositions"/> positions reads pair images (<see cref="PairsInPlacePays"/>).</summary>
    internal const int PairsInPlacePointwiseManyMinChannels = 128;

    /// <summary>Output channels from which a pointwise call reads pair images (<see cref="PairsInPlacePays"/>).</summary>
    internal const int PairsInPlacePointwiseMinOutputs = 64;

    /// <summary>Tests and the bench force <see cref="ReadsPairsInPlace"/> on their thread (null: the rule; false: packed strips).</summary>
    [ThreadStatic] internal static bool? ForcedPairsInPlace;

    /// <summary>
    /// A bfloat16 convolution (<see cref="Run"/>'s <c>bfloat16</c>) whose strips are read in place: each image is copied
    /// once into a pair image (<see cref="PairImages"/>: channel pair p's plane holds channels 2p and 2p + 1 rounded to
    /// bfloat16, as one 32-bit pair per padded pixel, in the layout of a <see cref="PhaseGrid"/> of C / 2 channels) and
    /// the weight once into pairs of channels (<see cref="PairChannels"/>: <c>[N, C / 2, taps]</c>), so that for one tap
    /// the strip's groups are the pair planes, one plane apart, and the weight's are one pair of taps apart:
    /// <see cref="Vnni512Kernel.MicroBFloat16Taps"/> per strip, block of <see cref="PairBlock"/> channel pairs and tile
    /// of up to six rows, over all taps in one call, sums in float32 over the wide grid's positions, written with the bias
    /// (<see cref="WriteWide"/>). Nothing is unfolded: the packed route's im2col and pairing passes were 44% of the
    /// samples of 64->64 on 56x56. The sums are those of the packed route in another order (blocks of channel pairs,
    /// then taps, then the block's pairs). With <paramref name="groups"/>, a grouped convolution: output channel n reads
    /// the pair planes of its group, <c>n / (N / groups)</c> (<see cref="GroupedBFloat16"/>).
    /// </summary>
    /// <remarks>
    /// With <paramref name="codes"/> (<see cref="GroupedCodes"/>) the images are quantized as they are paired, each pair
    /// image holding the codes less the zero point (<c>clamp(round(x / s) + z, qmin, qmax) - z</c>, exact in bfloat16),
    /// the weight's values are its codes less their zero points, every sum is an exact integer, and each is written as
    /// <c>(float)(factors[n] * sum) + bias[n]</c> (<paramref name="factors"/>: input scale x row scale in double).
    /// </remarks>
    private static void ByPairImages<TD>(in WeightView w, float* x, float* bias, float* y, nint ldy, Im2Col u, int groups = 1,
        InputFakeQuantization? codes = null, double* factors = null) where TD : IWeightDecoder
    {
        const int Width = 32;
        int taps = u.KernelH * u.KernelW, pairs = u.Channels / 2, k = w.Cols, half = k / 2, images = u.Images;
        int groupPairs = pairs / groups, groupRows = w.Rows / groups;
        var grid = new PhaseGrid(new Im2Col(pairs, u.Height, u.Width, u.KernelH, u.KernelW, u.StrideH, u.StrideW, u.PadH, u.PadW, u.DilationH, u.DilationW, images));
        nint planeStride = PairPlaneStride(grid, pairs), imageValues = planeStride * pairs;
        int positions = u.OutH * grid.PhaseWidth, strips = (positions + Width - 1) / Width;
        // Each tap's strip offset in bytes, for the micro-kernel that passes all taps in one call.
        nint* tapBytes = stackalloc nint[taps];
        for (int t = 0; t < taps; t++) tapBytes[t] = (nint)grid.Offset(t) * sizeof(uint);
        nint tapBytesAddress = (nint)tapBytes;
        var split = PositionSplit.For(strips, images, Math.Max(strips, 1), w.Rows, KernelThreads.Count, packs: false);
        int blockStrips = split.BlockStrips, blocks = split.Blocks, parts = split.Parts, ldt = blockStrips * Width;
        uint* weightPairs = null, image = null;
        try
        {
            weightPairs = WeightPairs<TD>(w, taps);
            var view = w;
            nint pairsTarget = (nint)weightPairs;
            image = PairImages(u, grid, planeStride, x, Width, codes);
            nint imageAddress = (nint)image, yAddress = (nint)y, biasAddress = (nint)bias, factorsAddress = (nint)factors;
            bool native = UseNativeBFloat16 && Vnni512Kernel.BFloat16Supported;
            int outW = u.OutW, wideRow = grid.PhaseWidth;
            KernelThreads.For(images * blocks * parts, (long)w.Rows / parts * ldt * k, item =>
            {
                int part = item % parts, im = item / parts / blocks, s0 = item / parts % blocks * blockStrips, s1 = Math.Min(strips, s0 + blockStrips);
                int rows0 = part * split.PartRows, rows1 = Math.Min(view.Rows, rows0 + split.PartRows);
                float[] scratch = ArrayPool<float>.Shared.Rent(checked((ItemRows + BFloat16TileRows) * ldt));
                try
                {
                    fixed (float* yt = scratch)
                    {
                        uint* xi = (uint*)imageAddress + im * imageValues;
                        float* yi = (float*)yAddress + (nint)im * view.Rows * ldy;
                        for (int n0 = rows0, rows; n0 < rows1; n0 += rows)
                        {
                            // Rows of one group at a time: they read the group's pair planes.
                            int group = n0 / groupRows;
                            rows = Math.Min(Math.Min(ItemRows, rows1 - n0), (group + 1) * groupRows - n0);
                            uint* planes = xi + (nint)group * groupPairs * planeStride;
                            new Span<float>(yt, (rows + BFloat16TileRows - 1) / BFloat16TileRows * BFloat16TileRows * ldt).Clear();
                            // Channel pairs in blocks: the strip's rows of a block's planes and a tile's weight for
                            // them stay in L1 while the tile passes every tap.
                            for (int s = s0; s < s1; s++)
                                for (int p0 = 0; p0 < groupPairs; p0 += PairBlock)
                                {
                                    int count = Math.Min(PairBlock, groupPairs - p0);
                                    uint* strip = planes + p0 * planeStride + (nint)s * Width;
                                    for (int t0 = 0; t0 < rows; t0 += BFloat16TileRows)
                                    {
                                        uint* a = (uint*)pairsTarget + (nint)(n0 + t0) * half + p0 * taps;
                                        float* c = yt + t0 * ldt + (s - s0) * Width;
                                        int tileRows = Math.Min(BFloat16TileRows, rows - t0);
                                        if (native) Vnni512Kernel.MicroBFloat16Taps(a, (nint)half * 4, strip, count, c, ldt * 4, planeStride * 4, taps * 4, taps, (nint*)tapBytesAddress, tileRows);
                                        else Vnni512Kernel.MicroBFloat16TapsTwin(a, (nint)half * 4, strip, count, c, ldt * 4, planeStride * 4, taps * 4, taps, (nint*)tapBytesAddress, tileRows);
                                    }
                                }
                            int i0 = s0 * Width;
                            WriteWide(yt, ldt, rows, (float*)biasAddress, yi, ldy, n0, i0, Math.Min(positions, s1 * Width) - i0, wideRow, outW, (double*)factorsAddress);
                        }
                    }
                }
                finally
                {
                    ArrayPool<float>.Shared.Return(scratch);
                }
            });
        }
        finally
        {
            if (weightPairs != null) NativeMemory.AlignedFree(weightPairs);
            if (image != null) NativeMemory.AlignedFree(image);
        }
    }

    /// <summary>
    /// A grouped convolution multiplied in bfloat16 from pair images (<see cref="ByPairImages"/>): the images at
    /// <paramref name="x"/> (<c>[u.Images, C, H, W]</c>) in <paramref name="groups"/> groups of C / groups channels (an
    /// even number: <see cref="GroupedBFloat16Fits"/>), the weight <c>[N, C / groups * taps]</c> (N / groups output
    /// channels a group), <paramref name="y"/> <c>[u.Images, N, positions]</c>. Each group's sums are those of the
    /// ungrouped call on the group's channels and weight rows, bit for bit. 512-bit vectors only (<see cref="Float512"/>:
    /// the weight's decoders), the generated micro-kernel where the CPU has AVX512-BF16
    /// (<see cref="Vnni512Kernel.BFloat16Supported"/>), its managed twin elsewhere (slow: for tests).
    /// </summary>
    internal static void GroupedBFloat16(in WeightView w, float* x, float* bias, float* y, Im2Col u, int groups)
    {
        if (!GroupedBFloat16Fits(u, w.Rows, groups) || (long)w.Cols * groups != u.Rows)
            throw new ArgumentException($"A grouped bfloat16 convolution needs an even number of channels a group and {u.Rows / Math.Max(groups, 1)} terms a row; got {u.Channels} channels, {w.Rows} outputs and {w.Cols} terms in {groups} groups.", nameof(groups));
        if (!Float512.IsSupported) throw new PlatformNotSupportedException("Grouped bfloat16 convolutions need AVX-512 (the weight's 512-bit decoders).");
        if (w.Rows == 0) return;
        bool lanes = ForcedLanes ?? LanesPay(u, w.Rows, groups);
        switch (w.Format)
        {
            case WeightFormat.Int8: Grouped<Int8Decoder>(w, x, bias, y, u, groups, lanes); break;
            case WeightFormat.UInt8: Grouped<UInt8Decoder>(w, x, bias, y, u, groups, lanes); break;
            case WeightFormat.Int4: Grouped<NibbleDecoder<SignedNibbles>>(w, x, bias, y, u, groups, lanes); break;
            case WeightFormat.UInt4: Grouped<NibbleDecoder<UnsignedNibbles>>(w, x, bias, y, u, groups, lanes); break;
            case WeightFormat.Float16: Grouped<HalfDecoder>(w, x, bias, y, u, groups, lanes); break;
            default: Grouped<BFloat16Decoder>(w, x, bias, y, u, groups, lanes); break;
        }
    }

    private static void Grouped<TD>(in WeightView w, float* x, float* bias, float* y, Im2Col u, int groups, bool lanes) where TD : IWeightDecoder
    {
        if (lanes) PairLanesConvolution.Run<TD>(w, x, bias, y, u, groups);
        else ByPairImages<TD>(w, x, bias, y, u.Positions, u, groups);
    }

    /// <summary>Tests and the bench force <see cref="GroupedBFloat16"/>'s layout on their thread (null: <see cref="LanesPay"/>; true: the output channels in lanes; false: positions in lanes).</summary>
    [ThreadStatic] internal static bool? ForcedLanes;

    /// <summary>
    /// Whether <see cref="GroupedBFloat16"/> puts the output channels in lanes (<see cref="PairLanesConvolution"/>) rather
    /// than 32 positions of a wide row (<see cref="ByPairImages"/>): a Conv2d onto output rows narrower than
    /// <see cref="LanesMaxOutW"/>, at stride 1 or 2, with at least <see cref="LanesMinOutputs"/> outputs a group (whole
    /// vectors). Measured on the Zen 4 VM (int8 weights, the two layouts in the same process): 512 and 1024 channels in 32
    /// groups and 384 in 8 onto 14x14 at batch 1-8 took 0.53-0.67x float32's time with the output channels in lanes
    /// against 0.67-1.94x with positions in lanes (docs/BENCHMARKS.md, stop 49); at stride 2 from 14x14 (256 channels in
    /// 4 groups, 1024 and 2048 in 32) 0.44-0.89x against 0.75-1.78x, once a plane's narrow rows were paired in one run
    /// (stop 50). At stride 2 with 16-31 outputs a group the lanes and the rule's routes before (the small kernel, or
    /// libtorch's bfloat16 convolution from four images) were alike on the Zen 4 VM (512 channels in 32 groups from
    /// 28x28: 0.87-1.03x against 0.75-1.05x, stop 50); on the Zen 5 VM (stop 52; six layers of 16 outputs a group, 128
    /// in 8 groups to 1024 in 64, from 14x14 and 28x28, batch 1, 2, 4 and 8, the two in one process, both orders, four
    /// processes) the lanes took 0.53-1.15x at batch 4 and 8 where the rule's routes took 0.78-1.54x, and at batch 1 and 2
    /// were alike or faster but on 128 channels in 8 groups (0.54-0.77x against 0.50-0.79x, up to 0.07 slower in a process).
    /// </summary>
    internal static bool LanesPay(Im2Col u, long outputs, long groups) =>
        u.Height > 1 && u.OutW < LanesMaxOutW && u.StrideH == u.StrideW && u.StrideH <= 2 && outputs / groups >= LanesMinOutputs;

    /// <summary>
    /// Whether an ungrouped weight-only convolution in bfloat16 on the packed kernels runs as
    /// <see cref="GroupedBFloat16"/> of one group, with the output channels in lanes: where forced
    /// (<see cref="ForcedLanes"/>), else where <see cref="UngroupedLanesPay"/>.
    /// </summary>
    internal static bool UngroupedLanes(Im2Col u, long outputs) => ForcedLanes ?? UngroupedLanesPay(u, outputs);

    /// <summary>
    /// Whether an ungrouped weight-only convolution runs with the output channels in lanes by the measured rule: a
    /// Conv2d of more than one tap at stride 1 onto output rows narrower than 16 (<see cref="LanesPay"/>) into
    /// <see cref="UngroupedLanesMinOutputs"/> or more channels, a call beyond the small kernel's
    /// (<see cref="Modules.ConvolutionCost.DirectMaxWork"/> multiply-adds), with <see cref="UngroupedLanesMinReduction"/>
    /// to <see cref="UngroupedLanesMaxReduction"/> terms, or up to twice that onto 196 or more positions an image.
    /// Measured on the Zen 4 VM (docs/BENCHMARKS.md, stop 50; int8, the rule before and the lanes in the same process,
    /// both orders, batch 1-8): 3x3 64->64 and 128->128 onto 14x14 0.13-0.59x float32's time against
    /// 0.42-1.11x, 128->128 onto 7x7 0.22-0.71x against 0.32-1.18x, 256->256 onto 14x14 0.54-0.60x against 0.57-0.80x;
    /// 256->256 onto 7x7 alike (0.32-0.81x against 0.39-1.00x), and 512->512 onto 7x7, 256->512 at stride 2 and 1x1
    /// layers onto 7x7 slower than the rule's routes.
    /// </summary>
    internal static bool UngroupedLanesPay(Im2Col u, long outputs) =>
        u.KernelH * u.KernelW > 1 && u.StrideH == 1 && u.StrideW == 1 && LanesPay(u, outputs, 1) && outputs >= UngroupedLanesMinOutputs
        && u.Rows >= UngroupedLanesMinReduction && (long)u.Images * u.Positions * outputs * u.Rows > Modules.ConvolutionCost.DirectMaxWork
        && (u.Rows <= UngroupedLanesMaxReduction || (u.Rows <= 2 * UngroupedLanesMaxReduction && u.OutH * u.OutW >= UngroupedLanesWideMinPositions));

    /// <summary>Output channels from which <see cref="UngroupedLanesPay"/> (64 the fewest measured).</summary>
    internal const int UngroupedLanesMinOutputs = 64;

    /// <summary>Terms from which <see cref="UngroupedLanesPay"/>: 3x3 over 64 channels, the fewest measured (the MNIST CNN's 144 keep their routes).</summary>
    internal const int UngroupedLanesMinReduction = 576;

    /// <summary>Terms (input channels x taps) up to which <see cref="UngroupedLanesPay"/> onto any plane: 3x3 over 128 channels.</summary>
    internal const int UngroupedLanesMaxReduction = 1152;

    /// <summary>Output positions an image from which <see cref="UngroupedLanesPay"/> with up to twice <see cref="UngroupedLanesMaxReduction"/> terms (14x14).</summary>
    internal const int UngroupedLanesWideMinPositions = 196;

    /// <summary>Output row length from which <see cref="LanesPay"/> does not hold (measured onto 7x7 and 14x14).</summary>
    internal const int LanesMaxOutW = 16;

    /// <summary>Outputs a group from which <see cref="LanesPay"/>: a vector of <see cref="Vnni512Kernel.PairDots"/>' lanes.</summary>
    internal const int LanesMinOutputs = 16;

    /// <summary>
    /// Whether <see cref="GroupedBFloat16"/> takes a convolution of <paramref name="outputs"/> channels in
    /// <paramref name="groups"/> groups: channels in and out divide into the groups, an even number of input channels a group.
    /// </summary>
    internal static bool GroupedBFloat16Fits(Im2Col u, long outputs, long groups) =>
        groups >= 1 && u.Channels % groups == 0 && outputs % groups == 0 && u.Channels / groups % 2 == 0;

    /// <summary>
    /// A grouped static W8A8 convolution, exact, from pair images (<see cref="ByPairImages"/>): the images at
    /// <paramref name="x"/> quantized with <paramref name="input"/> as they are paired, their codes less the zero point
    /// (at most 256 in magnitude) and the int8 weight's codes less theirs (per-channel or per-tensor scales) multiplied
    /// in bfloat16, which holds such integers exactly, with every product and partial sum an integer below 2^24
    /// (<see cref="CodesExact"/>), so exact in float32; each output <c>(float)((double)s_x * s_w[n] * sum) + bias[n]</c>,
    /// the integer kernels' epilogue: the integers and the floats of <see cref="IntegerMatMul.RunConvolution"/> for an
    /// ungrouped layer, group by group. Padding is the zero point's code, which adds nothing. Shapes as
    /// <see cref="GroupedBFloat16"/>.
    /// </summary>
    internal static void GroupedCodes(in WeightView w, float* x, float* bias, float* y, Im2Col u, int groups, InputFakeQuantization input)
    {
        if (w.Format != WeightFormat.Int8 || w.GroupsPerRow != 1)
            throw new ArgumentException($"Grouped W8A8 convolutions need int8 weights with one scale a row or tensor, got {w.Format} in groups of {w.GroupSize}.", nameof(w));
        if (!GroupedBFloat16Fits(u, w.Rows, groups) || (long)w.Cols * groups != u.Rows)
            throw new ArgumentException($"A grouped W8A8 convolution needs an even number of channels a group and {u.Rows / Math.Max(groups, 1)} terms a row; got {u.Channels} channels, {w.Rows} outputs and {w.Cols} terms in {groups} groups.", nameof(groups));
        if (!CodesExact(w.Cols, InputCodeMax(input), WeightCodeMax(w)))
            throw new ArgumentException($"{w.Cols} terms a group of codes up to {InputCodeMax(input)} and {WeightCodeMax(w)} could sum past 2^24, where float32 sums stop being exact.", nameof(input));
        if (!Float512.IsSupported) throw new PlatformNotSupportedException("Grouped W8A8 convolutions from pair images need AVX-512 (the weight's 512-bit decoders).");
        if (w.Rows == 0) return;
        float[] ones = new float[w.ScaleRowStride == 0 ? 1 : w.Rows];
        Array.Fill(ones, 1f);
        double[] factors = new double[w.Rows];
        for (int n = 0; n < w.Rows; n++) factors[n] = (double)input.Scale * w.Params(n, 0).Scale;
        fixed (float* unit = ones)
        fixed (double* f = factors)
        {
            var codes = new WeightView(WeightFormat.Int8, w.Rows, w.Cols, w.Data, w.Cols, unit, w.ZeroPoint, w.ScaleRowStride);
            ByPairImages<Int8Decoder>(codes, x, bias, y, u.Positions, u, groups, input, f);
        }
    }

    /// <summary>
    /// Whether products of integers up to <paramref name="inputMax"/> and <paramref name="weightMax"/> in magnitude,
    /// summed over <paramref name="terms"/>, are exact in bfloat16 pairs with float32 sums: both at most 256 (bfloat16
    /// holds every integer up to 256, not 257), and the largest possible sum at most 2^24 (float32 holds every integer up
    /// to 2^24). A zero point outside the code range (a uint8 input's of 300) can make codes less it larger.
    /// </summary>
    internal static bool CodesExact(long terms, int inputMax, int weightMax) =>
        inputMax <= 256 && weightMax <= 256 && terms * inputMax * weightMax <= 1 << 24;

    /// <summary>The largest magnitude of a code less the zero point under <paramref name="input"/>.</summary>
    internal static int InputCodeMax(InputFakeQuantization input) =>
        (int)Math.Max(Math.Abs(input.QMax - input.ZeroPoint), Math.Abs(input.ZeroPoint - input.QMin));

    /// <summary>The largest magnitude of an int8 code less its row's zero point in <paramref name="w"/>.</summary>
    internal static int WeightCodeMax(in WeightView w)
    {
        int max = 128;
        for (int n = 0; n < w.Rows && w.ZeroPoint != null; n++)
        {
            int z = w.Params(n, 0).ZeroPoint;
            max = Math.Max(max, Math.Max(Math.Abs(127 - z), Math.Abs(z + 128)));
        }
        return max;
    }

    /// <summary>
    /// The weight decoded and rounded to bfloat16 once per call (<see cref="PairWeightRow"/>) as 32-bit pairs, K / 2 per
    /// row, then five zero rows: a tile of six (<see cref="Vnni512Kernel.MicroBFloat16"/>'s) that starts on any row
    /// reads at most five rows past the last (the callers' runs of rows start on multiples of 16, or on a group's first
    /// row, not of six). With <paramref name="taps"/>
    /// 0, pairs of consecutive terms (the packed strips' order); else pairs of channels, <c>[C / 2, taps]</c>
    /// (<see cref="PairChannels"/>, the pair images' order). The caller frees it (<c>NativeMemory.AlignedFree</c>).
    /// </summary>
    private static uint* WeightPairs<TD>(in WeightView w, int taps) where TD : IWeightDecoder
    {
        int k = w.Cols, half = k / 2;
        int paddedRows = w.Rows + BFloat16TileRows - 1;
        uint* pairs = (uint*)NativeMemory.AlignedAlloc((nuint)paddedRows * (nuint)half * 4, 64);
        new Span<uint>(pairs + (nint)w.Rows * half, (paddedRows - w.Rows) * half).Clear();
        var view = w;
        nint target = (nint)pairs;
        if (taps == 0)
        {
            KernelThreads.For(w.Rows, k, n => PairWeightRow<TD>(view, n, (ushort*)target + (nint)n * k));
            return pairs;
        }
        KernelThreads.For(w.Rows, k, n =>
        {
            ushort[] rented = ArrayPool<ushort>.Shared.Rent(k + 32);
            try
            {
                fixed (ushort* row = rented)
                {
                    PairWeightRow<TD>(view, n, row);
                    PairChannels(row, taps, half / taps, (uint*)target + (nint)n * half);
                }
            }
            finally
            {
                ArrayPool<ushort>.Shared.Return(rented);
            }
        });
        return pairs;
    }

    /// <summary>
    /// A weight row of bfloat16 values in the convolution's order (<c>[C, taps]</c>, <paramref name="row"/>, readable 32
    /// values past its end) as pairs of channels (<c>[C / 2, taps]</c> 32-bit pairs into <paramref name="dst"/>, nothing
    /// written past them): pair <c>(p, t)</c> holds channel 2p's tap t in its low half and channel 2p + 1's in its high
    /// half. Up to 16 taps a channel pair's two runs of taps are one vector, interleaved by one shuffle; its store of 16
    /// pairs runs into the next pairs' places, written after it, so the pairs within 16 of the row's end go element by
    /// element.
    /// </summary>
    internal static void PairChannels(ushort* row, int taps, int pairs, uint* dst)
    {
        int p = 0;
        if (taps <= 16)
        {
            Span<ushort> order = stackalloc ushort[32];
            for (int i = 0; i < 32; i++) order[i] = (ushort)(i < 2 * taps ? i / 2 + (i % 2) * taps : 0);
            var indices = Vector512.Create<ushort>(order);
            for (; p * taps + 16 <= pairs * taps; p++)
                Vector512.Shuffle(Vector512.Load(row + 2 * p * taps), indices).AsUInt32().Store(dst + p * taps);
        }
        for (; p < pairs; p++)
            for (int t = 0; t < taps; t++)
                dst[p * taps + t] = row[2 * p * taps + t] | (uint)row[(2 * p + 1) * taps + t] << 16;
    }

    /// <summary>
    /// Channel pairs per reduction block of <see cref="ByPairImages"/> (the bench's <c>PAIR_BLOCK</c> sets it): on ResNet
    /// 256->256 and VGG 512->512 on 14x14 at batch 1, 64 was as fast as 32 and 128 within the runs' noise and faster
    /// than 16 (docs/BENCHMARKS.md, stop 36).
    /// </summary>
    internal static int PairBlock = 64;

    /// <summary>
    /// Values from one pair plane to the next (<see cref="ByPairImages"/>): the grid's values of one channel (all its
    /// phases) rounded up to whole cache lines, and to an odd number of them, so that the strip's groups, one plane
    /// apart, fall in all of L1's sets (planes of 16x16 values, 1 KiB, put a block's 64 groups in 8 of them).
    /// </summary>
    internal static nint PairPlaneStride(PhaseGrid grid, int pairs)
    {
        long lines = (grid.ImageValues / pairs + 15) / 16;
        return (nint)((lines | 1) * 16);
    }

    /// <summary>
    /// The images at <paramref name="x"/> (<c>[C, H, W]</c> each, C even) as pair images in the layout of
    /// <paramref name="grid"/> (a <see cref="PhaseGrid"/> of C / 2 channels): pixel values of channels 2p and 2p + 1
    /// rounded to bfloat16 (nearest even, <see cref="HalfKernel.Bf512"/>) in the low and high half of one 32-bit value of
    /// plane p (planes <paramref name="planeStride"/> values apart, zero between them), zero where padded; then
    /// <paramref name="step"/> plus a grid row of zero values, so that the last strip's reads past the last plane stay in
    /// the buffer. A work item per plane; at stride 1 a plane of rows narrower than 16 is paired in one run
    /// (<see cref="NarrowPlane"/>). With <paramref name="codes"/>, each plane's two channels are first quantized into a
    /// buffer of the work item's (<see cref="QuantizeKernel.FakeQuantize"/> with scale 1: the integer codes less the zero
    /// point, as float32, which bfloat16 holds exactly) and paired from there.
    /// </summary>
    internal static uint* PairImages(Im2Col u, PhaseGrid grid, nint planeStride, float* x, int step, InputFakeQuantization? codes = null)
    {
        int pairs = u.Channels / 2, h = u.Height, width = u.Width;
        nint values = planeStride * pairs * u.Images, slack = step + grid.PhaseWidth;
        uint* buffer = (uint*)NativeMemory.AlignedAlloc((nuint)(values + slack) * sizeof(uint), 64);
        new Span<uint>(buffer + values, (int)slack).Clear();
        nint source = (nint)x, target = (nint)buffer;
        var columns = grid.ColumnPhases();
        bool shuffles = ShufflesPhases;
        KernelThreads.For(u.Images * pairs, 4L * planeStride, plane =>
            PairPlane(u, grid, planeStride, (float*)source + (nint)plane * 2 * h * width, (uint*)target + plane * planeStride, columns, codes, shuffles));
        return buffer;
    }

    /// <summary>
    /// One pair plane of <see cref="PairImages"/>: channels <paramref name="even"/> and the next (<c>H x W</c> values
    /// each) into <paramref name="dst"/> (<paramref name="planeStride"/> values, zero past the grid's), as described there.
    /// </summary>
    internal static void PairPlane(Im2Col u, PhaseGrid grid, nint planeStride, float* even, uint* dst, ColumnPhase[] columns, InputFakeQuantization? codes = null, bool shuffles = true)
    {
        int pairs = u.Channels / 2, h = u.Height, width = u.Width, paddedRows = grid.PhaseHeight * u.StrideH;
        int count = 2 * h * width;
        float[]? rented = codes is null ? null : ArrayPool<float>.Shared.Rent(count);
        try
        {
            fixed (float* quantized = rented)
            {
                if (codes is { } q)
                {
                    QuantizeKernel.FakeQuantize(new ReadOnlySpan<float>(even, count), 1f, q.InvScale, q.ZeroPoint, q.QMin, q.QMax, new Span<float>(quantized, count));
                    even = quantized;
                }
                float* odd = even + (nint)h * width;
                if (u.StrideH == 1 && u.StrideW == 1)
                {
                    // Stride 1: each row's pairs written in place between its padding columns, the padding of a row's end and
                    // the next row's start one run of zeros, without a pair row and a WriteRow call per row (ResNet 64->64 on
                    // 56x56 at batch 1 went from 0.76x to 0.68x float32's time; docs/BENCHMARKS.md, stop 36).
                    int wp = grid.PhaseWidth, pad = u.PadW;
                    new Span<uint>(dst, u.PadH * wp + pad).Clear();
                    uint* at = dst + (nint)u.PadH * wp + pad;
                    if (IsNarrow(h, width))
                    {
                        NarrowPlane(even, odd, h, width, at, wp, pad, dst + planeStride);
                        return;
                    }
                    for (int r = 0; r < h; r++, at += wp)
                    {
                        PairRow(even + (nint)r * width, odd + (nint)r * width, at, width);
                        new Span<uint>(at + width, r + 1 < h ? 2 * pad : (int)(dst + planeStride - (at + width))).Clear();
                    }
                    return;
                }
                // Strided: each row paired, then written into its phase rows. A plane of rows narrower than 16 is paired in
                // one run first (as at stride 1), where row by row each value was rounded alone: ResNeXt's 2048 channels in
                // 32 groups from 14x14 onto 7x7 spent a quarter of its time there (docs/BENCHMARKS.md, stop 50).
                bool narrow = IsNarrow(h, width);
                uint* row = stackalloc uint[(narrow ? h * width : width) + 16]; // the stride-2 gather reads a value past the row
                if (narrow)
                {
                    PairRow(even, odd, row, h * width);
                    row[h * width] = 0;
                }
                if (narrow && shuffles && Simd.Use512 && grid.PhaseWidth <= 16) ShufflePhases(u, grid, row, dst, dst + planeStride, columns);
                else
                {
                    for (int r = 0; r < paddedRows; r++)
                    {
                        int sourceRow = r - u.PadH;
                        if (sourceRow < 0 || sourceRow >= h)
                        {
                            grid.WriteRow<uint>(dst, r, null, 0u, columns);
                            continue;
                        }
                        uint* values = row;
                        if (narrow) values += (nint)sourceRow * width;
                        else
                        {
                            PairRow(even + (nint)sourceRow * width, odd + (nint)sourceRow * width, row, width);
                            row[width] = 0;
                        }
                        grid.WriteRow(dst, r, values, 0u, columns);
                    }
                }
                nint written = (nint)(grid.ImageValues / pairs);
                new Span<uint>(dst + written, (int)(planeStride - written)).Clear();
            }
        }
        finally
        {
            if (rented != null) ArrayPool<float>.Shared.Return(rented);
        }
    }

    /// <summary>
    /// A strided plane's phase rows from its pairs (<paramref name="run"/>: the plane's <c>H x W</c> pairs, rows of at
    /// most 16, readable 16 values past the last), one 512-bit permute a phase row: phase b's lanes are the row's values
    /// at <see cref="ColumnPhase.First"/> + (lane - place) x stride, zero outside the phase's columns, and rows of padding
    /// zero. The phase rows are written in memory order, 16 values each (the values past a phase row are overwritten by
    /// the next), value by value where 16 would pass <paramref name="end"/>. Row by row through
    /// <see cref="PhaseGrid.WriteRow"/> (two fills and a gather of 7 values a phase row from 14x14 at stride 2) the
    /// writes took 16% of ResNeXt's 1024 channels in 32 groups from 14x14 at stride 2, batch 1 (docs/BENCHMARKS.md, stop 50).
    /// </summary>
    internal static void ShufflePhases(Im2Col u, PhaseGrid grid, uint* run, uint* dst, uint* end, ColumnPhase[] columns)
    {
        int strideH = u.StrideH, strideW = u.StrideW, phaseHeight = grid.PhaseHeight, wp = grid.PhaseWidth, width = u.Width, h = u.Height;
        var lanes = Vector512<uint>.Indices;
        var indices = stackalloc Vector512<uint>[strideW];
        var masks = stackalloc Vector512<uint>[strideW];
        for (int b = 0; b < strideW; b++)
        {
            var column = columns[b];
            indices[b] = (lanes * (uint)strideW + Vector512.Create((uint)(column.First - column.Place * strideW))) & Vector512.Create(15u);
            masks[b] = Vector512.GreaterThanOrEqual(lanes, Vector512.Create((uint)column.Place)) & Vector512.LessThan(lanes, Vector512.Create((uint)(column.Place + column.Count)));
        }
        uint* at = dst;
        for (int a = 0; a < strideH; a++)
            for (int b = 0; b < strideW; b++)
                for (int i = 0; i < phaseHeight; i++, at += wp)
                {
                    int source = i * strideH + a - u.PadH;
                    var values = (uint)source < (uint)h ? Avx512F.PermuteVar16x32(Vector512.Load(run + (nint)source * width), indices[b]) & masks[b] : Vector512<uint>.Zero;
                    if (at + 16 <= end) values.Store(at);
                    else for (int j = 0; j < wp; j++) at[j] = values.GetElement(j);
                }
    }

    /// <summary>For the bench and tests: false writes a strided narrow plane's rows through <see cref="PhaseGrid.WriteRow"/> rather than <see cref="ShufflePhases"/>.</summary>
    [ThreadStatic] internal static bool? ForcedPhaseShuffles;

    /// <summary>Whether <see cref="PairPlane"/> writes strided narrow planes by <see cref="ShufflePhases"/> on this thread's calls (read by the caller, passed to the threads).</summary>
    internal static bool ShufflesPhases => ForcedPhaseShuffles ?? true;

    /// <summary>Values of a plane (rows x columns) up to which <see cref="PairImages"/> pairs a plane of rows narrower than 16 in one run (<see cref="NarrowPlane"/>).</summary>
    internal const int NarrowPlaneMaxValues = 1024;

    /// <summary>Whether <see cref="PairPlane"/> pairs a plane of <paramref name="h"/> rows of <paramref name="width"/> values in one run: rows narrower than 16, 16 to <see cref="NarrowPlaneMaxValues"/> values.</summary>
    private static bool IsNarrow(int h, int width) => width < 16 && h * width >= 16 && h * width <= NarrowPlaneMaxValues;

    /// <summary>
    /// A stride-1 plane of <paramref name="h"/> rows narrower than 16 values (<paramref name="width"/>) paired as one
    /// run of <c>h * width</c> values (<see cref="PairRow"/>: 16 at a time, where row by row each value was rounded
    /// alone), then its rows stored at <paramref name="at"/> (<paramref name="wp"/> apart) in whole vectors of 8 or 16,
    /// each followed by the zeros of its padding and the next row's (the vector's values past the row are the run's
    /// next values; the zeros and the next rows' stores overwrite them, all within the plane). The last row, and any
    /// row whose vector would pass <paramref name="end"/> (the plane's end), are stored value by value; from the last
    /// row's end to <paramref name="end"/> zeros. Measured on the Zen 5 VM (docs/BENCHMARKS.md, stop 43; the pair
    /// route, int8, batch 8): 1024 channels in 32 groups on 14x14 went from 1.34-1.37x float32's time to 1.06-1.09x,
    /// on 7x7 from 1.81x to 1.58x; ResNet's 256->256 on 14x14 through the rule from 0.80-0.88x to 0.73-0.78x.
    /// </summary>
    internal static void NarrowPlane(float* even, float* odd, int h, int width, uint* at, int wp, int pad, uint* end)
    {
        int n = h * width, step = width <= 8 ? 8 : 16;
        uint* run = stackalloc uint[n + 16];
        PairRow(even, odd, run, n);
        for (int r = 0; r < h; r++, at += wp)
        {
            uint* src = run + r * width;
            if (r + 1 < h && at + step <= end)
            {
                if (step == 8) Vector256.Load(src).Store(at);
                else Vector512.Load(src).Store(at);
                new Span<uint>(at + width, 2 * pad).Clear();
            }
            else
            {
                for (int j = 0; j < width; j++) at[j] = src[j];
                new Span<uint>(at + width, r + 1 < h ? 2 * pad : (int)(end - (at + width))).Clear();
            }
        }
    }

    /// <summary>
    /// <c>dst[j]</c> = <paramref name="even"/>[j] and <paramref name="odd"/>[j] rounded to bfloat16 in its low and high
    /// half, for <c>j &lt; n</c>: 16 at a time, the last 16 again from <c>n - 16</c> (the same values) where n is not a
    /// multiple of 16; element by element below 16 (<see cref="PairImages"/> pairs planes of narrower rows as one run:
    /// <see cref="NarrowPlane"/>).
    /// </summary>
    internal static void PairRow(float* even, float* odd, uint* dst, int n)
    {
        static void Sixteen(float* e, float* o, uint* d) =>
            (HalfKernel.Bf512(Vector512.Load((uint*)e)) | HalfKernel.Bf512(Vector512.Load((uint*)o)) << 16).Store(d);
        if (n < 16)
        {
            for (int j = 0; j < n; j++) dst[j] = HalfKernel.ToBFloat16Bits(even[j]) | (uint)HalfKernel.ToBFloat16Bits(odd[j]) << 16;
            return;
        }
        for (int j = 0; j + 16 <= n; j += 16) Sixteen(even + j, odd + j, dst + j);
        if (n % 16 != 0) Sixteen(even + n - 16, odd + n - 16, dst + n - 16);
    }

    /// <summary>
    /// A transposed item's output: <c>y[n0 + r, i0 + i] = yt[r, i] + bias[n0 + r]</c> for <paramref name="rows"/> rows of
    /// <paramref name="count"/> positions (y^T rows are the item's rows of y: contiguous on both sides).
    /// </summary>
    private static void WriteTransposed(float* yt, int ldt, int rows, float* bias, float* y, nint ldy, int n0, int i0, int count)
    {
        for (int r = 0; r < rows; r++)
        {
            float* dst = y + (n0 + r) * ldy + i0;
            AddRun(yt + r * ldt, dst, count, bias == null ? 0f : bias[n0 + r]);
        }
    }

    /// <summary>The micro-kernel over <paramref name="rows"/> decoded weight rows (<see cref="MicroKernel.NextTile"/>) against one strip, its steps found by <typeparamref name="TS"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Tiles<TW, TVec, TS>(int rows, bool wide, float* a, int lda, float* b, int* offsets, int steps, float* c, int ldc)
        where TW : IFloatWidth<TVec> where TVec : struct where TS : IStripSteps
    {
        for (int t0 = 0, h; t0 < rows; t0 += h)
        {
            h = MicroKernel.NextTile(rows - t0, wide);
            MicroKernel.RunTile<FloatMicro<TW, TVec>, TVec, float, TS>(h, a + t0 * lda, lda, b, offsets, steps, c + t0 * ldc, ldc);
        }
    }

    /// <summary>
    /// How the packed GEMMs (<see cref="Run"/>, <see cref="PackedIntegerMatMul"/>) cut a call into work items: weight
    /// rows in items of at most <see cref="ItemRows"/>, evened out (whole tiles), times groups of strips. Strips are
    /// grouped only as far as needed for two items per thread (each group decodes the item's rows again, a small cost
    /// against an idle thread: a 64-row weight made one item of 48 rows and one of 16) and at most
    /// <c>maxGroupStrips</c> per group. Consecutive items share their strips.
    /// </summary>
    internal readonly record struct WorkSplit(int Rows, int RowItems, int StripGroups, int GroupStrips)
    {
        /// <summary>Work items: row items x strip groups.</summary>
        public int Items => RowItems * StripGroups;

        /// <summary>The first weight row of <paramref name="item"/> (it has <see cref="Rows"/> rows, fewer at the end).</summary>
        public int RowStart(int item) => item % RowItems * Rows;

        /// <summary>The first strip of <paramref name="item"/> (it has <see cref="GroupStrips"/> strips, fewer at the end).</summary>
        public int StripStart(int item) => item / RowItems * GroupStrips;

        /// <summary>The split of <paramref name="rows"/> weight rows and <paramref name="strips"/> strips for <paramref name="threads"/> threads.</summary>
        public static WorkSplit For(int rows, int strips, int threads, int maxGroupStrips = int.MaxValue)
        {
            int rowItems = Math.Max(1, (rows + ItemRows - 1) / ItemRows);
            int itemRows = ((rows + rowItems - 1) / rowItems + TileRows - 1) / TileRows * TileRows;
            strips = Math.Max(1, strips);
            int wanted = Math.Clamp((2 * threads + rowItems - 1) / rowItems, 1, strips);
            int groupStrips = Math.Clamp((strips + wanted - 1) / wanted, 1, Math.Max(1, maxGroupStrips));
            return new WorkSplit(itemRows, rowItems, (strips + groupStrips - 1) / groupStrips, groupStrips);
        }
    }

    /// <summary>
    /// End of the reduction block that starts at <paramref name="k0"/>: whole groups up to <see cref="BlockTarget"/>,
    /// or, inside a longer group, a multiple of the decoders' chunk (so every block starts where a chunk starts).
    /// </summary>
    internal static int BlockEnd(in WeightView w, int k0, int count)
    {
        int g = w.GroupSize, chunk = 2 * count;
        if (g <= BlockTarget) return Math.Min(w.Cols, k0 + BlockTarget / g * g);
        int groupEnd = (k0 / g + 1) * g;
        return Math.Min(groupEnd, k0 + Math.Max(chunk, BlockTarget / chunk * chunk));
    }

    /// <summary>
    /// Whether weight rows <c>[n0, n0 + rows)</c> may decode with <see cref="FiniteHalfDecoder"/>: float16 rows without an
    /// infinity or NaN (<see cref="HalfKernel.AllFinite"/>, which reads them once; they then stay in cache for the decode).
    /// False for other formats, which have no such decoder.
    /// </summary>
    internal static bool FiniteHalves<TD>(in WeightView w, int n0, int rows) where TD : IWeightDecoder =>
        typeof(TD) == typeof(HalfDecoder) && HalfKernel.AllFinite((ushort*)(w.Data + n0 * w.RowBytes), rows * (nint)w.Cols);

    /// <summary>
    /// <see cref="DecodeSlice"/> for rows <c>[n0, n0 + rows)</c>, row <c>r</c> at <c>dst + r * ld</c>; with
    /// <paramref name="finite"/> (<see cref="FiniteHalves"/>) float16 rows decode without the infinity and NaN select.
    /// </summary>
    /// <remarks>
    /// Groups shorter than a chunk of <typeparamref name="TW"/> (int4 in groups of 16 at 512 bits) decode at the widest
    /// width whose chunk fits a group: a slice decodes whole chunks inside each group and the rest element by element.
    /// The tile holds the same elements in the same order at any width (each value within float32 rounding: a chunk's
    /// dequantization is one fused multiply-add, an element's a multiply and an add), so the micro-kernel keeps its
    /// width; every layout and the dot tiles decode through here, so they still agree bit for bit.
    /// </remarks>
    internal static void DecodeRows<TW, TVec, TD>(in WeightView w, int n0, int rows, int k0, int k1, float* dst, nint ld, bool finite)
        where TW : IFloatWidth<TVec> where TVec : struct where TD : IWeightDecoder
    {
        if (QuantizedMatMul.ChunkExceedsGroups(TW.Count, w))
        {
            if (typeof(TW) == typeof(Float512))
            {
                DecodeRows<Float256, Vector256<float>, TD>(w, n0, rows, k0, k1, dst, ld, finite);
                return;
            }
            if (typeof(TW) == typeof(Float256))
            {
                DecodeRows<Float128, Vector128<float>, TD>(w, n0, rows, k0, k1, dst, ld, finite);
                return;
            }
        }
        for (int r = 0; r < rows; r++)
        {
            if (typeof(TD) == typeof(HalfDecoder) && finite) DecodeSlice<TW, TVec, FiniteHalfDecoder>(w, n0 + r, k0, k1, dst + r * ld);
            else DecodeSlice<TW, TVec, TD>(w, n0 + r, k0, k1, dst + r * ld);
        }
    }

    /// <summary>
    /// Dequantizes elements <c>[k0, k1)</c> of weight row <paramref name="n"/> into <paramref name="dst"/>, in order:
    /// the decoders that give even and odd elements apart (<see cref="IWeightDecoder.Deinterleaved"/>: nibbles, half
    /// pairs) are interleaved back (two shuffles per chunk), so the activations are packed as they are, with no gather.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void DecodeSlice<TW, TVec, TD>(in WeightView w, int n, int k0, int k1, float* dst)
        where TW : IFloatWidth<TVec> where TVec : struct where TD : IWeightDecoder
    {
        int c = TW.Count, chunk = 2 * c, g = w.GroupSize;
        byte* row = w.Data + n * w.RowBytes;
        dst -= k0;
        for (int k = k0; k < k1;)
        {
            int gi = k / g, end = Math.Min(k1, (gi + 1) * g);
            var (s, offset) = QuantizedMatMul.GroupScale<TD>(w, n, gi);
            var (gp, gq) = TD.Prepare<TW, TVec>(s, offset);
            for (; k + chunk <= end; k += chunk)
            {
                var (wa, wb) = TD.Decode<TW, TVec>(row, k, gp, gq);
                if (TD.Deinterleaved) (wa, wb) = TW.Interleave(wa, wb);
                TW.Store(wa, dst + k);
                TW.Store(wb, dst + k + c);
            }
            for (; k < end; k++) dst[k] = TD.One(row, k) * s + offset;
        }
    }
}

/// <summary>How <see cref="PackedMatMul"/> packs the activations of a call and splits it (<see cref="PackedMatMul.ChooseLayout"/>).</summary>
internal enum PackedLayout
{
    /// <summary>One packing pass over all strips, then items of weight rows x strip groups reading them.</summary>
    Shared,

    /// <summary>Items of weight rows x strip groups, each packing its own strips.</summary>
    PerItem,

    /// <summary>Items of strip blocks, each packing its strips and running every weight row over them.</summary>
    ByPositions,

    /// <summary>Items of weight-row strips against every activation row, the activations broadcast (few activation rows).</summary>
    ByWeightStrips,
}
