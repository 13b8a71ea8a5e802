using QuantSharp.Modules;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Modules;

/// <summary>
/// <see cref="QuantizedLinear"/> through the kernels behaves as the reference path (dequantized weight, float op):
/// every weight type, 1-D/2-D/3-D and non-contiguous inputs, float16/bfloat16 inputs, W8A8 static and dynamic in
/// integers, and inputs that need gradients still get them.
/// </summary>
public class LinearKernelTests
{
    public static IEnumerable<object[]> Specs() =>
    [
        ["int8 per-channel"], ["int8 group:16"], ["uint8 affine per-channel"], ["int4 group:32"], ["uint4 affine group:16"],
        ["int8 per-tensor"], ["float16"], ["bfloat16"],
    ];

    private static QuantSpec Parse(string text) => text switch
    {
        "int8 per-channel" => new QuantSpec(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0)),
        "int8 group:16" => new QuantSpec(QuantType.Int8, QuantScheme.Affine, new PerGroup(16)),
        "uint8 affine per-channel" => new QuantSpec(QuantType.UInt8, QuantScheme.Affine, new PerAxis(0)),
        "int4 group:32" => new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(32)),
        "uint4 affine group:16" => new QuantSpec(QuantType.UInt4, QuantScheme.Affine, new PerGroup(16)),
        "int8 per-tensor" => new QuantSpec(QuantType.Int8, QuantScheme.Affine, Granularity.Tensor),
        "float16" => new QuantSpec(QuantType.Float16),
        _ => new QuantSpec(QuantType.BFloat16),
    };

    private static void AssertClose(Tensor expected, Tensor actual, double relative = 1e-5)
    {
        Assert.Equal(expected.shape, actual.shape);
        Assert.Equal(expected.dtype, actual.dtype);
        if (expected.numel() == 0) return; // an empty batch: shape and dtype are all there is
        using var e = expected.to(ScalarType.Float64);
        using var a = actual.to(ScalarType.Float64);
        double scale = e.abs().max().item<double>() + 1e-12;
        double err = (e - a).abs().max().item<double>();
        Assert.True(err <= relative * scale, $"max |error| {err:G3} against max |value| {scale:G3}");
    }

    [Theory]
    [MemberData(nameof(Specs))]
    public void EveryShapeMatchesTheReferencePath(string specText)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(11);
        var linear = nn.Linear(96, 40);
        using var layer = new QuantizedLinear(QuantizedWeight.Quantize(linear.weight!, Parse(specText)), linear.bias, null);
        var w = layer.DequantizeWeight();
        var bias = layer.bias;
        foreach (var x in new[] { torch.randn(96), torch.randn(5, 96), torch.randn(2, 3, 96), torch.randn(96, 7).t(), torch.randn(4, 2, 96).transpose(0, 1), torch.randn(0, 96), torch.randn(2, 0, 96) })
        {
            var expected = nn.functional.linear(x, w, bias);
            AssertClose(expected, layer.call(x));
        }
    }

    [Fact]
    public void AWeightsLinearTakesAnyBiasTheFloatLinearTakes()
    {
        // QuantizedWeight.Linear is public: a float64 bias, and a strided one, go through the kernel as through libtorch.
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(12);
        var linear = nn.Linear(64, 24);
        var weight = QuantizedWeight.Quantize(linear.weight!, Parse("int8 per-channel"));
        var w = weight.Dequantize();
        var x = torch.randn(5, 64);
        foreach (var bias in new[] { torch.randn(24, dtype: ScalarType.Float64), torch.randn(24, 2)[TensorIndex.Colon, 0] })
            AssertClose(nn.functional.linear(x, w, bias.to(ScalarType.Float32)), weight.Linear(x, bias));
    }

    [Theory]
    [InlineData("int8 per-channel")]
    [InlineData("int8 per-tensor")]
    [InlineData("int4 group:32")]
    [InlineData("uint4 affine group:16")]
    public void PointwiseConvolutionsRunTheKernelAndMatchTheReferencePath(string specText)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(13);
        var conv2d = nn.Conv2d(64, 40, 1);
        using var layer2d = (QuantizedConv)QuantizedModules.Quantize(conv2d, Parse(specText));
        var w2d = layer2d.DequantizeWeight();
        // Positions per image: 35 and 70 (partial strips), one (a single column); unbatched; non-contiguous.
        foreach (var x in new[] { torch.randn(3, 64, 5, 7), torch.randn(2, 64, 7, 10), torch.randn(4, 64, 1, 1), torch.randn(64, 4, 9), torch.randn(2, 64, 6, 5).transpose(2, 3) })
        {
            var expected = nn.functional.conv2d(x, w2d, layer2d.bias);
            AssertClose(expected, layer2d.call(x));
        }
        // The kernel ran (the layout has it for this weight), rather than the dequantize-and-convolve fallback.
        Assert.NotNull(layer2d.weight.Layout.Convolution(torch.randn(2, 64, 3, 3), new QuantSharp.Kernels.Im2Col(64, 3, 3, 1, 1, 1, 1, 0, 0, 1, 1), layer2d.bias, null));

        var conv1d = nn.Conv1d(64, 24, 1, bias: false);
        using var layer1d = (QuantizedConv)QuantizedModules.Quantize(conv1d, Parse(specText));
        var x1 = torch.randn(5, 64, 33);
        AssertClose(nn.functional.conv1d(x1, layer1d.DequantizeWeight()), layer1d.call(x1));
    }

    [Theory]
    [InlineData(ScalarType.Float16)]
    [InlineData(ScalarType.BFloat16)]
    public void HalfInputsGiveHalfOutputsAsTheFloatLayer(ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(12);
        var linear = nn.Linear(64, 24);
        using var layer = new QuantizedLinear(QuantizedWeight.Quantize(linear.weight!, Parse("int4 group:32")), linear.bias, null);
        var x = torch.randn(3, 64).to(dtype);
        var y = layer.call(x);
        Assert.Equal(dtype, y.dtype);
        var expected = nn.functional.linear(x.to(ScalarType.Float32), layer.DequantizeWeight(), layer.bias).to(dtype);
        AssertClose(expected, y, relative: 1e-2); // one half-precision rounding of the output
    }

    [Fact]
    public void InputsThatNeedGradientsTakeTheDifferentiablePath()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(13);
        var linear = nn.Linear(32, 8);
        using var layer = new QuantizedLinear(QuantizedWeight.Quantize(linear.weight!, Parse("int8 per-channel")), linear.bias, null);
        var x = torch.randn(4, 32).requires_grad_(true);
        layer.call(x).sum().backward();
        Assert.NotNull(x.grad);
        // d(sum y)/dx = column sums of the dequantized weight, for every row.
        using var noGrad = no_grad();
        var expected = layer.DequantizeWeight().sum(0L).expand(4, 32);
        AssertClose(expected, x.grad!);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void W8A8InIntegersMatchesTheSimulatedPath(bool dynamic)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(14);
        var linear = nn.Linear(80, 30);
        var x = torch.randn(6, 80);
        var act = dynamic ? null : new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, 0.021f, 131);
        using var layer = new QuantizedLinear(QuantizedWeight.Quantize(linear.weight!, Parse("int8 per-channel")), linear.bias, act);
        layer.DynamicInput = dynamic;
        var simulated = nn.functional.linear(layer.QuantizeInput(x), layer.DequantizeWeight(), layer.bias);
        AssertClose(simulated, layer.call(x), relative: 2e-6);
        // Other inputs behave as the float layer's: half precision in and out, non-contiguous 3-D, an empty batch.
        var half = x.to(ScalarType.Float16);
        var halfSimulated = nn.functional.linear(layer.QuantizeInput(half.to(ScalarType.Float32)), layer.DequantizeWeight(), layer.bias).to(ScalarType.Float16);
        AssertClose(halfSimulated, layer.call(half), relative: 1e-3);
        var strided = x.reshape(2, 3, 80).transpose(0, 1);
        AssertClose(nn.functional.linear(layer.QuantizeInput(strided.contiguous()), layer.DequantizeWeight(), layer.bias), layer.call(strided), relative: 2e-6);
        Assert.Equal([0L, 30L], layer.call(torch.randn(0, 80)).shape);
        if (dynamic)
        {
            // The dynamic integers are torchao's: per-row amax / 127.
            var s = (x.abs().amax([-1], keepdim: true) / 127f);
            var q = (x * s.reciprocal()).round().clamp(-127, 127);
            AssertClose(q * s, layer.QuantizeInput(x), relative: 0);
        }
    }

    [Fact]
    public void Int8DynamicPresetMakesEveryLinearQuantizeItsInputPerRow()
    {
        torch.manual_seed(15);
        using var model = new QuantSharp.Cli.Demo.MnistNet();
        var result = Quantizer.Quantize(model, QuantizationRecipe.Int8Dynamic(), factory: () => new QuantSharp.Cli.Demo.MnistNet());
        using var quantized = result.Model;
        var linears = quantized.modules().OfType<QuantizedLinear>().ToList();
        Assert.NotEmpty(linears);
        Assert.All(linears, l => Assert.True(l.DynamicInput));
        Assert.All(quantized.modules().OfType<QuantizedModule>().Where(m => m is not QuantizedLinear), m => Assert.False(m.DynamicInput));
        var both = QuantizationRecipe.Int8Dynamic() with { Activations = QuantizationRecipe.DefaultActivations };
        var e = Assert.Throws<RecipeException>(() => Quantizer.Quantize(model, both, factory: () => new QuantSharp.Cli.Demo.MnistNet()));
        Assert.Contains("exclude each other", e.Message);
    }
}
