using System.CommandLine;
using System.Text.Json;
using QuantSharp.Cli.Commands;
using QuantSharp.Cli.Demo;
using QuantSharp.Serialization;
using QuantSharp.Tests.Checkpoints;
using TorchSharp;

namespace QuantSharp.Tests.Cli;

/// <summary><c>quantsharp bench</c> in each mode, on tiny shapes with one repeat (timings are not asserted, only their presence and consistency).</summary>
[Collection(TorchThreadsCollection.Name)]
public class BenchCommandTests
{
    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = QuantSharp.Cli.Program.BuildRoot().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }

    private static readonly string[] Keys =
        ["shape", "batch", "qtype", "group_size", "float32_ms", "bfloat16_ms", "quantized_ms", "speedup_vs_float32", "speedup_vs_bfloat16", "weight_gbps", "memory_read_gbps"];

    private static void CheckObject(JsonElement o, string shape, int batch, string qtype)
    {
        foreach (var key in Keys) Assert.True(o.TryGetProperty(key, out _), $"missing key {key}");
        Assert.Equal(shape, o.GetProperty("shape").GetString());
        Assert.Equal(batch, o.GetProperty("batch").GetInt32());
        Assert.Equal(qtype, o.GetProperty("qtype").GetString());
        double f32 = o.GetProperty("float32_ms").GetDouble(), q = o.GetProperty("quantized_ms").GetDouble();
        Assert.True(f32 > 0 && q > 0 && o.GetProperty("bfloat16_ms").GetDouble() > 0);
        Assert.Equal(f32 / q, o.GetProperty("speedup_vs_float32").GetDouble(), 0.01 * f32 / q + 0.002);
        Assert.True(o.GetProperty("memory_read_gbps").GetDouble() > 0 && o.GetProperty("weight_gbps").GetDouble() > 0);
    }

    [Theory]
    [InlineData("int8", null)]
    [InlineData("int4", 16)]
    [InlineData("uint4", 32)]
    [InlineData("float16", null)]
    [InlineData("bfloat16", null)]
    [InlineData("w8a8-dynamic", null)]
    [InlineData("w8a8-static", null)]
    public void OneShapePrintsOneObject(string qtype, int? group)
    {
        var args = new List<string> { "bench", "--shape", "48x64", "--batch", "3", "--qtype", qtype, "--repeats", "1", "--threads", "1", "--json" };
        if (group is int g) args.AddRange(["--group-size", g.ToString()]);
        var (code, stdout, stderr) = RunSmall(args);
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        Assert.Equal(JsonValueKind.Object, doc.RootElement.ValueKind);
        CheckObject(doc.RootElement, "48x64", 3, qtype);
        var expectedGroup = group ?? (qtype is "int4" or "uint4" ? 128 : (int?)null);
        if (expectedGroup is null) Assert.Equal(JsonValueKind.Null, doc.RootElement.GetProperty("group_size").ValueKind);
        else Assert.Equal(expectedGroup, doc.RootElement.GetProperty("group_size").GetInt32());
    }

    [Fact]
    public void ModelSavedByQuantizerTimesEveryQuantizedLayerAtBatch1And64()
    {
        torch.manual_seed(3);
        using var model = new MnistNet();
        var config = QuantizationRecipe.Int4WeightOnly(groupSize: 32) with { Overrides = [new("conv*", QuantType.Int8)] };
        var result = Quantizer.Quantize(model, config, factory: () => new MnistNet());
        using var dir = new TempDir();
        string path = dir["mnist.int4.safetensors"];
        Quantizer.Save(result.Model, path);
        result.Model.Dispose();
        var (code, stdout, stderr) = RunSmall(["bench", "--model", path, "--repeats", "1", "--threads", "1", "--json"]);
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var rows = doc.RootElement.EnumerateArray().ToList();
        using var ckpt = QuantizedCheckpoint.Load(path);
        Assert.Equal(ckpt.Layers.Count * 2, rows.Count);
        var fc1 = rows.Where(r => r.GetProperty("layer").GetString() == "fc1.weight").ToList();
        Assert.Equal([1, 64], fc1.Select(r => r.GetProperty("batch").GetInt32()));
        CheckObject(fc1[0], "64x800", 1, "int4");
        Assert.Equal(32, fc1[0].GetProperty("group_size").GetInt32());
        var conv2 = rows.First(r => r.GetProperty("layer").GetString() == "conv2.weight");
        Assert.Equal("int8", conv2.GetProperty("qtype").GetString());
    }

    [Fact]
    public void CheckpointWrittenByQuantizeIsTimed()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["model.safetensors"], TorchSharp.torch.ScalarType.BFloat16);
        var (code, _, stderr) = Run("quantize", input, dir["q.safetensors"], "--qtype", "int4", "--granularity", "group:32");
        Assert.True(code == 0, stderr);
        (code, var stdout, stderr) = RunSmall(["bench", "--model", dir["q.safetensors"], "--repeats", "1", "--threads", "1", "--json"]);
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        using var ckpt = QuantizedCheckpoint.Load(dir["q.safetensors"]);
        Assert.Equal(ckpt.Layers.Count * 2, doc.RootElement.GetArrayLength());
        foreach (var row in doc.RootElement.EnumerateArray()) Assert.Equal("int4", row.GetProperty("qtype").GetString());
    }

    [Fact]
    public void FileWithoutQuantizedLayersIsAClearError()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["model.safetensors"], TorchSharp.torch.ScalarType.Float32);
        var (code, stdout, stderr) = RunSmall(["bench", "--model", input]);
        Assert.Equal(2, code);
        Assert.Equal("", stdout);
        Assert.Contains("holds no quantized layers", stderr);
        Assert.Contains("quantsharp quantize", stderr);
        Assert.DoesNotContain("   at ", stderr);
    }

    [Fact]
    public void ColdEvictsTheCachesBeforeEveryTimedCallAndSaysSo()
    {
        var (code, stdout, stderr) = Run("bench", "--shape", "16x32", "--batch", "2", "--qtype", "int8", "--repeats", "1", "--cold", "--evict-mib", "4", "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        CheckObject(doc.RootElement, "16x32", 2, "int8");
        Assert.True(doc.RootElement.GetProperty("cold").GetBoolean());

        (code, stdout, stderr) = Run("bench", "--shape", "16x32", "--qtype", "int8", "--repeats", "1", "--json");
        Assert.True(code == 0, stderr);
        using var warm = JsonDocument.Parse(stdout);
        Assert.False(warm.RootElement.GetProperty("cold").GetBoolean());

        (code, stdout, _) = Run("bench", "--shape", "16x32", "--qtype", "int8", "--repeats", "1", "--cold", "--evict-mib", "4");
        Assert.Equal(0, code);
        Assert.Contains("Caches evicted before every timed call (--cold)", stdout);
        Assert.Equal(LayerBench.DefaultEvictionMib << 20, LayerBench.EvictionBytes); // restored after the run
    }

    [Fact]
    public void BadOptionsAreClearErrors()
    {
        Assert.Contains("--shape must be OUTxIN", Run("bench", "--shape", "12by4").Err);
        Assert.Contains("Unknown --qtype 'int3'", Run("bench", "--shape", "4x4", "--qtype", "int3").Err);
        Assert.Contains("either --shape", Run("bench").Err);
        Assert.Contains("--evict-mib must be 1-16384, got 0", Run("bench", "--shape", "4x4", "--cold", "--evict-mib", "0").Err);
    }

    /// <summary>The command with a small bandwidth measurement (the real one reads 512 MiB).</summary>
    private static (int Code, string Out, string Err) RunSmall(List<string> args)
    {
        BenchCommand.BandwidthBytes = 4 << 20;
        return Run([.. args]);
    }
}
