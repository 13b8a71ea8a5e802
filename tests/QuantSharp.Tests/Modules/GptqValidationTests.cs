using System.CommandLine;
using System.Text.Json;
using QuantSharp.Calibration;
using QuantSharp.Modules;
using QuantSharp.Pipeline;
using QuantSharp.Tensors;
using QuantSharp.Tests.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Modules;

/// <summary>
/// GPTQ inside the quantizer's pipeline: a GPTQ layer is validated by its calibration output SQNR (its objective) instead
/// of its weight SQNR, the file records the method that really quantized each layer, and layers are processed in the
/// order the model calls them.
/// </summary>
[Collection(TorchThreadsCollection.Name)]
public class GptqValidationTests
{
    /// <summary>Inputs [n, 64] close to an 8-dimensional subspace (as features often are): GPTQ can then move weights far
    /// along the directions the inputs hardly use, which costs weight SQNR but no output accuracy.</summary>
    private static List<Tensor> NearlyLowRank(int batches, Generator g)
    {
        var basis = randn(8, 64, generator: g);
        return Enumerable.Range(0, batches).Select(_ => randn(128, 8, generator: g).mm(basis) + randn(128, 64, generator: g) * 0.05f).ToList();
    }

    private static readonly QuantizationRecipe Int2PerChannel = new() { Type = QuantType.Int2, Granularity = new PerAxis(0), MinElements = 0 };

    private static Tensor FloatWeight(nn.Module model, string name) => model.named_parameters().Single(p => p.name == name).parameter;

    private static QuantizedWeight QuantizedWeightOf(nn.Module model, string layer) =>
        ((QuantizedModule)model.named_modules().Single(m => m.name == layer).module).weight;

    [Fact]
    public void Int2ActOrderRunPassesValidationOnItsCalibrationOutputSqnr()
    {
        torch.set_num_threads(1);
        using var scope = NewDisposeScope();
        var calibration = NearlyLowRank(4, new Generator(31));
        using var model = new Mlp();
        model.eval();

        // Default validation (OnFailure = Error): passes.
        var result = Gptq.Quantize(model, Int2PerChannel, calibration, () => new Mlp(), options: new GptqOptions { ActOrder = true });
        using var q = result.Model;
        var report = result.Report!;
        Assert.True(report.Passed, report.Format());
        double threshold = Int2PerChannel.Validation.ThresholdFor(QuantType.Int2);
        Assert.All(report.Layers, l => Assert.True(l.CalibrationOutputSqnrDb >= threshold, $"{l.Name}: {l.CalibrationOutputSqnrDb}"));
        Assert.Contains("calib. output SQNR dB", report.Format());

        // Which gate applies: with a 10 dB int2 threshold, every GPTQ layer passes on its calibration output SQNR although
        // its weight SQNR is below 10 dB, while round to nearest is still refused on its weight SQNR.
        var strict = Int2PerChannel with { Validation = Int2PerChannel.Validation with { SqnrThresholdsDb = new Dictionary<QuantType, double> { [QuantType.Int2] = 10 } } };
        var strictResult = Gptq.Quantize(model, strict, calibration, () => new Mlp(), options: new GptqOptions { ActOrder = true });
        using (strictResult.Model)
        {
            Assert.True(strictResult.Report!.Passed, strictResult.Report.Format());
            Assert.All(strictResult.Report.Layers, l => Assert.True(l.WeightSqnrDb < 10 && l.CalibrationOutputSqnrDb >= 10, $"{l.Name}: {l.WeightSqnrDb} / {l.CalibrationOutputSqnrDb}"));
        }
        var rtn = Assert.Throws<QuantSharp.Validation.QuantizationValidationException>(() => Quantizer.Quantize(model, strict, () => new Mlp(), calibration));
        Assert.Contains("fc1: weight SQNR", rtn.Message);

        // fc1 sees the raw calibration inputs: its calibration output SQNR is that of X·Wqᵀ against X·Wᵀ, computed directly.
        var x = cat(calibration, 0).to(ScalarType.Float64);
        var w = FloatWeight(model, "fc1.weight").detach().to(ScalarType.Float64);
        var wq = QuantizedWeightOf(q, "fc1").Dequantize().to(ScalarType.Float64);
        double signal = x.mm(w.t()).square().sum().item<double>(), noise = x.mm((w - wq).t()).square().sum().item<double>();
        double expected = 10 * Math.Log10(signal / noise);
        Assert.Equal(expected, report.Layers.Single(l => l.Name == "fc1").CalibrationOutputSqnrDb!.Value, 6);
    }

    /// <summary>GPTQ with its scales multiplied by 3 afterwards: the output is off by about twice the signal (-6 dB).</summary>
    private sealed class ScaledGptq(IWeightQuantizer inner) : IWeightQuantizer
    {
        public string Method => inner.Method;

        public bool Sequential => inner.Sequential;

        public IInputStatistics? CreateStatistics(PlannedWeight weight, nn.Module layer) => inner.CreateStatistics(weight, layer);

        public QuantizedTensor Quantize(PlannedWeight weight, Tensor values, IInputStatistics? statistics)
        {
            using var parts = inner.Quantize(weight, values, statistics);
            return QuantizedTensor.FromParts(parts.Spec, parts.Shape, parts.Data.clone(), parts.Scale!.mul(3), parts.ZeroPoint?.clone());
        }

        public string MethodFor(IInputStatistics? statistics) => inner.MethodFor(statistics);

        public double? CalibrationOutputSqnrDb(Tensor values, QuantizedWeight quantized, IInputStatistics? statistics) =>
            inner.CalibrationOutputSqnrDb(values, quantized, statistics);
    }

    [Fact]
    public void BrokenGptqOutputFailsValidation()
    {
        torch.set_num_threads(1);
        using var scope = NewDisposeScope();
        var calibration = NearlyLowRank(4, new Generator(31)).Select(CalibrationBatch.Of).ToList();
        using var model = new Mlp();
        model.eval();
        var broken = new ScaledGptq(new GptqWeightQuantizer(new GptqOptions { ActOrder = true }, "minmax"));
        var ex = Assert.Throws<QuantSharp.Validation.QuantizationValidationException>(() =>
            Quantizer.QuantizeCore(model, Int2PerChannel, () => new Mlp(), calibration, false, null, 512, null, null, broken));
        Assert.Contains("fc1: calibration output SQNR", ex.Message);
        Assert.All(ex.Report.Layers, l => Assert.True(l.CalibrationOutputSqnrDb < -5, $"{l.Name}: {l.CalibrationOutputSqnrDb}"));

        // Kept anyway (OnFailure = Ignore) and saved: `quantsharp validate` refuses the file on the recorded output SQNR,
        // with the quantizer's words prefixed by the tensor name.
        var kept = Quantizer.QuantizeCore(model, Int2PerChannel, () => new Mlp(), calibration, false, null, 512, ValidationFailureMode.Ignore, null, broken);
        using var q = kept.Model;
        using var dir = new TempDir();
        string original = SaveOriginal(model, dir["mlp.safetensors"]);
        Quantizer.Save(q, dir["broken.safetensors"]);
        var (code, stdout, _) = Cli.CheckpointCliTests.Run("validate", original, dir["broken.safetensors"], "--json");
        Assert.Equal(1, code);
        using var v = JsonDocument.Parse(stdout);
        var problems = v.RootElement.GetProperty("problems").EnumerateArray().Select(p => p.GetString()!).ToList();
        Assert.Equal(3, problems.Count);
        string fc1 = kept.Report!.Layers.Single(l => l.Name == "fc1").CalibrationOutputSqnrDb!.Value.ToString("F2", System.Globalization.CultureInfo.InvariantCulture);
        Assert.Contains($"fc1: calibration output SQNR {fc1} dB is below the int2 threshold 1 dB", kept.Report.Problems);
        Assert.Contains($"'fc1.weight': calibration output SQNR {fc1} dB is below the int2 threshold 1 dB.", problems);
    }

    /// <summary>Saves <paramref name="model"/>'s float state as the ORIGINAL of <c>quantsharp validate</c>.</summary>
    private static string SaveOriginal(nn.Module model, string path)
    {
        QuantSharp.Serialization.SafetensorsWriter.Save(path, model.state_dict().Select(kv => (kv.Key, kv.Value)));
        return path;
    }

    [Fact]
    public void SavedGptqFilePassesValidateOnItsRecordedCalibrationOutputSqnr()
    {
        torch.set_num_threads(1);
        using var scope = NewDisposeScope();
        var calibration = NearlyLowRank(4, new Generator(31));
        using var model = new Mlp();
        model.eval();
        // An int2 threshold of 10 dB: every GPTQ layer's weight SQNR is below it, its calibration output SQNR above it.
        var strict = Int2PerChannel with { Validation = Int2PerChannel.Validation with { SqnrThresholdsDb = new Dictionary<QuantType, double> { [QuantType.Int2] = 10 } } };
        var result = Gptq.Quantize(model, strict, calibration, () => new Mlp(), options: new GptqOptions { ActOrder = true });
        using var q = result.Model;
        using var dir = new TempDir();
        string original = SaveOriginal(model, dir["mlp.safetensors"]);
        Quantizer.Save(q, dir["mlp.gptq.safetensors"]);
        File.WriteAllText(dir["strict.json"], """{ "qtype": "int2", "validation": { "sqnr_thresholds_db": { "int2": 10 } } }""");

        // The file records each layer's calibration output SQNR (read with plain JSON, as Python's json module would).
        using (var f = QuantSharp.Serialization.SafetensorsFile.Open(dir["mlp.gptq.safetensors"]))
        using (var layers = JsonDocument.Parse(f.Metadata["quantsharp.layers"]))
        {
            foreach (var l in result.Report!.Layers)
                Assert.Equal(l.CalibrationOutputSqnrDb!.Value, layers.RootElement.GetProperty(l.Name + ".weight").GetProperty("calibration_output_sqnr_db").GetDouble(), 4);
        }

        var (code, stdout, stderr) = Cli.CheckpointCliTests.Run("validate", original, dir["mlp.gptq.safetensors"], "--config", dir["strict.json"], "--json");
        Assert.True(code == 0, stderr + stdout);
        using (var v = JsonDocument.Parse(stdout))
        {
            Assert.True(v.RootElement.GetProperty("passed").GetBoolean());
            var rows = v.RootElement.GetProperty("tensors").EnumerateArray().Where(t => t.GetProperty("action").GetString() == "quantized").ToList();
            Assert.Equal(3, rows.Count);
            foreach (var row in rows)
            {
                var layer = result.Report.Layers.Single(l => l.Name + ".weight" == row.GetProperty("name").GetString());
                // Validate measures the same weight SQNR the quantizer did (below the 10 dB bar) and gates on the recorded output SQNR.
                Assert.Equal(layer.WeightSqnrDb!.Value, row.GetProperty("sqnr_db").GetDouble(), 3);
                Assert.True(row.GetProperty("sqnr_db").GetDouble() < 10);
                Assert.Equal(layer.CalibrationOutputSqnrDb!.Value, row.GetProperty("calibration_output_sqnr_db").GetDouble(), 4);
            }
        }
        (code, stdout, stderr) = Cli.CheckpointCliTests.Run("validate", original, dir["mlp.gptq.safetensors"], "--config", dir["strict.json"]);
        Assert.True(code == 0, stderr + stdout);
        Assert.Contains("3 of 3 quantized tensors (GPTQ) are gated on the calibration output SQNR", stdout);
        Assert.Contains("Validation passed", stdout);

        // Loading and saving again keeps the recorded values (the same entries).
        using (var reloaded = Quantizer.Load(() => new Mlp(), dir["mlp.gptq.safetensors"]))
            Quantizer.Save(reloaded, dir["again.safetensors"]);
        using (var a = QuantSharp.Serialization.SafetensorsFile.Open(dir["mlp.gptq.safetensors"]))
        using (var b = QuantSharp.Serialization.SafetensorsFile.Open(dir["again.safetensors"]))
            Assert.Equal(a.Metadata["quantsharp.layers"], b.Metadata["quantsharp.layers"]);

        // The recorded value is trusted only for the weights it was measured on: scales x3 in the file are caught.
        var bytes = File.ReadAllBytes(dir["mlp.gptq.safetensors"]);
        using (var f = QuantSharp.Serialization.SafetensorsFile.Open(dir["mlp.gptq.safetensors"]))
        {
            var scale = f.GetInfo("fc2.weight.scale");
            for (long i = 0; i < scale.ByteLength; i += 4)
            {
                int at = (int)(f.DataStart + scale.Begin + i);
                BitConverter.GetBytes(BitConverter.ToSingle(bytes, at) * 3).CopyTo(bytes, at);
            }
        }
        File.WriteAllBytes(dir["tampered.safetensors"], bytes);
        (code, stdout, _) = Cli.CheckpointCliTests.Run("validate", original, dir["tampered.safetensors"], "--config", dir["strict.json"], "--json");
        Assert.Equal(1, code);
        using (var v = JsonDocument.Parse(stdout))
        {
            var problem = Assert.Single(v.RootElement.GetProperty("problems").EnumerateArray()).GetString()!;
            Assert.StartsWith("'fc2.weight': its weight SQNR against this original is", problem);
            Assert.Contains("recorded calibration output SQNR", problem);
        }
    }

    private sealed class GroupedConvNet : nn.Module<Tensor, Tensor>
    {
        private nn.Module<Tensor, Tensor> conv, fc;

        public GroupedConvNet() : base(nameof(GroupedConvNet))
        {
            torch.manual_seed(6);
            conv = nn.Conv2d(4, 8, 3, groups: 2);
            fc = nn.Linear(128, 10);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => fc.call(conv.call(x).flatten(1));
    }

    [Fact]
    public void FileRecordsRoundToNearestForLayersGptqCannotSolve()
    {
        torch.set_num_threads(1);
        using var scope = NewDisposeScope();
        var g = new Generator(12);
        var calibration = Enumerable.Range(0, 2).Select(_ => randn(64, 4, 6, 6, generator: g)).ToList();
        using var model = new GroupedConvNet();
        model.eval();
        var recipe = new QuantizationRecipe { Type = QuantType.Int4, Granularity = new PerAxis(0), MinElements = 0 };
        var result = Gptq.Quantize(model, recipe, calibration, () => new GroupedConvNet());
        using var q = result.Model;
        // The grouped convolution is rounded to nearest (weight SQNR gate); the Linear by GPTQ (calibration output gate).
        Assert.Null(result.Report!.Layers.Single(l => l.Name == "conv").CalibrationOutputSqnrDb);
        Assert.NotNull(result.Report.Layers.Single(l => l.Name == "fc").CalibrationOutputSqnrDb);
        using var conv = QuantizedWeightOf(q, "conv").ToCanonical();
        using var rtn = QuantizedTensor.Quantize(FloatWeight(model, "conv.weight").detach().reshape(8, -1), conv.Spec);
        Assert.True(TestData.BitEqual(rtn.Data, conv.Data));

        using var dir = new TempDir();
        Quantizer.Save(q, dir["grouped.safetensors"]);
        var output = new StringWriter();
        var error = new StringWriter();
        int code = QuantSharp.Cli.Program.BuildRoot().Parse(["inspect", dir["grouped.safetensors"], "--json"]).Invoke(new InvocationConfiguration { Output = output, Error = error });
        Assert.True(code == 0, error.ToString());
        using var doc = JsonDocument.Parse(output.ToString());
        var layers = doc.RootElement.GetProperty("layers");
        Assert.Equal("minmax", layers.GetProperty("conv.weight").GetProperty("observer").GetString());
        Assert.Equal(Gptq.ObserverName, layers.GetProperty("fc.weight").GetProperty("observer").GetString());
    }

    /// <summary>Registers <c>head</c> before <c>body</c> but calls <c>body</c> first.</summary>
    private sealed class CalledOutOfOrder : nn.Module<Tensor, Tensor>
    {
        private nn.Module<Tensor, Tensor> head, body;

        public CalledOutOfOrder() : base(nameof(CalledOutOfOrder))
        {
            torch.manual_seed(9);
            head = nn.Linear(64, 16);
            body = nn.Linear(32, 64);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => head.call(nn.functional.relu(body.call(x)));
    }

    private static Tensor Hessian(Tensor inputs)
    {
        using var moment = new SecondMomentStatistics(inputs.shape[^1]);
        moment.Observe(inputs);
        return moment.Hessian();
    }

    [Fact]
    public void LayersAreProcessedInCallOrderNotRegistrationOrder()
    {
        torch.set_num_threads(1);
        using var scope = NewDisposeScope();
        var g = new Generator(40);
        var x = GptqTests.Correlated(256, 32, GptqTests.Mixing(32, g), g);
        using var model = new CalledOutOfOrder();
        model.eval();
        Assert.Equal(["head", "body"], model.named_children().Select(c => c.name));
        var recipe = new QuantizationRecipe { Type = QuantType.Int4, Granularity = new PerAxis(0), MinElements = 0 };
        var options = new GptqOptions();
        var result = Gptq.Quantize(model, recipe, [x], () => new CalledOutOfOrder(), options: options);
        using var q = result.Model;
        Assert.Equal(["head", "body"], result.Layers.Select(l => l.Name)); // reported in model order
        var spec = result.Layers[0].Weights;

        // body ran first on the raw inputs; head then saw the QUANTIZED body's outputs (sequential GPTQ).
        var (bodyParts, _) = Gptq.Solve(FloatWeight(model, "body.weight").detach(), Hessian(x), spec, options);
        using var bodyExpected = bodyParts;
        using var body = QuantizedWeightOf(q, "body").ToCanonical();
        Assert.True(TestData.BitEqual(bodyParts.Data, body.Data));
        Tensor quantizedBody, floatBody;
        using (no_grad())
        {
            quantizedBody = nn.functional.relu(((nn.Module<Tensor, Tensor>)q.named_modules().Single(m => m.name == "body").module).call(x));
            floatBody = nn.functional.relu(nn.functional.linear(x, FloatWeight(model, "body.weight"), FloatWeight(model, "body.bias")));
        }
        var (sequential, _) = Gptq.Solve(FloatWeight(model, "head.weight").detach(), Hessian(quantizedBody), spec, options);
        var (unquantizedInputs, _) = Gptq.Solve(FloatWeight(model, "head.weight").detach(), Hessian(floatBody), spec, options);
        using var sequentialParts = sequential;
        using var unquantizedParts = unquantizedInputs;
        using var head = QuantizedWeightOf(q, "head").ToCanonical();
        Assert.True(TestData.BitEqual(sequential.Data, head.Data));
        // The test can tell the two orders apart: registration order would have given head the float body's outputs.
        Assert.False(TestData.BitEqual(unquantizedInputs.Data, head.Data));
    }
}
