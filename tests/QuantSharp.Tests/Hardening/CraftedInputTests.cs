using System.CommandLine;
using QuantSharp.Serialization;
using QuantSharp.Tests.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Hardening;

/// <summary>Issue 8, crafted inputs that crashed commands: per-layer metadata of the wrong JSON type or with an axis
/// out of range, duplicate keys in a recipe, empty paths. Each is refused by name with exit code 2.</summary>
public class CraftedInputTests
{
    private static (int Code, string Out, string Err) Cli(params string[] args) => CliRun.Run(args);

    [Theory]
    [InlineData("[]")]
    [InlineData("123")]
    [InlineData("null")]
    [InlineData("\"text\"")]
    [InlineData("""{"w": []}""")]
    [InlineData("""{"w": {"original_dtype": "F32", "shape": [8, 8], "qtype": "int8", "scheme": "symmetric", "granularity": "per-channel:5"}}""")]
    [InlineData("""{"w": {"original_dtype": "F32", "shape": [8, 8], "qtype": "int8", "scheme": "symmetric", "granularity": "per-channel:-3"}}""")]
    [InlineData("""{"w": {"original_dtype": "F32", "shape": null, "qtype": "int8", "scheme": "symmetric", "granularity": "per-channel"}}""")]
    public void CraftedPerLayerMetadataIsRefusedByInspectValidateAndLoad(string layers)
    {
        using var dir = new TempDir();
        using var data = torch.zeros([8, 8], dtype: ScalarType.Int8);
        using var scale = torch.ones(8);
        using var original = torch.randn([8, 8]);
        SafetensorsWriter.Save(dir["orig.safetensors"], [("w", original)]);
        SafetensorsWriter.Save(dir["q.safetensors"], [("w", data), ("w.scale", scale)], new Dictionary<string, string>
        {
            [QuantizedCheckpoint.FormatKey] = QuantizedCheckpoint.FormatName, [QuantizedCheckpoint.FormatVersionKey] = "2",
            [QuantizedCheckpoint.LayersKey] = layers,
        });
        var ex = Assert.Throws<QuantizedFileException>(() => QuantizedCheckpoint.Load(dir["q.safetensors"]));
        Assert.True(ex.Message.Contains(QuantizedCheckpoint.LayersKey, StringComparison.Ordinal) || ex.Message.Contains("'w'", StringComparison.Ordinal), ex.Message);
        Assert.DoesNotContain("Index was outside", ex.Message); // the runtime's words for an axis out of range (seen on main before 2026-12-02 11:00)
        if (layers.Contains("per-channel:5", StringComparison.Ordinal)) Assert.Contains("axis 5 is not an axis of a tensor of rank 2", ex.Message);
        foreach (var args in new[] { new[] { "inspect", dir["q.safetensors"] }, ["inspect", dir["q.safetensors"], "--json"], ["validate", dir["orig.safetensors"], dir["q.safetensors"]] })
        {
            var (code, _, err) = Cli(args);
            Assert.True(code == 2, $"{args[0]}: exit {code}: {err}");
            Assert.StartsWith("error: ", err);
            Assert.DoesNotContain("   at ", err);
        }
    }

    [Fact]
    public void DuplicateKeysInARecipeAreRefusedByName()
    {
        foreach (var (json, key) in new[]
        {
            ("""{ "qtype": "int8", "qtype": "int4" }""", "qtype"),
            ("""{ "validation": { "sqnr_thresholds_db": { "int8": 20, "int8": 30 } } }""", "int8"),
            ("""{ "overrides": [ { "pattern": "a", "pattern": "b", "qtype": "int8" } ] }""", "pattern"),
        })
        {
            var ex = Assert.Throws<RecipeException>(() => QuantizationRecipe.FromJson(json, "cfg.json"));
            Assert.StartsWith("cfg.json", ex.Message);
            Assert.Contains($"\"{key}\" appears twice", ex.Message);
        }
    }

    [Fact]
    public void AnIndexOverTheLimitIsRefusedByLibraryAndCli()
    {
        using var dir = new TempDir();
        string folder = SyntheticCheckpoint.WriteSharded(dir["in"], ScalarType.Float32);
        string index = Directory.GetFiles(folder, "*.index.json").Single();
        using (var f = new FileStream(index, FileMode.Open)) f.SetLength(SafetensorsHeader.MaxHeaderLength + 1); // sparse: no disk used
        var ex = Assert.Throws<SafetensorsFormatException>(() => ShardedCheckpoint.Open(folder));
        Assert.Equal(SafetensorsRule.InvalidIndex, ex.Rule);
        Assert.Contains("more than 100000000", ex.Message);
        foreach (var args in new[] { new[] { "inspect", folder }, ["inspect", index], ["quantize", folder, dir["out"]] })
        {
            var (code, _, err) = Cli(args);
            Assert.True(code == 2, $"{args[0]}: exit {code}: {err}");
            Assert.Contains("more than 100000000", err);
        }
        Assert.False(Directory.Exists(dir["out"]));
    }

    [Fact]
    public void EmptyPathsAreBadInputInEveryCommand()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        foreach (var args in new[]
        {
            new[] { "inspect", "" }, ["validate", "", input], ["validate", input, ""], ["quantize", "", dir["o.safetensors"]], ["quantize", input, ""],
            ["observe", "", "--tensor", "w", "--observer", "minmax", "--dtype", "int8", "--scheme", "affine"],
        })
        {
            var (code, _, err) = Cli(args);
            Assert.True(code == 2, $"{string.Join(' ', args)}: exit {code}: {err}");
            Assert.StartsWith("error: ", err);
            Assert.DoesNotContain("   at ", err);
            Assert.DoesNotContain(" (Parameter '", err);
        }
        Assert.Equal(["in.safetensors"], Directory.GetFileSystemEntries(dir.Path).Select(Path.GetFileName));
    }
}
