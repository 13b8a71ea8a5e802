using System.CommandLine;
using System.Text.Json.Nodes;
using QuantSharp.Cli;
using QuantSharp.Cli.Demo;
using QuantSharp.Serialization;
using QuantSharp.Tests.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Demo;

/// <summary>
/// One recipe, one file: <c>demo --save DIR</c> writes each variant through <see cref="Quantizer.Save"/> with its recipe,
/// and <c>quantsharp quantize MODEL OUT --config DIR/VARIANT.recipe.json</c> writes the same tensors (names, dtypes,
/// shapes, bytes) and the same per-layer metadata and recipe; <see cref="Quantizer.Load{T}"/> reads both.
/// </summary>
public class DemoSaveTests
{
    private static (int Exit, string Output, string Error) RunCli(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int exit = Program.BuildRoot().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (exit, output.ToString(), error.ToString());
    }

    [Fact]
    public void DemoSaveAndQuantizeConfigWriteTheSameFile()
    {
        using var dir = new TempDir();
        string save = dir["saved"];
        var (exit, _, error) = RunCli("demo", "--data", "bundled", "--limit", "64", "--calibration-images", "32", "--json", "--save", save);
        Assert.True(exit == 0, error);
        string[] variants = ["float16", "int8-per-channel", "int4-group32", "w8a8", "w8a8-dynamic"];
        Assert.Equal(variants.SelectMany(v => new[] { v + ".recipe.json", v + ".safetensors" }).Order(),
            Directory.GetFiles(save).Select(Path.GetFileName).Order());

        using var x = MnistData();
        foreach (string v in variants)
        {
            string fromModel = Path.Combine(save, v + ".safetensors");
            string fromCli = dir[v + ".cli.safetensors"];
            var (code, _, err) = RunCli("quantize", DemoRunner.BundledModelPath, fromCli, "--config", Path.Combine(save, v + ".recipe.json"), "--json");
            Assert.True(code == 0, $"{v}: {err}");

            using var a = SafetensorsFile.Open(fromModel);
            using var b = SafetensorsFile.Open(fromCli);
            bool weightOnly = v != "w8a8";
            var names = b.Tensors.Select(t => t.Name).Order().ToList();
            // W8A8: the model file also holds each layer's calibrated input scale and zero point; the weights are compared.
            var modelNames = a.Tensors.Select(t => t.Name).Where(n => weightOnly || !n.Contains(".input_")).Order().ToList();
            Assert.Equal(names, modelNames);
            if (v != "float16") Assert.Contains("conv2.weight.scale", names);
            foreach (string n in names)
            {
                var ia = a.GetInfo(n);
                var ib = b.GetInfo(n);
                Assert.Equal(ib.DType, ia.DType);
                Assert.Equal(ib.Shape, ia.Shape);
                Assert.True(a.ReadBytes(n).AsSpan().SequenceEqual(b.ReadBytes(n)), $"{v}: bytes of {n} differ");
            }

            var la = JsonNode.Parse(a.Metadata[QuantizedCheckpoint.LayersKey])!.AsObject();
            var lb = JsonNode.Parse(b.Metadata[QuantizedCheckpoint.LayersKey])!.AsObject();
            Assert.Equal(lb.Select(kv => kv.Key).Order(), la.Select(kv => kv.Key).Order());
            foreach (var (n, entry) in lb)
            {
                var ea = la[n]!.DeepClone().AsObject();
                if (!weightOnly) Assert.True(ea.Remove("input"), n); // W8A8: the model records its input quantization too
                Assert.True(JsonNode.DeepEquals(entry, ea), $"{v}: per-layer entry of {n}: {entry!.ToJsonString()} vs {ea.ToJsonString()}");
                Assert.Equal("F32", entry!["original_dtype"]!.GetValue<string>());
                Assert.NotNull(entry["sqnr_db"]);
            }
            Assert.True(JsonNode.DeepEquals(JsonNode.Parse(a.Metadata[QuantizedCheckpoint.ConfigKey]), JsonNode.Parse(b.Metadata[QuantizedCheckpoint.ConfigKey])), v);
            Assert.Equal(QuantizationRecipe.Load(Path.Combine(save, v + ".recipe.json")).ToJson(),
                QuantizationRecipe.FromJson(b.Metadata[QuantizedCheckpoint.ConfigKey]).ToJson());

            // Quantizer.Load reads both; for weight-only variants the two models are the same model.
            using var ma = Quantizer.Load(() => new MnistNet(), fromModel);
            using var mb = Quantizer.Load(() => new MnistNet(), fromCli);
            using var ya = ma.call(x);
            using var yb = mb.call(x);
            if (weightOnly) Assert.True(Modules.TestData.BitEqual(ya, yb), $"{v}: outputs differ");
            else Assert.True(QuantSharp.Validation.Metrics.Sqnr(ya, yb) > 20, $"{v}: W8A8 vs weight-only int8 outputs too far apart");
        }

        // The int4 variant stores conv2 (16 x 3 x 3 = 144 inputs per filter) in groups of 16 along the flattened
        // reduction axis: packed [32, 72] with [32, 9] scales, original shape in the per-layer entry.
        using var int4 = SafetensorsFile.Open(dir["int4-group32.cli.safetensors"]);
        Assert.Equal(new long[] { 32, 72 }, int4.GetInfo("conv2.weight").Shape);
        Assert.Equal(new long[] { 32, 9 }, int4.GetInfo("conv2.weight.scale").Shape);
        var conv2 = JsonNode.Parse(int4.Metadata[QuantizedCheckpoint.LayersKey])!["conv2.weight"]!;
        Assert.Equal("[32,16,3,3]", conv2["shape"]!.ToJsonString());
        Assert.Equal("group:16", conv2["granularity"]!.GetValue<string>());
    }

    [Fact]
    public void QuantizeInt4WorksOnTheBundledCnnWithFallbacks()
    {
        using var dir = new TempDir();
        var (code, output, err) = RunCli("quantize", DemoRunner.BundledModelPath, dir["o.safetensors"], "--qtype", "int4", "--json");
        Assert.True(code == 0, err);
        var report = JsonNode.Parse(output)!;
        // conv1 (9 inputs per filter, odd): int8 per-channel; conv2 (144): group 72; fc1 (800): group 100; fc2 (64): group 64.
        var specs = report["tensors"]!.AsArray().Where(t => t!["action"]!.GetValue<string>() == "quantized")
            .ToDictionary(t => t!["name"]!.GetValue<string>(), t => t!["spec"]!.GetValue<string>());
        Assert.Equal("int8 symmetric per-channel", specs["conv1.weight"]);
        Assert.Equal("int4 symmetric group:72", specs["conv2.weight"]);
        Assert.Equal("int4 symmetric group:100", specs["fc1.weight"]);
        Assert.Equal("int4 symmetric group:64", specs["fc2.weight"]);
        var warnings = report["warnings"]!.AsArray().Select(w => w!.GetValue<string>()).ToList();
        Assert.Equal(4, warnings.Count);
        Assert.Contains(warnings, w => w.StartsWith("'conv2.weight' [32, 16, 3, 3]: group size 128 does not divide the reduction length 144", StringComparison.Ordinal));
        using var m = Quantizer.Load(() => new MnistNet(), dir["o.safetensors"]);
        using var reference = MnistNet.Load(DemoRunner.BundledModelPath);
        using var x = MnistData();
        Assert.True(QuantSharp.Validation.Metrics.Sqnr(reference.call(x), m.call(x)) > 10);
    }

    private static Tensor MnistData()
    {
        using var set = DemoRunner.LoadBundled(32);
        return set.Images.clone();
    }
}
