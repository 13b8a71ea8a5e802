using QuantSharp.Pipeline;
using QuantSharp.Serialization;
using QuantSharp.Tensors;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Checkpoints;

public class CheckpointQuantizerTests
{
    private static QuantSpec Spec(QuantType t, QuantScheme s, Granularity g) => new(t, s, g);

    /// <summary>What the whole-tensor path of QuantizedTensor gives (the streamed, chunked quantizer must agree bit for bit).</summary>
    private static byte[] WholeTensorDequantized(Tensor original, QuantSpec spec)
    {
        using var x = original.to(ScalarType.Float32);
        using var q = QuantizedTensor.Quantize(x, spec);
        using var d = q.Dequantize();
        return SyntheticCheckpoint.Bytes(d);
    }

    private static double Sqnr(Tensor original, Tensor dequantized)
    {
        using var x = original.to(ScalarType.Float64);
        using var d = dequantized.to(ScalarType.Float64);
        using var diff = x - d;
        double s = x.square().sum().item<double>(), n = diff.square().sum().item<double>();
        return n == 0 ? double.PositiveInfinity : 10 * Math.Log10(s / n);
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void Int8PerChannelEndToEnd(ScalarType dtype)
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], dtype);
        var before = SyntheticCheckpoint.HashTree(input);
        string output = dir["out.safetensors"];
        CheckpointChunks.ChunkElementsForTests = 3000; // several chunks per tensor, rows split unevenly
        QuantSharp.Validation.QuantizationReport report;
        try { report = CheckpointQuantizer.Quantize(input, output); }
        finally { CheckpointChunks.ChunkElementsForTests = null; }

        Assert.True(report.Passed, string.Join("\n", report.Problems));
        Assert.True(report.Written);
        Assert.Equal(SyntheticCheckpoint.QuantizedByDefault.Order(), report.Layers.Where(t => t.Quantized).Select(t => t.Name).Order());
        Assert.Equal(before, SyntheticCheckpoint.HashTree(input));
        Assert.Equal(new[] { "in.safetensors", "out.safetensors" }, Directory.GetFileSystemEntries(dir.Path).Select(Path.GetFileName).Order());

        var expectedSpec = Spec(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0));
        using var strict = SafetensorsFile.Open(output); // the strict reader of branch st accepts the output
        using var orig = SafetensorsFile.Open(input);
        using var ckpt = QuantizedCheckpoint.Load(output);
        Assert.Equal("pt", ckpt.Metadata["format"]);
        Assert.Equal("2", ckpt.Metadata[QuantizedCheckpoint.FormatVersionKey]);
        Assert.Equal(orig.Tensors.Select(t => t.Name).Order(), ckpt.Names.Order());
        foreach (var info in orig.Tensors)
        {
            using var original = orig.ReadTensor(info.Name);
            var r = report.Layers.Single(t => t.Name == info.Name);
            if (r.Quantized)
            {
                var data = strict.GetInfo(info.Name);
                Assert.Equal(SafetensorsDType.I8, data.DType);
                Assert.Equal(info.Shape, data.Shape);
                Assert.Equal(SafetensorsDType.F32, strict.GetInfo(info.Name + ".scale").DType);
                Assert.Equal(new[] { info.Shape[0] }, strict.GetInfo(info.Name + ".scale").Shape);
                Assert.False(strict.Contains(info.Name + ".zero_point")); // symmetric int8: zero point 0, not stored
                using var loaded = ckpt.GetFloat(info.Name);
                Assert.Equal(WholeTensorDequantized(original, expectedSpec), SyntheticCheckpoint.Bytes(loaded));
                double sqnr = Sqnr(original, loaded);
                Assert.Equal(sqnr, r.WeightSqnrDb!.Value, 1e-4); // float32 partial sums per 4096 values, double across blocks
                Assert.InRange(sqnr, 30, 60);
                var layer = ckpt.Layers[info.Name];
                Assert.Equal(info.DType, layer.OriginalDType);
                Assert.Equal(QuantType.Int8, layer.Type);
                Assert.Equal(new PerAxis(0), layer.Granularity);
                Assert.Equal("minmax", layer.Observer);
                Assert.Equal(sqnr, layer.SqnrDb!.Value, 1e-4);
                Assert.Equal(data.ByteLength + 4 * info.Shape[0], r.StoredBytes);
            }
            else
            {
                Assert.Equal(info.DType, strict.GetInfo(info.Name).DType);
                Assert.Equal(orig.ReadBytes(info.Name), strict.ReadBytes(info.Name));
                Assert.Null(r.WeightSqnrDb);
            }
        }
        // int8 from 4-byte (2-byte) floats: the quantized tensors shrink about 4x (2x) plus one float scale per row.
        double expectedRatio = dtype == ScalarType.Float32 ? 4 : 2;
        foreach (var r in report.Layers.Where(t => t.Quantized))
            Assert.InRange(r.Ratio, expectedRatio * 0.9, expectedRatio);
    }

    [Fact]
    public void Int4GroupWithInt8OverrideOnTheHead()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.BFloat16);
        string output = dir["out.safetensors"];
        var settings = new QuantizationRecipe
        {
            Type = QuantType.Int4,
            Granularity = new PerGroup(64),
            Overrides = [new RecipeOverride("lm_head.weight", Type: QuantType.Int8, Granularity: new PerAxis(0))],
        };
        var report = CheckpointQuantizer.Quantize(input, output, settings);
        Assert.True(report.Passed, string.Join("\n", report.Problems));

        using var orig = SafetensorsFile.Open(input);
        using var strict = SafetensorsFile.Open(output);
        using var ckpt = QuantizedCheckpoint.Load(output);
        foreach (string name in SyntheticCheckpoint.QuantizedByDefault)
        {
            var info = orig.GetInfo(name);
            using var original = orig.ReadTensor(name);
            using var loaded = ckpt.GetFloat(name);
            if (name == "lm_head.weight")
            {
                Assert.Equal(SafetensorsDType.I8, strict.GetInfo(name).DType);
                Assert.Equal(QuantType.Int8, ckpt.Layers[name].Type);
                Assert.Equal(WholeTensorDequantized(original, Spec(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0))), SyntheticCheckpoint.Bytes(loaded));
            }
            else
            {
                Assert.Equal(SafetensorsDType.U8, strict.GetInfo(name).DType);
                Assert.Equal(new[] { info.Shape[0], info.Shape[1] / 2 }, strict.GetInfo(name).Shape);
                Assert.Equal(new[] { info.Shape[0], info.Shape[1] / 64 }, strict.GetInfo(name + ".scale").Shape);
                Assert.Equal(new PerGroup(64), ckpt.Layers[name].Granularity);
                Assert.Equal(WholeTensorDequantized(original, Spec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(64))), SyntheticCheckpoint.Bytes(loaded));
                Assert.InRange(report.Layers.Single(t => t.Name == name).WeightSqnrDb!.Value, 12, 30);
            }
        }
    }

    [Theory]
    [InlineData("float16", SafetensorsDType.F16)]
    [InlineData("bfloat16", SafetensorsDType.BF16)]
    [InlineData("uint8", SafetensorsDType.U8)]
    [InlineData("uint4", SafetensorsDType.U8)]
    public void OtherTypesStoreTheirDTypes(string qtype, SafetensorsDType stored)
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        string output = dir["out.safetensors"];
        var type = QuantTypeInfo.Parse(qtype);
        var report = CheckpointQuantizer.Quantize(input, output, new QuantizationRecipe { Type = type, Scheme = QuantScheme.Affine });
        Assert.True(report.Passed, string.Join("\n", report.Problems));
        using var strict = SafetensorsFile.Open(output);
        using var orig = SafetensorsFile.Open(input);
        using var ckpt = QuantizedCheckpoint.Load(output);
        const string name = "model.layers.1.mlp.down_proj.weight";
        Assert.Equal(stored, strict.GetInfo(name).DType);
        Assert.Equal(type.IsInteger(), strict.Contains(name + ".scale"));
        Assert.Equal(type.IsInteger(), strict.Contains(name + ".zero_point")); // affine
        using var original = orig.ReadTensor(name);
        using var loaded = ckpt.GetFloat(name);
        if (!type.IsInteger())
        {
            // A float target is a plain round-to-nearest-even cast.
            using var cast = original.to(type == QuantType.Float16 ? ScalarType.Float16 : ScalarType.BFloat16);
            Assert.Equal(SyntheticCheckpoint.Bytes(cast), strict.ReadBytes(name));
        }
        double threshold = ValidationPolicy.DefaultSqnrThresholdsDb[type];
        Assert.True(Sqnr(original, loaded) >= threshold, $"{qtype}: {Sqnr(original, loaded)} dB");
    }

    [Fact]
    public void ShardedFolderInShardedFolderOut()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteSharded(dir["in"], ScalarType.BFloat16, maxShardBytes: 100_000);
        var inShards = Directory.GetFiles(input, "*.safetensors").Select(Path.GetFileName).Order().ToArray();
        Assert.True(inShards.Length >= 3);
        var before = SyntheticCheckpoint.HashTree(input);
        string output = dir["out"];
        var report = CheckpointQuantizer.Quantize(input, output, new QuantizationRecipe { Type = QuantType.Int4 });
        Assert.True(report.Passed, string.Join("\n", report.Problems));
        Assert.Equal(before, SyntheticCheckpoint.HashTree(input));
        Assert.Equal(inShards, Directory.GetFiles(output, "*.safetensors").Select(Path.GetFileName).Order().ToArray());
        Assert.True(File.Exists(Path.Combine(output, "config.json")));
        Assert.Equal(new[] { "in", "out" }, Directory.GetFileSystemEntries(dir.Path).Select(Path.GetFileName).Order());

        // The index maps every stored tensor (scales too) to the shard that holds it.
        using (var sharded = ShardedCheckpoint.Open(output))
        {
            foreach (var t in sharded.Tensors) Assert.True(sharded.Contains(t.Name));
            Assert.Contains(sharded.Tensors, t => t.Name == "lm_head.weight.scale");
        }
        using var orig = ShardedCheckpoint.Open(input);
        using var ckpt = QuantizedCheckpoint.Load(output);
        foreach (string name in SyntheticCheckpoint.QuantizedByDefault)
        {
            using var original = orig.ReadTensor(name);
            using var loaded = ckpt.GetFloat(name);
            Assert.Equal(WholeTensorDequantized(original, Spec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(128))), SyntheticCheckpoint.Bytes(loaded));
        }
        var validation = CheckpointValidator.Compare(input, output);
        Assert.True(validation.Passed, string.Join("\n", validation.Problems));
        foreach (var r in report.Layers.Where(t => t.Quantized))
            Assert.Equal(r.WeightSqnrDb!.Value, validation.Layers.Single(t => t.Name == r.Name).WeightSqnrDb!.Value, 9);
    }

    [Fact]
    public void IncludeExcludeAndMinElementsSelectTensors()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        var r1 = CheckpointQuantizer.Quantize(input, dir["a.safetensors"],
            new QuantizationRecipe { Include = ["*.mlp.*"], Exclude = ["*.down_proj.*"] });
        Assert.Equal(new[] { "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
            "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight" },
            r1.Layers.Where(t => t.Quantized).Select(t => t.Name).Order());

        // q/k/v/o hold 128x128 = 16384 elements, the others 32768.
        var r2 = CheckpointQuantizer.Quantize(input, dir["b.safetensors"], QuantizationRecipe.FromJson("{\"min_elements\": 20000}"));
        Assert.Equal(SyntheticCheckpoint.QuantizedByDefault.Where(n => !n.Contains("self_attn")).Order(),
            r2.Layers.Where(t => t.Quantized).Select(t => t.Name).Order());

        // An include that names a 1-D norm quantizes it (explicit beats the default rule); exclude still wins.
        var r3 = CheckpointQuantizer.Quantize(input, dir["c.safetensors"], new QuantizationRecipe
        {
            Include = ["model.norm.weight", "lm_head.weight"],
            Granularity = Granularity.Tensor,
            Exclude = ["lm_head.*"],
        });
        Assert.Equal(new[] { "model.norm.weight" }, r3.Layers.Where(t => t.Quantized).Select(t => t.Name));
    }

    [Fact]
    public void PercentileObserverClipsTheRange()
    {
        using var dir = new TempDir();
        var tensors = SyntheticCheckpoint.Make(ScalarType.Float32);
        try
        {
            tensors.Single(t => t.Name == "lm_head.weight").Tensor[5, 7].fill_(50f); // one outlier in row 5
            SafetensorsWriter.Save(dir["in.safetensors"], tensors);
        }
        finally { foreach (var (_, t) in tensors) t.Dispose(); }
        var minmax = CheckpointQuantizer.Quantize(dir["in.safetensors"], dir["mm.safetensors"],
            new QuantizationRecipe { Include = ["lm_head.weight"], Granularity = Granularity.Tensor, Validation = new ValidationPolicy { OnFailure = ValidationFailureMode.Warn } });
        var pct = CheckpointQuantizer.Quantize(dir["in.safetensors"], dir["pct.safetensors"],
            new QuantizationRecipe { Include = ["lm_head.weight"], Granularity = Granularity.Tensor, WeightObserver = "percentile", Validation = new ValidationPolicy { OnFailure = ValidationFailureMode.Warn } });
        using var a = SafetensorsFile.Open(dir["mm.safetensors"]);
        using var b = SafetensorsFile.Open(dir["pct.safetensors"]);
        float scaleMinMax = BitConverter.ToSingle(a.ReadBytes("lm_head.weight.scale"));
        float scalePct = BitConverter.ToSingle(b.ReadBytes("lm_head.weight.scale"));
        Assert.Equal(50f / 127.5f, scaleMinMax, 6); // symmetric: max|x| / ((qmax - qmin) / 2)
        Assert.True(scalePct < scaleMinMax / 5, $"{scalePct} vs {scaleMinMax}");
        using var ckpt = QuantizedCheckpoint.Load(dir["pct.safetensors"]);
        Assert.Equal("percentile", ckpt.Layers["lm_head.weight"].Observer);
        Assert.Equal(pct.Layers.Single(t => t.Quantized).WeightSqnrDb!.Value, ckpt.Layers["lm_head.weight"].SqnrDb!.Value, 1e-3);
        // One outlier of 50 among values of about 0.09 ruins per-tensor int8 either way: both fail the 30 dB bar.
        Assert.False(minmax.Passed);
        Assert.False(pct.Passed);
    }

    [Fact]
    public void PrecedenceIsOptionThenFileThenDefaults()
    {
        var file = QuantizationRecipe.FromJson("""
            { "qtype": "int4", "scheme": "affine", "granularity": "group:64", "validation": { "on_failure": "warn" },
              "overrides": [ { "pattern": "lm_head.weight", "qtype": "int8" },
                             { "pattern": "*.embed_tokens.*", "granularity": "per-channel" } ] }
            """);
        var s = file with { Type = QuantType.UInt4 }; // an explicit option over the file
        Assert.Equal(new QuantSpec(QuantType.UInt4, QuantScheme.Affine, new PerGroup(64)), s.WeightSpecFor("model.layers.0.mlp.up_proj.weight"));
        // An override to another bit width without a granularity takes its own type's default (int8: per-channel).
        Assert.Equal(new QuantSpec(QuantType.Int8, QuantScheme.Affine, new PerAxis(0)), s.WeightSpecFor("lm_head.weight"));
        Assert.Equal(new QuantSpec(QuantType.UInt4, QuantScheme.Affine, new PerAxis(0)), s.WeightSpecFor("model.embed_tokens.weight"));
        Assert.Equal(ValidationFailureMode.Warn, s.Validation.OnFailure);

        var d = new QuantizationRecipe();
        Assert.Equal(new QuantSpec(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0)), d.WeightSpecFor("x.weight"));
        Assert.Equal(ValidationFailureMode.Error, d.Validation.OnFailure);
        Assert.Equal(0, d.MinElements);
        Assert.Equal(30, d.Validation.ThresholdFor(QuantType.Int8));
        // The per-type default granularity follows the resolved type.
        Assert.Equal(new PerGroup(128), new QuantizationRecipe { Type = QuantType.Int4 }.WeightSpecFor("x").Granularity);
        var mixed = new QuantizationRecipe { Type = QuantType.Int4, Overrides = [new("lm_head.weight", QuantType.Int8)] };
        Assert.Equal(new PerAxis(0), mixed.WeightSpecFor("lm_head.weight").Granularity);
        // A module name matches the weights it owns.
        Assert.Equal(QuantType.Int8, mixed with { Overrides = [new("lm_head", QuantType.Int8)] } is var m ? m.WeightSpecFor("lm_head.weight").Type : default);
    }

    [Fact]
    public void RecipeVersionsUpToTheCurrentAreReadAndNewerOnesRefused()
    {
        Assert.Equal(2, QuantizationRecipe.CurrentVersion);
        // Version 1, and a version-1 file carrying version-2 keys (written before the version was raised): read, upgraded.
        var v1 = QuantizationRecipe.FromJson("{\"version\": 1, \"qtype\": \"int4\", \"granularity\": \"group:32\"}", "old.json");
        Assert.Equal(new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(32)), v1.WeightSpecFor("fc.weight"));
        Assert.Equal(2, v1.Version);
        var early = QuantizationRecipe.FromJson("{\"version\": 1, \"method\": \"gptq\", \"gptq\": {\"act_order\": true}, \"histogram_method\": \"l2\"}", "old.json");
        Assert.Equal((QuantizationMethod.Gptq, true, QuantSharp.Observers.HistogramMethod.L2), (early.Method, early.GptqOptions.ActOrder, early.HistogramMethod));
        // What is written is the current version, and reads back.
        using (var written = System.Text.Json.JsonDocument.Parse(early.ToJson()))
            Assert.Equal(2, written.RootElement.GetProperty("version").GetInt32());
        Assert.Equal(early.Method, QuantizationRecipe.FromJson(early.ToJson()).Method);
        Assert.Equal(QuantType.Int8, QuantizationRecipe.FromJson("{}").Type); // no version: the current one

        // A newer version is refused for its version (with the fix), even when an unknown key comes first.
        foreach (string future in (string[])["{\"version\": 3}", "{\"awq\": {\"w_bit\": 4}, \"version\": 3, \"qtype\": \"int4\"}"])
        {
            var ex = Assert.Throws<RecipeException>(() => QuantizationRecipe.FromJson(future, "new.json"));
            Assert.StartsWith("new.json: recipe version 3 is newer than this QuantSharp reads (versions 1 to 2); it was written by a newer QuantSharp. Update QuantSharp", ex.Message);
        }
        Assert.Contains("Recipe version 0 is not supported", Assert.Throws<RecipeException>(() => QuantizationRecipe.FromJson("{\"version\": 0}", "bad.json")).Message);
        Assert.Contains("\"version\"", Assert.Throws<RecipeException>(() => QuantizationRecipe.FromJson("{\"version\": \"2\"}", "bad.json")).Message);
    }

    [Fact]
    public void RecipeErrorsNameTheKey()
    {
        var ex = Assert.Throws<RecipeException>(() => QuantizationRecipe.FromJson("{\"qtyp\": \"int8\"}", "cfg.json"));
        Assert.Contains("unknown key \"qtyp\"", ex.Message);
        ex = Assert.Throws<RecipeException>(() => QuantizationRecipe.FromJson("{\"qtype\": \"int3\"}", "cfg.json"));
        Assert.Contains("int3", ex.Message);
        ex = Assert.Throws<RecipeException>(() => QuantizationRecipe.FromJson("{\"granularity\": \"group:x\"}", "cfg.json"));
        Assert.Contains("group:x", ex.Message);
        ex = Assert.Throws<RecipeException>(() => QuantizationRecipe.FromJson("{\"overrides\": [{\"qtype\": \"int8\"}]}", "cfg.json"));
        Assert.Contains("pattern", ex.Message);
        ex = Assert.Throws<RecipeException>(() => QuantizationRecipe.FromJson("{\"qtype\": \"int8\", \"qtype\": \"int4\"}", "cfg.json"));
        Assert.Contains("\"qtype\" appears twice", ex.Message);
        ex = Assert.Throws<RecipeException>(() => QuantizationRecipe.FromJson("{\"validation\": {\"on_failure\": \"warn\", \"on_failure\": \"error\"}}", "cfg.json"));
        Assert.Contains("\"on_failure\" appears twice", ex.Message);
        ex = Assert.Throws<RecipeException>(() => QuantizationRecipe.FromJson("{\"qtype\": \"int3\"}", "cfg.json"));
        Assert.Contains("Unknown quantization type 'int3'", ex.Message);
        Assert.Equal(QuantType.Int2, QuantizationRecipe.FromJson("{\"qtype\": \"int2\"}", "cfg.json").Type);
        Assert.Throws<RecipeException>(() => QuantizationRecipe.FromJson("{not json", "cfg.json"));
    }
}
