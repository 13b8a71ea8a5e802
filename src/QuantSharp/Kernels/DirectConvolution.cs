using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QuantSharp.Kernels;

/// <summary>
/// A small convolution computed directly from a float32 weight <c>[O, K]</c> (a quantized weight dequantized group by
/// group by the threads that read it, <see cref="GroupWeights"/>, or whole for the call): the images are copied once, padded and split into stride phases, where
/// every reduction row of a run of output positions is a run of the copy (<see cref="RunWide"/>: by each work item for
/// its image's group of planes, or into one buffer first; per block of output positions, the columns unfolded into a
/// small buffer where a phase row is too long), then each group of four output channels multiplies them with four (at
/// the end of a run, two) vectors of positions per step. For layers whose libtorch convolution is mostly fixed cost (the MNIST CNN's
/// 1- and 16-channel layers: 15-40 us for 0.1-0.6 M multiply-adds), this avoids the packed GEMM's packing and
/// libtorch's per-call set-up.
/// </summary>
/// <remarks>
/// <c>y[o, p] = bias[o] + sum_k w[o, k] * col[k, p]</c>, accumulated in order of k with the width's multiply-add (fused
/// where the hardware has it), so results differ from libtorch's only by float rounding.
/// </remarks>
[SkipLocalsInit] // the columns (up to 128 KiB of stack) are written before they are read; zeroing them cost ~2 us a call
internal static unsafe class DirectConvolution
{
    /// <summary>Output positions per block: the block's columns (<c>K * Block</c> floats) stay in L1/L2.</summary>
    internal const int Block = 128;

    /// <summary>Reduction length up to which a block's columns fit the stack (<c>K * Block</c> floats, 128 KiB).</summary>
    internal const int MaxReduction = 256;

    /// <summary>
    /// Whether the kernel takes this geometry: ungrouped, where the columns of a block fit its stack buffer; grouped
    /// (<paramref name="groups"/> &gt; 1), where it runs on the padded image (<see cref="FusesInputQuantization"/>), at
    /// any reduction length.
    /// </summary>
    public static bool Fits(Im2Col unfold, long outputs, long groups = 1) =>
        outputs <= int.MaxValue && (groups == 1 ? unfold.Rows <= MaxReduction : FusesInputQuantization(unfold));

    /// <summary>Output channels per micro-kernel step.</summary>
    private const int RowsPerStep = 4;

    /// <summary>
    /// <c>y[i] = w * columns(images[i]) + bias</c> for the <see cref="Im2Col.Images"/> images of <paramref name="unfold"/>;
    /// with <paramref name="groups"/> groups, output channel o of group <c>g = o / (outputs / groups)</c> reads only the
    /// reduction rows of that group's input channels (as <c>torch.nn.functional.conv2d(..., groups)</c>).
    /// </summary>
    /// <param name="weight"><paramref name="outputs"/> rows of <see cref="Im2Col.Rows"/> / <paramref name="groups"/> floats.</param>
    /// <param name="outputs">Output channels, a multiple of <paramref name="groups"/>.</param>
    /// <param name="groups">Convolution groups, dividing the input channels and <paramref name="outputs"/>; above 1 only
    /// where the kernel runs on the padded image (<see cref="Fits"/>).</param>
    /// <param name="unfold">The geometry, over all images.</param>
    /// <param name="images">The images, <c>[Images, C, H, W]</c> contiguous.</param>
    /// <param name="bias"><paramref name="outputs"/> floats, or null.</param>
    /// <param name="y">The output, <c>[Images, outputs, Positions]</c> contiguous.</param>
    /// <param name="input">Static fake quantization applied to the images as they are copied (see <see cref="FusesInputQuantization"/>), or null.</param>
    public static void Run(float* weight, int outputs, int groups, Im2Col unfold, float* images, float* bias, float* y, InputFakeQuantization? input = null) =>
        Run(GroupWeights.Float(weight, unfold.Rows / Math.Max(groups, 1)), outputs, groups, unfold, images, bias, y, input);

    /// <summary>
    /// As <see cref="Run(float*, int, int, Im2Col, float*, float*, float*, InputFakeQuantization?)"/> on the quantized
    /// <paramref name="weight"/> (<c>[outputs, Rows / groups]</c>, any format <see cref="WeightDequantizer"/> reads): each
    /// thread dequantizes a group's rows into a buffer of its own when its first work item of that group starts
    /// (<see cref="GroupWeights"/>), so no float copy of the whole weight is written by one thread and read by all. Groups
    /// up to <see cref="MaxGroupValues"/> values (<see cref="DequantizesByGroup"/>).
    /// </summary>
    public static void Run(in WeightView weight, int groups, Im2Col unfold, float* images, float* bias, float* y, InputFakeQuantization? input = null)
    {
        if (groups < 1 || weight.Cols != unfold.Rows / groups || !DequantizesByGroup(weight.Rows, groups, weight.Cols))
            throw new ArgumentException($"A weight of [{weight.Rows}, {weight.Cols}] in {groups} group(s) does not fit this geometry ({unfold.Rows} reduction rows) or a group's buffer ({MaxGroupValues} values).", nameof(weight));
        Run(GroupWeights.Quantized(weight), weight.Rows, groups, unfold, images, bias, y, input);
    }

    /// <summary>
    /// Whether <see cref="Run(in WeightView, int, Im2Col, float*, float*, float*, InputFakeQuantization?)"/> takes a weight of
    /// <paramref name="outputs"/> rows of <paramref name="groupReduction"/> values in <paramref name="groups"/> groups: a
    /// group's rows (<c>outputs / groups x groupReduction</c> floats) up to <see cref="MaxGroupValues"/>.
    /// </summary>
    public static bool DequantizesByGroup(long outputs, long groups, long groupReduction) =>
        groups >= 1 && outputs % groups == 0 && outputs / groups * groupReduction <= MaxGroupValues;

    /// <summary>
    /// Values of one group's dequantized rows up to which each thread keeps them in a buffer of its own (1 MiB, a Zen 5
    /// core's L2; the buffer stays allocated for the thread's next call). Larger groups (a grouped Conv1d of 48 channels x
    /// 128 taps a group: 295K) are dequantized once for the call.
    /// </summary>
    internal const int MaxGroupValues = 1 << 18;

    private static void Run(GroupWeights weight, int outputs, int groups, Im2Col unfold, float* images, float* bias, float* y, InputFakeQuantization? input)
    {
        if (groups < 1 || unfold.Channels % groups != 0 || outputs % groups != 0)
            throw new ArgumentException($"{groups} group(s) must divide both the {unfold.Channels} input channels and the {outputs} outputs.", nameof(groups));
        if (groups > 1 && !FusesInputQuantization(unfold))
            throw new ArgumentException("Grouped convolutions run only on the padded image (phase rows up to MaxWideRow).", nameof(groups));
        if (input is not null && !FusesInputQuantization(unfold))
            throw new ArgumentException("Input quantization is fused only where the kernel copies the image (phase rows up to MaxWideRow); quantize the input first.", nameof(input));
        if (Float512.IsSupported) Run<Float512, Vector512<float>>(weight, outputs, groups, unfold, images, bias, y, input);
        else if (Float256.IsSupported) Run<Float256, Vector256<float>>(weight, outputs, groups, unfold, images, bias, y, input);
        else if (Float128.IsSupported) Run<Float128, Vector128<float>>(weight, outputs, groups, unfold, images, bias, y, input);
        else Run<Float1, float>(weight, outputs, groups, unfold, images, bias, y, input);
    }

    /// <summary>Phase row length (<see cref="PhaseGrid.PhaseWidth"/>) up to which the kernel runs on the padded image (<see cref="RunWide"/>): its per-item scratch of 4 such rows stays a small stack buffer.</summary>
    internal const int MaxWideRow = 2048;

    /// <summary>
    /// Whether <see cref="Run(float*, int, int, Im2Col, float*, float*, float*, InputFakeQuantization?)"/> takes <see cref="RunWide"/> for this geometry (phase rows up to <see cref="MaxWideRow"/>),
    /// and can therefore apply a static input quantization itself as it copies the image.
    /// </summary>
    public static bool FusesInputQuantization(Im2Col unfold) => new PhaseGrid(unfold).PhaseWidth <= MaxWideRow;

    private static void Run<TW, TVec>(GroupWeights weight, int outputs, int groups, Im2Col u, float* images, float* bias, float* y, InputFakeQuantization? input)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        if (FusesInputQuantization(u))
        {
            RunWide<TW, TVec>(weight, outputs, groups, u, images, bias, y, input);
            return;
        }
        int positions = u.Positions, k = u.Rows, blocks = (positions + Block - 1) / Block;
        int size = u.ImageSize;
        KernelThreads.For(u.Images * blocks, (long)outputs * k * Block, item =>
        {
            int image = item / blocks, p0 = item % blocks * Block, count = Math.Min(Block, positions - p0);
            // Columns padded to whole steps of VectorsPerStep vectors (zeros), so the micro-kernel never reads past a row.
            int step = VectorsPerStep * TW.Count, width = (count + step - 1) / step * step;
            float* columns = stackalloc float[k * width];
            float* source = images + (nint)image * size;
            for (int r = 0; r < k; r++)
            {
                float* row = columns + (nint)r * width;
                u.Row(source, r, p0, count, row, 0f);
                for (int j = count; j < width; j++) row[j] = 0f;
            }
            float* output = y + (nint)image * outputs * positions + p0;
            float* weightRows = weight.Group(0, outputs);
            float* tail = stackalloc float[RowsPerStep * step];
            int* offsets = stackalloc int[k];
            for (int r = 0; r < k; r++) offsets[r] = r * width;
            for (int o = 0; o < outputs; o += RowsPerStep)
            {
                int stepRows = Math.Min(RowsPerStep, outputs - o);
                for (int p = 0; p < width; p += step)
                {
                    bool whole = p + step <= count;
                    float* dst = whole ? output + (nint)o * positions + p : tail;
                    nint ldy = whole ? positions : step;
                    Step<TW, TVec>(weightRows + (nint)o * k, k, stepRows, columns + p, offsets, bias is null ? null : bias + o, dst, ldy);
                    if (whole) continue;
                    for (int r = 0; r < stepRows; r++)
                        new Span<float>(tail + r * step, count - p).CopyTo(new Span<float>(output + (nint)(o + r) * positions + p, count - p));
                }
            }
        });
    }

    /// <summary>
    /// No columns are built. Each image is copied once, zero-padded and split into stride phases (<see cref="PhaseGrid"/>:
    /// at stride 1 the padded image itself), by the work item that reads it (an image's group of planes, where
    /// <see cref="PadsPerItem"/>) or all images into one buffer before the items start; the outputs are computed on a "wide" grid of <c>OutH x PhaseWidth</c>
    /// positions, on which every reduction row <c>(c, kh, kw)</c> is a run of the copy from <see cref="PhaseGrid.Offset"/>.
    /// The <c>PhaseWidth - OutW</c> extra positions of each output row (reads that run into the next row) are computed and
    /// dropped: 8% more multiply-adds for MNIST's 28-wide conv1, 18% for its 13-wide conv2, where unfolding the columns
    /// cost as much as the multiply-adds (4 of 5 us, 12 of 23 us); one in 113 for a 224x224 stride-2 stem.
    /// A grouped convolution reads, for each group's output channels, the same runs shifted to the group's first plane:
    /// a reduction row's offset is linear in its channel (<see cref="PhaseGrid.Offset"/>).
    /// </summary>
    private static void RunWide<TW, TVec>(GroupWeights weight, int outputs, int groups, Im2Col u, float* images, float* bias, float* y, InputFakeQuantization? input)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        var grid = new PhaseGrid(u);
        int k = u.Rows / groups, groupOutputs = outputs / groups, positions = u.Positions, outH = u.OutH, outW = u.OutW;
        int wp = grid.PhaseWidth, step = VectorsPerStep * TW.Count, half = step / 2;
        // A group's reduction can be long (a grouped Conv1d's 48 channels x 128 taps): its offsets on the heap.
        Span<int> offsetSpan = k <= MaxReduction ? stackalloc int[k] : new int[k];
        for (int j = 0; j < k; j++) offsetSpan[j] = grid.Offset(j);
        fixed (int* offsets = offsetSpan)
        {
            int* pOffsets = offsets;

            // Output rows oh0..oh1-1 of one image for one group's output channels, the group's padded planes at source.
            void Rows(float* source, int image, int g, int oh0, int oh1)
            {
                // Whole steps, then half a step where the positions end in its first half (a 14x14 image's 224 wide
                // positions: 3.5 steps of 64, computed as 256 before).
                int wide = (oh1 - oh0) * wp, width = (wide + half - 1) / half * half, whole = width / step * step;
                float* scratch = stackalloc float[RowsPerStep * width];
                float* output = y + (nint)image * outputs * positions + (nint)oh0 * outW;
                source += (nint)oh0 * wp;
                int first = g * groupOutputs, end = first + groupOutputs;
                float* groupRows = weight.Group(g, groupOutputs);
                for (int o = first; o < end; o += RowsPerStep)
                {
                    int rows = Math.Min(RowsPerStep, end - o);
                    float* w = groupRows + (nint)(o - first) * k, b = bias is null ? null : bias + o;
                    for (int p = 0; p < whole; p += step)
                        Step<TW, TVec>(w, k, rows, source + p, pOffsets, b, scratch + p, width);
                    if (whole < width) HalfStep<TW, TVec>(w, k, rows, source + whole, pOffsets, b, scratch + whole, width);
                    // Narrow rows as whole vectors where the item's rows of the channel leave room.
                    for (int r = 0; r < rows; r++)
                        for (int oh = 0; oh < oh1 - oh0; oh++)
                            CopyRow<TW, TVec>(scratch + r * width + oh * wp, output + (nint)(o + r) * positions + oh * outW, outW, (oh1 - oh0 - oh) * outW);
                }
            }

            if (PadsPerItem(u, groups, (long)outputs * k * positions * u.Images))
            {
                // Items: an image's group, its planes padded into a rented buffer just before they are read (followed by
                // zeros for the reads that run past the last plane, as in PaddedCopy); a group's images one after the
                // other, so that a thread's next item mostly reads the group's weight rows it has (GroupWeights).
                int channels = u.Channels / groups, imageSize = u.ImageSize, planeSize = u.Height * u.Width, count = u.Images;
                nint planeValues = (nint)(grid.ImageValues / u.Channels), groupValues = channels * planeValues, slack = step + wp;
                int rowsPerRun = Math.Clamp(MaxItemPositions / wp, 1, outH);
                var columns = grid.ColumnPhases();
                KernelThreads.For(count * groups, (long)groupOutputs * k * outH * wp, item =>
                {
                    int g = item / count, image = item % count;
                    float[] rented = ArrayPool<float>.Shared.Rent((int)(groupValues + slack));
                    try
                    {
                        fixed (float* planes = rented)
                        {
                            float* source = images + (nint)image * imageSize + (nint)g * channels * planeSize;
                            for (int c = 0; c < channels; c++)
                                PadPlane(u, grid, source + (nint)c * planeSize, planes + c * planeValues, input, columns);
                            new Span<float>(planes + groupValues, (int)slack).Clear();
                            for (int oh0 = 0; oh0 < outH; oh0 += rowsPerRun)
                                Rows(planes, image, g, oh0, Math.Min(outH, oh0 + rowsPerRun));
                        }
                    }
                    finally
                    {
                        ArrayPool<float>.Shared.Return(rented);
                    }
                });
                return;
            }

            nint padded = (nint)grid.ImageValues, imageGroupValues = (nint)(grid.ImageValues / groups);
            float* buffer = PaddedCopy(u, grid, images, step, input);
            try
            {
                int rowsPerItem = RowsPerItem(u.Images * groups, outH, wp, half), blocks = (outH + rowsPerItem - 1) / rowsPerItem;
                // Items: runs of output rows of an image, for one group's output channels (a group's runs one after the other).
                int groupBlocks = u.Images * blocks;
                KernelThreads.For(groupBlocks * groups, (long)groupOutputs * k * rowsPerItem * wp, item =>
                {
                    int g = item / groupBlocks, block = item % groupBlocks;
                    int image = block / blocks, oh0 = block % blocks * rowsPerItem;
                    Rows(buffer + image * padded + g * imageGroupValues, image, g, oh0, Math.Min(outH, oh0 + rowsPerItem));
                });
            }
            finally
            {
                NativeMemory.AlignedFree(buffer);
            }
        }
    }

    /// <summary>
    /// Whether <see cref="RunWide"/> pads each image's group of planes in the work item that reads them rather than every
    /// image into one buffer first: where there are at least as many items (images x groups) as threads, or the call is
    /// small (up to <see cref="PerItemMaxWork"/>). An item then reads its planes while they are in the core's cache, and
    /// the padding is no step of its own between two waits for all threads. Measured (docs/BENCHMARKS.md, stop 39; one
    /// process each, paired with float32): grouped 3x3 layers 0.61-1.15x float32's time per item where 0.83-1.65x in one
    /// buffer, MNIST conv2 at batch 64 0.73x against 0.83x; an image alone in a large call took 1.25x per item on one
    /// thread against 0.80x in one buffer on two (16->64 on 56x56 at batch 1).
    /// </summary>
    private static bool PadsPerItem(Im2Col u, int groups, long work) =>
        ForcedPaddingPerItem ?? ((long)u.Images * groups >= KernelThreads.Count || work <= PerItemMaxWork);

    /// <summary>
    /// Multiply-adds up to which <see cref="RunWide"/> pads per item even where an item is alone (MNIST conv2 at batch
    /// 1, 557K: 14 us per item on one thread, 30 us in one buffer on two).
    /// </summary>
    internal const long PerItemMaxWork = 1 << 21;

    /// <summary>For the bench: false pads every image into one buffer first, true pads per work item; null: <see cref="PadsPerItem"/>'s rule.</summary>
    internal static bool? ForcedPaddingPerItem { get; set; }

    /// <summary>
    /// <paramref name="n"/> floats from <paramref name="src"/> to <paramref name="dst"/> in whole vectors, the last one
    /// overlapping the one before where <paramref name="n"/> is no multiple of the width (rows narrower than a vector
    /// value by value). A copy call per output row (26 floats for MNIST's conv1) took over a third of that layer's samples
    /// at batch 500 (docs/BENCHMARKS.md, stop 32).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void CopyRow<TW, TVec>(float* src, float* dst, int n)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        if (n < TW.Count)
        {
            for (int j = 0; j < n; j++) dst[j] = src[j];
            return;
        }
        for (int j = 0; j + TW.Count <= n; j += TW.Count) TW.Store(TW.Load(src + j), dst + j);
        if (n % TW.Count != 0) TW.Store(TW.Load(src + n - TW.Count), dst + n - TW.Count);
    }

    /// <summary>
    /// A row of <paramref name="n"/> outputs into <paramref name="dst"/>, which has <paramref name="room"/> floats of the
    /// channel's output from there: a row narrower than a vector as one vector where the room allows (its lanes past the
    /// row land on the next rows' first values, which are copied after it), else <see cref="CopyRow{TW, TVec}(float*, float*, int)"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void CopyRow<TW, TVec>(float* src, float* dst, int n, int room)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        if (n < TW.Count && room >= TW.Count) TW.Store(TW.Load(src), dst);
        else CopyRow<TW, TVec>(src, dst, n);
    }

    /// <summary>
    /// Output rows per work item of <see cref="RunWide"/>: at least about <see cref="Block"/> wide positions, at most
    /// <see cref="MaxItemPositions"/>, the count that gives the busiest thread the fewest positions to compute (items
    /// shared out in turn, each rounded up to whole <paramref name="granule"/>s of positions; <paramref name="items"/>:
    /// images times groups): a 113-wide row of a stride-2 stem is 113 of 128 computed
    /// positions alone, 1,582 of 1,600 fourteen at a time.
    /// </summary>
    private static int RowsPerItem(int items, int outH, int rowLength, int granule)
    {
        int least = Math.Clamp(Block / rowLength, 1, outH), best = least, threads = Math.Max(1, KernelThreads.Count);
        long fewest = long.MaxValue;
        for (int rows = least; rows <= outH && (rows == least || rows * rowLength <= MaxItemPositions); rows++)
        {
            long all = (long)items * ((outH + rows - 1) / rows);
            long busiest = (all + threads - 1) / threads * ((rows * rowLength + granule - 1) / granule * granule);
            if (busiest < fewest) (best, fewest) = (rows, busiest);
        }
        return best;
    }

    /// <summary>Wide positions up to which a work item of <see cref="RunWide"/> may grow (its scratch: four output channels' rows of them, 32 KiB).</summary>
    private const int MaxItemPositions = 2048;

    /// <summary>
    /// The images of <paramref name="u"/> copied by <see cref="Pad"/> into a new 64-byte-aligned buffer (free it with
    /// <see cref="NativeMemory.AlignedFree"/>), followed by zeros for the reads that run past the last image: a reader
    /// of runs of <paramref name="step"/> values from a reduction row's start (<see cref="PhaseGrid.Offset"/>) reads
    /// less than a step plus a phase row past it (a reduction row starts at most one phase row before the end of its plane).
    /// </summary>
    internal static float* PaddedCopy(Im2Col u, PhaseGrid grid, float* images, int step, InputFakeQuantization? input)
    {
        nint values = (nint)grid.ImageValues * u.Images, slack = step + grid.PhaseWidth;
        float* buffer = (float*)NativeMemory.AlignedAlloc((nuint)(values + slack) * sizeof(float), 64);
        Pad(u, grid, images, buffer, input);
        new Span<float>(buffer + values, (int)slack).Clear();
        return buffer;
    }

    /// <summary>
    /// Copies the images into <paramref name="destination"/> in the layout of <paramref name="grid"/>, zero where padded,
    /// fake-quantized by <paramref name="input"/> when given (the simulated path quantizes, then pads with zeros): a work
    /// item per plane, every phase row written once (its values, zeros around them).
    /// </summary>
    private static void Pad(Im2Col u, PhaseGrid grid, float* images, float* destination, InputFakeQuantization? input)
    {
        nint planeValues = (nint)(grid.ImageValues / u.Channels);
        nint source = (nint)images, target = (nint)destination;
        var columns = grid.ColumnPhases();
        KernelThreads.For(u.Images * u.Channels, 4L * planeValues, plane =>
            PadPlane(u, grid, (float*)source + (nint)plane * u.Height * u.Width, (float*)target + plane * planeValues, input, columns));
    }

    /// <summary>
    /// One channel's plane of <paramref name="grid"/> (<see cref="PhaseGrid.ImageValues"/> / channels values at
    /// <paramref name="dst"/>) from the <c>H x W</c> values at <paramref name="src"/>, as <see cref="Pad"/> writes it;
    /// <paramref name="columns"/>: <see cref="PhaseGrid.ColumnPhases"/>.
    /// </summary>
    internal static void PadPlane(Im2Col u, PhaseGrid grid, float* src, float* dst, InputFakeQuantization? input, ColumnPhase[] columns)
    {
        int h = u.Height, w = u.Width, paddedRows = grid.PhaseHeight * u.StrideH;
        // Stride 1 without padding columns: the phase rows are the image's rows.
        bool unpaddedRows = u.StrideH == 1 && u.StrideW == 1 && u.PadW == 0;
        nint planeValues = (nint)(grid.ImageValues / u.Channels);
        if (unpaddedRows)
        {
            // The image's rows are the copy's rows, one run: copied (or quantized) in one pass, not row by row, where
            // the MNIST CNN's 13- and 28-value rows ran in the vector loops' scalar tails.
            new Span<float>(dst, u.PadH * w).Clear();
            var values = new ReadOnlySpan<float>(src, h * w);
            var copy = new Span<float>(dst + (nint)u.PadH * w, h * w);
            if (input is { } quantization) quantization.Apply(values, copy);
            else values.CopyTo(copy);
            new Span<float>(dst + (nint)(u.PadH + h) * w, (paddedRows - u.PadH - h) * w).Clear();
            return;
        }
        // A static W8A8 plane is fake-quantized after it is laid out, in one call over the plane in place, where a zero
        // stays zero (the zero point is a code): row by row, the 14-value rows of a depthwise layer ran in the
        // quantization's scalar tail, and a stride-2 plane quantized into a copy first cost the depthwise kernel 0.3-0.4x
        // float32's time more than weight-only (docs/BENCHMARKS.md, stop 37).
        bool quantizeAfter = input is { } q && q.ZeroPoint >= q.QMin && q.ZeroPoint <= q.QMax;
        if (u.StrideH == 1 && u.StrideW == 1)
        {
            // Stride 1: each row's values between padding columns, the padding of a row's end and the next row's
            // start one run of zeros, without a WriteRow call per row (its phase arithmetic showed in a profile of
            // the packed GEMM reading 256->256 on 14x14 in place).
            int wp = grid.PhaseWidth, pad = u.PadW;
            new Span<float>(dst, u.PadH * wp + pad).Clear();
            float* at = dst + (nint)u.PadH * wp + pad;
            for (int r = 0; r < h; r++, at += wp)
            {
                if (input is { } rowQuantization && !quantizeAfter)
                    rowQuantization.Apply(new ReadOnlySpan<float>(src + (nint)r * w, w), new Span<float>(at, w));
                else CopyShort(src + (nint)r * w, at, w);
                PhaseGrid.Fill(at + w, r + 1 < h ? 2 * pad : (int)(dst + planeValues - (at + w)), 0f);
            }
        }
        else
        {
            // Strided: rows gathered into their phases, read in place; the stride-2 gather reads a value past a row, so
            // the last row is copied with a value to spare (and, where the plane cannot be quantized in place, the
            // whole plane, quantized).
            // (Rented, not on the stack: a depthwise Conv1d's row is its whole sequence.)
            bool paired = WritesPairedRows(u, grid) && Avx512F.IsSupported; // (forced on or not, only with AVX-512)
            bool readsPast = u.StrideW != 1 && !paired, copiesPlane = input is not null && !quantizeAfter;
            float[]? spare = copiesPlane ? ArrayPool<float>.Shared.Rent(h * w + 1) : readsPast ? ArrayPool<float>.Shared.Rent(w + 1) : null;
            try
            {
                fixed (float* copy = spare)
                {
                    if (copiesPlane)
                    {
                        input!.Value.Apply(new ReadOnlySpan<float>(src, h * w), new Span<float>(copy, h * w));
                        copy[h * w] = 0f;
                    }
                    else if (readsPast)
                    {
                        new ReadOnlySpan<float>(src + (nint)(h - 1) * w, w).CopyTo(new Span<float>(copy, w));
                        copy[w] = 0f;
                    }
                    if (paired) WritePairedRows(u, grid, copiesPlane ? copy : src, dst, paddedRows);
                    else
                        for (int r = 0; r < paddedRows; r++)
                        {
                            int sourceRow = r - u.PadH;
                            float* row = sourceRow < 0 || sourceRow >= h ? null
                                : copiesPlane ? copy + (nint)sourceRow * w
                                : sourceRow == h - 1 && readsPast ? copy : src + (nint)sourceRow * w;
                            grid.WriteRow(dst, r, row, 0f, columns);
                        }
                }
            }
            finally
            {
                if (spare is not null) ArrayPool<float>.Shared.Return(spare);
            }
        }
        if (quantizeAfter)
        {
            var plane = new Span<float>(dst, (int)planeValues);
            input!.Value.Apply(plane, plane);
        }
    }

    /// <summary>
    /// Whether <see cref="PadPlane"/> writes this geometry's rows through <see cref="WritePairedRows"/>: stride 2 across,
    /// phase rows of up to 16 values (one vector), AVX-512 in use (its masked loads and stores). Longer rows (two
    /// vectors: 56x56 planes) measured alike or slower that way than through <see cref="PhaseGrid.WriteRow"/>.
    /// </summary>
    private static bool WritesPairedRows(Im2Col u, PhaseGrid grid) =>
        u.StrideW == 2 && grid.PhaseWidth <= 16 && (ForcedPairedRows ?? (Simd.Use512 && Avx512F.IsSupported));

    /// <summary>Whether <see cref="PadPlane"/> writes the rows of <paramref name="u"/>'s images through <see cref="WritesPairedRows(Im2Col, PhaseGrid)"/>'s rule.</summary>
    internal static bool WritesPairedRows(Im2Col u) => WritesPairedRows(u, new PhaseGrid(u));

    /// <summary>
    /// For the bench and tests: false writes every strided row through <see cref="PhaseGrid.WriteRow"/>, true takes
    /// <see cref="WritePairedRows"/> for every geometry it can write (stride 2 across, phase rows up to 16 values) where
    /// AVX-512 is supported, whatever <see cref="Simd.MaxBits"/>; null: <see cref="WritesPairedRows(Im2Col, PhaseGrid)"/>'s rule.
    /// </summary>
    internal static bool? ForcedPairedRows { get; set; }

    /// <summary>
    /// The <paramref name="paddedRows"/> padded rows of a channel (<paramref name="values"/>: its <c>H x W</c> values)
    /// into its phase rows at <paramref name="dst"/>, stride 2 across and phase rows of up to 16 values, as
    /// <see cref="PhaseGrid.WriteRow"/> writes them with zero padding: phase b's value l of a row is the row's value
    /// <c>2l + b - padW</c> (zero outside the row). Per phase row, the 32 row values it comes from in two masked loads
    /// (lanes outside the row zero, and not read), their even lanes in one permutation and a masked store; the masks,
    /// the same for every row, are made once. Through <see cref="PhaseGrid.WriteRow"/> a 28-value row takes two gathers
    /// of 14 values in 4-value vectors and scalars, a division and the padding value by value (docs/BENCHMARKS.md, stop
    /// 39: the route with those rows against this one).
    /// </summary>
    private static void WritePairedRows(Im2Col u, PhaseGrid grid, float* values, float* dst, int paddedRows)
    {
        int wp = grid.PhaseWidth, ph = grid.PhaseHeight, w = u.Width;
        var lanes = Vector512<int>.Indices;
        var width = Vector512.Create(w);
        var store = Vector512.LessThan(lanes, Vector512.Create(wp)).AsSingle();
        // Per column phase b: the two loads' lanes (row values b - padW + 0..31 inside the row).
        Span<Vector512<float>> loads = stackalloc Vector512<float>[4];
        for (int b = 0; b < 2; b++)
        {
            var low = lanes + Vector512.Create(b - u.PadW);
            var high = low + Vector512.Create(16);
            loads[2 * b] = (Vector512.GreaterThanOrEqual(low, Vector512<int>.Zero) & Vector512.LessThan(low, width)).AsSingle();
            loads[2 * b + 1] = (Vector512.GreaterThanOrEqual(high, Vector512<int>.Zero) & Vector512.LessThan(high, width)).AsSingle();
        }
        var evens = lanes * 2;
        nint phaseValues = (nint)ph * wp;
        for (int r = 0, a = 0, i = 0; r < paddedRows; r++)
        {
            int sourceRow = r - u.PadH;
            float* phase = dst + ((nint)a * 2 * ph + i) * wp;
            if (sourceRow < 0 || sourceRow >= u.Height)
            {
                Avx512F.MaskStore(phase, store, Vector512<float>.Zero);
                Avx512F.MaskStore(phase + phaseValues, store, Vector512<float>.Zero);
            }
            else
            {
                float* row = values + (nint)sourceRow * w;
                for (int b = 0; b < 2; b++)
                {
                    float* first = row + b - u.PadW;
                    var pair = Avx512F.PermuteVar16x32x2(Avx512F.MaskLoad(first, loads[2 * b], Vector512<float>.Zero), evens,
                        Avx512F.MaskLoad(first + 16, loads[2 * b + 1], Vector512<float>.Zero));
                    Avx512F.MaskStore(phase + b * phaseValues, store, pair);
                }
            }
            if (++a == u.StrideH)
            {
                a = 0;
                i++;
            }
        }
    }

    /// <summary>
    /// <paramref name="n"/> floats from <paramref name="src"/> to <paramref name="dst"/> (not overlapping) in whole
    /// vectors, the last overlapping the one before, so that nothing outside either run is read or written; rows of up to
    /// 64 values without a call (a copy call per 14-value row was about a tenth of a depthwise 14x14 layer's samples), longer
    /// ones through <c>Buffer.MemoryCopy</c>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void CopyShort(float* src, float* dst, int n)
    {
        if (n > 64)
            Buffer.MemoryCopy(src, dst, (long)n * sizeof(float), (long)n * sizeof(float));
        else if (n >= 16)
        {
            for (int j = 0; j + 16 <= n; j += 16) Vector512.Store(Vector512.Load(src + j), dst + j);
            if (n % 16 != 0) Vector512.Store(Vector512.Load(src + n - 16), dst + n - 16);
        }
        else if (n >= 8)
        {
            Vector256.Store(Vector256.Load(src), dst);
            Vector256.Store(Vector256.Load(src + n - 8), dst + n - 8);
        }
        else if (n >= 4)
        {
            Vector128.Store(Vector128.Load(src), dst);
            Vector128.Store(Vector128.Load(src + n - 4), dst + n - 4);
        }
        else
            for (int j = 0; j < n; j++) dst[j] = src[j];
    }

    /// <summary>Vectors of positions per micro-kernel step (with <see cref="RowsPerStep"/>: 16 accumulators, 4 loads and 4 broadcasts per 16 multiply-adds).</summary>
    private const int VectorsPerStep = 4;

    /// <summary>Up to four output channels (<paramref name="rows"/>) times <see cref="VectorsPerStep"/> vectors of positions; reduction row j's values start at <c>columns + offsets[j]</c>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Step<TW, TVec>(float* w, int k, int rows, float* columns, int* offsets, float* bias, float* y, nint ldy)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        // Missing rows repeat the last one (their results are not stored).
        float* w0 = w, w1 = w + (rows > 1 ? k : 0), w2 = w + (rows > 2 ? 2 * k : 0), w3 = w + (rows > 3 ? 3 * k : 0);
        TVec a0 = TW.Create(bias is null ? 0f : bias[0]), a1 = TW.Create(bias is null || rows < 2 ? 0f : bias[1]);
        TVec a2 = TW.Create(bias is null || rows < 3 ? 0f : bias[2]), a3 = TW.Create(bias is null || rows < 4 ? 0f : bias[3]);
        TVec b0 = a0, b1 = a1, b2 = a2, b3 = a3;
        TVec c0 = a0, c1 = a1, c2 = a2, c3 = a3;
        TVec d0 = a0, d1 = a1, d2 = a2, d3 = a3;
        int n = TW.Count;
        for (int j = 0; j < k; j++)
        {
            float* c = columns + offsets[j];
            TVec x0 = TW.Load(c), x1 = TW.Load(c + n), x2 = TW.Load(c + 2 * n), x3 = TW.Load(c + 3 * n);
            TVec v = TW.Create(w0[j]);
            a0 = TW.MultiplyAdd(v, x0, a0);
            b0 = TW.MultiplyAdd(v, x1, b0);
            c0 = TW.MultiplyAdd(v, x2, c0);
            d0 = TW.MultiplyAdd(v, x3, d0);
            v = TW.Create(w1[j]);
            a1 = TW.MultiplyAdd(v, x0, a1);
            b1 = TW.MultiplyAdd(v, x1, b1);
            c1 = TW.MultiplyAdd(v, x2, c1);
            d1 = TW.MultiplyAdd(v, x3, d1);
            v = TW.Create(w2[j]);
            a2 = TW.MultiplyAdd(v, x0, a2);
            b2 = TW.MultiplyAdd(v, x1, b2);
            c2 = TW.MultiplyAdd(v, x2, c2);
            d2 = TW.MultiplyAdd(v, x3, d2);
            v = TW.Create(w3[j]);
            a3 = TW.MultiplyAdd(v, x0, a3);
            b3 = TW.MultiplyAdd(v, x1, b3);
            c3 = TW.MultiplyAdd(v, x2, c3);
            d3 = TW.MultiplyAdd(v, x3, d3);
        }
        FloatStores.StoreFour<TW, TVec>(a0, b0, c0, d0, y);
        if (rows < 2) return;
        FloatStores.StoreFour<TW, TVec>(a1, b1, c1, d1, y + ldy);
        if (rows < 3) return;
        FloatStores.StoreFour<TW, TVec>(a2, b2, c2, d2, y + 2 * ldy);
        if (rows < 4) return;
        FloatStores.StoreFour<TW, TVec>(a3, b3, c3, d3, y + 3 * ldy);
    }

    /// <summary>
    /// <see cref="Step{TW, TVec}"/> on half the positions (two vectors): the end of a work item whose positions end in
    /// the first half of a step.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void HalfStep<TW, TVec>(float* w, int k, int rows, float* columns, int* offsets, float* bias, float* y, nint ldy)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        float* w0 = w, w1 = w + (rows > 1 ? k : 0), w2 = w + (rows > 2 ? 2 * k : 0), w3 = w + (rows > 3 ? 3 * k : 0);
        TVec a0 = TW.Create(bias is null ? 0f : bias[0]), a1 = TW.Create(bias is null || rows < 2 ? 0f : bias[1]);
        TVec a2 = TW.Create(bias is null || rows < 3 ? 0f : bias[2]), a3 = TW.Create(bias is null || rows < 4 ? 0f : bias[3]);
        TVec b0 = a0, b1 = a1, b2 = a2, b3 = a3;
        int n = TW.Count;
        for (int j = 0; j < k; j++)
        {
            float* c = columns + offsets[j];
            TVec x0 = TW.Load(c), x1 = TW.Load(c + n);
            TVec v = TW.Create(w0[j]);
            a0 = TW.MultiplyAdd(v, x0, a0);
            b0 = TW.MultiplyAdd(v, x1, b0);
            v = TW.Create(w1[j]);
            a1 = TW.MultiplyAdd(v, x0, a1);
            b1 = TW.MultiplyAdd(v, x1, b1);
            v = TW.Create(w2[j]);
            a2 = TW.MultiplyAdd(v, x0, a2);
            b2 = TW.MultiplyAdd(v, x1, b2);
            v = TW.Create(w3[j]);
            a3 = TW.MultiplyAdd(v, x0, a3);
            b3 = TW.MultiplyAdd(v, x1, b3);
        }
        TW.Store(a0, y);
        TW.Store(b0, y + n);
        if (rows < 2) return;
        TW.Store(a1, y + ldy);
        TW.Store(b1, y + ldy + n);
        if (rows < 3) return;
        TW.Store(a2, y + 2 * ldy);
        TW.Store(b2, y + 2 * ldy + n);
        if (rows < 4) return;
        TW.Store(a3, y + 3 * ldy);
        TW.Store(b3, y + 3 * ldy + n);
    }
}
