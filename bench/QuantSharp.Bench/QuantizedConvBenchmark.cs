using BenchmarkDotNet.Attributes;
using QuantSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Bench;

/// <summary>
/// Forward pass of float32 convolutions (baseline) against their quantized replacements, which take the route the
/// measured rule chooses (<see cref="ConvolutionCost"/>: the packed kernels, or dequantize + the same libtorch
/// convolution). The same-process ratio bench over more shapes and both routes is <c>conv</c> (<see cref="ConvBench"/>).
/// Shapes: a ResNet-style 3x3 Conv2d 64 -> 64 on 56x56, a pointwise (1x1) Conv2d 256 -> 256 on 28x28 and a Conv1d
/// 512 -> 512 (kernel 3) over 256 steps, at batch 1 and 8, on all cores.
/// Run: <c>dotnet run -c Release --project bench/QuantSharp.Bench -- --filter '*QuantizedConv*'</c>.
/// </summary>
public class QuantizedConvBenchmark
{
    private nn.Module<Tensor, Tensor> _layer = null!;
    private Tensor _x = null!;

    /// <summary>The convolution.</summary>
    [Params("conv2d-3x3-64", "conv2d-1x1-256", "conv1d-k3-512")]
    public string Shape { get; set; } = "conv2d-3x3-64";

    /// <summary>Images (or sequences) per call.</summary>
    [Params(1, 8)]
    public int Batch { get; set; } = 1;

    /// <summary>float32 (the baseline), int8 per channel, int4 group 64, float16 weights.</summary>
    [Params("float32", "int8", "int4-g64", "fp16")]
    public string Kind { get; set; } = "float32";

    [GlobalSetup]
    public void Setup()
    {
        torch.manual_seed(1);
        nn.Module<Tensor, Tensor> conv;
        (conv, _x) = Shape switch
        {
            "conv2d-3x3-64" => ((nn.Module<Tensor, Tensor>)nn.Conv2d(64, 64, 3, padding: 1), torch.randn(Batch, 64, 56, 56)),
            "conv2d-1x1-256" => (nn.Conv2d(256, 256, 1), torch.randn(Batch, 256, 28, 28)),
            "conv1d-k3-512" => (nn.Conv1d(512, 512, 3, padding: 1), torch.randn(Batch, 512, 256)),
            _ => throw new ArgumentException(Shape),
        };
        _layer = Kind switch
        {
            "float32" => conv,
            "int8" => QuantizedModules.Quantize(conv, QuantizationRecipe.Int8WeightOnly().BaseWeights),
            "int4-g64" => QuantizedModules.Quantize(conv, new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(64))),
            "fp16" => QuantizedModules.Quantize(conv, new QuantSpec(QuantType.Float16)),
            _ => throw new ArgumentException(Kind),
        };
    }

    [Benchmark]
    public float Forward()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        return _layer.call(_x)[0, 0].sum().item<float>();
    }
}
