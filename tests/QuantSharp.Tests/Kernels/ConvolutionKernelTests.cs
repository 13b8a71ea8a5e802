using QuantSharp.Kernels;
using QuantSharp.Modules;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// Convolutions through the packed kernels (<see cref="Im2Col"/> unfolded while packing): the unfolded rows equal
/// libtorch's <c>unfold</c> exactly; the float GEMM on every instruction-set path and weight format equals the float64
/// specification on libtorch's columns; W8A8 gives exactly the integers and outputs of quantizing libtorch's columns and
/// multiplying them by the specification; the module's kernel route equals its dequantize + libtorch route. Geometries
/// cover kernel sizes 1 to 5, strides 1 to 3, padding 0 to 3 (rows and columns entirely in the padding), dilation 1 and
/// 2, Conv1d as height 1, and position counts that leave partial strips. The measured rule takes the packed kernels for
/// pointwise and long W8A8 calls, and for weight-only calls of few positions or strided ones, under the float32 rule,
/// and small-kernel (small calls), the integer GEMM (W8A8 with a long reduction), float32 libtorch or bfloat16 under
/// the bfloat16 rule; few-term W8A8 calls up to a few images take the
/// integer GEMM or the small kernel under both (<see cref="ConvolutionCost.Choose"/> both ways on any machine; real layers by
/// <see cref="QuantizedModule.NativeBFloat16"/> and <see cref="QuantizedConv.UseBFloat16Compute"/>). CI re-runs this class with AVX-512, AVX-VNNI,
/// AVX2 and all intrinsics turned off (.ci/run selects the Kernels namespace).
/// </summary>
public unsafe class ConvolutionKernelTests
{
    /// <summary>The float tolerance of <see cref="QuantizedMatMulTests"/>: a fraction of the sum of absolute products.</summary>
    private const double RelativeTolerance = 2e-5;

    // (C, H, W, KH, KW, SH, SW, PH, PW, DH, DW)
    internal static readonly int[][] Geometries =
    [
        [3, 7, 9, 3, 3, 1, 1, 1, 1, 1, 1],
        [2, 8, 5, 3, 2, 2, 1, 1, 0, 1, 2],
        [4, 11, 10, 5, 5, 3, 2, 2, 2, 1, 1],
        [5, 6, 6, 1, 1, 1, 1, 0, 0, 1, 1],
        [3, 9, 9, 2, 3, 2, 3, 0, 1, 2, 1],
        [2, 3, 3, 3, 3, 1, 1, 3, 2, 1, 1],
        [8, 20, 24, 3, 3, 1, 1, 1, 1, 1, 1],
        [6, 1, 40, 1, 3, 1, 1, 0, 1, 1, 1],
        [4, 1, 33, 1, 4, 1, 2, 0, 3, 1, 2],
        [1, 3, 135, 2, 3, 1, 2, 0, 1, 1, 1], // stride-2 rows of 67-68 values: the widest gathers
    ];

    internal static Im2Col Unfolding(int[] g) => new(g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10]);

    /// <summary>libtorch's columns of one image <c>[C, H, W]</c>: <c>[K, P]</c>.</summary>
    internal static Tensor LibtorchColumns(Tensor image, int[] g) =>
        nn.functional.unfold(image.unsqueeze(0), (g[3], g[4]), (g[9], g[10]), (g[7], g[8]), (g[5], g[6]))[0];

    [Fact]
    public void UnfoldedRowsEqualLibtorchUnfold()
    {
        using var scope = NewDisposeScope();
        foreach (var g in Geometries)
        {
            var u = Unfolding(g);
            torch.manual_seed(g.Sum());
            var image = torch.randn(g[0], g[1], g[2]);
            var expected = LibtorchColumns(image, g).contiguous().data<float>().ToArray();
            Assert.Equal(u.Rows * u.Positions, expected.Length);
            var pixels = image.data<float>().ToArray();
            var row = new float[u.Positions];
            fixed (float* px = pixels) fixed (float* pr = row)
            {
                for (int k = 0; k < u.Rows; k++)
                {
                    // The whole row, then runs that start and end inside output rows.
                    u.Row(px, k, 0, u.Positions, pr, 0f);
                    Assert.Equal(expected.AsSpan(k * u.Positions, u.Positions).ToArray(), row);
                    for (int p0 = 0; p0 < u.Positions; p0 += 7)
                    {
                        int count = Math.Min(5 + k % 11, u.Positions - p0);
                        Array.Fill(row, float.NaN);
                        u.Row(px, k, p0, count, pr, 0f);
                        Assert.Equal(expected.AsSpan(k * u.Positions + p0, count).ToArray(), row.AsSpan(0, count).ToArray());
                        Assert.True(count == u.Positions || float.IsNaN(row[count]), "Row wrote past its run");
                    }
                }
            }
        }
    }

    public static IEnumerable<object[]> Formats() => Enum.GetNames<WeightFormat>().Select(f => new object[] { f });

    [Theory]
    [MemberData(nameof(Formats))]
    public void FloatKernelOnEveryPathMatchesTheSpecificationOnLibtorchColumns(string formatName)
    {
        using var scope = NewDisposeScope();
        var format = Enum.Parse<WeightFormat>(formatName);
        foreach (var g in Geometries)
        {
            var u = Unfolding(g);
            int k = u.Rows, p = u.Positions;
            if (WeightView.IsPacked(format) && k % 2 != 0) continue;
            // Per channel, and groups of one kernel window's channel slice where it divides (several groups per row).
            int taps = g[3] * g[4];
            int groupSize = WeightView.IsFloat(format) || (WeightView.IsPacked(format) && taps % 2 != 0) ? 0 : taps;
            using var w = new PinnedWeight(format, rows: 13, cols: k, groupSize, zeroPoints: true, seed: k + p);
            var view = w.View;
            torch.manual_seed(p);
            var image = torch.randn(g[0], g[1], g[2]);
            float[] pixels = image.data<float>().ToArray();
            float[] rows = LibtorchColumns(image, g).t().contiguous().data<float>().ToArray(); // [P, K]
            float[] bias = KernelTestData.Activations(13, k);
            var expected = new float[p * 13];
            var actual = new float[13 * p];
            fixed (float* px = pixels) fixed (float* pr = rows) fixed (float* pb = bias) fixed (float* pe = expected) fixed (float* pa = actual)
            {
                QuantizedMatMul.Reference(view, pr, p, k, pb, pe, 13);
                foreach (var path in KernelTestData.FloatPaths())
                {
                    Array.Fill(actual, float.NaN);
                    QuantizedMatMul.Run(view, px, p, p, pb, pa, p, path, MatMulMethod.Transposed, u);
                    for (int pos = 0; pos < p; pos++)
                    {
                        for (int n = 0; n < 13; n++)
                        {
                            double magnitude = Math.Abs(bias[n]);
                            for (int kk = 0; kk < k; kk++) magnitude += Math.Abs((double)rows[pos * k + kk] * view.Dequantized(n, kk));
                            double err = Math.Abs(actual[n * p + pos] - expected[pos * 13 + n]);
                            Assert.True(err <= RelativeTolerance * magnitude + 1e-30,
                                $"{format} {path} geometry [{string.Join(",", g)}] position {pos} channel {n}: {actual[n * p + pos]} vs {expected[pos * 13 + n]}");
                        }
                    }
                }
            }
        }
    }

    /// <summary>
    /// Strips read in place from the padded images (<see cref="PackedMatMul.ReadsInPlace"/>: each reduction row of a strip
    /// a run of the image's <see cref="PhaseGrid"/> copy, no packing) give exactly the bits of the packed strips, on every
    /// path, format and geometry (stride phases, dilation, padding wider than the kernel, Conv1d), for one image and
    /// three, and weights of 13 rows (one item) and 70 (several items and runs of rows): the same products in the same
    /// order, the wide grid's extra positions dropped.
    /// </summary>
    [Theory]
    [MemberData(nameof(Formats))]
    public void StripsReadInPlaceGiveThePackedStripsBits(string formatName)
    {
        using var scope = NewDisposeScope();
        var format = Enum.Parse<WeightFormat>(formatName);
        foreach (var g in Geometries.Append([40, 9, 9, 3, 3, 1, 1, 1, 1, 1, 1]))
        {
            int k = Unfolding(g).Rows, taps = g[3] * g[4];
            if (WeightView.IsPacked(format) && k % 2 != 0) continue;
            int groupSize = WeightView.IsFloat(format) || (WeightView.IsPacked(format) && taps % 2 != 0) ? 0 : taps;
            foreach (int images in new[] { 1, 3 })
            {
                foreach (int rowsOut in new[] { 13, 70 })
                {
                    var u = Unfolding(g).ForImages(images);
                    int p = u.Positions;
                    using var w = new PinnedWeight(format, rows: rowsOut, cols: k, groupSize, zeroPoints: true, seed: k + p + rowsOut);
                    var view = w.View;
                    torch.manual_seed(p + images);
                    float[] pixels = torch.randn(images, g[0], g[1], g[2]).data<float>().ToArray();
                    float[] bias = KernelTestData.Activations(rowsOut, k);
                    var packed = new float[images * rowsOut * p];
                    var inPlace = new float[images * rowsOut * p];
                    fixed (float* px = pixels) fixed (float* pb = bias) fixed (float* pp = packed) fixed (float* pi = inPlace)
                    {
                        foreach (var path in KernelTestData.FloatPaths())
                        {
                            Array.Fill(packed, float.NaN);
                            Array.Fill(inPlace, float.NaN);
                            try
                            {
                                PackedMatMul.ForcedReadsInPlace = false;
                                QuantizedMatMul.Run(view, px, p, p, pb, pp, p, path, MatMulMethod.Transposed, u);
                                PackedMatMul.ForcedReadsInPlace = true;
                                QuantizedMatMul.Run(view, px, p, p, pb, pi, p, path, MatMulMethod.Transposed, u);
                            }
                            finally
                            {
                                PackedMatMul.ForcedReadsInPlace = null;
                            }
                            Assert.False(float.IsNaN(inPlace.Sum()), $"{format} {path} geometry [{string.Join(",", g)}] x{images}: an output left unwritten");
                            Assert.True(packed.AsSpan().SequenceEqual(inPlace), $"{format} {path} geometry [{string.Join(",", g)}] x{images}, {rowsOut} rows: in place differs from packed");
                        }
                    }
                }
            }
        }
    }

    private static IEnumerable<KernelPath> IntegerPaths() =>
        new[] { KernelPath.Scalar, KernelPath.V128, KernelPath.V256, KernelPath.V512, KernelPath.Vnni256, KernelPath.Vnni512, KernelPath.Auto }.Where(IntegerMatMul.IsSupported);

    [Theory]
    [InlineData(0.021f, 131, 0, 255, false)] // uint8 affine (PyTorch's default activations)
    [InlineData(0.013f, 0, -128, 127, true)] // int8 symmetric, per-tensor weight with a zero point
    [InlineData(0.5f, 255, 0, 255, false)]   // zero point at the top: padding codes are 255, most inputs clamp
    public void IntegerConvolutionGivesExactlyTheIntegersOfQuantizedLibtorchColumns(float scale, int zeroPoint, int qmin, int qmax, bool perTensor)
    {
        using var scope = NewDisposeScope();
        foreach (var g in Geometries)
        {
            var u = Unfolding(g);
            int k = u.Rows, p = u.Positions;
            using var w = new PinnedWeight(WeightFormat.Int8, rows: 19, cols: k, groupSize: 0, zeroPoints: perTensor, seed: k * 3 + p, perTensor: perTensor);
            var view = w.View;
            torch.manual_seed(k + p);
            var image = torch.randn(g[0], g[1], g[2]);
            float[] pixels = image.data<float>().ToArray();
            float[] rows = LibtorchColumns(image, g).t().contiguous().data<float>().ToArray();
            float[] bias = KernelTestData.Activations(19, p);
            var expected = new float[p * 19];
            var actual = new float[p * 19];
            using var simulated = new QuantizedActivations(p, k);
            fixed (float* px = pixels) fixed (float* pr = rows) fixed (float* pb = bias) fixed (float* pe = expected) fixed (float* pa = actual)
            {
                // The specification: libtorch's columns quantized row by row, then the reference product.
                IntegerMatMul.QuantizeStatic(pr, k, scale, zeroPoint, qmin, qmax, simulated);
                IntegerMatMul.Reference(view, simulated, pb, pe, 19);
                foreach (var path in IntegerPaths())
                {
                    Array.Fill(actual, float.NaN);
                    IntegerMatMul.RunConvolution(view, px, u, scale, zeroPoint, qmin, qmax, pb, pa, path);
                    Assert.True(ChannelMajor(expected, 1, p, 19).AsSpan().SequenceEqual(actual), $"{path} geometry [{string.Join(",", g)}] differs from the specification");
                }
            }
        }
    }

    [Fact]
    public void IntegerConvolutionOfSeveralImagesInOneProduct()
    {
        // Five images in one product (each image's rows rounded up to whole strips, the rounding rows dropped), strides
        // (2, 1) and (1, 2), against the specification on libtorch's columns of each image; a zero point on the weight
        // makes the code sums count. (K = 1,080 in the last: one strip per packing run.)
        using var scope = NewDisposeScope();
        foreach (int[] g in new[] { new[] { 3, 7, 9, 3, 3, 1, 1, 1, 1, 1, 1 }, new[] { 5, 11, 6, 3, 2, 2, 1, 1, 0, 1, 1 }, new[] { 2, 30, 30, 5, 5, 1, 2, 1, 2, 1, 1 }, new[] { 120, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1 } })
        {
            const int images = 5, n = 13;
            var u = Unfolding(g).ForImages(images);
            int p = u.Positions;
            var (w, pixels, bias, specification) = ImagesAndSpecification(g, u, n, 0.017f, 140, weightSeed: u.Rows + p, imageSeed: u.Rows * p);
            using var weight = w;
            var actual = new float[images * p * n];
            fixed (float* px = pixels) fixed (float* pb = bias) fixed (float* pa = actual)
            {
                foreach (var path in IntegerPaths())
                {
                    Array.Fill(actual, float.NaN);
                    IntegerMatMul.RunConvolution(w.View, px, u, 0.017f, 140, 0, 255, pb, pa, path);
                    int bad = Enumerable.Range(0, specification.Length).FirstOrDefault(i => specification[i] != actual[i], -1);
                    Assert.True(bad < 0, $"{path} geometry [{string.Join(",", g)}] x {images} images: image {bad / (n * p)}, output {bad / p % n}, position {bad % p} differs from the specification");
                }
            }
        }
    }

    [Theory]
    [InlineData(19, true, false)]   // one item of weight rows: each work item packs its own strips first
    [InlineData(19, true, true)]    // PassPackMinBytes 0: each work item packs its strips pass by pass
    [InlineData(100, true, true)]   // 100 rows, 58 KB: items of strips over every block of weight rows (never pass by pass)
    [InlineData(100, false, false)] // FusedWeightBytes 0: items cut by weight rows too, the strips packed in a pass first
    public void IntegerConvolutionPacksTheImagesInsideTheWorkItemsOrFirstAlike(int outputs, bool fusedRule, bool passByPass)
    {
        // Twelve images of the stride-(2, 1) geometry (2 strips of 32 rows each: items of several passes of 4 strips)
        // with a weight zero point (so the code sums count), at 1, 2 and 4 threads, against the specification on
        // libtorch's columns; which way the codes were packed is the only difference.
        using var scope = NewDisposeScope();
        int[] g = [5, 11, 6, 3, 2, 2, 1, 1, 0, 1, 1];
        const int images = 12;
        var u = Unfolding(g).ForImages(images);
        var (w, pixels, bias, specification) = ImagesAndSpecification(g, u, outputs, 0.019f, 131, weightSeed: outputs + u.Rows, imageSeed: outputs);
        using var weight = w;
        var actual = new float[images * u.Positions * outputs];
        int savedThreads = KernelThreads.Count, savedBytes = PackedIntegerMatMul.FusedWeightBytes, savedPass = PackedIntegerMatMul.PassPackMinBytes;
        try
        {
            if (!fusedRule) PackedIntegerMatMul.FusedWeightBytes = 0;
            PackedIntegerMatMul.PassPackMinBytes = passByPass ? 0 : int.MaxValue;
            fixed (float* px = pixels) fixed (float* pb = bias) fixed (float* pa = actual)
            {
                foreach (int threads in new[] { 1, 2, 4 })
                {
                    KernelThreads.Count = threads;
                    foreach (var path in IntegerPaths())
                    {
                        Array.Fill(actual, float.NaN);
                        IntegerMatMul.RunConvolution(w.View, px, u, 0.019f, 131, 0, 255, pb, pa, path);
                        Assert.True(specification.AsSpan().SequenceEqual(actual), $"{path} {threads} thread(s), {outputs} outputs, fused rule {fusedRule}, pass by pass {passByPass}: differs from the specification");
                    }
                }
            }
        }
        finally
        {
            KernelThreads.Count = savedThreads;
            PackedIntegerMatMul.FusedWeightBytes = savedBytes;
            PackedIntegerMatMul.PassPackMinBytes = savedPass;
        }
    }

    /// <summary>
    /// The images of <paramref name="u"/> (geometry <paramref name="g"/>, seeded by <paramref name="imageSeed"/>), a
    /// per-tensor int8 weight with a zero point (so the code sums count) and a bias, and the specification: libtorch's
    /// columns of each image quantized to uint8 with <paramref name="scale"/> and <paramref name="zeroPoint"/>, times the
    /// weight by <see cref="IntegerMatMul.Reference"/>, channel-major. The caller disposes the weight.
    /// </summary>
    private static (PinnedWeight Weight, float[] Pixels, float[] Bias, float[] Specification) ImagesAndSpecification(
        int[] g, Im2Col u, int outputs, float scale, int zeroPoint, int weightSeed, int imageSeed)
    {
        int k = u.Rows, p = u.Positions, images = u.Images;
        var w = new PinnedWeight(WeightFormat.Int8, rows: outputs, cols: k, groupSize: 0, zeroPoints: true, seed: weightSeed, perTensor: true);
        torch.manual_seed(imageSeed);
        var batch = torch.randn(images, g[0], g[1], g[2]);
        float[] pixels = batch.data<float>().ToArray();
        float[] rows = torch.cat(Enumerable.Range(0, images).Select(i => LibtorchColumns(batch[i], g).t()).ToArray(), 0).contiguous().data<float>().ToArray();
        float[] bias = KernelTestData.Activations(outputs, k);
        var expected = new float[images * p * outputs];
        using var simulated = new QuantizedActivations(images * p, k);
        fixed (float* pr = rows) fixed (float* pb = bias) fixed (float* pe = expected)
        {
            IntegerMatMul.QuantizeStatic(pr, k, scale, zeroPoint, 0, 255, simulated);
            IntegerMatMul.Reference(w.View, simulated, pb, pe, outputs);
        }
        return (w, pixels, bias, ChannelMajor(expected, images, p, outputs));
    }

    [Fact]
    public void IntegerConvolutionTakesOnlyGeometriesWhosePackedCodesFitOneBuffer()
    {
        // ResNet 64->64 3x3 at 56x56: 3,264 wide rows per image x (2 x 576 + 8) bytes is 3.8 MB; 8 images fit, 2,000 do not
        // (the module then falls back to libtorch rather than fail); at stride 2 the grid is 28 output rows of 29 phase
        // columns, 832 rows per image in whole strips.
        var resnet = new Im2Col(64, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1);
        Assert.True(IntegerMatMul.ConvolutionFits(resnet.ForImages(8)));
        Assert.False(IntegerMatMul.ConvolutionFits(resnet.ForImages(2000)));
        var stride2 = new Im2Col(64, 56, 56, 3, 3, 2, 2, 1, 1, 1, 1);
        Assert.True(IntegerMatMul.ConvolutionFits(stride2.ForImages(400)));
        Assert.False(IntegerMatMul.ConvolutionFits(stride2.ForImages(2400)));
    }

    /// <summary>Position-major products <c>[images * positions, outputs]</c> as a convolution's output, <c>[images, outputs, positions]</c>.</summary>
    private static float[] ChannelMajor(float[] rows, int images, int positions, int outputs)
    {
        var y = new float[rows.Length];
        for (int i = 0; i < images; i++)
            for (int p = 0; p < positions; p++)
                for (int o = 0; o < outputs; o++)
                    y[((long)i * outputs + o) * positions + p] = rows[((long)i * positions + p) * outputs + o];
        return y;
    }

    internal static readonly QuantSpec[] ModuleSpecs =
    [
        new(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0)),
        new(QuantType.Int8, QuantScheme.Affine, Granularity.Tensor),
        new(QuantType.UInt8, QuantScheme.Affine, new PerAxis(0)),
        new(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(8)),
        new(QuantType.UInt4, QuantScheme.Affine, new PerAxis(0)),
        new(QuantType.Float16),
        new(QuantType.BFloat16),
    ];

    /// <summary>
    /// Runs <paramref name="check"/> with <see cref="DirectConvolution"/> padding every image into one buffer first and
    /// with each work item padding its own image's planes (<see cref="DirectConvolution.ForcedPaddingPerItem"/>; its
    /// rule picks by the count of items a thread, which depends on the machine), a failure naming the setting.
    /// </summary>
    internal static void ForBothPaddings(Action check) =>
        ForBothSettings(perItem => DirectConvolution.ForcedPaddingPerItem = perItem, () => DirectConvolution.ForcedPaddingPerItem = null,
            perItem => $"padding {(perItem ? "per work item" : "into one buffer")}", check);

    /// <summary>
    /// Runs <paramref name="check"/> with the small and the depthwise kernels reading the quantized weight group by group
    /// (each thread dequantizing the groups it reads) and on the weight dequantized whole before the call
    /// (<see cref="QuantizedConv.DequantizesWholeWeight"/>, the route of groups beyond a thread's buffer), a failure
    /// naming the setting.
    /// </summary>
    internal static void ForBothWeightReads(Action check) =>
        ForBothSettings(whole => QuantizedConv.DequantizesWholeWeight = whole, () => QuantizedConv.DequantizesWholeWeight = false,
            whole => $"weight {(whole ? "dequantized whole" : "dequantized by group")}", check);

    /// <summary>
    /// Runs <paramref name="check"/> with a switch set to false, then to true (<paramref name="set"/>), resetting it after
    /// each (<paramref name="reset"/>); a failure is prefixed with <paramref name="name"/> of the setting.
    /// </summary>
    internal static void ForBothSettings(Action<bool> set, Action reset, Func<bool, string> name, Action check)
    {
        foreach (bool value in new[] { false, true })
        {
            set(value);
            try
            {
                check();
            }
            catch (Xunit.Sdk.XunitException e)
            {
                throw new Xunit.Sdk.XunitException($"{name(value)}: {e.Message}");
            }
            finally
            {
                reset();
            }
        }
    }

    /// <summary>
    /// For every weight format of <see cref="ModuleSpecs"/> the layer takes and every input of <paramref name="cases"/>:
    /// the kernel of <paramref name="route"/> itself (not null: no fall-back to libtorch's route) and the forced
    /// <see cref="ConvolutionRoute.Kernel"/> route, which takes it, equal the dequantize + libtorch route within 1e-5 of
    /// the largest output; at least the five 8-bit and half-precision formats for every input (int4 in groups of 8 and
    /// uint4 per channel take no odd reduction length).
    /// </summary>
    internal static void AssertRouteMatchesReference((nn.Module<Tensor, Tensor> Conv, Tensor[] Inputs)[] cases, ConvolutionRoute route, int maxBits)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        int checkedCalls = 0, inputCount = 0;
        foreach (var (conv, inputs) in cases)
        {
            inputCount += inputs.Length;
            var weight = ((TorchSharp.Modules.Convolution)conv).weight!;
            foreach (var spec in ModuleSpecs)
            {
                if (QuantizedWeight.Unsupported(spec, weight.shape) is not null) continue;
                using var layer = (QuantizedConv)QuantizedModules.Quantize(conv, spec);
                foreach (var x in inputs)
                {
                    var expected = layer.Forward(x, ConvolutionRoute.Reference);
                    var actual = layer.Kernel(x, route);
                    Assert.NotNull(actual);
                    string what = $"{spec} weight [{string.Join(",", weight.shape)}] input [{string.Join(",", x.shape)}] width {maxBits}";
                    AssertClose(expected, actual, 1e-5, what);
                    AssertClose(expected, layer.Forward(x, ConvolutionRoute.Kernel), 1e-5, what + " (Kernel forces it)");
                    checkedCalls++;
                }
            }
        }
        Assert.True(checkedCalls >= 5 * inputCount, $"only {checkedCalls} calls checked for {inputCount} inputs");
    }

    /// <summary>
    /// An ungrouped static W8A8 layer with padding through its Kernel route (the integer GEMM) agrees with the simulated
    /// path, where the simulated path pads the fake-quantized input with real zeros: with a uint8 zero point of 300,
    /// which no code holds, the integer GEMM read its padding as code 44 (300 - 256) and was off by up to 6.4 on outputs
    /// of at most 4.8; such a layer now takes the packed kernels on the fake-quantized input.
    /// </summary>
    [Fact]
    public void PaddedW8A8ConvolutionsOfAZeroPointNoCodeHoldsMatchTheSimulatedPath()
    {
        torch.manual_seed(67);
        AssertW8A8MatchesSimulated(
        [
            (nn.Conv2d(8, 40, 3, padding: 1), torch.randn(1, 8, 20, 23)),
            (nn.Conv1d(16, 32, 3, padding: 1), torch.randn(2, 16, 50)),
            (nn.Conv2d(16, 16, 3), torch.randn(1, 16, 12, 12)), // no padding: the integer GEMM
        ], ConvolutionRoute.Kernel, nn.Conv2d(16, 16, 3, padding: 1), torch.randn(2, 16, 14, 14));
    }

    /// <summary>The routes <see cref="QuantizedConv.Candidates"/> gives for <paramref name="x"/> on <paramref name="conv"/> quantized with <paramref name="weights"/> and <paramref name="act"/> (dynamic: <paramref name="dynamic"/>).</summary>
    internal static ConvolutionRoute[] CandidatesOf(nn.Module<Tensor, Tensor> conv, Tensor x, QuantSpec weights, ActivationQuantization? act, bool dynamic = false)
    {
        using var layer = (QuantizedConv)QuantizedModules.Quantize(conv, weights, act);
        layer.DynamicInput = dynamic;
        return layer.Candidates(x);
    }

    /// <summary>
    /// Static W8A8 through the kernel of <paramref name="route"/> equals the simulated path (libtorch's route on the
    /// fake-quantized input) within 1e-5 of the largest output, for every layer of <paramref name="cases"/>, with a uint8
    /// zero point of the type's range (120) and one beyond it (300, which a checkpoint may carry), on inputs beyond the
    /// quantization's range (so that the clamps count); and dynamic W8A8 (each row quantized on its own) on
    /// <paramref name="dynamicConv"/>.
    /// </summary>
    internal static void AssertW8A8MatchesSimulated((nn.Module<Tensor, Tensor> Conv, Tensor X)[] cases, ConvolutionRoute route, nn.Module<Tensor, Tensor> dynamicConv, Tensor dynamicInput)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var weights = QuantizationRecipe.Int8WeightOnly().BaseWeights;
        foreach (int zeroPoint in new[] { 120, 300 })
        foreach (var (conv, x) in cases)
        {
            var act = new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, 0.02f, zeroPoint);
            using var layer = (QuantizedConv)QuantizedModules.Quantize(conv, weights, act);
            var input = x * 3;
            AssertClose(layer.Forward(input, ConvolutionRoute.Reference), layer.Kernel(input, route)!, 1e-5, $"W8A8 zero point {zeroPoint} [{string.Join(",", x.shape)}]");
        }
        using var dynamic = (QuantizedConv)QuantizedModules.Quantize(dynamicConv, weights);
        dynamic.DynamicInput = true;
        var rows = dynamicInput * 3;
        AssertClose(dynamic.Forward(rows, ConvolutionRoute.Reference), dynamic.Kernel(rows, route)!, 1e-5, "dynamic W8A8");
    }

    /// <summary>
    /// <paramref name="onQuantized"/> on a quantized weight of <paramref name="format"/> (<paramref name="outputs"/> rows of
    /// <c>Rows / groups</c> values in groups of <paramref name="groupSize"/>, zero points included) gives, bit for bit,
    /// what <paramref name="onFloat"/> gives on that weight dequantized whole (<see cref="WeightDequantizer.Run"/>), for
    /// random images of <paramref name="u"/>; two weights of the same shape one after the other (seeds 1 and 2), each
    /// with its own results.
    /// </summary>
    internal static unsafe void AssertQuantizedWeightGivesItsDequantizedBits(Im2Col u, int outputs, int groups, WeightFormat format, int groupSize, Random random, string what,
        delegate*<float*, int, int, Im2Col, float*, float*, float*, InputFakeQuantization?, void> onFloat,
        delegate*<in WeightView, int, Im2Col, float*, float*, float*, InputFakeQuantization?, void> onQuantized)
    {
        int k = u.Rows / groups, count = u.Images * outputs * u.Positions;
        float[] x = Enumerable.Range(0, u.Images * u.ImageSize).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
        float[] bias = Enumerable.Range(0, outputs).Select(_ => (float)random.NextDouble()).ToArray();
        foreach (int seed in new[] { 1, 2 })
        {
            using var weight = new PinnedWeight(format, outputs, k, groupSize, zeroPoints: true, seed);
            var view = weight.View;
            float[] dequantized = new float[outputs * k], expected = new float[count], actual = new float[count];
            fixed (float* pw = dequantized, px = x, pb = bias, pe = expected, pa = actual)
            {
                WeightDequantizer.Run(view, pw);
                onFloat(pw, outputs, groups, u, px, pb, pe, null);
                onQuantized(view, groups, u, px, pb, pa, null);
            }
            for (int i = 0; i < count; i++)
                Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(actual[i]),
                    $"{format} [{outputs}, {k}] {what}, weight {seed}: output {i} is {actual[i]:R}, on the dequantized copy {expected[i]:R}");
        }
    }

    /// <summary>
    /// Runs <paramref name="kernel"/> (<see cref="DirectConvolution.Run(float*, int, int, Im2Col, float*, float*, float*, InputFakeQuantization?)"/>'s arguments) on random 3x3 convolutions (padding
    /// 1, stride 1) of <paramref name="channels"/> inputs into <paramref name="outputs"/> in <paramref name="groups"/>
    /// groups, two images, output rows of 1 to 17 values over 1 to 3 rows (narrow rows' whole-vector stores end at every
    /// distance from a channel's and the output's end), and checks every output against a double-precision sum and that
    /// nothing past the output was written.
    /// </summary>
    internal static unsafe void AssertEveryOutputOnceAndNothingPast(int channels, int outputs, int groups, int seed,
        delegate*<float*, int, int, Im2Col, float*, float*, float*, InputFakeQuantization?, void> kernel)
    {
        var random = new Random(seed);
        const int Images = 2, Taps = 9;
        int groupChannels = channels / groups, groupOutputs = outputs / groups, k = groupChannels * Taps;
        for (int outW = 1; outW <= 17; outW++)
        for (int outH = 1; outH <= 3; outH++)
        {
            var u = new Im2Col(channels, outH, outW, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(Images);
            float[] x = Enumerable.Range(0, Images * channels * outH * outW).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
            float[] w = Enumerable.Range(0, outputs * k).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
            float[] bias = Enumerable.Range(0, outputs).Select(_ => (float)random.NextDouble()).ToArray();
            int positions = outH * outW, count = Images * outputs * positions;
            float[] y = Enumerable.Repeat(float.NaN, count + 64).ToArray();
            fixed (float* px = x, pw = w, pb = bias, py = y)
                kernel(pw, outputs, groups, u, px, pb, py, null);
            for (int i = count; i < y.Length; i++) Assert.True(float.IsNaN(y[i]), $"{outH}x{outW}: value {i - count} past the output written");
            for (int n = 0; n < Images; n++)
            for (int o = 0; o < outputs; o++)
            for (int oh = 0; oh < outH; oh++)
            for (int ow = 0; ow < outW; ow++)
            {
                double expected = bias[o];
                int first = o / groupOutputs * groupChannels;
                for (int c = 0; c < groupChannels; c++)
                for (int kh = 0; kh < 3; kh++)
                for (int kw = 0; kw < 3; kw++)
                {
                    int ih = oh + kh - 1, iw = ow + kw - 1;
                    if (ih >= 0 && ih < outH && iw >= 0 && iw < outW)
                        expected += (double)w[o * k + c * Taps + kh * 3 + kw] * x[((n * channels + first + c) * outH + ih) * outW + iw];
                }
                float actual = y[((n * outputs + o) * outH + oh) * outW + ow];
                Assert.True(Math.Abs(actual - expected) <= 1e-5, $"{outH}x{outW} image {n} output {o} at ({oh}, {ow}): {actual} against {expected}");
            }
        }
    }

    internal static void AssertClose(Tensor expected, Tensor actual, double relative, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        using var e = expected.to(ScalarType.Float64);
        using var a = actual.to(ScalarType.Float64);
        double scale = e.abs().max().item<double>() + 1e-12;
        double err = (e - a).abs().max().item<double>();
        Assert.True(err <= relative * scale, $"{what}: max |error| {err:G3} against max |value| {scale:G3}");
    }

    [Fact]
    public void ModuleKernelRouteMatchesDequantizeAndLibtorchForEveryFormatAndInputForm()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(21);
        var convs = new (nn.Module<Tensor, Tensor> Conv, Tensor[] Inputs)[]
        {
            (nn.Conv2d(6, 10, (3, 4), stride: (2, 1), padding: (1, 2), dilation: (1, 2)),
                [torch.randn(3, 6, 9, 11), torch.randn(6, 7, 8), torch.randn(2, 6, 11, 9).transpose(2, 3)]),
            (nn.Conv2d(8, 7, 1), [torch.randn(2, 8, 5, 7), torch.randn(8, 3, 3)]),
            (nn.Conv1d(4, 9, 4, stride: 2, padding: 3, dilation: 2, bias: false), [torch.randn(3, 4, 21), torch.randn(4, 17), torch.randn(2, 21, 4).transpose(1, 2)]),
        };
        foreach (var (conv, inputs) in convs)
        foreach (var spec in ModuleSpecs)
        {
            using var layer = (QuantizedConv)QuantizedModules.Quantize(conv, spec);
            foreach (var x in inputs)
            {
                var expected = layer.Forward(x, ConvolutionRoute.Reference);
                var actual = layer.Forward(x, ConvolutionRoute.Kernel);
                AssertClose(expected, actual, 1e-5, $"{layer.GetType().Name} {spec} input [{string.Join(",", x.shape)}]");
                AssertClose(expected, layer.call(x), 1e-5, $"{spec} through the rule");
            }
            // The kernel ran: the layout serves this weight.
            using var images = torch.randn(1, layer.in_channels, 9, 9);
            var unfold = new Im2Col((int)layer.in_channels, 9, 9, (int)layer.kernel_size[0], (int)layer.kernel_size[^1], 1, 1, 0, 0, 1, 1);
            if (layer.SpatialDims == 2) Assert.NotNull(layer.weight.Layout.Convolution(images, unfold, layer.bias, null));
        }
    }

    [Fact]
    public void StaticW8A8ConvolutionRunsInIntegersAndMatchesTheSimulatedPath()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(22);
        var act = new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, 0.02f, 120);
        foreach (var conv in new nn.Module<Tensor, Tensor>[] { nn.Conv2d(5, 12, 3, stride: 2, padding: 1), nn.Conv2d(16, 8, 1), nn.Conv1d(7, 6, 3, padding: 2, dilation: 2) })
        {
            using var layer = (QuantizedConv)QuantizedModules.Quantize(conv, QuantizationRecipe.Int8WeightOnly().BaseWeights, act);
            int dims = layer.SpatialDims;
            var x = dims == 2 ? torch.randn(2, layer.in_channels, 10, 9) : torch.randn(2, layer.in_channels, 19);
            var simulated = layer.Forward(x, ConvolutionRoute.Reference);
            var integer = layer.Forward(x, ConvolutionRoute.Kernel);
            // Same integers; the two differ only by the float rounding of the simulated convolution's sums.
            AssertClose(simulated, integer, 2e-6, $"W8A8 {layer.GetType().Name}");
            var images = dims == 2 ? x : x.unsqueeze(2);
            var unfold = dims == 2
                ? new Im2Col((int)layer.in_channels, 10, 9, 3, 3, 2, 2, 1, 1, 1, 1)
                : new Im2Col((int)layer.in_channels, 1, 19, 1, 3, 1, 1, 0, 2, 1, 2);
            if (layer.kernel_size[0] == 1) unfold = new Im2Col((int)layer.in_channels, 10, 9, 1, 1, 1, 1, 0, 0, 1, 1);
            Assert.NotNull(layer.weight.Layout.Convolution(images, unfold, layer.bias, layer.InputQuantizer));
        }
    }

    /// <summary>
    /// Asserts <see cref="ConvolutionCost.Choose"/> on <paramref name="unfold"/> both ways: <paramref name="withBFloat16"/>
    /// where the bfloat16 route may be taken (a native-bf16 CPU with <see cref="QuantizedConv.UseBFloat16Compute"/>),
    /// <paramref name="without"/> otherwise (the float32 rule).
    /// </summary>
    internal static void AssertChoice(Im2Col unfold, long outputs, bool quantizedInput, ConvolutionRoute withBFloat16, ConvolutionRoute without, string what, bool float256 = false, bool vnni512 = true)
    {
        Assert.True(withBFloat16 == ConvolutionCost.Choose(unfold, outputs, quantizedInput, bfloat16: true, float256, vnni512), $"{what}, bfloat16 rule");
        Assert.True(without == ConvolutionCost.Choose(unfold, outputs, quantizedInput, bfloat16: false, float256, vnni512), $"{what}, float32 rule");
    }

    /// <summary>
    /// Asserts the route an int8 (weight-only or, with <paramref name="input"/>, static W8A8) layer of <paramref name="conv"/>
    /// takes for <paramref name="x"/>: with <see cref="QuantizedConv.UseBFloat16Compute"/> (the default)
    /// <paramref name="withBFloat16"/> where the bfloat16 convolution route runs (a native-bf16 CPU whose libtorch passed
    /// <see cref="BFloat16Check"/>; where the route runs on the packed kernels instead, <paramref name="withBFloat16"/> only
    /// where <see cref="ConvolutionCost.PackedBFloat16Pays"/>) and <paramref name="without"/> elsewhere, and what
    /// <see cref="ConvolutionCost.Choose"/> gives for <paramref name="unfold"/> (the call's geometry; null where the input
    /// itself rules the kernels out); with the flag off <paramref name="without"/> on every machine.
    /// </summary>
    internal static void AssertLayerRoute(nn.Module<Tensor, Tensor> conv, ActivationQuantization? input, Tensor x, Im2Col? unfold,
        ConvolutionRoute withBFloat16, ConvolutionRoute without, string what)
    {
        using var layer = (QuantizedConv)QuantizedModules.Quantize(conv, QuantizationRecipe.Int8WeightOnly().BaseWeights, input);
        // Static W8A8 (int8 symmetric weights, a zero point among the codes) takes the output channels in lanes first where that pays.
        if (input is not null && unfold is { } qu && Vnni512Kernel.IsSupported && ConvolutionCost.QuadPays(qu, layer.out_channels, layer.groups))
        {
            Assert.True(layer.Route(x) == ConvolutionRoute.Quad, $"{what}: {layer.Route(x)}, not the output channels in lanes");
            return;
        }
        bool saved = QuantizedConv.UseBFloat16Compute;
        try
        {
            QuantizedConv.UseBFloat16Compute = true;
            var route = layer.Route(x);
            // Where the bfloat16 route runs on the packed kernels (libtorch's failed the check), only where that pays;
            // where both bfloat16 convolutions run, that rule's small kernel, integer kernels, and float32 packed kernels
            // on few positions or small calls first.
            var packed = withBFloat16 == ConvolutionRoute.BFloat16 && unfold is { } pu && ConvolutionCost.PackedBFloat16Pays(pu, layer.out_channels) ? ConvolutionRoute.BFloat16 : without;
            bool fewOrSmall = unfold is { } fu && ((long)fu.Images * fu.Positions <= ConvolutionCost.FewPositionsMaxPositions
                || (long)fu.Images * fu.Positions * layer.out_channels * fu.Rows <= ConvolutionCost.SmallWeightOnlyMaxWork);
            bool managed = packed == ConvolutionRoute.Direct || (packed == ConvolutionRoute.Kernel && (input is not null || fewOrSmall));
            // Weight-only with a short reduction (64-95 terms), unless the packed kernels' bfloat16 route beats libtorch's: that rule's route too.
            bool beats = input is null && unfold is { } bu && ConvolutionCost.PackedBFloat16BeatsLibTorch(bu, layer.out_channels);
            bool shortReduction = input is null && unfold is { } su && ConvolutionCost.ShortForLibTorchBFloat16(su) && !beats;
            // Else where the packed kernels' bfloat16 route beats libtorch's (pointwise calls of 16-63 terms among them,
            // whose bfloat16 rule is otherwise libtorch's float32 route): the packed kernels.
            var expected = !QuantizedModule.BFloat16Convolutions ? without
                : QuantizedModule.PackedBFloat16Convolutions ? packed
                : QuantizedModule.BothBFloat16Convolutions && (managed || shortReduction) ? packed
                : QuantizedModule.BothBFloat16Convolutions && beats ? ConvolutionRoute.BFloat16
                : withBFloat16;
            Assert.True(expected == route, $"{what}: {route} (native bf16 {QuantizedModule.NativeBFloat16}, libtorch's passed the check {BFloat16Check.Convolutions})");
            if (unfold is { } u)
                Assert.Equal(ConvolutionCost.Choose(u, layer.out_channels, input is not null, QuantizedModule.BFloat16Convolutions, ConvolutionCost.Widest256, Vnni512Kernel.IsSupported, KernelThreads.Count == 1, QuantizedModule.PackedBFloat16Convolutions, QuantizedModule.BothBFloat16Convolutions), route);
            else
                Assert.Equal(ConvolutionRoute.Reference, route);
            QuantizedConv.UseBFloat16Compute = false;
            Assert.True(without == layer.Route(x), $"{what} with UseBFloat16Compute off: {layer.Route(x)}");
        }
        finally
        {
            QuantizedConv.UseBFloat16Compute = saved;
        }
    }

    [Fact]
    public void MeasuredRuleTakesThePackedKernelsForWeightOnlyCallsOfFewPositionsOrStrided()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        const ConvolutionRoute K = ConvolutionRoute.Kernel, R = ConvolutionRoute.Reference, B = ConvolutionRoute.BFloat16;
        // Weight-only, beyond the small kernel, at most FewPositionsMaxPositions output positions over the call's images:
        // the packed kernels under the float32 rule, with 512-bit float kernels and at 256 bits (stop 53); the bfloat16 rule
        // unchanged. At 256 bits the other weight-only clauses of the packed kernels stay off (below).
        var last = new Im2Col(512, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1); // ResNet's last 3x3 layers: 49 positions
        AssertChoice(last, 512, false, B, K, "512->512 3x3 on 7x7");
        AssertChoice(last.ForImages(2), 512, false, B, K, "512->512 3x3 on 7x7, two images (98 positions)");
        AssertChoice(last.ForImages(3), 512, false, B, R, "512->512 3x3 on 7x7, three images (147 positions)");
        AssertChoice(last, 512, false, B, K, "512->512 3x3 on 7x7 at 256 bits", float256: true);
        // At 256 bits beyond 64 positions only weights below FewPositionsMaxWeight256 elements.
        AssertChoice(last.ForImages(2), 512, false, B, R, "512->512 3x3 on 7x7, two images, at 256 bits", float256: true);
        var few256 = new Im2Col(256, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(2); // 98 positions
        AssertChoice(few256, 455, false, B, K, "256->455 3x3 on 7x7, two images (2304 x 455 < 2^20), at 256 bits", float256: true);
        AssertChoice(few256, 456, false, B, R, "256->456 3x3 on 7x7, two images (2304 x 456 > 2^20), at 256 bits", float256: true);
        AssertChoice(new Im2Col(512, 7, 7, 1, 1, 1, 1, 0, 0, 1, 1).ForImages(2), 2048, false, B, R, "1x1 512->2048 on 7x7, two images (2^20), at 256 bits", float256: true);
        AssertChoice(new Im2Col(512, 8, 8, 1, 1, 1, 1, 0, 0, 1, 1), 2048, false, B, K, "1x1 512->2048 on 8x8 (64 positions), at 256 bits", float256: true);
        AssertChoice(new Im2Col(512, 1, 65, 1, 3, 1, 1, 0, 1, 1, 1), 682, false, B, K, "Conv1d 512->682 k3 on 65 (1536 x 682 < 2^20), at 256 bits", float256: true);
        AssertChoice(new Im2Col(512, 1, 65, 1, 3, 1, 1, 0, 1, 1, 1), 683, false, B, R, "Conv1d 512->683 k3 on 65 (1536 x 683 > 2^20), at 256 bits", float256: true);
        AssertChoice(last.ForImages(3), 512, false, B, R, "512->512 3x3 on 7x7, three images, at 256 bits", float256: true);
        AssertChoice(last, 512, true, K, K, "W8A8 512->512 3x3 on 7x7 at 256 bits (the integer GEMM)", float256: true);
        AssertChoice(new Im2Col(256, 14, 14, 3, 3, 2, 2, 1, 1, 1, 1), 512, false, B, K, "256->512 stride 2 on 14x14");
        AssertChoice(new Im2Col(512, 7, 7, 1, 1, 1, 1, 0, 0, 1, 1), 2048, false, B, K, "1x1 512->2048 on 7x7");
        AssertChoice(new Im2Col(256, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1), 256, false, B, R, "256->256 3x3 on 14x14 (196 positions)");
        // The edge, as a Conv1d k3 padded by 1: 128 positions in, 129 out; or 64 positions in each of two images.
        var edge = new Im2Col(512, 1, 128, 1, 3, 1, 1, 0, 1, 1, 1);
        Assert.Equal(ConvolutionCost.FewPositionsMaxPositions, edge.Positions);
        AssertChoice(edge, 512, false, B, K, "Conv1d on 128 positions");
        AssertChoice(new Im2Col(512, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1), 512, false, B, K, "3x3 on 8x16 (128 positions)");
        AssertChoice(new Im2Col(512, 3, 43, 3, 3, 1, 1, 1, 1, 1, 1), 512, false, B, R, "3x3 on 3x43 (129 positions)");
        AssertChoice(new Im2Col(512, 1, 64, 1, 3, 1, 1, 0, 1, 1, 1, images: 2), 512, false, B, K, "Conv1d on 64 positions, two images");
        AssertChoice(new Im2Col(512, 1, 65, 1, 3, 1, 1, 0, 1, 1, 1, images: 2), 512, false, B, R, "Conv1d on 65 positions, two images");
        // Small calls whose reduction is too long for the small kernel, at any number of positions: the packed kernels up
        // to SmallWeightOnlyMaxWork (128 channels x 2x2 = 512 terms on 16x32 positions: 2^23 multiply-adds at 32 outputs,
        // 33 out), not pointwise; 256 terms fit the small kernel (direct).
        var smallLong = new Im2Col(128, 17, 33, 2, 2, 1, 1, 0, 0, 1, 1);
        Assert.Equal(ConvolutionCost.SmallWeightOnlyMaxWork, (long)smallLong.Positions * 32 * smallLong.Rows);
        AssertChoice(smallLong, 32, false, B, K, "512 terms on 512 positions, 2^23 multiply-adds");
        AssertChoice(smallLong, 33, false, B, R, "512 terms on 512 positions, above 2^23 multiply-adds");
        AssertChoice(smallLong, 32, false, B, R, "512 terms on 512 positions at 256 bits", float256: true);
        AssertChoice(new Im2Col(32, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 16, false, B, K, "32->16 3x3 on 8x8, eight images");
        AssertChoice(new Im2Col(512, 8, 8, 1, 1, 1, 1, 0, 0, 1, 1).ForImages(3), 32, false, B, R, "1x1 512->32 on 8x8, three images (pointwise, 3.1M)");
        AssertChoice(new Im2Col(32, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 16, true, K, K, "W8A8 32->16 3x3 on 8x8, eight images (integer GEMM)");
        // Static W8A8 keeps its rules (the integer GEMM from 256 terms).
        AssertChoice(last, 512, true, K, K, "W8A8 512->512 3x3 on 7x7");
        // A Conv1d of at least IntegerMinReduction terms in one image: the packed kernels at any length (stop 30); two
        // images beyond 128 positions, 255 terms, 256 bits or a 2-D image of the same terms not.
        var conv1d = new Im2Col(512, 1, 256, 1, 3, 1, 1, 0, 1, 1, 1);
        AssertChoice(conv1d, 512, false, B, K, "Conv1d 512->512 k3 on 256");
        AssertChoice(new Im2Col(512, 1, 129, 1, 3, 1, 1, 0, 1, 1, 1), 512, false, B, K, "Conv1d on 129 positions");
        AssertChoice(conv1d.ForImages(2), 512, false, B, R, "Conv1d 512->512 k3 on 256, two images");
        AssertChoice(new Im2Col(85, 1, 256, 1, 3, 1, 1, 0, 1, 1, 1), 512, false, B, R, "Conv1d 85->512 k3 (255 terms) on 256");
        AssertChoice(conv1d, 512, false, B, R, "Conv1d 512->512 k3 on 256 at 256 bits", float256: true);
        AssertChoice(new Im2Col(512, 16, 16, 1, 3, 1, 1, 0, 1, 1, 1), 512, false, B, R, "1x3 kernel on 16x16");
        AssertLayerRoute(nn.Conv1d(128, 64, 3, padding: 1), null, torch.randn(1, 128, 300), new Im2Col(128, 1, 300, 1, 3, 1, 1, 0, 1, 1, 1),
            B, ConvolutionCost.Widest256 ? R : K, "Conv1d 128->64 k3 on 300 layer");

        // Strided, at least IntegerMinReduction terms, up to StridedWeightOnlyMaxWork: ResNet's 64->128 3x3 stride 2 on
        // 56x56 (784 positions, 57.8M per image) at batch 1 and 2 (115.6M), not at 4 (231M); the stem (27 terms) never;
        // 255 terms (the edge) not, 256 terms yes.
        var down = new Im2Col(64, 56, 56, 3, 3, 2, 2, 1, 1, 1, 1);
        AssertChoice(down, 128, false, B, K, "64->128 stride 2 on 56x56");
        AssertChoice(down.ForImages(2), 128, false, B, K, "64->128 stride 2 on 56x56, two images");
        AssertChoice(down.ForImages(4), 128, false, B, R, "64->128 stride 2 on 56x56, four images");
        AssertChoice(down, 128, false, B, R, "64->128 stride 2 on 56x56 at 256 bits", float256: true);
        Assert.True(2L * down.Positions * 128 * down.Rows <= ConvolutionCost.StridedWeightOnlyMaxWork && 4L * down.Positions * 128 * down.Rows > ConvolutionCost.StridedWeightOnlyMaxWork);
        AssertChoice(new Im2Col(3, 224, 224, 3, 3, 2, 2, 1, 1, 1, 1), 32, false, R, R, "the stem, weight-only");
        AssertChoice(new Im2Col(255, 60, 60, 1, 1, 2, 2, 0, 0, 1, 1), 64, false, B, R, "1x1 stride 2, 255 terms");
        AssertChoice(new Im2Col(256, 60, 60, 1, 1, 2, 2, 0, 0, 1, 1), 64, false, B, K, "1x1 stride 2, 256 terms");
        AssertChoice(new Im2Col(64, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1), 64, false, B, R, "64->64 stride 1 on 56x56");
        AssertLayerRoute(nn.Conv2d(64, 128, 3, stride: 2, padding: 1), null, torch.randn(1, 64, 16, 16), new Im2Col(64, 16, 16, 3, 3, 2, 2, 1, 1, 1, 1),
            B, K, "64->128 stride 2 on 16x16 layer (64 positions: the few-positions clause, at 256 bits too)");
        // A layer: 64->64 3x3 on 7x7 (1.8M multiply-adds, 576 terms: beyond the small kernel), at batch 1, 2 and 3.
        var layerGeometry = new Im2Col(64, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1);
        AssertLayerRoute(nn.Conv2d(64, 64, 3, padding: 1), null, torch.randn(1, 64, 7, 7), layerGeometry, B, K, "64->64 on 7x7 layer");
        AssertLayerRoute(nn.Conv2d(64, 64, 3, padding: 1), null, torch.randn(2, 64, 7, 7), layerGeometry.ForImages(2), B, K, "64->64 on 7x7 layer, two images (98 positions, a small weight: at 256 bits too)");
        // Three images (147 positions, 5.4M): small enough for SmallWeightOnlyMaxWork; six (10.8M) are not. Beyond the
        // small kernel's calls (4.2M), the output channels in lanes where they run (UngroupedWeightOnlyLayersOntoSmallPlanesRunWithTheOutputChannelsInLanes).
        Assert.True(PackedMatMul.UngroupedLanesPay(layerGeometry.ForImages(3), 64));
        if (!(QuantizedModule.BFloat16Convolutions && Vnni512Kernel.BFloat16Supported && Float512.IsSupported))
            AssertLayerRoute(nn.Conv2d(64, 64, 3, padding: 1), null, torch.randn(3, 64, 7, 7), layerGeometry.ForImages(3), B, ConvolutionCost.Widest256 ? R : K, "64->64 on 7x7 layer, three images");
        AssertLayerRoute(nn.Conv2d(64, 64, 3, padding: 1), null, torch.randn(6, 64, 7, 7), layerGeometry.ForImages(6), B, R, "64->64 on 7x7 layer, six images");
    }

    [Fact]
    public void MeasuredRuleTakesThePackedKernelsForLongPointwiseCallsOfUpToEightImagesOnOneThread()
    {
        using var scope = NewDisposeScope();
        const ConvolutionRoute K = ConvolutionRoute.Kernel, R = ConvolutionRoute.Reference, B = ConvolutionRoute.BFloat16;
        // Weight-only 1x1, stride 1, 256 terms or more: on one thread up to eight images (stop 34), on more up to two.
        var pointwise = new Im2Col(256, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1);
        Assert.Equal(K, ConvolutionCost.Choose(pointwise.ForImages(8), 256, false, bfloat16: false, oneThread: true));
        Assert.Equal(R, ConvolutionCost.Choose(pointwise.ForImages(9), 256, false, bfloat16: false, oneThread: true));
        Assert.Equal(R, ConvolutionCost.Choose(pointwise.ForImages(8), 256, false, bfloat16: false));
        Assert.Equal(K, ConvolutionCost.Choose(pointwise.ForImages(2), 256, false, bfloat16: false));
        Assert.Equal(R, ConvolutionCost.Choose(pointwise.ForImages(3), 256, false, bfloat16: false));
        Assert.Equal(R, ConvolutionCost.Choose(new Im2Col(255, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1).ForImages(4), 256, false, bfloat16: false, oneThread: true));
        Assert.Equal(R, ConvolutionCost.Choose(pointwise.ForImages(8), 256, false, bfloat16: false, float256: true, oneThread: true));
        Assert.Equal(B, ConvolutionCost.Choose(pointwise.ForImages(8), 256, false, bfloat16: true, oneThread: true));
        // A layer follows the kernels' thread count.
        using var layer = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(256, 64, 1), QuantizationRecipe.Int8WeightOnly().BaseWeights);
        var x = torch.randn(8, 256, 28, 28);
        int saved = KernelThreads.Count;
        try
        {
            // 64 output channels on 6,272 positions: the bfloat16 route on the packed kernels does not pay (the float32 rule's).
            bool libtorchBFloat16 = QuantizedModule.BFloat16Convolutions && !QuantizedModule.PackedBFloat16Convolutions;
            KernelThreads.Count = 1;
            Assert.Equal(libtorchBFloat16 ? B : ConvolutionCost.Widest256 ? R : K, layer.Route(x));
            KernelThreads.Count = 2;
            Assert.Equal(libtorchBFloat16 ? B : R, layer.Route(x));
        }
        finally
        {
            KernelThreads.Count = saved;
        }
    }

    [Fact]
    public void MeasuredRuleTakesThePackedKernelsReadingInPlaceFor3x3LayersOnto28x28InTwoToEightImages()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        const ConvolutionRoute K = ConvolutionRoute.Kernel, R = ConvolutionRoute.Reference, B = ConvolutionRoute.BFloat16;
        // ResNet's second stage and VGG's fourth block: in place from 128 channels, in 2-8 images, with 512-bit kernels.
        var stage2 = new Im2Col(128, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1);
        Assert.True(PackedMatMul.InPlacePays(stage2));
        AssertChoice(stage2, 128, false, B, R, "128->128 3x3 on 28x28, one image");
        AssertChoice(stage2.ForImages(2), 128, false, B, K, "128->128 3x3 on 28x28, two images");
        AssertChoice(stage2.ForImages(8), 128, false, B, K, "128->128 3x3 on 28x28, eight images");
        AssertChoice(stage2.ForImages(9), 128, false, B, R, "128->128 3x3 on 28x28, nine images");
        AssertChoice(stage2.ForImages(4), 128, false, B, R, "128->128 3x3 on 28x28 at 256 bits", float256: true);
        AssertChoice(stage2.ForImages(4), 128, true, K, K, "W8A8 128->128 3x3 on 28x28 (the integer GEMM)");
        AssertChoice(new Im2Col(512, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1, images: 4), 512, false, B, K, "512->512 3x3 on 28x28, four images");
        // Not: 64 channels, 14x14, 56x56, 28x56 or 56x28 outputs, and onto 28x28: stride 2 or (1, 2), a 5x5 or 3x5
        // kernel, dilation 2 or (1, 2).
        foreach (var (other, what) in new[]
        {
            (new Im2Col(64, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1, images: 4), "64 channels"),
            (new Im2Col(256, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1, images: 4), "14x14"),
            (new Im2Col(128, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1, images: 4), "56x56"),
            (new Im2Col(128, 28, 56, 3, 3, 1, 1, 1, 1, 1, 1, images: 4), "28x56"),
            (new Im2Col(128, 56, 28, 3, 3, 1, 1, 1, 1, 1, 1, images: 4), "56x28"),
            (new Im2Col(128, 56, 56, 3, 3, 2, 2, 1, 1, 1, 1, images: 4), "stride 2 onto 28x28"),
            (new Im2Col(128, 28, 28, 5, 5, 1, 1, 2, 2, 1, 1, images: 4), "5x5"),
            (new Im2Col(128, 28, 28, 3, 3, 1, 1, 2, 2, 2, 2, images: 4), "dilation 2"),
            (new Im2Col(128, 28, 30, 3, 5, 1, 1, 1, 1, 1, 1, images: 4), "3x5 onto 28x28"),
            (new Im2Col(128, 28, 28, 3, 3, 1, 1, 1, 2, 1, 2, images: 4), "dilation (1, 2) onto 28x28"),
            (new Im2Col(128, 28, 56, 3, 3, 1, 2, 1, 1, 1, 1, images: 4), "stride (1, 2) onto 28x28"),
        })
        {
            Assert.False(PackedMatMul.InPlacePays(other), what);
            AssertChoice(other, 128, false, B, R, what);
        }
        // A layer of two images: the rule's route (in place with 512-bit kernels), and the output of libtorch's route.
        torch.manual_seed(31);
        var conv = nn.Conv2d(128, 16, 3, padding: 1);
        var x = torch.randn(2, 128, 28, 28);
        AssertLayerRoute(conv, null, x, new Im2Col(128, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1, images: 2), B, ConvolutionCost.Widest256 ? R : K, "128->16 on 28x28 layer, two images");
        using var layer = (QuantizedConv)QuantizedModules.Quantize(conv, ModuleSpecs[3]);
        AssertClose(layer.Forward(x, ConvolutionRoute.Reference), layer.Forward(x, ConvolutionRoute.Kernel), 1e-5, "int4 128->16 on 28x28, in place");
    }

    [Fact]
    public void MeasuredRuleRoutesPointwiseAndW8A8CallsByTheBFloat16AndFloat32Rules()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var act = new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, 0.02f, 120);
        const ConvolutionRoute K = ConvolutionRoute.Kernel, R = ConvolutionRoute.Reference, B = ConvolutionRoute.BFloat16, D = ConvolutionRoute.Direct;

        // 1x1 32->16 on 100x100: 10,000 positions x 16 x 32 = 5.1M multiply-adds, not small. Weight-only, both rules:
        // dequantize + float32 libtorch (the packed kernel lost to it, stops 11 and 26; bfloat16: 32 reduction terms <
        // BFloat16MinReduction; the packed kernels in bfloat16 where both bfloat16 convolutions run since stop 51 and where
        // libtorch's failed its check since stop 52, rules not asserted here); the packed kernel only for W8A8 under the
        // float32 rule.
        var pointwise = new Im2Col(32, 100, 100, 1, 1, 1, 1, 0, 0, 1, 1);
        AssertChoice(pointwise, 16, false, R, R, "1x1 32->16");
        AssertChoice(pointwise, 16, true, R, K, "W8A8 1x1 32->16");
        AssertLayerRoute(nn.Conv2d(32, 16, 1), null, torch.randn(1, 32, 100, 100), pointwise, R, R, "1x1 32->16 layer");
        // 1x1 64->32 on 50x50 (64 terms, 5.1M multiply-adds): bfloat16 where it may, libtorch's float32 otherwise.
        var pointwise64 = new Im2Col(64, 50, 50, 1, 1, 1, 1, 0, 0, 1, 1);
        AssertChoice(pointwise64, 32, false, B, R, "1x1 64->32");
        AssertLayerRoute(nn.Conv2d(64, 32, 1), null, torch.randn(1, 64, 50, 50), pointwise64, B, R, "1x1 64->32 layer");
        // Weight-only 1x1 of at least IntegerMinReduction terms in one or two images: the packed kernels under the
        // float32 rule with 512-bit float kernels (stop 30); three images, 255 terms, 256 bits or a padded 1x1 not.
        var wide = new Im2Col(256, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1);
        AssertChoice(wide, 256, false, B, K, "1x1 256->256 on 28x28");
        AssertChoice(wide.ForImages(2), 256, false, B, K, "1x1 256->256 on 28x28, two images");
        AssertChoice(wide.ForImages(3), 256, false, B, R, "1x1 256->256 on 28x28, three images");
        AssertChoice(new Im2Col(255, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1), 256, false, B, R, "1x1 255->256 on 28x28");
        AssertChoice(wide, 256, false, B, R, "1x1 256->256 on 28x28 at 256 bits", float256: true);
        AssertChoice(new Im2Col(256, 28, 28, 1, 1, 1, 1, 1, 1, 1, 1), 256, false, B, R, "1x1 256->256 on 28x28 padded by 1");
        AssertLayerRoute(nn.Conv2d(256, 64, 1), null, torch.randn(1, 256, 20, 20), new Im2Col(256, 20, 20, 1, 1, 1, 1, 0, 0, 1, 1),
            B, ConvolutionCost.Widest256 ? R : K, "1x1 256->64 on 20x20 layer");
        // A small 1x1 call (8x8 positions, 32K multiply-adds): the small kernel under bfloat16, the GEMM under float32.
        var smallPointwise = new Im2Col(32, 8, 8, 1, 1, 1, 1, 0, 0, 1, 1);
        AssertChoice(smallPointwise, 16, false, D, K, "small 1x1");
        AssertLayerRoute(nn.Conv2d(32, 16, 1), null, torch.randn(1, 32, 8, 8), smallPointwise, D, K, "small 1x1 layer");

        // Weight-only 3x3 32->16, K = 288 > DirectConvolution.MaxReduction: never small; bfloat16, or under the float32
        // rule the packed kernels on its 64 positions and on two images (128: FewPositionsMaxPositions), and up to 28
        // images (8.3M multiply-adds: SmallWeightOnlyMaxWork), libtorch float32 on 29.
        var k288 = new Im2Col(32, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1);
        AssertChoice(k288, 16, false, B, K, "weight-only 3x3 K 288");
        AssertLayerRoute(nn.Conv2d(32, 16, 3, padding: 1), null, torch.randn(1, 32, 8, 8), k288, B, K, "weight-only 3x3 layer (64 positions, at 256 bits too)");
        AssertChoice(k288.ForImages(2), 16, false, B, K, "weight-only 3x3 K 288, two images");
        AssertLayerRoute(nn.Conv2d(32, 16, 3, padding: 1), null, torch.randn(2, 32, 8, 8), k288.ForImages(2), B, K, "weight-only 3x3 layer, two images (128 positions, at 256 bits too)");
        AssertChoice(k288.ForImages(3), 16, false, B, K, "weight-only 3x3 K 288, three images");
        AssertLayerRoute(nn.Conv2d(32, 16, 3, padding: 1), null, torch.randn(3, 32, 8, 8), k288.ForImages(3), B, ConvolutionCost.Widest256 ? R : K, "weight-only 3x3 layer, three images (192 positions: at 256 bits libtorch's route)");
        AssertChoice(k288.ForImages(28), 16, false, B, K, "weight-only 3x3 K 288, 28 images");
        AssertChoice(k288.ForImages(29), 16, false, B, R, "weight-only 3x3 K 288, 29 images");
        AssertLayerRoute(nn.Conv2d(32, 16, 3, padding: 1), null, torch.randn(29, 32, 8, 8), k288.ForImages(29), B, R, "weight-only 3x3 layer, 29 images");

        // W8A8, K = 288 at stride 1: the integer GEMM under both rules, whatever the outputs (256 or 64); the same
        // geometry weight-only goes to bfloat16 or the packed kernels (few positions).
        AssertChoice(k288, 256, true, K, K, "W8A8 K 288 x 256");
        AssertChoice(k288, 256, false, B, K, "the same geometry weight-only");
        AssertLayerRoute(nn.Conv2d(32, 256, 3, padding: 1), act, torch.randn(1, 32, 8, 8), k288, K, K, "W8A8 K 288 x 256 layer");
        AssertChoice(k288, 64, true, K, K, "W8A8 K 288 x 64");
        AssertLayerRoute(nn.Conv2d(32, 64, 3, padding: 1), act, torch.randn(1, 32, 8, 8), k288, K, K, "W8A8 K 288 x 64 layer");
        // At stride 2 too (the integer GEMM reads the stride phases): integers under both rules.
        var k288Stride2 = new Im2Col(32, 16, 16, 3, 3, 2, 2, 1, 1, 1, 1);
        AssertChoice(k288Stride2, 256, true, K, K, "W8A8 K 288 stride 2");
        AssertLayerRoute(nn.Conv2d(32, 256, 3, stride: 2, padding: 1), act, torch.randn(1, 32, 16, 16), k288Stride2, K, K, "W8A8 K 288 stride 2 layer");
        // W8A8, K = 144, 256 outputs on 6x6 positions: 1.3M multiply-adds, small both ways.
        var k144 = new Im2Col(16, 8, 8, 3, 3, 1, 1, 0, 0, 1, 1);
        AssertChoice(k144, 256, true, D, D, "W8A8 K 144");
        AssertChoice(k144, 256, true, D, K, "W8A8 K 144 at 256 bits", float256: true);
        var k144Route = ConvolutionCost.Widest256 ? K : D; // the float32 rule at 256 bits: the integer GEMM
        AssertLayerRoute(nn.Conv2d(16, 256, 3), act, torch.randn(1, 16, 8, 8), k144, D, k144Route, "W8A8 K 144 layer");
        // On 30x30 (784 positions, 29M multiply-adds) it is not small: K below IntegerMinReduction, so bfloat16; under the
        // float32 rule the integer GEMM where it runs the 512-bit VNNI kernel (MidTermIntegerPays), else simulated.
        var k144Large = new Im2Col(16, 30, 30, 3, 3, 1, 1, 0, 0, 1, 1);
        AssertChoice(k144Large, 256, true, B, K, "W8A8 K 144 on 30x30");
        AssertChoice(k144Large, 256, true, B, R, "W8A8 K 144 on 30x30 without the 512-bit VNNI kernel", vnni512: false);
        AssertChoice(k144Large, 256, false, B, R, "K 144 on 30x30 weight-only");

        // Reductions of 64-255 terms, W8A8, float32 rule, 512-bit VNNI: the integer GEMM where its rows per image (the
        // padded input's row length x output rows, in whole strips of 32) are at most 4/3 of the positions, whatever
        // the size, and elsewhere up to MidTermW8A8MaxWork. 16->64 3x3 on 56x56 (3,264 rows for 3,136 positions) at
        // batch 8: 231M multiply-adds.
        var mid = new Im2Col(16, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8);
        Assert.True(8L * mid.Positions >= 7L * new PhaseGrid(mid).RowsPerImage && (long)mid.Images * mid.Positions * 64 * mid.Rows > ConvolutionCost.MidTermW8A8MaxWork);
        AssertChoice(mid, 64, true, B, K, "W8A8 16->64 on 56x56 at batch 8");
        AssertChoice(mid, 64, true, B, R, "W8A8 16->64 on 56x56 at batch 8 without the 512-bit VNNI kernel", vnni512: false);
        // MNIST conv2 (160 rows per image for 121 positions, under 4/3) at batch 64 (35.7M) and 500 (279M).
        var conv2 = new Im2Col(16, 13, 13, 3, 3, 1, 1, 0, 0, 1, 1);
        Assert.True(3L * new PhaseGrid(conv2).RowsPerImage <= 4L * conv2.Positions && 500L * conv2.Positions * 32 * conv2.Rows > ConvolutionCost.MidTermW8A8MaxWork);
        AssertChoice(conv2.ForImages(64), 32, true, B, K, "MNIST conv2 W8A8 at batch 64");
        AssertChoice(conv2.ForImages(500), 32, true, B, K, "MNIST conv2 W8A8 at batch 500");
        // Above 4/3 (7 output rows of 19 values on 9x19: 160 rows per image for 119 positions) up to MidTermW8A8MaxWork
        // only: 548,352 multiply-adds per image = 2^26 / 122.38...: 122 images in, 123 out.
        var wideGrid = new Im2Col(16, 9, 19, 3, 3, 1, 1, 0, 0, 1, 1);
        Assert.True(3L * new PhaseGrid(wideGrid).RowsPerImage > 4L * wideGrid.Positions);
        long perImage = (long)wideGrid.Positions * 32 * wideGrid.Rows;
        Assert.True(122 * perImage <= ConvolutionCost.MidTermW8A8MaxWork && 123 * perImage > ConvolutionCost.MidTermW8A8MaxWork);
        AssertChoice(wideGrid.ForImages(122), 32, true, B, K, "W8A8 rows above 4/3 of the positions at 122 images");
        AssertChoice(wideGrid.ForImages(123), 32, true, B, R, "W8A8 rows above 4/3 of the positions at 123 images");
        // The ratio's edge, above MidTermW8A8MaxWork: 14-value rows, 4 output rows (64 rows per image for 48 positions:
        // 4/3 exactly) pay; the 9x19 images above (160 for 119) do not.
        var even = new Im2Col(16, 6, 14, 3, 3, 1, 1, 0, 0, 1, 1).ForImages(512);
        var over = wideGrid.ForImages(256);
        Assert.Equal(3L * new PhaseGrid(even).RowsPerImage, 4L * even.Positions);
        Assert.True((long)even.Images * even.Positions * 32 * even.Rows > ConvolutionCost.MidTermW8A8MaxWork);
        Assert.True((long)over.Images * over.Positions * 32 * over.Rows > ConvolutionCost.MidTermW8A8MaxWork);
        AssertChoice(even, 32, true, B, K, "W8A8 rows at 4/3 of the positions");
        AssertChoice(over, 32, true, B, R, "W8A8 rows above 4/3 of the positions");
        var midRoute = Vnni512Kernel.IsSupported ? K : R;
        AssertLayerRoute(nn.Conv2d(16, 32, 3), act, torch.randn(64, 16, 13, 13), conv2.ForImages(64), B, midRoute, "MNIST conv2 W8A8 layer at batch 64");

        // Few terms, static W8A8, above DirectMaxWork and up to FewTermW8A8MaxWork (the small kernel's up to
        // FewTermDirectMaxWork), under both rules: the stem (3 input
        // channels x 3x3, stride 2, on 224x224: 12,544 positions x 32 outputs x 27 terms, 10.8M multiply-adds) takes the
        // integer GEMM where it runs the 512-bit VNNI kernel, MNIST conv1 at batch 64 (9 terms, 6.2M) the small kernel; weight-only, libtorch; the stem at
        // batch 2 and 8 (21.7M, 86.7M), the small kernel with the 512-bit VNNI kernel (since stop 45), else libtorch; 9
        // terms on phase rows wider than the small kernel's padded-image path (1 channel on 24x3000: 3,002 values; 10.4M
        // multiply-adds), libtorch.
        var stem = new Im2Col(3, 224, 224, 3, 3, 2, 2, 1, 1, 1, 1);
        // The integer GEMM only with the 512-bit VNNI kernel (on the 256-bit vpmaddwd path libtorch's route was faster);
        // the small kernel's few-term calls whatever the integer path.
        AssertChoice(stem, 32, true, K, K, "stem W8A8");
        AssertChoice(stem, 32, true, R, R, "stem W8A8 without the 512-bit VNNI kernel", vnni512: false);
        AssertChoice(stem, 32, false, R, R, "stem weight-only");
        AssertChoice(stem.ForImages(8), 32, true, D, D, "stem W8A8 at batch 8");
        AssertChoice(stem.ForImages(2), 32, true, D, D, "stem W8A8 at batch 2 (21.7M: above FewTermW8A8MaxWork)");
        AssertChoice(stem.ForImages(8), 32, true, R, R, "stem W8A8 at batch 8 without the 512-bit VNNI kernel", vnni512: false);
        AssertChoice(stem.ForImages(8), 32, false, R, R, "stem weight-only at batch 8");
        // Weight-only calls of 24-63 terms of two or more images take the small kernel up to FewTermWeightOnlyMaxWork
        // under the float32 rule: the stem at batch 2 (21.7M), not at 1 or 3 (32.5M); a Conv1d 16->64 k3 over 1,000 steps
        // at batch 8 (24.6M); the edge, 32 terms (a Conv1d of 16 channels, two taps) onto 1,024 steps in two images into
        // 384 outputs, 24 Mi; not one image of the same work; not 23 or 72 terms, not pointwise, not static W8A8 without
        // the 512-bit VNNI kernel.
        AssertChoice(stem.ForImages(2), 32, false, R, D, "stem weight-only at batch 2");
        AssertChoice(stem.ForImages(3), 32, false, R, R, "stem weight-only at batch 3");
        AssertChoice(new Im2Col(16, 1, 1000, 1, 3, 1, 1, 0, 1, 1, 1, images: 8), 64, false, R, D, "Conv1d 16->64 k3 over 1,000 steps at batch 8");
        var edge = new Im2Col(16, 1, 1025, 1, 2, 1, 1, 0, 0, 1, 1, images: 2);
        Assert.Equal(24L << 20, 2L * edge.Positions * 384 * edge.Rows);
        Assert.Equal(ConvolutionCost.FewTermWeightOnlyMaxWork, 2L * edge.Positions * 384 * edge.Rows);
        AssertChoice(edge, 384, false, R, D, "32 terms, two images, 24 Mi multiply-adds");
        AssertChoice(edge, 385, false, R, R, "32 terms, two images, above 24 Mi multiply-adds");
        AssertChoice(edge.ForImages(1), 768, false, R, R, "32 terms, one image, 24 Mi multiply-adds");
        AssertChoice(new Im2Col(1, 1, 1025, 1, 23, 1, 1, 0, 11, 1, 1, images: 2), 1024, false, R, D, "23 terms (a Conv1d of 23 taps), 48.3M: FewTermDirectMaxWork");
        AssertChoice(new Im2Col(8, 112, 112, 3, 3, 1, 1, 1, 1, 1, 1), 32, false, B, R, "72 terms: not few");
        AssertChoice(new Im2Col(48, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1), 96, false, R, R, "1x1 48->96 on 56x56 (14.5M): pointwise, not the small kernel");
        AssertChoice(stem.ForImages(2), 32, true, R, R, "stem W8A8 at batch 2 without the 512-bit VNNI kernel", vnni512: false);
        // 23 terms (the integer GEMM's few-term calls start at 24) above FewTermDirectMaxWork: libtorch's route.
        var fewTerms = new Im2Col(23, 224, 224, 1, 1, 2, 2, 0, 0, 1, 1).ForImages(64);
        Assert.True((long)fewTerms.Images * fewTerms.Positions * 32 * fewTerms.Rows > ConvolutionCost.FewTermDirectMaxWork);
        AssertChoice(fewTerms, 32, true, R, R, "23 terms W8A8 above FewTermDirectMaxWork");
        var stem8Route = Vnni512Kernel.IsSupported ? D : R;
        AssertLayerRoute(nn.Conv2d(3, 32, 3, stride: 2, padding: 1), act, torch.randn(8, 3, 224, 224), stem.ForImages(8), stem8Route, stem8Route, "stem W8A8 layer at batch 8");
        var stemRoute = Vnni512Kernel.IsSupported ? K : R;
        AssertLayerRoute(nn.Conv2d(3, 32, 3, stride: 2, padding: 1), act, torch.randn(1, 3, 224, 224), stem, stemRoute, stemRoute, "stem W8A8 layer");
        var mnist64 = new Im2Col(1, 28, 28, 3, 3, 1, 1, 0, 0, 1, 1).ForImages(64);
        AssertChoice(mnist64, 16, true, D, D, "MNIST conv1 W8A8 at batch 64");
        AssertChoice(mnist64, 16, true, D, D, "MNIST conv1 W8A8 at batch 64 without the 512-bit VNNI kernel", vnni512: false);
        AssertChoice(mnist64, 16, false, R, D, "MNIST conv1 weight-only at batch 64");
        AssertLayerRoute(nn.Conv2d(1, 16, 3), act, torch.randn(64, 1, 28, 28), mnist64, D, D, "MNIST conv1 W8A8 layer at batch 64");
        // The small kernel's few-term calls go up to FewTermDirectMaxWork: MNIST conv1 at batch 500 (48.7M), and the edge
        // (97,344 multiply-adds per image: 689 images in, 690 out); static W8A8 under both rules, weight-only under the
        // float32 rule (libtorch under the bfloat16 rule).
        var mnist = new Im2Col(1, 28, 28, 3, 3, 1, 1, 0, 0, 1, 1);
        long perMnistImage = (long)mnist.Positions * 16 * mnist.Rows;
        Assert.True(689 * perMnistImage <= ConvolutionCost.FewTermDirectMaxWork && 690 * perMnistImage > ConvolutionCost.FewTermDirectMaxWork);
        AssertChoice(mnist.ForImages(500), 16, true, D, D, "MNIST conv1 W8A8 at batch 500");
        AssertChoice(mnist.ForImages(689), 16, true, D, D, "MNIST conv1 W8A8 at batch 689");
        AssertChoice(mnist.ForImages(690), 16, true, R, R, "MNIST conv1 W8A8 at batch 690");
        AssertChoice(mnist.ForImages(500), 16, false, R, D, "MNIST conv1 weight-only at batch 500");
        AssertChoice(mnist.ForImages(689), 16, false, R, D, "MNIST conv1 weight-only at batch 689");
        AssertChoice(mnist.ForImages(690), 16, false, R, R, "MNIST conv1 weight-only at batch 690");
        AssertChoice(new Im2Col(1, 24, 3000, 3, 3, 1, 1, 1, 1, 1, 1), 16, false, R, R, "weight-only K 9 on 3,002-value rows");
        AssertLayerRoute(nn.Conv2d(1, 16, 3), null, torch.randn(64, 1, 28, 28), mnist64, R, D, "MNIST conv1 weight-only layer at batch 64");
        AssertChoice(new Im2Col(1, 24, 3000, 3, 3, 1, 1, 1, 1, 1, 1), 16, true, R, R, "W8A8 K 9 on 3,002-value rows");
        // A pointwise few-term W8A8 call (1x1 16->64 on 100x100, 10.2M multiply-adds) keeps the pointwise rules.
        AssertChoice(new Im2Col(16, 100, 100, 1, 1, 1, 1, 0, 0, 1, 1), 64, true, R, K, "W8A8 1x1 16->64");

        // Inputs the kernels do not take: libtorch whatever the rule.
        AssertLayerRoute(nn.Conv2d(32, 16, 3, padding: 1), null, torch.randn(1, 32, 8, 8).to(ScalarType.Float64), null, R, R, "float64 input");
        AssertLayerRoute(nn.Conv2d(32, 256, 3, padding: 1), act, torch.randn(1, 32, 8, 8).to(ScalarType.Float64), null, R, R, "W8A8 float64 input");
        using (enable_grad())
            AssertLayerRoute(nn.Conv2d(32, 16, 3, padding: 1), null, torch.randn(1, 32, 8, 8).requires_grad_(), null, R, R, "input requiring grad");
    }
}

/// <summary>
/// <see cref="Im2Col.PackStrip"/> (the packed GEMM's operand: every row of the column matrix over a run of positions,
/// lanes past the run zero) equals libtorch's <c>unfold</c> exactly, with masked loads and gathers (AVX2, whole 8-lane
/// vectors: strips of one or two runs per chunk only, and strips that mix the kinds), row
/// by row (other widths, 128 bits, scalar, a kernel whose taps x lanes exceed the gather table) and for pointwise
/// geometries, on every geometry of <see cref="ConvolutionKernelTests"/> and a 7x7 kernel, each strip of each width
/// including the last, partial one.
/// </summary>
[Collection(SimdWidthCollection.Name)]
public unsafe class Im2ColPackStripTests
{
    [Fact]
    public void PackedStripsEqualLibtorchUnfoldOnEveryPath()
    {
        using var scope = NewDisposeScope();
        int[] sevenBySeven = [2, 12, 11, 7, 7, 1, 2, 3, 3, 1, 1];
        Assert.True(49 * 64 > Im2Col.GatherTableLanes && 49 * 32 <= Im2Col.GatherTableLanes);
        foreach (var g in ConvolutionKernelTests.Geometries.Append(sevenBySeven))
        {
            var u = ConvolutionKernelTests.Unfolding(g);
            torch.manual_seed(g.Sum() + 1);
            var image = torch.randn(g[0], g[1], g[2]);
            var expected = ConvolutionKernelTests.LibtorchColumns(image, g).contiguous().data<float>().ToArray();
            var pixels = image.data<float>().ToArray();
            foreach (int maxBits in new[] { 512, 256, 128, 0 })
            {
                using var cap = new SimdWidthCap(maxBits);
                foreach (int width in new[] { 8, 12, 16, 32, 64 })
                {
                    var strip = new float[u.Rows * width];
                    for (int p0 = 0; p0 < u.Positions; p0 += width)
                    {
                        int valid = Math.Min(width, u.Positions - p0);
                        Array.Fill(strip, float.NaN);
                        fixed (float* px = pixels) fixed (float* ps = strip) u.PackStrip(px, p0, valid, width, ps);
                        for (int k = 0; k < u.Rows; k++)
                        {
                            for (int j = 0; j < width; j++)
                            {
                                float want = j < valid ? expected[k * u.Positions + p0 + j] : 0f;
                                if (strip[k * width + j] != want && !(float.IsNaN(want) && float.IsNaN(strip[k * width + j])))
                                    Assert.Fail($"[{string.Join(",", g)}] {maxBits} bits, width {width}, strip at {p0}: row {k} lane {j} is {strip[k * width + j]}, libtorch {want}");
                            }
                        }
                    }
                }
            }
        }
    }
}
