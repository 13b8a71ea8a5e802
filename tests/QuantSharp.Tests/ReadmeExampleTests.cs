using QuantSharp.Calibration;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace QuantSharp.Tests;

/// <summary>The "quantize your own model" example of the README, compiled and run.</summary>
public sealed class ReadmeExampleTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("quantsharp-readme-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    // --- README example begins ---
    // Declare swappable layers as Module<Tensor, Tensor> (a field typed Linear cannot hold a quantized layer) and
    // call children with .call(x) so that calibration hooks fire.
    private sealed class MyNet : Module<Tensor, Tensor>
    {
        private readonly Module<Tensor, Tensor> conv1 = Conv2d(1, 32, 3, padding: 1);
        private readonly Module<Tensor, Tensor> conv2 = Conv2d(32, 32, 3, padding: 1);
        private readonly Module<Tensor, Tensor> fc = Linear(32 * 7 * 7, 10);

        public MyNet() : base(nameof(MyNet)) => RegisterComponents();

        public override Tensor forward(Tensor x)
        {
            x = functional.max_pool2d(functional.relu(conv1.call(x)), 2);
            x = functional.max_pool2d(functional.relu(conv2.call(x)), 2);
            return fc.call(x.flatten(1));
        }
    }

    private static QuantizationResult<MyNet> QuantizeMyNet(MyNet model, IEnumerable<(Tensor Input, Tensor Target)> trainBatches, string path)
    {
        // int4 weights in groups of 32 along in*kh*kw (288 for conv2); the first conv (1*3*3 = 9 inputs per filter) and
        // the classifier int8 (per channel, int8's default). Patterns name parameters (conv1.weight) or their module (conv1).
        var recipe = QuantizationRecipe.Int4WeightOnly(groupSize: 32) with
        {
            Overrides = [new("conv1", QuantType.Int8), new("fc.weight", QuantType.Int8)],
        };
        var result = Quantizer.Quantize(model, recipe,
            factory: () => new MyNet(),                                 // builds the copy; `model` stays untouched
            calibrationData: CalibrationData.FromPairs(trainBatches),   // first batch feeds the validation report
            progress: new Progress<CalibrationProgress>(p => Console.WriteLine($"{p.Samples}/{p.TargetSamples}")));
        Console.WriteLine(result.Report);                               // per-layer SQNR, sizes, reload and range checks
        Quantizer.Save(result.Model, path);                             // the one quantized file form (docs/FORMAT.md)
        recipe.Save(Path.ChangeExtension(path, ".recipe.json"));        // for `quantsharp quantize --config`: the same tensors
        return result;
    }

    private static MyNet LoadMyNet(string path) => Quantizer.Load(() => new MyNet(), path);
    // --- README example ends ---

    [Fact]
    public void ExampleRunsAndReloads()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(3);
        var model = new MyNet();
        var batches = Enumerable.Range(0, 2).Select(_ => (torch.randn(8, 1, 28, 28), torch.zeros(8, ScalarType.Int64))).ToList();
        string path = Path.Combine(_dir, "mynet.safetensors");
        var result = QuantizeMyNet(model, batches, path);
        Assert.True(result.Report!.Passed);
        Assert.Equal(["conv1", "conv2", "fc"], result.Layers.Select(l => l.Name));
        Assert.Equal(QuantType.Int4, result.Layers[1].Weights.Type);
        var x = torch.randn(4, 1, 28, 28);
        var reloaded = LoadMyNet(path);
        Assert.True(Modules.TestData.BitEqual(result.Model.call(x), reloaded.call(x)));
        Assert.Equal(result.Recipe.ToJson(), QuantizationRecipe.Load(Path.ChangeExtension(path, ".recipe.json")).ToJson());
        Assert.True(QuantSharp.Validation.Metrics.Sqnr(model.call(x), reloaded.call(x)) > 15);
    }
}
