using System.CommandLine;
using System.Text.Json;
using QuantSharp.Modules;
using QuantSharp.Primitives;
using QuantSharp.Serialization;
using QuantSharp.Tensors;
using QuantSharp.Tests.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Modules;

/// <summary>int2/uint2 weights (four values per byte) in the quantized modules, the recipe, the CLI and the file format (issue 11, item 2).</summary>
[Collection(TorchThreadsCollection.Name)]
public class TwoBitWeightTests
{
    private static readonly QuantSpec Int2G16 = new(QuantType.Int2, QuantScheme.Symmetric, new PerGroup(16));

    private static (int Code, string Out, string Err) Cli(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = QuantSharp.Cli.Program.BuildRoot().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }

    private static string FormatVersionOf(string path)
    {
        using var f = SafetensorsFile.Open(path);
        return f.Metadata[QuantizedCheckpoint.FormatVersionKey];
    }

    [Fact]
    public void PackingPutsTheFirstValueInTheLowestBitsLikeTheNibbleConvention()
    {
        // docs/FORMAT.md: element 4j in bits 1..0, 4j+1 in bits 3..2, 4j+2 in 5..4, 4j+3 in 7..6, two's complement.
        // The int2 values 1, -2, 0, -1 are 0b01, 0b10, 0b00, 0b11: 0b11_00_10_01 = 0xC9.
        using var dir = new TempDir();
        using var q = QuantizedTensor.FromParts(new QuantSpec(QuantType.Int2, QuantScheme.Symmetric, Granularity.Tensor), [1, 4],
            torch.tensor(new byte[] { 0xC9 }).reshape(1, 1), torch.tensor(0.5f), null);
        QuantizedCheckpoint.Save(dir["p.safetensors"], [CheckpointEntry.Of("w.weight", q)]);
        using (var f = SafetensorsFile.Open(dir["p.safetensors"]))
        {
            Assert.Equal(new byte[] { 0xC9 }, f.ReadBytes("w.weight"));
            Assert.Equal(new long[] { 1, 1 }, f.GetInfo("w.weight").Shape);
        }
        using var ckpt = QuantizedCheckpoint.Load(dir["p.safetensors"]);
        using var d = ckpt.GetFloat("w.weight");
        Assert.Equal(new[] { 0.5f, -1f, 0f, -0.5f }, d.data<float>().ToArray());

        // The same "lowest bits first" order as the 4-bit layout (checked against ONNX Runtime's MatMulNBits packing in
        // ReferenceCheckpointTests): four 2-bit fields are the two nibbles (v0 | v1 << 2) and (v2 | v3 << 2).
        var rng = new Random(2);
        var values = Enumerable.Range(0, 64).Select(_ => (sbyte)rng.Next(-2, 2)).ToArray();
        var packed2 = new byte[16];
        Packing.Pack(values, 2, packed2);
        var nibbles = Enumerable.Range(0, 32).Select(i => (sbyte)((values[2 * i] & 3) | ((values[2 * i + 1] & 3) << 2))).ToArray();
        var packed4 = new byte[16];
        Packing.Pack(nibbles, 4, packed4);
        Assert.Equal(packed4, packed2);
    }

    [Theory]
    [InlineData(QuantType.Int2)]
    [InlineData(QuantType.UInt2)]
    public void ModuleUnpackingDecodesEveryByte(QuantType type)
    {
        using var scope = NewDisposeScope();
        using var bytes = torch.arange(256, dtype: ScalarType.Int32).to(ScalarType.Byte).reshape(8, 32);
        var values = WeightQuantizer.Unpack(bytes, type).data<float>().ToArray();
        Assert.Equal(8 * 128, values.Length);
        for (int b = 0; b < 256; b++)
        {
            for (int j = 0; j < 4; j++)
            {
                int field = (b >> (2 * j)) & 3;
                int expected = type == QuantType.Int2 && field >= 2 ? field - 4 : field;
                Assert.Equal(expected, values[4 * b + j]);
            }
        }
    }

    [Fact]
    public void Int2ModelQuantizesSavesReloadsBitIdenticallyAndInspects()
    {
        torch.set_num_threads(1);
        using var model = new ConvNet();
        model.eval();
        var recipe = new QuantizationRecipe { Type = QuantType.Int2, Granularity = new PerGroup(16) };
        var result = Quantizer.Quantize(model, recipe, factory: () => new ConvNet());
        using var q = result.Model;
        var modules = q.named_modules().Where(m => m.module is QuantizedModule).ToDictionary(m => m.name, m => (QuantizedModule)m.module);
        // conv 1 has K = 1*3*3 = 9, which 2-bit packing cannot split into whole bytes: it falls back to int8 per-channel.
        Assert.Equal(QuantType.Int8, modules["features.0"].WeightSpec.Type);
        Assert.Equal(Int2G16, modules["features.2"].WeightSpec);
        Assert.Equal(Int2G16, modules["classifier"].WeightSpec);
        // Four values per byte: [10, 512] int2 holds 10*512/4 bytes of data plus 10*32 float32 scales.
        Assert.Equal(10 * 512 / 4 + 10 * 32 * 4, modules["classifier"].WeightStorageBytes);

        // The stored integers are round-to-nearest of the float weight (QuantizedTensor's arithmetic), and the layer
        // computes with exactly those values.
        using var floatWeight = model.state_dict()["classifier.weight"].detach().clone();
        using var expected = QuantizedTensor.Quantize(floatWeight, Int2G16);
        using var expectedWeight = expected.Dequantize();
        using var dequantized = modules["classifier"].DequantizeWeight();
        Assert.True(TestData.BitEqual(expectedWeight, dequantized));
        using var features = randn(3, 512, generator: new Generator(9));
        using var y = modules["classifier"].call(features);
        using var yRef = nn.functional.linear(features, dequantized, modules["classifier"].bias);
        Assert.True(y.allclose(yRef, rtol: 1e-5, atol: 1e-5));

        using var dir = new TempDir();
        string path = dir["int2.safetensors"];
        Quantizer.Save(q, path);
        Assert.Equal("3", FormatVersionOf(path)); // 2-bit weights: version 3
        using var reloaded = Quantizer.Load(() => new ConvNet(), path);
        reloaded.eval();
        var state = reloaded.state_dict();
        foreach (var (key, value) in q.state_dict())
            Assert.True(value.dtype == state[key].dtype && value.equal(state[key]).all().item<bool>(), $"{key} differs after reload");
        using var x = randn(4, 1, 8, 8, generator: new Generator(3));
        using var y1 = q.call(x);
        using var y2 = reloaded.call(x);
        Assert.True(TestData.BitEqual(y1, y2));

        // Saving again gives the same bytes.
        Quantizer.Save(reloaded, dir["again.safetensors"]);
        Assert.Equal(File.ReadAllBytes(path), File.ReadAllBytes(dir["again.safetensors"]));

        var (code, output, error) = Cli("inspect", path, "--json");
        Assert.True(code == 0, error);
        using var doc = JsonDocument.Parse(output);
        var layer = doc.RootElement.GetProperty("layers").GetProperty("classifier.weight");
        Assert.Equal("int2", layer.GetProperty("qtype").GetString());

        // A file without 2-bit weights keeps version 2, so version-2 readers still read it.
        var int4 = Quantizer.Quantize(model, QuantizationRecipe.Int4WeightOnly(groupSize: 16), factory: () => new ConvNet());
        using (var m4 = int4.Model)
            Quantizer.Save(m4, dir["int4.safetensors"]);
        Assert.Equal("2", FormatVersionOf(dir["int4.safetensors"]));
    }

    [Fact]
    public void EmbeddingGathersInt2Rows()
    {
        using var model = new EmbedNet();
        model.eval();
        var result = Quantizer.Quantize(model, new QuantizationRecipe { Type = QuantType.UInt2, Scheme = QuantScheme.Affine, Granularity = new PerGroup(16) },
            factory: () => new EmbedNet());
        using var q = result.Model;
        var embed = q.named_modules().Select(m => m.module).OfType<QuantizedModule>().Single(m => m.LayerName == "embed");
        Assert.Equal(QuantType.UInt2, embed.WeightSpec.Type);
        using var ids = torch.tensor(new long[] { 0, 5, 99, 5 });
        using var rows = embed.call(ids);
        using var all = embed.DequantizeWeight();
        using var expected = all.index_select(0, ids);
        Assert.True(TestData.BitEqual(expected, rows));
    }

    [Fact]
    public void ReadersRefuseNewerVersionsUnknownTypesAnd2BitInOldVersions()
    {
        using var dir = new TempDir();
        using var data = torch.zeros([4, 4], dtype: ScalarType.Byte);
        using var scale = torch.ones(4, 1);
        string Entry(string qtype) => $$$"""{"w": {"original_dtype": "F32", "shape": [4, 16], "qtype": "{{{qtype}}}", "scheme": "symmetric", "granularity": "group:16"}}""";
        void Write(string name, string version, string qtype) => SafetensorsWriter.Save(dir[name], [("w", data), ("w.scale", scale)], new Dictionary<string, string>
        {
            [QuantizedCheckpoint.FormatKey] = QuantizedCheckpoint.FormatName,
            [QuantizedCheckpoint.FormatVersionKey] = version,
            [QuantizedCheckpoint.LayersKey] = Entry(qtype),
        });

        Write("ok.safetensors", "3", "int2");
        using (var ok = QuantizedCheckpoint.Load(dir["ok.safetensors"]))
            Assert.Equal(QuantType.Int2, ok.Layers["w"].Type);

        Write("old.safetensors", "2", "int2");
        var ex = Assert.Throws<QuantizedFileException>(() => QuantizedCheckpoint.Load(dir["old.safetensors"]));
        Assert.Contains("2-bit weights need format version 3", ex.Message);

        Write("newer.safetensors", (QuantizedCheckpoint.FormatVersion + 1).ToString(System.Globalization.CultureInfo.InvariantCulture), "int2");
        ex = Assert.Throws<QuantizedFileException>(() => QuantizedCheckpoint.Load(dir["newer.safetensors"]));
        Assert.Contains($"format version {QuantizedCheckpoint.FormatVersion + 1} is newer", ex.Message);
        Assert.Contains("Update QuantSharp", ex.Message);

        Write("unknown.safetensors", "3", "int3");
        ex = Assert.Throws<QuantizedFileException>(() => QuantizedCheckpoint.Load(dir["unknown.safetensors"]));
        Assert.Contains("stored as 'int3', a type this QuantSharp does not know", ex.Message);

        // The CLI says the same, without a stack trace.
        var (code, _, error) = Cli("inspect", dir["unknown.safetensors"]);
        Assert.NotEqual(0, code);
        Assert.Contains("does not know", error);
        Assert.DoesNotContain("   at ", error);
    }

    [Fact]
    public void CliQuantizesACheckpointToInt2()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        var (code, _, error) = Cli("quantize", input, dir["out.safetensors"], "--qtype", "int2", "--json");
        Assert.True(code == 0, error);
        Assert.Equal("3", FormatVersionOf(dir["out.safetensors"]));
        using var ckpt = QuantizedCheckpoint.Load(dir["out.safetensors"]);
        var layer = ckpt.Layers["model.layers.0.mlp.up_proj.weight"];
        Assert.Equal(QuantType.Int2, layer.Type);
        Assert.Equal(new PerGroup(QuantizationRecipe.DefaultGroupSize), layer.Granularity); // the 2-bit default, as 4-bit
        var stored = ckpt.Quantized["model.layers.0.mlp.up_proj.weight"];
        Assert.Equal(new long[] { SyntheticCheckpoint.Ffn, SyntheticCheckpoint.Hidden / 4 }, stored.Data.shape);
        // The stored integers are what QuantizedTensor computes for the float weight (the file path and the in-memory path agree).
        using var original = SafetensorsFile.Open(input);
        using var w = original.ReadTensor("model.layers.0.mlp.up_proj.weight");
        using var expected = QuantizedTensor.Quantize(w, layer.ToSpec());
        Assert.Equal(SyntheticCheckpoint.Bytes(expected.Data), SyntheticCheckpoint.Bytes(stored.Data));
    }
}
