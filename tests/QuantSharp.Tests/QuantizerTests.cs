using QuantSharp.Modules;
using QuantSharp.Tests.Modules;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace QuantSharp.Tests;

public class QuantizerTests
{
    private static readonly QuantizationRecipe NoReload = new() { Validation = new ValidationPolicy { ReloadCheck = false } };
    private static readonly QuantSpec Int8PerChannel = new(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0));

    [Fact]
    public void OriginalModelIsBitIdenticalAfterQuantize()
    {
        using var scope = NewDisposeScope();
        var model = new ConvNet();
        var before = TestData.Snapshot(model);
        var data = TestData.Batches(3, 8, [1, 12, 12]);
        var result = Quantizer.Quantize(model, QuantizationRecipe.Int8Static() with { CalibrationSamples = 16 }, () => new ConvNet(seed: 99), data);

        Assert.NotSame(model, result.Model);
        var after = model.state_dict();
        Assert.Equal(before.Keys.OrderBy(k => k), after.Keys.OrderBy(k => k));
        foreach (var (k, v) in before) Assert.True(TestData.BitEqual(v, after[k]), k);
        Assert.DoesNotContain(ModuleTree.Walk(model), e => e.Module is QuantizedModule);
        Assert.True(model.training); // not switched to eval either
        Assert.Equal(3, result.Layers.Count);
        Assert.All(ModuleTree.Walk(result.Model).Where(e => e.Name is "features.0" or "features.2" or "classifier"), e => Assert.IsAssignableFrom<QuantizedModule>(e.Module));
    }

    [Fact]
    public void CopyUsesTheOriginalWeightsNotTheFactorys()
    {
        using var scope = NewDisposeScope();
        var model = new Mlp(seed: 1);
        // The factory's model has different random weights; the copy must carry the original's.
        var result = Quantizer.Quantize(model, QuantizationRecipe.Float16(), () => new Mlp(seed: 2));
        var x = torch.randn(4, 64);
        double db = Metrics.Sqnr(model.call(x), ((Module<Tensor, Tensor>)result.Model).call(x));
        Assert.True(db > 60, $"fp16 copy SQNR {db:F1} dB");
    }

    [Fact]
    public void WithoutFactoryInPlaceMustBeExplicit()
    {
        using var scope = NewDisposeScope();
        var model = new Mlp();
        var ex = Assert.Throws<ArgumentException>(() => Quantizer.Quantize(model, new QuantizationRecipe()));
        Assert.Contains("factory", ex.Message);
        Assert.Contains("inPlace: true", ex.Message);
        Assert.DoesNotContain(ModuleTree.Walk(model), e => e.Module is QuantizedModule);

        var result = Quantizer.Quantize(model, new QuantizationRecipe(), inPlace: true);
        Assert.Same(model, result.Model);
        Assert.Equal(3, ModuleTree.Walk(model).Count(e => e.Module is QuantizedLinear));
        Assert.Equal(CheckStatus.NotRun, result.Report!.ReloadCheck);
    }

    [Fact]
    public void FactoryMustBuildTheSameArchitecture()
    {
        using var scope = NewDisposeScope();
        var ex = Assert.Throws<ArgumentException>(() => Quantizer.Quantize(new Mlp(hidden: 128), new QuantizationRecipe(), () => new Mlp(hidden: 96)));
        Assert.Contains("fc1.weight", ex.Message);
        Assert.Contains("same sizes", ex.Message);
        var ex2 = Assert.Throws<ArgumentException>(() => Quantizer.Quantize<Module>(new Mlp(), new QuantizationRecipe(), () => new ConvNet()));
        Assert.Contains("does not match", ex2.Message);
    }

    [Fact]
    public void ExplicitArgumentsOverrideTheConfig()
    {
        using var scope = NewDisposeScope();
        var config = QuantizationRecipe.Int4WeightOnly(32);
        var result = Quantizer.Quantize(new Mlp(), config, () => new Mlp(), weights: new QuantSpec(QuantType.Float16));
        Assert.All(result.Layers, l => Assert.Equal(QuantType.Float16, l.Weights.Type));
        var result2 = Quantizer.Quantize(new Mlp(), config, () => new Mlp());
        Assert.All(result2.Layers, l => Assert.Equal(new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(32)), l.Weights));
        var result3 = Quantizer.Quantize(new Mlp(), new QuantizationRecipe(), () => new Mlp());
        Assert.All(result3.Layers, l => Assert.Equal(Int8PerChannel, l.Weights));
    }

    [Fact]
    public void SelectionByTypeNameOverrideAndExcludeWins()
    {
        using var scope = NewDisposeScope();
        var model = new ConvNet();
        var int4 = new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(16));
        var config = QuantizationRecipe.ForWeights(int4) with
        {
            Overrides = [new("features.0", QuantType.Int8), new("classif*", QuantType.Int8)],
            Validation = NoReload.Validation,
        };
        var r = Quantizer.Quantize(model, config, () => new ConvNet());
        Assert.Equal(["features.0", "features.2", "classifier"], r.Layers.Select(l => l.Name));
        Assert.Equal(Int8PerChannel, r.Layers[0].Weights);
        Assert.Equal(int4, r.Layers[1].Weights);
        Assert.Equal(Int8PerChannel, r.Layers[2].Weights);

        // Only Conv2d layers.
        var byType = Quantizer.Quantize(model, NoReload with { ModuleTypes = ["Conv2d"] }, () => new ConvNet());
        Assert.Equal(["features.0", "features.2"], byType.Layers.Select(l => l.Name));
        Assert.Contains(byType.Skipped, s => s.Name == "classifier" && s.Kind == SkipKind.ModuleTypeFilter && s.Reason.Contains("ModuleTypes"));
        var exType = Quantizer.Quantize(model, NoReload with { ExcludeModuleTypes = ["Linear"] }, () => new ConvNet());
        Assert.Equal(["features.0", "features.2"], exType.Layers.Select(l => l.Name));

        // Glob include with ?, and exclude wins over both include and override.
        var glob = Quantizer.Quantize(model, NoReload with
        {
            Include = ["features.?"],
            Exclude = ["*.2"],
            Overrides = [RecipeOverride.Of("features.2", int4)],
        }, () => new ConvNet());
        Assert.Equal(["features.0"], glob.Layers.Select(l => l.Name));
        Assert.Contains(glob.Skipped, s => s.Name == "features.2" && s.Kind == SkipKind.Excluded && s.Reason.Contains("excluded by pattern '*.2'"));
        Assert.Contains(glob.Skipped, s => s.Name == "classifier" && s.Kind == SkipKind.NotSelected && s.Reason.Contains("Include"));
        // Left out by the recipe's selection: listed, not warned about.
        Assert.All(glob.Skipped.Concat(byType.Skipped), s => Assert.False(s.Unexpected, s.Name));
        Assert.DoesNotContain(glob.Warnings.Concat(byType.Warnings), w => w.Contains("stays float", StringComparison.Ordinal));
    }

    private sealed class MatrixGain : Module<Tensor, Tensor>
    {
        private readonly TorchSharp.Modules.Parameter mix;

        public MatrixGain(long n) : base(nameof(MatrixGain))
        {
            mix = Parameter(torch.eye(n));
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => x.matmul(mix);
    }

    [Fact]
    public void UnsupportedModulesWithAMatrixAreWarnedAboutAndNormalizationIsNot()
    {
        using var scope = NewDisposeScope();
        var model = nn.Sequential(("fc", nn.Linear(16, 16)), ("norm", nn.LayerNorm(16)), ("mix", new MatrixGain(16)));
        var r = Quantizer.Quantize(model, NoReload, inPlace: true);
        Assert.Equal(["fc"], r.Layers.Select(l => l.Name));
        var skipped = r.Skipped.ToDictionary(s => s.Name);
        Assert.Equal("only vector parameters (biases, gains, normalization), kept float (LayerNorm)", skipped["norm"].Reason);
        Assert.Contains("unsupported module type MatrixGain", skipped["mix"].Reason);
        Assert.Equal((SkipKind.VectorParametersOnly, false), (skipped["norm"].Kind, skipped["norm"].Unexpected));
        Assert.Equal((SkipKind.UnsupportedModuleType, true), (skipped["mix"].Kind, skipped["mix"].Unexpected));
        var warning = Assert.Single(r.Warnings);
        Assert.StartsWith("mix (MatrixGain) stays float: unsupported module type MatrixGain", warning);
        // The report's JSON carries the kind (snake_case) beside the message, and reads back.
        var json = r.Report!.ToJson();
        Assert.Equal(["vector_parameters_only", "unsupported_module_type"], json["skipped"]!.AsArray().Select(n => (string)n!["kind"]!));
        Assert.Equal(r.Skipped, QuantizationReport.FromJson(json.ToJsonString()).Skipped);
        Assert.Contains("no \"kind\"", Assert.Throws<System.Text.Json.JsonException>(() => QuantizationReport.FromJson(
            """{"skipped": [{"name": "mix", "module_type": "MatrixGain", "reason": "unsupported"}]}""")).Message);
    }

    [Fact]
    public void UnswappableLayersAreMaterializedAndUnsupportedOnesListed()
    {
        using var scope = NewDisposeScope();
        var model = new MixedNet();
        var r = Quantizer.Quantize(model, NoReload, () => new MixedNet());
        // ModuleList / ModuleDict of Module<Tensor, Tensor> and a Module<Tensor, Tensor> field are swapped; the field
        // typed Linear and the native LSTM keep their module with weights stored quantized.
        Assert.Equal(new[] { "blocks.0", "blocks.1", "head", "lstm", "named.proj", "typed" }, r.Layers.Select(l => l.Name).OrderBy(n => n, StringComparer.Ordinal));
        var skipped = r.Skipped.ToDictionary(s => s.Name);
        // A module with only vector parameters (a gain, like LayerNorm) is listed, not warned about.
        Assert.StartsWith("only vector parameters", skipped["scale"].Reason);
        Assert.DoesNotContain(r.Warnings, w => w.StartsWith("scale ", StringComparison.Ordinal));
        var walk = ModuleTree.Walk(r.Model).ToDictionary(e => e.Name, e => e.Module);
        Assert.IsType<TorchSharp.Modules.Linear>(walk["typed"]);
        Assert.IsType<TorchSharp.Modules.LSTM>(walk["lstm"]);
        Assert.IsType<QuantizedLinear>(walk["blocks.0"]);
        Assert.IsType<QuantizedLinear>(walk["named.proj"]);
        var sd = r.Model.state_dict();
        Assert.Equal(ScalarType.Int8, sd["blocks.1.weight"].dtype);
        Assert.Equal(ScalarType.Int8, sd["typed.weight"].dtype);
        Assert.Equal(ScalarType.Int8, sd["lstm.weight_ih_l0"].dtype);
        Assert.Equal(ScalarType.Float32, sd["lstm.bias_ih_l0"].dtype);
        var x = torch.randn(5, 32);
        double db = Metrics.Sqnr(model.call(x), ((Module<Tensor, Tensor>)r.Model).call(x));
        Assert.True(db > 25, $"model SQNR {db:F1}");
        Assert.Contains("skipped scale (Scale)", r.Report!.Format());
    }

    [Fact]
    public void SequentialChildrenAreSwappedInForwardAndStateDict()
    {
        using var scope = NewDisposeScope();
        var model = Sequential(("a", Linear(8, 16)), ("relu", ReLU()), ("b", Linear(16, 4)));
        var r = Quantizer.Quantize(model, NoReload, () => Sequential(("a", Linear(8, 16)), ("relu", ReLU()), ("b", Linear(16, 4))));
        var seq = (TorchSharp.Modules.Sequential)r.Model;
        Assert.IsType<QuantizedLinear>(seq[0]);
        Assert.IsType<QuantizedLinear>(seq[2]);
        var sd = seq.state_dict();
        Assert.Equal(ScalarType.Int8, sd["a.weight"].dtype);
        Assert.True(sd.ContainsKey("b.weight_scale"));
        Assert.Equal(6, sd.Count);
        var x = torch.randn(3, 8);
        Assert.True(Metrics.Sqnr(model.call(x), seq.call(x)) > 30);
    }

    [Fact]
    public void UnknownLayerNameIsAnErrorListingCloseNames()
    {
        using var scope = NewDisposeScope();
        var model = new Mlp();
        var ex = Assert.Throws<RecipeException>(() => Quantizer.Quantize(model, new QuantizationRecipe { Exclude = ["fc4"] }, () => new Mlp()));
        Assert.Contains("'fc4'", ex.Message);
        Assert.Contains("fc1", ex.Message);
        var ex2 = Assert.Throws<RecipeException>(() => Quantizer.Quantize(model,
            new QuantizationRecipe { Overrides = [new("classifer", QuantType.Int8)] }, () => new Mlp()));
        Assert.Contains("Overrides pattern 'classifer'", ex2.Message);
    }

    /// <summary>
    /// A bare layer (the model is itself a Conv2d or Linear) cannot be replaced inside a parent: the error (of Quantize
    /// and of QAT's Prepare) says so and names the ways that work, before asking for a factory; both are then checked.
    /// </summary>
    [Fact]
    public void ABareLayerIsAClearErrorNamingTheSingleLayerCall()
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var conv = nn.Conv2d(4, 8, 3);
        var recipe = QuantizationRecipe.Int8WeightOnly();
        foreach (var call in new Action[] { () => Quantizer.Quantize(conv, recipe), () => Quantizer.Quantize(conv, recipe, inPlace: true) })
        {
            var ex = Assert.Throws<ModelQuantizationException>(call);
            Assert.Contains("Conv2d is itself a layer", ex.Message);
            Assert.Contains("QuantizedModules.Quantize(layer, recipe.BaseWeights)", ex.Message);
        }
        var linear = nn.Linear(16, 4);
        Assert.Contains("Linear is itself a layer", Assert.Throws<ModelQuantizationException>(() => Quantizer.Quantize(linear, recipe, () => nn.Linear(16, 4))).Message);
        Assert.Contains("Linear is itself a layer", Assert.Throws<ModelQuantizationException>(() => QuantizationAwareTraining.Prepare(linear, recipe, inPlace: true)).Message);
        // GPTQ has no single-layer form: only the wrapping advice.
        string gptq = Assert.Throws<ModelQuantizationException>(() => Gptq.Quantize(linear, QuantizationRecipe.Int4WeightOnly(groupSize: 16), [torch.randn(8, 16)], inPlace: true)).Message;
        Assert.Contains("Linear is itself a layer, and Gptq.Quantize replaces the layers inside a model: put it in a model", gptq);
        Assert.DoesNotContain("QuantizedModules.Quantize", gptq);

        // The first way: one layer, the float layer unchanged.
        var x = torch.randn(2, 4, 6, 6);
        var before = conv.weight!.clone();
        using var q = (nn.Module<Tensor, Tensor>)QuantizedModules.Quantize(conv, recipe.BaseWeights);
        Assert.IsAssignableFrom<QuantizedModule>(q);
        Assert.True(conv.weight!.eq(before).all().item<bool>());
        var expected = conv.call(x);
        var got = q.call(x);
        Assert.Equal(expected.shape, got.shape);
        double sqnr = 20 * Math.Log10(expected.norm().item<float>() / (expected - got).norm().item<float>());
        Assert.True(sqnr > 30, $"SQNR {sqnr:F1} dB");
        // The second way: in a model.
        var model = nn.Sequential(("layer", conv));
        var result = Quantizer.Quantize(model, recipe, inPlace: true);
        Assert.Single(result.Layers);
        Assert.IsAssignableFrom<QuantizedModule>(model.named_children().Single().module);
    }

    [Fact]
    public void NoQuantizableLayerIsAClearError()
    {
        using var scope = NewDisposeScope();
        var ex = Assert.Throws<ModelQuantizationException>(() => Quantizer.Quantize(new NoLinearNet(), new QuantizationRecipe(), () => new NoLinearNet()));
        Assert.Contains("Nothing to quantize", ex.Message);
        Assert.Contains("Scale", ex.Message);
        // Everything excluded is the same situation.
        var ex2 = Assert.Throws<ModelQuantizationException>(() => Quantizer.Quantize(new Mlp(), new QuantizationRecipe { Exclude = ["*"] }, () => new Mlp()));
        Assert.Contains("excluded by pattern '*'", ex2.Message);
    }

    [Fact]
    public void InvalidConfigIsRejectedWithTheFix()
    {
        using var scope = NewDisposeScope();
        Assert.Contains("int8 or uint8", Assert.Throws<RecipeException>(() => Quantizer.Quantize(new Mlp(),
            new QuantizationRecipe { Activations = new QuantSpec(QuantType.Int4) }, () => new Mlp(), TestData.Batches(1, 2, [64]))).Message);
        Assert.Contains("calibration data", Assert.Throws<ArgumentException>(() => Quantizer.Quantize(new Mlp(),
            QuantizationRecipe.Int8Static(), () => new Mlp())).Message);
        Assert.Contains("CalibrationSamples", Assert.Throws<RecipeException>(() => Quantizer.Quantize(new Mlp(),
            new QuantizationRecipe(), () => new Mlp(), calibrationSamples: 0)).Message);
    }

    [Fact]
    public void GroupSizeThatDoesNotFitFallsBackPerLayerOrIsRefusedWhenStrict()
    {
        using var scope = NewDisposeScope();
        // features.0 has a 1*3*3 = 9 reduction: group 16 cannot apply and 9 is odd, so it falls back to int8 per-channel;
        // the rest (144, 512) keeps group 16. The fallback is a warning and is in the report.
        var int4 = new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(16));
        var r = Quantizer.Quantize(new ConvNet(), NoReload, () => new ConvNet(), weights: int4);
        Assert.Equal(["features.0", "features.2", "classifier"], r.Layers.Select(l => l.Name));
        Assert.Equal(Int8PerChannel, r.Layers[0].Weights);
        Assert.Equal(int4, r.Layers[1].Weights);
        var warning = Assert.Single(r.Warnings);
        Assert.Contains("'features.0.weight'", warning);
        Assert.Contains("group size 16 does not divide the reduction length 9", warning);
        Assert.Equal([warning], r.Report!.Fallbacks);
        Assert.Contains("fallback 'features.0.weight'", r.Report.ToString());

        // A reduction of 144 at group 32: the largest even divisor in [16, 32] is 24.
        var g32 = Quantizer.Quantize(new ConvNet(), NoReload with { Overrides = [new("features.0", QuantType.Int8)] }, () => new ConvNet(),
            weights: int4 with { Granularity = new PerGroup(32) });
        Assert.Equal(new PerGroup(24), g32.Layers[1].Weights.Granularity);
        Assert.Equal(new PerGroup(32), g32.Layers[2].Weights.Granularity);

        var ex = Assert.Throws<RecipeException>(() => Quantizer.Quantize(new ConvNet(), NoReload with { StrictGroupSize = true }, () => new ConvNet(), weights: int4));
        Assert.Contains("features.0.weight", ex.Message);
        Assert.Contains("StrictGroupSize", ex.Message);
    }

    [Theory]
    [InlineData("int8", 0.27)]
    [InlineData("int4-g128", 0.15)]
    public void MemoryShrinks(string kind, double maxRatio)
    {
        using var scope = NewDisposeScope();
        // Realistic sizes: an MLP 784 -> 1024 -> 1024 -> 10 (~1.9M parameters).
        Func<Module> make = () => new Mlp(784, 1024, 10);
        var model = make();
        var config = kind == "int8" ? QuantizationRecipe.Int8WeightOnly() : QuantizationRecipe.Int4WeightOnly(128);
        // 784 = 128 * 6.125: group 128 does not divide it, so the first layer falls back to group 112 (784 = 7 * 112).
        config = config with { Validation = NoReload.Validation };
        var r = Quantizer.Quantize(model, config, make);
        if (kind != "int8") Assert.Equal(new PerGroup(112), r.Layers[0].Weights.Granularity);
        long floatBytes = ModelMemory.Bytes(model);
        long quantBytes = ModelMemory.Bytes(r.Model);
        Assert.Equal(floatBytes, r.Report!.OriginalBytes);
        Assert.Equal(quantBytes, r.Report.StoredBytes);
        // Independent count of the float model: 4 bytes per parameter.
        Assert.Equal(4L * (784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10), floatBytes);
        double ratio = (double)quantBytes / floatBytes;
        Assert.True(ratio <= maxRatio, $"{kind}: {ratio:P1} of float");
        Assert.Empty(r.Skipped);
    }

    [Fact]
    public void ReportIsAnObjectJsonAndATable()
    {
        using var scope = NewDisposeScope();
        var data = TestData.Batches(2, 16, [64]);
        var r = Quantizer.Quantize(new Mlp(), QuantizationRecipe.Int8Static() with { CalibrationSamples = 32 }, () => new Mlp(), data);
        var report = r.Report!;
        Assert.True(report.Passed, string.Join("; ", report.Problems));
        Assert.Equal(3, report.Layers.Count);
        Assert.All(report.Layers, l =>
        {
            Assert.True(l.WeightSqnrDb > 30, $"{l.Name} weight {l.WeightSqnrDb}");
            Assert.NotNull(l.OutputSqnrDb);
            Assert.True(l.OutputSqnrDb > 20, $"{l.Name} output {l.OutputSqnrDb}");
            Assert.True(l.RangeOk);
            Assert.StartsWith("uint8 affine scale=", l.Activations);
        });
        Assert.NotNull(report.ModelOutputSqnrDb);
        Assert.Equal(32, report.CalibrationSamples);
        // The JSON the CLI prints (SQNR to 4 decimals) reads back.
        var back = QuantizationReport.FromJson(report.ToJson().ToJsonString());
        Assert.Equal(report.Layers.Select(l => (l.Name, R(l.WeightSqnrDb), R(l.OutputSqnrDb), l.Spec, l.ModuleType, l.Activations, l.StoredBytes)),
            back.Layers.Select(l => (l.Name, l.WeightSqnrDb, l.OutputSqnrDb, l.Spec, l.ModuleType, l.Activations, l.StoredBytes)));
        Assert.Equal((report.StoredBytes, report.OriginalBytes, R(report.ModelOutputSqnrDb), report.ReloadCheck, report.Passed),
            (back.StoredBytes, back.OriginalBytes, back.ModelOutputSqnrDb, back.ReloadCheck, back.Passed));
        Assert.Contains("\"sqnr_db\"", report.ToJson().ToJsonString());
        string table = report.ToString();
        Assert.Contains("fc2", table);
        Assert.Contains("weight SQNR dB", table);
        Assert.Contains("% of float", table);

        static double? R(double? v) => v is { } d ? Math.Round(d, 4) : null;
    }

    [Fact]
    public void ValidationFailureModes()
    {
        using var scope = NewDisposeScope();
        var strict = QuantizationRecipe.ForWeights(new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerAxis(0))) with
        {
            Validation = new ValidationPolicy { SqnrThresholdsDb = new Dictionary<QuantType, double> { [QuantType.Int4] = 40 }, ReloadCheck = false },
        };
        var ex = Assert.Throws<QuantizationValidationException>(() => Quantizer.Quantize(new Mlp(), strict, () => new Mlp()));
        Assert.Contains("below the int4 threshold 40", ex.Message);
        Assert.IsAssignableFrom<QuantizationException>(ex); // one family for both quantizers' failures
        Assert.False(ex.Report.Passed);
        var warned = Quantizer.Quantize(new Mlp(), strict, () => new Mlp(), onFailure: ValidationFailureMode.Warn);
        Assert.Equal(3, warned.Warnings.Count);
        var ignored = Quantizer.Quantize(new Mlp(), strict with { Validation = strict.Validation with { OnFailure = ValidationFailureMode.Ignore } }, () => new Mlp());
        Assert.Empty(ignored.Warnings);
        Assert.False(ignored.Report!.Passed);
    }
}

public class QuantizerConfigTests
{
    [Fact]
    public void SpecsAreValidatedWithTheirOwnRules()
    {
        using var scope = NewDisposeScope();
        // prim's QuantSpec.Validate: reduce-range is for 8-bit types only.
        var ex = Assert.Throws<RecipeException>(() => Quantizer.Quantize(new Mlp(), new QuantizationRecipe(), () => new Mlp(),
            weights: new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(32), reduceRange: true)));
        Assert.StartsWith("the weight settings (\"qtype\", \"scheme\", \"granularity\", \"reduce_range\"; C# Type, Scheme, Granularity, ReduceRange): ReduceRange applies to 8-bit types only", ex.Message);
        // Per-channel along the input axis is a valid spec, but layers are quantized per output channel: fc1 stays float, saying why.
        var r = Quantizer.Quantize(new Mlp(), new QuantizationRecipe
        {
            Overrides = [new("fc1", Granularity: new PerAxis(1))],
        }, () => new Mlp());
        var fc1 = r.Skipped.Single(s => s.Name == "fc1");
        Assert.Contains("axis 0", fc1.Reason);
        Assert.Equal(SkipKind.SpecDoesNotFit, fc1.Kind);
        Assert.Contains(r.Warnings, w => w.StartsWith("fc1 (Linear) stays float: ", StringComparison.Ordinal));
        var ex2 = Assert.Throws<RecipeException>(() => Quantizer.Quantize(new Mlp(), new QuantizationRecipe
        {
            Overrides = [new("fc1", QuantType.Int4, ReduceRange: true)],
        }, () => new Mlp()));
        Assert.Contains("override 'fc1'", ex2.Message);
    }
}

public class QuantizerSelectionEdgeTests
{
    private sealed class TypedListNet : Module<Tensor, Tensor>
    {
        private readonly TorchSharp.Modules.ModuleList<TorchSharp.Modules.Linear> layers = new(Linear(4, 4));
        private readonly Module<Tensor, Tensor> head = Linear(4, 2);

        public TypedListNet() : base(nameof(TypedListNet)) => RegisterComponents();

        public override Tensor forward(Tensor x) => head.call(layers[0].call(x));
    }

    [Fact]
    public void TypedContainersKeepTheirModulesWithQuantizedWeights()
    {
        using var scope = NewDisposeScope();
        var r = Quantizer.Quantize(new TypedListNet(), new QuantizationRecipe(), () => new TypedListNet());
        Assert.Equal(["layers.0", "head"], r.Layers.Select(l => l.Name));
        Assert.IsType<TorchSharp.Modules.Linear>(ModuleTree.Walk(r.Model).Single(e => e.Name == "layers.0").Module);
        Assert.Equal(ScalarType.Int8, r.Model.state_dict()["layers.0.weight"].dtype);
    }

    [Fact]
    public void WeightOnlyWithDataUsesTheFirstBatchForTheReport()
    {
        using var scope = NewDisposeScope();
        var data = TestData.Batches(3, 8, [64]);
        var r = Quantizer.Quantize(new Mlp(), QuantizationRecipe.Int4WeightOnly(32), () => new Mlp(), data);
        Assert.Equal(8, r.CalibrationSamples);
        Assert.All(r.Layers, l => Assert.Null(l.Input));
        Assert.NotNull(r.Report!.ModelOutputSqnrDb);
        Assert.All(r.Report.Layers, l => Assert.NotNull(l.OutputSqnrDb));
        Assert.Equal(CheckStatus.Passed, r.Report.ReloadCheck);
        Assert.Contains("outputs", r.Report.ReloadDetail);
    }
}
