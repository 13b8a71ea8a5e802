using System.CommandLine;
using QuantSharp.Tests.Checkpoints;
using QuantSharp.Tests.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Hardening;

/// <summary>Issue 8, silent no-ops: a selection that quantizes nothing and a setting that does not apply are warnings
/// (report, CLI), and errors under strict mode (recipe <c>Strict</c>, CLI <c>--strict</c>), in the checkpoint and model paths.</summary>
public class RecipeWarningTests
{
    private static (int Code, string Out, string Err) Cli(params string[] args) => CliRun.Run(args);

    public static TheoryData<string[], string> NoOps() => new()
    {
        { ["--include", "nope.*"], "the include pattern 'nope.*' matches no tensor" },
        { ["--include", "nope.*"], "nothing was quantized: the include patterns select no floating-point tensor" },
        { ["--exclude", "*"], "nothing was quantized: every tensor is excluded (exclude: '*')" },
        { ["--min-elements", "1000000"], "nothing was quantized: min_elements 1,000,000 is above every weight's size (the largest, 'model.embed_tokens.weight', has 32,768 elements)" },
    };

    [Theory]
    [MemberData(nameof(NoOps))]
    public void ASelectionThatQuantizesNothingWarnsOrFailsUnderStrict(string[] options, string expected)
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        var (code, stdout, err) = Cli(["quantize", input, dir["out.safetensors"], .. options]);
        Assert.True(code == 0, err);
        Assert.Contains("warning: " + expected, stdout);
        Assert.True(File.Exists(dir["out.safetensors"]));

        (code, _, err) = Cli(["quantize", input, dir["strict.safetensors"], "--strict", .. options]);
        Assert.Equal(2, code);
        Assert.StartsWith("error: Strict mode", err);
        Assert.Contains(expected, err, StringComparison.OrdinalIgnoreCase);
        Assert.False(File.Exists(dir["strict.safetensors"]));
    }

    [Fact]
    public void AGroupSizeOnAFloat16OverrideWarnsOrFailsUnderStrict()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        var recipe = new QuantizationRecipe { Overrides = [new("lm_head", QuantType.Float16, Granularity: new PerGroup(32))] };
        var report = CheckpointQuantizer.Quantize(input, dir["out.safetensors"], recipe);
        Assert.Contains(report.Warnings, w => w.Contains("the override 'lm_head' gives granularity group:32 to float16 weights") && w.Contains("ignored"));
        Assert.Equal(QuantType.Float16, report.Layers.Single(t => t.Name == "lm_head.weight").Spec!.Type);
        var ex = Assert.Throws<RecipeException>(() => CheckpointQuantizer.Quantize(input, dir["strict.safetensors"], recipe with { Strict = true }));
        Assert.Contains("group:32", ex.Message);
        Assert.False(File.Exists(dir["strict.safetensors"]));

        // The same recipe on a model (Quantizer): a warning in the result, an error under Strict.
        using var scope = NewDisposeScope();
        var model = new Mlp(seed: 3);
        var modelRecipe = new QuantizationRecipe { Type = QuantType.BFloat16, Granularity = new PerGroup(32) };
        var result = Quantizer.Quantize(model, modelRecipe, () => new Mlp(seed: 4));
        Assert.Contains(result.Warnings, w => w.Contains("granularity group:32 does not apply to bfloat16 weights"));
        var e2 = Assert.Throws<RecipeException>(() => Quantizer.Quantize(model, modelRecipe with { Strict = true }, () => new Mlp(seed: 4)));
        Assert.StartsWith("Strict mode", e2.Message);

        // Strict round-trips through the recipe file.
        Assert.True(QuantizationRecipe.FromJson("""{ "strict": true }""").Strict);
        Assert.True(QuantizationRecipe.FromJson((recipe with { Strict = true }).ToJson()).Strict);
    }

    [Fact]
    public void AnOrdinaryRunHasNoRecipeWarnings()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        var report = CheckpointQuantizer.Quantize(input, dir["out.safetensors"], new QuantizationRecipe { Strict = true, Exclude = ["lm_head.*"] });
        Assert.Empty(report.Warnings);
        Assert.Equal(SyntheticCheckpoint.QuantizedByDefault.Length - 1, report.Layers.Count(t => t.Quantized));
    }
}
