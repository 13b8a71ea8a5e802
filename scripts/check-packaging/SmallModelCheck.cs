// The program of scripts/check-packaging.sh: built outside the repository against the packed QuantSharp package and
// TorchSharp-cpu (the script adds a Program.cs that calls Run). Its first tensor loads libtorch, which fails on an old
// libstdc++ unless the package's libstdc++ fix reached the application's output. The tests compile and run it too
// (PackagingConsumerTests), so an API change that breaks it shows in `dotnet test`.
using QuantSharp;
using TorchSharp;

namespace PackagingCheck;

internal static class SmallModelCheck
{
    /// <summary>Quantizes a two-layer MLP to int8 in place; 0 when both layers were quantized with an output SQNR above 30 dB.</summary>
    public static int Run(TextWriter output)
    {
        torch.manual_seed(0);
        var model = torch.nn.Sequential(("fc1", torch.nn.Linear(64, 128)), ("relu", torch.nn.ReLU()), ("fc2", torch.nn.Linear(128, 10)));
        var input = torch.randn(32, 64);
        var expected = model.call(input).detach().clone();

        var result = Quantizer.Quantize(model, QuantizationRecipe.Int8WeightOnly(), calibrationData: [input], inPlace: true);
        var actual = model.call(input);
        double sqnrDb = 10 * Math.Log10(expected.square().sum().item<float>() / (expected - actual).square().sum().item<float>());
        output.WriteLine($"quantized layers: {result.Layers.Count}, output SQNR: {sqnrDb:F1} dB, size: {result.Report!.SizeRatio:P1} of float32");
        if (result.Layers.Count == 2 && sqnrDb > 30) return 0;
        output.WriteLine("FAILED: expected 2 quantized Linear layers and an output SQNR above 30 dB");
        return 1;
    }
}
