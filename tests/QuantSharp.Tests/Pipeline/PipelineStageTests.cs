using QuantSharp.Calibration;
using QuantSharp.Pipeline;
using QuantSharp.Tensors;
using QuantSharp.Tests.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Pipeline;

/// <summary>
/// The pipeline's stages (plan -> calibrate/observe -> quantize -> validate -> write) as a plug-in point for methods
/// such as GPTQ: second-moment statistics of a layer's input, and sequential quantization on the inputs of the layers
/// already quantized.
/// </summary>
public sealed class PipelineStageTests
{
    [Fact]
    public void SecondMomentIsTwoOverNTimesXTransposeX()
    {
        var g = new Generator(3);
        using var a = randn([2, 5, 8], generator: g);
        using var b = randn([7, 8], generator: g);
        using var stats = new SecondMomentStatistics(8);
        stats.Observe(a);
        stats.Observe(b);
        Assert.Equal(17, stats.Rows);
        using var h = stats.Hessian();
        using var x = cat([a.reshape(-1, 8), b]).to(ScalarType.Float64);
        using var expected = mm(x.t(), x).mul(2.0 / 17);
        Assert.Equal(ScalarType.Float64, h.dtype);
        Assert.Equal(new long[] { 8, 8 }, h.shape);
        Assert.True(allclose(h, expected, rtol: 1e-12, atol: 1e-12));
        // Symmetric positive semi-definite, as GPTQ's Cholesky step needs.
        Assert.True(h.equal(h.t()).all().item<bool>());
        Assert.True(linalg.eigvalsh(h).min().item<double>() > -1e-9);

        using var wrong = ones(3, 7);
        Assert.Contains("8 input features", Assert.Throws<ArgumentException>(() => stats.Observe(wrong)).Message);
        using var empty = new SecondMomentStatistics(4);
        Assert.Throws<InvalidOperationException>(() => empty.Hessian().Dispose());
    }

    /// <summary>Records the inputs it was given; quantizes to nearest.</summary>
    private sealed class RecordingStatistics : IInputStatistics
    {
        public List<Tensor> Inputs { get; } = [];
        public long Rows { get; private set; }
        public void Observe(Tensor input)
        {
            Inputs.Add(input.detach().clone().DetachFromDisposeScope());
            Rows += input.shape[0];
        }
        public void Dispose() { } // the test keeps the recorded inputs
    }

    private sealed class SequentialRecorder : IWeightQuantizer
    {
        private readonly RoundToNearest _rtn = new("minmax");
        public Dictionary<string, RecordingStatistics> Seen { get; } = [];
        public string Method => "recorder";
        public bool Sequential => true;
        public IInputStatistics? CreateStatistics(PlannedWeight weight, nn.Module layer) => Seen[weight.Name] = new RecordingStatistics();
        public QuantizedTensor Quantize(PlannedWeight weight, Tensor values, IInputStatistics? statistics)
        {
            Assert.Same(Seen[weight.Name], statistics);
            return _rtn.Quantize(weight, values, statistics);
        }
    }

    private static nn.Module<Tensor, Tensor> Mlp() => nn.Sequential(
        ("fc1", nn.Linear(16, 32)), ("relu", nn.ReLU()), ("fc2", nn.Linear(32, 8)));

    [Fact]
    public void ASequentialMethodSeesTheInputsOfTheLayersAlreadyQuantized()
    {
        manual_seed(11);
        using var model = Mlp();
        using var x = randn(64, 16, generator: new Generator(5));
        var recorder = new SequentialRecorder();
        QuantizationPipeline.WeightQuantizerForTests = _ => recorder;
        try
        {
            var recipe = QuantizationRecipe.Int4WeightOnly(groupSize: 16) with { MinElements = 0 };
            var result = Quantizer.Quantize(model, recipe, factory: Mlp, calibrationData: [x]);
            using var q = result.Model;
            Assert.Equal(["fc1.weight", "fc2.weight"], recorder.Seen.Keys.Order(StringComparer.Ordinal));
            Assert.All(result.Layers, l => Assert.Contains(l.Name, new[] { "fc1", "fc2" }));

            // fc1 saw the model input; fc2 saw relu(quantized fc1(x)), not the float model's relu(fc1(x)).
            var fc1In = Assert.Single(recorder.Seen["fc1.weight"].Inputs);
            Assert.True(fc1In.equal(x).all().item<bool>());
            var fc2In = Assert.Single(recorder.Seen["fc2.weight"].Inputs);
            var quantizedFc1 = q.named_children().Single(c => c.name == "fc1").module;
            Assert.IsAssignableFrom<QuantSharp.Modules.QuantizedModule>(quantizedFc1);
            using (no_grad())
            {
                using var expected = nn.functional.relu(((nn.Module<Tensor, Tensor>)quantizedFc1).call(x));
                using var floatPath = nn.functional.relu(((nn.Module<Tensor, Tensor>)model.named_children().Single(c => c.name == "fc1").module).call(x));
                Assert.True(fc2In.equal(expected).all().item<bool>());
                Assert.False(fc2In.equal(floatPath).all().item<bool>());
            }
            // The method is recorded per weight, as the file's per-layer "observer".
            Assert.All(QuantSharp.Modules.ModuleQuantization.WeightsOf(quantizedFc1), w => Assert.Equal("recorder", w.Weight.Observer));
            foreach (var s in recorder.Seen.Values) foreach (var t in s.Inputs) t.Dispose();
        }
        finally
        {
            QuantizationPipeline.WeightQuantizerForTests = null;
        }
    }

    [Fact]
    public void ASequentialMethodNeedsDataAndAModel()
    {
        using var model = Mlp();
        QuantizationPipeline.WeightQuantizerForTests = _ => new SequentialRecorder();
        try
        {
            var ex = Assert.Throws<ArgumentException>(() => Quantizer.Quantize(model, QuantizationRecipe.Int8WeightOnly() with { MinElements = 0 }, factory: Mlp));
            Assert.Contains("'recorder' needs calibration data", ex.Message);
            using var dir = new TempDir();
            string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
            var cex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(input, dir["out.safetensors"]));
            Assert.Contains("only the model gives", cex.Message);
            Assert.Equal(["in.safetensors"], Directory.GetFiles(dir.Path).Select(Path.GetFileName));
        }
        finally
        {
            QuantizationPipeline.WeightQuantizerForTests = null;
        }
    }
}

/// <summary>Issue 7 item 5: one report interface over both quantizers, filled by the same stages.</summary>
public sealed class OneReportTests
{
    private static nn.Module<Tensor, Tensor> Net() => nn.Sequential(
        ("fc1", nn.Linear(48, 64)), ("relu", nn.ReLU()), ("fc2", nn.Linear(64, 10)));

    [Fact]
    public void BothQuantizersAndTheValidatorReportThroughOneReportType()
    {
        manual_seed(21);
        using var model = Net();
        using var dir = new TempDir();
        var recipe = QuantizationRecipe.Int4WeightOnly(groupSize: 32) with { MinElements = 0 };

        var result = Quantizer.Quantize(model, recipe, factory: Net);
        using var q = result.Model;
        QuantSharp.Validation.QuantizationReport fromModel = result.Report!;

        SafetensorsWriterSave(dir["float.safetensors"], model);
        QuantSharp.Validation.QuantizationReport fromCheckpoint = CheckpointQuantizer.Quantize(dir["float.safetensors"], dir["q.safetensors"], recipe);

        // 48 columns: group 32 does not divide them; both paths fall back to group 24 and say so in the same words.
        var expected = Assert.Single(fromModel.Warnings);
        Assert.Contains("'fc1.weight'", expected);
        Assert.Contains("group:24", expected);
        Assert.Equal(fromModel.Warnings, fromCheckpoint.Warnings);
        Assert.True(fromModel.Passed, string.Join("\n", fromModel.Problems));
        Assert.True(fromCheckpoint.Passed, string.Join("\n", fromCheckpoint.Problems));
        Assert.Empty(fromModel.Problems);
        // Sizes are counted by each path (model memory vs tensor data) but both see int4 shrink the float weights.
        Assert.InRange(fromModel.StoredBytes, 1, fromModel.OriginalBytes / 3);
        Assert.InRange(fromCheckpoint.StoredBytes, 1, fromCheckpoint.OriginalBytes / 3);

        var validation = QuantSharp.Validation.CheckpointValidator.Compare(dir["float.safetensors"], dir["q.safetensors"], recipe.Validation);
        QuantSharp.Validation.QuantizationReport compared = validation;
        Assert.True(compared.Passed, string.Join("\n", compared.Problems));
        Assert.Equal(fromCheckpoint.StoredBytes, compared.StoredBytes);
        Assert.Equal(fromCheckpoint.OriginalBytes, compared.OriginalBytes);
    }

    private static void SafetensorsWriterSave(string path, nn.Module model)
        => QuantSharp.Serialization.SafetensorsWriter.Save(path, model.state_dict().Select(kv => (kv.Key, kv.Value)).ToList());
}

/// <summary>Quantized modules carry their TorchSharp counterpart's public names, with the same values.</summary>
public sealed class QuantizedModuleNameTests
{
    private sealed class Net : nn.Module<Tensor, Tensor>
    {
        public nn.Module<Tensor, Tensor> conv = nn.Conv2d(3, 8, 3, stride: 2, padding: 1);
        public nn.Module<Tensor, Tensor> fc = nn.Linear(32, 16);
        public Net() : base("Net") => RegisterComponents();
        public override Tensor forward(Tensor x) => fc.call(conv.call(x).flatten(1)[.., ..32]);
    }

    private static object? Value(object o, string name) => o.GetType().GetProperty(name)!.GetValue(o);

    [Theory]
    [InlineData("conv", new[] { "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias" })]
    [InlineData("fc", new[] { "in_features", "out_features", "bias" })]
    public void SameNamesAndValuesAsTheFloatModule(string layer, string[] names)
    {
        using var model = new Net();
        var result = Quantizer.Quantize(model, QuantizationRecipe.Int8WeightOnly() with { MinElements = 0 }, factory: () => new Net());
        using var q = result.Model;
        var floatModule = model.named_children().Single(c => c.name == layer).module;
        var quantized = q.named_children().Single(c => c.name == layer).module;
        Assert.IsAssignableFrom<QuantSharp.Modules.QuantizedModule>(quantized);
        foreach (string name in names)
        {
            Assert.True(floatModule.GetType().GetProperty(name) is not null, $"{floatModule.GetType().Name} has no '{name}'");
            Assert.True(quantized.GetType().GetProperty(name) is not null, $"{quantized.GetType().Name} has no '{name}' like {floatModule.GetType().Name}");
            object? a = Value(floatModule, name), b = Value(quantized, name);
            if (a is Tensor ta) Assert.True(ta.equal((Tensor)b!).all().item<bool>(), name);
            else if (a is System.Collections.IEnumerable ea && a is not string)
                Assert.Equal(ea.Cast<object>().Select(System.Convert.ToInt64), ((System.Collections.IEnumerable)b!).Cast<object>().Select(System.Convert.ToInt64));
            else Assert.Equal(System.Convert.ToInt64(a), System.Convert.ToInt64(b));
        }
    }
}
