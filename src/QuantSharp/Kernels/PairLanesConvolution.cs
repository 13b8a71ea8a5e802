using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QuantSharp.Kernels;

/// <summary>
/// Grouped convolutions in bfloat16 with the output channels in lanes (<see cref="PackedMatMul.GroupedBFloat16"/> on
/// small planes), a group of one image a work item: the group's weight rows decoded and rounded to bfloat16 as pairs of
/// channels (<see cref="PackedMatMul.PairWeightRow{TD}"/>, <see cref="PackedMatMul.PairChannels"/>) put into steps of
/// (channel pair, tap) x 16 output channels, the image's channels of the group into pair planes
/// (<see cref="PackedMatMul.PairPlane"/>: channels 2p and 2p + 1 rounded to bfloat16 in one 32-bit value per padded
/// pixel, in a <see cref="PhaseGrid"/>'s layout), and for runs of up to 28 output positions
/// <see cref="Vnni512Kernel.PairDots"/> broadcasts each position's pair against the step's 16 or 32 output channels
/// (<c>vdpbf16ps</c>, 32 multiply-adds an instruction, every lane an output channel), where
/// <see cref="Vnni512Kernel.MicroBFloat16Taps"/> puts 32 positions of a wide row in the lanes (on a 7x7 plane, rows of
/// 9 of which 7 are written). The same products as the pair images' route, summed in another order (steps in
/// channel-pair order, each tap's two halves high first), in float32, then the bias added. Ungrouped layers run as one
/// group (<see cref="PackedMatMul.UngroupedLanes"/>), their chunks of 32 output channels split into parts where their
/// images are too few for the threads (<see cref="Parts"/>).
/// </summary>
internal static unsafe class PairLanesConvolution
{
    /// <summary>Output channels a weight chunk: two vectors of <see cref="Vnni512Kernel.PairDots"/>.</summary>
    private const int ChunkChannels = 32;

    /// <summary>
    /// The grouped convolution of <see cref="PackedMatMul.GroupedBFloat16"/> (same arguments, same checks done by it: an
    /// even number of channels a group, 512-bit vectors) with the output channels in lanes; the generated dot products
    /// where <see cref="Vnni512Kernel.BFloat16Supported"/> (and <see cref="PackedMatMul.UseNativeBFloat16"/>), else their
    /// portable twin (slow: for tests).
    /// </summary>
    public static void Run<TD>(in WeightView w, float* x, float* bias, float* y, Im2Col u, int groups) where TD : IWeightDecoder
    {
        int taps = u.KernelH * u.KernelW, pairs = u.Channels / 2, groupPairs = pairs / groups, steps = groupPairs * taps;
        int outputs = w.Rows / groups, chunks = (outputs + ChunkChannels - 1) / ChunkChannels, images = u.Images;
        var grid = new PhaseGrid(new Im2Col(pairs, u.Height, u.Width, u.KernelH, u.KernelW, u.StrideH, u.StrideW, u.PadH, u.PadW, u.DilationH, u.DilationW, images));
        nint planeStride = PackedMatMul.PairPlaneStride(grid, pairs);
        // A row's bfloat16 values, then a block of 8 rows' pairs (steps rounded up to 8, for the transposes).
        int blockSteps = (steps + 7) / 8 * 8;
        long groupBytes = (long)chunks * steps * 128, rowBytes = ThreadScratch.Lines(2L * (w.Cols + 32)) + ThreadScratch.Lines(4L * 8 * blockSteps), planesBytes = 4L * (groupPairs * planeStride + Slack);
        nint[] stepBytes = new nint[steps];
        for (int p = 0; p < groupPairs; p++)
            for (int t = 0; t < taps; t++) stepBytes[p * taps + t] = (p * planeStride + grid.Offset(t)) * sizeof(uint);
        // Biases with 16 more, so a vector of the last channel's lanes stays in the array.
        float[] biases = new float[w.Rows + 16];
        if (bias != null) new Span<float>(bias, w.Rows).CopyTo(biases);
        var columns = grid.ColumnPhases();
        bool shuffles = PackedMatMul.ShufflesPhases;
        var view = w;
        long call = Interlocked.Increment(ref s_calls);
        bool native = PackedMatMul.UseNativeBFloat16 && Vnni512Kernel.BFloat16Supported, rowRuns = QuadConvolution.RowRunsPay(u.OutW);
        int wp = grid.PhaseWidth, outW = u.OutW, positions = u.Positions, rows = w.Rows, plane = u.Height * u.Width;
        nint xAddress = (nint)x, yAddress = (nint)y;
        // Work items of one group of one image, in group order: each packs its group's weight into its thread's scratch
        // (unless the thread's previous item did), pairs the image's planes of the group there and computes all of its
        // positions (as QuadConvolution's RunByGroup). An ungrouped layer's chunks are split into parts where its images
        // give the threads fewer than two items each, an item a part of one image (each pairing the image's planes,
        // packing only its part's weight).
        int parts = Parts(groups, images, chunks, KernelThreads.Count);
        KernelThreads.For(groups * parts * images, (long)positions * outputs * steps * 2 / parts, item =>
        {
            int g = item / (parts * images), rest = item - g * parts * images, part = rest / images, im = rest - part * images;
            int c0 = part * chunks / parts, c1 = (part + 1) * chunks / parts;
            byte* scratch = ThreadScratch.Bytes(ref t_scratch, groupBytes + rowBytes + planesBytes, out bool grown);
            uint* weights = (uint*)scratch;
            ushort* row = (ushort*)(scratch + groupBytes);
            uint* rowPairs = (uint*)(scratch + groupBytes + ThreadScratch.Lines(2L * (view.Cols + 32)));
            uint* planes = (uint*)(scratch + groupBytes + rowBytes);
            if (grown || t_call != call || t_group != g || t_part != part)
            {
                // Lanes past a group's outputs are never written: zero.
                if (outputs % 16 != 0) new Span<byte>(weights, checked((int)groupBytes)).Clear();
                PackGroup<TD>(view, g * outputs, outputs, c0 * ChunkChannels, Math.Min(outputs, c1 * ChunkChannels), taps, groupPairs, steps, blockSteps, row, rowPairs, weights);
                t_call = call;
                t_group = g;
                t_part = part;
            }
            float* channels = (float*)xAddress + ((nint)im * 2 * pairs + (nint)g * 2 * groupPairs) * plane;
            for (int p = 0; p < groupPairs; p++)
                PackedMatMul.PairPlane(u, grid, planeStride, channels + (nint)p * 2 * plane, planes + p * planeStride, columns, shuffles: shuffles);
            new Span<uint>(planes + groupPairs * planeStride, Slack).Clear();
            fixed (nint* table = stepBytes)
            fixed (float* biasesAt = biases)
                Convolve(native, rowRuns, weights, steps, c0, c1, outputs, table, planes, biasesAt + g * outputs,
                    (float*)yAddress + ((nint)im * rows + (nint)g * outputs) * positions, positions, wp, outW, 0, u.OutH);
        });
    }

    /// <summary>
    /// Rows <c>[from, to)</c> (whole chunks) of a group's weight (<paramref name="outputs"/> rows from
    /// <paramref name="first"/>) decoded and rounded to bfloat16 as pairs of channels, <c>[C / 2, taps]</c> in step
    /// order, into <paramref name="weights"/>: row o's pair of step s in lane <c>o mod 16</c> of vector
    /// <c>o mod 32 / 16</c> of its chunk's step s. Eight rows at a time into <paramref name="block"/>
    /// (<paramref name="blockSteps"/> apart, rows past the group's zero), then moved eight steps at a time by 8 x 8
    /// transposes (<see cref="Transposes"/>), the last steps and the CPUs without AVX value by value.
    /// Row by row, one store per pair (4,608 for a group of 32 outputs and 144 steps), the work item's own code (this
    /// loop and the rows' decoding, inlined) had 27% of a profile's samples for 1024 channels in 32 groups at stride 2,
    /// batch 1, where the weight is packed once per group and call (docs/BENCHMARKS.md, stop 50).
    /// </summary>
    private static void PackGroup<TD>(in WeightView view, int first, int outputs, int from, int to, int taps, int groupPairs, int steps, int blockSteps,
        ushort* row, uint* block, uint* weights) where TD : IWeightDecoder
    {
        for (int o0 = from; o0 < to; o0 += 8)
        {
            int rows = Math.Min(8, to - o0);
            for (int r = 0; r < 8; r++)
            {
                uint* pairs = block + (nint)r * blockSteps;
                if (r >= rows)
                {
                    new Span<uint>(pairs, blockSteps).Clear();
                    continue;
                }
                PackedMatMul.PairWeightRow<TD>(view, first + o0 + r, row);
                PackedMatMul.PairChannels(row, taps, groupPairs, pairs);
            }
            // The block's rows are lanes o0 % 16 .. + 7 of one vector of their chunk (o0 is a multiple of 8).
            int chunk = o0 / ChunkChannels, stepValues = (Math.Min(ChunkChannels, outputs - chunk * ChunkChannels) + 15) / 16 * 16;
            uint* lanes = weights + (nint)chunk * steps * 32 + o0 % ChunkChannels / 16 * 16 + o0 % 16;
            int s = 0;
            if (Avx.IsSupported)
                for (; s + 8 <= steps; s += 8)
                    Transposes.Transpose8x8((float*)(block + s), blockSteps, (float*)(lanes + (nint)s * stepValues), stepValues);
            for (; s < steps; s++)
                for (int r = 0; r < rows; r++) lanes[(nint)s * stepValues + r] = block[(nint)r * blockSteps + s];
        }
    }

    /// <summary>Values of slack after a group's pair planes: a run's dot products read up to a vector past its last position.</summary>
    private const int Slack = 64;

    private static long s_calls;

    /// <summary>A thread's group: its packed weight, a row's scratch and the group's pair planes, and the call and group the weight belongs to.</summary>
    [ThreadStatic] private static byte[]? t_scratch;
    [ThreadStatic] private static long t_call;
    [ThreadStatic] private static int t_group;
    [ThreadStatic] private static int t_part;

    /// <summary>For the bench and tests: the parts a group's chunks are split into (null: <see cref="Parts"/>' rule).</summary>
    [ThreadStatic] internal static int? ForcedParts;

    /// <summary>
    /// Parts a group's <paramref name="chunks"/> are split into on <paramref name="threads"/>: for a grouped layer one;
    /// for an ungrouped one, one where its images give each thread two or more, else as many as make two a thread (at
    /// most one a chunk). Grouped layers of few items lost with parts: 160 channels in 2 groups from 28x28 at stride 2,
    /// batch 1, took 0.51-0.70x float32's time in two parts against 0.43-0.54x in one, each part pairing the group's
    /// large planes again (docs/BENCHMARKS.md, stop 50).
    /// </summary>
    internal static int Parts(int groups, int images, int chunks, int threads)
    {
        if (ForcedParts is { } forced) return Math.Clamp(forced, 1, chunks);
        return groups > 1 || images >= 2 * threads ? 1 : Math.Min(chunks, (2 * threads + images - 1) / images);
    }

    /// <summary>
    /// Output rows <c>[r0, r1)</c> of chunks <c>[c0, c1)</c> of one group of one image (<paramref name="y"/>: the
    /// group's first channel) from its pair planes (<paramref name="planes"/>) and packed weight
    /// (<paramref name="weights"/>), runs within output rows (<paramref name="rowRuns"/>) or over the wide grid, as
    /// <see cref="QuadConvolution"/>'s.
    /// </summary>
    [SkipLocalsInit] // the tile and values are written before they are read (the transposes' extra rows are read and not stored)
    private static void Convolve(bool native, bool rowRuns, uint* weights, int steps, int c0, int c1, int outputs, nint* stepBytes, uint* planes,
        float* biases, float* y, int positions, int wp, int outW, int r0, int r1)
    {
        float* tile = stackalloc float[Vnni512Kernel.QuadMaxAccumulators * 16];
        // A run's values, [position, channel], and 8 rows more: the transposes read whole blocks of 8 positions.
        float* values = stackalloc float[(Vnni512Kernel.QuadMaxAccumulators + 8) * ChunkChannels];
        for (int chunk = c0; chunk < c1; chunk++)
        {
            int first = chunk * ChunkChannels, count = Math.Min(ChunkChannels, outputs - first), vectors = (count + 15) / 16;
            int maxRun = Vnni512Kernel.QuadMaxAccumulators / vectors;
            uint* chunkWeights = weights + (nint)chunk * steps * 32;
            float* yChunk = y + (nint)first * positions;
            if (rowRuns)
            {
                // Runs within each output row, as long and as even as the accumulators allow.
                int runs = (outW + maxRun - 1) / maxRun, run = (outW + runs - 1) / runs;
                for (int oh = r0; oh < r1; oh++)
                    for (int ow = 0; ow < outW; ow += run)
                    {
                        int p = Math.Min(run, outW - ow), q = oh * wp + ow;
                        Epilogue(native, chunkWeights, steps, planes + q, stepBytes, tile, p, vectors, values, biases + first, count, yChunk, positions, q, wp, outW);
                    }
            }
            else
            {
                // Runs over the wide grid: a row's dropped columns are computed and not written.
                int q1 = (r1 - 1) * wp + outW;
                for (int q = r0 * wp; q < q1; q += maxRun)
                    Epilogue(native, chunkWeights, steps, planes + q, stepBytes, tile, Math.Min(maxRun, q1 - q), vectors, values, biases + first, count, yChunk, positions, q, wp, outW);
            }
        }
    }

    /// <summary>One run's dot products, plus the bias, 16 channels at a time into <paramref name="values"/>, then into the output planes (<see cref="QuadConvolution.WriteRun"/>).</summary>
    private static void Epilogue(bool native, uint* weights, int steps, uint* x, nint* stepBytes, float* tile, int run, int vectors,
        float* values, float* biases, int count, float* y, int positions, int q0, int wp, int outW)
    {
        if (native) Vnni512Kernel.PairDots(weights, steps, x, stepBytes, tile, run, vectors);
        else Vnni512Kernel.PairDotsTwin(weights, steps, x, stepBytes, tile, run, vectors);
        int stride = 16 * vectors;
        for (int j = 0; j < run; j++)
            for (int v = 0; v < vectors; v++)
                (Vector512.Load(tile + 16 * (j * vectors + v)) + Vector512.Load(biases + 16 * v)).Store(values + j * stride + 16 * v);
        QuadConvolution.WriteRun(values, stride, count, y, positions, q0, run, wp, outW);
    }
}
