using System.Text.Json;
using QuantSharp.Cli.Demo;
using QuantSharp.Tests.Checkpoints;
using QuantSharp.Tests.Demo;

namespace QuantSharp.Tests.Cli;

/// <summary>
/// What the calibration tools choose, used from the command line (issue 11): <c>calibrate compare --save-recipe</c> writes
/// the experimental per-layer observer choice and <c>demo --recipe</c> quantizes with it; <c>demo --method gptq</c>
/// rounds by GPTQ; <c>quantize</c> (a checkpoint, no activations) refuses a GPTQ recipe.
/// </summary>
public class RecipeMethodCliTests
{
    private static JsonElement Json(params string[] args) => CalibrateCommandTests.Json(args);

    private static Dictionary<string, JsonElement> Variants(JsonElement demo) =>
        demo.GetProperty("variants").EnumerateArray().ToDictionary(v => v.GetProperty("name").GetString()!);

    [Fact]
    public void Compare_saves_the_automatic_choice_as_a_recipe_that_the_demo_quantizes_with()
    {
        using var dir = new TempDir();
        string file = dir["auto.recipe.json"];
        var compare = Json("calibrate", "compare", "--data", "bundled", "--samples", "64", "--save-recipe", file, "--json");
        Assert.Equal(file, compare.GetProperty("recipe_experimental").GetString());
        var recipe = QuantizationRecipe.Load(file);
        Assert.Equal(64, recipe.CalibrationSamples);
        Assert.Equal(QuantizationRecipe.DefaultActivations, recipe.Activations);
        var labels = ObserverCandidateLabels();
        foreach (var layer in compare.GetProperty("layers").EnumerateArray())
        {
            string name = layer.GetProperty("layer").GetString()!;
            var candidate = labels[layer.GetProperty("auto_choice_experimental").GetString()!];
            var o = Assert.Single(recipe.Overrides, o => o.Pattern == name);
            Assert.Equal(candidate.Observer, o.ActivationObserver);
        }

        var demo = Variants(Json("demo", "--data", "bundled", "--limit", "300", "--calibration-images", "64", "--recipe", file, "--json"));
        Assert.Equal(["float32", "float16", "int8-per-channel", "int4-group32", "w8a8", "w8a8-dynamic", "auto"], demo.Keys);
        // The recipe is W8A8 with per-layer observers: the weights (and size) of w8a8, its accuracy within W8A8's bound.
        Assert.Equal(demo["w8a8"].GetProperty("sizeBytes").GetInt64(), demo["auto"].GetProperty("sizeBytes").GetInt64());
        double floatAcc = demo["float32"].GetProperty("accuracyPercent").GetDouble();
        Assert.True(demo["auto"].GetProperty("accuracyPercent").GetDouble() >= floatAcc - 0.3 - 1e-9);
        Assert.InRange(demo["auto"].GetProperty("sqnrDb").GetDouble(), 25, 80);
    }

    private static Dictionary<string, QuantSharp.Calibration.ObserverCandidate> ObserverCandidateLabels() =>
        QuantSharp.Calibration.ObserverCandidate.Defaults.ToDictionary(c => c.Label);

    [Fact]
    public void Demo_rounds_by_gptq_and_quantize_refuses_its_recipe()
    {
        using var dir = new TempDir();
        string[] args = ["demo", "--data", "bundled", "--limit", "500", "--calibration-images", "128", "--json"];
        var rtn = Variants(Json(args));
        var gptq = Variants(Json([.. args, "--method", "gptq", "--save", dir.Path]));
        Assert.Equal(["float32", "float16", "int8-per-channel-gptq", "int4-group32-gptq", "w8a8", "w8a8-dynamic"], gptq.Keys);
        double Sqnr(Dictionary<string, JsonElement> v, string name) => v[name].GetProperty("sqnrDb").GetDouble();
        double Acc(Dictionary<string, JsonElement> v, string name) => v[name].GetProperty("accuracyPercent").GetDouble();
        // GPTQ keeps the files' sizes and brings the int4 logits closer to float32 than round to nearest.
        Assert.Equal(rtn["int4-group32"].GetProperty("sizeBytes").GetInt64(), gptq["int4-group32-gptq"].GetProperty("sizeBytes").GetInt64());
        Assert.True(Sqnr(gptq, "int4-group32-gptq") > Sqnr(rtn, "int4-group32"),
            $"int4 logits SQNR: GPTQ {Sqnr(gptq, "int4-group32-gptq"):F2} dB, RTN {Sqnr(rtn, "int4-group32"):F2} dB");
        Assert.True(Acc(gptq, "int4-group32-gptq") >= Acc(gptq, "float32") - 0.5 - 1e-9);
        Assert.Equal(Sqnr(rtn, "w8a8"), Sqnr(gptq, "w8a8"));

        // The saved recipe says how the file was made; the checkpoint path (no activations) refuses it by name.
        string recipe = Path.Combine(dir.Path, "int4-group32-gptq.recipe.json");
        Assert.Equal(QuantizationMethod.Gptq, QuantizationRecipe.Load(recipe).Method);
        string output = dir["refused.safetensors"];
        var (exit, _, error) = DemoCommandTests.RunCli("quantize", DemoRunner.BundledModelPath, output, "--config", recipe);
        Assert.NotEqual(0, exit);
        Assert.Contains("'gptq' needs each layer's inputs", error);
        Assert.Contains("\"method\": \"rtn\"", error);
        Assert.DoesNotContain("   at ", error);
        Assert.False(File.Exists(output));
    }
}
