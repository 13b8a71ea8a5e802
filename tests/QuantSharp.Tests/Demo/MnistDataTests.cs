using QuantSharp.Cli.Demo;
using TorchSharp;

namespace QuantSharp.Tests.Demo;

public class MnistDataTests
{
    [Fact]
    public void Pixels_are_normalised_with_the_MNIST_mean_and_std()
    {
        var pixels = new byte[2 * 784];
        pixels[0] = 255;
        pixels[784 + 783] = 51;
        using var set = MnistSet.FromBytes(pixels, [3, 9], 2, "hand-made");
        Assert.Equal(new long[] { 2, 1, 28, 28 }, set.Images.shape);
        var x = set.Images.data<float>().ToArray();
        Assert.Equal((1f - 0.1307f) / 0.3081f, x[0], 5);
        Assert.Equal((0f - 0.1307f) / 0.3081f, x[1], 5);
        Assert.Equal((51f / 255f - 0.1307f) / 0.3081f, x[784 + 783], 5);
        Assert.Equal(new long[] { 3, 9 }, set.Labels.data<long>().ToArray());
    }
}
