using QuantSharp.Kernels;
using QuantSharp.Modules;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Modules;

/// <summary>
/// The routes of a weight-only <see cref="QuantizedLinear"/> over many rows (<see cref="LinearCost"/>): the rule on
/// both kinds of CPU; the bfloat16 route agrees with the float32 computation within bfloat16's rounding (a bound
/// derived per output, every weight format, bias or not, 2-D/3-D and non-contiguous inputs, weights in and out of the
/// thread's buffer, weights larger than it in blocks of rows, two layers alternating through it); <see cref="QuantizedModule.UseBFloat16Compute"/> = false keeps
/// the float32 kernels and their results; the managed
/// bfloat16 dequantization equals libtorch's rounding of the float32 values bit for bit.
/// </summary>
public class LinearRouteTests
{
    private static readonly QuantSpec[] Specs =
    [
        new(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0)),
        new(QuantType.Int8, QuantScheme.Affine, Granularity.Tensor),
        new(QuantType.UInt8, QuantScheme.Affine, new PerGroup(16)),
        new(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(32)),
        new(QuantType.UInt4, QuantScheme.Affine, new PerGroup(16)),
        new(QuantType.Float16),
        new(QuantType.BFloat16),
    ];

    [Fact]
    public void RuleTakesBFloat16OverManyRowsAndTheKernelsElsewhere()
    {
        const QuantType i8 = QuantType.Int8, i4 = QuantType.Int4, f16 = QuantType.Float16, bf16 = QuantType.BFloat16;
        // Below 2^19 elements: 256 rows, whatever the format.
        Assert.Equal(LinearRoute.Kernel, LinearCost.Choose(255, 384, 384, i8, bfloat16: true));
        Assert.Equal(LinearRoute.Kernel, LinearCost.Choose(255, 384, 384, bf16, bfloat16: true));
        Assert.Equal(LinearRoute.Kernel, LinearCost.Choose(128, 512, 512, i8, bfloat16: true));
        Assert.Equal(LinearRoute.Kernel, LinearCost.Choose(128, 1023, 512, i8, bfloat16: true));
        Assert.Equal(LinearRoute.BFloat16, LinearCost.Choose(256, 384, 384, i4, bfloat16: true));
        Assert.Equal(LinearRoute.BFloat16, LinearCost.Choose(512, 128, 128, i8, bfloat16: true)); // exactly TinyElements
        // 2^19 to 2^22 elements: 96 rows; bfloat16 weights 32.
        Assert.Equal(LinearRoute.BFloat16, LinearCost.Choose(96, 1024, 512, i8, bfloat16: true)); // exactly LargeElements
        Assert.Equal(LinearRoute.Kernel, LinearCost.Choose(95, 1024, 512, i8, bfloat16: true));
        Assert.Equal(LinearRoute.Kernel, LinearCost.Choose(64, 1024, 1024, f16, bfloat16: true));
        Assert.Equal(LinearRoute.BFloat16, LinearCost.Choose(96, 1536, 384, i4, bfloat16: true));
        Assert.Equal(LinearRoute.BFloat16, LinearCost.Choose(32, 1024, 1024, bf16, bfloat16: true));
        Assert.Equal(LinearRoute.Kernel, LinearCost.Choose(31, 1024, 1024, bf16, bfloat16: true));
        Assert.Equal(LinearRoute.Kernel, LinearCost.Choose(63, 2048, 2047, i8, bfloat16: true)); // just below HugeElements
        Assert.Equal(LinearRoute.Kernel, LinearCost.Choose(95, 2048, 2047, i8, bfloat16: true));
        // From 2^22 elements (also beyond the thread's buffer, in blocks of rows): 64 rows; bfloat16 weights 32.
        Assert.Equal(LinearRoute.BFloat16, LinearCost.Choose(64, 2048, 2048, i8, bfloat16: true)); // exactly HugeElements
        Assert.Equal(LinearRoute.Kernel, LinearCost.Choose(63, 2048, 2048, i8, bfloat16: true));
        Assert.Equal(LinearRoute.BFloat16, LinearCost.Choose(64, 11008, 4096, f16, bfloat16: true));
        Assert.Equal(LinearRoute.Kernel, LinearCost.Choose(63, 11008, 4096, i4, bfloat16: true));
        Assert.Equal(LinearRoute.BFloat16, LinearCost.Choose(32, 4096, 4096, bf16, bfloat16: true));
        Assert.Equal(LinearRoute.Kernel, LinearCost.Choose(1, 4096, 4096, bf16, bfloat16: true));
        Assert.Equal(LinearRoute.BFloat16, LinearCost.Choose(512, 4096, 4096, i8, bfloat16: true));
        // Not where the CPU has no bfloat16 route; never on tiny weights (fixed cost).
        Assert.Equal(LinearRoute.Kernel, LinearCost.Choose(512, 384, 384, i8, bfloat16: false));
        Assert.Equal(LinearRoute.Kernel, LinearCost.Choose(512, 4096, 4096, bf16, bfloat16: false));
        Assert.Equal(LinearRoute.Kernel, LinearCost.Choose(512, 10, 64, i8, bfloat16: true));
    }

    [Fact]
    public void LayerRouteFollowsTheRuleAndGradientsOrOtherDtypesKeepTheKernels()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(41);
        var linear = nn.Linear(384, 384);
        using var layer = (QuantizedLinear)QuantizedModules.Quantize(linear, QuantizationRecipe.Int8WeightOnly().BaseWeights);
        var x = torch.randn(2, 150, 384); // 300 rows
        Assert.Equal(LinearCost.Choose(300, 384, 384, QuantType.Int8, QuantizedModule.BFloat16MatMuls), layer.Route(x));
        Assert.Equal(QuantizedModule.BFloat16MatMuls ? LinearRoute.BFloat16 : LinearRoute.Kernel, layer.Route(x));
        Assert.Equal(LinearRoute.Kernel, layer.Route(torch.randn(8, 384)));
        Assert.Equal(LinearRoute.Kernel, layer.Route(x.to(ScalarType.Float64)));
        using (torch.enable_grad())
            Assert.Equal(LinearRoute.Kernel, layer.Route(torch.randn(300, 384).requires_grad_()));
        Float32Compute.Run(() => Assert.Equal(LinearRoute.Kernel, layer.Route(x)));
    }

    /// <summary>
    /// |y_bf16 - y| per output is at most (2^-7 + 2^-16) (|W| |x| + |b|) + 2^-8 (|y| + that) + a float32 accumulation
    /// margin: weight, input and bias are each rounded to bfloat16 (unit roundoff u = 2^-8, so a product is off by up to
    /// 2u + u^2 of its size), the sum is accumulated in float32 and the result rounded to bfloat16 once more (u of it).
    /// </summary>
    private static void AssertWithinBFloat16(Tensor expected, Tensor actual, Tensor x, Tensor w, Tensor? b, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        Assert.Equal(ScalarType.Float32, actual.dtype);
        using var scope = NewDisposeScope();
        var e = expected.to(ScalarType.Float64);
        var a = actual.to(ScalarType.Float64);
        var magnitude = nn.functional.linear(x.to(ScalarType.Float64).abs(), w.to(ScalarType.Float64).abs(), b?.to(ScalarType.Float64).abs());
        double u = Math.Pow(2, -8);
        var products = magnitude * (2 * u + u * u);
        var bound = products + (e.abs() + products) * u + magnitude * 1e-6 + 1e-6;
        var excess = ((e - a).abs() - bound).max().item<double>();
        Assert.True(excess <= 0, $"{what}: error exceeds the bfloat16 bound by {excess:G3}");
        // And it is not float32 arithmetic by accident: bfloat16 rounding shows (inputs are random floats).
        Assert.True((e - a).abs().max().item<double>() > 0, $"{what}: identical to float32");
    }

    [Fact]
    public void BFloat16RouteAgreesWithFloat32WithinBFloat16Rounding()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(42);
        foreach (var (outputs, inputs) in new[] { (48, 96), (320, 256) }) // 4,608 elements (a new tensor) and 81,920 (the thread's buffer)
        foreach (bool withBias in new[] { true, false })
        foreach (var spec in Specs)
        {
            if (spec.Granularity is PerGroup g && inputs % g.GroupSize != 0) continue;
            var linear = nn.Linear(inputs, outputs, hasBias: withBias);
            using var layer = new QuantizedLinear(QuantizedWeight.Quantize(linear.weight!, spec), linear.bias, null);
            var w = layer.DequantizeWeight();
            foreach (var x in new[] { torch.randn(70, inputs), torch.randn(3, 30, inputs), torch.randn(inputs, 66).t() })
            {
                var expected = nn.functional.linear(x, w, layer.bias);
                var actual = layer.Forward(x, LinearRoute.BFloat16);
                AssertWithinBFloat16(expected, actual, x, w, layer.bias, $"{spec} {outputs}x{inputs} bias {withBias} [{string.Join(",", x.shape)}]");
            }
        }
    }

    [Fact]
    public void WeightsBeyondTheBufferRunTheBFloat16RouteInBlocksOfRows()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(45);
        long saved = QuantizedLinear.BFloat16BlockElements;
        try
        {
            foreach (var spec in Specs)
            foreach (bool withBias in new[] { true, false })
            {
                // 67 x 64 = 4,288 elements in blocks of 7 rows (448 elements): nine whole blocks and one of 4 rows.
                var linear = nn.Linear(64, 67, hasBias: withBias);
                using var layer = new QuantizedLinear(QuantizedWeight.Quantize(linear.weight!, spec), linear.bias, null);
                var w = layer.DequantizeWeight();
                foreach (var x in new[] { torch.randn(70, 64), torch.randn(2, 5, 64), torch.randn(64, 9).t() })
                {
                    QuantizedLinear.BFloat16BlockElements = 7 * 64;
                    var blocked = layer.Forward(x, LinearRoute.BFloat16);
                    QuantizedLinear.BFloat16BlockElements = saved;
                    var whole = layer.Forward(x, LinearRoute.BFloat16);
                    string what = $"{spec} bias {withBias} [{string.Join(",", x.shape)}]";
                    AssertWithinBFloat16(nn.functional.linear(x, w, layer.bias), blocked, x, w, layer.bias, what);
                    // The same bfloat16 values go into each output's dot product, block or not.
                    Assert.True(blocked.allclose(whole, rtol: 1e-5, atol: 1e-6), $"{what}: blocks differ from the whole weight");
                }
            }
        }
        finally
        {
            QuantizedLinear.BFloat16BlockElements = saved;
        }
    }

    [Fact]
    public void AlternatingLayersThroughTheBFloat16BufferEachGetTheirOwnWeight()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(43);
        var a = nn.Linear(512, 256);
        var b = nn.Linear(512, 256);
        Assert.InRange(a.weight!.numel(), QuantizedModule.BufferMinElements, QuantizedModule.BufferMaxElements);
        using var qa = (QuantizedLinear)QuantizedModules.Quantize(a, QuantizationRecipe.Int8WeightOnly().BaseWeights);
        using var qb = (QuantizedLinear)QuantizedModules.Quantize(b, QuantizationRecipe.Int8WeightOnly().BaseWeights);
        var x = torch.randn(80, 512);
        for (int i = 0; i < 4; i++)
        {
            var layer = i % 2 == 0 ? qa : qb;
            var w = layer.DequantizeWeight();
            AssertWithinBFloat16(nn.functional.linear(x, w, layer.bias), layer.Forward(x, LinearRoute.BFloat16), x, w, layer.bias, $"call {i}");
        }
    }

    [Fact]
    public void WithBFloat16ComputeOffManyRowsRunTheKernelsInFloat32()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(44);
        var linear = nn.Linear(384, 200);
        foreach (var spec in Specs)
        {
            using var layer = new QuantizedLinear(QuantizedWeight.Quantize(linear.weight!, spec), linear.bias, null);
            var x = torch.randn(300, 384);
            var w = layer.DequantizeWeight();
            var expected = nn.functional.linear(x, w, layer.bias);
            double scale = expected.abs().max().item<float>();
            Float32Compute.Run(() =>
            {
                Assert.Equal(LinearRoute.Kernel, layer.Route(x));
                Assert.True((expected - layer.call(x)).abs().max().item<float>() <= 1e-5 * scale, $"{spec}: float32 setting");
            });
            // The default takes bfloat16 where the CPU has it, float32 kernels where not.
            var actual = layer.call(x);
            if (QuantizedModule.BFloat16MatMuls) AssertWithinBFloat16(expected, actual, x, w, layer.bias, $"{spec}: default");
            else Assert.True((expected - actual).abs().max().item<float>() <= 1e-5 * scale, $"{spec}: default without bfloat16");
        }
    }

    [Fact]
    public void BFloat16DequantizationEqualsLibtorchRoundingOfTheFloat32Values()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(45);
        var weight = torch.randn(37, 160) * 3;
        foreach (var spec in Specs)
        {
            using var q = QuantizedWeight.Quantize(weight, spec);
            var f32 = torch.empty(37, 160);
            var bf16 = torch.empty(37, 160, ScalarType.BFloat16);
            Assert.True(q.Layout.DequantizeInto(f32), $"{spec}: float32");
            Assert.True(q.Layout.DequantizeInto(bf16), $"{spec}: bfloat16");
            var expected = f32.to(ScalarType.BFloat16);
            Assert.True(expected.bytes.SequenceEqual(bf16.bytes), $"{spec}: bits differ");
        }
    }
}
