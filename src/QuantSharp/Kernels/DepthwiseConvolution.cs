using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QuantSharp.Kernels;

/// <summary>
/// A depthwise convolution (groups equal to the input channels; each input channel feeds a multiplier of
/// <c>outputs / channels</c> output channels through its own <c>KH x KW</c> taps, as MobileNet's and ConvNeXt's) from a
/// float32 weight <c>[outputs, KH * KW]</c> (a quantized weight dequantized by the threads as they start,
/// <see cref="Run(in WeightView, int, Im2Col, float*, float*, float*, InputFakeQuantization?)"/>, or whole for the call). For each image and input
/// channel the plane is copied once, padded and split into stride phases (<see cref="DirectConvolution.PadPlane"/>; a
/// static W8A8 input is fake-quantized there, in place, so there is no pass of its own), then each of its output
/// channels is computed row by row: per vector of output positions, one multiply-add per tap on a run of the plane
/// (<see cref="PhaseGrid.Offset"/>). A layer of one output per channel with small planes, a stride or more than 3x3
/// taps computes a block of channels per vector instead (<see cref="TakesLanes(Im2Col, int)"/>, <see cref="RunLanes"/>).
/// On the Zen 5 VM the dequantize-then-libtorch route took 0.97-1.31x float32's time
/// on MobileNet-like layers weight-only and 1.28-1.92x with static W8A8 (its pass over the input), and libtorch's
/// depthwise Conv1d was slow on its own (docs/BENCHMARKS.md, stop 37).
/// </summary>
/// <remarks>
/// <c>y[o, p] = bias[o] + sum_t w[o, t] * x[o / m, p, t]</c>, accumulated from the bias in order of the taps with the
/// width's multiply-add (fused where the hardware has it), so results differ from libtorch's only by float rounding.
/// </remarks>
internal static unsafe class DepthwiseConvolution
{
    /// <summary>
    /// <c>y[i] = depthwise(images[i], w) + bias</c> for the <see cref="Im2Col.Images"/> images of <paramref name="unfold"/>
    /// (<see cref="Im2Col.Channels"/> input channels, each feeding <paramref name="outputs"/> / channels consecutive
    /// output channels).
    /// </summary>
    /// <param name="weight"><paramref name="outputs"/> rows of <c>KH * KW</c> floats.</param>
    /// <param name="outputs">Output channels, a multiple of the input channels.</param>
    /// <param name="groups">Convolution groups: the input channels (the signature is <see cref="DirectConvolution.Run(float*, int, int, Im2Col, float*, float*, float*, InputFakeQuantization?)"/>'s).</param>
    /// <param name="unfold">The geometry, over all images (all channels; its <see cref="Im2Col.Rows"/> are not the weight's).</param>
    /// <param name="images">The images, <c>[Images, C, H, W]</c> contiguous.</param>
    /// <param name="bias"><paramref name="outputs"/> floats, or null.</param>
    /// <param name="y">The output, <c>[Images, outputs, Positions]</c> contiguous.</param>
    /// <param name="input">Static fake quantization applied to each plane once it is copied, or null.</param>
    public static void Run(float* weight, int outputs, int groups, Im2Col unfold, float* images, float* bias, float* y, InputFakeQuantization? input = null) =>
        Run(GroupWeights.Float(weight, unfold.KernelH * unfold.KernelW), outputs, groups, unfold, images, bias, y, input);

    /// <summary>
    /// As <see cref="Run(float*, int, int, Im2Col, float*, float*, float*, InputFakeQuantization?)"/> on the quantized
    /// <paramref name="weight"/> (<c>[outputs, KH * KW]</c>, any format <see cref="WeightDequantizer"/> reads, up to
    /// <see cref="DirectConvolution.MaxGroupValues"/> values, <see cref="ReadsQuantized"/>): for one image each work item
    /// dequantizes the rows of its planes' channels into its scratch as it starts (<see cref="GroupWeights.Rows"/>), for
    /// more each thread the whole weight once (<see cref="GroupWeights.Group"/>); with the channels in lanes each work item
    /// the rows of its blocks' channels. Dequantizing the whole weight before the
    /// call was a pass of one thread, a row of 9 values at a time: about a fifth of a 960-channel layer's time on 7x7 at
    /// batch 1 (docs/BENCHMARKS.md, stop 40).
    /// </summary>
    public static void Run(in WeightView weight, int groups, Im2Col unfold, float* images, float* bias, float* y, InputFakeQuantization? input = null)
    {
        if (weight.Cols != unfold.KernelH * unfold.KernelW || !ReadsQuantized(weight.Rows, weight.Cols))
            throw new ArgumentException($"A depthwise weight has one row of {unfold.KernelH * unfold.KernelW} taps per output, up to {DirectConvolution.MaxGroupValues} values, not [{weight.Rows}, {weight.Cols}].", nameof(weight));
        Run(GroupWeights.Quantized(weight), weight.Rows, groups, unfold, images, bias, y, input);
    }

    /// <summary>
    /// Whether <see cref="Run(in WeightView, int, Im2Col, float*, float*, float*, InputFakeQuantization?)"/> takes a weight
    /// of <paramref name="outputs"/> rows of <paramref name="taps"/>: up to <see cref="DirectConvolution.MaxGroupValues"/>
    /// values (a work item's scratch may hold all its rows).
    /// </summary>
    public static bool ReadsQuantized(long outputs, long taps) => outputs * taps <= DirectConvolution.MaxGroupValues;

    private static void Run(GroupWeights weight, int outputs, int groups, Im2Col unfold, float* images, float* bias, float* y, InputFakeQuantization? input)
    {
        if (groups != unfold.Channels)
            throw new ArgumentException($"A depthwise convolution has one group per input channel ({unfold.Channels}), not {groups}.", nameof(groups));
        if (unfold.Channels <= 0 || outputs % unfold.Channels != 0)
            throw new ArgumentException($"A depthwise convolution maps each of its {unfold.Channels} input channels to the same number of outputs; {outputs} is no multiple of it.", nameof(outputs));
        if (Float512.IsSupported) Run<Float512, Vector512<float>>(weight, outputs, unfold, images, bias, y, input);
        else if (Float256.IsSupported) Run<Float256, Vector256<float>>(weight, outputs, unfold, images, bias, y, input);
        else if (Float128.IsSupported) Run<Float128, Vector128<float>>(weight, outputs, unfold, images, bias, y, input);
        else Run<Float1, float>(weight, outputs, unfold, images, bias, y, input);
    }

    private static void Run<TW, TVec>(GroupWeights weight, int outputs, Im2Col u, float* images, float* bias, float* y, InputFakeQuantization? input)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        if (outputs == u.Channels && (ForcedLanes ?? TakesLanes(u, TW.Count)))
        {
            RunLanes<TW, TVec>(weight, u, images, bias, y, input);
            return;
        }
        // One channel's geometry: its plane in the phase layout, and its taps' offsets in that plane.
        var one = new Im2Col(1, u.Height, u.Width, u.KernelH, u.KernelW, u.StrideH, u.StrideW, u.PadH, u.PadW, u.DilationH, u.DilationW);
        var grid = new PhaseGrid(one);
        int taps = u.KernelH * u.KernelW, channels = u.Channels, multiplier = outputs / channels;
        int positions = u.Positions, outH = u.OutH, outW = u.OutW, wp = grid.PhaseWidth;
        // The plane, then the reads past it (a tap's run starts at most a phase row before the plane's end; a row's or
        // the wide grid's last vector reads at most a vector past it), then the wide grid of narrow rows.
        int planeValues = checked((int)grid.ImageValues), readsPast = wp + 2 * TW.Count;
        int wideValues = Math.Max(outH * wp, TW.Count); // the run is at least a vector (the reads past the plane allow it)
        int scratchValues = checked(planeValues + readsPast + (outW < NarrowRowVectors * TW.Count ? wideValues : 0));
        var columns = grid.ColumnPhases();
        int[] offsets = new int[taps];
        for (int t = 0; t < taps; t++) offsets[t] = grid.Offset(t);
        nint source = (nint)images, target = (nint)y, biases = (nint)bias;
        // Items of consecutive planes, a few per thread, so that each rents its scratch once.
        int planes = u.Images * channels, items = Math.Min(planes, Math.Max(1, KernelThreads.Count) * ItemsPerThread);
        // (One image's quantized weight: the rows of the item's channels after it.)
        int weightOffset = scratchValues;
        if (weight.Dequantizes && u.Images == 1) scratchValues = checked(scratchValues + (planes + items - 1) / items * multiplier * taps);
        long cost = ((long)multiplier * taps * outH * wp + planeValues) * planes / items;
        KernelThreads.For(items, cost, item =>
        {
            float[] rented = ArrayPool<float>.Shared.Rent(scratchValues);
            try
            {
                fixed (float* plane = rented)
                fixed (int* tapOffsets = offsets)
                {
                    new Span<float>(plane + planeValues, readsPast).Clear();
                    float* wide = plane + planeValues + readsPast;
                    int firstPlane = (int)((long)item * planes / items), last = (int)((long)(item + 1) * planes / items);
                    // One image: the item's planes are its channels, whose rows it dequantizes into its scratch as it
                    // starts. More: each thread dequantizes the whole weight once a call (GroupWeights.Group), not each
                    // item its channels again for every image (8 times the rows at batch 8).
                    float* rows = u.Images == 1
                        ? weight.Rows(firstPlane * multiplier, (last - firstPlane) * multiplier, plane + weightOffset) - (nint)firstPlane * multiplier * taps
                        : weight.Group(0, outputs);
                    for (int p = firstPlane; p < last; p++)
                    {
                        int image = p / channels, c = p - image * channels;
                        DirectConvolution.PadPlane(one, grid, (float*)source + (nint)p * u.Height * u.Width, plane, input, columns);
                        for (int o = c * multiplier, end = o + multiplier; o < end; o++)
                        {
                            float* w = rows + (nint)o * taps;
                            float b = biases == 0 ? 0f : ((float*)biases)[o];
                            float* dst = (float*)target + ((nint)image * outputs + o) * positions;
                            if (outW >= NarrowRowVectors * TW.Count)
                            {
                                for (int oh = 0; oh < outH; oh++)
                                    Row<TW, TVec>(plane + (nint)oh * wp, tapOffsets, taps, w, b, dst + (nint)oh * outW, outW);
                                continue;
                            }
                            // Narrow rows: the whole wide grid as one run into the scratch after the plane, then its rows.
                            Row<TW, TVec>(plane, tapOffsets, taps, w, b, wide, wideValues);
                            for (int oh = 0; oh < outH; oh++)
                                DirectConvolution.CopyRow<TW, TVec>(wide + (nint)oh * wp, dst + (nint)oh * outW, outW, positions - oh * outW);
                        }
                    }
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(rented);
            }
        });
    }

    /// <summary>
    /// For the bench and tests, read on the calling thread: true computes a call of one output per channel with the
    /// channels in lanes (<see cref="RunLanes"/>), false plane by plane; null: <see cref="TakesLanes(Im2Col, int)"/>.
    /// </summary>
    [ThreadStatic] internal static bool? ForcedLanes;

    /// <summary>
    /// Whether a call of one output per channel computes <paramref name="width"/> channels at once, one vector per
    /// output position (<see cref="RunLanes"/>), rather than plane by plane: where a padded tile of a block's planes fits
    /// a core's cache (<see cref="LanesMaxTileBytes"/>) and the call has output rows narrower than two vectors and than
    /// <see cref="LanesNarrowRows"/>, or (a Conv2d) more than 3x3 taps or a stride, or wide rows of several images at
    /// 512 bits (<see cref="LanesWideRowsMinWidth"/>). Measured on the Zen 5 VM (docs/BENCHMARKS.md,
    /// stop 41), paired in one process, at 512 bits: on the layers it takes (MobileNet's and EfficientNet's onto 7x7 and
    /// 14x14 and at stride 2, ConvNeXt's 7x7 and EfficientNet's 5x5 taps, short Conv1d sequences) in lanes at or below
    /// plane by plane's time but for ties (at batch 8: 960 channels on 7x7 0.66-0.71x float32's time against
    /// 1.31-1.53x, 5x5 taps onto 14x14 0.99-1.09x against 1.53-1.63x, a Conv1d of 4 taps over 16 steps 0.43-0.45x
    /// against 0.92-0.93x); plane by plane stays ahead for 3x3 taps at stride 1 onto rows of 28 or more (64 channels on
    /// 28x28: 0.50-0.56x against 0.56-0.62x in lanes at batch 8; 32 on 112x112: 0.32-0.35x against 0.63-0.92x at batch 1)
    /// and a Conv1d of 3 taps over 100 steps (0.49-0.54x against 0.59-0.70x at batch 8); a Conv1d takes lanes only for
    /// short sequences, whatever its taps and stride (64 channels over 16,000 steps at stride 2: 0.53-0.56x plane by
    /// plane against 0.73-0.75x in lanes at batch 8; 31 taps over 400 and 10,000 steps alike either way). At 256 bits
    /// (AVX-512 off) the same edge for 3x3 taps: rows of 14 in lanes, of 28 plane by plane.
    /// </summary>
    internal static bool TakesLanes(Im2Col u, int width)
    {
        long tileBytes = (long)(u.Height + 2 * u.PadH) * (u.Width + 2 * u.PadW) * width * sizeof(float);
        if (tileBytes > LanesMaxTileBytes) return false;
        bool narrow = u.OutW < Math.Min(2 * width, LanesNarrowRows);
        // A Conv1d's plane is one row, which plane by plane runs as well whatever its taps and stride.
        if (u.Height == 1 && u.KernelH == 1) return narrow;
        if (width >= LanesWideRowsMinWidth && u.Images >= LanesWideRowsMinImages && u.OutW >= LanesWideRowsMinOutputs && u.OutH >= LanesWideRowsMinOutputs
            && tileBytes <= LanesWideRowsMaxTileBytes)
            return true;
        return narrow || u.KernelH * u.KernelW > 9 || u.StrideH > 1 || u.StrideW > 1;
    }

    /// <summary>
    /// Lanes (512 bits) from which <see cref="TakesLanes(Im2Col, int)"/> takes planes of at least
    /// <see cref="LanesWideRowsMinOutputs"/> rows of as many outputs from <see cref="LanesWideRowsMinImages"/> images
    /// where a tile is at most <see cref="LanesWideRowsMaxTileBytes"/>: there the rows roll (<see cref="RollsRows"/>).
    /// Measured on the Zen 5 VM
    /// (docs/BENCHMARKS.md, stop 43; one build with a switch, processes alternating, int8 through the rule): MobileNet's
    /// 144 and 96 channels of 3x3 on 56x56 at batch 8 0.48-0.63x float32's time against 0.67-0.81x plane by plane, at
    /// batch 4 0.68-0.77x against 0.76-0.81x, static W8A8 and float16 weights at batch 8 0.56-0.62x against 0.70-0.82x;
    /// at batch 2 plane by plane stayed ahead (0.64-0.71x against 0.68-0.75x), 192 channels on 28x28 at batch 8 alike
    /// (0.75-0.76x against 0.74-0.76x), and 112x112 (an 832 KB tile) slower in stop 42.
    /// </summary>
    internal const int LanesWideRowsMinWidth = 16;

    /// <summary>Images from which <see cref="TakesLanes(Im2Col, int)"/> takes wide rows (<see cref="LanesWideRowsMinWidth"/>).</summary>
    internal const int LanesWideRowsMinImages = 4;

    /// <summary>Output rows, and outputs a row, from which <see cref="TakesLanes(Im2Col, int)"/> takes wide rows (<see cref="LanesWideRowsMinWidth"/>).</summary>
    internal const int LanesWideRowsMinOutputs = 48;

    /// <summary>A padded tile's bytes up to which <see cref="TakesLanes(Im2Col, int)"/> takes wide rows (a quarter of a core's L2: 62x62 at 512 bits).</summary>
    internal const long LanesWideRowsMaxTileBytes = 1 << 18;

    /// <summary>
    /// Output rows narrower than this take <see cref="TakesLanes(Im2Col, int)"/> at stride 1 with up to 3x3 taps: 14
    /// and a Conv1d's 19 did, 28 and a Conv1d's 100 did not.
    /// </summary>
    internal const int LanesNarrowRows = 24;

    /// <summary>
    /// <see cref="TakesLanes(Im2Col, int)"/> at <see cref="LaneWidth"/>, for a layer of one output per input channel.
    /// </summary>
    internal static bool TakesLanes(Im2Col u) => TakesLanes(u, LaneWidth);

    /// <summary>
    /// The channels a vector holds on this machine: the widest width <see cref="Run(float*, int, int, Im2Col, float*,
    /// float*, float*, InputFakeQuantization?)"/> runs.
    /// </summary>
    internal static int LaneWidth =>
        Float512.IsSupported ? Float512.Count : Float256.IsSupported ? Float256.Count : Float128.IsSupported ? Float128.Count : 1;

    /// <summary>
    /// Bytes up to which <see cref="TakesLanes(Im2Col, int)"/> pads a block of channels into one tile: a core's 1 MiB L2
    /// (96 channels on 112x112 at stride 2, 832 KB at 512 bits, took 0.65-0.68x float32's time at batch 8 in lanes,
    /// 0.92-0.96x plane by plane).
    /// </summary>
    internal const long LanesMaxTileBytes = 1 << 20;

    /// <summary>
    /// The call with the channels in lanes (one output channel per input channel), in units of an image's block of
    /// <c>TW.Count</c> channels, block-major (a work item's units share their blocks' weights across images): the
    /// block's planes are transposed into a padded tile of one vector per position (a static W8A8 input fake-quantized
    /// there, row by row), each output position is one vector, one multiply-add per tap from the bias in order of the
    /// taps (the same operations per value as the plane-by-plane kernel, so the same bits; <see cref="RowPositions"/>
    /// where <see cref="RollsRows"/>, else <see cref="Positions"/>), and the block's outputs are
    /// transposed back into the channels' planes. Every lane does useful work where the plane-by-plane kernel computes a
    /// 7x7 plane as a wide grid of 64 positions.
    /// </summary>
    private static void RunLanes<TW, TVec>(GroupWeights weight, Im2Col u, float* images, float* bias, float* y, InputFakeQuantization? input)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        int width = TW.Count, channels = u.Channels, taps = u.KernelH * u.KernelW, imageCount = u.Images;
        int planeSize = u.Height * u.Width, positions = u.Positions, outW = u.OutW;
        int tileW = u.Width + 2 * u.PadW, tileValues = checked((u.Height + 2 * u.PadH) * tileW * width), outValues = checked(positions * width);
        // Each input value's place in the tile, each output position's first read there, and each tap's offset from it
        // (rented: a 112x112 plane's places are 50 KB a call).
        int[] places = ArrayPool<int>.Shared.Rent(planeSize), starts = ArrayPool<int>.Shared.Rent(positions), offsets = new int[taps];
        for (int p = 0; p < planeSize; p++)
            places[p] = ((p / u.Width + u.PadH) * tileW + p % u.Width + u.PadW) * width;
        for (int p = 0; p < positions; p++)
            starts[p] = (p / outW * u.StrideH * tileW + p % outW * u.StrideW) * width;
        for (int kh = 0; kh < u.KernelH; kh++)
            for (int kw = 0; kw < u.KernelW; kw++)
                offsets[kh * u.KernelW + kw] = (kh * u.DilationH * tileW + kw * u.DilationW) * width;
        bool rolling = RollsRows<TW, TVec>(u);
        int blocks = (channels + width - 1) / width, units = imageCount * blocks;
        int items = Math.Min(units, Math.Max(1, KernelThreads.Count) * ItemsPerThread);
        // A quantized weight: each item dequantizes the rows of its blocks' channels into its scratch.
        int rowsValues = 0;
        if (weight.Dequantizes)
            for (int item = 0; item < items; item++)
                rowsValues = Math.Max(rowsValues, Channels(item).Count * taps);
        int scratchValues = checked(tileValues + outValues + (taps + 1) * width + rowsValues + 16);
        nint source = (nint)images, target = (nint)y, biases = (nint)bias;
        long cost = ((long)taps * positions + 2L * planeSize + 2L * positions) * width * units / items;
        try
        {
            KernelThreads.For(items, cost, Item);
        }
        finally
        {
            ArrayPool<int>.Shared.Return(places);
            ArrayPool<int>.Shared.Return(starts);
        }

        void Item(int item)
        {
            float[] rented = ArrayPool<float>.Shared.Rent(scratchValues);
            try
            {
                fixed (float* start = rented)
                fixed (int* place = places, at = starts, tapOffsets = offsets)
                {
                    float* tile = (float*)(((nint)start + 63) & ~(nint)63); // whole vectors on cache lines
                    float* outs = tile + tileValues, wt = outs + outValues, b = wt + taps * width;
                    ClearPadding(tile, u, width); // the interior is written by every unit
                    var (firstChannel, count) = Channels(item);
                    float* rows = weight.Rows(firstChannel, count, b + width) - (nint)firstChannel * taps;
                    int first = (int)((long)item * units / items), last = (int)((long)(item + 1) * units / items), loaded = -1;
                    for (int unit = first; unit < last; unit++)
                    {
                        int block = unit / imageCount, image = unit - block * imageCount, c0 = block * width, n = Math.Min(width, channels - c0);
                        if (block != loaded)
                        {
                            // The block's taps and biases in lanes (lanes past the channels 0).
                            for (int lane = 0; lane < width; lane++)
                            {
                                float* row = rows + (nint)(c0 + lane) * taps;
                                for (int t = 0; t < taps; t++) wt[t * width + lane] = lane < n ? row[t] : 0f;
                                b[lane] = lane < n && biases != 0 ? ((float*)biases)[c0 + lane] : 0f;
                            }
                            loaded = block;
                        }
                        ToTile((float*)source + ((nint)image * channels + c0) * planeSize, planeSize, n, tile, place);
                        if (input is { } quantization)
                            for (int ih = 0; ih < u.Height; ih++)
                            {
                                var row = new Span<float>(tile + ((nint)(ih + u.PadH) * tileW + u.PadW) * width, u.Width * width);
                                quantization.Apply(row, row);
                            }
                        if (rolling) RowPositions<TW, TVec>(tile, u, tileW, wt, TW.Load(b), outs);
                        else Positions<TW, TVec>(tile, at, positions, tapOffsets, taps, wt, TW.Load(b), outs);
                        FromLanes(outs, positions, n, width, (float*)target + ((nint)image * channels + c0) * positions);
                    }
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(rented);
            }
        }

        // The channels of an item's blocks.
        (int First, int Count) Channels(int item)
        {
            int first = (int)((long)item * units / items), last = (int)((long)(item + 1) * units / items);
            int firstChannel = first / imageCount * width;
            return (firstChannel, Math.Min(channels, ((last - 1) / imageCount + 1) * width) - firstChannel);
        }
    }

    /// <summary>
    /// Zeros the padding rows and columns of a tile of <paramref name="width"/> lanes for <paramref name="u"/>'s planes,
    /// not its interior (the whole tile for each work item was about as many bytes as the item's planes read on 112x112:
    /// 832 KB a tile at 512 bits).
    /// </summary>
    private static void ClearPadding(float* tile, Im2Col u, int width)
    {
        int tileW = u.Width + 2 * u.PadW, padRows = u.PadH * tileW * width, padColumns = u.PadW * width;
        new Span<float>(tile, padRows).Clear();
        new Span<float>(tile + (nint)(u.PadH + u.Height) * tileW * width, padRows).Clear();
        if (padColumns == 0) return;
        for (int ih = u.PadH; ih < u.PadH + u.Height; ih++)
        {
            float* row = tile + (nint)ih * tileW * width;
            new Span<float>(row, padColumns).Clear();
            new Span<float>(row + (nint)(u.PadW + u.Width) * width, padColumns).Clear();
        }
    }

    /// <summary>
    /// Whether <see cref="RunLanes"/> computes its positions row by row (<see cref="RowPositions"/>): stride 1, no
    /// dilation, output rows of at least eight positions, at 512 bits (32 vector registers: the window and the sums take
    /// 17; at 256 bits, with 16, row by row took 1.17-1.90x float32's time against 0.88-1.13x for <see cref="Positions"/>,
    /// likely spilling: the JIT's code was not read; docs/BENCHMARKS.md stop 42).
    /// </summary>
    private static bool RollsRows<TW, TVec>(Im2Col u) where TW : IFloatWidth<TVec> where TVec : struct =>
        typeof(TW) == typeof(Float512) && u.StrideH == 1 && u.StrideW == 1 && u.DilationH == 1 && u.DilationW == 1 && u.OutW >= 8;

    /// <summary>
    /// As <see cref="Positions"/> for stride 1 and no dilation, row by row: eight neighbouring positions of an output row
    /// at a time, each kernel row's inputs loaded into a window of eight vectors that rolls on by one vector a tap (one
    /// load per tap for the eight positions instead of eight), the row's last eight ending at its end (overlapping the
    /// eight before where the row is no multiple of eight). The same multiply-adds per position in the same order, so
    /// the same bits. Where <see cref="RollsRows"/>.
    /// </summary>
    private static void RowPositions<TW, TVec>(float* tile, Im2Col u, int tileW, float* w, TVec bias, float* outs)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        int width = TW.Count, outW = u.OutW, kh = u.KernelH, kw = u.KernelW;
        nint rowStride = (nint)tileW * width;
        for (int r = 0; r < u.OutH; r++)
        {
            float* rowStart = tile + r * rowStride;
            float* d = outs + (nint)r * outW * width;
            // Blocks of eight from the row's start; the last one ends at the row's end (overlapping the one before it
            // where the row is no multiple of eight: those positions are computed twice, the same way).
            for (int j = 0; ; j = Math.Min(j + 8, outW - 8))
            {
                TVec a0 = bias, a1 = bias, a2 = bias, a3 = bias, a4 = bias, a5 = bias, a6 = bias, a7 = bias;
                float* taps = w;
                for (int i = 0; i < kh; i++)
                {
                    float* x = rowStart + i * rowStride + (nint)j * width;
                    TVec x0 = TW.Load(x), x1 = TW.Load(x + width), x2 = TW.Load(x + 2 * width), x3 = TW.Load(x + 3 * width);
                    TVec x4 = TW.Load(x + 4 * width), x5 = TW.Load(x + 5 * width), x6 = TW.Load(x + 6 * width);
                    for (int t = 0; t < kw; t++, taps += width)
                    {
                        TVec x7 = TW.Load(x + (7 + t) * width), v = TW.Load(taps);
                        a0 = TW.MultiplyAdd(v, x0, a0);
                        a1 = TW.MultiplyAdd(v, x1, a1);
                        a2 = TW.MultiplyAdd(v, x2, a2);
                        a3 = TW.MultiplyAdd(v, x3, a3);
                        a4 = TW.MultiplyAdd(v, x4, a4);
                        a5 = TW.MultiplyAdd(v, x5, a5);
                        a6 = TW.MultiplyAdd(v, x6, a6);
                        a7 = TW.MultiplyAdd(v, x7, a7);
                        (x0, x1, x2, x3, x4, x5, x6) = (x1, x2, x3, x4, x5, x6, x7);
                    }
                }
                StoreEight<TW, TVec>(d + (nint)j * width, a0, a1, a2, a3, a4, a5, a6, a7);
                if (j + 8 == outW) break;
            }
        }
    }

    /// <summary>
    /// <c>outs[p] = bias + sum_t w[t] * tile[starts[p] + offsets[t]]</c>, one vector of lanes per position, eight
    /// positions at a time (eight multiply-add chains, each tap's weights loaded once for them), then one. Where
    /// <see cref="RollsRows"/> does not hold.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Positions<TW, TVec>(float* tile, int* starts, int positions, int* offsets, int taps, float* w, TVec bias, float* outs)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        int width = TW.Count, p = 0;
        for (; p + 8 <= positions; p += 8)
        {
            float* s0 = tile + starts[p], s1 = tile + starts[p + 1], s2 = tile + starts[p + 2], s3 = tile + starts[p + 3];
            float* s4 = tile + starts[p + 4], s5 = tile + starts[p + 5], s6 = tile + starts[p + 6], s7 = tile + starts[p + 7];
            TVec a0 = bias, a1 = bias, a2 = bias, a3 = bias, a4 = bias, a5 = bias, a6 = bias, a7 = bias;
            for (int t = 0; t < taps; t++)
            {
                var v = TW.Load(w + t * width);
                int o = offsets[t];
                a0 = TW.MultiplyAdd(v, TW.Load(s0 + o), a0);
                a1 = TW.MultiplyAdd(v, TW.Load(s1 + o), a1);
                a2 = TW.MultiplyAdd(v, TW.Load(s2 + o), a2);
                a3 = TW.MultiplyAdd(v, TW.Load(s3 + o), a3);
                a4 = TW.MultiplyAdd(v, TW.Load(s4 + o), a4);
                a5 = TW.MultiplyAdd(v, TW.Load(s5 + o), a5);
                a6 = TW.MultiplyAdd(v, TW.Load(s6 + o), a6);
                a7 = TW.MultiplyAdd(v, TW.Load(s7 + o), a7);
            }
            StoreEight<TW, TVec>(outs + (nint)p * width, a0, a1, a2, a3, a4, a5, a6, a7);
        }
        for (; p < positions; p++)
        {
            float* s = tile + starts[p];
            TVec a = bias;
            for (int t = 0; t < taps; t++) a = TW.MultiplyAdd(TW.Load(w + t * width), TW.Load(s + offsets[t]), a);
            TW.Store(a, outs + p * width);
        }
    }

    /// <summary>Eight positions' sums, one vector each, into <paramref name="d"/> and the seven vectors after it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreEight<TW, TVec>(float* d, TVec a0, TVec a1, TVec a2, TVec a3, TVec a4, TVec a5, TVec a6, TVec a7)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        FloatStores.StoreFour<TW, TVec>(a0, a1, a2, a3, d);
        FloatStores.StoreFour<TW, TVec>(a4, a5, a6, a7, d + 4 * TW.Count);
    }

    /// <summary>
    /// <c>tile[places[p] + lane] = src[lane * count + p]</c> for <paramref name="n"/> lanes (planes of
    /// <paramref name="count"/> values): 8 x 8 register transposes where AVX has them, the rest value by value.
    /// </summary>
    internal static void ToTile(float* src, int count, int n, float* tile, int* places)
    {
        int lane = 0;
        if (Avx.IsSupported)
            for (; lane + 8 <= n; lane += 8)
            {
                int p = 0;
                for (; p + 8 <= count; p += 8) Transposes.Transpose8x8(src + (nint)lane * count + p, count, tile + lane, places + p);
                for (; p < count; p++)
                    for (int i = lane; i < lane + 8; i++) tile[places[p] + i] = src[(nint)i * count + p];
            }
        for (; lane < n; lane++)
            for (int p = 0; p < count; p++) tile[places[p] + lane] = src[(nint)lane * count + p];
    }

    /// <summary>
    /// <c>dst[lane * count + p] = src[p * width + lane]</c> for <paramref name="n"/> lanes and <paramref name="count"/>
    /// positions (<see cref="ToTile"/> the other way, into planes).
    /// </summary>
    internal static void FromLanes(float* src, int count, int n, int width, float* dst)
    {
        int lane = 0;
        if (Avx.IsSupported)
            for (; lane + 8 <= n; lane += 8)
            {
                int p = 0;
                for (; p + 8 <= count; p += 8) Transposes.Transpose8x8(src + (nint)p * width + lane, width, dst + (nint)lane * count + p, count);
                for (; p < count; p++)
                    for (int i = lane; i < lane + 8; i++) dst[(nint)i * count + p] = src[(nint)p * width + i];
            }
        for (; lane < n; lane++)
            for (int p = 0; p < count; p++) dst[(nint)lane * count + p] = src[(nint)p * width + lane];
    }

    /// <summary>Work items per kernel thread (each a run of consecutive planes).</summary>
    private const int ItemsPerThread = 8;

    /// <summary>
    /// Rows of fewer than this many vectors are computed as one run over the wide grid (<c>OutH x PhaseWidth</c>
    /// positions) and copied out, so that each multiply-add chain has others beside it: a 14-wide row is one vector, whose
    /// nine taps were nine dependent multiply-adds.
    /// </summary>
    private const int NarrowRowVectors = 4;

    /// <summary>
    /// <c>dst[j] = bias + sum_t w[t] * src[offsets[t] + j]</c> for <c>j &lt; n</c>: four vectors at a time, then one, the
    /// last one overlapping the one before where <paramref name="n"/> is no multiple of the width (the same values
    /// again). <paramref name="n"/> is at least a vector (<see cref="NarrowRowVectors"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Row<TW, TVec>(float* src, int* offsets, int taps, float* w, float bias, float* dst, int n)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        int width = TW.Count, j = 0;
        var b = TW.Create(bias);
        for (; j + 4 * width <= n; j += 4 * width)
        {
            TVec a0 = b, a1 = b, a2 = b, a3 = b;
            for (int t = 0; t < taps; t++)
            {
                float* at = src + offsets[t] + j;
                var v = TW.Create(w[t]);
                a0 = TW.MultiplyAdd(v, TW.Load(at), a0);
                a1 = TW.MultiplyAdd(v, TW.Load(at + width), a1);
                a2 = TW.MultiplyAdd(v, TW.Load(at + 2 * width), a2);
                a3 = TW.MultiplyAdd(v, TW.Load(at + 3 * width), a3);
            }
            TW.Store(a0, dst + j);
            TW.Store(a1, dst + j + width);
            TW.Store(a2, dst + j + 2 * width);
            TW.Store(a3, dst + j + 3 * width);
        }
        for (; j + width <= n; j += width) TW.Store(Vector(src + j, offsets, taps, w, b), dst + j);
        if (j < n) TW.Store(Vector(src + n - width, offsets, taps, w, b), dst + n - width);

        static TVec Vector(float* at, int* offsets, int taps, float* w, TVec sum)
        {
            for (int t = 0; t < taps; t++) sum = TW.MultiplyAdd(TW.Create(w[t]), TW.Load(at + offsets[t]), sum);
            return sum;
        }
    }
}
