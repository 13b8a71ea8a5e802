using System.Runtime.CompilerServices;

namespace QuantSharp.Kernels;

/// <summary>
/// One image of a convolution seen as a column matrix (im2col) that is never built: row <c>k = (c, kh, kw)</c>
/// (the weight's flattening order) and column <c>p = (oh, ow)</c> hold
/// <c>image[c, oh * strideH - padH + kh * dilationH, ow * strideW - padW + kw * dilationW]</c>, or the padding value
/// outside the image. <see cref="Row"/> fills a run of one row on demand, which is how the packed GEMMs read the
/// columns (<see cref="PackedMatMul"/>). A Conv1d is an image of height 1 with a kernel of height 1.
/// </summary>
internal readonly struct Im2Col
{
    /// <summary>
    /// Describes <paramref name="images"/> images <c>[channels, height, width]</c> (contiguous, one after the other) and
    /// the kernel geometry; the output size follows.
    /// </summary>
    public Im2Col(int channels, int height, int width, int kernelH, int kernelW, int strideH, int strideW, int padH, int padW, int dilationH, int dilationW, int images = 1)
    {
        Images = images;
        Channels = channels;
        Height = height;
        Width = width;
        KernelH = kernelH;
        KernelW = kernelW;
        StrideH = strideH;
        StrideW = strideW;
        PadH = padH;
        PadW = padW;
        DilationH = dilationH;
        DilationW = dilationW;
        OutH = (height + 2 * padH - dilationH * (kernelH - 1) - 1) / strideH + 1;
        OutW = (width + 2 * padW - dilationW * (kernelW - 1) - 1) / strideW + 1;
        if (OutH <= 0 || OutW <= 0) throw new ArgumentException($"The kernel does not fit the padded {height}x{width} image.");
    }

    /// <summary>Images unfolded by one call (each its own column matrix).</summary>
    public int Images { get; }

    public int Channels { get; }
    public int Height { get; }
    public int Width { get; }
    public int KernelH { get; }
    public int KernelW { get; }
    public int StrideH { get; }
    public int StrideW { get; }
    public int PadH { get; }
    public int PadW { get; }
    public int DilationH { get; }
    public int DilationW { get; }
    public int OutH { get; }
    public int OutW { get; }

    /// <summary>The same geometry over <paramref name="images"/> consecutive images.</summary>
    public Im2Col ForImages(int images) =>
        new(Channels, Height, Width, KernelH, KernelW, StrideH, StrideW, PadH, PadW, DilationH, DilationW, images);

    /// <summary>Rows of the column matrix: the reduction length <c>channels * kernelH * kernelW</c>.</summary>
    public int Rows => Channels * KernelH * KernelW;

    /// <summary>Columns of the column matrix: output positions <c>OutH * OutW</c>.</summary>
    public int Positions => OutH * OutW;

    /// <summary>Elements of one input image.</summary>
    public int ImageSize => Channels * Height * Width;

    /// <summary>Row <paramref name="k"/> of the column matrix at positions <c>[p0, p0 + count)</c> of <paramref name="image"/> into <paramref name="dst"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public unsafe void Row<T>(T* image, int k, int p0, int count, T* dst, T pad) where T : unmanaged
    {
        int taps = KernelH * KernelW;
        int c = k / taps, tap = k - c * taps, kh = tap / KernelW, kw = tap - kh * KernelW;
        T* plane = image + (nint)c * Height * Width;
        int offset = kw * DilationW - PadW;
        for (int p = p0, end = p0 + count; p < end;)
        {
            int oh = p / OutW, ow = p - oh * OutW, run = Math.Min(end - p, OutW - ow);
            int ih = oh * StrideH - PadH + kh * DilationH;
            if ((uint)ih >= (uint)Height)
            {
                for (int j = 0; j < run; j++) dst[j] = pad;
            }
            else
            {
                T* src = plane + (nint)ih * Width;
                if (StrideW == 1)
                {
                    // Positions whose input column is inside the row are one contiguous run.
                    int first = ow + offset, lo = Math.Clamp(-first, 0, run), hi = Math.Clamp(Width - first, lo, run);
                    for (int j = 0; j < lo; j++) dst[j] = pad;
                    Buffer.MemoryCopy(src + first + lo, dst + lo, (hi - lo) * sizeof(T), (hi - lo) * sizeof(T));
                    for (int j = hi; j < run; j++) dst[j] = pad;
                }
                else
                {
                    for (int j = 0; j < run; j++)
                    {
                        int iw = (ow + j) * StrideW + offset;
                        dst[j] = (uint)iw < (uint)Width ? src[iw] : pad;
                    }
                }
            }
            dst += run;
            p += run;
        }
    }
}
