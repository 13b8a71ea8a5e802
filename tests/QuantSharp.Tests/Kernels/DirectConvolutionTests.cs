using QuantSharp.Kernels;
using QuantSharp.Modules;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;
using static QuantSharp.Tests.Kernels.ConvolutionKernelTests;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// The small-convolution route (<see cref="DirectConvolution"/>) equals the dequantize + libtorch route within float
/// rounding for every weight format, on every vector width, over strides, padding (rows and columns entirely in it),
/// dilation, Conv1d, batch 1 and more, unbatched and non-contiguous inputs, output channels that leave a partial group
/// of four and positions that leave partial vectors and blocks; W8A8 through it equals the simulated path; an input that
/// needs gradients takes the differentiable path; the measured rule takes it for small calls only; the reference
/// route's per-thread weight buffer gives each layer its own weight when layers alternate.
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
    ];

    [Theory]
    [InlineData(512)]
    [InlineData(256)]
    [InlineData(128)]
    [InlineData(0)]
    public void DirectRouteMatchesDequantizeAndLibtorchForEveryFormatGeometryAndWidth(int maxBits)
    {
        int saved = Simd.MaxBits;
        Simd.MaxBits = maxBits;
        try
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            torch.manual_seed(31);
            foreach (var (conv, inputs) in Cases())
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
        }
        finally
        {
            Simd.MaxBits = saved;
        }
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
        Assert.Equal(ConvolutionRoute.Direct, layer.Route(x)); // the MNIST CNN's second convolution
        AssertClose(layer.Forward(x, ConvolutionRoute.Reference), layer.call(x), 1e-5, "W8A8 direct");
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
    public void MeasuredRuleTakesTheDirectKernelForSmallCallsOnly()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var int8 = QuantizationRecipe.Int8WeightOnly().BaseWeights;
        ConvolutionRoute RouteOf(nn.Module<Tensor, Tensor> conv, Tensor x)
        {
            using var layer = (QuantizedConv)QuantizedModules.Quantize(conv, int8);
            return layer.Route(x);
        }
        Assert.Equal(ConvolutionRoute.Direct, RouteOf(nn.Conv2d(1, 16, 3), torch.randn(1, 1, 28, 28)));          // MNIST conv1, batch 1
        Assert.Equal(ConvolutionRoute.Direct, RouteOf(nn.Conv2d(16, 32, 3), torch.randn(1, 16, 13, 13)));        // MNIST conv2, batch 1
        Assert.Equal(ConvolutionRoute.Reference, RouteOf(nn.Conv2d(16, 32, 3), torch.randn(64, 16, 13, 13)));    // batch 64: libtorch
        Assert.Equal(ConvolutionRoute.Reference, RouteOf(nn.Conv2d(64, 64, 3, padding: 1), torch.randn(1, 64, 56, 56))); // K = 576: libtorch
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
