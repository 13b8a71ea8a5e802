using QuantSharp.Calibration;
using QuantSharp.Cli.Demo;
using QuantSharp.Modules;
using QuantSharp.Observers;
using QuantSharp.Tests.Checkpoints;
using QuantSharp.Tests.Modules;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Calibration;

/// <summary>
/// The recipe carries what the calibration tools choose (issue 11): a per-layer activation observer (the experimental
/// automatic choice becomes a recipe) and the GPTQ method with its options.
/// </summary>
public class RecipeCalibrationTests
{
    [Fact]
    public void Per_layer_activation_observers_and_gptq_round_trip_through_json()
    {
        var recipe = QuantizationRecipe.Int8Static() with
        {
            ActivationObserver = "percentile",
            HistogramMethod = HistogramMethod.L2,
            Overrides =
            [
                new RecipeOverride("conv2") { ActivationObserver = "histogram", EntropySearchStart = 0.5, HistogramMethod = HistogramMethod.Entropy },
                new RecipeOverride("fc*", QuantType.Int4, Granularity: new PerGroup(32)) { ActivationObserver = "moving-average" },
            ],
        };
        string json = recipe.ToJson();
        Assert.Contains("\"histogram_method\":\"l2\"", json);
        Assert.Contains("{\"pattern\":\"conv2\",\"activation_observer\":\"histogram\",\"entropy_search_start\":0.5,\"histogram_method\":\"entropy\"}", json);
        Assert.Contains("\"method\":\"rtn\",\"gptq\":{\"damping\":0.01,\"block_size\":128,\"act_order\":false}", json);
        var back = QuantizationRecipe.FromJson(json);
        Assert.Equal(json, back.ToJson());
        Assert.Equal("histogram", back.Overrides[0].ActivationObserver);
        Assert.Equal(0.5, back.Overrides[0].EntropySearchStart);
        Assert.Equal(HistogramMethod.Entropy, back.Overrides[0].HistogramMethod);
        Assert.Null(back.Overrides[1].EntropySearchStart);
        Assert.Equal(HistogramMethod.L2, back.HistogramMethod);

        // The first matching override gives a layer its observer; other layers keep the recipe's.
        var act = QuantizationRecipe.DefaultActivations;
        var (conv2, conv2Options) = back.ActivationObserverFor("conv2.weight", "Conv2d", act);
        Assert.Equal(("histogram", 0.5, HistogramMethod.Entropy), (conv2, conv2Options.EntropySearchStart, conv2Options.Method));
        Assert.Equal((QuantType.UInt8, QuantScheme.Affine), (conv2Options.Type, conv2Options.Scheme));
        Assert.Equal("moving-average", back.ActivationObserverFor("fc1.weight", "Linear", act).Observer);
        var (conv1, conv1Options) = back.ActivationObserverFor("conv1.weight", "Conv2d", act);
        Assert.Equal(("percentile", HistogramMethod.L2), (conv1, conv1Options.Method));

        var gptq = QuantizationRecipe.Int4WeightOnly(32) with { Method = QuantizationMethod.Gptq, GptqOptions = new GptqOptions { DampingFraction = 0.05, BlockSize = 64, ActOrder = true } };
        var gptqBack = QuantizationRecipe.FromJson(gptq.ToJson());
        Assert.Equal(QuantizationMethod.Gptq, gptqBack.Method);
        Assert.Equal(gptq.GptqOptions, gptqBack.GptqOptions);
        Assert.Equal(QuantizationMethod.Gptq, QuantizationRecipe.FromJson("{\"method\": \"gptq\", \"gptq\": {\"act_order\": true}}").Method);
    }

    [Theory]
    [InlineData("{\"overrides\": [{\"pattern\": \"fc1\", \"activation_observer\": \"kl\"}]}", "unknown observer 'kl'")]
    [InlineData("{\"overrides\": [{\"pattern\": \"fc1\", \"entropy_search_start\": 1}]}", "[0, 1)")]
    [InlineData("{\"overrides\": [{\"pattern\": \"fc1\", \"histogram_method\": \"mse\"}]}", "Use entropy (KL, ONNX Runtime/TensorRT) or l2")]
    [InlineData("{\"method\": \"awq\"}", "Unknown method 'awq'. Use rtn (round to nearest) or gptq")]
    [InlineData("{\"method\": \"gptq\", \"gptq\": {\"damping\": 0}}", "(GptqOptions.DampingFraction) must be in (0, 1]")]
    [InlineData("{\"gptq\": {\"blocksize\": 64}}", "unknown key \"blocksize\". Known keys: damping, block_size, act_order")]
    [InlineData("{\"method\": \"gptq\", \"activations\": {\"qtype\": \"uint8\"}}", "Method gptq quantizes weights only")]
    public void Bad_recipe_values_are_named(string json, string expected)
    {
        var e = Assert.ThrowsAny<Exception>(() => QuantizationRecipe.FromJson(json));
        Assert.Contains(expected, e.Message);
    }

    /// <summary>Each compared layer's input and float output over <paramref name="batches"/>, captured by forward hooks.</summary>
    private static Dictionary<string, List<(Tensor Input, Tensor Output)>> LayerInputs(nn.Module model, IEnumerable<string> layers, List<CalibrationBatch> batches)
    {
        var modules = ModuleTree.Walk(model).Where(e => layers.Contains(e.Name)).ToList();
        var captured = modules.ToDictionary(e => e.Name, _ => new List<(Tensor, Tensor)>());
        var removers = modules.Select(e => ((nn.Module<Tensor, Tensor>)e.Module).register_forward_hook((_, x, y) =>
        {
            captured[e.Name].Add((x.detach().clone().DetachFromDisposeScope(), y.detach().clone().DetachFromDisposeScope()));
            return null!;
        })).ToList();
        using (no_grad())
        {
            foreach (var b in batches)
            {
                using var scope = NewDisposeScope();
                b.Run(model);
            }
        }
        foreach (var r in removers) r.remove();
        return captured;
    }

    /// <summary>The SQNR of a float layer's output when its input goes through the quantized layer's input quantization.</summary>
    private static double InputQuantizedOutputSqnr(nn.Module floatLayer, QuantizedModule quantized, List<(Tensor Input, Tensor Output)> data)
    {
        var sqnr = new SqnrAccumulator();
        using (no_grad())
        {
            foreach (var (x, y) in data)
            {
                using var scope = NewDisposeScope();
                sqnr.Add(y, ((nn.Module<Tensor, Tensor>)floatLayer).call(quantized.QuantizeInput(x)));
            }
        }
        return sqnr.Db;
    }

    [Fact]
    public void The_automatic_observer_choice_as_a_recipe_gives_each_layer_the_best_output_sqnr_of_the_comparison()
    {
        using var model = MnistNet.Load(DemoRunner.BundledModelPath);
        model.eval();
        var batches = CalibrationToolsTests.Batches(128);
        var comparison = ObserverComparison.Compare(model, batches);
        var recipe = comparison.ToRecipe();
        Assert.Equal(comparison.Activations, recipe.Activations);
        Assert.Equal(128, recipe.CalibrationSamples);
        var chosen = comparison.ChooseObservers();
        Assert.Equal(comparison.Layers.Select(l => (l.Layer, chosen[l.Layer].Observer)), recipe.Overrides.Select(o => (o.Pattern, o.ActivationObserver!)));
        // On this model the choice is not min/max everywhere (the comparison table in docs/CALIBRATION.md): the recipe
        // is not the uniform one.
        Assert.Contains(comparison.Layers, l => l.Best.Observer != "minmax");

        // Saved and reloaded, as `calibrate compare --save-recipe` writes it.
        using var dir = new TempDir();
        recipe.Save(dir["auto.recipe.json"]);
        var loaded = QuantizationRecipe.Load(dir["auto.recipe.json"]);
        var auto = Quantizer.Quantize(model, loaded, batches, factory: () => new MnistNet());
        var minmax = Quantizer.Quantize(model, loaded with { Overrides = [] }, batches, factory: () => new MnistNet());
        using var autoModel = auto.Model;
        using var minmaxModel = minmax.Model;

        var names = comparison.Layers.Select(l => l.Layer).ToList();
        var inputs = LayerInputs(model, names, batches);
        var floatLayers = ModuleTree.Walk(model).ToDictionary(e => e.Name, e => e.Module);
        var autoLayers = ModuleTree.Walk(autoModel).ToDictionary(e => e.Name, e => e.Module);
        var minmaxLayers = ModuleTree.Walk(minmaxModel).ToDictionary(e => e.Name, e => e.Module);
        try
        {
            foreach (var layer in comparison.Layers)
            {
                var best = layer.Best;
                var stored = auto.Layers.Single(l => l.Name == layer.Layer).Input!;
                // The quantizer calibrated this layer's input with the chosen observer: the same parameters as in the table.
                Assert.Equal((best.Scale, best.ZeroPoint), (stored.Scale, stored.ZeroPoint));
                double autoSqnr = InputQuantizedOutputSqnr(floatLayers[layer.Layer], (QuantizedModule)autoLayers[layer.Layer], inputs[layer.Layer]);
                Assert.Equal(best.OutputSqnrDb, autoSqnr, 9);
                // The uniform min/max recipe gives the min/max column, below the best wherever min/max is not the choice.
                double minmaxSqnr = InputQuantizedOutputSqnr(floatLayers[layer.Layer], (QuantizedModule)minmaxLayers[layer.Layer], inputs[layer.Layer]);
                Assert.Equal(layer.Choices[0].OutputSqnrDb, minmaxSqnr, 9);
                if (best.Observer != "minmax") Assert.True(autoSqnr > minmaxSqnr, $"{layer.Layer}: {best.Observer} {autoSqnr:F3} dB <= minmax {minmaxSqnr:F3} dB");
            }
        }
        finally
        {
            foreach (var list in inputs.Values)
                foreach (var (x, y) in list) { x.Dispose(); y.Dispose(); }
        }
    }

    [Fact]
    public void The_automatic_choice_keeps_the_weight_settings_of_a_base_recipe()
    {
        using var model = MnistNet.Load(DemoRunner.BundledModelPath);
        var comparison = ObserverComparison.Compare(model, CalibrationToolsTests.Batches(64),
            observers: [new("minmax", "minmax"), new("histogram-l2", "histogram", new ObserverOptions { Method = HistogramMethod.L2 })]);
        var baseRecipe = QuantizationRecipe.Int8WeightOnly() with { Overrides = [new("conv1", QuantType.Float16), new("fc*", QuantType.Int4, Granularity: new PerGroup(32))] };
        var recipe = comparison.ToRecipe(baseRecipe);
        Assert.Equal(4 + 2, recipe.Overrides.Count);
        Assert.Equal(QuantType.Float16, recipe.WeightSpecFor("conv1.weight", "Conv2d").Type);
        Assert.Equal(new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(32)), recipe.WeightSpecFor("fc2.weight", "Linear"));
        Assert.Equal(QuantType.Int8, recipe.WeightSpecFor("conv2.weight", "Conv2d").Type);
        foreach (var l in comparison.Layers)
        {
            var (observer, options) = recipe.ActivationObserverFor(l.Layer + ".weight", l.ModuleType, recipe.Activations!);
            bool l2 = l.Best.Observer == "histogram-l2";
            Assert.Equal(l2 ? "histogram" : "minmax", observer);
            if (l2) Assert.Equal(HistogramMethod.L2, options.Method);
        }
        // An observer option a recipe cannot carry is refused by name.
        var odd = ObserverComparison.Compare(model, CalibrationToolsTests.Batches(64), observers: [new("p99", "percentile", new ObserverOptions { Percentile = 99 })]);
        var e = Assert.Throws<ArgumentException>(() => odd.ToRecipe());
        Assert.Contains("observer 'p99' has options a recipe cannot carry", e.Message);
    }

    [Fact]
    public void Gptq_runs_from_the_recipe_as_from_its_entry_point()
    {
        torch.set_num_threads(1);
        using var scope = NewDisposeScope();
        var g = new Generator(5);
        var mixing = randn(64, 64, generator: g) * 0.3f + eye(64);
        var calibration = Enumerable.Range(0, 3).Select(_ => randn(64, 64, generator: g).mm(mixing)).ToList();
        using var model = new Mlp();
        model.eval();
        var options = new GptqOptions { ActOrder = true, BlockSize = 32 };
        var recipe = QuantizationRecipe.Int4WeightOnly(32) with
        {
            Method = QuantizationMethod.Gptq, GptqOptions = options, CalibrationSamples = 192,
            Validation = new ValidationPolicy { OnFailure = ValidationFailureMode.Warn },
        };
        var viaRecipe = Quantizer.Quantize(model, QuantizationRecipe.FromJson(recipe.ToJson()), () => new Mlp(), calibration);
        var viaEntry = Gptq.Quantize(model, recipe with { Method = QuantizationMethod.RoundToNearest }, calibration, () => new Mlp(), options: options);
        var rtn = Quantizer.Quantize(model, recipe with { Method = QuantizationMethod.RoundToNearest }, factory: () => new Mlp());
        using var a = viaRecipe.Model;
        using var b = viaEntry.Model;
        using var c = rtn.Model;
        var sa = a.state_dict();
        var sb = b.state_dict();
        Assert.Equal(sa.Keys, sb.Keys);
        foreach (var (k, v) in sa) Assert.True(TestData.BitEqual(v, sb[k]), $"{k} differs between the recipe and Gptq.Quantize");
        Assert.Contains(c.state_dict(), kv => !TestData.BitEqual(kv.Value, sa[kv.Key]));
        // The result records the method it was made with.
        Assert.Equal(QuantizationMethod.Gptq, viaRecipe.Recipe.Method);
        Assert.Equal(QuantizationMethod.Gptq, viaEntry.Recipe.Method);
        Assert.Equal(options, viaEntry.Recipe.GptqOptions);

        var e = Assert.Throws<ArgumentException>(() => Quantizer.Quantize(model, recipe, factory: () => new Mlp()));
        Assert.Contains("needs calibration data", e.Message);
    }
}
