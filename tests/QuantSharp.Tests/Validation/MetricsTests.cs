using QuantSharp.Tensors;
using QuantSharp.Validation;
using TorchSharp;

namespace QuantSharp.Tests.Validation;

public class MetricsTests
{
    [Fact]
    public void SqnrMatchesTorchComputeSqnr()
    {
        using var file = Reference.OpenTensors();
        using var a = file.ReadTensor("sqnr/a");
        using var b = file.ReadTensor("sqnr/b");
        double expected = Reference.Json.GetProperty("sqnr").GetProperty("value_db").GetDouble();
        Assert.Equal(expected, Metrics.Sqnr(a, b), 4);
    }

    [Fact]
    public void SqnrOfEqualTensorsIsInfinite()
    {
        using var a = torch.arange(10, dtype: torch.float32);
        Assert.Equal(double.PositiveInfinity, Metrics.Sqnr(a, a));
    }

    [Fact]
    public void SqnrRejectsDifferentShapes()
    {
        using var a = torch.zeros(3, 4);
        using var b = torch.zeros(4, 3);
        var ex = Assert.Throws<ArgumentException>(() => Metrics.Sqnr(a, b));
        Assert.Contains("[3, 4]", ex.Message);
    }

    /// <summary>Every quantized reference tag records PyTorch's SQNR of its fake-quant output; ours agrees.</summary>
    [Theory]
    [MemberData(nameof(Tensors.QuantizedTensorParityTests.MinMaxTags), MemberType = typeof(Tensors.QuantizedTensorParityTests))]
    public void SqnrOfOurQuantizationMatchesReference(string caseName, string tag)
    {
        var spec = Tensors.QuantizedTensorParityTests.SpecForTag(tag)!;
        float expected = Reference.Json.GetProperty("cases").GetProperty(caseName).GetProperty("observers").GetProperty(tag)
            .GetProperty("sqnr_db").GetSingleValue();
        using var file = Reference.OpenTensors();
        using var input = file.ReadTensor($"{caseName}/input");
        using var q = QuantizedTensor.Quantize(input, spec);
        using var deq = q.Dequantize();
        double sqnr = Metrics.Sqnr(input, deq);
        if (float.IsPositiveInfinity(expected)) Assert.Equal(double.PositiveInfinity, sqnr);
        else Assert.Equal(expected, sqnr, 3);
    }
}
