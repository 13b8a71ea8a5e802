using System.CommandLine;
using System.Text.Json;
using QuantSharp.Modules;
using QuantSharp.Tensors;
using QuantSharp.Tests.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Modules;

/// <summary>GPTQ (issue 11, item 3): lower held-out layer output error than round-to-nearest, RTN exactly with an
/// identity-like Hessian, act_order and groups, Linear and Conv2d, the standard quantized model and file.</summary>
[Collection(TorchThreadsCollection.Name)]
public class GptqTests
{
    private static readonly QuantSpec Int4Channel = new(QuantType.Int4, QuantScheme.Symmetric, new PerAxis(0));
    private static readonly QuantSpec Int4G32 = new(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(32));
    private static readonly QuantSpec UInt4G32Affine = new(QuantType.UInt4, QuantScheme.Affine, new PerGroup(32));
    private static readonly QuantSpec Int8Channel = new(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0));

    public static TheoryData<string, bool> Specs() => new()
    {
        { "int4-channel", false }, { "int4-g32", false }, { "uint4-g32-affine", false }, { "int8-channel", false },
        { "int4-channel", true }, { "int4-g32", true }, { "uint4-g32-affine", true },
    };

    private static QuantSpec SpecNamed(string name) => name switch
    {
        "int4-channel" => Int4Channel,
        "int4-g32" => Int4G32,
        "uint4-g32-affine" => UInt4G32Affine,
        _ => Int8Channel,
    };

    /// <summary>Correlated inputs [n, k]: Gaussian noise through a fixed random mixing matrix, with per-feature scales.</summary>
    internal static Tensor Correlated(long n, long k, Tensor mixing, Generator g) => randn(n, k, generator: g).mm(mixing);

    internal static Tensor Mixing(long k, Generator g) =>
        (randn(k, k, generator: g) * 0.3f + eye(k)) * linspace(0.2, 2.0, k).unsqueeze(0);

    private static Tensor Hessian(Tensor x) => x.t().mm(x).to(ScalarType.Float64) * (2.0 / x.shape[0]);

    private static double OutputError(Tensor x, Tensor w, Tensor q) => (x.mm(w.t()) - x.mm(q.t())).norm().item<float>();

    [Theory]
    [MemberData(nameof(Specs))]
    public void HeldOutLayerOutputErrorIsLowerThanRoundToNearest(string specName, bool actOrder)
    {
        using var scope = NewDisposeScope();
        var spec = SpecNamed(specName);
        var g = new Generator(11);
        var w = randn(48, 128, generator: g);
        var mixing = Mixing(128, g);
        var calibration = Correlated(1024, 128, mixing, g);
        var heldOut = Correlated(1024, 128, mixing, g);

        var (parts, gptq) = Gptq.Solve(w, Hessian(calibration), spec, new GptqOptions { ActOrder = actOrder, BlockSize = 64 });
        using (parts)
        {
            using var rtn = QuantizedTensor.Quantize(w, spec);
            var rtnWeight = rtn.Dequantize();
            double eGptq = OutputError(heldOut, w, gptq), eRtn = OutputError(heldOut, w, rtnWeight);
            Assert.True(eGptq < 0.9 * eRtn, $"{specName} act_order={actOrder}: GPTQ held-out output error {eGptq:G4} is not clearly below RTN's {eRtn:G4}");
            // The parts are what the layer computes with: stored integers in range, dequantizing to the returned weight.
            Assert.True(TestData.BitEqual(parts.Dequantize(), gptq));
            Assert.Equal(spec, parts.Spec);
            if (actOrder && spec.Granularity is PerGroup)
            {
                // Static groups: every group keeps the min/max scale of its original columns, i.e. RTN's scales.
                Assert.True(TestData.BitEqual(rtn.Scale!, parts.Scale!));
            }
        }
    }

    [Theory]
    [MemberData(nameof(Specs))]
    public void UncorrelatedInputsGiveRoundToNearestExactly(string specName, bool actOrder)
    {
        // A diagonal Hessian (independent inputs of different scales; act_order then reorders the columns) spreads no
        // error to other columns: GPTQ must store exactly round-to-nearest's integers, scales and zero points.
        using var scope = NewDisposeScope();
        var spec = SpecNamed(specName);
        var g = new Generator(5);
        var w = randn(24, 96, generator: g);
        var h = torch.diag(rand(96, generator: g, dtype: ScalarType.Float64) + 0.5);
        var (parts, _) = Gptq.Solve(w, h, spec, new GptqOptions { ActOrder = actOrder, BlockSize = 32 });
        using (parts)
        {
            using var rtn = QuantizedTensor.Quantize(w, spec);
            Assert.True(TestData.BitEqual(rtn.Data, parts.Data));
            Assert.True(TestData.BitEqual(rtn.Scale!, parts.Scale!));
            Assert.Equal(rtn.ZeroPoint is null, parts.ZeroPoint is null);
            if (rtn.ZeroPoint is not null) Assert.True(TestData.BitEqual(rtn.ZeroPoint, parts.ZeroPoint!));
        }
    }

    [Fact]
    public void BadOptionsAreExplained()
    {
        using var model = new Mlp();
        using var x = randn(8, 64);
        Exception ex = Assert.Throws<ArgumentException>(() => Gptq.Quantize(model, QuantizationRecipe.Int4WeightOnly(32), [x], () => new Mlp(), options: new GptqOptions { DampingFraction = 0 }));
        Assert.Contains("DampingFraction", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => Gptq.Quantize(model, QuantizationRecipe.Int4WeightOnly(32), Array.Empty<Tensor>(), () => new Mlp()));
        Assert.Contains("calibration", ex.Message);
        ex = Assert.Throws<RecipeException>(() => Gptq.Quantize(model, QuantizationRecipe.Int8Static(), [x], () => new Mlp()));
        Assert.Contains("weights only", ex.Message);
    }

    [Fact]
    public void QuantizedModelIsStandardAndBeatsRoundToNearestOnHeldOutInputs()
    {
        torch.set_num_threads(1);
        using var scope = NewDisposeScope();
        var g = new Generator(21);
        var mixing = Mixing(64, g);
        var calibration = Enumerable.Range(0, 4).Select(_ => Correlated(128, 64, mixing, g)).ToList();
        var heldOut = Correlated(512, 64, mixing, g);
        using var model = new Mlp();
        model.eval();
        var before = TestData.Snapshot(model);
        var recipe = QuantizationRecipe.Int4WeightOnly(groupSize: 32);

        var result = Gptq.Quantize(model, recipe, calibration, () => new Mlp());
        using var q = result.Model;
        var rtnResult = Quantizer.Quantize(model, recipe, () => new Mlp());
        using var rtn = rtnResult.Model;
        // The caller's model is untouched.
        foreach (var (k, v) in model.state_dict()) Assert.True(TestData.BitEqual(before[k], v), $"{k} changed");
        Assert.Equal(3, q.named_modules().Count(m => m.module is QuantizedLinear));

        var y = model.call(heldOut);
        double eGptq = (y - q.call(heldOut)).norm().item<float>(), eRtn = (y - rtn.call(heldOut)).norm().item<float>();
        Assert.True(eGptq < eRtn, $"model output error on held-out inputs: GPTQ {eGptq:G4}, RTN {eRtn:G4}");

        using var dir = new TempDir();
        Quantizer.Save(q, dir["gptq.safetensors"]);
        using var reloaded = Quantizer.Load(() => new Mlp(), dir["gptq.safetensors"]);
        reloaded.eval();
        Assert.True(TestData.BitEqual(q.call(heldOut), reloaded.call(heldOut)));
        var output = new StringWriter();
        var error = new StringWriter();
        int code = QuantSharp.Cli.Program.BuildRoot().Parse(["inspect", dir["gptq.safetensors"], "--json"]).Invoke(new InvocationConfiguration { Output = output, Error = error });
        Assert.True(code == 0, error.ToString());
        using var doc = JsonDocument.Parse(output.ToString());
        var fc1 = doc.RootElement.GetProperty("layers").GetProperty("fc1.weight");
        Assert.Equal("int4", fc1.GetProperty("qtype").GetString());
        Assert.Equal(Gptq.ObserverName, fc1.GetProperty("observer").GetString());
    }

    [Fact]
    public void Conv2dUsesUnfoldedInputs()
    {
        // One convolution over smooth (spatially correlated) images: the unfolded patches are strongly correlated, and
        // GPTQ's output error on held-out images is below round-to-nearest's.
        torch.set_num_threads(1);
        using var scope = NewDisposeScope();
        var g = new Generator(8);
        Tensor Images(long n) => nn.functional.avg_pool2d(randn(n, 4, 18, 18, generator: g), 3, 1);
        var calibration = Enumerable.Range(0, 2).Select(_ => Images(64)).ToList();
        var heldOut = Images(64);
        using var model = new ConvOnly();
        model.eval();
        var recipe = new QuantizationRecipe { Type = QuantType.Int4, Granularity = new PerGroup(12) };
        var result = Gptq.Quantize(model, recipe, calibration, () => new ConvOnly());
        using var q = result.Model;
        var rtnResult = Quantizer.Quantize(model, recipe, () => new ConvOnly());
        using var rtn = rtnResult.Model;
        Assert.IsType<QuantizedConv>(q.named_modules().Single(m => m.name == "conv").module);
        var y = model.call(heldOut);
        double eGptq = (y - q.call(heldOut)).norm().item<float>(), eRtn = (y - rtn.call(heldOut)).norm().item<float>();
        Assert.True(eGptq < 0.9 * eRtn, $"conv output error on held-out images: GPTQ {eGptq:G4}, RTN {eRtn:G4}");
    }

    private sealed class ConvOnly : nn.Module<Tensor, Tensor>
    {
        private nn.Module<Tensor, Tensor> conv;

        public ConvOnly() : base(nameof(ConvOnly))
        {
            torch.manual_seed(4);
            conv = nn.Conv2d(4, 8, 3, padding: 1, stride: 2);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => conv.call(x);
    }
}
