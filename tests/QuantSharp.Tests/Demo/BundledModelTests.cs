using QuantSharp.Cli.Demo;
using TorchSharp;

namespace QuantSharp.Tests.Demo;

public class BundledModelTests
{
    [Fact]
    public void Bundled_slice_is_the_start_of_the_MNIST_test_set()
    {
        using var set = DemoRunner.LoadBundled();
        Assert.Equal(1000, set.Count);
        // The first labels of the official t10k-labels-idx1-ubyte are 7 2 1 0 4 1 4 9 5 9.
        Assert.Equal(new long[] { 7, 2, 1, 0, 4, 1, 4, 9, 5, 9 }, set.Labels.narrow(0, 0, 10).data<long>().ToArray());
        // Every digit occurs in the slice.
        Assert.Equal(10, set.Labels.unique().Item1.numel());
    }

    [Fact]
    public void Bundled_model_classifies_the_bundled_slice_at_least_98_5_percent()
    {
        using var model = MnistNet.Load(DemoRunner.BundledModelPath);
        using var set = DemoRunner.LoadBundled();
        double accuracy = set.Accuracy(model);
        Assert.InRange(accuracy, 0.985, 1.0);
    }

    [Fact]
    public void Loading_a_file_that_is_not_an_MnistNet_names_the_missing_tensors()
    {
        string path = Path.Combine(Path.GetTempPath(), $"not-mnist-{Guid.NewGuid()}.safetensors");
        // A valid safetensors file with one unrelated tensor: header {"other":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}.
        string json = "{\"other\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
        byte[] header = System.Text.Encoding.UTF8.GetBytes(json.PadRight((json.Length + 7) / 8 * 8)); // padded with spaces to a multiple of 8
        File.WriteAllBytes(path, [.. BitConverter.GetBytes((long)header.Length), .. header, 0, 0, 128, 63]);
        try
        {
            var e = Assert.Throws<InvalidDataException>(() => MnistNet.Load(path));
            Assert.Contains("conv1.weight", e.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }
}
