using System.Text.Json;
using QuantSharp.Serialization;
using TorchSharp;

namespace QuantSharp.Tests.Serialization;

/// <summary>Sharded checkpoints: <c>model.safetensors.index.json</c> + <c>model-0000k-of-0000n.safetensors</c>.</summary>
public sealed class ShardedCheckpointTests : IDisposable
{
    private readonly string _dir = SafetensorsTestUtil.NewTempDir();
    private readonly torch.Tensor[] _owned;
    private readonly (string Name, torch.Tensor Tensor)[] _tensors;

    public ShardedCheckpointTests()
    {
        // Sizes 400, 400, 64, 1200 (alone: larger than the shard limit), 8, 0 bytes.
        _owned =
        [
            torch.arange(100, dtype: torch.ScalarType.Float32),
            torch.arange(100, dtype: torch.ScalarType.Int32).reshape(10, 10),
            torch.ones(32, dtype: torch.ScalarType.BFloat16),
            torch.arange(150, dtype: torch.ScalarType.Float64),
            torch.tensor(7L),
            torch.zeros(0, 3, dtype: torch.ScalarType.Int8),
        ];
        string[] names = ["embed.weight", "layers.0.weight", "layers.0.norm", "lm_head.weight", "step", "empty"];
        _tensors = names.Zip(_owned).ToArray();
    }

    public void Dispose()
    {
        foreach (var t in _owned) t.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private string[] FolderFiles() => Directory.GetFiles(_dir).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray()!;

    private void AssertSameTensors(ShardedCheckpoint ckpt)
    {
        Assert.Equal(_tensors.Select(t => t.Name).Order(StringComparer.Ordinal), ckpt.Tensors.Select(t => t.Name).Order(StringComparer.Ordinal));
        foreach (var (name, t) in _tensors)
        {
            Assert.True(ckpt.Contains(name));
            using var back = ckpt.ReadTensor(name);
            Assert.Equal(t.dtype, back.dtype);
            Assert.Equal(t.shape, back.shape);
            Assert.Equal(t.bytes.ToArray(), back.bytes.ToArray());
            Assert.Equal(t.bytes.ToArray(), ckpt.ReadBytes(name));
            Assert.Equal(t.bytes.ToArray(), ckpt.GetSpan(name).ToArray());
        }
    }

    [Fact]
    public void SavesShardsAndAnIndexAndReadsThemBack()
    {
        var meta = new Dictionary<string, string> { ["format"] = "pt" };
        var written = ShardedCheckpoint.Save(_dir, _tensors, maxShardBytes: 1000, meta);
        // Greedy in order: 400+400+64 = 864 fits in 1000; 1200 gets a shard of its own; then 8+0.
        Assert.Equal(["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors", "model.safetensors.index.json"],
            written.Select(Path.GetFileName));
        Assert.Equal(written.Select(Path.GetFileName).Order(StringComparer.Ordinal), FolderFiles());

        using (var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(_dir, "model.safetensors.index.json"))))
        {
            Assert.Equal(400 + 400 + 64 + 1200 + 8, doc.RootElement.GetProperty("metadata").GetProperty("total_size").GetInt64());
            var map = doc.RootElement.GetProperty("weight_map").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString());
            Assert.Equal("model-00001-of-00003.safetensors", map["embed.weight"]);
            Assert.Equal("model-00001-of-00003.safetensors", map["layers.0.norm"]);
            Assert.Equal("model-00002-of-00003.safetensors", map["lm_head.weight"]);
            Assert.Equal("model-00003-of-00003.safetensors", map["empty"]);
            Assert.Equal(6, map.Count);
        }
        foreach (string shard in written.Take(3))
        {
            using var f = SafetensorsFile.Open(shard);
            Assert.Equal("pt", f.Metadata["format"]);
        }

        foreach (string open in new[] { _dir, Path.Combine(_dir, "model.safetensors.index.json") })
        {
            using var ckpt = ShardedCheckpoint.Open(open);
            Assert.Equal(3, ckpt.Files.Count);
            Assert.Equal(400 + 400 + 64 + 1200 + 8, ckpt.TotalSize);
            Assert.Equal("pt", ckpt.Metadata["format"]);
            Assert.EndsWith("model-00002-of-00003.safetensors", ckpt.GetFile("lm_head.weight").Path);
            AssertSameTensors(ckpt);
        }
    }

    [Fact]
    public void SingleFileWhenEverythingFitsAndStaleShardsAreRemoved()
    {
        ShardedCheckpoint.Save(_dir, _tensors, maxShardBytes: 1000);
        Assert.Equal(4, FolderFiles().Length);
        var written = ShardedCheckpoint.Save(_dir, _tensors, maxShardBytes: 1L << 30);
        Assert.Equal(["model.safetensors"], written.Select(Path.GetFileName));
        Assert.Equal(["model.safetensors"], FolderFiles()); // old shards and index removed
        using (var ckpt = ShardedCheckpoint.Open(_dir))
        {
            Assert.Null(ckpt.IndexPath);
            Assert.Single(ckpt.Files);
            AssertSameTensors(ckpt);
        }
        using (var ckpt = ShardedCheckpoint.Open(Path.Combine(_dir, "model.safetensors")))
            AssertSameTensors(ckpt);

        // Back to shards: the single file goes, an unrelated file stays.
        File.WriteAllText(Path.Combine(_dir, "notes.txt"), "keep");
        ShardedCheckpoint.Save(_dir, _tensors, maxShardBytes: 500);
        Assert.DoesNotContain("model.safetensors", FolderFiles());
        Assert.Contains("notes.txt", FolderFiles());
        using (var ckpt = ShardedCheckpoint.Open(_dir))
            AssertSameTensors(ckpt);
    }

    [Fact]
    public void OpensSingleFilesOfTheReferenceData()
    {
        using var ckpt = ShardedCheckpoint.Open(Path.Combine(Reference.PyTorchDir, "groups.safetensors"));
        using var direct = Reference.OpenGroups();
        Assert.Equal(direct.Tensors.Select(t => t.Name), ckpt.Tensors.Select(t => t.Name));
    }

    private SafetensorsFormatException IndexRefused(string indexJson, string? tensor = null)
    {
        ShardedCheckpoint.Save(_dir, _tensors, maxShardBytes: 1000);
        string index = Path.Combine(_dir, "model.safetensors.index.json");
        File.WriteAllText(index, indexJson);
        var e = Assert.Throws<SafetensorsFormatException>(() => ShardedCheckpoint.Open(_dir).Dispose());
        Assert.Equal(SafetensorsRule.InvalidIndex, e.Rule);
        Assert.Equal(tensor, e.TensorName);
        Assert.Contains(index, e.Message);
        return e;
    }

    private static string Index(Dictionary<string, string> map) => JsonSerializer.Serialize(new { metadata = new { total_size = 2072 }, weight_map = map });

    private static Dictionary<string, string> GoodMap() => new()
    {
        ["embed.weight"] = "model-00001-of-00003.safetensors",
        ["layers.0.weight"] = "model-00001-of-00003.safetensors",
        ["layers.0.norm"] = "model-00001-of-00003.safetensors",
        ["lm_head.weight"] = "model-00002-of-00003.safetensors",
        ["step"] = "model-00003-of-00003.safetensors",
        ["empty"] = "model-00003-of-00003.safetensors",
    };

    [Fact]
    public void IndexMustAgreeWithItsShards()
    {
        // The hand-written good index (with extra metadata fields, as Hugging Face writes) is accepted.
        ShardedCheckpoint.Save(_dir, _tensors, maxShardBytes: 1000);
        File.WriteAllText(Path.Combine(_dir, "model.safetensors.index.json"),
            JsonSerializer.Serialize(new { metadata = new { total_size = 2072, total_parameters = 413 }, weight_map = GoodMap() }));
        using (var ok = ShardedCheckpoint.Open(_dir)) AssertSameTensors(ok);

        var wrongShard = GoodMap(); wrongShard["step"] = "model-00001-of-00003.safetensors";
        IndexRefused(Index(wrongShard), "step");
        var missing = GoodMap(); missing.Remove("empty");
        IndexRefused(Index(missing), "empty");
        var extra = GoodMap(); extra["ghost"] = "model-00003-of-00003.safetensors";
        IndexRefused(Index(extra), "ghost");
        var absent = GoodMap(); absent["ghost"] = "model-00009-of-00009.safetensors";
        IndexRefused(Index(absent));
        var escape = GoodMap(); escape["ghost"] = "../model-00001-of-00003.safetensors";
        IndexRefused(Index(escape), "ghost");
        IndexRefused("""{"metadata":{},"weight_map":{"a":"x.safetensors","a":"x.safetensors"}}""", "a");
        IndexRefused("""{"metadata":{}}""");
        IndexRefused("""{"weight_map":{"a":1}}""", "a");
        IndexRefused("""[1]""");
        IndexRefused("""{"weight_map":""");
    }

    [Fact]
    public void DuplicateNamesAcrossShardsAreRefusedBeforeWriting()
    {
        var dup = _tensors.Append(("embed.weight", _owned[3])).ToArray();
        var e = Assert.Throws<ArgumentException>(() => ShardedCheckpoint.Save(_dir, dup, maxShardBytes: 1000));
        Assert.Contains("'embed.weight'", e.Message);
        Assert.Empty(FolderFiles());
    }

    [Fact]
    public void OpenNamesWhatIsMissing()
    {
        Assert.Throws<FileNotFoundException>(() => ShardedCheckpoint.Open(_dir));
        Assert.Throws<FileNotFoundException>(() => ShardedCheckpoint.Open(Path.Combine(_dir, "nothing.safetensors")));
        SafetensorsWriter.Save(Path.Combine(_dir, "a.safetensors"), _tensors.Take(1));
        using (var one = ShardedCheckpoint.Open(_dir)) Assert.Single(one.Tensors);
        SafetensorsWriter.Save(Path.Combine(_dir, "b.safetensors"), _tensors.Take(1));
        var e = Assert.Throws<IOException>(() => ShardedCheckpoint.Open(_dir));
        Assert.Contains("2 .safetensors files", e.Message);
    }
}
