using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests;

public class TorchSharpLoadsTests
{
    [Fact]
    public void LibTorchComputesAMatrixProduct()
    {
        // [[1,2],[3,4]] @ [[5,6],[7,8]] = [[19,22],[43,50]]
        using var a = tensor(new float[] { 1, 2, 3, 4 }, new long[] { 2, 2 });
        using var b = tensor(new float[] { 5, 6, 7, 8 }, new long[] { 2, 2 });
        using var c = mm(a, b);
        Assert.Equal(new float[] { 19, 22, 43, 50 }, c.data<float>().ToArray());
    }
}
