using System.Text.Json.Nodes;
using QuantSharp.Serialization;
using QuantSharp.Tests.Checkpoints;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Hardening;

/// <summary>Issue 8: SQNR in float64 for tiny, huge, infinite and NaN values; infinite outputs refused by name; JSON never throws.</summary>
public class NonFiniteAndTinyValueTests
{
    private static string WriteOne(TempDir dir, string name, Tensor weight)
    {
        string path = dir["in.safetensors"];
        using var bias = torch.ones(4);
        SafetensorsWriter.Save(path, [(name, weight), ("b.bias", bias)]);
        return path;
    }

    [Fact]
    public void SubnormalSquaresAreNotLostInTheSpanPath()
    {
        // 1e-42 squared is 1e-84: zero in float32 (the old accumulator), exact enough in float64.
        var x = Enumerable.Repeat(1e-42f, 1000).ToArray();
        var zeros = new float[1000];
        var acc = new SqnrAccumulator();
        acc.Add(x, zeros);
        Assert.Equal(0, acc.Db, 9); // the noise is the whole signal: 0 dB, not +inf
        Assert.Equal(1000 * (double)1e-42f * 1e-42f, acc.Signal, 1e-95);
    }

    [Fact]
    public void HugeValuesDoNotOverflowTheSums()
    {
        // 1e21 squared is 1e42: +inf in float32, giving inf/inf = NaN before.
        var x = new float[] { 1e21f, -3e20f, 7e20f, 1e21f, 2e20f, -1e21f, 5e19f, 9e20f, 1e21f };
        var d = x.Select(v => v * (1 + 1e-3f)).ToArray();
        var acc = new SqnrAccumulator();
        acc.Add(x, d);
        Assert.Equal(60, acc.Db, 0.1); // relative error 1e-3 everywhere: 60 dB
    }

    [Fact]
    public void InfinityIsOnlyForExactRoundTrips()
    {
        Assert.Equal(double.PositiveInfinity, SqnrAccumulator.ToDb(0, 0));       // all zeros, kept
        Assert.Equal(double.NegativeInfinity, SqnrAccumulator.ToDb(1, double.PositiveInfinity)); // a value became infinite
        Assert.True(double.IsNaN(SqnrAccumulator.ToDb(double.NaN, 1)));
        using var a = torch.tensor(new[] { 1f, float.PositiveInfinity, 3f });
        using var b = torch.tensor(new[] { 1f, float.PositiveInfinity, 3f });
        Assert.Equal(double.PositiveInfinity, Metrics.Sqnr(a, b)); // equal infinities add no noise (inf - inf is NaN)
        using var c = torch.tensor(new[] { 1f, 2f, float.PositiveInfinity });
        using var r = torch.tensor(new[] { 1f, 2f, 3f });
        Assert.Equal(double.NegativeInfinity, Metrics.Sqnr(r, c));
        using var tiny = torch.full([100], 1e-42f);
        using var zero = torch.zeros(100);
        Assert.Equal(0, Metrics.Sqnr(tiny, zero), 9);
    }

    [Theory]
    [InlineData(QuantType.Int8)]
    [InlineData(QuantType.Float16)]
    [InlineData(QuantType.BFloat16)]
    public void WeightsNear1e42ThatBecomeZerosFailValidation(QuantType type)
    {
        using var dir = new TempDir();
        using var w = torch.full([64, 64], 1e-42f) * torch.linspace(1, 2, 64).unsqueeze(1);
        string input = WriteOne(dir, "w.weight", w);
        var ex = Assert.Throws<CheckpointValidationException>(() => CheckpointQuantizer.Quantize(input, dir["out.safetensors"],
            new QuantizationRecipe { Type = type }));
        var t = ex.Report.Layers.Single(r => r.Name == "w.weight");
        Assert.NotNull(t.WeightSqnrDb);
        Assert.InRange(t.WeightSqnrDb!.Value, -1, 1); // quantized to zeros: ~0 dB, never "inf"
        Assert.Contains(t.Problems, p => p.Contains("'w.weight'") && p.Contains("below"));
        Assert.False(File.Exists(dir["out.safetensors"]));
    }

    [Theory]
    [InlineData(ValidationFailureMode.Error, true)]
    [InlineData(ValidationFailureMode.Ignore, true)]
    [InlineData(ValidationFailureMode.Warn, false)]
    public void Float16OverflowIsRefusedByNameInEveryMode(ValidationFailureMode mode, bool validate)
    {
        using var dir = new TempDir();
        using var w = torch.randn([32, 64], generator: new torch.Generator(3));
        w[5, 7] = torch.tensor(70000f); // float16 ends at 65,504: this becomes +inf
        string input = WriteOne(dir, "w.weight", w);
        var ex = Assert.Throws<CheckpointValidationException>(() => CheckpointQuantizer.Quantize(input, dir["out.safetensors"],
            new QuantizationRecipe { Type = QuantType.Float16, Validation = new ValidationPolicy { Enabled = validate, OnFailure = mode } }));
        Assert.False(ex.Report.Written);
        Assert.Contains(ex.Report.Problems, p => p.Contains("'w.weight'") && p.Contains("infinite") && p.Contains("65,504"));
        string json = ex.Report.ToJson().ToJsonString(); // must not throw on -inf
        var sqnr = JsonNode.Parse(json)!["tensors"]!.AsArray().Single(n => (string?)n!["name"] == "w.weight")!["sqnr_db"];
        if (validate) Assert.Equal("-inf", (string?)sqnr);
        else Assert.Null(sqnr);
        Assert.False(File.Exists(dir["out.safetensors"]));
        Assert.Single(Directory.GetFileSystemEntries(dir.Path)); // no temporary folder left
    }

    [Fact]
    public void Int8OfValuesNear1e21HasAFiniteSqnr()
    {
        using var dir = new TempDir();
        using var w = torch.randn([32, 64], generator: new torch.Generator(4)) * 1e21;
        string input = WriteOne(dir, "w.weight", w);
        var report = CheckpointQuantizer.Quantize(input, dir["out.safetensors"], new QuantizationRecipe { Type = QuantType.Int8 });
        var t = report.Layers.Single(r => r.Name == "w.weight");
        Assert.InRange(t.WeightSqnrDb!.Value, 35, 50); // int8 per-channel on Gaussian data: ~40 dB, as at scale 1
        Assert.True(report.Passed);
        _ = report.ToJson().ToJsonString();
    }
}
