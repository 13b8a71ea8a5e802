using QuantSharp.Kernels;
using QuantSharp.Modules;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;
using static QuantSharp.Tests.Kernels.ConvolutionKernelTests;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// The small-convolution route (<see cref="DirectConvolution"/>) equals the dequantize + libtorch route within float
/// rounding for every weight format, on every vector width and with both paddings of the images (per work item, into
/// one buffer first), over strides, padding (rows and columns entirely in it),
/// dilation (up to a kernel spanning the whole padded image), kernels wider than the image, Conv1d, batch 1 and more,
/// unbatched and non-contiguous inputs, output channels that leave a partial group of four and positions that leave
/// partial vectors and blocks or end in half a step; it writes every output once and nothing past the output; W8A8
/// through it equals the simulated path; an input that needs gradients takes the
/// differentiable path; the measured rule takes it for small calls only, with and without the bfloat16 route
/// (<see cref="ConvolutionCost.Choose"/> at its edges both ways; real layers by
/// <see cref="QuantizedModule.NativeBFloat16"/>); the reference route's per-thread weight buffer gives each layer its
/// own weight when layers alternate.
/// </summary>
[Collection(SimdWidthCollection.Name)]
public class DirectConvolutionTests
{
    private static (nn.Module<Tensor, Tensor> Conv, Tensor[] Inputs)[] Cases() =>
    [
        (nn.Conv2d(3, 10, 3, padding: 1), [torch.randn(2, 3, 9, 11), torch.randn(3, 7, 8), torch.randn(2, 11, 3, 9).permute(0, 2, 3, 1)]),
        (nn.Conv2d(1, 16, 3), [torch.randn(1, 1, 28, 28), torch.randn(3, 1, 12, 13)]),
        (nn.Conv2d(6, 5, (3, 4), stride: (2, 1), padding: (3, 2), dilation: (1, 2)), [torch.randn(2, 6, 9, 11)]),
        (nn.Conv2d(16, 7, 3, stride: 3, bias: false), [torch.randn(1, 16, 20, 19)]),
        (nn.Conv1d(4, 9, 4, stride: 2, padding: 3, dilation: 2), [torch.randn(3, 4, 300), torch.randn(4, 17), torch.randn(2, 21, 4).transpose(1, 2)]),
        // Stride 1 runs on the padded image without columns: padding wider than the kernel reaches, dilation, rows
        // wider than a block, Conv1d.
        (nn.Conv2d(6, 5, (3, 4), padding: (3, 2), dilation: (2, 2)), [torch.randn(2, 6, 9, 11), torch.randn(6, 4, 5)]),
        (nn.Conv2d(2, 7, 3, padding: 1), [torch.randn(1, 2, 5, 150), torch.randn(3, 2, 1, 300)]),
        (nn.Conv1d(4, 9, 4, padding: 3, dilation: 2), [torch.randn(3, 4, 300), torch.randn(4, 17), torch.randn(2, 21, 4).transpose(1, 2)]),
        // Output rows of whole vectors at every width (16 and 32 values) and of a vector and a part (26: MNIST's conv1).
        (nn.Conv2d(3, 6, 3, padding: 1), [torch.randn(2, 3, 4, 32), torch.randn(3, 5, 16)]),
        (nn.Conv2d(1, 5, 3), [torch.randn(2, 1, 6, 28)]),
        // Work items that end in the first half of a step at every width (66 positions: 64 + 2, no columns dropped at a
        // 1-tap kernel's row ends), four outputs a step.
        (nn.Conv1d(3, 8, 1), [torch.randn(2, 3, 66)]),
        // Stride 1 with padding rows only: the image's rows copied as one run between them.
        (nn.Conv2d(2, 5, (3, 2), padding: (2, 0)), [torch.randn(2, 2, 6, 7)]),
        // Stride 1 with a padded row longer than DirectConvolution.MaxWideRow: the unfolding path.
        (nn.Conv1d(2, 3, 5, padding: 2), [torch.randn(1, 2, DirectConvolution.MaxWideRow + 100)]),
        // A kernel wider than the image, reaching it only through the padding (5 taps over 3 columns, 7 outputs per row).
        (nn.Conv2d(3, 4, (1, 5), padding: (0, 4)), [torch.randn(1, 3, 2, 3), torch.randn(3, 2, 3)]),
        (nn.Conv2d(8, 4, (1, 5), padding: (0, 4), bias: false), [torch.randn(2, 8, 2, 3)]),
        // Dilation that makes the kernel span the whole padded image: one output column (and, in the Conv1d, position).
        (nn.Conv2d(8, 3, (2, 3), padding: (1, 2), dilation: (2, 4)), [torch.randn(1, 8, 3, 5), torch.randn(8, 4, 5)]),
        (nn.Conv2d(2, 5, 3, padding: 1, dilation: 3), [torch.randn(2, 2, 5, 5)]),
        (nn.Conv1d(8, 6, 3, padding: 2, dilation: 4), [torch.randn(2, 8, 5), torch.randn(8, 5)]),
    ];

    [Theory]
    [InlineData(512)]
    [InlineData(256)]
    [InlineData(128)]
    [InlineData(0)]
    public void DirectRouteMatchesDequantizeAndLibtorchForEveryFormatGeometryAndWidth(int maxBits)
    {
        using var cap = new SimdWidthCap(maxBits);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(31);
        var cases = Cases();
        ForBothPaddings(() =>
        {
            foreach (var (conv, inputs) in cases)
            foreach (var spec in ModuleSpecs)
            {
                long k = ((TorchSharp.Modules.Convolution)conv).weight!.numel() / ((TorchSharp.Modules.Convolution)conv).weight!.shape[0];
                if (QuantizedWeight.Unsupported(spec, ((TorchSharp.Modules.Convolution)conv).weight!.shape) is not null) continue;
                using var layer = (QuantizedConv)QuantizedModules.Quantize(conv, spec);
                foreach (var x in inputs)
                {
                    var expected = layer.Forward(x, ConvolutionRoute.Reference);
                    var actual = layer.Forward(x, ConvolutionRoute.Direct);
                    AssertClose(expected, actual, 1e-5, $"{spec} K {k} input [{string.Join(",", x.shape)}] width {maxBits}");
                }
            }
        });
    }

    [Theory]
    [InlineData(512)]
    [InlineData(256)]
    [InlineData(128)]
    [InlineData(0)]
    public unsafe void KernelWritesEveryOutputOnceAndNothingPastTheOutput(int maxBits)
    {
        using var cap = new SimdWidthCap(maxBits);
        ForBothPaddings(() => AssertEveryOutputOnceAndNothingPast(4, 9, 1, 55, &DirectConvolution.Run));
    }

    [Fact]
    public void StaticW8A8ThroughTheDirectRouteEqualsTheSimulatedPath()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(32);
        var act = new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, 0.02f, 120);
        using var layer = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(16, 32, 3), QuantizationRecipe.Int8WeightOnly().BaseWeights, act);
        var x = torch.randn(1, 16, 13, 13);
        // The MNIST CNN's second convolution: the small kernel, or the integer GEMM where the float kernels' widest path
        // is 256 bits (144 terms); the small kernel's W8A8 is asserted on every machine.
        Assert.Equal(ConvolutionCost.Widest256 ? ConvolutionRoute.Kernel : ConvolutionRoute.Direct, layer.Route(x));
        var expected = layer.Forward(x, ConvolutionRoute.Reference);
        AssertClose(expected, layer.Forward(x, ConvolutionRoute.Direct), 1e-5, "W8A8 direct");
        AssertClose(expected, layer.call(x), 1e-5, "W8A8 by the rule");
    }

    [Fact]
    public void StaticW8A8QuantizesTheInputItselfOnlyWhereTheKernelRunsOnThePaddedImage()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(35);
        var act = new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, 0.02f, 120);
        foreach (var (conv, x) in new (nn.Module<Tensor, Tensor>, Tensor)[]
        {
            (nn.Conv1d(2, 3, 5, padding: 2), torch.randn(1, 2, 300)),                              // stride 1: fused
            (nn.Conv2d(3, 4, (3, 3), padding: (1, 0)), torch.randn(2, 3, 9, 10)),                      // padding rows only: one run per plane
            (nn.Conv1d(2, 3, 5, padding: 2), torch.randn(1, 2, DirectConvolution.MaxWideRow + 100)), // row too long: a pass first
            (nn.Conv2d(3, 4, 3, stride: 2, padding: 1), torch.randn(2, 3, 17, 15)),               // strided: fused into the phases
            (nn.Conv2d(3, 32, 3, stride: 2, padding: 1), torch.randn(2, 3, 224, 224)),            // the stem at batch 2 (the rule's route with the 512-bit VNNI kernel)
            (nn.Conv1d(2, 3, 4, stride: 3, padding: 2), torch.randn(2, 2, 40)),                      // stride 3: fused
        })
        {
            using var layer = (QuantizedConv)QuantizedModules.Quantize(conv, QuantizationRecipe.Int8WeightOnly().BaseWeights, act);
            ForBothPaddings(() => AssertClose(layer.Forward(x, ConvolutionRoute.Reference), layer.Forward(x, ConvolutionRoute.Direct), 1e-5, $"W8A8 [{string.Join(",", x.shape)}]"));
        }
    }

    [Fact]
    public void InputsThatNeedGradientsTakeTheDifferentiablePath()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(33);
        using var layer = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(1, 16, 3), QuantizationRecipe.Int8WeightOnly().BaseWeights);
        var x = torch.randn(1, 1, 28, 28).requires_grad_();
        Assert.Equal(ConvolutionRoute.Reference, layer.Route(x));
        var y = layer.call(x);
        Assert.True(y.requires_grad);
        y.sum().backward();
        // d(sum y)/dx through the dequantized weight: libtorch's own gradient of the reference convolution.
        var expected = torch.autograd.grad([nn.functional.conv2d(x, layer.DequantizeWeight(), layer.bias).sum()], [x])[0];
        AssertClose(expected, x.grad!, 1e-6, "input gradient");
    }

    [Fact]
    public void MeasuredRuleTakesTheDirectKernelForSmallCallsOnlyUnderBothRules()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        const ConvolutionRoute D = ConvolutionRoute.Direct, R = ConvolutionRoute.Reference, B = ConvolutionRoute.BFloat16, K = ConvolutionRoute.Kernel;

        // MNIST conv1 at batch 1 (676 positions x 16 x 9 = 97K multiply-adds) and conv2 (121 x 32 x 144 = 557K): small.
        var conv1 = new Im2Col(1, 28, 28, 3, 3, 1, 1, 0, 0, 1, 1);
        AssertChoice(conv1, 16, false, D, D, "MNIST conv1 batch 1");
        AssertLayerRoute(nn.Conv2d(1, 16, 3), null, torch.randn(1, 1, 28, 28), conv1, D, D, "MNIST conv1 batch 1 layer");
        var conv2 = new Im2Col(16, 13, 13, 3, 3, 1, 1, 0, 0, 1, 1);
        AssertChoice(conv2, 32, false, D, D, "MNIST conv2 batch 1");
        // Where the float kernels run at 256 bits (the float32 rule), small calls of 64 terms or more take the packed
        // kernels: conv2 (144 terms) does, conv1 (9) keeps the small kernel.
        AssertChoice(conv2, 32, false, D, K, "MNIST conv2 batch 1 at 256 bits", float256: true);
        AssertChoice(conv1, 16, false, D, D, "MNIST conv1 batch 1 at 256 bits", float256: true);
        AssertChoice(conv2, 32, true, D, K, "MNIST conv2 W8A8 batch 1 at 256 bits", float256: true);
        AssertLayerRoute(nn.Conv2d(16, 32, 3), null, torch.randn(1, 16, 13, 13), conv2, D, ConvolutionCost.Widest256 ? K : D, "MNIST conv2 batch 1 layer");
        // conv2 at batch 64 (35.7M): bfloat16 (144 reduction terms) where it may, libtorch float32 otherwise.
        var conv2Batch = conv2.ForImages(64);
        AssertChoice(conv2Batch, 32, false, B, R, "MNIST conv2 batch 64");
        AssertLayerRoute(nn.Conv2d(16, 32, 3), null, torch.randn(64, 16, 13, 13), conv2Batch, B, R, "MNIST conv2 batch 64 layer");
        // conv1 at batch 64 (6.2M, 9 terms): the small kernel under the float32 rule (FewTermDirectMaxWork), libtorch
        // float32 under the bfloat16 rule.
        AssertChoice(conv1.ForImages(64), 16, false, R, D, "MNIST conv1 batch 64");
        // A 3-channel stem, 3->32 3x3 stride 2 on 224x224 (12,544 positions, 10.8M): 27 terms < 64, float32 both ways
        // (one image: not FewTermWeightOnlyMinImages); at batch 2 the small kernel under the float32 rule.
        var stem = new Im2Col(3, 224, 224, 3, 3, 2, 2, 1, 1, 1, 1);
        AssertChoice(stem, 32, false, R, R, "stem");
        AssertLayerRoute(nn.Conv2d(3, 32, 3, stride: 2, padding: 1), null, torch.randn(1, 3, 224, 224), stem, R, R, "stem layer");
        AssertLayerRoute(nn.Conv2d(3, 32, 3, stride: 2, padding: 1), null, torch.randn(2, 3, 224, 224), stem.ForImages(2), R, D, "stem layer at batch 2");
        // K = 576 > DirectConvolution.MaxReduction: never the small kernel.
        var wide = new Im2Col(64, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1);
        AssertChoice(wide, 64, false, B, R, "3x3 64->64 on 56x56");
        // On 9 positions (few multiply-adds, too long a reduction): the packed kernels under the float32 rule (few positions).
        AssertChoice(new Im2Col(64, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1), 8, false, B, K, "K 576 on 9 positions");

        // The edges: DirectMaxWork multiply-adds exactly is small, one output channel more is not. 16 channels x 2x2 = 64
        // reduction terms (BFloat16MinReduction) on 32x32 positions, 64 outputs: 1024 x 64 x 64 = 2^22.
        var edge = new Im2Col(16, 33, 33, 2, 2, 1, 1, 0, 0, 1, 1);
        Assert.Equal(ConvolutionCost.DirectMaxWork, (long)edge.Positions * 64 * edge.Rows);
        AssertChoice(edge, 64, false, D, D, "DirectMaxWork multiply-adds");
        AssertChoice(edge, 64, false, D, K, "DirectMaxWork multiply-adds, 64 terms, at 256 bits", float256: true);
        AssertChoice(new Im2Col(7, 10, 10, 3, 3, 1, 1, 1, 1, 1, 1), 64, false, D, D, "small, 63 terms, at 256 bits", float256: true);
        AssertChoice(edge, 65, false, B, R, "DirectMaxWork + 1024 multiply-adds, 64 terms");
        // 63 reduction terms (7 channels x 3x3) on a call that is not small: float32 both ways.
        var k63 = new Im2Col(7, 100, 100, 3, 3, 1, 1, 1, 1, 1, 1);
        AssertChoice(k63, 64, false, R, R, "63 terms");
        AssertChoice(new Im2Col(8, 100, 100, 3, 3, 1, 1, 1, 1, 1, 1), 64, false, B, R, "72 terms");
    }

    [Fact]
    public void AlternatingLayersThroughTheThreadBufferEachGetTheirOwnWeight()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(34);
        // 128 x 128 x 3 x 3 = 147,456 weight elements: the reference route dequantizes into the thread's buffer.
        var a = (TorchSharp.Modules.Convolution)nn.Conv2d(128, 128, 3, padding: 1);
        var b = (TorchSharp.Modules.Convolution)nn.Conv2d(128, 128, 3, padding: 1);
        Assert.InRange(a.weight!.numel(), QuantizedConv.BufferMinElements, QuantizedConv.BufferMaxElements);
        using var qa = (QuantizedConv)QuantizedModules.Quantize(a, QuantizationRecipe.Int8WeightOnly().BaseWeights);
        using var qb = (QuantizedConv)QuantizedModules.Quantize(b, QuantizationRecipe.Int8WeightOnly().BaseWeights);
        var x = torch.randn(1, 128, 6, 6);
        for (int i = 0; i < 4; i++)
        {
            var layer = i % 2 == 0 ? qa : qb;
            var expected = nn.functional.conv2d(x, layer.DequantizeWeight(), layer.bias, padding: [1, 1]);
            AssertClose(expected, layer.Forward(x, ConvolutionRoute.Reference), 1e-6, $"call {i}");
        }
    }
}
