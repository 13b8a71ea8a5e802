using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

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

    /// <summary>A pointwise call: 1x1 taps at stride 1 without padding, so that each image is its own column matrix.</summary>
    public bool IsPointwise => KernelH * KernelW == 1 && StrideH * StrideW == 1 && PadH + PadW == 0;

    /// <summary>Taps x lanes up to which <see cref="PackStrip"/> keeps a strip's gather offsets on the stack (beyond: row by row).</summary>
    internal const int GatherTableLanes = 2048;

    /// <summary>
    /// Positions <c>[p0, p0 + valid)</c> of every row of the column matrix of <paramref name="image"/> as a strip of
    /// <paramref name="width"/> lanes, row <c>k</c> at <c>strip + k * width</c>, the lanes from <paramref name="valid"/>
    /// zero: the packed GEMM's operand (<see cref="PackedMatMul"/>). <see cref="Row"/> gives the same values.
    /// </summary>
    /// <remarks>
    /// A pointwise geometry (1x1, stride 1, no padding) is the image itself: each row a copy of the plane's run. Else,
    /// with AVX2 and whole 8-lane vectors, each row is read from its channel's plane in chunks of 8 lanes: which lanes
    /// fall inside the image, and where, depends only on the tap <c>(kh, kw)</c>, so those offsets and masks are
    /// computed once per strip for every tap (lanes in the padding or past <paramref name="valid"/> load nothing and
    /// stay zero). A chunk of at most two runs of consecutive values (stride 1 along the width, at most two output rows)
    /// is one or two masked loads; others (stride 2, narrow outputs) a masked gather, which on the Zen 5 VM made the
    /// packing 19-45% of a stride-1 3x3 call's samples (docs/BENCHMARKS.md, stop 30). Row by row through
    /// <see cref="Row"/> (a call per row of the strip, a division and a copy per output-row run, value by value at
    /// stride 2) took about a third of a 3x3 call at batch 1 (128->256 at stride 2 on 28x28; stop 28). Without AVX2, or
    /// past <see cref="GatherTableLanes"/>, row by row.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public unsafe void PackStrip(float* image, int p0, int valid, int width, float* strip)
    {
        int taps = KernelH * KernelW, planeSize = Height * Width;
        if (taps == 1 && StrideH == 1 && StrideW == 1 && PadH == 0 && PadW == 0)
        {
            for (int c = 0; c < Channels; c++)
            {
                float* dst = strip + (nint)c * width;
                new ReadOnlySpan<float>(image + (nint)c * planeSize + p0, valid).CopyTo(new Span<float>(dst, valid));
                new Span<float>(dst + valid, width - valid).Clear();
            }
            return;
        }
        if (!Avx2.IsSupported || !Simd.Use256 || width % 8 != 0 || taps * width > GatherTableLanes)
        {
            for (int k = 0; k < Rows; k++)
            {
                float* dst = strip + (nint)k * width;
                Row(image, k, p0, valid, dst, 0f);
                new Span<float>(dst + valid, width - valid).Clear();
            }
            return;
        }
        // Per tap and lane: the offset in a channel's plane, and all ones where the value is inside the image.
        int* offsets = stackalloc int[taps * width], inside = stackalloc int[taps * width];
        for (int j = 0; j < width; j++)
        {
            int p = p0 + j, oh = p / OutW, ow = p - oh * OutW;
            int ih0 = oh * StrideH - PadH, iw0 = ow * StrideW - PadW;
            for (int kh = 0, t = 0; kh < KernelH; kh++)
            {
                for (int kw = 0; kw < KernelW; kw++, t++)
                {
                    int ih = ih0 + kh * DilationH, iw = iw0 + kw * DilationW;
                    bool isInside = j < valid && (uint)ih < (uint)Height && (uint)iw < (uint)Width;
                    offsets[t * width + j] = isInside ? ih * Width + iw : 0;
                    inside[t * width + j] = isInside ? -1 : 0;
                }
            }
        }
        // Per tap and 8-lane chunk, how it loads (TwoRuns): lane i of a chunk in a run of consecutive input values reads
        // plane[d + i] for one d, so a chunk whose inside lanes have at most two such d (at stride 1 along the width: at
        // most two output rows) is two masked loads, which read nothing where the mask is off (padding, lanes past
        // valid, the second run of a chunk of one); the two masks then replace the chunk's inside and offset lanes.
        int chunks = taps * width / 8;
        bool* gathered = stackalloc bool[chunks];
        nint* bases = stackalloc nint[2 * chunks];
        bool gathers = false;
        for (int q = 0; q < chunks; q++) gathers |= gathered[q] = !TwoRuns(offsets + 8 * q, inside + 8 * q, bases + 2 * q);
        float* row = strip;
        for (int c = 0; c < Channels; c++)
        {
            float* plane = image + (nint)c * planeSize;
            for (int q = 0; q < chunks; q++, row += 8)
            {
                Vector256<float> first = Vector256.Load(inside + 8 * q).AsSingle(), second = Vector256.Load(offsets + 8 * q).AsSingle();
                // A strip without gathers (every stride-1 strip of outputs at least 7 wide) takes no branch per chunk.
                var v = gathers && gathered[q]
                    ? Avx2.GatherMaskVector256(Vector256<float>.Zero, plane, second.AsInt32(), first, sizeof(float))
                    : Avx.MaskLoad(plane + bases[2 * q], first) | Avx.MaskLoad(plane + bases[2 * q + 1], second);
                v.Store(row);
            }
        }
    }

    /// <summary>
    /// Whether one 8-lane chunk of <see cref="PackStrip"/> (lane offsets in <paramref name="offsets"/>, all ones in
    /// <paramref name="inside"/> where the value is inside the image) is two masked loads of 8 consecutive values, from
    /// <c>plane + bases[0]</c> and <c>plane + bases[1]</c>: then it writes their masks over <paramref name="inside"/>
    /// and <paramref name="offsets"/> (all zero where a load has no lane). False where the chunk needs a gather with its
    /// offsets and mask as they are.
    /// </summary>
    private static unsafe bool TwoRuns(int* offsets, int* inside, nint* bases)
    {
        // The distinct d = offset - lane of the inside lanes, up to two.
        int count = 0;
        int d0 = 0, d1 = 0;
        for (int i = 0; i < 8; i++)
        {
            if (inside[i] == 0) continue;
            int d = offsets[i] - i;
            if (count > 0 && d == d0 || count > 1 && d == d1) continue;
            if (count == 2) return false;
            if (count++ == 0) d0 = d;
            else d1 = d;
        }
        bases[0] = d0;
        bases[1] = count == 2 ? d1 : d0;
        for (int i = 0; i < 8; i++)
        {
            int d = offsets[i] - i;
            bool on = inside[i] != 0;
            inside[i] = on && d == d0 ? -1 : 0;
            offsets[i] = on && count == 2 && d == d1 ? -1 : 0;
        }
        return true;
    }

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
