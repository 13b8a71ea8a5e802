using QuantSharp.Serialization;
using QuantSharp.Tests.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Hardening;

/// <summary>Issue 8: the writer enforces the format's limits (header size, names) before writing, in every mode.</summary>
public class WriterLimitTests
{
    [Theory]
    [InlineData(true, ValidationFailureMode.Error)]
    [InlineData(false, ValidationFailureMode.Ignore)]
    public void AnOutputHeaderOverTheLimitIsRefusedBeforeWriting(bool validate, ValidationFailureMode mode)
    {
        using var dir = new TempDir();
        using var w = torch.randn([64, 64]);
        // 99.99 MB of metadata: a valid input (header just under 100,000,000 bytes), but the quantized header adds
        // its own keys and would cross the limit.
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["blob"] = new string('x', 100_000_000 - 300) };
        SafetensorsWriter.Save(dir["in.safetensors"], [("w.weight", w)], metadata);
        var ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(dir["in.safetensors"], dir["out.safetensors"],
            new QuantizationRecipe { Validation = new ValidationPolicy { Enabled = validate, OnFailure = mode } }));
        Assert.Contains("100,000,000", ex.Message);
        Assert.Contains("metadata", ex.Message);
        Assert.Equal(["in.safetensors"], Directory.GetFileSystemEntries(dir.Path).Select(Path.GetFileName));
    }

    [Fact]
    public void TheStreamWriterChecksNamesAndTheHeaderLimit()
    {
        using var dir = new TempDir();
        using (var writer = new SafetensorsStreamWriter(dir["a.safetensors"], 64))
        {
            Assert.Throws<ArgumentException>(() => writer.BeginTensor("__metadata__", SafetensorsDType.F32, [1]));
            Assert.Throws<ArgumentException>(() => writer.BeginTensor("bad\uD800name", SafetensorsDType.F32, [1]));
            writer.Add("", SafetensorsDType.F32, [1], new byte[4]); // empty names are allowed, as by the reference library
            Assert.Throws<ArgumentException>(() => writer.BeginTensor("", SafetensorsDType.F32, [1]));
            var ex = Assert.Throws<SafetensorsFormatException>(() => writer.Commit(new Dictionary<string, string> { ["m"] = new string('y', 100_000_000) }));
            Assert.Equal(SafetensorsRule.HeaderTooLarge, ex.Rule);
        }
        Assert.Empty(Directory.GetFileSystemEntries(dir.Path)); // neither the file nor its temporary file
    }

    [Fact]
    public void AnEmptyTensorNameIsCopiedOrQuantized()
    {
        using var dir = new TempDir();
        using var w = torch.randn([64, 64]);
        using var b = torch.randn([64]);
        SafetensorsWriter.Save(dir["in.safetensors"], [("", w), ("b", b)]);
        var report = CheckpointQuantizer.Quantize(dir["in.safetensors"], dir["copied.safetensors"]);
        Assert.False(report.Layers.Single(t => t.Name == "").Quantized);
        using (var f = SafetensorsFile.Open(dir["copied.safetensors"]))
            Assert.Equal(SyntheticCheckpoint.Bytes(w), f.ReadBytes(""));
        report = CheckpointQuantizer.Quantize(dir["in.safetensors"], dir["q.safetensors"], new QuantizationRecipe { Include = ["*"], Exclude = ["b"] });
        Assert.True(report.Passed, string.Join("\n", report.Problems));
        Assert.True(report.Layers.Single(t => t.Name == "").Quantized);
        using var q = QuantizedCheckpoint.Load(dir["q.safetensors"]);
        Assert.Contains("", q.Layers.Keys);
    }
}
