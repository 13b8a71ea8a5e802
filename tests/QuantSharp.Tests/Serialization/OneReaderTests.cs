using System.Text.Json;
using QuantSharp.Serialization;
using QuantSharp.Tests.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Serialization;

/// <summary>
/// Issue 7 item 5 / issue 8 item 7: one checkpoint reader (<see cref="ShardedCheckpoint"/>) with one folder rule, one
/// index reader and one set of limits, used by the library (quantize, validate, load) and by the CLI (inspect).
/// </summary>
public sealed class OneReaderTests
{
    private static (int Code, string Out, string Err) Cli(params string[] args) => QuantSharp.Tests.Cli.CheckpointCliTests.Run(args);

    [Fact]
    public void InspectOfAnIndexInspectsTheShardedCheckpoint()
    {
        // Regression (issue 8): `inspect model.safetensors.index.json` read the JSON as a safetensors file and reported a
        // header length of 7,022,349,238,375,811,707.
        using var dir = new TempDir();
        string folder = SyntheticCheckpoint.WriteSharded(dir["in"], ScalarType.Float32);
        string index = Path.Combine(folder, ShardedCheckpoint.DefaultIndexFileName);
        var (code, byIndex, err) = Cli("inspect", index, "--json");
        Assert.True(code == 0, err);
        var (code2, byFolder, err2) = Cli("inspect", folder, "--json");
        Assert.True(code2 == 0, err2);
        using var a = JsonDocument.Parse(byIndex);
        using var b = JsonDocument.Parse(byFolder);
        Assert.True(a.RootElement.GetProperty("sharded").GetBoolean());
        Assert.Equal(ShardedCheckpoint.DefaultIndexFileName, a.RootElement.GetProperty("index").GetString());
        int shards = Directory.GetFiles(folder, "*.safetensors").Length;
        Assert.True(shards >= 3);
        Assert.Equal(shards, a.RootElement.GetProperty("files").GetArrayLength());
        Assert.Equal(SyntheticCheckpoint.Make(ScalarType.Float32).Select(t => { t.Tensor.Dispose(); return t.Name; }).Order(StringComparer.Ordinal),
            a.RootElement.GetProperty("tensors").EnumerateArray().Select(t => t.GetProperty("name").GetString()!).Order(StringComparer.Ordinal));
        // The same answer through the index as through the folder.
        Assert.Equal(b.RootElement.GetProperty("tensors").ToString(), a.RootElement.GetProperty("tensors").ToString());
        Assert.Equal(b.RootElement.GetProperty("total_file_bytes").GetInt64(), a.RootElement.GetProperty("total_file_bytes").GetInt64());
        Assert.DoesNotContain("header length", err);
    }

    [Fact]
    public void QuantizeAndValidateAcceptAnIndexPath()
    {
        using var dir = new TempDir();
        string folder = SyntheticCheckpoint.WriteSharded(dir["in"], ScalarType.Float32);
        string index = Path.Combine(folder, ShardedCheckpoint.DefaultIndexFileName);
        var report = CheckpointQuantizer.Quantize(index, dir["out"]);
        Assert.True(report.Passed, string.Join("\n", report.Problems));
        Assert.True(File.Exists(Path.Combine(dir["out"], ShardedCheckpoint.DefaultIndexFileName)));
        Assert.True(File.Exists(Path.Combine(dir["out"], "config.json")));
        using (var q = QuantizedCheckpoint.Load(Path.Combine(dir["out"], ShardedCheckpoint.DefaultIndexFileName)))
            Assert.Equal(SyntheticCheckpoint.QuantizedByDefault.Order(StringComparer.Ordinal), q.Layers.Keys.Order(StringComparer.Ordinal));
        var validation = QuantSharp.Validation.CheckpointValidator.Compare(index, Path.Combine(dir["out"], ShardedCheckpoint.DefaultIndexFileName));
        Assert.True(validation.Passed, string.Join("\n", validation.Problems));

        // An output inside the input folder is refused when the input is given as its index too.
        var ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(index, Path.Combine(folder, "q")));
        Assert.Contains("inside the input folder", ex.Message);
        ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(index, index, overwrite: true));
        Assert.Contains("is the input", ex.Message);
    }

    [Fact]
    public void SafetensorsFilesOutsideTheCheckpointAreNotCopiedAndNamed()
    {
        // A folder as some hubs ship it: the shards with their index, plus a consolidated float copy.
        using var dir = new TempDir();
        string folder = SyntheticCheckpoint.WriteSharded(dir["in"], ScalarType.Float32);
        SyntheticCheckpoint.WriteFile(Path.Combine(folder, "consolidated.safetensors"), ScalarType.Float32);
        var report = CheckpointQuantizer.Quantize(folder, dir["out"]);
        Assert.True(report.Passed, string.Join("\n", report.Problems));
        Assert.False(File.Exists(Path.Combine(dir["out"], "consolidated.safetensors")));
        Assert.True(File.Exists(Path.Combine(dir["out"], "config.json")));
        var warning = Assert.Single(report.Warnings, w => w.Contains("'consolidated.safetensors'", StringComparison.Ordinal));
        Assert.Contains("does not list it", warning);
    }

    [Fact]
    public void OneFolderRuleForLibraryAndCli()
    {
        using var dir = new TempDir();
        string folder = SyntheticCheckpoint.WriteSharded(dir["in"], ScalarType.Float32);
        File.Copy(Path.Combine(folder, ShardedCheckpoint.DefaultIndexFileName), Path.Combine(folder, "other.safetensors.index.json"));
        var open = Assert.Throws<IOException>(() => ShardedCheckpoint.Open(folder));
        Assert.Contains("2 *.safetensors.index.json files", open.Message);
        var quantize = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(folder, dir["out"]));
        Assert.Contains("2 *.safetensors.index.json files", quantize.Message);
        var (code, _, err) = Cli("inspect", folder);
        Assert.Equal(2, code);
        Assert.Contains("2 *.safetensors.index.json files", err);
        // Naming the index removes the ambiguity.
        using (var ckpt = ShardedCheckpoint.Open(Path.Combine(folder, "other.safetensors.index.json")))
        {
            Assert.True(ckpt.IsFolder);
            Assert.Equal(Path.GetFullPath(folder), ckpt.Path);
        }
    }

    [Fact]
    public void DuplicateIndexKeysAreRefusedByName()
    {
        using var dir = new TempDir();
        using var t = torch.ones(4);
        File.WriteAllText(dir["x.safetensors.index.json"], """{"metadata":{"total_size":16},"weight_map":{"a":"x.safetensors"},"weight_map":{"b":"x.safetensors"}}""");
        var e = Assert.Throws<SafetensorsFormatException>(() => ShardedCheckpoint.Open(dir["x.safetensors.index.json"]));
        Assert.Equal(SafetensorsRule.InvalidIndex, e.Rule);
        Assert.Contains("'weight_map' appears twice", e.Message);
        File.WriteAllText(dir["x.safetensors.index.json"], """{"metadata":{"total_size":16,"total_size":17},"weight_map":{"a":"x.safetensors"}}""");
        e = Assert.Throws<SafetensorsFormatException>(() => ShardedCheckpoint.Open(dir["x.safetensors.index.json"]));
        Assert.Contains("'metadata.total_size' appears twice", e.Message);
        // The CLI reads the index with the same reader: same refusal, exit 2.
        var (code, _, err) = Cli("inspect", dir.Path);
        Assert.Equal(2, code);
        Assert.Contains("'metadata.total_size' appears twice", err);
    }

    [Fact]
    public void DuplicateFieldsInPerLayerMetadataAreRefusedByName()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        CheckpointQuantizer.Quantize(input, dir["q.safetensors"]);
        using (var f = SafetensorsFile.Open(dir["q.safetensors"]))
        {
            var md = new Dictionary<string, string>(f.Metadata);
            string layers = md[QuantizedCheckpoint.LayersKey];
            int at = layers.IndexOf("\"qtype\"", StringComparison.Ordinal);
            Assert.True(at > 0);
            md[QuantizedCheckpoint.LayersKey] = layers[..at] + "\"qtype\":\"int4\"," + layers[at..];
            SafetensorsWriter.Save(dir["dup.safetensors"], f.Tensors.Select(t => (t.Name, f.ReadTensor(t.Name))).ToList(), md);
        }
        var ex = Assert.Throws<QuantizedFileException>(() => QuantizedCheckpoint.Load(dir["dup.safetensors"]));
        Assert.Contains(".qtype' twice", ex.Message);
        var (code, _, err) = Cli("inspect", dir["dup.safetensors"]);
        Assert.Equal(2, code);
        Assert.Contains(".qtype' twice", err);
    }

    [Fact]
    public void RangedReadsSeeATruncationAsAFormatError()
    {
        using var dir = new TempDir();
        using var t = torch.arange(1000, dtype: ScalarType.Float32);
        SafetensorsWriter.Save(dir["a.safetensors"], [("t", t)]);
        using var ckpt = ShardedCheckpoint.Open(dir["a.safetensors"]);
        Assert.False(ckpt.IsFolder);
        Assert.Equal(new FileInfo(dir["a.safetensors"]).Length, ckpt.TotalFileBytes);
        var part = new byte[40];
        ckpt.ReadRange("t", 400, part);
        Assert.Equal(t.bytes.Slice(400, 40).ToArray(), part);
        Assert.Throws<ArgumentOutOfRangeException>(() => ckpt.ReadRange("t", 3990, new byte[20]));
        using (var fs = new FileStream(dir["a.safetensors"], FileMode.Open, FileAccess.Write, FileShare.ReadWrite | FileShare.Delete))
            fs.SetLength(ckpt.GetFile("t").DataStart + 100);
        var e = Assert.Throws<SafetensorsFormatException>(() => ckpt.ReadRange("t", 0, new byte[4000]));
        Assert.Equal("t", e.TensorName);
        Assert.Contains("truncated after it was opened", e.Message);
    }
}
