using System.CommandLine;
using System.Text.Json;
using QuantSharp.Cli.Demo;
using TorchSharp;

namespace QuantSharp.Tests.Cli;

/// <summary>A TorchSharp model saved by <see cref="Quantizer.Save"/> is a checkpoint that <c>quantsharp inspect</c> reads.</summary>
public class InspectSavedModelTests
{
    [Fact]
    public void InspectReadsAQuantizedModelFile()
    {
        torch.manual_seed(3);
        using var model = new MnistNet();
        var config = QuantizationRecipe.Int4WeightOnly(groupSize: 32) with
        {
            Overrides = [new("conv*", QuantType.Int8)],
        };
        var result = Quantizer.Quantize(model, config, factory: () => new MnistNet());
        string path = Path.Combine(Path.GetTempPath(), $"qs-inspect-{Guid.NewGuid():N}.safetensors");
        try
        {
            Quantizer.Save(result.Model, path);
            var output = new StringWriter();
            var error = new StringWriter();
            int code = QuantSharp.Cli.Program.BuildRoot().Parse(["inspect", path, "--json"])
                .Invoke(new InvocationConfiguration { Output = output, Error = error });
            Assert.True(code == 0, error.ToString());

            using var doc = JsonDocument.Parse(output.ToString());
            var layers = doc.RootElement.GetProperty("layers");
            Assert.Equal("int4", layers.GetProperty("fc1.weight").GetProperty("qtype").GetString());
            Assert.Equal("int8", layers.GetProperty("conv2.weight").GetProperty("qtype").GetString());
            // fc1: 64 x 800 int4 in groups of 32 -> 64 x 400 packed bytes and 64 x 25 scales.
            var tensors = doc.RootElement.GetProperty("tensors").EnumerateArray()
                .ToDictionary(t => t.GetProperty("name").GetString()!, t => t);
            Assert.Equal("U8", tensors["fc1.weight"].GetProperty("dtype").GetString());
            Assert.Equal(new long[] { 64, 400 }, tensors["fc1.weight"].GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()));
            Assert.Equal(new long[] { 64, 25 }, tensors["fc1.weight.scale"].GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()));
            Assert.Equal("F32", tensors["fc1.bias"].GetProperty("dtype").GetString());
        }
        finally
        {
            result.Model.Dispose();
            File.Delete(path);
        }
    }
}
