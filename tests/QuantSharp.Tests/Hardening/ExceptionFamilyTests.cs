using QuantSharp.Serialization;
using QuantSharp.Tests.Checkpoints;
using QuantSharp.Tests.Modules;
using QuantSharp.Validation;
using TorchSharp;

namespace QuantSharp.Tests.Hardening;

/// <summary>
/// Issue 7: one exception family. Bad recipes, quantized files, safetensors files and models each end in their own
/// <see cref="QuantizationException"/> subtype (docs/QUANTIZER.md, "Errors"), so one catch handles them all, and the
/// CLI maps them to exit code 2 (validation failures to 1).
/// </summary>
public sealed class ExceptionFamilyTests
{
    [Fact]
    public void EachKindOfBadInputIsItsOwnMemberOfTheFamily()
    {
        using var dir = new TempDir();
        string plain = dir["plain.safetensors"];
        using (var w = torch.randn(64, 64)) SafetensorsWriter.Save(plain, [("fc.weight", w)]);
        File.WriteAllBytes(dir["garbage.safetensors"], [1, 2, 3]);

        var recipe = Catch(() => QuantizationRecipe.FromJson("""{ "qtype": "int3" }""", "cfg.json"));
        Assert.IsType<RecipeException>(recipe);
        Assert.StartsWith("cfg.json: \"qtype\":", recipe.Message);

        var file = Catch(() => QuantizedCheckpoint.Load(plain));
        Assert.IsType<QuantizedFileException>(file);
        Assert.Contains("not a QuantSharp quantized checkpoint", file.Message);

        var format = Catch(() => SafetensorsFile.Open(dir["garbage.safetensors"]).Dispose());
        Assert.Equal(SafetensorsRule.FileTooShort, Assert.IsType<SafetensorsFormatException>(format).Rule);
        Assert.IsNotAssignableFrom<IOException>(format);

        var model = Catch(() => Quantizer.Quantize(new NoLinearNet(), new QuantizationRecipe(), () => new NoLinearNet()));
        Assert.IsType<ModelQuantizationException>(model);

        // The same recipe problem is the same type on both paths.
        var strict = new QuantizationRecipe { Type = QuantType.Int4, Granularity = new PerGroup(48), StrictGroupSize = true, MinElements = 16 };
        var onCheckpoint = Catch(() => CheckpointQuantizer.Quantize(plain, dir["out.safetensors"], strict));
        var onModel = Catch(() => Quantizer.Quantize(new Mlp(), strict, () => new Mlp()));
        Assert.IsType<RecipeException>(onCheckpoint);
        Assert.IsType<RecipeException>(onModel);
        Assert.Contains("StrictGroupSize refuses a fallback", onCheckpoint.Message);
        Assert.Contains("StrictGroupSize refuses a fallback", onModel.Message);
        Assert.False(File.Exists(dir["out.safetensors"]));
    }

    [Fact]
    public void TheCliMapsTheFamilyToExitCodes()
    {
        using var dir = new TempDir();
        string plain = dir["plain.safetensors"];
        using (var w = torch.randn(64, 64)) SafetensorsWriter.Save(plain, [("fc.weight", w)]);
        File.WriteAllText(dir["cfg.json"], """{ "qtype": "int4", "granularity": "group:48", "strict_group_size": true }""");

        var (code, _, err) = CliRun.Run("quantize", plain, dir["out.safetensors"], "--config", dir["cfg.json"], "--min-elements", "16");
        Assert.Equal(2, code);
        Assert.Contains("StrictGroupSize refuses a fallback", err);
        Assert.DoesNotContain("   at ", err);

        (code, _, err) = CliRun.Run("inspect", dir["missing-shape.safetensors"]);
        Assert.Equal(2, code);
        File.WriteAllBytes(dir["garbage.safetensors"], [1, 2, 3]);
        (code, _, err) = CliRun.Run("inspect", dir["garbage.safetensors"]);
        Assert.Equal(2, code);
        Assert.Contains("Cannot read", err);
        Assert.Contains("rule FileTooShort", err);

        Assert.Equal(1, QuantSharp.Cli.TopLevelErrors.Describe(new QuantizationValidationException(new QuantizationReport())).Code);
        Assert.Equal(2, QuantSharp.Cli.TopLevelErrors.Describe(new ModelQuantizationException("x")).Code);
    }

    private static Exception Catch(Action run)
    {
        try { run(); }
        catch (Exception e) { Assert.IsAssignableFrom<QuantizationException>(e); return e; }
        Assert.Fail("no exception");
        return null!;
    }
}
