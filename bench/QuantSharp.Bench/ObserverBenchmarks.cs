using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using QuantSharp.Observers;
using TorchSharp;

namespace QuantSharp.Bench;

/// <summary>
/// Observers over one 1024 x 4096 float32 tensor (4M values): create, observe once, compute parameters.
/// Baseline: libtorch's own <c>min()</c> + <c>max()</c> of the same tensor (the least any min/max observer must do).
/// Run: <c>dotnet run -c Release --project bench/QuantSharp.Bench -- --filter '*ObserverBenchmarks*'</c>.
/// </summary>
[Config(typeof(InProcessShortConfig))]
[MemoryDiagnoser]
public class ObserverBenchmarks
{
    /// <summary>In-process (the benchmark host has TorchSharp's patched native library), short runs on a shared machine.</summary>
    private sealed class InProcessShortConfig : ManualConfig
    {
        public InProcessShortConfig() => AddJob(Job.Default.WithToolchain(InProcessEmitToolchain.Instance)
            .WithLaunchCount(1).WithWarmupCount(2).WithIterationCount(8));
    }

    private torch.Tensor _x = null!;

    [GlobalSetup]
    public void Setup()
    {
        torch.manual_seed(1);
        _x = torch.randn(1024, 4096);
    }

    [GlobalCleanup]
    public void Cleanup() => _x.Dispose();

    [Benchmark(Baseline = true, Description = "libtorch min()+max()")]
    public float TorchMinMax()
    {
        using var lo = _x.min();
        using var hi = _x.max();
        return lo.item<float>() + hi.item<float>();
    }

    [Benchmark(Description = "minmax per-tensor")]
    public float MinMax() => Run("minmax", new ObserverOptions());

    [Benchmark(Description = "minmax per-channel axis 0")]
    public float MinMaxPerChannel() => Run("minmax", new ObserverOptions { Axis = 0 });

    [Benchmark(Description = "minmax groups of 128")]
    public float MinMaxGroups() => Run("minmax", new ObserverOptions { GroupSize = 128 });

    [Benchmark(Description = "histogram entropy (ORT)")]
    public float HistogramEntropy() => Run("histogram", new ObserverOptions());

    [Benchmark(Description = "histogram L2 (PyTorch)")]
    public float HistogramL2() => Run("histogram", new ObserverOptions { Type = QuantType.UInt8, Method = HistogramMethod.L2 });

    [Benchmark(Description = "percentile symmetric")]
    public float Percentile() => Run("percentile", new ObserverOptions { Scheme = QuantScheme.Symmetric });

    private float Run(string name, ObserverOptions options)
    {
        var observer = ObserverFactory.Create(name, options);
        observer.Observe(_x);
        return observer.ComputeQParams().Scale[0];
    }
}
