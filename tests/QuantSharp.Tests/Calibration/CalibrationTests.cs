using QuantSharp.Calibration;
using QuantSharp.Modules;
using QuantSharp.Primitives;
using QuantSharp.Tests.Modules;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace QuantSharp.Tests.Calibration;

public class CalibrationTests
{
    /// <summary>Yields the batches and counts how many were pulled.</summary>
    private sealed class CountingSource(IReadOnlyList<Tensor> batches) : IEnumerable<Tensor>
    {
        public int Pulled { get; private set; }

        public IEnumerator<Tensor> GetEnumerator()
        {
            foreach (var b in batches) { Pulled++; yield return b; }
        }

        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
    }

    private sealed class Recorder : IProgress<CalibrationProgress>
    {
        public List<CalibrationProgress> Reports { get; } = [];
        public void Report(CalibrationProgress value) => Reports.Add(value);
    }

    [Fact]
    public void StopsAfterTheDefault150SamplesAndReportsProgress()
    {
        using var scope = NewDisposeScope();
        // 32 samples per batch: 4 batches give 128 < 150, the 5th reaches 160 and calibration stops.
        var source = new CountingSource(TestData.Batches(10, 32, [64]));
        var progress = new Recorder();
        var r = Quantizer.Quantize(new Mlp(), QuantizationRecipe.Int8Static(), () => new Mlp(), source, progress: progress);
        Assert.Equal(5, source.Pulled);
        Assert.Equal(160, r.CalibrationSamples);
        Assert.Equal(new long[] { 32, 64, 96, 128, 160 }, progress.Reports.Select(p => p.Samples));
        // The target is 150 until the last whole batch passes it; the last report then reads 160/160, never 160/150.
        Assert.Equal(new long[] { 150, 150, 150, 150, 160 }, progress.Reports.Select(p => p.TargetSamples));
        Assert.Equal(5, progress.Reports[^1].Batches);
    }

    [Fact]
    public void WeightOnlyProgressNeverCountsPastItsTarget()
    {
        using var scope = NewDisposeScope();
        // Weight-only runs one batch (for the validation report) against a target of 1 sample: it used to report "8/1".
        var progress = new Recorder();
        Quantizer.Quantize(new Mlp(), QuantizationRecipe.Int8WeightOnly(), () => new Mlp(), TestData.Batches(3, 8, [64]), progress: progress);
        var last = Assert.Single(progress.Reports);
        Assert.Equal((8L, 8L, 1), (last.Samples, last.TargetSamples, last.Batches));
        Assert.Equal("calibrating [##########] 8/8 samples", QuantSharp.Cli.CalibrationProgressBar.Render(last, 10));
    }

    [Fact]
    public void ObserversSeeEachLayersInputOncePerBatchAndTheFirstOutputsAreKept()
    {
        using var scope = NewDisposeScope();
        var model = new Mlp();
        model.eval();
        var batches = TestData.Batches(3, 10, [64]);
        var layers = ModuleTree.Walk(model).Where(e => e.Module is TorchSharp.Modules.Linear).ToList();
        var created = new List<string>();
        var make = RangeObservers.Factory("minmax", QuantizationRecipe.DefaultActivations);
        using var calib = new Calibrator(model, layers, (_, name) =>
        {
            created.Add(name);
            return make(name);
        });
        calib.Run(batches.Select(CalibrationBatch.Of), 25, progress: null);

        // Only inputs are observed (what static activation quantization stores); outputs are not.
        Assert.Equal(["input of layer 'fc1'", "input of layer 'fc2'", "input of layer 'fc3'"], created);
        Assert.Equal(30, calib.Samples);
        Assert.Equal(3, calib.Batches);
        // Independent ranges: run the layers by hand on the concatenated data.
        var x = torch.cat(batches, 0);
        var fc1 = (TorchSharp.Modules.Linear)layers[0].Module;
        var fc2 = (TorchSharp.Modules.Linear)layers[1].Module;
        var fc3 = (TorchSharp.Modules.Linear)layers[2].Module;
        Tensor h1, h2, h3;
        using (no_grad())
        {
            h1 = fc1.forward(x);
            h2 = fc2.forward(h1.relu());
            h3 = fc3.forward(h2.relu());
        }
        var expected = new[] { (x, h1), (h1.relu(), h2), (h2.relu(), h3) };
        for (int i = 0; i < 3; i++)
        {
            var obs = calib.Observers[layers[i].Name];
            Assert.Equal(3, obs.Calls);
            Assert.Equal(3, obs.Input!.Calls);
            var (inp, outp) = expected[i];
            AssertRange(inp, obs.Input.Range!.Value);
            // The first batch's layer outputs are kept for validation (its per-layer output SQNR): the first 10 rows.
            var first = calib.FirstOutputs[layers[i].Name];
            Assert.Equal(new long[] { 10, outp.shape[1] }, first.shape);
            Assert.True(torch.allclose(outp.narrow(0, 0, 10), first, rtol: 1e-5, atol: 1e-6));
        }

        // Without validation the outputs are not kept (nothing would read them).
        using var unkept = new Calibrator(model, layers, (_, name) => make(name));
        unkept.Run(batches.Select(CalibrationBatch.Of), 25, progress: null, keepFirstOutputs: false);
        Assert.Empty(unkept.FirstOutputs);
        Assert.Equal(3, unkept.Observers["fc3"].Input!.Calls);
    }

    private static void AssertRange(Tensor t, (float Min, float Max) range)
    {
        // Batched and one-shot matmuls may differ in the last bits; the observed extremes must agree closely.
        Assert.Equal(t.min().item<float>(), range.Min, 4);
        Assert.Equal(t.max().item<float>(), range.Max, 4);
    }

    [Fact]
    public void CalibratedInputQParamsAreStoredAsBuffers()
    {
        using var scope = NewDisposeScope();
        var model = new Mlp();
        var batches = TestData.Batches(2, 8, [64]);
        var r = Quantizer.Quantize(model, QuantizationRecipe.Int8Static() with { CalibrationSamples = 16 }, () => new Mlp(), batches);
        var x = torch.cat(batches, 0);
        // The first layer's input is the data itself: PyTorch's rule on its min/max gives the qparams.
        var (scale, zp) = QParams.Choose(x.min().item<float>(), x.max().item<float>(), QuantRange.For(QuantType.UInt8), QuantScheme.Affine);
        var sd = r.Model.state_dict();
        Assert.Equal(scale, sd["fc1.input_scale"].item<float>());
        Assert.Equal(zp, sd["fc1.input_zero_point"].item<int>());
        Assert.Equal(ScalarType.Int32, sd["fc2.input_zero_point"].dtype);
        Assert.Equal(new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, scale, zp), r.Layers[0].Input);
    }

    [Fact]
    public void StaticW8A8ModelStaysCloseToFloat()
    {
        using var scope = NewDisposeScope();
        var model = new ConvNet();
        model.eval();
        var data = TestData.Batches(5, 32, [1, 12, 12]);
        var r = Quantizer.Quantize(model, QuantizationRecipe.Int8Static(), () => new ConvNet(), data);
        var x = TestData.Batches(1, 16, [1, 12, 12], seed: 99)[0];
        double db = QuantSharp.Validation.Metrics.Sqnr(model.call(x), ((Module<Tensor, Tensor>)r.Model).call(x));
        Assert.True(db > 20, $"W8A8 model SQNR {db:F1} dB");
    }

    [Fact]
    public void EmptyDataSourceIsAClearError()
    {
        using var scope = NewDisposeScope();
        var ex = Assert.Throws<ArgumentException>(() => Quantizer.Quantize(new Mlp(), QuantizationRecipe.Int8Static(), () => new Mlp(), Array.Empty<Tensor>()));
        Assert.Contains("yielded no tensors", ex.Message);
    }

    [Fact]
    public void WrongShapeNamesTheLayerAndTheShapes()
    {
        using var scope = NewDisposeScope();
        var data = TestData.Batches(2, 4, [63]); // the model expects 64 features
        var ex = Assert.Throws<ModelQuantizationException>(() => Quantizer.Quantize(new Mlp(), QuantizationRecipe.Int8Static(), () => new Mlp(), data));
        Assert.Contains("layer 'fc1'", ex.Message);
        Assert.Contains("expects last dimension 64", ex.Message);
        Assert.Contains("[4, 63]", ex.Message);

        var convData = TestData.Batches(1, 2, [3, 12, 12]); // 3 channels instead of 1
        var ex2 = Assert.Throws<ModelQuantizationException>(() => Quantizer.Quantize(new ConvNet(), QuantizationRecipe.Int8Static(), () => new ConvNet(), convData));
        Assert.Contains("layer 'features.0'", ex2.Message);
        Assert.Contains("1 input channels", ex2.Message);
    }

    [Fact]
    public void PairsAreAcceptedAndLayersNeverCalledAreReported()
    {
        using var scope = NewDisposeScope();
        var pairs = TestData.Batches(2, 8, [64]).Select(x => (x, torch.zeros(8, ScalarType.Int64))).ToList();
        var r = Quantizer.Quantize(new Mlp(), QuantizationRecipe.Int8Static() with { CalibrationSamples = 16 }, () => new Mlp(), CalibrationData.FromPairs(pairs));
        Assert.Equal(16, r.CalibrationSamples);

        var ex = Assert.Throws<ModelQuantizationException>(() => Quantizer.Quantize(new DirectForwardNet(), QuantizationRecipe.Int8Static(),
            () => new DirectForwardNet(), TestData.Batches(1, 2, [8])));
        Assert.Contains("'fc'", ex.Message);
        Assert.Contains("child.call(x)", ex.Message);
    }

    [Fact]
    public void EmbeddingInputIsNotObservedButItsOutputIs()
    {
        using var scope = NewDisposeScope();
        var data = Enumerable.Range(0, 3).Select(i => torch.randint(0, 100, [4, 5], dtype: ScalarType.Int64)).ToList();
        var model = new EmbedNet();
        var r = Quantizer.Quantize(model, QuantizationRecipe.Int8Static() with { CalibrationSamples = 12 }, () => new EmbedNet(), data);
        Assert.Null(r.Layers.Single(l => l.Name == "embed").Input);
        Assert.NotNull(r.Layers.Single(l => l.Name == "proj").Input);
        Assert.IsType<QuantizedEmbedding>(ModuleTree.Walk(r.Model).Single(e => e.Name == "embed").Module);
    }

    [Theory]
    [InlineData("minmax")]
    [InlineData("moving-average")]
    [InlineData("histogram")]
    [InlineData("percentile")]
    public void EveryObserverOfTheFactoryCanCalibrate(string observer)
    {
        using var scope = NewDisposeScope();
        var data = TestData.Batches(4, 16, [64]);
        var r = Quantizer.Quantize(new Mlp(), QuantizationRecipe.Int8Static() with { ActivationObserver = observer, CalibrationSamples = 64 }, () => new Mlp(), data);
        Assert.True(r.Report!.Passed);
        Assert.All(r.Layers, l => Assert.True(l.Input!.Scale > 0 && float.IsFinite(l.Input.Scale)));
        Assert.True(r.Report.ModelOutputSqnrDb > 15, $"{observer}: {r.Report.ModelOutputSqnrDb}");
    }

    [Fact]
    public void UnknownObserverIsRejectedBeforeAnyWork()
    {
        var ex = Assert.Throws<RecipeException>(() => Quantizer.Quantize(new Mlp(), QuantizationRecipe.Int8Static() with { ActivationObserver = "kl" }, () => new Mlp(), TestData.Batches(1, 2, [64])));
        Assert.Contains("minmax, moving-average, histogram, percentile", ex.Message);
    }
}
