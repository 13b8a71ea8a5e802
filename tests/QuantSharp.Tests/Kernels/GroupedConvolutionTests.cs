using QuantSharp.Kernels;
using QuantSharp.Modules;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;
using static QuantSharp.Tests.Kernels.ConvolutionKernelTests;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// Grouped convolutions that are not depthwise (ResNeXt's, RegNet's, ShuffleNet's) on the small kernel group by group
/// (<see cref="DirectConvolution"/> with groups) equal the dequantize + libtorch route within float rounding for every
/// weight format the layers take, on every vector width and with both paddings of the images (per work item, into one
/// buffer first), over group widths of 2 to 32 channels, group outputs that are no multiple of the kernel's four rows,
/// strides, padding, dilation, 1x1 taps, rows narrower than a vector, a group reduction longer than the ungrouped
/// kernel's limit, work items that end in half a step, Conv1d, unbatched and non-contiguous inputs, the weight read by
/// group (each thread dequantizing the groups it reads, the bits of the weight dequantized whole) or dequantized whole
/// first; the kernel writes
/// every output once and nothing past the output; static W8A8 through it equals the simulated path, and so does dynamic
/// W8A8; the measured rule takes it at its edges, and inputs that need gradients keep libtorch's route.
/// </summary>
[Collection(SimdWidthCollection.Name)]
public class GroupedConvolutionTests
{
    private static (nn.Module<Tensor, Tensor> Conv, Tensor[] Inputs)[] Cases() =>
    [
        // 4 channels a group into 4 outputs (ResNeXt-like), batched, unbatched and non-contiguous.
        (nn.Conv2d(16, 16, 3, padding: 1, groups: 4), [torch.randn(2, 16, 9, 11), torch.randn(16, 7, 8), torch.randn(2, 11, 8, 16).permute(0, 3, 1, 2)]),
        // Group outputs of 3 and 5 (steps of fewer than four rows, and a step spanning no group boundary), stride 2.
        (nn.Conv2d(6, 9, 3, stride: 2, padding: 1, groups: 3), [torch.randn(2, 6, 17, 15)]),
        (nn.Conv2d(4, 10, 3, groups: 2, bias: false), [torch.randn(1, 4, 10, 40)]),
        (nn.Conv2d(8, 4, (3, 5), stride: (2, 1), padding: (3, 2), dilation: (1, 2), groups: 2), [torch.randn(1, 8, 9, 11)]),
        // 1x1 taps (ShuffleNet), rows of one to several vectors.
        (nn.Conv2d(12, 6, 1, groups: 3), [torch.randn(2, 12, 5, 5), torch.randn(1, 12, 3, 70)]),
        // 16 channels a group (144 terms) and 32 channels x 9 taps = 288 terms a group: beyond the ungrouped kernel's 256.
        (nn.Conv2d(32, 8, 3, padding: 1, groups: 2), [torch.randn(2, 32, 7, 7)]),
        (nn.Conv2d(64, 8, 3, padding: 1, groups: 2), [torch.randn(1, 64, 6, 6)]),
        // One output position.
        (nn.Conv2d(8, 8, 3, groups: 4), [torch.randn(3, 8, 3, 3)]),
        (nn.Conv1d(12, 12, 5, padding: 2, groups: 3), [torch.randn(3, 12, 300), torch.randn(12, 17), torch.randn(2, 21, 12).transpose(1, 2)]),
        (nn.Conv1d(8, 4, 3, stride: 2, padding: 1, dilation: 2, groups: 2), [torch.randn(2, 8, 41)]),
        // Work items that end in the first half of a step at every width (66 positions: 64 + 2, no columns dropped at a
        // 1-tap kernel's row ends), four outputs a group.
        (nn.Conv1d(6, 8, 1, groups: 2), [torch.randn(2, 6, 66)]),
    ];

    [Theory]
    [InlineData(512)]
    [InlineData(256)]
    [InlineData(128)]
    [InlineData(0)]
    public void GroupedRouteMatchesDequantizeAndLibtorchForEveryFormatGeometryAndWidth(int maxBits)
    {
        using var cap = new SimdWidthCap(maxBits);
        torch.manual_seed(51);
        ForBothWeightReads(() => ForBothPaddings(() => AssertRouteMatchesReference(Cases(), ConvolutionRoute.Direct, maxBits)));
    }

    /// <summary>
    /// The kernel on a quantized weight (each thread dequantizing a group's rows when it first reads them) gives the bits
    /// it gives on that weight dequantized whole, for every weight format, grouped and not, on the padded-image path and
    /// on the columns path (rows wider than it takes), over several images and threads, with both paddings; a second
    /// weight of the same shape right after gives its own results (no thread keeps the first call's rows).
    /// </summary>
    [Theory]
    [InlineData(512)]
    [InlineData(256)]
    [InlineData(128)]
    [InlineData(0)]
    public unsafe void QuantizedWeightGivesTheBitsOfItsDequantizedCopy(int maxBits)
    {
        using var cap = new SimdWidthCap(maxBits);
        var random = new Random(57);
        (Im2Col Unfold, int Outputs, int Groups)[] geometries =
        [
            (new Im2Col(32, 9, 9, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(3), 32, 4),   // 3 images x 4 groups: items on both threads
            (new Im2Col(12, 17, 15, 3, 3, 2, 2, 1, 1, 1, 1).ForImages(2), 18, 3), // stride 2, 6 outputs a group
            (new Im2Col(8, 13, 13, 3, 3, 1, 1, 0, 0, 1, 1).ForImages(2), 12, 1),  // ungrouped
            (new Im2Col(4, 1, 2100, 1, 3, 1, 1, 0, 1, 1, 1), 8, 1),               // phase rows of 2,102 values: the columns path
        ];
        foreach (var (u, outputs, groups) in geometries)
        foreach (var format in Enum.GetValues<WeightFormat>())
        {
            int k = u.Rows / groups, groupSize = WeightView.IsPacked(format) && k % 8 == 0 ? 8 : k % 2 == 0 || !WeightView.IsPacked(format) ? k : 0;
            if (groupSize == 0) continue;
            string what = $"in {groups} group(s) over {u.Images} image(s) of {u.Height}x{u.Width}, width {maxBits}";
            ForBothPaddings(() => AssertQuantizedWeightGivesItsDequantizedBits(u, outputs, groups, format, groupSize, random, what,
                &DirectConvolution.Run, &DirectConvolution.Run));
        }
    }

    [Fact]
    public unsafe void QuantizedWeightsAreReadByGroupUpToAThreadsBufferAndMustFitTheGeometry()
    {
        // A group's rows up to 2^18 values (1 MiB of floats).
        Assert.True(DirectConvolution.DequantizesByGroup(512, 1, 512));
        Assert.False(DirectConvolution.DequantizesByGroup(512, 1, 513));
        Assert.True(DirectConvolution.DequantizesByGroup(48 * 16, 16, 5461));
        Assert.False(DirectConvolution.DequantizesByGroup(48 * 16, 16, 6144)); // 48 channels x 128 taps a group
        Assert.False(DirectConvolution.DequantizesByGroup(10, 4, 9));          // groups that do not divide the outputs
        using var weight = new PinnedWeight(WeightFormat.Int8, 8, 18, 18, zeroPoints: false, seed: 3);
        var view = weight.View;
        var u = new Im2Col(4, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1);
        float[] buffer = new float[1024];
        fixed (float* p = buffer)
        {
            float* pointer = p;
            // 18 values a row are 2 of the 4 channels' 3x3 taps: two groups, not one.
            var error = Assert.Throws<ArgumentException>(() => DirectConvolution.Run(view, 1, u, pointer, null, pointer));
            Assert.Contains("does not fit this geometry (36 reduction rows)", error.Message);
            DirectConvolution.Run(view, 2, u, pointer, null, pointer + 512);
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
        // 3 groups of 2 channels into 5 outputs each.
        ForBothPaddings(() => AssertEveryOutputOnceAndNothingPast(6, 15, 3, 54, &DirectConvolution.Run));
    }

    [Fact]
    public unsafe void KernelRejectsGroupsThatDoNotDivideItsChannels()
    {
        var u = new Im2Col(6, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1);
        float[] buffer = new float[1024];
        fixed (float* p = buffer)
        {
            float* pointer = p;
            var inputs = Assert.Throws<ArgumentException>(() => DirectConvolution.Run(pointer, 8, 4, u, pointer, null, pointer));
            Assert.Contains("must divide both the 6 input channels and the 8 outputs", inputs.Message);
            var outputs = Assert.Throws<ArgumentException>(() => DirectConvolution.Run(pointer, 7, 3, u, pointer, null, pointer));
            Assert.Contains("must divide both the 6 input channels and the 7 outputs", outputs.Message);
        }
    }

    [Fact]
    public void W8A8ThroughTheGroupedRouteEqualsTheSimulatedPath()
    {
        torch.manual_seed(52);
        // The image is quantized as it is laid out; dynamic W8A8 before the kernel, as on libtorch's route.
        ForBothWeightReads(() => ForBothPaddings(() => AssertW8A8MatchesSimulated(
        [
            (nn.Conv2d(16, 16, 3, padding: 1, groups: 4), torch.randn(2, 16, 14, 14)),           // stride 1, padded
            (nn.Conv2d(8, 8, 3, groups: 2), torch.randn(1, 8, 9, 30)),                          // no padding
            (nn.Conv2d(6, 12, 3, stride: 2, padding: 1, groups: 3), torch.randn(2, 6, 17, 15)), // strided
            (nn.Conv2d(12, 6, 1, groups: 3), torch.randn(2, 12, 9, 9)),                         // 1x1
            (nn.Conv1d(8, 8, 3, padding: 1, groups: 2), torch.randn(2, 8, 50)),
        ], ConvolutionRoute.Direct, nn.Conv2d(16, 16, 3, padding: 1, groups: 4), torch.randn(2, 16, 14, 14))));
    }

    /// <summary>
    /// Static W8A8 grouped layers whose group sums stay exact in float32 (<see cref="PackedMatMul.CodesExact"/>) run,
    /// through their <see cref="ConvolutionRoute.Kernel"/> route where the CPU has AVX512-BF16, from pair images of codes
    /// (<see cref="PackedMatMul.GroupedCodes"/>; the bits are checked in BFloat16PackedKernelTests), within float
    /// rounding of the simulated path; elsewhere, and for a zero point outside the codes' range, dynamic W8A8, int4
    /// weights and group sums float32 may not hold, that route is the small kernel's.
    /// </summary>
    [Fact]
    public void StaticW8A8GroupedLayersRunFromPairImagesOfCodesWhereTheCpuHasBFloat16()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(53);
        AssertW8A8MatchesSimulated(
        [
            (nn.Conv2d(32, 16, 3, padding: 1, groups: 2), torch.randn(2, 32, 14, 14)),          // 144 terms a group
            (nn.Conv2d(32, 16, 3, padding: 1, groups: 2), torch.randn(2, 14, 14, 32).permute(0, 3, 1, 2)), // not contiguous
            (nn.Conv2d(24, 12, 3, stride: 2, padding: 1, groups: 3), torch.randn(1, 24, 15, 17)),
            (nn.Conv2d(12, 6, 1, groups: 3), torch.randn(12, 9, 9)),                            // 1x1, unbatched
            (nn.Conv1d(8, 8, 3, padding: 1, groups: 2), torch.randn(2, 8, 50)),
        ], ConvolutionRoute.Kernel, nn.Conv2d(16, 16, 3, padding: 1, groups: 4), torch.randn(2, 16, 14, 14));
        bool pairs = Vnni512Kernel.BFloat16Supported && Float512.IsSupported;
        var conv = nn.Conv2d(32, 16, 3, padding: 1, groups: 2);
        var x = torch.randn(2, 32, 14, 14);
        var int8 = QuantizationRecipe.Int8WeightOnly().BaseWeights;
        // NaN takes the lowest code and infinities clamp, as on the simulated path: finite outputs that agree.
        var uint8 = new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, 0.02f, 120);
        using (var layer = (QuantizedConv)QuantizedModules.Quantize(conv, int8, uint8))
        {
            var odd = x.clone();
            odd[0, 0, 0, 0] = torch.tensor(float.NaN);
            odd[0, 1, 2, 3] = torch.tensor(float.PositiveInfinity);
            odd[1, 5, 6, 7] = torch.tensor(float.NegativeInfinity);
            var kernel = layer.Kernel(odd, ConvolutionRoute.Kernel)!;
            Assert.True(kernel.isfinite().all().item<bool>(), "non-finite outputs from NaN or infinite inputs");
            AssertClose(layer.Forward(odd, ConvolutionRoute.Reference), kernel, 1e-5, "NaN and infinite inputs");
        }
        ConvolutionRoute[] Candidates(QuantSpec weights, ActivationQuantization? act, bool dynamic = false) => CandidatesOf(conv, x, weights, act, dynamic);
        Assert.Equal(pairs, Candidates(int8, uint8).Contains(ConvolutionRoute.Kernel));
        Assert.DoesNotContain(ConvolutionRoute.Kernel, Candidates(int8, uint8 with { ZeroPoint = 300 }));
        Assert.DoesNotContain(ConvolutionRoute.Kernel, Candidates(int8, null, dynamic: true));
        Assert.DoesNotContain(ConvolutionRoute.Kernel, Candidates(QuantizationRecipe.Int4WeightOnly(groupSize: 16).BaseWeights, uint8));
        // 64 channels x 9 taps = 576 terms a group: up to 576 x 255 x 128 > 2^24 for uint8 codes of zero point 0 (with 120,
        // codes less it up to 135: within it), within it for int8 ones.
        var wide = nn.Conv2d(128, 16, 3, padding: 1, groups: 2);
        using var wideLayer = (QuantizedConv)QuantizedModules.Quantize(wide, int8, uint8 with { ZeroPoint = 0 });
        Assert.DoesNotContain(ConvolutionRoute.Kernel, wideLayer.Candidates(torch.randn(1, 128, 8, 8)));
        var int8Input = new ActivationQuantization(QuantType.Int8, QuantScheme.Symmetric, false, 0.02f, 0);
        using var wideInt8 = (QuantizedConv)QuantizedModules.Quantize(wide, int8, int8Input);
        Assert.Equal(pairs, wideInt8.Candidates(torch.randn(1, 128, 8, 8)).Contains(ConvolutionRoute.Kernel));

        // The measured rule: 3x3 at stride 1 onto rows of 28 or more from 16 channels a group at any batch, from 8 at 4
        // images; onto rows of 14-27 over 16-32 channels a group, from 4 images up to 144 terms a group (16 channels),
        // below 4 images with more (from 4 libtorch's bfloat16 convolution takes them); never onto rows narrower than 14,
        // with fewer or (onto 14x14) more channels, at stride 2, for 1x1 taps, a Conv1d or one group.
        Assert.True(ConvolutionCost.GroupedCodesPay(new Im2Col(512, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1), 32));
        Assert.False(ConvolutionCost.GroupedCodesPay(new Im2Col(480, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(3), 32)); // 15 a group
        Assert.True(ConvolutionCost.GroupedCodesPay(new Im2Col(256, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(4), 32));  // 8 a group
        Assert.False(ConvolutionCost.GroupedCodesPay(new Im2Col(256, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(3), 32));
        Assert.False(ConvolutionCost.GroupedCodesPay(new Im2Col(224, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 32)); // 7 a group
        Assert.False(ConvolutionCost.GroupedCodesPay(new Im2Col(128, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 32));
        Assert.True(ConvolutionCost.GroupedCodesPay(new Im2Col(512, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(4), 32));
        Assert.False(ConvolutionCost.GroupedCodesPay(new Im2Col(512, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(3), 32));
        Assert.False(ConvolutionCost.GroupedCodesPay(new Im2Col(480, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 32)); // 15 a group
        Assert.False(ConvolutionCost.GroupedCodesPay(new Im2Col(544, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(4), 32)); // 153 terms
        Assert.True(ConvolutionCost.GroupedCodesPay(new Im2Col(544, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(3), 32));
        Assert.True(ConvolutionCost.GroupedCodesPay(new Im2Col(1024, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1), 32));
        Assert.True(ConvolutionCost.GroupedCodesPay(new Im2Col(1024, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(3), 32));
        Assert.False(ConvolutionCost.GroupedCodesPay(new Im2Col(384, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1), 8));             // 48 a group
        Assert.True(ConvolutionCost.GroupedCodesPay(new Im2Col(384, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1), 8));              // onto 28x28
        Assert.True(ConvolutionCost.GroupedCodesPay(new Im2Col(1024, 27, 27, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(4), 64)); // rows of 27, 16 a group
        Assert.False(ConvolutionCost.GroupedCodesPay(new Im2Col(1024, 13, 13, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 64));
        Assert.False(ConvolutionCost.GroupedCodesPay(new Im2Col(512, 56, 56, 3, 3, 2, 2, 1, 1, 1, 1), 32));
        Assert.False(ConvolutionCost.GroupedCodesPay(new Im2Col(512, 28, 28, 1, 1, 1, 1, 0, 0, 1, 1).ForImages(8), 16));
        Assert.False(ConvolutionCost.GroupedCodesPay(new Im2Col(64, 1, 300, 1, 3, 1, 1, 0, 1, 1, 1), 4));
        Assert.False(ConvolutionCost.GroupedCodesPay(new Im2Col(512, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1), 1));
        using var resnext = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(512, 512, 3, padding: 1, groups: 32), int8, uint8);
        // Where the 512-bit VNNI kernel runs, the output channels in lanes first (QuadConvolutionTests).
        Assert.Equal(Vnni512Kernel.IsSupported ? ConvolutionRoute.Quad : pairs ? ConvolutionRoute.Kernel : ConvolutionRoute.Direct, resnext.Route(torch.randn(1, 512, 28, 28)));
    }

    [Fact]
    public void MeasuredRuleTakesTheGroupedKernelAtItsEdgesAndNotForGradients()
    {
        using var scope = NewDisposeScope();
        const ConvolutionRoute D = ConvolutionRoute.Direct, R = ConvolutionRoute.Reference;
        // Two groups or more.
        Assert.False(ConvolutionCost.GroupedPays(new Im2Col(16, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 1));
        Assert.True(ConvolutionCost.GroupedPays(new Im2Col(32, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 2));
        // Group reductions up to 576 terms (3x3 over 64 channels a group; over 65: 585) at any stride.
        Assert.True(ConvolutionCost.GroupedPays(new Im2Col(512, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1), 8));
        Assert.False(ConvolutionCost.GroupedPays(new Im2Col(520, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1), 8));
        Assert.True(ConvolutionCost.GroupedPays(new Im2Col(512, 56, 56, 3, 3, 2, 2, 1, 1, 1, 1).ForImages(8), 8)); // onto 28x28
        Assert.False(ConvolutionCost.GroupedPays(new Im2Col(96, 27, 27, 5, 5, 1, 1, 2, 2, 1, 1), 2));             // 1,200 terms
        // More than two images onto up to 14x14 positions only up to 144 terms a group (16 channels; 17: 153; onto up to
        // 7x7 see below); one or two images, or 15x14 positions, up to 576.
        Assert.True(ConvolutionCost.GroupedPays(new Im2Col(512, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 32));
        Assert.False(ConvolutionCost.GroupedPays(new Im2Col(544, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 32));
        Assert.True(ConvolutionCost.GroupedPays(new Im2Col(1024, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1), 16));
        Assert.True(ConvolutionCost.GroupedPays(new Im2Col(1024, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(2), 16));
        Assert.False(ConvolutionCost.GroupedPays(new Im2Col(1024, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(3), 16));
        Assert.True(ConvolutionCost.GroupedPays(new Im2Col(1024, 15, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 16));
        Assert.True(ConvolutionCost.GroupedPays(new Im2Col(1024, 14, 14, 3, 3, 2, 2, 1, 1, 1, 1), 32));            // onto 7x7
        Assert.False(ConvolutionCost.GroupedPays(new Im2Col(1024, 14, 14, 3, 3, 2, 2, 1, 1, 1, 1).ForImages(8), 32));
        // Onto up to 7x7, up to 1,152 images x terms a group: 4 images of 288 terms (5 not), 2 of 576 (3 not); onto 8x7 or
        // 14x14 not beyond two images.
        Assert.True(ConvolutionCost.GroupedPays(new Im2Col(1024, 14, 14, 3, 3, 2, 2, 1, 1, 1, 1).ForImages(4), 32));
        Assert.False(ConvolutionCost.GroupedPays(new Im2Col(1024, 14, 14, 3, 3, 2, 2, 1, 1, 1, 1).ForImages(5), 32));
        Assert.True(ConvolutionCost.GroupedPays(new Im2Col(2048, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(2), 32));
        Assert.False(ConvolutionCost.GroupedPays(new Im2Col(2048, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(3), 32));
        Assert.False(ConvolutionCost.GroupedPays(new Im2Col(2048, 8, 7, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(3), 32));
        Assert.False(ConvolutionCost.GroupedPays(new Im2Col(1024, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(4), 32));
        // A Conv1d at stride 1 at any batch and reduction (48 channels x 128 taps a group), at stride 2 by the rule
        // above; a Conv2d over one row is no Conv1d (1,152 terms a group).
        Assert.True(ConvolutionCost.GroupedPays(new Im2Col(768, 1, 200, 1, 128, 1, 1, 0, 64, 1, 1).ForImages(8), 16));
        Assert.False(ConvolutionCost.GroupedPays(new Im2Col(768, 1, 200, 1, 128, 1, 2, 0, 64, 1, 1).ForImages(8), 16));
        Assert.False(ConvolutionCost.GroupedPays(new Im2Col(512, 1, 300, 3, 3, 1, 1, 1, 1, 1, 1), 4));

        // Weight-only on CPUs with AVX512-BF16, grouped layers from 32 channels a group over more than one row multiply
        // in bfloat16 from pair images: up to 3 images onto rows of 24 or more from 48 channels a group; from 4 images
        // onto rows of 20 or more; onto rows of 14 or more from 2 images over 64 channels a group, from 3 over 48.
        Assert.True(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(512, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1), 8));            // 64 a group
        Assert.True(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(96, 27, 27, 5, 5, 1, 1, 2, 2, 1, 1).ForImages(3), 2)); // AlexNet's 48
        Assert.False(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(368, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1), 8));           // 46 a group
        Assert.True(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(384, 24, 24, 3, 3, 1, 1, 1, 1, 1, 1), 8));            // rows of 24
        Assert.False(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(384, 23, 23, 3, 3, 1, 1, 1, 1, 1, 1), 8));           // of 23
        Assert.False(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(512, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1), 8));
        Assert.True(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(512, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(2), 8)); // 64 a group onto 14x14
        Assert.False(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(496, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(2), 8)); // 62 at two images
        Assert.True(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(384, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(3), 8)); // 48 from three
        Assert.False(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(384, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(2), 8));
        Assert.False(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(368, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 8)); // 46 a group
        Assert.True(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(512, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(4), 8));
        Assert.False(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(512, 13, 13, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 8));
        Assert.False(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(368, 19, 19, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 8)); // 46 onto 19x19
        Assert.True(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(384, 19, 19, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 8));  // 48 onto 19x19
        Assert.True(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(256, 20, 20, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(4), 8));  // 32 onto 20x20
        Assert.False(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(256, 20, 20, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(3), 8));
        Assert.True(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(256, 56, 56, 3, 3, 2, 2, 1, 1, 1, 1).ForImages(8), 8));  // stride 2 onto 28x28
        Assert.False(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(240, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 8)); // 30 a group
        Assert.False(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(1024, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 32)); // 32 onto 14x14
        Assert.False(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(2048, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 32));
        Assert.False(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(512, 1, 300, 1, 3, 1, 1, 0, 1, 1, 1).ForImages(8), 8));  // a Conv1d
        Assert.False(ConvolutionCost.GroupedBFloat16Pays(new Im2Col(64, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1), 1));              // one group

        torch.manual_seed(53);
        var spec = QuantizationRecipe.Int8WeightOnly().BaseWeights;
        using var grouped = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(32, 32, 3, padding: 1, groups: 8), spec);
        Assert.Equal(D, grouped.Route(torch.randn(8, 32, 56, 56)));
        Assert.Equal(D, grouped.Route(torch.randn(32, 56, 56)));
        Assert.Equal(R, grouped.Route(torch.randn(1, 32, 56, 56).requires_grad_()));
        Assert.Equal(R, grouped.Route(torch.randn(1, 32, 56, 56).to(ScalarType.Float64)));
        // Rows wider than the padded-image path takes (phase rows of 3,002 values) stay on libtorch's route, forced or not.
        Assert.Null(grouped.Kernel(torch.randn(1, 32, 3, 3000), ConvolutionRoute.Direct));
        // 80 channels a group (720 terms) at stride 2 onto 14x14: the output channels in lanes where they run, else libtorch's route.
        using var wide = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(160, 160, 3, stride: 2, padding: 1, groups: 2), spec);
        var x = torch.randn(1, 160, 28, 28);
        Assert.Equal(LanesRun ? ConvolutionRoute.BFloat16 : R, wide.Route(x));
        Float32Compute.Run(() => Assert.Equal(R, wide.Route(x)));
        // Autotune's candidates for it: the rule's first, the small kernel, which any managed route forces, libtorch's
        // route, and the bfloat16 route where it may run (from pair images on CPUs with AVX512-BF16, else libtorch's).
        var candidates = wide.Candidates(x);
        if (LanesRun) Assert.Equal([ConvolutionRoute.BFloat16, D, R], candidates);
        else
        {
            Assert.Equal([R, D], candidates.Take(2));
            Assert.All(candidates.Skip(2), route => Assert.Equal(ConvolutionRoute.BFloat16, route));
        }
        using var noGrad = no_grad();
        AssertClose(wide.Forward(x, R), wide.Forward(x, ConvolutionRoute.Kernel), 1e-5, "stride 2, 720 terms a group, forced onto the small kernel");
        // Through the rule, the layer's output equals libtorch's route's.
        var image = torch.randn(1, 32, 56, 56);
        AssertClose(grouped.Forward(image, R), grouped.call(image), 1e-5, "32 channels in 8 groups on 56x56 through the rule");
    }

    /// <summary>
    /// Ungrouped weight-only 3x3 layers at stride 1 onto output rows narrower than 16 run as one group with the output
    /// channels in lanes where the CPU has AVX512-BF16, into 64 or more channels, beyond the small kernel's calls, from
    /// 576 terms (64 channels) up to 1,152 (128) onto any such plane, up to 2,304 onto 14x14 and more; within bfloat16's bound of libtorch's float32 route, a group's chunks split into parts
    /// at one image. Not with more terms, at stride 2, for 1x1 layers, static W8A8, with bfloat16 compute off.
    /// </summary>
    [Fact]
    public void UngroupedWeightOnlyLayersOntoSmallPlanesRunWithTheOutputChannelsInLanes()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        Im2Col Unfold(int c, int h, int w, int k = 3, int stride = 1) => new(c, h, w, k, k, stride, stride, k / 2, k / 2, 1, 1);
        Assert.True(PackedMatMul.UngroupedLanesPay(Unfold(128, 7, 7), 128));
        Assert.True(PackedMatMul.UngroupedLanesPay(Unfold(64, 14, 14), 64));
        Assert.True(PackedMatMul.UngroupedLanesPay(Unfold(256, 14, 14), 256));    // 2,304 terms onto 14x14
        Assert.False(PackedMatMul.UngroupedLanesPay(Unfold(256, 13, 13), 256));   // onto 13x13
        Assert.False(PackedMatMul.UngroupedLanesPay(Unfold(256, 7, 7), 256));     // onto 7x7
        Assert.False(PackedMatMul.UngroupedLanesPay(Unfold(258, 14, 14), 258));   // 2,322 terms
        Assert.True(PackedMatMul.UngroupedLanesPay(Unfold(128, 15, 15), 128));    // rows of 15
        Assert.False(PackedMatMul.UngroupedLanesPay(Unfold(128, 16, 16), 128));   // of 16
        Assert.False(PackedMatMul.UngroupedLanesPay(Unfold(128, 14, 14, stride: 2), 128));
        Assert.False(PackedMatMul.UngroupedLanesPay(Unfold(512, 7, 7, k: 1), 2048));
        Assert.False(PackedMatMul.UngroupedLanesPay(Unfold(128, 7, 7), 32));      // 32 outputs
        Assert.False(PackedMatMul.UngroupedLanesPay(Unfold(62, 14, 14), 64));     // 558 terms
        Assert.False(PackedMatMul.UngroupedLanesPay(Unfold(64, 7, 7).ForImages(2), 64)); // 3.6M multiply-adds: the small kernel's
        Assert.True(PackedMatMul.UngroupedLanesPay(Unfold(64, 7, 7).ForImages(3), 64));  // 5.4M

        torch.manual_seed(61);
        var int8 = QuantizationRecipe.Int8WeightOnly().BaseWeights;
        using var layer = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(128, 128, 3, padding: 1), int8);
        using var wide = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(256, 256, 3, padding: 1), int8);
        foreach (int images in new[] { 1, 2, 5 })
            AssertInLanesWhereTheyRun(layer, torch.randn(images, 128, 7, 7), $"128->128 onto 7x7, {images} images");
        AssertInLanesWhereTheyRun(wide, torch.randn(1, 256, 14, 14), "256->256 onto 14x14");
        using var w8a8 = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(128, 128, 3, padding: 1), int8,
            new ActivationQuantization(QuantType.Int8, QuantScheme.Symmetric, false, 0.02f, 0));
        Assert.NotEqual(ConvolutionRoute.BFloat16, w8a8.Route(torch.randn(2, 128, 7, 7)));
        Float32Compute.Run(() => Assert.NotEqual(ConvolutionRoute.BFloat16, layer.Route(torch.randn(2, 128, 7, 7))));
    }

    /// <summary>
    /// Where libtorch's bfloat16 convolution passed its check, grouped layers (not depthwise) of 4 or more images onto up
    /// to 14x14 positions an image take it: weight-only from 144 terms a group (3x3 over 16 channels), static W8A8 above
    /// 144; its output is libtorch's bfloat16 convolution's, bit for bit. Elsewhere, and with bfloat16 compute off, the
    /// other rules.
    /// </summary>
    [Fact]
    public void GroupedLayersOfFourImagesOntoSmallPlanesTakeLibtorchsBFloat16ConvolutionWhereItIsRight()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        // (C, H, W) of a 3x3 layer, stride 1, padding 1; images; groups; static W8A8; expected.
        (int C, int H, int W, int Images, int Groups, bool W8A8, bool Expected)[] cases =
        [
            (512, 14, 14, 4, 32, false, true),    // 16 channels a group (144 terms), 4 images
            (512, 14, 14, 3, 32, false, false),   // 3 images
            (512, 14, 15, 8, 32, false, false),   // 210 positions an image
            (480, 14, 14, 8, 32, false, false),   // 15 channels a group (135 terms)
            (1024, 7, 7, 8, 32, false, true),     // 32 a group onto 7x7
            (512, 14, 14, 8, 32, true, false),    // static W8A8 of 144 terms
            (544, 14, 14, 8, 32, true, true),     // of 153
            (512, 14, 14, 4, 8, true, true),      // 64 a group
            (1024, 28, 28, 8, 32, false, false),  // 28x28
        ];
        foreach (var (c, h, w, images, groups, w8a8, expected) in cases)
        {
            var u = new Im2Col(c, h, w, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(images);
            Assert.True(expected == ConvolutionCost.GroupedLibTorchBFloat16Pays(u, groups, w8a8), $"{c} channels in {groups} groups onto {h}x{w}, {images} images{(w8a8 ? " W8A8" : "")}");
        }
        Assert.False(ConvolutionCost.GroupedLibTorchBFloat16Pays(new Im2Col(512, 1, 196, 1, 3, 1, 1, 0, 1, 1, 1).ForImages(8), 32, false)); // a Conv1d
        Assert.False(ConvolutionCost.GroupedLibTorchBFloat16Pays(new Im2Col(512, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 1, false));  // one group

        torch.manual_seed(57);
        // Onto 12x16 (192 positions; onto rows narrower than 16 the output channels in lanes come first:
        // GroupedWeightOnlyLayersOntoSmallPlanesRunWithTheOutputChannelsInLanes).
        using var layer = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(512, 512, 3, padding: 1, groups: 32), QuantizationRecipe.Int8WeightOnly().BaseWeights);
        var x = torch.randn(4, 512, 12, 16);
        bool libtorch = QuantizedModule.UseBFloat16Compute && QuantizedModule.NativeBFloat16 && BFloat16Check.Convolutions;
        var route = layer.Route(x);
        // Elsewhere not the bfloat16 route (16 channels a group: no pair images either).
        Assert.True(libtorch == (route == ConvolutionRoute.BFloat16), $"{route}, libtorch's bfloat16 convolution right: {libtorch}");
        if (libtorch)
        {
            Assert.False(layer.BFloat16OnPackedKernels(x));
            using var expected = layer.BFloat16Convolution(x);
            using var actual = layer.call(x);
            Assert.True(expected.equal(actual).all().item<bool>(), "the rule's route is not libtorch's bfloat16 convolution");
            BFloat16ConvolutionTests.AssertWithinBFloat16Bound(layer, x, layer.Forward(x, ConvolutionRoute.Reference), actual, "512 channels in 32 groups onto 12x16, 4 images");
        }
        Float32Compute.Run(() => Assert.NotEqual(ConvolutionRoute.BFloat16, layer.Route(x)));
    }

    /// <summary>
    /// Weight-only grouped layers at stride 1 onto output rows narrower than 16, of 16 or more outputs a group, take the
    /// bfloat16 route with the output channels in lanes (<see cref="PairLanesConvolution"/>) where the CPU has
    /// AVX512-BF16, before libtorch's bfloat16 convolution, at any batch; within bfloat16's bound of libtorch's float32
    /// route; at stride 2 too (256 channels in 4 groups from 14x14; since stop 52 from 16 outputs a group, ResNeXt's 512
    /// channels in 32 groups from 28x28). Not at stride 3, onto rows of 16, with 15 outputs a group, static W8A8, a
    /// Conv1d; with bfloat16 compute off not at all.
    /// </summary>
    [Fact]
    public void GroupedWeightOnlyLayersOntoSmallPlanesRunWithTheOutputChannelsInLanes()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        Im2Col Unfold(int c, int h, int w, int stride = 1) => new(c, h, w, 3, 3, stride, stride, 1, 1, 1, 1);
        Assert.True(PackedMatMul.LanesPay(Unfold(512, 7, 7), 512, 32));
        Assert.True(PackedMatMul.LanesPay(Unfold(512, 15, 15).ForImages(8), 512, 32));    // rows of 15
        Assert.False(PackedMatMul.LanesPay(Unfold(512, 16, 16), 512, 32));                // of 16
        Assert.True(PackedMatMul.LanesPay(Unfold(2048, 14, 14, stride: 2), 2048, 32));    // stride 2 onto 7x7
        Assert.True(PackedMatMul.LanesPay(Unfold(1024, 30, 30, stride: 2), 1024, 32));    // onto rows of 15
        Assert.False(PackedMatMul.LanesPay(Unfold(1024, 32, 32, stride: 2), 1024, 32));   // of 16
        Assert.True(PackedMatMul.LanesPay(Unfold(512, 14, 14, stride: 2), 512, 32));      // 16 outputs a group at stride 2 (stop 52)
        Assert.False(PackedMatMul.LanesPay(Unfold(480, 14, 14, stride: 2), 480, 32));     // 15
        Assert.False(PackedMatMul.LanesPay(new Im2Col(1024, 14, 14, 3, 3, 2, 1, 1, 1, 1, 1), 1024, 32)); // strides 2 and 1
        Assert.False(PackedMatMul.LanesPay(Unfold(2048, 21, 21, stride: 3), 2048, 32));   // stride 3 onto 7x7
        Assert.True(PackedMatMul.LanesPay(Unfold(128, 7, 7), 128, 8));                    // 16 outputs a group
        Assert.False(PackedMatMul.LanesPay(Unfold(120, 7, 7), 120, 8));                   // 15
        Assert.False(PackedMatMul.LanesPay(new Im2Col(512, 1, 7, 1, 3, 1, 1, 0, 1, 1, 1), 512, 32)); // a Conv1d

        torch.manual_seed(59);
        var int8 = QuantizationRecipe.Int8WeightOnly().BaseWeights;
        using var layer = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(512, 512, 3, padding: 1, groups: 32), int8);
        foreach (int images in new[] { 1, 3, 8 })
            AssertInLanesWhereTheyRun(layer, torch.randn(images, 512, 7, 7), $"512 channels in 32 groups onto 7x7, {images} images");
        using var affine = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(512, 512, 3, padding: 1, groups: 32), int8 with { Scheme = QuantScheme.Affine },
            new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, 0.02f, 120));
        // From 4 images, where libtorch's bfloat16 convolution is right and pays, a weight of more than 512K elements takes
        // it (1024 channels in 16 groups: 1024 x 576 = 576K), up to 512K not (768 in 12 groups: 768 x 576 = 432K); below 4
        // images the lanes.
        using var over = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(1024, 1024, 3, padding: 1, groups: 16), int8);
        using var under = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(768, 768, 3, padding: 1, groups: 12), int8);
        bool libtorch = QuantizedModule.UseBFloat16Compute && QuantizedModule.NativeBFloat16 && BFloat16Check.Convolutions;
        if (LanesRun)
        {
            Assert.True(over.Route(torch.randn(3, 1024, 7, 7)) == ConvolutionRoute.BFloat16 && over.BFloat16OnPackedKernels(torch.randn(3, 1024, 7, 7)), "576K, 3 images");
            Assert.Equal(ConvolutionRoute.BFloat16, over.Route(torch.randn(4, 1024, 7, 7)));
            Assert.Equal(!libtorch, over.BFloat16OnPackedKernels(torch.randn(4, 1024, 7, 7)));
            Assert.True(under.BFloat16OnPackedKernels(torch.randn(4, 768, 7, 7)), "432K, 4 images");
        }
        using var strided = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(256, 256, 3, stride: 2, padding: 1, groups: 4), int8);
        AssertInLanesWhereTheyRun(strided, torch.randn(3, 256, 14, 14), "256 channels in 4 groups from 14x14 at stride 2, 3 images");
        using var sixteen = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(512, 512, 3, stride: 2, padding: 1, groups: 32), int8);
        AssertInLanesWhereTheyRun(sixteen, torch.randn(4, 512, 28, 28), "512 channels in 32 groups from 28x28 at stride 2, 4 images");
        var seven = torch.randn(1, 512, 7, 7);
        Assert.NotEqual(ConvolutionRoute.BFloat16, affine.Route(seven)); // static W8A8: its own rules
        Float32Compute.Run(() => Assert.NotEqual(ConvolutionRoute.BFloat16, layer.Route(seven)));
    }

    /// <summary>Whether the bfloat16 route with the output channels in lanes can run here: AVX512-BF16, 512-bit vectors, bfloat16 compute on.</summary>
    private static bool LanesRun => QuantizedModule.BFloat16Convolutions && Vnni512Kernel.BFloat16Supported && Float512.IsSupported;

    /// <summary>
    /// Where the lanes run (<see cref="LanesRun"/>), <paramref name="layer"/> takes the bfloat16 route on the packed
    /// kernels for <paramref name="x"/>, within bfloat16's bound of libtorch's float32 route; elsewhere another route.
    /// </summary>
    private static void AssertInLanesWhereTheyRun(QuantizedConv layer, Tensor x, string what)
    {
        var route = layer.Route(x);
        Assert.True(LanesRun == (route == ConvolutionRoute.BFloat16), $"{what}: {route}, lanes expected {LanesRun}");
        if (!LanesRun) return;
        Assert.True(layer.BFloat16OnPackedKernels(x), $"{what}: not on the packed kernels");
        BFloat16ConvolutionTests.AssertWithinBFloat16Bound(layer, x, layer.Forward(x, ConvolutionRoute.Reference), layer.call(x), what);
    }
}
