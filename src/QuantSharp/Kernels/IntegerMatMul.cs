using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QuantSharp.Kernels;

/// <summary>
/// One width of the integer dot product <c>sum_k u[k] * s[k]</c> (uint8 by int8, int32 accumulation, exact):
/// AVX-VNNI <c>vpdpbusd</c>, or both operands widened to int16 and <c>vpmaddwd</c> (no saturation; the
/// <c>vpmaddubsw</c> shortcut would saturate at 255 * -128 * 2), or scalar. All widths give the same integers.
/// </summary>
internal interface IIntWidth<TAcc> where TAcc : struct
{
    /// <summary>Elements per <see cref="Accumulate"/>.</summary>
    static abstract int Step { get; }

    static abstract TAcc Zero { get; }

    /// <summary><c>acc + products of Step elements</c> (lane-wise partial sums).</summary>
    static abstract unsafe TAcc Accumulate(TAcc acc, byte* u, byte* s);

    static abstract int Sum(TAcc acc);
}

internal readonly struct IntVnni256 : IIntWidth<Vector256<int>>
{
    public static bool IsSupported => Simd.Use256 && AvxVnni.IsSupported;
    public static int Step => 32;
    public static Vector256<int> Zero => Vector256<int>.Zero;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector256<int> Accumulate(Vector256<int> acc, byte* u, byte* s) => AvxVnni.MultiplyWideningAndAdd(acc, Vector256.Load(u), Vector256.Load((sbyte*)s));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Sum(Vector256<int> acc) => Vector256.Sum(acc);
}

internal readonly struct IntMadd512 : IIntWidth<Vector512<int>>
{
    public static bool IsSupported => Simd.Use512 && Avx512BW.IsSupported;
    public static int Step => 32;
    public static Vector512<int> Zero => Vector512<int>.Zero;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector512<int> Accumulate(Vector512<int> acc, byte* u, byte* s) =>
        acc + Avx512BW.MultiplyAddAdjacent(Avx512BW.ConvertToVector512Int16(Vector256.Load(u)), Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)s)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Sum(Vector512<int> acc) => Vector512.Sum(acc);
}

internal readonly struct IntMadd256 : IIntWidth<Vector256<int>>
{
    public static bool IsSupported => Simd.Use256 && Avx2.IsSupported;
    public static int Step => 16;
    public static Vector256<int> Zero => Vector256<int>.Zero;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector256<int> Accumulate(Vector256<int> acc, byte* u, byte* s) =>
        acc + Avx2.MultiplyAddAdjacent(Avx2.ConvertToVector256Int16(u).AsInt16(), Avx2.ConvertToVector256Int16((sbyte*)s));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Sum(Vector256<int> acc) => Vector256.Sum(acc);
}

internal readonly struct IntMadd128 : IIntWidth<Vector128<int>>
{
    public static bool IsSupported => Simd.Use128 && Sse41.IsSupported;
    public static int Step => 8;
    public static Vector128<int> Zero => Vector128<int>.Zero;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector128<int> Accumulate(Vector128<int> acc, byte* u, byte* s) =>
        acc + Sse2.MultiplyAddAdjacent(Sse41.ConvertToVector128Int16(u).AsInt16(), Sse41.ConvertToVector128Int16((sbyte*)s));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Sum(Vector128<int> acc) => Vector128.Sum(acc);
}

internal readonly struct IntScalar : IIntWidth<int>
{
    public static int Step => 1;
    public static int Zero => 0;
    public static unsafe int Accumulate(int acc, byte* u, byte* s) => acc + *u * *(sbyte*)s;
    public static int Sum(int acc) => acc;
}

/// <summary>
/// Activations quantized to 8 bits, as the kernel reads them: unsigned codes <c>u = q + 128</c> for int8 (the same
/// integers shifted, so the kernel always multiplies uint8 by int8), with per-row scale, zero point (in the shifted
/// domain) and code sum.
/// </summary>
internal sealed unsafe class QuantizedActivations : IDisposable
{
    /// <summary>
    /// Room for <paramref name="rows"/> rows of <paramref name="cols"/> codes, their scales, zero points and sums, or,
    /// without <paramref name="codes"/>, only their sums (a convolution's: the codes are packed straight from quantized
    /// images, whose one scale and zero point travel in <see cref="ImageCodes"/>).
    /// </summary>
    public QuantizedActivations(int rows, int cols, bool codes = true)
    {
        Rows = rows;
        Cols = cols;
        if (codes) Codes = (byte*)NativeMemory.Alloc((nuint)Math.Max(1, rows) * (nuint)Math.Max(1, cols));
        Scales = codes ? new float[rows] : [];
        ZeroPoints = codes ? new int[rows] : [];
        Sums = new int[rows];
    }

    public int Rows { get; }
    public int Cols { get; }
    public byte* Codes { get; private set; }
    public float[] Scales { get; }
    public int[] ZeroPoints { get; }
    public int[] Sums { get; }

    public void Dispose()
    {
        if (Codes != null) NativeMemory.Free(Codes);
        Codes = null;
    }
}

/// <summary>
/// Float32 activation rows (<c>Ld</c> floats apart) and how they become the codes of a
/// <see cref="QuantizedActivations"/>: per row, symmetric int8 (dynamic W8A8, torchao's per-token quantization), or
/// with one calibrated scale and zero point (static W8A8). <see cref="IntegerMatMul.Run(in WeightView, FloatActivations, QuantizedActivations, float*, float*, nint, KernelPath, MatMulMethod)"/>
/// quantizes them ahead of the GEMM or inside the packed GEMM's work items: the same integers either way.
/// </summary>
/// <param name="Address">The first row's first value.</param>
/// <param name="Ld">Row stride, in floats.</param>
/// <param name="IsDynamic">Per-row symmetric int8 scales computed from each row (else the calibrated scale and zero point).</param>
/// <param name="Scale">The calibrated scale (static only).</param>
/// <param name="ZeroPoint">The calibrated zero point (static only).</param>
/// <param name="QMin">Smallest code of the range (-127 for dynamic).</param>
/// <param name="QMax">Largest code of the range (127 for dynamic).</param>
internal readonly unsafe record struct FloatActivations(nint Address, nint Ld, bool IsDynamic, float Scale, int ZeroPoint, int QMin, int QMax)
{
    /// <summary>Work per value for <see cref="KernelThreads"/>: dynamic rows are read twice (largest magnitude, then codes).</summary>
    internal const int WorkPerValue = 8;

    /// <summary>Rows quantized per row: <c>scale = max(amax / 127, eps)</c>, codes in [-127, 127].</summary>
    public static FloatActivations Dynamic(float* rows, nint ld) => new((nint)rows, ld, true, 0f, 0, -127, 127);

    /// <summary>Rows quantized with one scale and zero point over <c>[qmin, qmax]</c> (int8 or uint8 ranges).</summary>
    public static FloatActivations Static(float* rows, nint ld, float scale, int zeroPoint, int qmin, int qmax) => new((nint)rows, ld, false, scale, zeroPoint, qmin, qmax);

    /// <summary>Quantizes rows <c>[r0, r1)</c> into the same rows of <paramref name="into"/> (its codes, code sums, scales and zero points).</summary>
    public void Quantize(QuantizedActivations into, int r0, int r1)
    {
        int k = into.Cols;
        for (int i = r0; i < r1; i++)
        {
            var row = new ReadOnlySpan<float>((float*)Address + i * Ld, k);
            // max(-min(min, 0), max(max, 0)) of the row, NaN if it holds one (0 for an empty row).
            float scale = IsDynamic ? IntegerMatMul.DynamicScale(MinMaxKernel.AbsMax(row)) : Scale;
            IntegerMatMul.QuantizeRow(row, scale, ZeroPoint, QMin, QMax, into, i);
        }
    }
}

/// <summary>
/// Integer W8A8: <c>y[m, n] = xScale[m] * wScale[n] * sum_k (u[m, k] - xZero[m]) * (q[n, k] - wZero[n]) + bias[n]</c>,
/// the integer sum computed exactly (<c>sum u*q - xZero*rowSum(q) - wZero*sum u + K*xZero*wZero</c>). Weights are int8
/// with one scale (and zero point) per row or per tensor; activations come from <see cref="QuantizeDynamic"/> (torchao's
/// per-row symmetric int8, <c>Int8DynamicActivationInt8WeightConfig</c>) or <see cref="QuantizeStatic"/> (calibrated
/// scale and zero point), whose integers are those of the simulated path (quantize, dequantize, float GEMM).
/// </summary>
internal static unsafe class IntegerMatMul
{
    /// <summary>The longest reduction whose products fit int32 exactly: 65,793 * 255 * 128 &lt; 2^31.</summary>
    public const int MaxReduction = 65536;

    /// <summary>torchao's <c>torch.finfo(torch.float32).eps</c>: the smallest dynamic scale.</summary>
    private const float MinDynamicScale = 1.1920929e-07f;

    /// <summary>
    /// Activation rows from which <see cref="MatMulMethod.Auto"/> takes the packed GEMM. Measured on 4096x4096, one
    /// thread, CPU time per call (rows / packed): 16 rows 3.5 / 4.3 ms, 24 rows 5.9 / 6.1 ms, 32 rows 7.3 / 5.8 ms,
    /// 64 rows 13.1 / 8.6 ms.
    /// </summary>
    internal static int PackedMinRows = 32;

    /// <summary>
    /// <see cref="PackedMinRows"/> for the generated 512-bit kernel (<see cref="KernelPath.Vnni512"/>). First measured on
    /// 4096x4096, one thread, CPU time per call (rows / packed): 16 rows 2.7-3.8 / 3.8 ms, 24 rows 4.0-5.0 / 3.8-4.0 ms,
    /// 32 rows 6.3-6.6 / 3.9-4.4 ms (24 then). Measured again through a whole dynamic W8A8 layer, both threads
    /// (docs/BENCHMARKS.md, stop 16): at 12-20 rows the packed GEMM took 0.4-0.7x the row kernels' time on 16x128,
    /// 32x256, 384x384, 1536x384 and 1024x1024 (at 16-20 rows also 4096x4096), about the same on 384x1536 and 4096x4096
    /// at 12 rows, and 1.1-1.2x on 64x800 at 12 rows; at 8 rows the row kernels won or tied.
    /// </summary>
    internal static int PackedMinRowsVnni512 = 12;

    /// <summary>
    /// <see cref="PackedMinRows"/> for the 256-bit <c>vpmaddwd</c> path (<see cref="KernelPath.V256"/>: AVX2 without
    /// AVX-VNNI or AVX-512), whose packed strips are 16 activation rows (the 512-bit paths' 32). Measured on an AVX2
    /// machine emulated on the development machine (.NET without AVX-512, MKL and oneDNN limited to AVX2;
    /// docs/BENCHMARKS.md, stop 21), dynamic W8A8 against float32 at 12-24 rows, two processes each: 384x384 0.67-1.00x
    /// (row kernels 0.93-1.53x), 1024x1024 0.42-0.56x at 12-16 rows (0.53-0.71x), 4096x4096 0.29-0.42x (0.32-0.60x),
    /// 64x800 at 16-24 rows 1.13-1.27x (1.37-1.66x); at 8 rows the row kernels tied or won. The 512-bit
    /// <c>vpmaddwd</c> path (AVX-512 without VNNI) lost with packing from 12 rows (64x800 2.1-2.5x against 1.0-1.3x), so
    /// it keeps <see cref="PackedMinRows"/>, as do the paths not measured here (AVX-VNNI at 256 bits, 128 bits).
    /// </summary>
    internal static int PackedMinRowsMadd256 = 12;

    /// <summary>Whether <see cref="MatMulMethod.Auto"/> takes the packed GEMM for <paramref name="rows"/> activation rows on <paramref name="path"/>.</summary>
    internal static bool TakesPacked(KernelPath path, int rows) => rows >= path switch
    {
        KernelPath.Vnni512 => PackedMinRowsVnni512,
        KernelPath.V256 => PackedMinRowsMadd256,
        _ => PackedMinRows,
    };

    /// <summary>True when <paramref name="path"/> can run here (Vnni256 needs AVX-VNNI, Vnni512 <see cref="Vnni512Kernel"/>).</summary>
    public static bool IsSupported(KernelPath path) => path switch
    {
        KernelPath.Vnni256 => IntVnni256.IsSupported,
        KernelPath.Vnni512 => Vnni512Kernel.IsSupported,
        KernelPath.V512 => IntMadd512.IsSupported,
        KernelPath.V256 => IntMadd256.IsSupported,
        KernelPath.V128 => IntMadd128.IsSupported,
        _ => true,
    };

    /// <summary>
    /// Quantizes each row to int8 on the fly, symmetric over [-127, 127]: <c>scale = max(amax / 127, eps)</c>,
    /// <c>q = clamp(round(x * (1 / scale)), -127, 127)</c> (torchao's per-token activation quantization).
    /// </summary>
    public static void QuantizeDynamic(float* x, nint ldx, QuantizedActivations into) => Quantize(FloatActivations.Dynamic(x, ldx), into);

    /// <summary>
    /// Quantizes every row with one calibrated scale and zero point over <c>[qmin, qmax]</c> (int8 or uint8 ranges):
    /// <c>clamp(round(x * (1 / scale)) + zeroPoint, qmin, qmax)</c>, as the static W8A8 layers' fake quantization.
    /// </summary>
    public static void QuantizeStatic(float* x, nint ldx, float scale, int zeroPoint, int qmin, int qmax, QuantizedActivations into) =>
        Quantize(FloatActivations.Static(x, ldx, scale, zeroPoint, qmin, qmax), into);

    /// <summary>Quantizes all rows of <paramref name="source"/> into <paramref name="into"/>, in blocks of <see cref="RowsPerQuantizeItem"/> rows.</summary>
    public static void Quantize(FloatActivations source, QuantizedActivations into)
    {
        int k = into.Cols, rows = into.Rows, rowsPerItem = RowsPerQuantizeItem(k, rows);
        int items = (rows + rowsPerItem - 1) / rowsPerItem;
        KernelThreads.For(items, FloatActivations.WorkPerValue * k * rowsPerItem, item =>
            source.Quantize(into, item * rowsPerItem, Math.Min(rows, (item + 1) * rowsPerItem)));
    }

    /// <summary>
    /// Rows per work item of <see cref="Quantize"/>: about 4,096 values (at least one row). Short rows (a 64-input
    /// layer) are a few nanoseconds of work each, less than a work item's own cost: one item per row (and a two-sided
    /// min/max per row) made dynamic W8A8 on 10x64 at 500 rows 1.85-1.89x float32's time, 1.14-1.21x with blocks (and
    /// <see cref="MinMaxKernel.AbsMax"/>); docs/BENCHMARKS.md, stop 14.
    /// </summary>
    private static int RowsPerQuantizeItem(int k, int rows) => Math.Clamp(4096 / Math.Max(k, 1), 1, Math.Max(rows, 1));

    /// <summary>The dynamic scale of a row whose largest magnitude is <paramref name="amax"/>: <c>max(amax / 127, eps)</c>.</summary>
    internal static float DynamicScale(float amax) => MathF.Max(amax / 127f, MinDynamicScale);

    /// <summary>
    /// Static W8A8 convolution: the images of <paramref name="unfold"/> quantized as <see cref="QuantizeStatic"/> does,
    /// and their column matrix (im2col, one activation row of K codes per output position, image after image) times the
    /// weight, written channel-major as a convolution's output, <c>y[i, n, p]</c> (<c>[Images, N, P]</c> contiguous). No
    /// column matrix is built: the codes are stored padded and split into stride phases (<see cref="PhaseGrid"/>), where
    /// every reduction row of a run of output positions is a run of memory, and the packed GEMM's strips are interleaved
    /// straight from them (<see cref="ImageCodes"/>). Padding takes the zero point's code, so it adds nothing to the
    /// integer sums, as zero padding of the dequantized input adds nothing to the simulated convolution.
    /// </summary>
    public static void RunConvolution(in WeightView w, float* images, in Im2Col unfold, float scale, int zeroPoint, int qmin, int qmax, float* bias, float* y, KernelPath path = KernelPath.Auto)
    {
        CheckWeight(w);
        int k = unfold.Rows, count = unfold.Images;
        if (k != w.Cols) throw new ArgumentException($"The convolution's columns have {k} rows, the weight {w.Cols} columns.");
        path = Choose(path);
        if ((long)unfold.Positions * count == 0 || w.Rows == 0) return;
        if (!ConvolutionFits(unfold)) throw new ArgumentException($"{unfold.Images} image(s) of {unfold.Positions} positions x {k} terms exceed one integer product's buffers.");
        int shift = qmin < 0 ? 128 : 0;
        byte pad = (byte)(zeroPoint + shift);
        var grid = new PhaseGrid(unfold);
        // Slack: the rows of the last image that round it up to whole strips, and the dropped columns of its last output
        // row, read up to 31 + (kW - 1) dW codes past it.
        int slack = 32 + (unfold.KernelW - 1) * unfold.DilationW;
        byte* codes = (byte*)NativeMemory.Alloc((nuint)(grid.ImageValues * count + slack));
        int* offsets = (int*)NativeMemory.Alloc((nuint)k * sizeof(int));
        try
        {
            new Span<byte>(codes + grid.ImageValues * count, slack).Clear();
            QuantizeImages(images, unfold, grid, new StaticCodes(1f / scale, zeroPoint + shift, qmin + shift, qmax + shift, pad), codes);
            for (int kk = 0; kk < k; kk++) offsets[kk] = grid.Offset(kk);
            using var x = new QuantizedActivations(grid.RowsPerImage * count, k, codes: false);
            var output = new OutputGrid(grid.RowsPerImage, grid.PhaseWidth, unfold.OutH, unfold.OutW);
            RunPacked(path, w, x, null, new ImageCodes(codes, offsets, grid.ImageValues, output, scale, zeroPoint + shift), bias, y, w.Rows);
        }
        finally
        {
            NativeMemory.Free(offsets);
            NativeMemory.Free(codes);
        }
    }

    /// <summary>
    /// Whether <see cref="RunConvolution"/> takes this geometry: its activation rows (<see cref="PhaseGrid.RowsPerImage"/>
    /// per image) and their packed codes (up to two bytes per term, int16 on the paths without VNNI) fit one product's
    /// buffers, and a padded image's offsets fit an int.
    /// </summary>
    public static bool ConvolutionFits(in Im2Col unfold)
    {
        var grid = new PhaseGrid(unfold);
        long rows = (long)grid.RowsPerImage * unfold.Images;
        return grid.RowsPerImage > 0 && grid.ImageValues <= int.MaxValue && rows <= int.MaxValue && rows * (2L * unfold.Rows + 8) <= int.MaxValue - 64;
    }

    /// <summary>A static quantization in the unsigned code domain: <c>clamp(round(x * InvScale) + ZeroPoint, QMin, QMax)</c>; padding takes <see cref="Pad"/>.</summary>
    private readonly record struct StaticCodes(float InvScale, int ZeroPoint, int QMin, int QMax, byte Pad);

    /// <summary>Values quantized per work item of <see cref="QuantizeImages"/> (whole rows, at least one).</summary>
    private const int QuantizeBandValues = 1 << 14;

    /// <summary>
    /// Quantizes every plane of the images of <paramref name="unfold"/> into the layout of <paramref name="grid"/>, in
    /// work items of a band of a plane's rows: the band's values quantized in one pass (quantized row by row, a ResNet
    /// layer's 56-value rows went through the vector loops' scalar tails, 13% of a 64->64 W8A8 call's samples at batch 8,
    /// docs/BENCHMARKS.md stop 18), then each of its padded rows written into its phase rows (<see cref="PhaseGrid.WriteRow"/>).
    /// </summary>
    private static void QuantizeImages(float* images, in Im2Col unfold, PhaseGrid grid, StaticCodes q, byte* codes)
    {
        int h = unfold.Height, w = unfold.Width, padH = unfold.PadH, phaseRows = grid.PhaseHeight * unfold.StrideH;
        // Bands of rows of the phase grid (padded row R = phase row R / strideH of phases (R mod strideH, b)).
        int band = Math.Clamp(QuantizeBandValues / Math.Max(w, 1), 1, phaseRows), bands = (phaseRows + band - 1) / band;
        long channelBytes = grid.ImageValues / unfold.Channels;
        nint imageAddress = (nint)images, codesAddress = (nint)codes;
        var columns = grid.ColumnPhases();
        KernelThreads.For(unfold.Images * unfold.Channels * bands, 4L * band * w, item =>
        {
            int plane = item / bands, r0 = item % bands * band, r1 = Math.Min(phaseRows, r0 + band);
            // The band's source rows: padded rows [r0, r1) less the padding, clipped to the plane.
            int s0 = Math.Clamp(r0 - padH, 0, h), s1 = Math.Clamp(r1 - padH, s0, h);
            byte[] buffer = ArrayPool<byte>.Shared.Rent((s1 - s0) * w + 1); // the stride-2 gather reads a code past the last row
            try
            {
                var quantized = buffer.AsSpan(0, (s1 - s0) * w);
                var src = new ReadOnlySpan<float>((float*)imageAddress + ((nint)plane * h + s0) * w, quantized.Length);
                QuantizeKernel.Quantize(src, q.InvScale, q.ZeroPoint, q.QMin, q.QMax, MemoryMarshal.Cast<byte, sbyte>(quantized));
                byte* channel = (byte*)codesAddress + plane * channelBytes;
                fixed (byte* rows = buffer)
                {
                    for (int r = r0; r < r1; r++)
                    {
                        int source = r - padH;
                        grid.WriteRow(channel, r, source >= 0 && source < h ? rows + (nint)(source - s0) * w : null, q.Pad, columns);
                    }
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        });
    }

    /// <summary>Row <paramref name="i"/> of <paramref name="into"/>: the codes of <paramref name="row"/>, their sum, the scale and the zero point (shifted by 128 for signed ranges).</summary>
    internal static void QuantizeRow(ReadOnlySpan<float> row, float scale, int zeroPoint, int qmin, int qmax, QuantizedActivations into, int i)
    {
        // Signed ranges move up by 128 (same integers, shifted), so codes are always unsigned bytes.
        int shift = qmin < 0 ? 128 : 0;
        var codes = new Span<byte>(into.Codes + (nint)i * into.Cols, into.Cols);
        into.Sums[i] = QuantizeKernel.QuantizeAndSum(row, 1f / scale, zeroPoint + shift, qmin + shift, qmax + shift, MemoryMarshal.Cast<byte, sbyte>(codes));
        into.Scales[i] = scale;
        into.ZeroPoints[i] = zeroPoint + shift;
    }

    /// <summary>Computes <c>y = dequant(x) dequant(w)^T + bias</c> with an exact integer inner product.</summary>
    /// <param name="w">int8 weight, one scale (and zero point) per row or per tensor.</param>
    /// <param name="x">Quantized activations (K = <c>w.Cols</c>).</param>
    /// <param name="bias">N floats or null.</param>
    /// <param name="y">Output rows, <paramref name="ldy"/> floats apart.</param>
    /// <param name="ldy">Output row stride.</param>
    /// <param name="path">Instruction set (<see cref="KernelPath.Vnni512"/>, <see cref="KernelPath.Vnni256"/>; V512/V256/V128 use <c>vpmaddwd</c>).</param>
    /// <param name="method">Loop structure: row kernels, or the packed GEMM (<see cref="PackedIntegerMatMul"/>);
    /// <see cref="MatMulMethod.Auto"/> chooses by batch size (<see cref="TakesPacked"/>).</param>
    public static void Run(in WeightView w, QuantizedActivations x, float* bias, float* y, nint ldy, KernelPath path = KernelPath.Auto, MatMulMethod method = MatMulMethod.Auto) =>
        Multiply(w, null, x, bias, y, ldy, path, method);

    /// <summary>
    /// Quantizes <paramref name="source"/> into <paramref name="x"/> and computes <c>y = dequant(x) dequant(w)^T + bias</c>:
    /// the result and the codes of <see cref="Quantize"/> followed by <see cref="Run(in WeightView, QuantizedActivations, float*, float*, nint, KernelPath, MatMulMethod)"/>,
    /// with, where the packed GEMM cuts the work by activation rows only, each work item quantizing its own rows
    /// (<see cref="PackedIntegerMatMul.FusesQuantization"/>): one pass over the activations and two hand-outs to the
    /// threads fewer.
    /// </summary>
    public static void Run(in WeightView w, FloatActivations source, QuantizedActivations x, float* bias, float* y, nint ldy, KernelPath path = KernelPath.Auto, MatMulMethod method = MatMulMethod.Auto) =>
        Multiply(w, source, x, bias, y, ldy, path, method);

    private static void Multiply(in WeightView w, FloatActivations? source, QuantizedActivations x, float* bias, float* y, nint ldy, KernelPath path, MatMulMethod method)
    {
        CheckWeight(w);
        if (x.Cols != w.Cols) throw new ArgumentException($"Activations have {x.Cols} columns, the weight {w.Cols}.");
        path = Choose(path);
        if (method == MatMulMethod.Transposed) throw new ArgumentException("The integer kernel reads row-major activations (no transposed method).", nameof(method));
        if (x.Rows == 0 || w.Rows == 0) return;
        if (method == MatMulMethod.Packed || (method == MatMulMethod.Auto && TakesPacked(path, x.Rows)))
        {
            RunPacked(path, w, x, source, null, bias, y, ldy);
            return;
        }
        if (source is { } rows) Quantize(rows, x);
        bool native = false;
        if (path == KernelPath.Vnni512)
        {
            native = NativeRowDots && (!IntVnni256.IsSupported || NativeRowDotsOverAvxVnni);
            path = IntVnni256.IsSupported && !native ? KernelPath.Vnni256 : KernelPath.V512;
        }
        switch (path)
        {
            case KernelPath.Vnni256: Drive<IntVnni256, Vector256<int>>(w, x, bias, y, ldy); break;
            case KernelPath.V512: Drive<IntMadd512, Vector512<int>>(w, x, bias, y, ldy, native); break;
            case KernelPath.V256: Drive<IntMadd256, Vector256<int>>(w, x, bias, y, ldy); break;
            case KernelPath.V128: Drive<IntMadd128, Vector128<int>>(w, x, bias, y, ldy); break;
            default: Drive<IntScalar, int>(w, x, bias, y, ldy); break;
        }
    }

    /// <summary>The packed GEMM (<see cref="PackedIntegerMatMul.Run{TW, TVec}"/>) at the width of <paramref name="path"/>.</summary>
    private static void RunPacked(KernelPath path, in WeightView w, QuantizedActivations x, FloatActivations? floats, ImageCodes? images, float* bias, float* y, nint ldy)
    {
        switch (path)
        {
            case KernelPath.Vnni512: PackedIntegerMatMul.Run<GemmVnni512, Vector512<int>>(w, x, floats, images, bias, y, ldy); break;
            case KernelPath.Vnni256: PackedIntegerMatMul.Run<GemmVnni256, Vector256<int>>(w, x, floats, images, bias, y, ldy); break;
            case KernelPath.V512: PackedIntegerMatMul.Run<GemmMadd512, Vector512<int>>(w, x, floats, images, bias, y, ldy); break;
            case KernelPath.V256: PackedIntegerMatMul.Run<GemmMadd256, Vector256<int>>(w, x, floats, images, bias, y, ldy); break;
            case KernelPath.V128: PackedIntegerMatMul.Run<GemmMadd128, Vector128<int>>(w, x, floats, images, bias, y, ldy); break;
            default: PackedIntegerMatMul.Run<GemmScalar, int>(w, x, floats, images, bias, y, ldy); break;
        }
    }

    /// <summary>The widest path here for <see cref="KernelPath.Auto"/>; otherwise <paramref name="path"/>, which must run here.</summary>
    private static KernelPath Choose(KernelPath path)
    {
        if (path == KernelPath.Auto)
            path = Vnni512Kernel.IsSupported ? KernelPath.Vnni512 : IntVnni256.IsSupported ? KernelPath.Vnni256 : IntMadd512.IsSupported ? KernelPath.V512
                : IntMadd256.IsSupported ? KernelPath.V256 : IntMadd128.IsSupported ? KernelPath.V128 : KernelPath.Scalar;
        if (!IsSupported(path)) throw new PlatformNotSupportedException($"Kernel path {path} is not supported on this CPU.");
        return path;
    }

    private static void CheckWeight(in WeightView w)
    {
        if (w.Format != WeightFormat.Int8 || w.GroupsPerRow != 1)
            throw new ArgumentException($"Integer W8A8 needs int8 weights with one scale per row or tensor, got {w.Format} with {w.GroupsPerRow} group(s) per row.");
        if (w.Cols > MaxReduction) throw new ArgumentException($"Reduction length {w.Cols} exceeds {MaxReduction}: int32 sums could overflow.");
    }

    /// <summary>
    /// Whether the row kernels on the 512-bit path take their dot products from the generated <c>vpdpbusd zmm</c>
    /// kernel (<see cref="Vnni512Kernel.RowDots"/>) where the CPU has AVX512-VNNI but not AVX-VNNI (AMD Zen 4, Intel
    /// Ice Lake and Cascade Lake servers), which otherwise run them on <c>vpmaddwd</c> (<see cref="IntMadd512"/>: four
    /// instructions per 32 products against one per 64); CPUs with AVX-VNNI keep its 256-bit intrinsic
    /// (<see cref="IntVnni256"/>), not measured against this kernel. The probe turns it off; the tests reach the
    /// <c>vpmaddwd</c> row kernels through <see cref="KernelPath.V512"/>, which never takes the generated kernel.
    /// </summary>
    internal static volatile bool NativeRowDots = true;

    /// <summary>Whether <see cref="NativeRowDots"/> applies on CPUs with AVX-VNNI too (a probe switch).</summary>
    internal static volatile bool NativeRowDotsOverAvxVnni = false;

    /// <summary>The row kernels on width <typeparamref name="TW"/>; with <paramref name="native"/> (512 bits) a work item's dot products from <see cref="NativeItem"/>.</summary>
    private static void Drive<TW, TAcc>(WeightView w, QuantizedActivations x, float* bias, float* y, nint ldy, bool native = false)
        where TW : IIntWidth<TAcc> where TAcc : struct
    {
        const int RowsPerBlock = 64;
        int k = w.Cols;
        int rowsPerItem = Math.Clamp(32768 / Math.Max(k, 1), 4, 64);
        int nBlocks = (w.Rows + rowsPerItem - 1) / rowsPerItem;
        int mBlocks = (x.Rows + RowsPerBlock - 1) / RowsPerBlock;
        // Row sums of the weight (for activation zero points) are dot products with a row of ones, computed per work
        // item while its weight rows are in cache: no pass over the weight ahead of time, nothing cached across calls.
        // A block of one activation row takes them in the same pass as its dots (the ones as a second row), so each
        // weight vector is loaded once.
        bool needSums = false;
        foreach (int z in x.ZeroPoints) needSums |= z != 0;
        using var ones = new QuantizedActivations(1, k);
        new Span<byte>(ones.Codes, k).Fill(1);
        nint yAddress = (nint)y, biasAddress = (nint)bias;
        KernelThreads.For(nBlocks * mBlocks, (long)Math.Min(x.Rows, RowsPerBlock) * rowsPerItem * k / 4, item =>
        {
            int m0 = item / nBlocks * RowsPerBlock, m1 = Math.Min(x.Rows, m0 + RowsPerBlock);
            int n0 = item % nBlocks * rowsPerItem, n1 = Math.Min(w.Rows, n0 + rowsPerItem);
            Span<int> dot = stackalloc int[4];
            Span<int> sums = stackalloc int[n1 - n0];
            var output = new Output(w, x, (float*)biasAddress, (float*)yAddress, ldy);
            byte* u = x.Codes + (nint)m0 * k;
            if (needSums && m1 - m0 == 1)
            {
                for (int n = n0; n < n1; n++)
                {
                    var d = Dot<TW, TAcc, Two>(w, n, u, ones.Codes, null, null, dot);
                    output.Write(n, m0, d[1], d[..1]);
                }
                return;
            }
            if (needSums)
                for (int n = n0; n < n1; n++) sums[n - n0] = Dot<TW, TAcc, One>(w, n, ones.Codes, null, null, null, dot)[0];
            int i = m0;
            if (native && k >= 64)
            {
                NativeItem(w, u, m0, m1, n0, n1, sums, output);
                return;
            }
            for (; i + 4 <= m1; i += 4, u += 4 * k)
                for (int n = n0; n < n1; n++) output.Write(n, i, sums[n - n0], Dot<TW, TAcc, Four>(w, n, u, u + k, u + 2 * k, u + 3 * k, dot));
            for (; i + 2 <= m1; i += 2, u += 2 * k)
                for (int n = n0; n < n1; n++) output.Write(n, i, sums[n - n0], Dot<TW, TAcc, Two>(w, n, u, u + k, null, null, dot));
            for (; i < m1; i++, u += k)
                for (int n = n0; n < n1; n++) output.Write(n, i, sums[n - n0], Dot<TW, TAcc, One>(w, n, u, null, null, null, dot));
        });
    }

    /// <summary>
    /// A work item of the row kernels on the generated kernel: code rows <c>[m0, m1)</c> (the first at <paramref name="u"/>)
    /// against weight rows <c>[n0, n1)</c>, four code rows at a time, then two, then one, each group against all the
    /// weight rows in one call (<see cref="NativeDots{TR}"/>). Its scratch (up to 17 KiB) is written before it is read,
    /// so it is not zeroed.
    /// </summary>
    [SkipLocalsInit]
    private static void NativeItem(in WeightView w, byte* u, int m0, int m1, int n0, int n1, ReadOnlySpan<int> sums, in Output output)
    {
        int k = w.Cols, i = m0;
        int* lanes = stackalloc int[(n1 - n0) * 64], dots = stackalloc int[(n1 - n0) * 4];
        for (; i + 4 <= m1; i += 4, u += 4 * k)
        {
            NativeDots<Four>(w, n0, n1, u, k, lanes, dots);
            var rows = output.FourRows(i);
            for (int n = n0; n < n1; n++) output.WriteFour(n, i, sums[n - n0], dots + (n - n0) * 4, rows);
        }
        for (; i + 2 <= m1; i += 2, u += 2 * k)
        {
            NativeDots<Two>(w, n0, n1, u, k, lanes, dots);
            for (int n = n0; n < n1; n++) output.Write(n, i, sums[n - n0], new ReadOnlySpan<int>(dots + (n - n0) * 4, 2));
        }
        for (; i < m1; i++, u += k)
        {
            NativeDots<One>(w, n0, n1, u, k, lanes, dots);
            for (int n = n0; n < n1; n++) output.Write(n, i, sums[n - n0], new ReadOnlySpan<int>(dots + (n - n0) * 4, 1));
        }
    }

    /// <summary>
    /// The dot products of weight rows <c>[n0, n1)</c> with <c>TR.Count</c> code rows (row r at <c>u + r * ldu</c>) into
    /// <c>dots[4 (n - n0) + r]</c>: one call of <see cref="Vnni512Kernel.RowDots"/> for them all (lane sums into
    /// <paramref name="lanes"/>, 64 ints per weight row), then each row's lane sums. Exact integers, so the sums of the other paths.
    /// </summary>
    private static void NativeDots<TR>(in WeightView w, int n0, int n1, byte* u, nint ldu, int* lanes, int* dots) where TR : IRowCount
    {
        int rows = TR.Count;
        Vnni512Kernel.RowDots(w.Data + (nint)n0 * w.Cols, w.Cols, u, ldu, lanes, n1 - n0, rows);
        for (int n = n0; n < n1; n++)
        {
            int* l = lanes + (n - n0) * 16 * rows, d = dots + (n - n0) * 4;
            if (rows == 4) SumLanes4(l).Store(d);
            else for (int r = 0; r < rows; r++) d[r] = Vector512.Sum(Vector512.Load(l + 16 * r));
        }
    }

    /// <summary>The lane sums of the four 16-lane vectors at <paramref name="lanes"/>: halves added, then three <c>vphaddd</c>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<int> SumLanes4(int* lanes)
    {
        Vector512<int> a = Vector512.Load(lanes), b = Vector512.Load(lanes + 16), c = Vector512.Load(lanes + 32), d = Vector512.Load(lanes + 48);
        var h = Avx2.HorizontalAdd(Avx2.HorizontalAdd(a.GetLower() + a.GetUpper(), b.GetLower() + b.GetUpper()),
            Avx2.HorizontalAdd(c.GetLower() + c.GetUpper(), d.GetLower() + d.GetUpper()));
        return h.GetLower() + h.GetUpper();
    }

    /// <summary>
    /// <c>sum_k u_r[k] * q[n, k]</c> for the code rows <c>u_r</c>, <c>r &lt; TR.Count</c> (the unused ones null; four
    /// rows evenly spaced), into <paramref name="dot"/>: two vectors per row a step, then one, then scalars.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static ReadOnlySpan<int> Dot<TW, TAcc, TR>(in WeightView w, int n, byte* u0, byte* u1, byte* u2, byte* u3, Span<int> dot)
        where TW : IIntWidth<TAcc> where TAcc : struct where TR : IRowCount
    {
        int k = w.Cols, step = TW.Step, chunk = 2 * step;
        byte* q = w.Data + (nint)n * k;
        TAcc a0 = TW.Zero, b0 = TW.Zero, a1 = TW.Zero, b1 = TW.Zero, a2 = TW.Zero, b2 = TW.Zero, a3 = TW.Zero, b3 = TW.Zero;
        int j = 0;
        for (; j + chunk <= k; j += chunk)
        {
            a0 = TW.Accumulate(a0, u0 + j, q + j);
            b0 = TW.Accumulate(b0, u0 + j + step, q + j + step);
            if (TR.Count > 1)
            {
                a1 = TW.Accumulate(a1, u1 + j, q + j);
                b1 = TW.Accumulate(b1, u1 + j + step, q + j + step);
            }
            if (TR.Count > 2)
            {
                a2 = TW.Accumulate(a2, u2 + j, q + j);
                b2 = TW.Accumulate(b2, u2 + j + step, q + j + step);
                a3 = TW.Accumulate(a3, u3 + j, q + j);
                b3 = TW.Accumulate(b3, u3 + j + step, q + j + step);
            }
        }
        if (j + step <= k)
        {
            a0 = TW.Accumulate(a0, u0 + j, q + j);
            if (TR.Count > 1) a1 = TW.Accumulate(a1, u1 + j, q + j);
            if (TR.Count > 2)
            {
                a2 = TW.Accumulate(a2, u2 + j, q + j);
                a3 = TW.Accumulate(a3, u3 + j, q + j);
            }
            j += step;
        }
        int r0 = TW.Sum(a0) + TW.Sum(b0), r1 = 0, r2 = 0, r3 = 0;
        if (TR.Count > 1) r1 = TW.Sum(a1) + TW.Sum(b1);
        if (TR.Count > 2)
        {
            r2 = TW.Sum(a2) + TW.Sum(b2);
            r3 = TW.Sum(a3) + TW.Sum(b3);
        }
        for (; j < k; j++)
        {
            int qj = (sbyte)q[j];
            r0 += u0[j] * qj;
            if (TR.Count > 1) r1 += u1[j] * qj;
            if (TR.Count > 2)
            {
                r2 += u2[j] * qj;
                r3 += u3[j] * qj;
            }
        }
        dot[0] = r0;
        dot[1] = r1;
        dot[2] = r2;
        dot[3] = r3;
        return dot[..TR.Count];
    }

    /// <summary>Zero-point corrections (exact, int64), both scales, bias: one output per activation row.</summary>
    private readonly ref struct Output(in WeightView w, QuantizedActivations x, float* bias, float* y, nint ldy)
    {
        private readonly WeightView _w = w;

        /// <summary>Activation rows <c>i..i+3</c>'s zero points, code sums and scales in float64 lanes, for <see cref="WriteFour"/>.</summary>
        public (Vector256<double> ZeroPoints, Vector256<double> Sums, Vector256<double> Scales) FourRows(int i) =>
            (Vector256.Create((double)x.ZeroPoints[i], x.ZeroPoints[i + 1], x.ZeroPoints[i + 2], x.ZeroPoints[i + 3]),
             Vector256.Create((double)x.Sums[i], x.Sums[i + 1], x.Sums[i + 2], x.Sums[i + 3]),
             Vector256.Create((double)x.Scales[i], x.Scales[i + 1], x.Scales[i + 2], x.Scales[i + 3]));

        /// <summary>
        /// <see cref="Write"/> for the four activation rows of <paramref name="rows"/> at once, in float64 lanes: every
        /// term of the correction is an integer below 2^53 (codes below 2^8, reductions of at most 2^16), so the lanes
        /// hold the int64 sum exactly, and the scales multiply in the same order, rounding to float32 then adding the
        /// bias as <see cref="Write"/> does: the same bits.
        /// </summary>
        public void WriteFour(int n, int i, int rowSum, int* dots, (Vector256<double> ZeroPoints, Vector256<double> Sums, Vector256<double> Scales) rows)
        {
            var (ws, wz) = _w.Params(n, 0);
            var exact = Avx.ConvertToVector256Double(Vector128.Load(dots)) - rows.ZeroPoints * (double)rowSum - rows.Sums * (double)wz
                + rows.ZeroPoints * ((double)_w.Cols * wz);
            var v = Avx.ConvertToVector128Single(rows.Scales * (double)ws * exact);
            float b = bias == null ? 0f : bias[n];
            float* out0 = y + i * ldy + n;
            out0[0] = v.GetElement(0) + b;
            out0[ldy] = v.GetElement(1) + b;
            out0[2 * ldy] = v.GetElement(2) + b;
            out0[3 * ldy] = v.GetElement(3) + b;
        }

        public void Write(int n, int i, int rowSum, ReadOnlySpan<int> dots)
        {
            var (ws, wz) = _w.Params(n, 0);
            float b = bias == null ? 0f : bias[n];
            for (int r = 0; r < dots.Length; r++)
            {
                int m = i + r;
                long xz = x.ZeroPoints[m];
                long exact = dots[r] - xz * rowSum - (long)wz * x.Sums[m] + (long)_w.Cols * xz * wz;
                y[m * ldy + n] = (float)((double)x.Scales[m] * ws * exact) + b;
            }
        }
    }

    /// <summary>The specification: the same integers by plain loops, the same epilogue.</summary>
    public static void Reference(in WeightView w, QuantizedActivations x, float* bias, float* y, nint ldy)
    {
        for (int m = 0; m < x.Rows; m++)
        {
            for (int n = 0; n < w.Rows; n++)
            {
                var (ws, wz) = w.Params(n, 0);
                long exact = 0;
                for (int k = 0; k < w.Cols; k++)
                    exact += (long)(x.Codes[(nint)m * x.Cols + k] - x.ZeroPoints[m]) * ((sbyte)w.Data[(nint)n * w.Cols + k] - wz);
                y[m * ldy + n] = (float)((double)x.Scales[m] * ws * exact) + (bias == null ? 0f : bias[n]);
            }
        }
    }
}
