using QuantSharp.Modules;
using QuantSharp.Serialization;
using QuantSharp.Tests.Modules;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace QuantSharp.Tests.Serialization;

public sealed class QuantizedModelFileTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("quantsharp-model-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    public static TheoryData<string> Configs() => ["int8", "int4-mixed", "w8a8", "fp16", "bf16", "uint4-affine"];

    private static QuantizationRecipe ConfigFor(string name) => name switch
    {
        "int8" => QuantizationRecipe.Int8WeightOnly(),
        // First conv and classifier int8, the rest int4 group-16.
        "int4-mixed" => QuantizationRecipe.Int4WeightOnly(16) with
        {
            Overrides = [new("features.0", QuantType.Int8), new("classifier", QuantType.Int8)],
        },
        "w8a8" => QuantizationRecipe.Int8Static() with { CalibrationSamples = 32 },
        "fp16" => QuantizationRecipe.Float16(),
        "bf16" => QuantizationRecipe.BFloat16(),
        "uint4-affine" => QuantizationRecipe.ForWeights(new QuantSpec(QuantType.UInt4, QuantScheme.Affine, new PerGroup(16))) with
        {
            Exclude = ["features.0"],
        },
        _ => throw new ArgumentException(name),
    };

    [Theory]
    [MemberData(nameof(Configs))]
    public void SaveThenLoadGivesBitIdenticalOutputs(string configName)
    {
        using var scope = NewDisposeScope();
        var data = TestData.Batches(2, 16, [1, 12, 12]);
        var result = Quantizer.Quantize(new ConvNet(), ConfigFor(configName), () => new ConvNet(seed: 50), data);
        Assert.Equal(CheckStatus.Passed, result.Report!.ReloadCheck);
        string path = Path.Combine(_dir, configName + ".safetensors");
        Quantizer.Save(result.Model, path);
        Assert.Equal([path], Directory.GetFiles(_dir)); // no temporary file left behind

        var loaded = (Module<Tensor, Tensor>)Quantizer.Load(() => new ConvNet(seed: 51), path);
        var x = TestData.Batches(1, 8, [1, 12, 12], seed: 77)[0];
        var expected = ((Module<Tensor, Tensor>)result.Model).call(x);
        Assert.True(TestData.BitEqual(expected, loaded.call(x)));
        var a = result.Model.state_dict();
        var b = loaded.state_dict();
        Assert.Equal(a.Keys.Order(), b.Keys.Order());
        foreach (var (k, v) in a) Assert.True(TestData.BitEqual(v, b[k]), k);
        Assert.Equal(ModuleTree.Walk(result.Model).Select(e => e.Module.GetType()), ModuleTree.Walk(loaded).Select(e => e.Module.GetType()));
    }

    [Fact]
    public void FileIsAQuantizedCheckpointWhoseDequantizedWeightsMatchTheModules()
    {
        using var scope = NewDisposeScope();
        var result = Quantizer.Quantize(new ConvNet(), ConfigFor("int4-mixed"), () => new ConvNet());
        string path = Path.Combine(_dir, "m.safetensors");
        Quantizer.Save(result.Model, path);
        using var ckpt = QuantizedCheckpoint.Load(path);
        Assert.Equal(["classifier.weight", "features.0.weight", "features.2.weight"], ckpt.Quantized.Keys.Order());
        Assert.Equal(QuantType.Int4, ckpt.Quantized["features.2.weight"].Spec.Type);
        Assert.True(ckpt.Tensors.ContainsKey("features.2.bias"));
        // QuantizedTensor's own (SIMD) dequantization of the stored parts equals the module's torch-based one.
        foreach (var e in ModuleTree.Walk(result.Model).Where(e => e.Module is QuantizedModule))
        {
            var q = (QuantizedModule)e.Module;
            using var fromFile = ckpt.GetFloat(e.Name + ".weight");
            Assert.True(TestData.BitEqual(q.DequantizeWeight(), fromFile), e.Name);
        }
    }

    [Fact]
    public void MixedModelKeepsFloatLayersThroughSaveAndLoad()
    {
        using var scope = NewDisposeScope();
        var result = Quantizer.Quantize(new MixedNet(), new QuantizationRecipe(), () => new MixedNet());
        string path = Path.Combine(_dir, "mixed.safetensors");
        Quantizer.Save(result.Model, path);
        var loaded = (Module<Tensor, Tensor>)Quantizer.Load(() => new MixedNet(seed: 9), path);
        var x = torch.randn(3, 32);
        Assert.True(TestData.BitEqual(((Module<Tensor, Tensor>)result.Model).call(x), loaded.call(x)));
    }

    /// <summary>
    /// Saving to a folder's path fails before anything is written (it failed at the final rename, after the whole file
    /// was written to a temporary one, with .NET's "Is a directory"): the message names the folder and a file name to
    /// give, and the folder is left as it was; so does a path ending in a separator.
    /// </summary>
    [Fact]
    public void SavingToAFolderIsAClearErrorThatWritesNothing()
    {
        using var scope = NewDisposeScope();
        var result = Quantizer.Quantize(new Mlp(), new QuantizationRecipe(), () => new Mlp());
        string folder = Path.Combine(_dir, "out");
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "kept.txt"), "x");
        var ex = Assert.Throws<IOException>(() => Quantizer.Save(result.Model, folder));
        Assert.Contains($"Cannot write '{folder}': it is a folder; give a file name, e.g. '{Path.Combine(folder, "model.safetensors")}'", ex.Message);
        Assert.Equal([Path.Combine(folder, "kept.txt")], Directory.GetFileSystemEntries(folder));
        Assert.Equal([folder], Directory.GetFileSystemEntries(_dir).Where(p => Path.GetFileName(p).Contains("out")));
        // A path ending in a separator names a folder too, existing or not; none is created.
        string missing = Path.Combine(_dir, "new") + Path.DirectorySeparatorChar;
        var ex2 = Assert.Throws<IOException>(() => Quantizer.Save(result.Model, missing));
        Assert.Contains($"Cannot write '{missing}': it ends in a folder separator; give a file name, e.g. '{Path.Combine(missing, "model.safetensors")}'", ex2.Message);
        Assert.False(Directory.Exists(missing));
    }

    [Fact]
    public void WrongArchitectureOrFileIsAClearError()
    {
        using var scope = NewDisposeScope();
        var result = Quantizer.Quantize(new Mlp(), new QuantizationRecipe(), () => new Mlp());
        string path = Path.Combine(_dir, "mlp.safetensors");
        Quantizer.Save(result.Model, path);
        var ex = Assert.Throws<QuantizedFileException>(() => Quantizer.Load(() => new ConvNet(), path));
        Assert.Contains("does not exist in the factory's ConvNet", ex.Message);
        var ex2 = Assert.Throws<QuantizedFileException>(() => Quantizer.Load(() => new Mlp(hidden: 64), path));
        Assert.Contains("'fc1.weight' has shape [128, 64] in the file but [64, 64]", ex2.Message);
        Assert.Contains("no quantized layers", Assert.Throws<ArgumentException>(() => Quantizer.Save(new Mlp(), Path.Combine(_dir, "x.safetensors"))).Message);
    }
}
