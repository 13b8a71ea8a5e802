using System.Buffers;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QuantSharp.Kernels;

/// <summary>
/// Static W8A8 convolutions (grouped or not) with the output channels in lanes: each image is quantized once into quad
/// images (<see cref="QuadImages"/>: per group, a plane per four input channels holding their four uint8 codes as one
/// 32-bit value per padded pixel, in the layout of a <see cref="PhaseGrid"/>), the int8 weight once into steps of
/// (four channels, tap) x 16 output channels (<see cref="PackWeights"/>), and for runs of up to 28 output positions of
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
        int taps = u.KernelH * u.KernelW, channels = u.Channels / groups, quads = (channels + 3) / 4, steps = quads * taps;
        int outputs = w.Rows / groups, chunks = (outputs + ChunkChannels - 1) / ChunkChannels, images = u.Images;
        int shift = qmin < 0 ? 128 : 0, xz = zeroPoint + shift;
        var grid = new PhaseGrid(new Im2Col(groups * quads, u.Height, u.Width, u.KernelH, u.KernelW, u.StrideH, u.StrideW, u.PadH, u.PadW, u.DilationH, u.DilationW, images));
        long planeValues = grid.ImageValues / (groups * quads);
        nint[] stepBytes = new nint[steps];
        for (int s = 0; s < steps; s++) stepBytes[s] = (nint)grid.Offset(s) * 4;
        // Per output channel (16 more, so a vector of the last one's lanes stays in the arrays): z_x * sum(w[n]), the scales' product, the bias.
        int[] offsets = new int[w.Rows + 16];
        double[] products = new double[w.Rows + 16];
        float[] biases = new float[w.Rows + 16];
        sbyte* packed = (sbyte*)NativeMemory.AlignedAlloc((nuint)groups * (nuint)chunks * (nuint)steps * 128, 64);
        uint* codes = null;
        try
        {
            PackWeights(w, groups, taps, channels, steps, packed, offsets, xz);
            for (int n = 0; n < w.Rows; n++)
            {
                products[n] = (double)scale * w.Params(n, 0).Scale;
                biases[n] = bias == null ? 0f : bias[n];
            }
            codes = QuadImages(u, grid, x, groups, quads, channels, new Codes(1f / scale, xz, qmin + shift, qmax + shift));
            bool rowRuns = ForcedRowRuns ?? RowRunsPay(u.OutW);
            int bands = Math.Clamp((8 * KernelThreads.Count + images * groups - 1) / (images * groups), 1, u.OutH), bandRows = (u.OutH + bands - 1) / bands;
            bands = (u.OutH + bandRows - 1) / bandRows;
            nint codesAddress = (nint)codes, packedAddress = (nint)packed, yAddress = (nint)y;
            bool native = UseNative && Vnni512Kernel.IsSupported;
            int wp = grid.PhaseWidth, outW = u.OutW, positions = u.Positions, rows = w.Rows;
            KernelThreads.For(images * groups * bands, (long)bandRows * outW * outputs * steps * 4, item =>
            {
                int band = item % bands, g = item / bands % groups, im = item / bands / groups;
                int r0 = band * bandRows, r1 = Math.Min(u.OutH, r0 + bandRows);
                int* tile = stackalloc int[Vnni512Kernel.QuadMaxAccumulators * 16];
                // A run's values, [position, channel], and 8 rows more: the transposes read whole blocks of 8 positions.
                float* values = stackalloc float[(Vnni512Kernel.QuadMaxAccumulators + 8) * ChunkChannels];
                fixed (nint* table = stepBytes)
                fixed (int* offsetsAt = offsets)
                fixed (double* productsAt = products)
                fixed (float* biasesAt = biases)
                {
                    byte* image = (byte*)((uint*)codesAddress + im * grid.ImageValues + g * quads * planeValues);
                    float* yi = (float*)yAddress + (nint)im * rows * positions;
                    for (int chunk = 0; chunk < chunks; chunk++)
                    {
                        int first = chunk * ChunkChannels, count = Math.Min(ChunkChannels, outputs - first), vectors = (count + 15) / 16;
                        int maxRun = Vnni512Kernel.QuadMaxAccumulators / vectors;
                        sbyte* weights = (sbyte*)packedAddress + ((nint)g * chunks + chunk) * steps * 128;
                        var epilogue = new Epilogue(offsetsAt, productsAt, biasesAt, g * outputs + first, count, vectors, values, yi, positions, wp, outW);
                        if (rowRuns)
                        {
                            // Runs within each output row, as long and as even as the accumulators allow.
                            int runs = (outW + maxRun - 1) / maxRun, run = (outW + runs - 1) / runs;
                            for (int oh = r0; oh < r1; oh++)
                                for (int ow = 0; ow < outW; ow += run)
                                {
                                    int p = Math.Min(run, outW - ow), q = oh * wp + ow;
                                    Dots(native, weights, steps, image + 4 * q, table, tile, p, vectors);
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
                                Dots(native, weights, steps, image + 4 * q, table, tile, p, vectors);
                                epilogue.Write(tile, q, p);
                            }
                        }
                    }
                }
            });
        }
        finally
        {
            NativeMemory.AlignedFree(packed);
            if (codes != null) NativeMemory.AlignedFree(codes);
        }
    }

    /// <summary>
    /// Whether <see cref="Run"/> cuts its positions into runs within output rows (rows of at least 7) rather than over
    /// the wide grid: on 7x7 planes runs of a row's 7 positions took 0.77-0.82x float32's time where runs of 28 wide
    /// positions took 0.87-0.88x (docs/BENCHMARKS.md, stop 48).
    /// </summary>
    internal static bool RowRunsPay(int outW) => outW >= 7;

    private static void Dots(bool native, sbyte* w, int steps, byte* x, nint* stepBytes, int* c, int positions, int vectors)
    {
        if (native) Vnni512Kernel.QuadDots(w, steps, x, stepBytes, c, positions, vectors);
        else Vnni512Kernel.QuadDotsTwin(w, steps, x, stepBytes, c, positions, vectors);
    }

    /// <summary>A static quantization in the unsigned code domain (<c>clamp(round(x * InvScale) + ZeroPoint, QMin, QMax)</c>); padding takes the zero point's code.</summary>
    private readonly record struct Codes(float InvScale, int ZeroPoint, int QMin, int QMax);

    /// <summary>
    /// The int8 weight <c>[N, channels * taps]</c> as <c>[groups, chunks, steps, 2, 16, 4]</c> bytes (a chunk of one
    /// vector leaves the second's places unused): step s = (quad q, tap t) holds, in lane l of vector v, output channel
    /// <c>32 chunk + 16 v + l</c> of the group's weights for channels <c>4q .. 4q + 3</c> at tap t (zero past the group's
    /// channels or outputs); and <c>offsets[n] = xz * sum(w[n])</c>.
    /// </summary>
    private static void PackWeights(in WeightView w, int groups, int taps, int channels, int steps, sbyte* packed, int[] offsets, int xz)
    {
        int outputs = w.Rows / groups, chunks = (outputs + ChunkChannels - 1) / ChunkChannels, k = w.Cols;
        new Span<byte>(packed, checked(groups * chunks * steps * 128)).Clear();
        var view = w;
        nint target = (nint)packed;
        // The permute's order: byte 4t + i takes channel i's tap t (byte t + i taps), up to 16 taps.
        Span<byte> indices = stackalloc byte[64];
        for (int j = 0; j < 64; j++) indices[j] = (byte)(j / 4 < taps ? j / 4 + j % 4 * taps : 0);
        var order = Vector512.Create<byte>(indices);
        // A weight byte costs about what 32 multiply-adds do (KernelThreads' unit): scattered stores and a sum.
        KernelThreads.For(w.Rows, 32L * k, n =>
        {
            int g = n / outputs, o = n - g * outputs, chunk = o / ChunkChannels, vectors = (Math.Min(ChunkChannels, outputs - chunk * ChunkChannels) + 15) / 16;
            int v = o % ChunkChannels / 16, l = o % 16;
            sbyte* row = (sbyte*)view.Data + (nint)n * k;
            // Step (quad q, tap t) of vector v, lane l: channels 4q .. 4q + 3 at tap t (zero past the group's channels), one 32-bit store; steps are 64 vectors bytes apart.
            uint* lane = (uint*)((sbyte*)target + ((nint)g * chunks + chunk) * steps * 128 + v * 64 + 4 * l);
            int stepValues = 16 * vectors;
            // Up to 16 taps, a quad's four channels (at most 64 bytes) are one vector, their bytes put in step order by
            // one permute (AVX512-VBMI's vpermb; byte 4t + i = channel i's tap t); byte by byte, the profile of 512
            // channels in 32 groups onto 7x7 at batch 2 had a third of its samples here.
            bool permute = taps <= 16 && Avx512Vbmi.IsSupported;
            uint* quads = stackalloc uint[16];
            byte* bytes = stackalloc byte[64];
            for (int c = 0; c < channels; c += 4)
            {
                byte* c0 = (byte*)row + (nint)c * taps;
                int present = Math.Min(4, channels - c);
                if (permute)
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
                    Avx512Vbmi.PermuteVar64x8(quad, order).AsUInt32().Store(quads);
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
            int sum = SumBytes(row, k);
            offsets[n] = xz * sum;
        });
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

    /// <summary>
    /// The images at <paramref name="x"/> as quad images in the layout of <paramref name="grid"/> (a
    /// <see cref="PhaseGrid"/> of <c>groups * quads</c> channels): plane <c>g * quads + q</c> holds the codes of the
    /// group's channels <c>4q .. 4q + 3</c> (bytes 0-3 of each 32-bit value; the zero point's code past the group's
    /// channels and where padded), then 64 values of slack. A work item per plane: its (up to) four channels quantized
    /// (<see cref="QuantizeKernel.Quantize"/>), their codes interleaved in one run (<see cref="Interleave"/>), then each
    /// padded row written into its phase rows (<see cref="PhaseGrid.WriteRow"/>). The caller frees it (<c>NativeMemory.AlignedFree</c>).
    /// </summary>
    private static uint* QuadImages(in Im2Col u, PhaseGrid grid, float* x, int groups, int quads, int channels, Codes q)
    {
        const int Slack = 64;
        int h = u.Height, width = u.Width, padH = u.PadH, paddedRows = grid.PhaseHeight * u.StrideH, planes = groups * quads;
        long planeValues = grid.ImageValues / planes, values = grid.ImageValues * u.Images;
        uint* buffer = (uint*)NativeMemory.AlignedAlloc((nuint)(values + Slack) * sizeof(uint), 64);
        new Span<uint>(buffer + values, Slack).Clear();
        uint pad = (uint)(byte)q.ZeroPoint * 0x01010101u;
        nint source = (nint)x, target = (nint)buffer;
        var columns = grid.ColumnPhases();
        var unfold = u;
        // A value quantized, interleaved and placed costs about what 16 multiply-adds do (KernelThreads' unit).
        KernelThreads.For(u.Images * planes, 16L * 4 * h * width, item =>
        {
            int im = item / planes, plane = item - im * planes, g = plane / quads, quad = plane - g * quads;
            int planeSize = h * width;
            byte[] rented = ArrayPool<byte>.Shared.Rent(4 * planeSize);
            uint[] interleaved = ArrayPool<uint>.Shared.Rent(planeSize + 1); // the stride-2 gather reads a value past the last row
            try
            {
                fixed (byte* quantized = rented)
                fixed (uint* quadsAt = interleaved)
                {
                    for (int i = 0; i < 4; i++)
                    {
                        int c = 4 * quad + i;
                        var dst = new Span<byte>(quantized + i * planeSize, planeSize);
                        if (c >= channels)
                        {
                            dst.Fill((byte)q.ZeroPoint);
                            continue;
                        }
                        var src = new ReadOnlySpan<float>((float*)source + ((nint)im * unfold.Channels + g * channels + c) * planeSize, planeSize);
                        QuantizeKernel.Quantize(src, q.InvScale, q.ZeroPoint, q.QMin, q.QMax, MemoryMarshal.Cast<byte, sbyte>(dst));
                    }
                    Interleave(quantized, quantized + planeSize, quantized + 2 * planeSize, quantized + 3 * planeSize, quadsAt, planeSize);
                    quadsAt[planeSize] = pad;
                    uint* dstPlane = (uint*)target + im * grid.ImageValues + plane * planeValues;
                    for (int r = 0; r < paddedRows; r++)
                    {
                        int sourceRow = r - padH;
                        if (sourceRow < 0 || sourceRow >= h)
                        {
                            grid.WriteRow<uint>(dstPlane, r, null, pad, columns);
                            continue;
                        }
                        grid.WriteRow(dstPlane, r, quadsAt + (nint)sourceRow * width, pad, columns);
                    }
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(rented);
                ArrayPool<uint>.Shared.Return(interleaved);
            }
        });
        return buffer;
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
    /// then channel by channel its values of the run's output positions (those of one output row at a time: a wide run
    /// skips the dropped columns) into <paramref name="y"/> (<c>[N, positions]</c>), in blocks of 8 x 8 transposed in
    /// registers where AVX runs (<see cref="Transposes.Transpose8x8(float*, nint, float*, nint, int, int)"/>: the
    /// value-by-value moves were most of the epilogue's time on 7x7 planes).
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
                float* dst = y + (nint)n0 * positions + oh * outW + ow - j0;
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
}
