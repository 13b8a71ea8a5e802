using System.Runtime.CompilerServices;
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
    public static void Run(float* weight, int outputs, Im2Col unfold, float* images, float* bias, float* y)
    {
        if (Float512.IsSupported) Run<Float512, Vector512<float>>(weight, outputs, unfold, images, bias, y);
        else if (Float256.IsSupported) Run<Float256, Vector256<float>>(weight, outputs, unfold, images, bias, y);
        else if (Float128.IsSupported) Run<Float128, Vector128<float>>(weight, outputs, unfold, images, bias, y);
        else Run<Float1, float>(weight, outputs, unfold, images, bias, y);
    }

    private static void Run<TW, TVec>(float* weight, int outputs, Im2Col u, float* images, float* bias, float* y)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        int positions = u.Positions, k = u.Rows, blocks = (positions + Block - 1) / Block;
        int size = u.ImageSize;
        KernelThreads.For(u.Images * blocks, (long)outputs * k * Block, item =>
        {
            int image = item / blocks, p0 = item % blocks * Block, count = Math.Min(Block, positions - p0);
            // Columns padded to whole steps of two vectors (zeros), so the micro-kernel never reads past a row.
            int step = 2 * TW.Count, width = (count + step - 1) / step * step;
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
            for (int o = 0; o < outputs; o += RowsPerStep)
            {
                int rows = Math.Min(RowsPerStep, outputs - o);
                for (int p = 0; p < width; p += step)
                {
                    bool whole = p + step <= count;
                    float* dst = whole ? output + (nint)o * positions + p : tail;
                    nint ldy = whole ? positions : step;
                    Step<TW, TVec>(weight + (nint)o * k, k, rows, columns + p, width, bias is null ? null : bias + o, dst, ldy);
                    if (whole) continue;
                    for (int r = 0; r < rows; r++)
                        new Span<float>(tail + r * step, count - p).CopyTo(new Span<float>(output + (nint)(o + r) * positions + p, count - p));
                }
            }
        });
    }

    /// <summary>Up to four output channels (<paramref name="rows"/>) times two vectors of positions.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Step<TW, TVec>(float* w, int k, int rows, float* columns, int ldc, float* bias, float* y, nint ldy)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        // Missing rows repeat the last one (their results are not stored).
        float* w0 = w, w1 = w + (rows > 1 ? k : 0), w2 = w + (rows > 2 ? 2 * k : 0), w3 = w + (rows > 3 ? 3 * k : 0);
        TVec a0 = TW.Create(bias is null ? 0f : bias[0]), a1 = TW.Create(bias is null || rows < 2 ? 0f : bias[1]);
        TVec a2 = TW.Create(bias is null || rows < 3 ? 0f : bias[2]), a3 = TW.Create(bias is null || rows < 4 ? 0f : bias[3]);
        TVec b0 = a0, b1 = a1, b2 = a2, b3 = a3;
        for (int j = 0; j < k; j++)
        {
            float* c = columns + (nint)j * ldc;
            TVec x0 = TW.Load(c), x1 = TW.Load(c + TW.Count);
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
        TW.Store(b0, y + TW.Count);
        if (rows < 2) return;
        TW.Store(a1, y + ldy);
        TW.Store(b1, y + ldy + TW.Count);
        if (rows < 3) return;
        TW.Store(a2, y + 2 * ldy);
        TW.Store(b2, y + 2 * ldy + TW.Count);
        if (rows < 4) return;
        TW.Store(a3, y + 3 * ldy);
        TW.Store(b3, y + 3 * ldy + TW.Count);
    }
}
