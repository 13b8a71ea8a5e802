using QuantSharp.Kernels;
using QuantSharp.Modules;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;
using static QuantSharp.Tests.Kernels.ConvolutionKernelTests;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// The depthwise route (<see cref="DepthwiseConvolution"/>) equals the dequantize + libtorch route within float rounding
/// for every weight format the layers take, on every vector width, the weight read plane by plane (the bits of the weight
/// dequantized whole) or dequantized whole first, over strides, padding (wider than the kernel),
/// dilation, channel multipliers, 3x3 to 7x7 taps, rows narrower than a vector, of whole vectors and of several,
/// outputs of one position, Conv1d (over millions of steps at stride 2 too), unbatched and non-contiguous inputs; the
/// kernel writes every output once and nothing past the output; static W8A8 through it equals the simulated path (each
/// plane fake-quantized once copied, with a zero point inside the type's range and beyond it), and so does dynamic W8A8;
/// the measured rule takes it at its edges, grouped layers that are not depthwise never take it, and inputs that need
/// gradients keep libtorch's route.
/// </summary>
[Collection(SimdWidthCollection.Name)]
public class DepthwiseConvolutionTests
{
    private static (nn.Module<Tensor, Tensor> Conv, Tensor[] Inputs)[] Cases() =>
    [
        (nn.Conv2d(8, 8, 3, padding: 1, groups: 8), [torch.randn(2, 8, 9, 11), torch.randn(8, 7, 8), torch.randn(2, 11, 8, 9).permute(0, 2, 3, 1)]),
        // A channel multiplier of 2, stride 2 (phases), and of 3 without bias.
        (nn.Conv2d(6, 12, 3, stride: 2, padding: 1, groups: 6), [torch.randn(2, 6, 17, 15)]),
        (nn.Conv2d(2, 6, 3, groups: 2, bias: false), [torch.randn(1, 2, 10, 40)]),
        (nn.Conv2d(4, 4, (3, 5), stride: (2, 1), padding: (3, 2), dilation: (1, 2), groups: 4), [torch.randn(1, 4, 9, 11)]),
        (nn.Conv2d(3, 3, 3, stride: 3, groups: 3, bias: false), [torch.randn(1, 3, 20, 19)]),
        // 7x7 taps (ConvNeXt) on narrow rows (the wide-grid run) and on rows of several vectors.
        (nn.Conv2d(5, 5, 7, padding: 3, groups: 5), [torch.randn(2, 5, 14, 14), torch.randn(1, 5, 6, 70)]),
        // Rows of exactly 4 vectors at 512 bits (64), of 4 vectors and a part (67), of many (150).
        (nn.Conv2d(2, 2, 3, padding: 1, groups: 2), [torch.randn(1, 2, 3, 64), torch.randn(2, 2, 4, 67), torch.randn(1, 2, 5, 150)]),
        // One output position per plane; padding wider than the kernel reaches.
        (nn.Conv2d(4, 4, 3, groups: 4), [torch.randn(3, 4, 3, 3)]),
        (nn.Conv2d(3, 3, 3, padding: 4, groups: 3), [torch.randn(1, 3, 2, 2)]),
        (nn.Conv1d(6, 6, 5, padding: 2, groups: 6), [torch.randn(3, 6, 300), torch.randn(6, 17), torch.randn(2, 21, 6).transpose(1, 2)]),
        (nn.Conv1d(4, 8, 3, stride: 2, padding: 1, dilation: 2, groups: 4), [torch.randn(2, 4, 41)]),
    ];

    [Theory]
    [InlineData(512)]
    [InlineData(256)]
    [InlineData(128)]
    [InlineData(0)]
    public void DepthwiseRouteMatchesDequantizeAndLibtorchForEveryFormatGeometryAndWidth(int maxBits)
    {
        using var cap = new SimdWidthCap(maxBits);
        torch.manual_seed(41);
        ForBothWeightReads(() => ForBothLayouts(() => AssertRouteMatchesReference(Cases(), ConvolutionRoute.Depthwise, maxBits)));
    }

    /// <summary>
    /// The kernel on a quantized weight (for one image each work item dequantizing the rows of its planes' channels, for
    /// more each thread the whole weight) gives the bits it gives on that weight dequantized whole, for every weight
    /// format, a channel multiplier of 2, 3x3 and 1x4 taps, one image and several, over threads; a second weight of the
    /// same shape right after gives its own results.
    /// </summary>
    [Theory]
    [InlineData(512)]
    [InlineData(256)]
    [InlineData(128)]
    [InlineData(0)]
    public unsafe void QuantizedWeightGivesTheBitsOfItsDequantizedCopy(int maxBits)
    {
        using var cap = new SimdWidthCap(maxBits);
        var random = new Random(47);
        Im2Col[] geometries =
        [
            new Im2Col(24, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(3),
            new Im2Col(40, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1),             // one image: items of 2-3 channels
            new Im2Col(10, 9, 30, 1, 4, 1, 2, 0, 1, 1, 1).ForImages(2), // 4 taps: the packed formats too
            new Im2Col(6, 9, 30, 1, 4, 1, 2, 0, 1, 1, 1),
        ];
        foreach (var u in geometries)
        foreach (var format in Enum.GetValues<WeightFormat>())
        {
            int taps = u.KernelH * u.KernelW;
            if (WeightView.IsPacked(format) && taps % 2 != 0) continue;
            AssertQuantizedWeightGivesItsDequantizedBits(u, 2 * u.Channels, u.Channels, format, taps, random, $"over {u.Images} image(s), width {maxBits}",
                &DepthwiseConvolution.Run, &DepthwiseConvolution.Run);
        }
    }

    [Theory]
    [InlineData(512)]
    [InlineData(256)]
    [InlineData(128)]
    [InlineData(0)]
    public unsafe void KernelWritesEveryOutputOnceAndNothingPastTheOutput(int maxBits)
    {
        using var cap = new SimdWidthCap(maxBits);
        // 3 channels, a multiplier of 2 (plane by plane).
        AssertEveryOutputOnceAndNothingPast(3, 6, 3, 44, &DepthwiseConvolution.Run);
        // One output per channel, both ways: 19 channels (a part block at every width) and 8 (whole 8-lane transposes).
        ForBothLayouts(() =>
        {
            AssertEveryOutputOnceAndNothingPast(19, 19, 19, 45, &DepthwiseConvolution.Run);
            AssertEveryOutputOnceAndNothingPast(8, 8, 8, 46, &DepthwiseConvolution.Run);
        });
    }

    /// <summary>
    /// With the channels in lanes (<see cref="DepthwiseConvolution.ForcedLanes"/>) the kernel gives the bits it gives
    /// plane by plane: the same multiply-adds per value in the same order. Channel counts that leave a part block at
    /// every width (1, 5, 17, 33, 200) and whole 8-lane blocks (8, 24); one image, three and eight (work items of
    /// several blocks, whose weights are loaded once per block); 1x1, 3x3, 5x5, 7x7 and 3x5 taps,
    /// strides 1-3, padding 0-4 (wider than the kernel reaches), dilation 2, planes narrower and wider than the
    /// transposes' 8 positions, a Conv1d; a float and a quantized weight (int8 with zero points, and int4 in groups of 2
    /// where the taps are even), with and without bias, and a static W8A8 input with a zero point inside the type's range
    /// and beyond it.
    /// </summary>
    [Theory]
    [InlineData(512)]
    [InlineData(256)]
    [InlineData(128)]
    [InlineData(0)]
    public unsafe void ChannelsInLanesGiveThePlaneByPlaneBits(int maxBits)
    {
        using var cap = new SimdWidthCap(maxBits);
        var random = new Random(48);
        Im2Col[] geometries =
        [
            new Im2Col(17, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1),
            new Im2Col(200, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), // work items of several blocks at every width
            new Im2Col(33, 14, 14, 5, 5, 1, 1, 2, 2, 1, 1).ForImages(3),
            new Im2Col(24, 14, 14, 3, 3, 2, 2, 1, 1, 1, 1).ForImages(3),
            new Im2Col(5, 28, 28, 5, 5, 2, 2, 2, 2, 1, 1),
            new Im2Col(8, 9, 11, 3, 5, 2, 1, 3, 2, 1, 2).ForImages(3),
            new Im2Col(1, 14, 14, 7, 7, 1, 1, 3, 3, 1, 1),
            new Im2Col(17, 2, 2, 3, 3, 1, 1, 4, 4, 1, 1).ForImages(3),
            new Im2Col(5, 20, 19, 3, 3, 3, 3, 0, 0, 1, 1),
            new Im2Col(24, 6, 6, 1, 1, 1, 1, 0, 0, 1, 1).ForImages(3),
            new Im2Col(17, 1, 40, 1, 4, 1, 1, 0, 2, 1, 1).ForImages(3), // a Conv1d: one row of 40 steps
            // Stride 1 onto rows of 8, 9 and 56 (at 512 bits row by row, in blocks of eight ending at the row's end).
            new Im2Col(16, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(2),
            new Im2Col(20, 5, 9, 3, 3, 1, 1, 1, 1, 1, 1),
            new Im2Col(16, 9, 56, 7, 7, 1, 1, 3, 3, 1, 1).ForImages(2),
        ];
        InputFakeQuantization?[] inputs = [null, new InputFakeQuantization(0.02f, 50f, 120f, 0f, 255f), new InputFakeQuantization(0.01f, 100f, -200f, -128f, 127f)];
        foreach (var u in geometries)
        {
            int taps = u.KernelH * u.KernelW, count = u.Images * u.Channels * u.Positions;
            float[] x = Enumerable.Range(0, u.Images * u.ImageSize).Select(_ => (float)random.NextDouble() * 4 - 2).ToArray();
            float[] w = Enumerable.Range(0, u.Channels * taps).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
            float[] bias = Enumerable.Range(0, u.Channels).Select(_ => (float)random.NextDouble()).ToArray();
            var formats = taps % 2 == 0 ? new[] { WeightFormat.Int8, WeightFormat.Int4 } : [WeightFormat.Int8];
            foreach (var input in inputs)
            foreach (bool withBias in new[] { true, false })
            {
                string what = $"{u.Channels} channels {u.Height}x{u.Width} {u.KernelH}x{u.KernelW} over {u.Images} image(s), input {input?.ZeroPoint.ToString() ?? "float"}, bias {withBias}, width {maxBits}";
                fixed (float* px = x, pw = w, pb = bias)
                {
                    nint ax = (nint)px, aw = (nint)pw, ab = withBias ? (nint)pb : 0;
                    AssertLanesGivePlaneBits(y => DepthwiseConvolution.Run((float*)aw, u.Channels, u.Channels, u, (float*)ax, (float*)ab, (float*)y, input), count, what + ", float weight");
                    foreach (var format in formats)
                    {
                        using var weight = new PinnedWeight(format, u.Channels, taps, format == WeightFormat.Int4 ? 2 : taps, zeroPoints: true, seed: 5);
                        var view = weight.View;
                        AssertLanesGivePlaneBits(y => DepthwiseConvolution.Run(view, u.Channels, u, (float*)ax, (float*)ab, (float*)y, input), count, $"{what}, {format} weight");
                    }
                }
            }
        }
    }

    /// <summary>Runs <paramref name="check"/> with the channels in lanes and plane by plane (<see cref="DepthwiseConvolution.ForcedLanes"/>), a failure naming the layout.</summary>
    internal static void ForBothLayouts(Action check) =>
        ForBothSettings(lanes => DepthwiseConvolution.ForcedLanes = lanes, () => DepthwiseConvolution.ForcedLanes = null,
            lanes => lanes ? "channels in lanes" : "plane by plane", check);

    /// <summary><paramref name="run"/> (given the output's address) with the channels in lanes gives, bit for bit, its output plane by plane.</summary>
    private static unsafe void AssertLanesGivePlaneBits(Action<nint> run, int count, string what)
    {
        float[] planes = new float[count], lanes = Enumerable.Repeat(float.NaN, count).ToArray();
        fixed (float* pp = planes, pl = lanes)
        {
            DepthwiseConvolution.ForcedLanes = false;
            try { run((nint)pp); } finally { DepthwiseConvolution.ForcedLanes = null; }
            DepthwiseConvolution.ForcedLanes = true;
            try { run((nint)pl); } finally { DepthwiseConvolution.ForcedLanes = null; }
        }
        for (int i = 0; i < count; i++)
            Assert.True(BitConverter.SingleToInt32Bits(planes[i]) == BitConverter.SingleToInt32Bits(lanes[i]),
                $"{what}: output {i} is {lanes[i]:R} with the channels in lanes, {planes[i]:R} plane by plane");
    }

    [Fact]
    public unsafe void QuantizedWeightsAreReadUpToAnItemsScratchAndMustHaveOneRowOfTapsPerOutput()
    {
        // Up to 2^18 values (a 960-channel 3x3 layer: 8,640; a 768-channel Conv1d of 128 taps: 98,304).
        Assert.True(DepthwiseConvolution.ReadsQuantized(2048, 128));
        Assert.False(DepthwiseConvolution.ReadsQuantized(2049, 128));
        using var weight = new PinnedWeight(WeightFormat.Int8, 8, 4, 4, zeroPoints: false, seed: 3);
        var view = weight.View;
        var u = new Im2Col(4, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1);
        float[] buffer = new float[1024];
        fixed (float* p = buffer)
        {
            float* pointer = p;
            // Rows of 4 values for a 3x3 kernel.
            var error = Assert.Throws<ArgumentException>(() => DepthwiseConvolution.Run(view, 4, u, pointer, null, pointer));
            Assert.Contains("one row of 9 taps per output", error.Message);
        }
    }

    [Fact]
    public void AStridedConv1dOverMillionsOfStepsCopiesItsLastRowOffTheStack()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(45);
        // The stride-2 gather reads a value past a row, so a plane's last row is copied with a value to spare; a Conv1d's
        // row is its whole sequence (12 MB here), more than a thread's stack holds (it overflowed with the row on the stack).
        using var layer = (QuantizedConv)QuantizedModules.Quantize(nn.Conv1d(2, 2, 3, stride: 2, padding: 1, groups: 2), QuantizationRecipe.Int8WeightOnly().BaseWeights);
        var x = torch.randn(1, 2, 3_000_001);
        var actual = layer.Kernel(x, ConvolutionRoute.Depthwise);
        Assert.NotNull(actual);
        AssertClose(layer.Forward(x, ConvolutionRoute.Reference), actual, 1e-5, "Conv1d over 3,000,001 steps at stride 2");
    }

    [Fact]
    public void W8A8ThroughTheDepthwiseRouteEqualsTheSimulatedPath()
    {
        torch.manual_seed(42);
        // Zeros stay zero where the zero point is a code (each plane quantized in place once laid out); beyond the type's
        // range rows, or the strided plane, are quantized before they are laid out. Dynamic W8A8 is quantized before the kernel.
        ForBothWeightReads(() => AssertW8A8MatchesSimulated(
        [
            (nn.Conv2d(8, 8, 3, padding: 1, groups: 8), torch.randn(2, 8, 14, 14)),            // stride 1, padded
            (nn.Conv2d(8, 8, 3, groups: 8), torch.randn(1, 8, 9, 30)),                          // no padding: one run per plane
            (nn.Conv2d(6, 12, 3, stride: 2, padding: 1, groups: 6), torch.randn(2, 6, 17, 15)), // strided
            (nn.Conv2d(4, 4, (3, 3), stride: (2, 1), padding: (1, 1), groups: 4), torch.randn(1, 4, 11, 20)), // strided rows only
            (nn.Conv1d(4, 4, 3, padding: 1, groups: 4), torch.randn(2, 4, 50)),
        ], ConvolutionRoute.Depthwise, nn.Conv2d(8, 8, 3, padding: 1, groups: 8), torch.randn(2, 8, 14, 14)));
    }

    [Fact]
    public void ChannelsGoInLanesWithMoreThan3x3TapsAStrideOrNarrowRowsWhereATileFitsACoresCache()
    {
        // 3x3 taps at stride 1: output rows narrower than 24 and than two vectors (16 at 256 bits, 8 at 128).
        Assert.True(DepthwiseConvolution.TakesLanes(new Im2Col(192, 23, 23, 3, 3, 1, 1, 1, 1, 1, 1), 16));
        Assert.False(DepthwiseConvolution.TakesLanes(new Im2Col(192, 24, 24, 3, 3, 1, 1, 1, 1, 1, 1), 16));
        Assert.True(DepthwiseConvolution.TakesLanes(new Im2Col(192, 15, 15, 3, 3, 1, 1, 1, 1, 1, 1), 8));
        Assert.False(DepthwiseConvolution.TakesLanes(new Im2Col(192, 16, 16, 3, 3, 1, 1, 1, 1, 1, 1), 8));
        Assert.True(DepthwiseConvolution.TakesLanes(new Im2Col(768, 1, 16, 1, 4, 1, 1, 0, 3, 1, 1), 16)); // Mamba's Conv1d: 19 steps out
        Assert.True(DepthwiseConvolution.TakesLanes(new Im2Col(192, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1), 4));
        Assert.False(DepthwiseConvolution.TakesLanes(new Im2Col(192, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1), 4));
        Assert.False(DepthwiseConvolution.TakesLanes(new Im2Col(64, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1), 16));
        Assert.False(DepthwiseConvolution.TakesLanes(new Im2Col(32, 112, 112, 3, 3, 1, 1, 1, 1, 1, 1), 16));
        // Planes of 48 rows of 48 or more from 4 images at 512 bits, where the padded tile is at most 256 KiB (62x62, not
        // 63x63).
        Assert.True(DepthwiseConvolution.TakesLanes(new Im2Col(144, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(4), 16));
        Assert.True(DepthwiseConvolution.TakesLanes(new Im2Col(144, 62, 62, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 16));
        Assert.False(DepthwiseConvolution.TakesLanes(new Im2Col(144, 63, 63, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 16));
        Assert.True(DepthwiseConvolution.TakesLanes(new Im2Col(144, 48, 48, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 16));
        Assert.False(DepthwiseConvolution.TakesLanes(new Im2Col(144, 47, 47, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 16));
        Assert.False(DepthwiseConvolution.TakesLanes(new Im2Col(144, 47, 60, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 16));
        Assert.False(DepthwiseConvolution.TakesLanes(new Im2Col(144, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(3), 16));
        Assert.False(DepthwiseConvolution.TakesLanes(new Im2Col(144, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 8));
        Assert.False(DepthwiseConvolution.TakesLanes(new Im2Col(192, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 16));
        Assert.False(DepthwiseConvolution.TakesLanes(new Im2Col(32, 112, 112, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 16));
        // More taps or a stride: rows of any width.
        Assert.True(DepthwiseConvolution.TakesLanes(new Im2Col(96, 56, 56, 7, 7, 1, 1, 3, 3, 1, 1), 16));
        Assert.True(DepthwiseConvolution.TakesLanes(new Im2Col(96, 112, 112, 3, 3, 2, 2, 1, 1, 1, 1), 16));
        // A Conv1d by its row alone: 19 steps out in lanes, 100 not, nor Conformer's 31 taps over 400 steps or a stride.
        Assert.False(DepthwiseConvolution.TakesLanes(new Im2Col(144, 1, 400, 1, 31, 1, 1, 0, 15, 1, 1), 16));
        Assert.False(DepthwiseConvolution.TakesLanes(new Im2Col(512, 1, 100, 1, 3, 1, 1, 0, 1, 1, 1), 16));
        Assert.False(DepthwiseConvolution.TakesLanes(new Im2Col(64, 1, 16000, 1, 3, 1, 2, 0, 1, 1, 1), 16));
        Assert.True(DepthwiseConvolution.TakesLanes(new Im2Col(64, 1, 40, 1, 3, 1, 2, 0, 1, 1, 1), 16)); // 20 steps out
        Assert.True(DepthwiseConvolution.TakesLanes(new Im2Col(64, 1, 16, 1, 31, 1, 1, 0, 15, 1, 1), 16)); // 16 steps out
        // A tile of up to 1 MiB: 126x126 padded to 128 x 128 x 16 lanes x 4 bytes, not 127x127 (129 x 129).
        Assert.True(DepthwiseConvolution.TakesLanes(new Im2Col(96, 126, 126, 3, 3, 2, 2, 1, 1, 1, 1), 16));
        Assert.False(DepthwiseConvolution.TakesLanes(new Im2Col(96, 127, 127, 3, 3, 2, 2, 1, 1, 1, 1), 16));
        Assert.True(DepthwiseConvolution.TakesLanes(new Im2Col(96, 127, 127, 3, 3, 2, 2, 1, 1, 1, 1), 8));
    }

    [Fact]
    public void MeasuredRuleTakesTheDepthwiseKernelAtItsEdgesAndNotForOtherGroupsOrGradients()
    {
        using var scope = NewDisposeScope();
        const ConvolutionRoute D = ConvolutionRoute.Depthwise, R = ConvolutionRoute.Reference;
        // Plane by plane (a channel multiplier above 1, the last argument false), one image: at stride 1 always, else onto 14x14 outputs and more (28 and 26 wide at stride 2: 14 and 13 a side),
        // or where the strided rows are split by masked loads (AVX-512, phase rows up to 16 values).
        Assert.True(ConvolutionCost.DepthwisePays(new Im2Col(960, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1), false, false));
        Assert.True(ConvolutionCost.DepthwisePays(new Im2Col(384, 14, 14, 7, 7, 1, 1, 3, 3, 1, 1), false, false));
        Assert.True(ConvolutionCost.DepthwisePays(new Im2Col(192, 28, 28, 3, 3, 2, 2, 1, 1, 1, 1), false, false));
        foreach (bool paired in new[] { false, true })
        {
            DirectConvolution.ForcedPairedRows = paired;
            try
            {
                Assert.Equal(paired, ConvolutionCost.DepthwisePays(new Im2Col(192, 26, 26, 3, 3, 2, 2, 1, 1, 1, 1), false, false));
                Assert.Equal(paired, ConvolutionCost.DepthwisePays(new Im2Col(576, 14, 14, 3, 3, 2, 2, 1, 1, 1, 1), false, false)); // 7x7 outputs
                Assert.Equal(paired, ConvolutionCost.DepthwisePays(new Im2Col(576, 14, 14, 3, 3, 2, 2, 1, 1, 1, 1), true, false));
                // Forced or not, only rows it can write (phase rows up to 16 values: 31 wide makes 17).
                Assert.False(DirectConvolution.WritesPairedRows(new Im2Col(8, 31, 31, 3, 3, 2, 2, 1, 1, 1, 1)));
            }
            finally
            {
                DirectConvolution.ForcedPairedRows = null;
            }
        }
        // The rule's own answer: masked loads where AVX-512 is in use, phase rows of up to 16 values (30 wide: 16 a row).
        Assert.Equal(Simd.Use512 && System.Runtime.Intrinsics.X86.Avx512F.IsSupported, DirectConvolution.WritesPairedRows(new Im2Col(8, 30, 30, 3, 3, 2, 2, 1, 1, 1, 1)));
        Assert.False(DirectConvolution.WritesPairedRows(new Im2Col(8, 31, 31, 3, 3, 2, 2, 1, 1, 1, 1)));
        Assert.False(DirectConvolution.WritesPairedRows(new Im2Col(8, 30, 30, 3, 3, 1, 1, 1, 1, 1, 1)));
        // More images: 28x28 outputs and more, up to 3x3 taps (55 and 54 wide at stride 2: 28 and 27 outputs a side).
        Assert.True(ConvolutionCost.DepthwisePays(new Im2Col(192, 55, 55, 3, 3, 2, 2, 1, 1, 1, 1).ForImages(8), false, false));
        Assert.False(ConvolutionCost.DepthwisePays(new Im2Col(192, 54, 54, 3, 3, 2, 2, 1, 1, 1, 1).ForImages(8), false, false));
        // At stride 1 from 14x14 (stop 37's row copies), at stride 2 not.
        Assert.True(ConvolutionCost.DepthwisePays(new Im2Col(384, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(2), false, false));
        Assert.False(ConvolutionCost.DepthwisePays(new Im2Col(384, 13, 13, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), false, false));
        Assert.False(ConvolutionCost.DepthwisePays(new Im2Col(192, 28, 28, 3, 3, 2, 2, 1, 1, 1, 1).ForImages(8), false, false));
        Assert.False(ConvolutionCost.DepthwisePays(new Im2Col(96, 28, 28, 5, 5, 1, 1, 2, 2, 1, 1).ForImages(8), false, false));
        Assert.True(ConvolutionCost.DepthwisePays(new Im2Col(144, 56, 56, 3, 3, 2, 2, 1, 1, 1, 1).ForImages(8), false, false));
        // Static W8A8 also onto 14x14 and more at stride 2 for more images.
        Assert.True(ConvolutionCost.DepthwisePays(new Im2Col(960, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1), true, false));
        Assert.True(ConvolutionCost.DepthwisePays(new Im2Col(384, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), true, false));
        Assert.False(ConvolutionCost.DepthwisePays(new Im2Col(384, 13, 13, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), true, false));
        Assert.True(ConvolutionCost.DepthwisePays(new Im2Col(192, 28, 28, 3, 3, 2, 2, 1, 1, 1, 1).ForImages(8), true, false)); // 14x14 at stride 2
        Assert.False(ConvolutionCost.DepthwisePays(new Im2Col(384, 14, 14, 7, 7, 1, 1, 3, 3, 1, 1).ForImages(8), true, false));

        // One output per channel in lanes (the last argument): one image or up to 3x3 taps always (cells above that
        // stay on libtorch's route plane by plane), more taps over several images from 256 bits (emulated AVX2: faster
        // than libtorch's AVX2 route), not at 128.
        Assert.True(ConvolutionCost.DepthwisePays(new Im2Col(192, 28, 28, 3, 3, 2, 2, 1, 1, 1, 1).ForImages(8), false, true));
        Assert.True(ConvolutionCost.DepthwisePays(new Im2Col(576, 14, 14, 3, 3, 2, 2, 1, 1, 1, 1), true, true));
        Assert.True(ConvolutionCost.DepthwisePays(new Im2Col(672, 14, 14, 5, 5, 1, 1, 2, 2, 1, 1), false, true));
        Assert.Equal(DepthwiseConvolution.LaneWidth >= 8, ConvolutionCost.DepthwisePays(new Im2Col(96, 28, 28, 5, 5, 1, 1, 2, 2, 1, 1).ForImages(8), false, true));
        Assert.Equal(DepthwiseConvolution.LaneWidth >= 8, ConvolutionCost.DepthwisePays(new Im2Col(384, 14, 14, 7, 7, 1, 1, 3, 3, 1, 1).ForImages(8), true, true));
        Assert.Equal(DepthwiseConvolution.LaneWidth >= 8, ConvolutionCost.DepthwisePays(new Im2Col(1152, 7, 7, 5, 5, 1, 1, 2, 2, 1, 1).ForImages(2), false, true));
        Assert.Equal(Float512.IsSupported ? 16 : Float256.IsSupported ? 8 : Float128.IsSupported ? 4 : 1, DepthwiseConvolution.LaneWidth);
        // Not in lanes (3x3 taps at stride 1 onto rows of 150), the rule plane by plane.
        Assert.False(ConvolutionCost.DepthwisePays(new Im2Col(64, 1, 150, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), false, true));

        // Conv1d: always (its plane is one row), even over few steps and with many taps.
        Assert.True(ConvolutionCost.DepthwisePays(new Im2Col(768, 1, 16, 1, 4, 1, 1, 0, 3, 1, 1).ForImages(8), false, false));
        Assert.True(ConvolutionCost.DepthwisePays(new Im2Col(144, 1, 400, 1, 31, 1, 1, 0, 15, 1, 1).ForImages(8), false, false));
        // A Conv2d over one row is no Conv1d: 3x3 taps onto 1 x 150 positions at batch 8 stay on libtorch's route.
        Assert.False(ConvolutionCost.DepthwisePays(new Im2Col(64, 1, 150, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), false, false));

        torch.manual_seed(43);
        var spec = QuantizationRecipe.Int8WeightOnly().BaseWeights;
        using var depthwise = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(32, 32, 3, padding: 1, groups: 32), spec);
        Assert.Equal(D, depthwise.Route(torch.randn(1, 32, 112, 112)));
        Assert.Equal(D, depthwise.Route(torch.randn(32, 112, 112)));
        Assert.Equal(D, depthwise.Route(torch.randn(8, 32, 28, 28)));
        Assert.Equal(D, depthwise.Route(torch.randn(8, 32, 14, 14)));
        // 13x13 at batch 8: in lanes where rows of 13 are narrower than two vectors (256 bits and more), else plane by
        // plane, which libtorch's route beats; a channel multiplier of 2 is plane by plane at every width.
        var small = new Im2Col(32, 13, 13, 3, 3, 1, 1, 1, 1, 1, 1);
        Assert.Equal(DepthwiseConvolution.TakesLanes(small) ? D : R, depthwise.Route(torch.randn(8, 32, 13, 13)));
        Assert.Equal(Float512.IsSupported || Float256.IsSupported, DepthwiseConvolution.TakesLanes(small));
        using var multiplier2 = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(32, 64, 3, padding: 1, groups: 32), spec);
        Assert.Equal(R, multiplier2.Route(torch.randn(8, 32, 13, 13)));
        Assert.Equal(D, multiplier2.Route(torch.randn(8, 32, 14, 14)));
        var act = new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, 0.02f, 120);
        using var staticW8A8 = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(32, 32, 3, padding: 1, groups: 32), spec, act);
        Assert.Equal(D, staticW8A8.Route(torch.randn(8, 32, 14, 14)));
        Assert.Equal(DepthwiseConvolution.TakesLanes(small) ? D : R, staticW8A8.Route(torch.randn(8, 32, 13, 13)));
        using var conv1d = (QuantizedConv)QuantizedModules.Quantize(nn.Conv1d(144, 144, 31, padding: 15, groups: 144), spec);
        Assert.Equal(D, conv1d.Route(torch.randn(8, 144, 400)));
        Assert.Equal(R, depthwise.Route(torch.randn(1, 32, 112, 112).requires_grad_()));
        Assert.Equal(R, depthwise.Route(torch.randn(1, 32, 112, 112).to(ScalarType.Float64)));
        // Groups of more than one input channel take the small kernel instead (GroupedConvolutionTests), never this one.
        using var grouped = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(32, 32, 3, padding: 1, groups: 8), spec);
        Assert.Equal(ConvolutionRoute.Direct, grouped.Route(torch.randn(1, 32, 112, 112)));
        Assert.DoesNotContain(D, grouped.Candidates(torch.randn(1, 32, 56, 56)));
        // Through the rule, the layer's output equals libtorch's route's.
        var x = torch.randn(1, 32, 112, 112);
        using var noGrad = no_grad();
        AssertClose(depthwise.Forward(x, R), depthwise.call(x), 1e-5, "depthwise 32 on 112x112 through the rule");
    }
}
