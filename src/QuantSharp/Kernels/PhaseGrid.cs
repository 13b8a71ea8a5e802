using System.Runtime.Intrinsics;

namespace QuantSharp.Kernels;

/// <summary>
/// Images stored padded and split into stride phases: for channel c and phase <c>(a, b)</c> (<c>0 &lt;= a &lt; strideH</c>,
/// <c>0 &lt;= b &lt; strideW</c>) a plane of <see cref="PhaseHeight"/> x <see cref="PhaseWidth"/> values holding padded
/// pixel <c>(i * strideH + a, j * strideW + b)</c> at <c>(i, j)</c>. Output position <c>(oh, ow)</c> reads tap
/// <c>(kh, kw)</c> at padded pixel <c>(oh * strideH + kh * dH, ow * strideW + kw * dW)</c>, which is phase
/// <c>(kh dH mod strideH, kw dW mod strideW)</c> at <c>(oh + kh dH / strideH, ow + kw dW / strideW)</c>: so on the "wide"
/// grid of <c>OutH x PhaseWidth</c> positions (<c>q = oh * PhaseWidth + ow</c>) each reduction row is the values from
/// <see cref="Offset"/> on, contiguous. The <c>PhaseWidth - OutW</c> extra positions of each output row (reads that run
/// into the next row) are computed and dropped; at stride 1 there is one phase, the padded image. The layout of the
/// integer convolution's codes (<see cref="IntegerMatMul.RunConvolution"/>) and of the small-convolution kernel's
/// floats (<see cref="DirectConvolution"/>).
/// </summary>
internal readonly struct PhaseGrid
{
    private readonly Im2Col _u;

    public PhaseGrid(in Im2Col unfold)
    {
        _u = unfold;
        PhaseHeight = (unfold.Height + 2 * unfold.PadH + unfold.StrideH - 1) / unfold.StrideH;
        PhaseWidth = (unfold.Width + 2 * unfold.PadW + unfold.StrideW - 1) / unfold.StrideW;
        ImageValues = (long)unfold.Channels * unfold.StrideH * unfold.StrideW * PhaseHeight * PhaseWidth;
        // Whole strips of the integer GEMM's widest width (32 rows) per image, so no strip crosses two images.
        long rows = ((long)unfold.OutH * PhaseWidth + 31) / 32 * 32;
        RowsPerImage = rows <= int.MaxValue ? (int)rows : -1;
    }

    /// <summary>Rows of a phase plane.</summary>
    public int PhaseHeight { get; }

    /// <summary>Values per row of a phase plane: the wide grid's row length.</summary>
    public int PhaseWidth { get; }

    /// <summary>Values per image (all channels and phases).</summary>
    public long ImageValues { get; }

    /// <summary>Activation rows per image of the integer GEMM (the wide grid rounded up to whole strips of 32), or -1 beyond int.</summary>
    public int RowsPerImage { get; }

    /// <summary>Where reduction row <paramref name="kk"/> (channel, tap) starts in an image.</summary>
    public int Offset(int kk)
    {
        int taps = _u.KernelH * _u.KernelW, c = kk / taps, tap = kk - c * taps, kh = tap / _u.KernelW, kw = tap - kh * _u.KernelW;
        int dy = kh * _u.DilationH, dx = kw * _u.DilationW;
        int phase = (c * _u.StrideH + dy % _u.StrideH) * _u.StrideW + dx % _u.StrideW;
        return (phase * PhaseHeight + dy / _u.StrideH) * PhaseWidth + dx / _u.StrideW;
    }

    /// <summary>
    /// Where a padded row's values go in each column phase, the same for every row (<see cref="WriteRow"/> takes them, so
    /// its callers compute them once per call): phase b takes the columns t with <c>(t + padW) mod strideW = b</c>, the
    /// first (<see cref="ColumnPhase.First"/>) at place <c>(t + padW) / strideW</c>.
    /// </summary>
    public ColumnPhase[] ColumnPhases()
    {
        int w = _u.Width, stride = _u.StrideW;
        var phases = new ColumnPhase[stride];
        for (int b = 0; b < stride; b++)
        {
            int t = ((b - _u.PadW) % stride + stride) % stride;
            phases[b] = new ColumnPhase(t, (t + _u.PadW) / stride, t < w ? (w - t + stride - 1) / stride : 0);
        }
        return phases;
    }

    /// <summary>
    /// Writes padded row <paramref name="paddedRow"/> of one channel (<paramref name="channel"/>: the start of its
    /// phases) into its phase rows: the <see cref="Im2Col.Width"/> values of <paramref name="row"/> at their places
    /// (<paramref name="columns"/>: <see cref="ColumnPhases"/>), and <paramref name="pad"/> everywhere else;
    /// <paramref name="row"/> null for a row of padding. At stride 2 the row is read one value past its end. Computed
    /// per row, the columns' places took four integer divisions per phase row, a large part of the stride-2 stem's
    /// quantization pass (docs/BENCHMARKS.md, stop 20).
    /// </summary>
    public unsafe void WriteRow<T>(T* channel, int paddedRow, T* row, T pad, ColumnPhase[] columns) where T : unmanaged
    {
        int stride = _u.StrideW, width = PhaseWidth;
        (int i, int a) = Math.DivRem(paddedRow, _u.StrideH);
        T* phaseRow = channel + ((long)a * stride * PhaseHeight + i) * width;
        long phaseValues = (long)PhaseHeight * width;
        for (int b = 0; b < stride; b++, phaseRow += phaseValues)
        {
            var column = columns[b];
            int n = row != null ? column.Count : 0;
            if (n == 0)
            {
                new Span<T>(phaseRow, width).Fill(pad);
                continue;
            }
            Fill(phaseRow, column.Place, pad);
            Fill(phaseRow + column.Place + n, width - column.Place - n, pad);
            Gather(row + column.First, n, stride, phaseRow + column.Place);
        }
    }

    /// <summary><paramref name="count"/> copies of <paramref name="value"/> (a phase row's few padding values: one by one, not through a span's fill).</summary>
    internal static unsafe void Fill<T>(T* dst, int count, T value) where T : unmanaged
    {
        if (count > 8)
        {
            new Span<T>(dst, count).Fill(value);
            return;
        }
        for (int j = 0; j < count; j++) dst[j] = value;
    }

    /// <summary><c>dst[j] = src[j * stride]</c> for <c>j &lt; n</c>; at stride 2 through vectors, which read up to <c>src[2n - 1]</c>.</summary>
    private static unsafe void Gather<T>(T* src, int n, int stride, T* dst) where T : unmanaged
    {
        if (stride == 1)
        {
            Buffer.MemoryCopy(src, dst, (long)n * sizeof(T), (long)n * sizeof(T));
            return;
        }
        int j = 0;
        if (stride == 2 && Simd.Use128)
        {
            // The even values: each pair read as one value of twice the width, narrowed to its low half.
            if (sizeof(T) == 1)
            {
                if (Simd.Use512)
                {
                    var low512 = Vector512.Create((ushort)0xFF);
                    for (; j + 64 <= n; j += 64)
                        Vector512.Narrow(Vector512.Load((ushort*)(src + 2 * j)) & low512, Vector512.Load((ushort*)(src + 2 * j) + 32) & low512).Store((byte*)(dst + j));
                }
                var low = Vector128.Create((ushort)0xFF);
                for (; j + 16 <= n; j += 16)
                    Vector128.Narrow(Vector128.Load((ushort*)(src + 2 * j)) & low, Vector128.Load((ushort*)(src + 2 * j) + 8) & low).Store((byte*)(dst + j));
            }
            else if (sizeof(T) == 4)
            {
                if (Simd.Use512)
                {
                    for (; j + 16 <= n; j += 16)
                        Vector512.Narrow(Vector512.Load((ulong*)(src + 2 * j)), Vector512.Load((ulong*)(src + 2 * j) + 8)).Store((uint*)(dst + j));
                }
                for (; j + 4 <= n; j += 4)
                    Vector128.Narrow(Vector128.Load((ulong*)(src + 2 * j)), Vector128.Load((ulong*)(src + 2 * j) + 2)).Store((uint*)(dst + j));
            }
        }
        for (; j < n; j++) dst[j] = src[j * stride];
    }
}

/// <summary>One column phase of a padded row (<see cref="PhaseGrid.ColumnPhases"/>): its values are the row's columns <see cref="First"/>, <c>First + strideW</c>, ... (<see cref="Count"/> of them), stored from <see cref="Place"/> on.</summary>
internal readonly record struct ColumnPhase(int First, int Place, int Count);
