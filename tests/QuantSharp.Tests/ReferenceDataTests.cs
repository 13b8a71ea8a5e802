namespace QuantSharp.Tests;

public class ReferenceDataTests
{
    [Fact]
    public void ReferenceTensorsAreReadable()
    {
        using var file = Reference.OpenTensors();
        using var input = file.ReadTensor("gauss/input");
        long[] shape = Reference.Json.GetProperty("cases").GetProperty("gauss").GetProperty("shape")
            .EnumerateArray().Select(e => e.GetInt64()).ToArray();
        Assert.Equal(shape, input.shape);
        // The reference's MinMax observer saw the same data: its min/max are our min/max.
        var obs = Reference.Json.GetProperty("cases").GetProperty("gauss").GetProperty("observers").GetProperty("minmax_affine_qint8");
        Assert.Equal(obs.GetProperty("min_val")[0].GetSingle(), input.min().item<float>());
        Assert.Equal(obs.GetProperty("max_val")[0].GetSingle(), input.max().item<float>());
    }
}
