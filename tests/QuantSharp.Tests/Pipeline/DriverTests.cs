using System.Diagnostics;
using QuantSharp.Pipeline;
using QuantSharp.Tests.Checkpoints;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Pipeline;

/// <summary>
/// Issue 7 item 5, "one driver": <see cref="QuantizationDriver"/> runs every source into every sink with one validate
/// stage, one report and one failure policy. A test-only source and sink drive it directly; both quantizers give the
/// same gate decision, measure and threshold for the same weights.
/// </summary>
public sealed class DriverTests
{
    private static readonly QuantSpec Int4G32 = new(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(32));

    private static ValidationPolicy Policy(ValidationFailureMode mode) => new()
    {
        OnFailure = mode, SqnrThresholdsDb = new Dictionary<QuantType, double> { [QuantType.Int4] = 45 },
    };

    [Fact]
    public void ATestSourceAndSinkGetTheOneGateReportAndPolicy()
    {
        var g = new Generator(5);
        using var w = randn([16, 64], generator: g);
        var log = new List<string>();
        var source = new ListSource(log, RowKind.Tensor,
            ("a", w, null),        // int4 group-32 on Gaussian weights: about 20 dB, below the 45 dB threshold
            ("b", w, 50.0),        // the same weights judged by a method's calibration output SQNR instead: passes
            ("copied", null, null));
        var sink = new LogSink(log);

        var ex = Assert.Throws<ModelQuantizationException>(() => QuantizationDriver.Run(source, sink, Policy(ValidationFailureMode.Error), Stopwatch.StartNew()));
        Assert.Equal("refused", ex.Message);
        // Items are prepared one at a time, after the sink took the previous one (what GPTQ's layer-by-layer order needs);
        // parts are validated before the sink writes them; the result is dropped under Error.
        Assert.Equal(["prepare a", "begin a", "write a", "end a", "prepare b", "begin b", "write b", "end b", "prepare copied", "copy copied",
            "finish 3 rows", "commit False", "refusal"], log);

        var report = sink.Refused!;
        var a = report.Layers[0];
        double expected = DirectSqnrDb(w);
        Assert.Equal(expected, a.WeightSqnrDb!.Value, 9);   // accumulated in float64 over the parts
        Assert.InRange(expected, 15, 25);
        Assert.Equal(45, a.ThresholdDb);
        Assert.Equal(Int4G32, a.Spec);
        Assert.True(a.RangeOk);
        Assert.Equal([$"'a': weight SQNR {F2(expected)} dB is below the int4 threshold 45 dB."], a.Problems);
        var b = report.Layers[1];
        Assert.Equal(50, b.CalibrationOutputSqnrDb);
        Assert.Equal(a.WeightSqnrDb, b.WeightSqnrDb);
        Assert.Empty(b.Problems);
        Assert.False(report.Layers[2].Quantized);
        Assert.Equal(a.Problems, report.Problems);
        Assert.Equal(7, report.StoredBytes);

        // Warn keeps the result and turns the problems into warnings; Ignore keeps it silently.
        log.Clear();
        var warned = QuantizationDriver.Run(new ListSource(log, RowKind.Layer, ("a", w, null)), new LogSink(log), Policy(ValidationFailureMode.Warn), Stopwatch.StartNew());
        Assert.Contains("commit True", log);
        Assert.Equal([$"a: weight SQNR {F2(expected)} dB is below the int4 threshold 45 dB"], warned.Report.Problems);
        Assert.Equal(warned.Report.Problems, warned.Warnings);
        var ignored = QuantizationDriver.Run(new ListSource(log, RowKind.Layer, ("a", w, null)), new LogSink(log), Policy(ValidationFailureMode.Ignore), Stopwatch.StartNew());
        Assert.Single(ignored.Report.Problems);
        Assert.Empty(ignored.Warnings);
    }

    [Theory]
    [InlineData(ValidationFailureMode.Error)]
    [InlineData(ValidationFailureMode.Warn)]
    public void BothQuantizersMakeTheSameGateDecisionForTheSameWeights(ValidationFailureMode mode)
    {
        manual_seed(8);
        using var model = Net();
        using var dir = new TempDir();
        QuantSharp.Serialization.SafetensorsWriter.Save(dir["float.safetensors"], model.state_dict().Select(kv => (kv.Key, kv.Value)).ToList());
        var recipe = QuantizationRecipe.Int4WeightOnly(groupSize: 32) with { MinElements = 0, Validation = Policy(mode) };

        QuantizationReport fromModel, fromCheckpoint;
        IReadOnlyList<string> modelWarnings = [];
        if (mode == ValidationFailureMode.Error)
        {
            fromModel = Assert.Throws<QuantizationValidationException>(() => Quantizer.Quantize(model, recipe, factory: Net)).Report;
            fromCheckpoint = Assert.Throws<CheckpointValidationException>(() => CheckpointQuantizer.Quantize(dir["float.safetensors"], dir["q.safetensors"], recipe)).Report;
            Assert.False(File.Exists(dir["q.safetensors"]));
        }
        else
        {
            var result = Quantizer.Quantize(model, recipe, factory: Net);
            result.Model.Dispose();
            fromModel = result.Report!;
            modelWarnings = result.Warnings;
            fromCheckpoint = CheckpointQuantizer.Quantize(dir["float.safetensors"], dir["q.safetensors"], recipe);
            Assert.True(fromCheckpoint.Written);
            Assert.True(File.Exists(dir["q.safetensors"]));
        }

        // Both layers fail the same gate with the same measure and threshold; each path names its rows its own way
        // (a layer vs a tensor), nothing else differs.
        foreach (var layer in new[] { "fc1", "fc2" })
        {
            var m = fromModel.Layers.Single(r => r.Name == layer);
            var c = fromCheckpoint.Layers.Single(r => r.Name == layer + ".weight");
            Assert.Equal(m.WeightSqnrDb, c.WeightSqnrDb);
            Assert.InRange(m.WeightSqnrDb!.Value, 10, 45);
            Assert.Equal(45, m.ThresholdDb);
            Assert.Equal(m.ThresholdDb, c.ThresholdDb);
            Assert.Equal(m.Spec, c.Spec);
            Assert.Equal(m.Fallback, c.Fallback);
            Assert.True(m.RangeOk && c.RangeOk);
            Assert.Equal($"weight SQNR {F2(m.WeightSqnrDb.Value)} dB is below the int4 threshold 45 dB", Assert.Single(m.Problems));
            // The same words (one gate, ValidationPolicy.SqnrProblem); a tensor row names the tensor.
            Assert.Equal($"'{layer}.weight': {m.Problems[0]}.", Assert.Single(c.Problems));
            Assert.Contains($"{layer}: {m.Problems[0]}", fromModel.Problems);
            Assert.Contains(c.Problems[0], fromCheckpoint.Problems);
            if (mode == ValidationFailureMode.Warn) Assert.Contains($"{layer}: {m.Problems[0]}", modelWarnings);
        }
        Assert.Equal(2, fromCheckpoint.Problems.Count);
    }

    private static string F2(double v) => v.ToString("F2", System.Globalization.CultureInfo.InvariantCulture);

    private static nn.Module<Tensor, Tensor> Net() => nn.Sequential(("fc1", nn.Linear(64, 32)), ("relu", nn.ReLU()), ("fc2", nn.Linear(32, 16)));

    /// <summary>10·log10(Σx² / Σ(x − x̂)²) in float64 for int4 group-32 round to nearest.</summary>
    private static double DirectSqnrDb(Tensor w)
    {
        using var q = QuantSharp.Tensors.QuantizedTensor.Quantize(w, Int4G32);
        using var d = q.Dequantize();
        using var x = w.to(ScalarType.Float64);
        using var e = x - d.to(ScalarType.Float64);
        return 10 * Math.Log10(x.square().sum().item<double>() / e.square().sum().item<double>());
    }

    /// <summary>Items from a list: a weight quantized whole (round to nearest, int4 group 32) in two parts of rows, or copied.</summary>
    private sealed class ListSource(List<string> log, RowKind rows, params (string Name, Tensor? Weight, double? CalibrationOutput)[] weights)
        : IWeightSource<PipelineItem>
    {
        private readonly Dictionary<PipelineItem, Tensor> _values = [];

        public RowKind Rows => rows;

        public IEnumerable<PipelineItem> Items()
        {
            for (int i = 0; i < weights.Length; i++)
            {
                var (name, w, calibrationOutput) = weights[i];
                log.Add("prepare " + name);
                var item = new PipelineItem
                {
                    Order = i, Row = new LayerReport { Name = name, Quantized = w is not null, StoredBytes = w is null ? 7 : 0 },
                    Weight = w is null ? null : new PlannedWeight(name, w.shape, Int4G32, null), CalibrationOutputSqnrDb = calibrationOutput,
                };
                if (w is not null) _values[item] = w;
                yield return item;
            }
        }

        public IEnumerable<QuantizedPart> Parts(PipelineItem item)
        {
            var w = _values[item];
            foreach (var rows in new[] { (0L, 10L), (10L, 6L) })
            {
                using var x = w.narrow(0, rows.Item1, rows.Item2).contiguous();
                using var q = QuantSharp.Tensors.QuantizedTensor.Quantize(x, Int4G32);
                yield return new QuantizedPart(item.Row.Name, q, x);
            }
        }
    }

    /// <summary>Logs what the driver asks; refuses with a recognizable exception.</summary>
    private sealed class LogSink(List<string> log) : IQuantizedSink<PipelineItem>
    {
        public QuantizationReport? Refused { get; private set; }
        private string? _writing;

        public void Begin(PipelineItem item) { log.Add("begin " + item.Row.Name); _writing = item.Row.Name; }

        public void Write(PipelineItem item, QuantizedPart part)
        {
            if (log[^1] != "write " + _writing) log.Add("write " + _writing);
            Assert.False(part.Quantized.Data.IsInvalid);
        }

        public LayerReport End(PipelineItem item, LayerReport row) { log.Add("end " + row.Name); return row; }

        public void Copy(PipelineItem item) => log.Add("copy " + item.Row.Name);

        public RunChecks Finish(IReadOnlyList<LayerReport> rows)
        {
            log.Add($"finish {rows.Count} rows");
            return new RunChecks { Rows = rows, OriginalBytes = rows.Sum(r => r.OriginalBytes), StoredBytes = rows.Sum(r => r.StoredBytes) };
        }

        public long Commit(bool keep) { log.Add($"commit {keep}"); return 0; }

        public QuantizationException Refusal(QuantizationReport report)
        {
            log.Add("refusal");
            Refused = report;
            return new ModelQuantizationException("refused");
        }
    }
}
