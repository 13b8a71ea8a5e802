using BenchmarkDotNet.Attributes;
using QuantSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Bench;

/// <summary>
/// Forward pass of a 1024x1024 Linear on a [32, 1024] batch: float32 (baseline, libtorch on one thread) against the quantized
/// layers, which run the kernels on the stored weight (the packed GEMM at this batch; docs/BENCHMARKS.md). Run: <c>dotnet run -c Release --project bench/QuantSharp.Bench -- --filter '*QuantizedLinear*'</c>.
/// </summary>
[MemoryDiagnoser]
public class QuantizedLinearBenchmark
{
    private nn.Module<Tensor, Tensor> _layer = null!;
    private Tensor _x = null!;

    /// <summary>float32 (the baseline), int8 (per-channel), int4-g128, fp16, bf16.</summary>
    [Params("float32", "int8", "int4-g128", "fp16", "bf16")]
    public string Kind { get; set; } = "float32";

    [GlobalSetup]
    public void Setup()
    {
        torch.set_num_threads(1);
        torch.manual_seed(1);
        var linear = nn.Linear(1024, 1024);
        _x = torch.randn(32, 1024);
        _layer = Kind switch
        {
            "float32" => linear,
            "int8" => QuantizedModules.Quantize(linear, QuantizationRecipe.Int8WeightOnly().BaseWeights),
            "int4-g128" => QuantizedModules.Quantize(linear, new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(128))),
            "fp16" => QuantizedModules.Quantize(linear, new QuantSpec(QuantType.Float16)),
            "bf16" => QuantizedModules.Quantize(linear, new QuantSpec(QuantType.BFloat16)),
            _ => throw new ArgumentException(Kind),
        };
    }

    [Benchmark]
    public float Forward()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        return _layer.call(_x)[0, 0].item<float>();
    }
}
