using QuantSharp.Calibration;
using QuantSharp.Cli.Demo;
using QuantSharp.Observers;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Calibration;

/// <summary>The calibration tools on the bundled MNIST CNN: observer comparison, sensitivity, mixed precision.</summary>
public class CalibrationToolsTests
{
    private static readonly Lazy<MnistSet> s_images = new(() => DemoRunner.LoadBundled());

    /// <summary>Batches of 64 of the first <paramref name="count"/> bundled images.</summary>
    internal static List<CalibrationBatch> Batches(int count)
    {
        var images = s_images.Value.Images;
        var list = new List<CalibrationBatch>();
        for (int start = 0; start < count; start += 64)
            list.Add(CalibrationBatch.Of(images.narrow(0, start, Math.Min(64, count - start)).DetachFromDisposeScope()));
        return list;
    }

    private static readonly QuantSpec[] Specs =
    [
        new(QuantType.Float16, QuantScheme.Symmetric, Granularity.Tensor),
        new(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0)),
        new(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(32)),
    ];

    [Fact]
    public void Observer_comparison_covers_every_layer_and_observer_with_consistent_numbers()
    {
        using var model = MnistNet.Load(DemoRunner.BundledModelPath);
        var c = ObserverComparison.Compare(model, Batches(128));
        Assert.Equal(128, c.Samples);
        Assert.Equal(["conv1", "conv2", "fc1", "fc2"], c.Layers.Select(l => l.Layer));
        // conv1 sees the normalised images: 128 x 784 values, all counted by the histogram.
        Assert.Equal(128L * 784, c.Layers[0].HistogramCounts.Sum());
        Assert.Equal(c.Layers[0].HistogramCounts.Count + 1, c.Layers[0].HistogramEdges.Count);
        var range = QuantRange.For(QuantType.UInt8);
        foreach (var layer in c.Layers)
        {
            Assert.Equal(ObserverCandidate.Defaults.Select(o => o.Label), layer.Choices.Select(o => o.Observer));
            var minmax = layer.Choices[0];
            // Min/max covers the data: nothing is clipped, and its range spans [min, max] (to one step).
            Assert.Equal(0, minmax.ClippedPercent);
            Assert.True(minmax.Low <= layer.Min + minmax.Scale && minmax.High >= layer.Max - minmax.Scale, $"{layer.Layer}: {minmax}");
            foreach (var o in layer.Choices)
            {
                Assert.Equal(o.Low, (range.QMin - o.ZeroPoint) * o.Scale, 5);
                Assert.InRange(o.OutputSqnrDb, 15, 80);
                Assert.True(o.KlDivergence >= 0 && double.IsFinite(o.KlDivergence), $"{layer.Layer} {o.Observer}: KL {o.KlDivergence}");
                Assert.InRange(o.ClippedPercent, 0, 100);
            }
            Assert.Equal(layer.Choices.Max(o => o.OutputSqnrDb), layer.Best.OutputSqnrDb);
            // After ReLU and max-pool the inputs of conv2, fc1 and fc2 are non-negative.
            if (layer.Layer != "conv1") Assert.Equal(0f, layer.Min);
        }
        var chosen = c.ChooseObservers();
        Assert.Equal(c.Layers.Select(l => l.Layer), chosen.Keys);
        Assert.All(c.Layers, l => Assert.Equal(l.Best.Observer, chosen[l.Layer].Label));
    }

    [Fact]
    public void Observer_comparison_refuses_unknown_layers_and_duplicate_labels()
    {
        using var model = MnistNet.Load(DemoRunner.BundledModelPath);
        var e = Assert.Throws<ArgumentException>(() => ObserverComparison.Compare(model, Batches(64), layers: ["conv3"]));
        Assert.Contains("conv1, conv2, fc1, fc2", e.Message);
        e = Assert.Throws<ArgumentException>(() => ObserverComparison.Compare(model, Batches(64), observers: [new("a", "minmax"), new("a", "percentile")]));
        Assert.Contains("'a'", e.Message);
    }

    [Fact]
    public void Sensitivity_is_reproducible_and_orders_the_precisions()
    {
        using var model = MnistNet.Load(DemoRunner.BundledModelPath);
        var data = Batches(192);
        var a = SensitivityReport.Measure(model, () => new MnistNet(), data, Specs);
        var b = SensitivityReport.Measure(model, () => new MnistNet(), data, Specs);
        Assert.Equal(a.Ranking().Select(l => l.Layer), b.Ranking().Select(l => l.Layer));
        Assert.Equal(a.Layers.SelectMany(l => l.Measurements.Select(m => m.OutputSqnrDb)), b.Layers.SelectMany(l => l.Measurements.Select(m => m.OutputSqnrDb)));
        Assert.Equal(["conv1", "conv2", "fc1", "fc2"], a.Layers.Select(l => l.Layer));
        foreach (var l in a.Layers)
        {
            var (fp16, int8, int4) = (l.Measurements[0], l.Measurements[1], l.Measurements[2]);
            Assert.True(fp16.OutputSqnrDb > int8.OutputSqnrDb, $"{l.Layer}: fp16 {fp16.OutputSqnrDb} vs int8 {int8.OutputSqnrDb}");
            Assert.True(fp16.Bytes > int8.Bytes && int8.Bytes >= int4.Bytes, $"{l.Layer}: bytes {fp16.Bytes} {int8.Bytes} {int4.Bytes}");
        }
        // conv1 has 9 weights per filter (odd): int4 falls back to int8 per-channel, with int8's result.
        var conv1 = a.Layers[0];
        Assert.Equal(QuantType.Int8, conv1.Measurements[2].Applied.Type);
        Assert.Equal(conv1.Measurements[1].OutputSqnrDb, conv1.Measurements[2].OutputSqnrDb);
        // The other layers lose more at int4 than at int8; the uniform variants are ordered the same way.
        Assert.All(a.Layers.Skip(1), l => Assert.True(l.Measurements[1].OutputSqnrDb > l.Measurements[2].OutputSqnrDb + 6));
        Assert.True(a.Uniform[0].OutputSqnrDb > a.Uniform[1].OutputSqnrDb && a.Uniform[1].OutputSqnrDb > a.Uniform[2].OutputSqnrDb);
        Assert.True(a.Uniform[0].Bytes > a.Uniform[1].Bytes && a.Uniform[1].Bytes > a.Uniform[2].Bytes);
        Assert.Equal(56_714L * 4, a.Layers.Sum(l => l.FloatBytes));
        Assert.Equal(16 * 9 + 32 * 16 * 9 + 800 * 64 + 640, a.Layers.Sum(l => l.WeightElements));
    }

    [Fact]
    public void Mixed_precision_within_a_budget_between_int4_and_int8_is_at_least_as_accurate_as_int4()
    {
        using var model = MnistNet.Load(DemoRunner.BundledModelPath);
        var images = s_images.Value;
        var report = SensitivityReport.Measure(model, () => new MnistNet(), Batches(256), Specs, m => images.Accuracy(m));
        long int8 = report.Uniform[1].Bytes, int4 = report.Uniform[2].Bytes;
        long budget = (int8 + int4) / 2;
        double Evaluate(QuantizationRecipe r)
        {
            var q = Quantizer.Quantize(model, r, factory: () => new MnistNet());
            using var m = q.Model;
            return images.Accuracy(m);
        }
        // Without an evaluation the plan is the end of the upgrade path: the most predicted SQNR the budget buys.
        var byNoise = MixedPrecisionPlan.Plan(report, MixedPrecisionBudget.Bytes(budget));
        Assert.True(byNoise.Bytes <= budget && byNoise.Bytes > int4, $"plan {byNoise.Bytes} bytes, budget {budget}, int4 {int4}");
        Assert.True(byNoise.PredictedOutputSqnrDb > report.Uniform[2].OutputSqnrDb + 3, $"{byNoise.PredictedOutputSqnrDb} dB");
        Assert.Null(byNoise.Metric);
        // With the accuracy as evaluation, the best plan of the path on that data.
        var plan = MixedPrecisionPlan.Plan(report, MixedPrecisionBudget.Bytes(budget), Evaluate);
        Assert.True(plan.Bytes <= budget, $"plan {plan.Bytes} bytes > budget {budget}");
        Assert.True(plan.CandidatesEvaluated >= 2);
        Assert.Equal(4, plan.Recipe.Overrides.Count);

        // The recipe survives JSON and, quantized, measures what the plan says.
        var recipe = QuantizationRecipe.FromJson(plan.Recipe.ToJson());
        Assert.Equal(plan.Recipe.ToJson(), recipe.ToJson());
        var result = Quantizer.Quantize(model, recipe, factory: () => new MnistNet());
        using var quantized = result.Model;
        Assert.Equal(plan.Bytes, result.Layers.Sum(l => l.QuantizedBytes));
        Assert.Equal(plan.Layers.Select(l => l.Spec), result.Layers.Select(l => l.Weights));
        double accuracy = images.Accuracy(quantized);
        Assert.Equal(plan.Metric, accuracy);
        double int4Accuracy = report.Uniform[2].Metric!.Value;
        Assert.True(accuracy >= int4Accuracy, $"plan {accuracy} < uniform int4 {int4Accuracy}");

        // Bits per weight and output SQNR budgets.
        var byBits = MixedPrecisionPlan.Plan(report, MixedPrecisionBudget.BitsPerWeight(6));
        Assert.True(byBits.BitsPerWeight <= 6, $"{byBits.BitsPerWeight} bits per weight");
        var bySqnr = MixedPrecisionPlan.Plan(report, MixedPrecisionBudget.OutputSqnr(35));
        Assert.True(bySqnr.PredictedOutputSqnrDb >= 35, $"predicted {bySqnr.PredictedOutputSqnrDb} dB");
        var byDrop = MixedPrecisionPlan.Plan(report, MixedPrecisionBudget.MetricDrop(0.002), Evaluate);
        Assert.True(byDrop.Metric >= report.FloatMetric - 0.002, $"{byDrop.Metric} vs float {report.FloatMetric}");
        var e = Assert.Throws<ArgumentException>(() => MixedPrecisionPlan.Plan(report, MixedPrecisionBudget.Bytes(int4 / 2)));
        Assert.Contains($"{int4} bytes", e.Message);
        Assert.Throws<ArgumentException>(() => MixedPrecisionPlan.Plan(report, MixedPrecisionBudget.MetricDrop(0.01)));
    }

    [Fact]
    public void Histogram_search_window_keeps_the_threshold_in_the_upper_half()
    {
        // Gaussian values plus a few far outliers: the full KL search clips them with a narrow range; the 50-100%
        // window may not go below half of max|x|.
        var rng = new Random(7);
        var values = new float[20_000];
        for (int i = 0; i < values.Length; i++) values[i] = (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        values[0] = 40f;
        values[1] = -35f;
        using var x = torch.tensor(values);
        ObserverResult Run(double start)
        {
            var o = ObserverFactory.Create("histogram", new ObserverOptions { Scheme = QuantScheme.Symmetric, EntropySearchStart = start });
            o.Observe(x);
            return o.ComputeQParams();
        }
        var full = Run(0);
        var window = Run(0.5);
        float t = 40f;
        Assert.True(full.Threshold![1] < 0.25f * t, $"full search threshold {full.Threshold[1]}");
        Assert.True(window.Threshold![1] >= 0.5f * t - 2 * t / 2048 && window.Threshold[0] <= -0.5f * t + 2 * t / 2048,
            $"window threshold [{window.Threshold[0]}, {window.Threshold[1]}]");
        Assert.True(window.Scale[0] > full.Scale[0]);
        // The window's threshold is the KL minimum among the windows it may try: it is never below the full search's.
        // With data whose best threshold is already in the upper half, both agree.
        using var uniform = torch.linspace(-1, 1, 4096);
        var a = ObserverFactory.Create("histogram", new ObserverOptions());
        var b = ObserverFactory.Create("histogram", new ObserverOptions { EntropySearchStart = 0.5 });
        a.Observe(uniform);
        b.Observe(uniform);
        Assert.Equal(a.ComputeQParams().Threshold, b.ComputeQParams().Threshold);
        Assert.Throws<ArgumentException>(() => ObserverFactory.Create("histogram", new ObserverOptions { EntropySearchStart = 1 }));
    }

    [Fact]
    public void Recipe_carries_the_search_window_to_activation_calibration()
    {
        var recipe = QuantizationRecipe.Int8Static() with { ActivationObserver = "histogram", EntropySearchStart = 0.5, CalibrationSamples = 128 };
        var json = recipe.ToJson();
        Assert.Contains("\"entropy_search_start\":0.5", json);
        Assert.Equal(0.5, QuantizationRecipe.FromJson(json).EntropySearchStart);
        var bad = Assert.Throws<RecipeException>(() => QuantizationRecipe.FromJson("{\"entropy_search_start\": 1.5}"));
        Assert.Contains("[0, 1)", bad.Message);

        // An MLP fed Gaussian inputs with a rare far outlier: the full KL search clips it with a narrow input range
        // of fc1; the 50-100% window keeps at least half of it.
        var inputs = QuantSharp.Tests.Modules.TestData.Batches(4, 32, [64]);
        inputs[0][0, 0] = 60f;
        var data = inputs.Select(CalibrationBatch.Of).ToList();
        using var model = new QuantSharp.Tests.Modules.Mlp();
        var full = Quantizer.Quantize(model, recipe with { EntropySearchStart = 0 }, data, factory: () => new QuantSharp.Tests.Modules.Mlp());
        var window = Quantizer.Quantize(model, recipe, data, factory: () => new QuantSharp.Tests.Modules.Mlp());
        using var fm = full.Model;
        using var wm = window.Model;
        // The search window never chooses a narrower range than the full search; for fc1 it is at least half of 60.
        var pairs = full.Layers.Zip(window.Layers, (f, w) => (f.Name, Full: f.Input!.Scale, Window: w.Input!.Scale)).ToList();
        Assert.All(pairs, p => Assert.True(p.Window >= p.Full, $"{p.Name}: {p.Window} < {p.Full}"));
        Assert.True(pairs[0].Full * 255 < 15f, $"full search: fc1 range {pairs[0].Full * 255}");
        Assert.True(pairs[0].Window * 255 >= 30f - 0.1f, $"window: fc1 range {pairs[0].Window * 255}");
    }
}
