using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QuantSharp.Kernels;

/// <summary>
/// Static W8A8 convolutions (grouped or not) with the output channels in lanes: each image is quantized once into quad
/// images (<see cref="Call.QuantizePlane"/>: per group, a plane per four input channels holding their four uint8 codes as one
/// 32-bit value per padded pixel, in the layout of a <see cref="PhaseGrid"/>), the int8 weight into steps of
/// (four channels, tap) x 16 output channels (<see cref="Call.PackRow"/>), and for runs of up to 28 output positions of
/// one group <see cref="Vnni512Kernel.QuadDots"/> broadcasts each position's four codes against the step's 16 or 32
/// output channels (<c>vpdpbusd</c>, 64 multiply-adds an instruction, every lane an output channel: groups of 16 or 32
/// channels and short rows waste none, where the pair images' 32-position strips over a 7x7 plane's wide rows used 49 of
/// 64). The sums are exact integers; each output is the integer kernels' epilogue,
/// <c>(float)((double)s_x * s_w[n] * (dot - z_x * sum(w[n]))) + bias[n]</c>, bit for bit
/// (<see cref="IntegerMatMul.RunConvolution"/>'s values for an ungrouped layer, group by group). Padding and the
/// channels that round a group up to four are the zero point's code, which adds nothing (the latter also meet zero
/// weights).
/// </summary>
internal static unsafe class QuadConvolution
{
    /// <summary>Terms a group up to which an int32 sum of products of uint8 codes and int8 weights cannot overflow (255 x 128 x terms below 2^31).</summary>
    internal const int MaxTerms = 65_000;

    /// <summary>Output channels a weight chunk: two vectors of <see cref="Vnni512Kernel.QuadDots"/>.</summary>
    private const int ChunkChannels = 32;

    /// <summary>Whether <see cref="Run"/> calls the generated dot products where they run (tests turn it off to run the twin).</summary>
    internal static volatile bool UseNative = true;

    /// <summary>Tests and the bench force the run layout on their thread (null: the rule; true: runs within output rows; false: runs over the wide grid).</summary>
    [ThreadStatic] internal static bool? ForcedRowRuns;

    /// <summary>
    /// Whether <see cref="Run"/> takes a convolution of <paramref name="outputs"/> channels in <paramref name="groups"/>
    /// groups: channels in and out divide into the groups, at most <see cref="MaxTerms"/> terms a group (channels
    /// rounded up to four), and a padded image of quad planes whose offsets fit an int.
    /// </summary>
    public static bool Fits(in Im2Col u, long outputs, long groups)
    {
        if (groups < 1 || u.Channels % groups != 0 || outputs % groups != 0 || outputs == 0) return false;
        long quads = (u.Channels / groups + 3) / 4, terms = 4 * quads * u.KernelH * u.KernelW;
        if (terms > MaxTerms) return false;
        var grid = new PhaseGrid(new Im2Col((int)Math.Min(int.MaxValue, groups * quads), u.Height, u.Width, u.KernelH, u.KernelW, u.StrideH, u.StrideW, u.PadH, u.PadW, u.DilationH, u.DilationW));
        return grid.ImageValues * u.Images <= int.MaxValue / 4;
    }

    /// <summary>
    /// The convolution of the images at <paramref name="x"/> (<c>[u.Images, C, H, W]</c>), quantized with
    /// <paramref name="scale"/>, <paramref name="zeroPoint"/> and <c>[qmin, qmax]</c> as the integer kernels quantize
    /// them (<c>clamp(round(x * (1 / scale)) + zero point, qmin, qmax)</c>), with the int8 weight <paramref name="w"/>
    /// (<c>[N, C / groups * taps]</c>, one scale a row or tensor, no zero point) in <paramref name="groups"/> groups, into
    /// <paramref name="y"/> (<c>[u.Images, N, positions]</c>) with <paramref name="bias"/> (or none). The native dot
    /// products where <see cref="Vnni512Kernel.IsSupported"/>, else their portable twin (slow: for tests).
    /// </summary>
    public static void Run(in WeightView w, float* x, float* bias, float* y, Im2Col u, int groups, float scale, int zeroPoint, int qmin, int qmax)
    {
        if (w.Format != WeightFormat.Int8 || w.GroupsPerRow != 1)
            throw new ArgumentException($"Quad convolutions need int8 weights with one scale a row or tensor, got {w.Format} in groups of {w.GroupSize}.", nameof(w));
        for (int n = 0; n < w.Rows && w.ZeroPoint != null; n++)
            if (w.Params(n, 0).ZeroPoint != 0) throw new ArgumentException("Quad convolutions need a weight without zero points (symmetric).", nameof(w));
        if (zeroPoint < qmin || zeroPoint > qmax)
            throw new ArgumentException($"Quad convolutions pad with the input's zero point, which must be one of its codes; got {zeroPoint} outside [{qmin}, {qmax}].", nameof(zeroPoint));
        if (!Fits(u, w.Rows, groups) || (long)w.Cols * groups != u.Rows)
            throw new ArgumentException($"A quad convolution needs channels that divide into the groups and {u.Rows / Math.Max(groups, 1)} terms a row; got {u.Channels} channels, {w.Rows} outputs and {w.Cols} terms in {groups} groups.", nameof(groups));
        if (w.Rows == 0 || u.Images == 0) return;
        using var call = new Call(w, u, groups, bias, scale, zeroPoint, qmin, qmax);
        if (ForcedByGroup ?? call.ByGroupPays) call.RunByGroup(x, y);
        else call.RunShared(x, y);
    }

    /// <summary>
    /// Whether <see cref="Run"/> cuts its positions into runs within output rows (rows of at least 7) rather than over
    /// the wide grid: on 7x7 planes runs of a row's 7 positions took 0.77-0.82x float32's time where runs of 28 wide
    /// positions took 0.87-0.88x (docs/BENCHMARKS.md, stop 48).
    /// </summary>
    internal static bool RowRunsPay(int outW) => outW >= 7;

    /// <summary>Tests and the bench force the work's split on their thread (null: <see cref="Call.ByGroupPays"/>; true: <see cref="Call.RunByGroup"/>; false: <see cref="Call.RunShared"/>).</summary>
    [ThreadStatic] internal static bool? ForcedByGroup;

    private static void Dots(bool native, sbyte* w, int steps, byte* x, nint* stepBytes, int* c, int positions, int vectors)
    {
        if (native) Vnni512Kernel.QuadDots(w, steps, x, stepBytes, c, positions, vectors);
        else Vnni512Kernel.QuadDotsTwin(w, steps, x, stepBytes, c, positions, vectors);
    }

    /// <summary>A static quantization in the unsigned code domain (<c>clamp(round(x * InvScale) + ZeroPoint, QMin, QMax)</c>); padding takes the zero point's code.</summary>
    private readonly record struct Codes(float InvScale, int ZeroPoint, int QMin, int QMax);

    /// <summary>Values of slack after a run of quad planes: a run's dot products read up to a vector past its last position.</summary>
    private const int Slack = 64;

    private static long s_calls;

    /// <summary>A thread's scratch for one plane's codes (<see cref="Call.QuantizePlane"/>).</summary>
    [ThreadStatic] private static byte[]? t_plane;

    /// <summary>A thread's group (<see cref="Call.RunByGroup"/>): its packed weight, offsets and quad planes, and the call and group the weight belongs to.</summary>
    [ThreadStatic] private static byte[]? t_group;
    [ThreadStatic] private static long t_call;
    [ThreadStatic] private static int t_groupIndex;

    /// <summary>
    /// One call's layout and per-channel tables, and its two ways to split the work: <see cref="RunShared"/> (the
    /// weight packed and every image quantized by all threads first, then the positions) and <see cref="RunByGroup"/>
    /// (each work item one group of one image, start to end, on its thread).
    /// </summary>
    private sealed class Call : IDisposable
    {
        private readonly WeightView _w;
        private readonly Im2Col _u;
        private readonly PhaseGrid _grid;
        private readonly ColumnPhase[] _columns;
        private readonly Codes _q;
        private readonly int _groups, _taps, _channels, _quads, _steps, _outputs, _chunks, _bands, _bandRows, _xz;
        private readonly long _planeValues, _id = Interlocked.Increment(ref s_calls);
        private readonly bool _rowRuns, _native, _permute;
        private readonly Vector512<byte> _order;
        // Native tables: the steps' byte offsets; per output channel (16 more, so a vector of the last one's lanes stays
        // in them) the scales' product, the bias and z_x * sum(w[n]).
        private readonly byte* _tables;
        private readonly nint* _stepBytes;
        private readonly double* _products;
        private readonly float* _biases;
        private readonly int* _offsets;

        public Call(in WeightView w, in Im2Col u, int groups, float* bias, float scale, int zeroPoint, int qmin, int qmax)
        {
            _w = w;
            _u = u;
            _groups = groups;
            _taps = u.KernelH * u.KernelW;
            _channels = u.Channels / groups;
            _quads = (_channels + 3) / 4;
            _steps = _quads * _taps;
            _outputs = w.Rows / groups;
            _chunks = (_outputs + ChunkChannels - 1) / ChunkChannels;
            int shift = qmin < 0 ? 128 : 0;
            _xz = zeroPoint + shift;
            _q = new Codes(1f / scale, _xz, qmin + shift, qmax + shift);
            _grid = new PhaseGrid(new Im2Col(groups * _quads, u.Height, u.Width, u.KernelH, u.KernelW, u.StrideH, u.StrideW, u.PadH, u.PadW, u.DilationH, u.DilationW, u.Images));
            _planeValues = _grid.ImageValues / (groups * _quads);
            _columns = _grid.ColumnPhases();
            _rowRuns = ForcedRowRuns ?? RowRunsPay(u.OutW);
            _native = UseNative && Vnni512Kernel.IsSupported;
            // Bands of output rows, so a call has about 8 work items a thread.
            int items = u.Images * groups;
            _bands = Math.Clamp((8 * KernelThreads.Count + items - 1) / items, 1, u.OutH);
            _bandRows = (u.OutH + _bands - 1) / _bands;
            _bands = (u.OutH + _bandRows - 1) / _bandRows;
            // The weight's permute (PackRow): byte 4t + i takes channel i's tap t (byte t + i taps), up to 16 taps.
            _permute = _taps <= 16 && Avx512Vbmi.IsSupported;
            Span<byte> indices = stackalloc byte[64];
            for (int j = 0; j < 64; j++) indices[j] = (byte)(j / 4 < _taps ? j / 4 + j % 4 * _taps : 0);
            _order = Vector512.Create<byte>(indices);
            int padded = w.Rows + 16;
            _tables = (byte*)NativeMemory.AlignedAlloc((nuint)(_steps * sizeof(nint) + padded * (sizeof(double) + sizeof(float) + sizeof(int))), 64);
            _stepBytes = (nint*)_tables;
            _products = (double*)(_stepBytes + _steps);
            _biases = (float*)(_products + padded);
            _offsets = (int*)(_biases + padded);
            for (int s = 0; s < _steps; s++) _stepBytes[s] = (nint)_grid.Offset(s) * 4;
            for (int n = 0; n < padded; n++)
            {
                _products[n] = n < w.Rows ? (double)scale * w.Params(n, 0).Scale : 0;
                _biases[n] = n < w.Rows && bias != null ? bias[n] : 0f;
                _offsets[n] = 0;
            }
        }

        public void Dispose() => NativeMemory.AlignedFree(_tables);

        /// <summary>Bytes of a group's packed weight: <c>[chunks, steps, 2, 16, 4]</c>.</summary>
        private long GroupPackedBytes => (long)_chunks * _steps * 128;

        /// <summary>
        /// Whether <see cref="RunByGroup"/> splits the work: a grouped layer whose images and groups make four work items
        /// a thread or more. Against <see cref="RunShared"/> in the same processes (docs/BENCHMARKS.md, stop 49), 384
        /// channels in 8 groups onto 14x14 at batch 1 (four items a thread) took 0.30-0.38x float32's time against
        /// 0.42-0.63x, and layers of 32 groups of 16-32 outputs onto 7x7 to 28x28 at 1-16 images 0.30-0.71x against
        /// 0.38-1.16x; an ungrouped layer at batch 1 (one item) ran on one thread (0.52-0.61x against 0.32-0.41x), and at
        /// 2-16 images the two splits took the same time (0.28-0.35x and 0.29-0.40x).
        /// </summary>
        public bool ByGroupPays => _groups > 1 && (long)_u.Images * _groups >= 4 * KernelThreads.Count;

        /// <summary>
        /// All threads pack the weight (<see cref="PackRow"/>, a row an item), then quantize the images into quad images
        /// (<see cref="QuantizePlane"/>, a plane an item), then compute (image, group, band of output rows) items.
        /// </summary>
        public void RunShared(float* x, float* y)
        {
            long groupBytes = GroupPackedBytes;
            int outputs = _outputs;
            sbyte* packed = (sbyte*)NativeMemory.AlignedAlloc((nuint)(_groups * groupBytes), 64);
            uint* codes = null;
            try
            {
                // Lanes past a group's outputs are never written: zero, as the weights' tails are.
                if (outputs % 16 != 0) new Span<byte>(packed, checked((int)(_groups * groupBytes))).Clear();
                nint packedAddress = (nint)packed;
                // A weight byte costs about what 32 multiply-adds do (KernelThreads' unit): scattered stores and a sum.
                KernelThreads.For(_w.Rows, 32L * _w.Cols, n =>
                {
                    int g = n / outputs;
                    PackRow(n, (sbyte*)packedAddress + g * groupBytes, _offsets + g * outputs);
                });
                long values = _grid.ImageValues * _u.Images;
                codes = (uint*)NativeMemory.AlignedAlloc((nuint)(values + Slack) * sizeof(uint), 64);
                new Span<uint>(codes + values, Slack).Clear();
                nint source = (nint)x, target = (nint)codes;
                int planes = _groups * _quads;
                // A value quantized, interleaved and placed costs about what 16 multiply-adds do (KernelThreads' unit).
                KernelThreads.For(_u.Images * planes, 16L * 4 * _u.Height * _u.Width, item =>
                {
                    int im = item / planes, plane = item - im * planes;
                    QuantizePlane((float*)source, im, plane, (uint*)target + im * _grid.ImageValues + plane * _planeValues);
                });
                int bands = _bands, groups = _groups, rows = _w.Rows, positions = _u.Positions;
                nint yAddress = (nint)y;
                KernelThreads.For(_u.Images * groups * bands, (long)_bandRows * _u.OutW * outputs * _steps * 4, item =>
                {
                    int band = item % bands, g = item / bands % groups, im = item / bands / groups;
                    int r0 = band * _bandRows, r1 = Math.Min(_u.OutH, r0 + _bandRows);
                    byte* image = (byte*)((uint*)target + im * _grid.ImageValues + g * _quads * _planeValues);
                    Convolve(image, (sbyte*)packedAddress + g * groupBytes, _offsets + g * outputs, g, (float*)yAddress + (nint)im * rows * positions, r0, r1);
                });
            }
            finally
            {
                NativeMemory.AlignedFree(packed);
                if (codes != null) NativeMemory.AlignedFree(codes);
            }
        }

        /// <summary>
        /// Work items of one group of one image, group by group (item <c>g * images + im</c>): each packs its group's
        /// weight into its thread's scratch (unless the thread's previous item did: the threads take runs of
        /// consecutive items), quantizes the image's planes of the group there, and computes all its positions. One
        /// pass over the threads instead of three, and a group's codes and weight stay in the core's cache.
        /// </summary>
        public void RunByGroup(float* x, float* y)
        {
            int images = _u.Images, rows = _w.Rows, positions = _u.Positions;
            long groupBytes = GroupPackedBytes, offsetBytes = ThreadScratch.Lines((_outputs + 16) * sizeof(int));
            long codeValues = _quads * _planeValues + Slack;
            nint source = (nint)x, yAddress = (nint)y;
            KernelThreads.For(_groups * images, (long)_u.Positions * _outputs * _steps * 4, item =>
            {
                int g = item / images, im = item - g * images;
                byte* scratch = ThreadScratch.Bytes(ref t_group, groupBytes + offsetBytes + codeValues * sizeof(uint), out bool grown);
                sbyte* weights = (sbyte*)scratch;
                int* offsets = (int*)(scratch + groupBytes);
                uint* codes = (uint*)(scratch + groupBytes + offsetBytes);
                if (grown || t_call != _id || t_groupIndex != g)
                {
                    if (_outputs % 16 != 0) new Span<byte>(weights, checked((int)groupBytes)).Clear();
                    for (int o = 0; o < _outputs; o++) PackRow(g * _outputs + o, weights, offsets);
                    t_call = _id;
                    t_groupIndex = g;
                }
                for (int quad = 0; quad < _quads; quad++) QuantizePlane((float*)source, im, g * _quads + quad, codes + quad * _planeValues);
                new Span<uint>(codes + _quads * _planeValues, Slack).Clear();
                Convolve((byte*)codes, weights, offsets, g, (float*)yAddress + (nint)im * rows * positions, 0, _u.OutH);
            });
        }

        /// <summary>
        /// Output rows <c>[r0, r1)</c> of group <paramref name="g"/> of one image (<paramref name="yImage"/>) from its quad
        /// planes (<paramref name="image"/>) and packed weight (<paramref name="weights"/>, <paramref name="offsets"/>: the group's).
        /// </summary>
        [SkipLocalsInit] // the tile and values are written before they are read (the transposes' extra rows are read and not stored); zeroing them was 1.9% of a profile's samples
        private void Convolve(byte* image, sbyte* weights, int* offsets, int g, float* yImage, int r0, int r1)
        {
            int* tile = stackalloc int[Vnni512Kernel.QuadMaxAccumulators * 16];
            // A run's values, [position, channel], and 8 rows more: the transposes read whole blocks of 8 positions.
            float* values = stackalloc float[(Vnni512Kernel.QuadMaxAccumulators + 8) * ChunkChannels];
            int wp = _grid.PhaseWidth, outW = _u.OutW, positions = _u.Positions, n0 = g * _outputs;
            for (int chunk = 0; chunk < _chunks; chunk++)
            {
                int first = chunk * ChunkChannels, count = Math.Min(ChunkChannels, _outputs - first), vectors = (count + 15) / 16;
                int maxRun = Vnni512Kernel.QuadMaxAccumulators / vectors;
                sbyte* chunkWeights = weights + (nint)chunk * _steps * 128;
                var epilogue = new Epilogue(offsets, _products + n0, _biases + n0, first, count, vectors, values, yImage + (nint)n0 * positions, positions, wp, outW);
                if (_rowRuns)
                {
                    // Runs within each output row, as long and as even as the accumulators allow.
                    int runs = (outW + maxRun - 1) / maxRun, run = (outW + runs - 1) / runs;
                    for (int oh = r0; oh < r1; oh++)
                        for (int ow = 0; ow < outW; ow += run)
                        {
                            int p = Math.Min(run, outW - ow), q = oh * wp + ow;
                            Dots(_native, chunkWeights, _steps, image + 4 * q, _stepBytes, tile, p, vectors);
                            epilogue.Write(tile, q, p);
                        }
                }
                else
                {
                    // Runs over the wide grid: a row's dropped columns are computed and not written.
                    int q1 = (r1 - 1) * wp + outW;
                    for (int q = r0 * wp; q < q1; q += maxRun)
                    {
                        int p = Math.Min(maxRun, q1 - q);
                        Dots(_native, chunkWeights, _steps, image + 4 * q, _stepBytes, tile, p, vectors);
                        epilogue.Write(tile, q, p);
                    }
                }
            }
        }

        /// <summary>
        /// Weight row <paramref name="n"/> (<c>[channels * taps]</c> int8) into its group's packed weight
        /// <paramref name="target"/> (<c>[chunks, steps, 2, 16, 4]</c> bytes; a chunk of one vector leaves the second's
        /// places unused): step s = (quad q, tap t) holds, in lane l of vector v, output channel <c>32 chunk + 16 v + l</c>
        /// of the group's weights for channels <c>4q .. 4q + 3</c> at tap t (zero past the group's channels); and
        /// <c>offsets[o] = xz * sum(w[n])</c> for the row's place o in its group.
        /// </summary>
        [SkipLocalsInit] // the permute's bytes are cleared where a quad is short, its output stored before it is read
        private void PackRow(int n, sbyte* target, int* offsets)
        {
            int k = _w.Cols, taps = _taps, channels = _channels;
            int o = n % _outputs, chunk = o / ChunkChannels, vectors = (Math.Min(ChunkChannels, _outputs - chunk * ChunkChannels) + 15) / 16;
            int v = o % ChunkChannels / 16, l = o % 16;
            sbyte* row = (sbyte*)_w.Data + (nint)n * k;
            // Step (quad q, tap t) of vector v, lane l: channels 4q .. 4q + 3 at tap t, one 32-bit store; steps are 64 vectors bytes apart.
            uint* lane = (uint*)(target + (nint)chunk * _steps * 128 + v * 64 + 4 * l);
            int stepValues = 16 * vectors;
            // Up to 16 taps, a quad's four channels (at most 64 bytes) are one vector, their bytes put in step order by
            // one permute (AVX512-VBMI's vpermb; byte 4t + i = channel i's tap t); byte by byte, the profile of 512
            // channels in 32 groups onto 7x7 at batch 2 had a third of its samples here.
            uint* quads = stackalloc uint[16];
            byte* bytes = stackalloc byte[64];
            for (int c = 0; c < channels; c += 4)
            {
                byte* c0 = (byte*)row + (nint)c * taps;
                int present = Math.Min(4, channels - c);
                if (_permute)
                {
                    // A whole vector where the row holds it; else the quad's bytes, zero past them (a group's last channels).
                    Vector512<byte> quad;
                    if (present == 4 && (nint)c * taps + 64 <= k) quad = Vector512.Load(c0);
                    else
                    {
                        new Span<byte>(bytes, 64).Clear();
                        new ReadOnlySpan<byte>(c0, present * taps).CopyTo(new Span<byte>(bytes, 64));
                        quad = Vector512.Load(bytes);
                    }
                    Avx512Vbmi.PermuteVar64x8(quad, _order).AsUInt32().Store(quads);
                    for (int t = 0; t < taps; t++, lane += stepValues) *lane = quads[t];
                    continue;
                }
                for (int t = 0; t < taps; t++, lane += stepValues)
                {
                    uint value = c0[t];
                    for (int i = 1; i < present; i++) value |= (uint)c0[t + i * taps] << 8 * i;
                    *lane = value;
                }
            }
            offsets[o] = _xz * SumBytes(row, k);
        }

        /// <summary>
        /// Plane <paramref name="plane"/> (<c>g * quads + q</c>) of image <paramref name="im"/> at <paramref name="x"/>
        /// into <paramref name="target"/> (the plane's place in a <see cref="PhaseGrid"/> layout): the codes of the group's
        /// channels <c>4q .. 4q + 3</c> (bytes 0-3 of each 32-bit value; the zero point's code past the group's channels and
        /// where padded), quantized and interleaved in one pass (<see cref="QuantizeKernel.QuantizeQuads"/>; without AVX-512
        /// or below 16 values, channel by channel with <see cref="QuantizeKernel.Quantize"/>, then <see cref="Interleave"/>),
        /// then each padded row written into its phase rows (<see cref="PhaseGrid.WriteRow"/>).
        /// </summary>
        public void QuantizePlane(float* x, int im, int plane, uint* target)
        {
            int h = _u.Height, width = _u.Width, planeSize = h * width, g = plane / _quads, quad = plane - g * _quads;
            // The stride-2 gather reads a value past the last row.
            byte* quantized = ThreadScratch.Bytes(ref t_plane, ThreadScratch.Lines(4L * planeSize) + 4L * (planeSize + 1), out _);
            uint* interleaved = (uint*)(quantized + ThreadScratch.Lines(4L * planeSize));
            float* first = x + ((nint)im * _u.Channels + g * _channels + 4 * quad) * planeSize;
            float* Channel(int i) => 4 * quad + i < _channels ? first + (nint)i * planeSize : null;
            if (QuantizeKernel.QuadsInVectors && planeSize >= 16)
                QuantizeKernel.QuantizeQuads(Channel(0), Channel(1), Channel(2), Channel(3), planeSize, _q.InvScale, _q.ZeroPoint, _q.QMin, _q.QMax, interleaved);
            else
            {
                for (int i = 0; i < 4; i++)
                {
                    var dst = new Span<byte>(quantized + i * planeSize, planeSize);
                    float* src = Channel(i);
                    if (src == null) dst.Fill((byte)_q.ZeroPoint);
                    else QuantizeKernel.Quantize(new ReadOnlySpan<float>(src, planeSize), _q.InvScale, _q.ZeroPoint, _q.QMin, _q.QMax, MemoryMarshal.Cast<byte, sbyte>(dst));
                }
                Interleave(quantized, quantized + planeSize, quantized + 2 * planeSize, quantized + 3 * planeSize, interleaved, planeSize);
            }
            uint pad = (uint)(byte)_q.ZeroPoint * 0x01010101u;
            interleaved[planeSize] = pad;
            int paddedRows = _grid.PhaseHeight * _u.StrideH;
            for (int r = 0; r < paddedRows; r++)
            {
                int sourceRow = r - _u.PadH;
                _grid.WriteRow(target, r, sourceRow < 0 || sourceRow >= h ? null : interleaved + (nint)sourceRow * width, pad, _columns);
            }
        }
    }

    /// <summary>The sum of <paramref name="n"/> int8 values, 64 at a time in portable vectors.</summary>
    internal static int SumBytes(sbyte* values, int n)
    {
        var acc = Vector512<int>.Zero;
        int j = 0;
        for (; j + 64 <= n; j += 64)
        {
            var (low, high) = Vector512.Widen(Vector512.Load(values + j));
            var (a, b) = Vector512.Widen(low + high); // at most 2 x 128 in magnitude a lane: no overflow in 16 bits
            acc += a + b;
        }
        int sum = Vector512.Sum(acc);
        for (; j < n; j++) sum += values[j];
        return sum;
    }

    /// <summary><c>dst[j] = c0[j] | c1[j] &lt;&lt; 8 | c2[j] &lt;&lt; 16 | c3[j] &lt;&lt; 24</c> for <c>j &lt; n</c>, 16 at a time in portable vectors.</summary>
    internal static void Interleave(byte* c0, byte* c1, byte* c2, byte* c3, uint* dst, int n)
    {
        int j = 0;
        for (; j + 16 <= n; j += 16)
        {
            var (l0, h0) = Vector128.Widen(Vector128.Load(c0 + j));
            var (l1, h1) = Vector128.Widen(Vector128.Load(c1 + j));
            var (l2, h2) = Vector128.Widen(Vector128.Load(c2 + j));
            var (l3, h3) = Vector128.Widen(Vector128.Load(c3 + j));
            var (a, b) = Vector128.Widen(l0 | l1 << 8);
            var (c, d) = Vector128.Widen(l2 | l3 << 8);
            (a | c << 16).Store(dst + j);
            (b | d << 16).Store(dst + j + 4);
            (a, b) = Vector128.Widen(h0 | h1 << 8);
            (c, d) = Vector128.Widen(h2 | h3 << 8);
            (a | c << 16).Store(dst + j + 8);
            (b | d << 16).Store(dst + j + 12);
        }
        for (; j < n; j++) dst[j] = c0[j] | (uint)c1[j] << 8 | (uint)c2[j] << 16 | (uint)c3[j] << 24;
    }

    /// <summary>
    /// The epilogue of one chunk of a group's output channels (<see cref="Run"/>): for each position of a run, its
    /// vectors of dot products less <c>z_x * sum(w[n])</c> (exact in int32), times the scales' product in float64,
    /// rounded to float32, plus the bias, 16 channels at a time into <paramref name="values"/> (<c>[position, channel]</c>);
    /// then channel by channel its values of the run's output positions into <paramref name="y"/> (<c>[N, positions]</c>;
    /// <see cref="WriteRun"/>).
    /// </summary>
    private readonly struct Epilogue(int* offsets, double* products, float* biases, int n0, int count, int vectors, float* values, float* y, int positions, int wp, int outW)
    {
        public void Write(int* tile, int q0, int run)
        {
            int stride = 16 * vectors;
            for (int j = 0; j < run; j++)
                for (int v = 0; v < vectors; v++)
                {
                    int n = n0 + 16 * v;
                    var exact = Vector512.Load(tile + 16 * (j * vectors + v)) - Vector512.Load(offsets + n);
                    var low = Vector512.ConvertToDouble(Vector512.WidenLower(exact)) * Vector512.Load(products + n);
                    var high = Vector512.ConvertToDouble(Vector512.WidenUpper(exact)) * Vector512.Load(products + n + 8);
                    (Vector512.Narrow(low, high) + Vector512.Load(biases + n)).Store(values + j * stride + 16 * v);
                }
            WriteRun(values, stride, count, y + (nint)n0 * positions, positions, q0, run, wp, outW);
        }
    }

    /// <summary>
    /// A run's values (<c>[position, channel]</c> at <paramref name="values"/>, rows <paramref name="stride"/> apart, 8
    /// rows readable past the run) of <paramref name="count"/> channels into their planes at <paramref name="y"/>
    /// (<c>[channel, positions]</c>): the run covers wide-grid positions <c>q0 .. q0 + run - 1</c> (rows
    /// <paramref name="wp"/> wide), of which those of each output row's first <paramref name="outW"/> columns are written.
    /// In blocks of 8 x 8 transposed in registers where AVX runs (<see cref="Transposes.Transpose8x8(float*, nint, float*, nint, int, int)"/>:
    /// the value-by-value moves were most of the epilogue's time on 7x7 planes).
    /// </summary>
    internal static void WriteRun(float* values, int stride, int count, float* y, int positions, int q0, int run, int wp, int outW)
    {
        // The run's pieces within output rows: [j0, j1) at output row oh from column ow.
        for (int j0 = 0; j0 < run;)
        {
            int q = q0 + j0, oh = q / wp, ow = q - oh * wp;
            if (ow >= outW)
            {
                j0 += wp - ow;
                continue;
            }
            int j1 = Math.Min(run, j0 + outW - ow);
            float* dst = y + oh * outW + ow - j0;
            if (Avx.IsSupported)
            {
                // Blocks of 8 positions x 8 channels transposed in registers, each channel's positions one store.
                for (int jb = j0; jb < j1; jb += 8)
                    for (int cb = 0; cb < count; cb += 8)
                        Transposes.Transpose8x8(values + jb * stride + cb, stride, dst + jb + (nint)cb * positions, positions, Math.Min(8, count - cb), Math.Min(8, j1 - jb));
            }
            else
            {
                float* src = values;
                for (int l = 0; l < count; l++, dst += positions, src++)
                    for (int j = j0; j < j1; j++) dst[j] = src[j * stride];
            }
            j0 = j1;
        }
    }
}
