using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace QuantSharp.Kernels;

/// <summary>
/// A small convolution computed directly from a float32 weight <c>[O, K]</c> (the quantized weight dequantized once for
/// the call, <see cref="WeightDequantizer"/>): per image and block of output positions the columns (im2col,
/// <see cref="Im2Col.Row"/>) are unfolded into a small buffer, then each group of four output channels multiplies it
/// with two vectors of positions per step. For layers whose libtorch convolution is mostly fixed cost (the MNIST CNN's
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

    /// <summary>Whether the kernel takes this geometry (the columns of a block fit its stack buffer).</summary>
    public static bool Fits(Im2Col unfold, long outputs) => unfold.Rows <= MaxReduction && outputs <= int.MaxValue;

    /// <summary>Output channels per micro-kernel step.</summary>
    private const int RowsPerStep = 4;

    /// <summary>
    /// <c>y[i] = w * columns(images[i]) + bias</c> for the <see cref="Im2Col.Images"/> images of <paramref name="unfold"/>.
    /// </summary>
    /// <param name="weight"><paramref name="outputs"/> rows of <see cref="Im2Col.Rows"/> floats.</param>
    /// <param name="outputs">Output channels.</param>
    /// <param name="unfold">The geometry, over all images.</param>
    /// <param name="images">The images, <c>[Images, C, H, W]</c> contiguous.</param>
    /// <param name="bias"><paramref name="outputs"/> floats, or null.</param>
    /// <param name="y">The output, <c>[Images, outputs, Positions]</c> contiguous.</param>
    /// <param name="input">Static fake quantization applied to the images as they are copied (stride 1 only: see <see cref="FusesInputQuantization"/>), or null.</param>
    public static void Run(float* weight, int outputs, Im2Col unfold, float* images, float* bias, float* y, InputFakeQuantization? input = null)
    {
        if (input is not null && !FusesInputQuantization(unfold))
            throw new ArgumentException("Input quantization is fused only into stride-1 convolutions; quantize the input first.", nameof(input));
        if (Float512.IsSupported) Run<Float512, Vector512<float>>(weight, outputs, unfold, images, bias, y, input);
        else if (Float256.IsSupported) Run<Float256, Vector256<float>>(weight, outputs, unfold, images, bias, y, input);
        else if (Float128.IsSupported) Run<Float128, Vector128<float>>(weight, outputs, unfold, images, bias, y, input);
        else Run<Float1, float>(weight, outputs, unfold, images, bias, y, input);
    }

    /// <summary>Padded row length up to which stride 1 runs on the padded image (<see cref="RunWide"/>): its per-item scratch of 4 such rows stays a small stack buffer.</summary>
    internal const int MaxWideRow = 2048;

    /// <summary>
    /// Whether <see cref="Run"/> takes <see cref="RunWide"/> for this geometry (stride 1, padded rows up to
    /// <see cref="MaxWideRow"/>), and can therefore apply a static input quantization itself as it copies the image.
    /// </summary>
    public static bool FusesInputQuantization(Im2Col unfold) =>
        unfold.StrideH == 1 && unfold.StrideW == 1 && unfold.Width + 2 * unfold.PadW <= MaxWideRow;

    private static void Run<TW, TVec>(float* weight, int outputs, Im2Col u, float* images, float* bias, float* y, InputFakeQuantization? input)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        if (FusesInputQuantization(u))
        {
            RunWide<TW, TVec>(weight, outputs, u, images, bias, y, input);
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
            float* tail = stackalloc float[RowsPerStep * step];
            int* offsets = stackalloc int[k];
            for (int r = 0; r < k; r++) offsets[r] = r * width;
            for (int o = 0; o < outputs; o += RowsPerStep)
            {
                int rows = Math.Min(RowsPerStep, outputs - o);
                for (int p = 0; p < width; p += step)
                {
                    bool whole = p + step <= count;
                    float* dst = whole ? output + (nint)o * positions + p : tail;
                    nint ldy = whole ? positions : step;
                    Step<TW, TVec>(weight + (nint)o * k, k, rows, columns + p, offsets, bias is null ? null : bias + o, dst, ldy);
                    if (whole) continue;
                    for (int r = 0; r < rows; r++)
                        new Span<float>(tail + r * step, count - p).CopyTo(new Span<float>(output + (nint)(o + r) * positions + p, count - p));
                }
            }
        });
    }

    /// <summary>
    /// Stride 1: no columns are built. Each image is copied once, zero-padded, into a buffer of rows of
    /// <c>Wp = W + 2 padW</c>; the outputs are computed on a "wide" grid of <c>OutH x Wp</c> positions, on which
    /// reduction row <c>(c, kh, kw)</c> is the padded image itself read from offset <c>c Hp Wp + kh dH Wp + kw dW</c>,
    /// contiguous. The <c>Wp - OutW</c> extra positions of each output row (reads that run into the next row) are
    /// computed and dropped: 8% more multiply-adds for MNIST's 28-wide conv1, 18% for its 13-wide conv2, where unfolding
    /// the columns cost as much as the multiply-adds (4 of 5 us, 12 of 23 us).
    /// </summary>
    private static void RunWide<TW, TVec>(float* weight, int outputs, Im2Col u, float* images, float* bias, float* y, InputFakeQuantization? input)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        int k = u.Rows, positions = u.Positions, outH = u.OutH, outW = u.OutW;
        int hp = u.Height + 2 * u.PadH, wp = u.Width + 2 * u.PadW, step = VectorsPerStep * TW.Count;
        nint plane = (nint)hp * wp, padded = plane * u.Channels;
        // Reads of the last work item run past the last image's plane by less than a step plus a padded row (the
        // kernel's reach (kW - 1) dW is under wp): zeros there.
        nint slack = step + wp, total = padded * u.Images + slack;
        float* buffer = (float*)NativeMemory.AlignedAlloc((nuint)total * sizeof(float), 64);
        try
        {
            int* offsets = stackalloc int[k];
            for (int c = 0, j = 0; c < u.Channels; c++)
                for (int kh = 0; kh < u.KernelH; kh++)
                    for (int kw = 0; kw < u.KernelW; kw++)
                        offsets[j++] = (int)(c * plane + kh * u.DilationH * wp + kw * u.DilationW);
            int* pOffsets = offsets;
            Pad(u, images, buffer, hp, wp, input);
            new Span<float>(buffer + padded * u.Images, (int)slack).Clear();
            // Work items: an image's block of whole output rows, about Block wide positions.
            int rowsPerItem = Math.Max(1, Block / wp), blocks = (outH + rowsPerItem - 1) / rowsPerItem;
            KernelThreads.For(u.Images * blocks, (long)outputs * k * rowsPerItem * wp, item =>
            {
                int image = item / blocks, oh0 = item % blocks * rowsPerItem, oh1 = Math.Min(outH, oh0 + rowsPerItem);
                int wide = (oh1 - oh0) * wp, width = (wide + step - 1) / step * step;
                float* source = buffer + image * padded + (nint)oh0 * wp;
                float* scratch = stackalloc float[RowsPerStep * width];
                float* output = y + (nint)image * outputs * positions + (nint)oh0 * outW;
                for (int o = 0; o < outputs; o += RowsPerStep)
                {
                    int rows = Math.Min(RowsPerStep, outputs - o);
                    for (int p = 0; p < width; p += step)
                        Step<TW, TVec>(weight + (nint)o * k, k, rows, source + p, pOffsets, bias is null ? null : bias + o, scratch + p, width);
                    for (int r = 0; r < rows; r++)
                        for (int oh = 0; oh < oh1 - oh0; oh++)
                            new Span<float>(scratch + r * width + oh * wp, outW).CopyTo(new Span<float>(output + (nint)(o + r) * positions + oh * outW, outW));
                }
            });
        }
        finally
        {
            NativeMemory.AlignedFree(buffer);
        }
    }

    /// <summary>
    /// Copies the images into <paramref name="destination"/> as <c>[Images, C, hp, wp]</c> with zero borders,
    /// fake-quantized by <paramref name="input"/> when given (the simulated path quantizes, then pads with zeros).
    /// </summary>
    private static void Pad(Im2Col u, float* images, float* destination, int hp, int wp, InputFakeQuantization? input)
    {
        int h = u.Height, w = u.Width;
        for (int plane = 0; plane < u.Images * u.Channels; plane++)
        {
            float* src = images + (nint)plane * h * w, dst = destination + (nint)plane * hp * wp;
            if (u.PadH == 0 && u.PadW == 0)
            {
                Copy(new Span<float>(src, h * w), new Span<float>(dst, h * w), input);
                continue;
            }
            new Span<float>(dst, u.PadH * wp).Clear();
            for (int r = 0; r < h; r++)
            {
                float* row = dst + (nint)(r + u.PadH) * wp;
                new Span<float>(row, u.PadW).Clear();
                Copy(new Span<float>(src + (nint)r * w, w), new Span<float>(row + u.PadW, w), input);
                new Span<float>(row + u.PadW + w, u.PadW).Clear();
            }
            new Span<float>(dst + (nint)(h + u.PadH) * wp, u.PadH * wp).Clear();
        }
    }

    private static void Copy(ReadOnlySpan<float> source, Span<float> destination, InputFakeQuantization? input)
    {
        if (input is { } q) q.Apply(source, destination);
        else source.CopyTo(destination);
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
        StoreRow<TW, TVec>(a0, b0, c0, d0, y);
        if (rows < 2) return;
        StoreRow<TW, TVec>(a1, b1, c1, d1, y + ldy);
        if (rows < 3) return;
        StoreRow<TW, TVec>(a2, b2, c2, d2, y + 2 * ldy);
        if (rows < 4) return;
        StoreRow<TW, TVec>(a3, b3, c3, d3, y + 3 * ldy);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreRow<TW, TVec>(TVec a, TVec b, TVec c, TVec d, float* y)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        int n = TW.Count;
        TW.Store(a, y);
        TW.Store(b, y + n);
        TW.Store(c, y + 2 * n);
        TW.Store(d, y + 3 * n);
    }
}
