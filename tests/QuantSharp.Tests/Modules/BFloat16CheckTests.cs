using QuantSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Modules;

/// <summary>
/// <see cref="BFloat16Check"/>: its comparison accepts an operation that is right within bfloat16's output rounding and
/// rejects one with a wrong tail of output channels or a relative error of 2^-5; its inputs are exact in bfloat16 and
/// leave libtorch's random generator alone; where it rejects libtorch's operations the layers' rules take no bfloat16
/// route (the route tests of <c>BFloat16ConvolutionTests</c> and <c>LinearRouteTests</c> check each machine's case).
/// </summary>
public class BFloat16CheckTests
{
    private static Tensor Float32Conv(Tensor x, Tensor w, Tensor? b) =>
        nn.functional.conv2d(x.to(ScalarType.Float32), w.to(ScalarType.Float32), b?.to(ScalarType.Float32), [1, 1], [1, 1]);

    [Fact]
    public void TheComparisonAcceptsRightOperationsAndRejectsWrongOnes()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = BFloat16Check.Values([2, 6, 9, 11], 1);
        var w = BFloat16Check.Values([10, 6, 3, 3], 2);
        var b = BFloat16Check.Values([10], 3);
        // Right: float32 arithmetic on the bfloat16 values, and the same rounded to bfloat16 (its output rounding).
        Assert.True(BFloat16Check.Agrees(x, w, b, Float32Conv, Float32Conv));
        Assert.True(BFloat16Check.Agrees(x, w, b, (xb, wb, bb) => Float32Conv(xb, wb, bb).to(ScalarType.BFloat16), Float32Conv));
        Assert.True(BFloat16Check.Agrees(x, w, b, (xb, wb, bb) => Float32Conv(xb, wb, bb) * (1 + 1.0 / 256), Float32Conv));
        // Wrong: the last two output channels lost (the tail of a block of 16), or every output 2^-5 too large.
        Assert.False(BFloat16Check.Agrees(x, w, b, (xb, wb, bb) =>
        {
            var y = Float32Conv(xb, wb, bb);
            y.narrow(1, 8, 2).zero_();
            return y;
        }, Float32Conv));
        Assert.False(BFloat16Check.Agrees(x, w, b, (xb, wb, bb) => Float32Conv(xb, wb, bb) * (1 + 1.0 / 32), Float32Conv));
        // Wrong shape.
        Assert.False(BFloat16Check.Agrees(x, w, b, (xb, wb, bb) => Float32Conv(xb, wb, bb).narrow(3, 0, 5), Float32Conv));
    }

    [Fact]
    public void TheValuesAreExactInBFloat16AndSpreadOverMinusOneToOne()
    {
        using var scope = NewDisposeScope();
        var v = BFloat16Check.Values([4, 250], 7);
        Assert.Equal(new long[] { 4, 250 }, v.shape);
        Assert.Equal(ScalarType.Float32, v.dtype);
        Assert.True(v.to(ScalarType.BFloat16).to(ScalarType.Float32).equal(v).all().item<bool>());
        Assert.True((v * 128).frac().eq(0).all().item<bool>());
        Assert.Equal(-1f, v.min().item<float>());
        Assert.Equal(127f / 128, v.max().item<float>());
        Assert.True(v.unique().Item1.numel() > 200, "too few distinct values");
        Assert.False(v.equal(BFloat16Check.Values([4, 250], 8)).all().item<bool>(), "two seeds gave the same values");
    }

    [Fact]
    public void TheChecksLeaveTheCallersRandomStateAlone()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(5);
        var expected = torch.randn(16);
        torch.manual_seed(5);
        BFloat16Check.ConvolutionsAgree();
        BFloat16Check.MatMulsAgree();
        Assert.True(expected.equal(torch.randn(16)).all().item<bool>());
    }
}
