using QuantSharp.Kernels;
using QuantSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;
using static QuantSharp.Tests.Kernels.ConvolutionKernelTests;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// The packed kernels' bfloat16 mode (<see cref="PackedMatMul.Run"/>'s <c>bfloat16</c>: the bfloat16 convolution route
/// where libtorch's bfloat16 convolution fails its check): the generated <c>vdpbf16ps</c> micro-kernel against its
/// managed twin and a scalar specification; convolutions of every weight format, geometry (stride phases, dilation,
/// padding, Conv1d, reductions of one and two blocks, odd lengths), weights of one item and of several (rows not a
/// multiple of the six-row tile), one and two images, within bfloat16's rounding bound of the float32 specification,
/// rounded (not float32's bits), the same through the native micro-kernel and the twin; and exactly the float32 kernels'
/// bits where the mode does not apply (paths narrower than 512 bits, odd reduction lengths), as CI's runs with AVX-512
/// or all intrinsics off check.
/// </summary>
public unsafe class BFloat16PackedKernelTests
{
    /// <summary>
    /// Per output, |bfloat16 mode - float32 specification| as a fraction of M = sum |w| |x| + |b|: input and weight each
    /// rounded to bfloat16 (u = 2^-8 of themselves: a product moves by at most (2u + u^2) |w x|), sums in float32 on both
    /// sides (K 2^-24 M each, under 2^-14 M for the K &lt;= 360 here) and the weight's dequantization (one float32 rounding
    /// apart): in all under 2u + 2^-12. No output rounding: the sums stay float32.
    /// </summary>
    private const double Bound = 2.0 / 256 + 1.0 / 4096;

    // (C, H, W, KH, KW, SH, SW, PH, PW, DH, DW): Geometries' odd and even reductions, plus one of two reduction blocks (K =
    // 360), and 66 channel pairs: two blocks of pair images (PackedMatMul.PairBlock, 64).
    private static readonly int[][] Shapes = [.. Geometries, [40, 6, 7, 3, 3, 1, 1, 1, 1, 1, 1], [20, 9, 5, 3, 3, 2, 1, 1, 1, 1, 1], [132, 5, 6, 3, 3, 1, 1, 1, 1, 1, 1]];

    [Fact]
    public void MicroKernelTwinFollowsTheInstructionsDefinitionAndTheGeneratedKernelAgrees()
    {
        const int Pairs = 37, Lanes = 32, Rows = 6, Ldc = 40; // c rows 40 floats apart: 8 not written
        var rng = new Random(7);
        uint[] a = new uint[Rows * 41], b = new uint[Pairs * Lanes]; // weight rows 41 pairs apart
        ushort Bf() => HalfKernel.ToBFloat16Bits((float)(rng.NextDouble() * 4 - 2));
        for (int i = 0; i < a.Length; i++) a[i] = Bf() | (uint)Bf() << 16;
        for (int i = 0; i < b.Length; i++) b[i] = Bf() | (uint)Bf() << 16;
        float[] start = new float[Rows * Ldc];
        for (int i = 0; i < start.Length; i++) start[i] = (float)(rng.NextDouble() * 8 - 4);
        // The specification: per lane, += the high halves' product, then += the low halves' (each product exact in float32).
        float[] spec = (float[])start.Clone();
        for (int j = 0; j < Rows; j++)
            for (int l = 0; l < Lanes; l++)
                for (int g = 0; g < Pairs; g++)
                {
                    uint w = a[j * 41 + g], x = b[g * Lanes + l];
                    spec[j * Ldc + l] += BitConverter.UInt32BitsToSingle(w & 0xFFFF0000u) * BitConverter.UInt32BitsToSingle(x & 0xFFFF0000u);
                    spec[j * Ldc + l] += BitConverter.UInt32BitsToSingle(w << 16) * BitConverter.UInt32BitsToSingle(x << 16);
                }
        float[] twin = (float[])start.Clone();
        fixed (uint* pa = a) fixed (uint* pb = b) fixed (float* pc = twin)
            Vnni512Kernel.MicroBFloat16Twin(pa, 41 * 4, pb, Pairs, pc, Ldc * 4);
        Assert.Equal(spec, twin);
        for (int j = 0; j < Rows; j++)
            for (int l = Lanes; l < Ldc; l++) Assert.Equal(start[j * Ldc + l], twin[j * Ldc + l]);
        if (!Vnni512Kernel.BFloat16Supported) return; // no AVX512-BF16 here (or AVX-512 off): the twin is all that runs
        float[] native = (float[])start.Clone();
        fixed (uint* pa = a) fixed (uint* pb = b) fixed (float* pc = native)
            Vnni512Kernel.MicroBFloat16(pa, 41 * 4, pb, Pairs, pc, Ldc * 4);
        Assert.Equal(spec, native);
        // No groups: c unchanged.
        float[] none = (float[])start.Clone();
        fixed (uint* pa = a) fixed (uint* pb = b) fixed (float* pc = none)
            Vnni512Kernel.MicroBFloat16(pa, 41 * 4, pb, 0, pc, Ldc * 4);
        Assert.Equal(start, none);
    }

    /// <summary>
    /// The bfloat16 dot products with the output channels in lanes (<see cref="Vnni512Kernel.PairDots"/>) equal their
    /// twin and the instruction's definition (per lane, from zero, step by step: += the high halves' product, then += the
    /// low halves'), on every run length and both vector counts, with steps whose offsets go back and forth.
    /// </summary>
    [Fact]
    public void PairDotsEqualTheirTwinAndTheDefinitionForEveryRunLength()
    {
        var rng = new Random(13);
        const int Steps = 5;
        ushort Bf() => HalfKernel.ToBFloat16Bits((float)(rng.NextDouble() * 4 - 2));
        uint[] x = new uint[1024], w = new uint[Steps * 32];
        for (int i = 0; i < x.Length; i++) x[i] = Bf() | (uint)Bf() << 16;
        for (int i = 0; i < w.Length; i++) w[i] = Bf() | (uint)Bf() << 16;
        nint[] offsets = [400, 8, 2000, 1200, 0]; // bytes
        int checkedNative = 0;
        for (int vectors = 1; vectors <= 2; vectors++)
            for (int positions = 1; positions * vectors <= Vnni512Kernel.QuadMaxAccumulators; positions++)
            {
                float[] spec = new float[positions * 16 * vectors], twin = new float[spec.Length], native = new float[spec.Length];
                for (int j = 0; j < positions; j++)
                    for (int v = 0; v < vectors; v++)
                        for (int l = 0; l < 16; l++)
                        {
                            float acc = 0;
                            for (int s = 0; s < Steps; s++)
                            {
                                uint a = x[offsets[s] / 4 + j], b = w[16 * (s * vectors + v) + l];
                                acc += BitConverter.UInt32BitsToSingle(a & 0xFFFF0000u) * BitConverter.UInt32BitsToSingle(b & 0xFFFF0000u);
                                acc += BitConverter.UInt32BitsToSingle(a << 16) * BitConverter.UInt32BitsToSingle(b << 16);
                            }
                            spec[16 * (j * vectors + v) + l] = acc;
                        }
                fixed (uint* px = x) fixed (uint* pw = w) fixed (nint* table = offsets) fixed (float* t = twin) fixed (float* n = native)
                {
                    Vnni512Kernel.PairDotsTwin(pw, Steps, px, table, t, positions, vectors);
                    if (Vnni512Kernel.BFloat16Supported)
                    {
                        Array.Fill(native, float.NaN);
                        Vnni512Kernel.PairDots(pw, Steps, px, table, n, positions, vectors);
                    }
                }
                Assert.Equal(spec, twin);
                if (!Vnni512Kernel.BFloat16Supported) continue;
                Assert.Equal(spec, native);
                checkedNative++;
            }
        Assert.True(!Vnni512Kernel.BFloat16Supported || checkedNative == 28 + 14, $"{checkedNative} run lengths through the generated code");
    }

    [Fact]
    public void TapsMicroKernelReadsEachTapsGroupsAndWeightPairsAtTheirStridesAsItsTwinAndTheSpecification()
    {
        // Pair-image reads: tap t's strip starts at its own offset, its groups 1,000 values apart (a plane); each weight
        // row's pairs `taps` apart (a tap's pair in [C / 2, taps] order), tap t's from the row's pair t; 1 to 6 rows.
        const int Lanes = 32, Ldc = 36, Ldb = 1000;
        var rng = new Random(19);
        ushort Bf() => HalfKernel.ToBFloat16Bits((float)(rng.NextDouble() * 4 - 2));
        int checkedNative = 0;
        foreach (var (groups, taps) in new[] { (21, 1), (16, 9), (3, 4), (0, 9), (1, 2) })
            for (int rows = 1; rows <= 6; rows++)
            {
                int lda = Math.Max(groups, 1) * taps + 5;
                uint[] a = new uint[6 * lda], b = new uint[Math.Max(groups, 1) * Ldb + 200];
                for (int i = 0; i < a.Length; i++) a[i] = Bf() | (uint)Bf() << 16;
                for (int i = 0; i < b.Length; i++) b[i] = Bf() | (uint)Bf() << 16;
                // Taps' strips not aligned to 64 bytes and not in order.
                nint[] tapBytes = new nint[taps];
                for (int t = 0; t < taps; t++) tapBytes[t] = (3 + (t * 37) % 150) * sizeof(uint);
                float[] start = new float[6 * Ldc];
                for (int i = 0; i < start.Length; i++) start[i] = (float)(rng.NextDouble() * 8 - 4);
                float[] spec = (float[])start.Clone();
                for (int j = 0; j < rows; j++)
                    for (int l = 0; l < Lanes; l++)
                        for (int t = 0; t < taps; t++)
                            for (int g = 0; g < groups; g++)
                            {
                                uint w = a[j * lda + g * taps + t], x = b[tapBytes[t] / sizeof(uint) + g * Ldb + l];
                                spec[j * Ldc + l] += BitConverter.UInt32BitsToSingle(w & 0xFFFF0000u) * BitConverter.UInt32BitsToSingle(x & 0xFFFF0000u);
                                spec[j * Ldc + l] += BitConverter.UInt32BitsToSingle(w << 16) * BitConverter.UInt32BitsToSingle(x << 16);
                            }
                float[] twin = (float[])start.Clone();
                fixed (uint* pa = a) fixed (uint* pb = b) fixed (float* pc = twin) fixed (nint* pt = tapBytes)
                    Vnni512Kernel.MicroBFloat16TapsTwin(pa, lda * 4, pb, groups, pc, Ldc * 4, Ldb * 4, taps * 4, taps, pt, rows);
                Assert.Equal(spec, twin);
                if (!Vnni512Kernel.BFloat16Supported) continue; // no AVX512-BF16 here (or AVX-512 off): the twin is all that runs
                float[] native = (float[])start.Clone();
                fixed (uint* pa = a) fixed (uint* pb = b) fixed (float* pc = native) fixed (nint* pt = tapBytes)
                    Vnni512Kernel.MicroBFloat16Taps(pa, lda * 4, pb, groups, pc, Ldc * 4, Ldb * 4, taps * 4, taps, pt, rows);
                Assert.Equal(spec, native); // rows past `rows` unchanged too
                checkedNative++;
            }
        Assert.Equal(Vnni512Kernel.BFloat16Supported ? 30 : 0, checkedNative);
        // The plain kernel after them is unchanged (its strides stay 128 and 4).
        const int Groups = 21, Lda = 40;
        uint[] pa2 = new uint[6 * Lda], pb2 = new uint[Groups * 32 + 32];
        for (int i = 0; i < pa2.Length; i++) pa2[i] = Bf() | (uint)Bf() << 16;
        for (int i = 0; i < pb2.Length; i++) pb2[i] = Bf() | (uint)Bf() << 16;
        if (!Vnni512Kernel.BFloat16Supported) return;
        float[] plain = new float[6 * Ldc], plainTwin = new float[6 * Ldc];
        fixed (uint* pa = pa2) fixed (uint* pb = pb2) fixed (float* pc = plain) fixed (float* pt = plainTwin)
        {
            Vnni512Kernel.MicroBFloat16(pa, Lda * 4, pb, Groups, pc, Ldc * 4);
            Vnni512Kernel.MicroBFloat16Twin(pa, Lda * 4, pb, Groups, pt, Ldc * 4);
        }
        Assert.Equal(plainTwin, plain);
        Assert.Contains(plain, v => v != 0);
    }

    [Fact]
    public void WeightRowsArePairedByChannelsTapByTap()
    {
        var rng = new Random(5);
        foreach (var (taps, pairs) in new[] { (1, 3), (1, 16), (3, 6), (9, 2), (9, 32), (16, 4), (17, 3), (49, 2) })
        {
            int k = 2 * pairs * taps;
            ushort[] row = new ushort[k + 32];
            for (int i = 0; i < k; i++) row[i] = (ushort)rng.Next(65536);
            uint[] dst = new uint[pairs * taps + 16];
            Array.Fill(dst, 0xDEADBEEFu);
            fixed (ushort* pr = row) fixed (uint* pd = dst) PackedMatMul.PairChannels(pr, taps, pairs, pd);
            // Nothing written past the row's pairs (the next weight row's place, another thread's).
            Assert.All(dst[(pairs * taps)..], v => Assert.Equal(0xDEADBEEFu, v));
            for (int p = 0; p < pairs; p++)
                for (int t = 0; t < taps; t++)
                {
                    uint expected = row[2 * p * taps + t] | (uint)row[(2 * p + 1) * taps + t] << 16;
                    Assert.True(expected == dst[p * taps + t], $"{taps} taps, {pairs} pairs: pair {p} tap {t} {dst[p * taps + t]:X8}, expected {expected:X8}");
                }
        }
    }

    [Theory]
    [InlineData(16, 16, 1)]
    [InlineData(58, 58, 1)]
    [InlineData(30, 30, 4)]
    public void PairPlanesAreAnOddNumberOfCacheLinesApartAndHoldAPlane(int height, int width, int phases)
    {
        int stride = phases == 4 ? 2 : 1;
        var u = new Im2Col(8, height, width, 3, 3, stride, stride, 1, 1, 1, 1);
        var grid = new PhaseGrid(new Im2Col(4, height, width, 3, 3, stride, stride, 1, 1, 1, 1));
        nint planeStride = PackedMatMul.PairPlaneStride(grid, 4);
        long plane = grid.ImageValues / 4;
        Assert.True(planeStride >= plane && planeStride < plane + 32, $"{planeStride} values for a plane of {plane}");
        Assert.Equal(0, planeStride % 16);
        Assert.Equal(1, planeStride / 16 % 2);
        Assert.Equal(8, u.Channels);
    }

    [Fact]
    public void StripsArePairedInPlaceAsBFloat16RoundedToNearestEven()
    {
        const int Width = 32;
        var rng = new Random(11);
        foreach (int k in new[] { 1, 2, 3, 8, 37, 64 })
        {
            var steps = new float[k * Width];
            for (int i = 0; i < steps.Length; i++) steps[i] = (float)(rng.NextDouble() * 6 - 3);
            // Ties both ways (low half exactly 0x8000, even and odd upper halves), a NaN, infinities, a value that rounds up to infinity.
            float[] special = [BitConverter.UInt32BitsToSingle(0x3F808000u), BitConverter.UInt32BitsToSingle(0x3F818000u), float.NaN,
                float.PositiveInfinity, float.NegativeInfinity, BitConverter.UInt32BitsToSingle(0x7F7FFFFFu), -0f, 1e-40f];
            special.AsSpan(0, Math.Min(special.Length, steps.Length)).CopyTo(steps);
            var pairs = (float[])steps.Clone();
            fixed (float* p = pairs) PackedMatMul.PairSteps(p, k);
            uint[] bits = [.. pairs.Select(BitConverter.SingleToUInt32Bits)];
            for (int g = 0; g < (k + 1) / 2; g++)
                for (int l = 0; l < Width; l++)
                {
                    uint low = HalfKernel.ToBFloat16Bits(steps[2 * g * Width + l]);
                    uint high = 2 * g + 1 < k ? HalfKernel.ToBFloat16Bits(steps[(2 * g + 1) * Width + l]) : 0u;
                    Assert.True((low | high << 16) == bits[g * Width + l], $"k {k}, pair {g}, lane {l}: {bits[g * Width + l]:X8}, expected {low | high << 16:X8}");
                }
        }
    }

    [Fact]
    public void PairRowsAreRoundedToNearestEvenAtEveryLengthAndWriteNothingPastTheRow()
    {
        var rng = new Random(13);
        float[] special = [BitConverter.UInt32BitsToSingle(0x3F808000u), BitConverter.UInt32BitsToSingle(0x3F818000u), float.NaN,
            float.PositiveInfinity, float.NegativeInfinity, BitConverter.UInt32BitsToSingle(0x7F7FFFFFu), -0f, 1e-40f];
        for (int n = 1; n <= 40; n++)
        {
            float[] even = new float[n], odd = new float[n];
            for (int j = 0; j < n; j++) (even[j], odd[j]) = ((float)(rng.NextDouble() * 6 - 3), (float)(rng.NextDouble() * 6 - 3));
            special.AsSpan(0, Math.Min(n, special.Length)).CopyTo(even);
            special.AsSpan(0, Math.Min(n, special.Length)).CopyTo(odd.AsSpan(n - Math.Min(n, special.Length)));
            uint[] dst = new uint[n + 20];
            Array.Fill(dst, 0xDEADBEEFu);
            fixed (float* e = even) fixed (float* o = odd) fixed (uint* d = dst) PackedMatMul.PairRow(e, o, d, n);
            for (int j = 0; j < n; j++)
            {
                uint expected = HalfKernel.ToBFloat16Bits(even[j]) | (uint)HalfKernel.ToBFloat16Bits(odd[j]) << 16;
                Assert.True(expected == dst[j], $"n {n}, value {j}: {dst[j]:X8}, expected {expected:X8}");
            }
            Assert.All(dst[n..], v => Assert.Equal(0xDEADBEEFu, v));
        }
    }

    [Fact]
    public void PairImagesHoldEachChannelPairRoundedAtItsPaddedPixelAndZeroEverywhereElse()
    {
        // Stride 1 (narrow planes are paired in one run, rows of 8 and 16 stored as whole vectors), strides 2 and 3 (narrow
        // planes paired in one run too, their phase rows written by permutes where 512-bit vectors are in use, and row by
        // row through the phase grid): every value of the buffer, the slack after the last plane included.
        var rng = new Random(29);
        (int H, int W, int Pad, int Stride)[] shapes =
        [
            (1, 1, 1, 1), (4, 4, 0, 1), (3, 6, 1, 1), (2, 8, 0, 1), (5, 7, 1, 1), (7, 7, 1, 1), (7, 7, 0, 1), (6, 9, 2, 1),
            (9, 3, 1, 1), (14, 14, 1, 1), (3, 15, 0, 1), (4, 16, 1, 1), (5, 17, 1, 1), (80, 15, 1, 1), (9, 2, 2, 1),
            (7, 7, 1, 2), (14, 14, 1, 2), (5, 9, 0, 2), (15, 15, 1, 2), (6, 13, 2, 2), (40, 15, 1, 2), (2, 3, 1, 2), (80, 15, 1, 2),
            (20, 20, 1, 2), (9, 10, 1, 3), (4, 5, 2, 3),
        ];
        int checkedValues = 0;
        foreach (bool shuffles in new[] { true, false })
        foreach (var (h, w, pad, stride) in shapes)
            foreach (var (pairs, images) in new[] { (1, 1), (3, 2) })
            {
                int k = 2 * pad + 1;
                var u = new Im2Col(2 * pairs, h, w, k, k, stride, stride, pad, pad, 1, 1, images);
                var grid = new PhaseGrid(new Im2Col(pairs, h, w, k, k, stride, stride, pad, pad, 1, 1, images));
                nint planeStride = PackedMatMul.PairPlaneStride(grid, pairs);
                float[] x = new float[images * 2 * pairs * h * w];
                for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 8 - 4);
                x[x.Length / 2] = float.NaN;
                const int Step = 32;
                long total = (long)planeStride * pairs * images + Step + grid.PhaseWidth;
                var expected = new uint[total];
                int ph = grid.PhaseHeight, pw = grid.PhaseWidth;
                for (int im = 0; im < images; im++)
                    for (int p = 0; p < pairs; p++)
                        for (int r = 0; r < h; r++)
                            for (int c = 0; c < w; c++)
                            {
                                int py = r + pad, px = c + pad, phase = py % stride * stride + px % stride;
                                long at = (long)(im * pairs + p) * planeStride + (phase * ph + py / stride) * pw + px / stride;
                                int even = ((im * 2 * pairs + 2 * p) * h + r) * w + c, odd = even + h * w;
                                expected[at] = HalfKernel.ToBFloat16Bits(x[even]) | (uint)HalfKernel.ToBFloat16Bits(x[odd]) << 16;
                            }
                uint* buffer;
                PackedMatMul.ForcedPhaseShuffles = shuffles;
                try
                {
                    fixed (float* px = x) buffer = PackedMatMul.PairImages(u, grid, planeStride, px, Step);
                }
                finally
                {
                    PackedMatMul.ForcedPhaseShuffles = null;
                }
                try
                {
                    for (long i = 0; i < total; i++)
                        Assert.True(expected[i] == buffer[i], $"{h}x{w} pad {pad} stride {stride}, {pairs} pairs, {images} images{(shuffles ? "" : ", row by row")}: value {i} is {buffer[i]:X8}, expected {expected[i]:X8}");
                    checkedValues += (int)total;
                }
                finally
                {
                    System.Runtime.InteropServices.NativeMemory.AlignedFree(buffer);
                }
            }
        Assert.True(checkedValues > 90000, $"{checkedValues} values checked");
    }

    public static IEnumerable<object[]> Formats() => Enum.GetNames<WeightFormat>().Select(f => new object[] { f });

    [Theory]
    [MemberData(nameof(Formats))]
    public void ConvolutionsInBFloat16AreWithinItsRoundingOfTheSpecificationOnEveryPath(string formatName)
    {
        using var scope = NewDisposeScope();
        var format = Enum.Parse<WeightFormat>(formatName);
        int checkedRounded = 0, checkedInPlace = 0;
        foreach (var g in Shapes)
        {
            foreach (int images in new[] { 1, 2 })
            {
                var single = Unfolding(g);
                var u = single.ForImages(images);
                int k = u.Rows, p = u.Positions;
                if (WeightView.IsPacked(format) && k % 2 != 0) continue;
                foreach (int outputs in new[] { 13, 50 })
                {
                    int taps = g[3] * g[4];
                    int groupSize = WeightView.IsFloat(format) || (WeightView.IsPacked(format) && taps % 2 != 0) ? 0 : taps;
                    using var w = new PinnedWeight(format, rows: outputs, cols: k, groupSize, zeroPoints: true, seed: k + p + outputs);
                    var view = w.View;
                    torch.manual_seed(p + images);
                    var batch = torch.randn(images, g[0], g[1], g[2]);
                    float[] pixels = batch.data<float>().ToArray();
                    float[] bias = KernelTestData.Activations(outputs, k);
                    // The specification per image: QuantizedMatMul.Reference on libtorch's columns, channel-major.
                    var expected = new float[images * outputs * p];
                    var magnitude = new double[images * outputs * p];
                    for (int i = 0; i < images; i++)
                    {
                        float[] rows = LibtorchColumns(batch[i], g).t().contiguous().data<float>().ToArray(); // [P, K]
                        var spec = new float[p * outputs];
                        fixed (float* pr = rows) fixed (float* pb = bias) fixed (float* ps = spec)
                            QuantizedMatMul.Reference(view, pr, p, k, pb, ps, outputs);
                        for (int n = 0; n < outputs; n++)
                            for (int pos = 0; pos < p; pos++)
                            {
                                expected[(i * outputs + n) * p + pos] = spec[pos * outputs + n];
                                double m = Math.Abs(bias[n]);
                                for (int kk = 0; kk < k; kk++) m += Math.Abs((double)rows[pos * k + kk] * view.Dequantized(n, kk));
                                magnitude[(i * outputs + n) * p + pos] = m;
                            }
                    }
                    // Both implementations: strips read from pair images in place (an even channel count) and packed.
                    foreach (var (path, inPlace) in KernelTestData.FloatPaths().SelectMany(path => new[] { (path, true), (path, false) }))
                    {
                        float[] float32 = Run(view, pixels, bias, u, outputs, path, bfloat16: false, native: true, inPlace);
                        float[] twin = Run(view, pixels, bias, u, outputs, path, bfloat16: true, native: false, inPlace);
                        string what = $"{format} {path} {(inPlace ? "in place" : "packed")} geometry [{string.Join(",", g)}] x{images}, {outputs} outputs";
                        bool applies = (path == KernelPath.V512 || (path == KernelPath.Auto && Float512.IsSupported)) && k % 2 == 0;
                        if (!applies)
                        {
                            // Narrower paths and odd reductions: the float32 kernels, bit for bit.
                            Assert.True(float32.AsSpan().SequenceEqual(twin), $"{what}: the bfloat16 flag changed a call it does not apply to");
                            continue;
                        }
                        for (int i = 0; i < expected.Length; i++)
                        {
                            double err = Math.Abs(twin[i] - expected[i]);
                            Assert.True(err <= Bound * magnitude[i] + 1e-30, $"{what} output {i}: {twin[i]} vs {expected[i]} (|difference| {err:G3}, bound {Bound * magnitude[i]:G3})");
                        }
                        Assert.False(float32.AsSpan().SequenceEqual(twin), $"{what}: gave the float32 kernels' bits (did not round)");
                        checkedRounded++;
                        if (inPlace && g[0] % 2 == 0) checkedInPlace++;
                        if (Vnni512Kernel.BFloat16Supported)
                        {
                            float[] native = Run(view, pixels, bias, u, outputs, path, bfloat16: true, native: true, inPlace);
                            Assert.True(native.AsSpan().SequenceEqual(twin), $"{what}: the generated micro-kernel and its twin differ");
                        }
                    }
                }
            }
        }
        // Every even reduction ran in bfloat16 where 512-bit vectors run, those of an even channel count also from pair images.
        Assert.True(!Float512.IsSupported || checkedRounded >= 8, $"only {checkedRounded} calls ran in bfloat16");
        Assert.True(!Float512.IsSupported || checkedInPlace >= 4, $"only {checkedInPlace} calls read pair images");
    }

    /// <summary>
    /// A grouped convolution in bfloat16 from pair images (<see cref="PackedMatMul.GroupedBFloat16"/>, 512-bit vectors
    /// only: without them it refuses) is within bfloat16's rounding of the float32 specification of each group (its
    /// channels' columns times its weight rows) and rounded, and gives each group the bits of the ungrouped call on that
    /// group's channels and weight rows (checked against the specification above), through the generated micro-kernel
    /// and its twin; with the output channels in lanes (<see cref="PairLanesConvolution"/>) within the same bound, the
    /// generated dot products giving their twin's bits. Every weight format; group outputs that are no multiple of
    /// the six-row tile, groups that cross the work items' runs of rows (16-row parts, 48-row items), two blocks of
    /// channel pairs a group, stride phases, dilation, padding wider than the kernel, a Conv1d, one and two images.
    /// </summary>
    [Theory]
    [MemberData(nameof(Formats))]
    public void GroupedConvolutionsInBFloat16AreEachGroupsUngroupedCall(string formatName)
    {
        using var scope = NewDisposeScope();
        var format = Enum.Parse<WeightFormat>(formatName);
        // (C, H, W, KH, KW, SH, SW, PH, PW, DH, DW), groups, outputs.
        (int[] G, int Groups, int Outputs)[] cases =
        [
            ([12, 7, 9, 3, 3, 1, 1, 1, 1, 1, 1], 3, 15),      // 4 channels and 5 outputs a group
            ([8, 8, 5, 3, 2, 2, 1, 1, 0, 1, 2], 2, 26),       // stride phases and dilation, 13 outputs a group
            ([16, 11, 10, 5, 5, 3, 2, 2, 2, 1, 1], 4, 8),     // 5x5 taps at strides 3 and 2
            ([4, 3, 3, 3, 3, 1, 1, 3, 2, 1, 1], 2, 100),      // 2 channels and 50 outputs a group: groups across parts and items
            ([264, 5, 6, 3, 3, 1, 1, 1, 1, 1, 1], 2, 14),     // 66 channel pairs a group: two blocks of pairs
            ([12, 1, 40, 1, 3, 1, 1, 0, 1, 1, 1], 3, 9),      // a Conv1d
            ([128, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1], 2, 128),  // 64 channels and outputs a group (576 terms)
            ([16, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1], 1, 70),      // one group (an ungrouped layer) of three chunks
            ([12, 9, 8, 3, 3, 2, 2, 1, 1, 1, 1], 1, 40),      // one group at stride 2
        ];
        int checkedNative = 0, checkedBits = 0, checkedLanesNative = 0;
        if (!Float512.IsSupported)
        {
            using var weight = new PinnedWeight(format, rows: 8, cols: 18, 0, zeroPoints: false, seed: 2);
            var small = weight.View;
            float[] buffer = new float[2048];
            fixed (float* b = buffer)
            {
                float* at = b;
                Assert.Throws<PlatformNotSupportedException>(() => PackedMatMul.GroupedBFloat16(small, at, null, at + 1024, new Im2Col(4, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1), 2));
            }
            return;
        }
        foreach (var (g, groups, outputs) in cases)
        foreach (int images in new[] { 1, 2 })
        {
            var u = Unfolding(g).ForImages(images);
            int channels = g[0] / groups, taps = g[3] * g[4], k = channels * taps, p = u.Positions, groupRows = outputs / groups;
            int groupSize = WeightView.IsFloat(format) || (WeightView.IsPacked(format) && taps % 2 != 0) ? 0 : taps;
            using var w = new PinnedWeight(format, rows: outputs, cols: k, groupSize, zeroPoints: true, seed: k + p + outputs);
            var view = w.View;
            torch.manual_seed(p + images + groups);
            var batch = torch.randn(images, g[0], g[1], g[2]);
            float[] pixels = batch.data<float>().ToArray();
            float[] bias = KernelTestData.Activations(outputs, k);
            string what = $"{format} [{string.Join(",", g)}] x{images} in {groups} groups -> {outputs}";
            // Each group alone: the specification on its channels' columns, its weight rows and bias, with the magnitude
            // sum |w||x| + |b| per output, and the ungrouped call from pair images.
            int[] single = [channels, .. g[1..]];
            var magnitude = new double[images * outputs * p];
            var spec = PerGroup(batch, view, bias, groups, single, p, (rowsView, groupBias, rows, group, i) =>
            {
                var part = new float[p * groupRows];
                fixed (float* pr = rows) fixed (float* pb = groupBias) fixed (float* ps = part)
                    QuantizedMatMul.Reference(rowsView, pr, p, k, pb, ps, groupRows);
                for (int n = 0; n < groupRows; n++)
                    for (int pos = 0; pos < p; pos++)
                    {
                        double m = Math.Abs(groupBias[n]);
                        for (int kk = 0; kk < k; kk++) m += Math.Abs((double)rows[pos * k + kk] * rowsView.Dequantized(n, kk));
                        magnitude[(i * outputs + group * groupRows + n) * p + pos] = m;
                    }
                return part;
            });
            var expected = new float[images * outputs * p];
            int plane = g[1] * g[2];
            for (int group = 0; group < groups; group++)
            {
                var rowsView = view.RowRange(group * groupRows, groupRows);
                float[] groupBias = bias[(group * groupRows)..((group + 1) * groupRows)];
                var own = new float[images * channels * plane];
                for (int i = 0; i < images; i++)
                    Array.Copy(pixels, (i * g[0] + group * channels) * plane, own, i * channels * plane, channels * plane);
                float[] alone = Run(rowsView, own, groupBias, Unfolding(single).ForImages(images), groupRows, KernelPath.V512, bfloat16: true, native: false);
                for (int i = 0; i < images; i++)
                    Array.Copy(alone, i * groupRows * p, expected, (i * outputs + group * groupRows) * p, groupRows * p);
            }
            float[]? lanesTwin = null;
            foreach (bool lanes in new[] { false, true })
            foreach (bool native in Vnni512Kernel.BFloat16Supported ? new[] { false, true } : [false])
            {
                var y = OnMicroKernel(native, images * outputs * p, py =>
                {
                    try
                    {
                        PackedMatMul.ForcedLanes = lanes;
                        fixed (float* px = pixels) fixed (float* pb = bias) PackedMatMul.GroupedBFloat16(view, px, pb, py, u, groups);
                    }
                    finally
                    {
                        PackedMatMul.ForcedLanes = null;
                    }
                });
                string how = (native ? "" : ", twin") + (lanes ? ", output channels in lanes" : "");
                for (int i = 0; i < y.Length; i++)
                {
                    double err = Math.Abs(y[i] - spec[i]);
                    Assert.True(err <= Bound * magnitude[i] + 1e-30, $"{what}{how} output {i}: {y[i]} vs {spec[i]} (|difference| {err:G3}, bound {Bound * magnitude[i]:G3})");
                }
                Assert.False(spec.AsSpan().SequenceEqual(y), $"{what}{how}: gave the float32 specification's bits (did not round)");
                if (lanes)
                {
                    // The same products in another order: within the bound above; the generated dot products give their twin's bits.
                    if (!native) lanesTwin = y;
                    else for (int i = 0; i < y.Length; i++)
                        Assert.True(BitConverter.SingleToUInt32Bits(lanesTwin![i]) == BitConverter.SingleToUInt32Bits(y[i]), $"{what}{how}: output {i} {y[i]}, the twin's {lanesTwin[i]}");
                    // A group's chunks split into parts (work items of a part of a group of one image): the same bits.
                    foreach (int parts in new[] { 2, 3 })
                    {
                        var split = OnMicroKernel(native, images * outputs * p, py =>
                        {
                            try
                            {
                                PackedMatMul.ForcedLanes = true;
                                PairLanesConvolution.ForcedParts = parts;
                                fixed (float* px = pixels) fixed (float* pb = bias) PackedMatMul.GroupedBFloat16(view, px, pb, py, u, groups);
                            }
                            finally
                            {
                                PackedMatMul.ForcedLanes = null;
                                PairLanesConvolution.ForcedParts = null;
                            }
                        });
                        for (int i = 0; i < y.Length; i++)
                            Assert.True(BitConverter.SingleToUInt32Bits(split[i]) == BitConverter.SingleToUInt32Bits(y[i]), $"{what}{how}, {parts} parts: output {i} {split[i]}, in one part {y[i]}");
                    }
                    if (native) checkedLanesNative++;
                    continue;
                }
                for (int i = 0; i < y.Length; i++)
                    Assert.True(BitConverter.SingleToUInt32Bits(expected[i]) == BitConverter.SingleToUInt32Bits(y[i]),
                        $"{what}{how}: output {i} (image {i / (outputs * p)}, channel {i / p % outputs}) {y[i]}, the ungrouped call's {expected[i]}");
                checkedBits++;
                if (native) checkedNative++;
            }
        }
        Assert.True(!Vnni512Kernel.BFloat16Supported || checkedNative == 2 * cases.Length, $"{checkedNative} calls through the generated micro-kernel");
        Assert.True(!Vnni512Kernel.BFloat16Supported || checkedLanesNative == 2 * cases.Length, $"{checkedLanesNative} calls through the generated dot products with the output channels in lanes");
        Assert.True(checkedBits >= 2 * cases.Length, $"{checkedBits} calls checked against the ungrouped call's bits");
    }

    [Fact]
    public unsafe void GroupedConvolutionsInBFloat16NeedAnEvenNumberOfChannelsAGroupThatDivideTheLayer()
    {
        Assert.True(PackedMatMul.GroupedBFloat16Fits(new Im2Col(8, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1), 6, 2));
        Assert.True(PackedMatMul.GroupedBFloat16Fits(new Im2Col(8, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1), 6, 1));
        Assert.False(PackedMatMul.GroupedBFloat16Fits(new Im2Col(12, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1), 12, 4)); // 3 channels a group
        Assert.False(PackedMatMul.GroupedBFloat16Fits(new Im2Col(8, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1), 9, 2));   // 9 outputs in 2 groups
        Assert.False(PackedMatMul.GroupedBFloat16Fits(new Im2Col(10, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1), 8, 4));  // 10 channels in 4 groups
        using var w = new PinnedWeight(WeightFormat.Int8, rows: 6, cols: 27, 27, zeroPoints: false, seed: 1);
        var view = w.View;
        float[] buffer = new float[1024];
        fixed (float* pointer = buffer)
        {
            float* b = pointer;
            var odd = Assert.Throws<ArgumentException>(() => PackedMatMul.GroupedBFloat16(view, b, null, b + 512, new Im2Col(6, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1), 2));
            Assert.Contains("an even number of channels a group", odd.Message);
            var terms = Assert.Throws<ArgumentException>(() => PackedMatMul.GroupedBFloat16(view, b, null, b + 512, new Im2Col(12, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1), 2));
            Assert.Contains("54 terms a row; got 12 channels, 6 outputs and 27 terms in 2 groups", terms.Message);
        }
    }

    /// <summary>
    /// A grouped static W8A8 convolution from pair images of codes (<see cref="PackedMatMul.GroupedCodes"/>) gives, bit
    /// for bit, each group's integer specification: libtorch's columns of the group's channels quantized row by row
    /// (<see cref="IntegerMatMul.QuantizeStatic"/>) times the group's int8 weight rows in integers with the integer
    /// kernels' epilogue (<see cref="IntegerMatMul.Reference"/>), through the generated micro-kernel and its twin: uint8
    /// affine and int8 symmetric inputs, a zero point at the top of the range (most inputs clamp, padding codes 255),
    /// per-channel weights with and without zero points and a per-tensor one, group outputs that are no multiple of the
    /// six-row tile, stride phases, dilation, two blocks of channel pairs a group, a Conv1d, one and three images; and
    /// it refuses what it cannot make exact.
    /// </summary>
    [Theory]
    [InlineData(0.021f, 131, 0, 255, true, false)]   // uint8 affine, weight zero points
    [InlineData(0.013f, 0, -128, 127, false, false)] // int8 symmetric, symmetric weight
    [InlineData(0.5f, 255, 0, 255, true, true)]      // zero point at the top; per-tensor weight with a zero point
    public void GroupedW8A8FromPairImagesOfCodesGivesEachGroupsIntegerSpecification(float scale, int zeroPoint, int qmin, int qmax, bool weightZeroPoints, bool perTensor)
    {
        using var scope = NewDisposeScope();
        // (C, H, W, KH, KW, SH, SW, PH, PW, DH, DW), groups, outputs.
        (int[] G, int Groups, int Outputs)[] cases =
        [
            ([32, 9, 11, 3, 3, 1, 1, 1, 1, 1, 1], 2, 14),     // 16 channels (144 terms) and 7 outputs a group
            ([12, 8, 7, 3, 2, 2, 1, 1, 0, 1, 2], 3, 9),       // stride phases and dilation
            ([264, 5, 6, 1, 1, 1, 1, 0, 0, 1, 1], 2, 10),     // 66 channel pairs a group: two blocks of pairs
            ([8, 1, 40, 1, 3, 1, 1, 0, 1, 1, 1], 2, 6),       // a Conv1d
        ];
        var input = new InputFakeQuantization(scale, 1f / scale, zeroPoint, qmin, qmax);
        if (!Float512.IsSupported)
        {
            using var small = new PinnedWeight(WeightFormat.Int8, rows: 8, cols: 18, 0, zeroPoints: false, seed: 2);
            var view = small.View;
            float[] buffer = new float[2048];
            fixed (float* b = buffer)
            {
                float* at = b;
                Assert.Throws<PlatformNotSupportedException>(() => PackedMatMul.GroupedCodes(view, at, null, at + 1024, new Im2Col(4, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1), 2, input));
            }
            return;
        }
        int checkedNative = 0, checkedTwin = 0;
        foreach (var (g, groups, outputs) in cases)
        foreach (int images in new[] { 1, 3 })
        {
            var u = Unfolding(g).ForImages(images);
            int channels = g[0] / groups, k = channels * g[3] * g[4], p = u.Positions;
            using var w = new PinnedWeight(WeightFormat.Int8, rows: outputs, cols: k, 0, zeroPoints: weightZeroPoints, seed: k + p + outputs, perTensor: perTensor);
            var view = w.View;
            torch.manual_seed(p + images + groups);
            var batch = torch.randn(images, g[0], g[1], g[2]) * 2;
            float[] pixels = batch.data<float>().ToArray();
            float[] bias = KernelTestData.Activations(outputs, k);
            int[] single = [channels, .. g[1..]];
            var expected = IntegerSpecification(batch, view, bias, groups, single, p, scale, zeroPoint, qmin, qmax);
            string what = $"[{string.Join(",", g)}] x{images} in {groups} groups -> {outputs}, input {scale}/{zeroPoint}, weight zero points {weightZeroPoints}, per tensor {perTensor}";
            foreach (bool native in Vnni512Kernel.BFloat16Supported ? new[] { false, true } : [false])
            {
                var y = OnMicroKernel(native, images * outputs * p, py =>
                {
                    fixed (float* px = pixels) fixed (float* pb = bias) PackedMatMul.GroupedCodes(view, px, pb, py, u, groups, input);
                });
                for (int i = 0; i < y.Length; i++)
                    Assert.True(BitConverter.SingleToUInt32Bits(expected[i]) == BitConverter.SingleToUInt32Bits(y[i]),
                        $"{what}{(native ? "" : ", twin")}: output {i} (image {i / (outputs * p)}, channel {i / p % outputs}) {y[i]:R}, the specification's {expected[i]:R}");
                if (native) checkedNative++;
                else checkedTwin++;
            }
        }
        Assert.Equal(2 * cases.Length, checkedTwin);
        Assert.True(!Vnni512Kernel.BFloat16Supported || checkedNative == 2 * cases.Length, $"{checkedNative} calls through the generated micro-kernel");
    }

    [Fact]
    public unsafe void GroupedW8A8FromPairImagesOfCodesRefusesSumsThatFloat32CannotHoldExactly()
    {
        // 2^24 / (255 * 255) = 258.0: 258 terms of uint8 codes and weights with zero points are exact, 259 not; symmetric
        // int8 codes (at most 128) allow 1,024; a zero point outside the range (300) makes codes bfloat16 cannot hold.
        Assert.True(PackedMatMul.CodesExact(258, 255, 255));
        Assert.False(PackedMatMul.CodesExact(259, 255, 255));
        Assert.True(PackedMatMul.CodesExact(1024, 128, 128));
        Assert.False(PackedMatMul.CodesExact(1025, 128, 128));
        Assert.False(PackedMatMul.CodesExact(1, 300, 1));
        Assert.Equal(300, PackedMatMul.InputCodeMax(new InputFakeQuantization(0.1f, 10f, 300, 0, 255)));
        Assert.Equal(128, PackedMatMul.InputCodeMax(new InputFakeQuantization(0.1f, 10f, 0, -128, 127)));
        using var symmetric = new PinnedWeight(WeightFormat.Int8, rows: 4, cols: 288, 0, zeroPoints: false, seed: 3);
        using var affine = new PinnedWeight(WeightFormat.Int8, rows: 4, cols: 288, 0, zeroPoints: true, seed: 3);
        affine.ZeroPoints![2] = -128; // codes less it up to 255
        Assert.Equal(128, PackedMatMul.WeightCodeMax(symmetric.View));
        Assert.Equal(255, PackedMatMul.WeightCodeMax(affine.View));
        affine.ZeroPoints[2] = 5;
        Assert.Equal(affine.ZeroPoints.Max(z => Math.Max(127 - z, z + 128)), PackedMatMul.WeightCodeMax(affine.View));
        affine.ZeroPoints[2] = -128;
        if (!Float512.IsSupported) return;
        using var grouped = new PinnedWeight(WeightFormat.Int8, rows: 4, cols: 288, 32, zeroPoints: false, seed: 3);
        var view = affine.View;
        var groupedView = grouped.View;
        float[] buffer = new float[1 << 16];
        fixed (float* pointer = buffer)
        {
            float* b = pointer;
            // 32 channels x 9 taps = 288 terms a group: up to 288 x 255 x 255 > 2^24 here, exact for symmetric codes.
            var u = new Im2Col(64, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1);
            var error = Assert.Throws<ArgumentException>(() => PackedMatMul.GroupedCodes(view, b, null, b + 4096, u, 2, new InputFakeQuantization(0.1f, 10f, 0, 0, 255)));
            Assert.Contains("288 terms a group", error.Message);
            var symmetricView = symmetric.View;
            Array.Fill(buffer, float.NaN, 4096, 64);
            PackedMatMul.GroupedCodes(symmetricView, b, null, b + 4096, u, 2, new InputFakeQuantization(0.1f, 10f, 0, -128, 127));
            Assert.All(buffer[4096..(4096 + 64)], v => Assert.Equal(0f, v)); // zero images, no bias: every output written, zero
            var groupSize = Assert.Throws<ArgumentException>(() => PackedMatMul.GroupedCodes(groupedView, b, null, b + 4096, u, 2, new InputFakeQuantization(0.1f, 10f, 0, -128, 127)));
            Assert.Contains("one scale a row or tensor", groupSize.Message);
        }
    }

    [Fact]
    public void RuleTakesThePackedBFloat16RouteForWeightOnlyCallsFrom128TermsInto256ChannelsOr256Into128OnMoreThanFewPositionsOr64ChannelsOnPairImagesOrPointwiseFrom16Terms()
    {
        var r = ConvolutionRoute.BFloat16;
        // (C, H, W, KH, KW, SH, SW, PH, PW, DH, DW), images, outputs, W8A8, the route with packedBFloat16, without it (libtorch's bfloat16).
        (int[] G, int Images, int Outputs, bool W8A8, ConvolutionRoute Packed, ConvolutionRoute Libtorch)[] cases =
        [
            ([256, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1], 1, 256, false, r, r),                                     // 2,304 terms into 256 channels
            ([256, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1], 1, 256, false, r, r),                                       // 256 channels on 49 positions
            ([256, 12, 12, 3, 3, 1, 1, 1, 1, 1, 1], 1, 128, false, r, r),                                     // 128 channels on 144 positions: in
            ([256, 12, 12, 3, 3, 1, 1, 1, 1, 1, 1], 1, 127, false, ConvolutionRoute.Reference, r),            // 127: the float32 rule
            ([256, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1], 1, 127, false, r, r),                                     // onto 14x14: pair images
            ([256, 16, 8, 3, 3, 1, 1, 1, 1, 1, 1], 1, 128, false, ConvolutionRoute.Kernel, r),                // 128 channels on 128 positions: out
            ([256, 15, 9, 3, 3, 1, 1, 1, 1, 1, 1], 1, 128, false, r, r),                                      // on 135: in
            ([256, 7, 28, 3, 3, 1, 1, 1, 1, 1, 1], 1, 64, false, r, r),                                       // 64 channels on 196 positions in rows of 28: pair images
            ([64, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1], 1, 64, false, r, r),                                       // ResNet 64->64: pair images in place
            ([64, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1], 8, 64, false, r, r),                                       // at batch 8
            ([62, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1], 1, 64, false, ConvolutionRoute.Reference, r),              // 62 channels in: the float32 rule (libtorch)
            ([64, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1], 1, 63, false, ConvolutionRoute.Reference, r),              // 63 out
            ([64, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1], 2, 64, false, r, r),                                       // 196 positions: in
            ([64, 13, 15, 3, 3, 1, 1, 1, 1, 1, 1], 2, 64, false, ConvolutionRoute.Reference, r),              // 195: out
            ([64, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1], 1, 64, false, r, r),                                       // pointwise, one image: in (stop 52)
            ([64, 56, 56, 1, 1, 2, 2, 0, 0, 1, 1], 2, 64, false, ConvolutionRoute.Reference, r),              // one tap at stride 2: out
            ([16, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1], 8, 64, false, ConvolutionRoute.Reference, r),              // 16 channels in: out
            ([128, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1], 1, 256, false, r, r),                                     // 128 terms into 256 channels: in
            ([126, 28, 28, 1, 1, 2, 2, 0, 0, 1, 1], 1, 256, false, ConvolutionRoute.Reference, r),            // 126 at stride 2: out
            ([126, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1], 1, 256, false, r, r),                                     // at stride 1: a pointwise call
            ([254, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1], 1, 255, false, r, r),                                     // 254 terms into 255 channels: a pointwise call
            ([16, 112, 112, 1, 1, 1, 1, 0, 0, 1, 1], 1, 96, false, r, ConvolutionRoute.Reference),            // 16 terms (MobileNet's 16->96): a pointwise call
            ([14, 112, 112, 1, 1, 1, 1, 0, 0, 1, 1], 8, 96, false, ConvolutionRoute.Reference, ConvolutionRoute.Reference), // 14: out
            ([23, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1], 2, 144, false, ConvolutionRoute.Reference, ConvolutionRoute.Reference), // an odd 23: out
            ([192, 9, 15, 1, 1, 1, 1, 0, 0, 1, 1], 1, 192, false, r, r),                                      // 192 into 192 on 135 positions: a pointwise call
            ([192, 8, 16, 1, 1, 1, 1, 0, 0, 1, 1], 1, 192, false, ConvolutionRoute.Kernel, r),                // on 128: the float32 packed kernels
            ([256, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1], 1, 255, false, r, r),                                     // 256 into 255 on 784 positions: in
            ([16, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1], 1, 256, true, ConvolutionRoute.Kernel, r),                 // static W8A8 of 144 terms: the float32 rule (integer GEMM)
            ([64, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1], 8, 256, false, r, r),                                      // 64 terms, pointwise on pair images
            ([64, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1], 2, 256, false, r, r),                                      // two images onto 56x56: in
            ([64, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1], 8, 256, false, r, r),                                      // onto 28x28 from 64 channels: a pointwise call
            ([64, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1], 4, 63, false, r, r),                                       // 63 channels: a pointwise call
            ([32, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1], 2, 16, false, ConvolutionRoute.Kernel, r),                   // 16 channels: the float32 rule's packed kernels
            ([256, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1], 1, 256, true, ConvolutionRoute.Kernel, ConvolutionRoute.Kernel), // static W8A8: the integer GEMM
            ([255, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1], 1, 256, false, ConvolutionRoute.Reference, r),            // an odd reduction (2,295 terms)
        ];
        foreach (var (g, images, outputs, w8a8, packed, libtorch) in cases)
        {
            var u = Unfolding(g).ForImages(images);
            string what = $"[{string.Join(",", g)}] x{images} -> {outputs}{(w8a8 ? " W8A8" : "")}";
            Assert.Equal(libtorch, ConvolutionCost.Choose(u, outputs, w8a8, bfloat16: true));
            var withPacked = ConvolutionCost.Choose(u, outputs, w8a8, bfloat16: true, packedBFloat16: true);
            Assert.True(packed == withPacked, $"{what}: {withPacked}, expected {packed}");
            // Where the packed route does not pay, the float32 rule's route.
            if (packed != r) Assert.Equal(ConvolutionCost.Choose(u, outputs, w8a8, bfloat16: false), withPacked);
        }
    }

    /// <summary>
    /// Where both bfloat16 convolutions run (libtorch's passed its check, the CPU has AVX512-BF16): the small kernel and
    /// the packed kernels in float32 or integers where the rule without libtorch's takes them, the packed kernels'
    /// bfloat16 route (weight-only, an even reduction of 64 or more terms) onto up to 64 positions in all, for 1x1 calls of
    /// one image or, with 64-95 terms, of any count, and for pointwise calls of up to three images or of 16-63 terms;
    /// with 64-95 terms the packed kernels from pair images, else the float32 rule's route; libtorch's bfloat16 route
    /// elsewhere.
    /// </summary>
    [Fact]
    public void WhereBothBFloat16ConvolutionsRunTheManagedRoutesAndThePackedOneOnFewPositionsOrFewPointwiseImagesComeFirst()
    {
        const ConvolutionRoute r = ConvolutionRoute.BFloat16;
        // (C, H, W, KH, KW, SH, SW, PH, PW, DH, DW), images, outputs, W8A8, expected route, on the packed kernels.
        (int[] G, int Images, int Outputs, bool W8A8, ConvolutionRoute Expected, bool Packed)[] cases =
        [
            ([256, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1], 1, 512, false, r, true),                        // 49 positions
            ([256, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1], 1, 256, false, r, true),                        // 64: in
            ([256, 13, 5, 3, 3, 1, 1, 1, 1, 1, 1], 1, 256, false, r, false),                      // 65: libtorch's
            ([256, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1], 2, 512, false, r, false),                       // two images: 98
            ([256, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1], 8, 256, false, r, false),                     // ResNet at batch 8
            ([255, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1], 1, 256, false, ConvolutionRoute.Kernel, false), // an odd reduction on 49 positions: the float32 rule's packed kernels
            ([255, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1], 1, 256, false, r, false),                     // on 196: libtorch's
            ([256, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1], 8, 64, false, r, false),                      // long pointwise calls of 8 images: libtorch's here
            ([256, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1], 4, 64, false, r, false),                      // and of 4
            ([256, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1], 3, 64, false, r, true),                       // of 3: the packed kernels
            ([256, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1], 2, 64, false, r, true),                       // and of 2
            ([256, 56, 56, 1, 1, 2, 2, 0, 0, 1, 1], 2, 512, false, r, false),                     // strided pointwise, two images: libtorch's
            ([256, 28, 28, 1, 1, 1, 1, 1, 1, 1, 1], 2, 64, false, r, false),                      // 1x1 padded, two images: libtorch's
            ([64, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1], 1, 64, false, r, true),                        // pointwise, one image
            ([256, 56, 56, 1, 1, 2, 2, 0, 0, 1, 1], 1, 512, false, r, true),                      // strided pointwise, one image
            ([128, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1], 2, 64, false, r, true),                       // two images: the packed kernels
            ([96, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1], 4, 64, false, r, false),                       // 96 terms, four images: libtorch's
            ([94, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1], 4, 64, false, r, true),                        // 94: the packed kernels
            ([64, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1], 8, 64, false, r, true),                        // 64, eight images: the packed kernels
            ([94, 56, 56, 1, 1, 2, 2, 0, 0, 1, 1], 4, 128, false, r, true),                       // 94 at stride 2: the packed kernels too
            ([96, 56, 56, 1, 1, 2, 2, 0, 0, 1, 1], 2, 128, false, r, false),                      // 96 at stride 2, two images: libtorch's
            ([64, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1], 4, 256, false, r, true),                       // from four pair images: the packed kernels
            ([24, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1], 2, 144, false, r, true),                       // 24 terms pointwise (MobileNet's 24->144): the packed kernels
            ([16, 112, 112, 1, 1, 1, 1, 0, 0, 1, 1], 8, 96, false, r, true),                      // 16 terms, eight images
            ([14, 112, 112, 1, 1, 1, 1, 0, 0, 1, 1], 8, 96, false, ConvolutionRoute.Reference, false), // 14: the float32 rule's
            ([23, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1], 2, 144, false, ConvolutionRoute.Reference, false), // an odd 23: the float32 rule's
            ([24, 56, 56, 1, 1, 2, 2, 0, 0, 1, 1], 8, 144, false, ConvolutionRoute.Direct, false),  // 24 at stride 2: the float32 rule's small kernel
            ([8, 112, 112, 3, 3, 1, 1, 1, 1, 1, 1], 1, 32, false, r, true),                       // 72 terms from pair images (3x3 8->32)
            ([8, 112, 112, 3, 3, 1, 1, 1, 1, 1, 1], 8, 32, false, r, true),                       // in eight images too
            ([10, 13, 13, 3, 3, 1, 1, 1, 1, 1, 1], 16, 32, false, ConvolutionRoute.Reference, false), // 90 onto 13x13 (no pair images): the float32 rule's
            ([12, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1], 2, 48, false, r, false),                       // 108 (3x3 12->48): libtorch's
            ([62, 8, 8, 1, 1, 1, 1, 0, 0, 1, 1], 1, 256, false, ConvolutionRoute.Kernel, false),  // a small pointwise call: the packed kernels
            ([6, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1], 8, 64, false, ConvolutionRoute.Reference, false), // 54 terms: below the bfloat16 route
            ([3, 224, 224, 3, 3, 2, 2, 1, 1, 1, 1], 2, 32, false, ConvolutionRoute.Direct, false), // the stem at batch 2 (27 terms, 21.7M): the small kernel
            ([3, 224, 224, 3, 3, 2, 2, 1, 1, 1, 1], 4, 32, false, ConvolutionRoute.Reference, false), // at batch 4 (43.4M): libtorch's float32
            ([64, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1], 2, 256, false, r, true),                       // 64 into 256 at two images: the packed kernels
            ([32, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1], 1, 16, false, ConvolutionRoute.Kernel, false),   // the float32 rule's packed kernels
            ([1, 28, 28, 3, 3, 1, 1, 0, 0, 1, 1], 64, 16, false, ConvolutionRoute.Direct, false), // MNIST conv1: the small kernel
            ([64, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1], 1, 256, true, ConvolutionRoute.Kernel, false), // static W8A8: the integer GEMM
            ([16, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1], 8, 64, true, ConvolutionRoute.Kernel, false),  // static W8A8 of 144 terms
            ([256, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1], 1, 512, true, ConvolutionRoute.Kernel, false),  // static W8A8: never the packed bfloat16 route
        ];
        foreach (var (g, images, outputs, w8a8, expected, packed) in cases)
        {
            var u = Unfolding(g).ForImages(images);
            string what = $"[{string.Join(",", g)}] x{images} -> {outputs}{(w8a8 ? " W8A8" : "")}";
            var route = ConvolutionCost.Choose(u, outputs, w8a8, bfloat16: true, packedBFloat16: false, bothBFloat16: true);
            Assert.True(expected == route, $"{what}: {route}, expected {expected}");
            Assert.True(packed == (!w8a8 && route == r && ConvolutionCost.PackedBFloat16BeatsLibTorch(u, outputs)), $"{what}: on the packed kernels, expected {packed}");
            // The managed routes are those of the rule without libtorch's bfloat16 convolution.
            if (route != r) Assert.Equal(ConvolutionCost.Choose(u, outputs, w8a8, bfloat16: true, packedBFloat16: true), route);
        }
    }

    [Fact]
    public void PairImagesAreReadForTapsOntoRowsOf14And196PositionsOrMoreAndForPointwiseCallsOntoLargePlanes()
    {
        // (C, H, W, KH, KW, SH, SW, PH, PW, DH, DW), images, outputs, expected.
        (int[] G, int Images, int Outputs, bool Expected)[] cases =
        [
            ([64, 14, 19, 3, 3, 1, 1, 1, 1, 1, 1], 1, 16, true),   // rows of 19 outputs, 266 positions
            ([64, 19, 13, 3, 3, 1, 1, 1, 1, 1, 1], 8, 512, false), // rows of 13
            ([64, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1], 1, 64, true),   // 196 positions
            ([64, 13, 15, 3, 3, 1, 1, 1, 1, 1, 1], 8, 64, false),  // 195
            ([64, 28, 28, 3, 3, 2, 2, 1, 1, 1, 1], 1, 64, true),   // stride 2 onto 14x14
            ([8, 1, 196, 1, 3, 1, 1, 0, 1, 1, 1], 1, 8, true),     // a Conv1d of three taps over 196 steps
            ([8, 1, 195, 1, 3, 1, 1, 0, 1, 1, 1], 8, 8, false),    // over 195
            ([64, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1], 2, 64, true),   // pointwise onto 56x56: two images into 64 channels
            ([64, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1], 1, 64, false),  // one image
            ([64, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1], 8, 63, false),  // into 63 channels
            ([64, 55, 57, 1, 1, 1, 1, 0, 0, 1, 1], 3, 256, false), // onto 3,135 positions, three images
            ([128, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1], 4, 64, true),  // onto 28x28: four images from 128 channels
            ([128, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1], 3, 64, false), // three images
            ([126, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1], 8, 512, false), // from 126 channels
            ([2048, 27, 29, 1, 1, 1, 1, 0, 0, 1, 1], 8, 512, false), // onto 783 positions
            ([64, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1], 8, 256, false), // from 64 channels (packed strips)
            ([1024, 14, 14, 1, 1, 1, 1, 0, 0, 1, 1], 8, 256, false), // onto 14x14
            ([2048, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1], 8, 512, true), // from 2048 channels
            ([64, 28, 28, 1, 1, 2, 2, 0, 0, 1, 1], 8, 512, false), // 1x1 at stride 2
            ([64, 28, 28, 1, 1, 1, 1, 1, 1, 1, 1], 8, 512, false), // 1x1 padded: one tap, not pointwise
            ([63, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1], 1, 64, false),  // an odd channel count: no pairs
        ];
        foreach (var (g, images, outputs, expected) in cases)
        {
            var u = Unfolding(g).ForImages(images);
            Assert.True(expected == PackedMatMul.ReadsPairsInPlace(u, outputs), $"[{string.Join(",", g)}] x{images} -> {outputs}: expected {expected}");
        }
    }

    /// <summary>
    /// The integer specification of a static W8A8 convolution group by group (<see cref="PerGroup"/>): libtorch's columns
    /// of the group's channels quantized row by row (<see cref="IntegerMatMul.QuantizeStatic"/>) times the group's int8
    /// rows with the integer kernels' epilogue (<see cref="IntegerMatMul.Reference"/>).
    /// </summary>
    internal static float[] IntegerSpecification(Tensor batch, WeightView view, float[] bias, int groups, int[] single, int p, float scale, int zeroPoint, int qmin, int qmax)
    {
        int groupRows = view.Rows / groups, k = view.Cols;
        return PerGroup(batch, view, bias, groups, single, p, (rowsView, groupBias, rows, group, i) =>
        {
            var part = new float[p * groupRows];
            using var quantized = new QuantizedActivations(p, k);
            fixed (float* pr = rows) fixed (float* pb = groupBias) fixed (float* ps = part)
            {
                IntegerMatMul.QuantizeStatic(pr, k, scale, zeroPoint, qmin, qmax, quantized);
                IntegerMatMul.Reference(rowsView, quantized, pb, ps, groupRows);
            }
            return part;
        });
    }

    /// <summary>A group's outputs <c>[P, group rows]</c> (position-major) on one image, from its weight rows, bias and libtorch columns <c>[P, K]</c>.</summary>
    internal delegate float[] GroupSpecification(WeightView rows, float[] bias, float[] columns, int group, int image);

    /// <summary>
    /// <paramref name="specification"/> of every group of <paramref name="view"/> on every image of
    /// <paramref name="batch"/> (libtorch's columns of the group's channels, geometry <paramref name="single"/>, whose
    /// first entry is a group's channel count; <paramref name="p"/> positions), laid out as the convolution's output
    /// <c>[images, outputs, P]</c>.
    /// </summary>
    internal static float[] PerGroup(Tensor batch, WeightView view, float[] bias, int groups, int[] single, int p, GroupSpecification specification)
    {
        int images = (int)batch.shape[0], outputs = view.Rows, groupRows = outputs / groups;
        var y = new float[images * outputs * p];
        for (int group = 0; group < groups; group++)
        {
            var rows = view.RowRange(group * groupRows, groupRows);
            float[] groupBias = bias[(group * groupRows)..((group + 1) * groupRows)];
            for (int i = 0; i < images; i++)
            {
                var columns = LibtorchColumns(batch[i].narrow(0, group * single[0], single[0]), single).t().contiguous().data<float>().ToArray();
                float[] part = specification(rows, groupBias, columns, group, i);
                for (int n = 0; n < groupRows; n++)
                    for (int pos = 0; pos < p; pos++)
                        y[(i * outputs + group * groupRows + n) * p + pos] = part[pos * groupRows + n];
            }
        }
        return y;
    }

    private delegate void OutputCall(float* y);

    /// <summary>
    /// <paramref name="call"/> on a new output of <paramref name="length"/> NaN values, through the generated bfloat16
    /// micro-kernel where <paramref name="native"/>, else its twin; the output.
    /// </summary>
    private static float[] OnMicroKernel(bool native, int length, OutputCall call)
    {
        var y = new float[length];
        Array.Fill(y, float.NaN);
        bool saved = PackedMatMul.UseNativeBFloat16;
        try
        {
            PackedMatMul.UseNativeBFloat16 = native;
            fixed (float* py = y) call(py);
        }
        finally
        {
            PackedMatMul.UseNativeBFloat16 = saved;
        }
        return y;
    }

    private static float[] Run(in WeightView view, float[] pixels, float[] bias, Im2Col u, int outputs, KernelPath path, bool bfloat16, bool native, bool inPlace = true)
    {
        int p = u.Positions;
        var y = new float[u.Images * outputs * p];
        Array.Fill(y, float.NaN);
        bool saved = PackedMatMul.UseNativeBFloat16;
        try
        {
            PackedMatMul.UseNativeBFloat16 = native;
            PackedMatMul.ForcedPairsInPlace = inPlace;
            fixed (float* px = pixels) fixed (float* pb = bias) fixed (float* py = y)
                QuantizedMatMul.Run(view, px, p, p, pb, py, p, path, MatMulMethod.Transposed, u, bfloat16);
        }
        finally
        {
            PackedMatMul.UseNativeBFloat16 = saved;
            PackedMatMul.ForcedPairsInPlace = null;
        }
        return y;
    }
}
