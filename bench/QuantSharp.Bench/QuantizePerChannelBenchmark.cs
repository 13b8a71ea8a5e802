using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using QuantSharp.Primitives;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Bench;

/// <summary>
/// Per-channel (axis 0) int8 quantization of a 4096 x 4096 float32 tensor (64 MiB of input), against libtorch's
/// <c>torch.quantize_per_channel</c> with the same scales and zero points, in the same run.
/// GB/s of input = 0.0671 GB / mean time.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(InProcessConfig))]
public class QuantizePerChannelBenchmark
{
    private const int Rows = 4096, Cols = 4096;
    private Tensor _input = null!;
    private Tensor _scaleTensor = null!;
    private Tensor _zeroPointTensor = null!;
    private float[] _scale = null!;
    private int[] _zeroPoint = null!;
    private float[] _inputArray = null!;
    private sbyte[] _output = null!;
    private readonly QuantSpec _spec = new(QuantType.Int8, QuantScheme.Affine, new PerAxis(0));

    [GlobalSetup]
    public void Setup()
    {
        torch.manual_seed(1);
        _input = torch.randn(Rows, Cols);
        _inputArray = MemoryMarshal.Cast<byte, float>(_input.bytes).ToArray();
        // Scales and zero points from the data (MinMax, affine), given to both sides.
        using var q = QuantizedTensor.Quantize(_input, _spec);
        _scale = q.ScaleValues;
        _zeroPoint = q.ZeroPointValues;
        _scaleTensor = torch.tensor(_scale.Select(s => (double)s).ToArray());
        _zeroPointTensor = torch.tensor(_zeroPoint.Select(z => (long)z).ToArray());
        _output = new sbyte[Rows * Cols];
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _input.Dispose();
        _scaleTensor.Dispose();
        _zeroPointTensor.Dispose();
    }

    /// <summary>libtorch: <c>torch.quantize_per_channel(x, scales, zero_points, 0, qint8)</c>.</summary>
    [Benchmark(Baseline = true)]
    public long LibTorchQuantizePerChannel()
    {
        using var q = torch.quantize_per_channel(_input, _scaleTensor, _zeroPointTensor, 0, ScalarType.QInt8);
        return q.numel();
    }

    /// <summary>Our span kernel into a preallocated sbyte[] (no allocation).</summary>
    [Benchmark]
    public int QuantSharpKernel()
    {
        Quantization.Quantize(_inputArray, Cols, _scale, _zeroPoint, new QuantRange(-128, 127), _output);
        return _output[12345];
    }

    /// <summary>Our QuantizedTensor.QuantizeWith: same scales, allocates the int8 result tensor like libtorch does.</summary>
    [Benchmark]
    public long QuantSharpQuantizeWith()
    {
        using var q = QuantizedTensor.QuantizeWith(_input, _spec, _scale, _zeroPoint);
        return q.StorageBytes;
    }

    /// <summary>Full path: observe per-channel min/max, choose qparams, quantize (QuantizedTensor.Quantize).</summary>
    [Benchmark]
    public long QuantSharpFullPath()
    {
        using var q = QuantizedTensor.Quantize(_input, _spec);
        return q.StorageBytes;
    }

    /// <summary>libtorch full path: <c>torch.aminmax(x, dim: 1)</c>, qparams (PyTorch's formula), quantize_per_channel.</summary>
    [Benchmark]
    public long LibTorchFullPath()
    {
        using var scope = torch.NewDisposeScope();
        var (mn, mx) = torch.aminmax(_input, dim: 1);
        var minNeg = torch.clamp_max(mn, 0);
        var maxPos = torch.clamp_min(mx, 0);
        var scale = torch.clamp_min((maxPos - minNeg) / 255.0, 1.1920929e-07);
        var zp = torch.clamp(-128 - torch.round(minNeg / scale), -128, 127).to(ScalarType.Int64);
        var q = torch.quantize_per_channel(_input, scale.to(ScalarType.Float64), zp, 0, ScalarType.QInt8);
        return q.numel();
    }
}

/// <summary>
/// Runs in the benchmark host process: the host's build output carries the patched libLibTorchSharp.so (see build/),
/// which BenchmarkDotNet's separately generated projects do not.
/// </summary>
public sealed class InProcessConfig : ManualConfig
{
    /// <summary>One in-process job: 3 warm-up and 15 measured iterations.</summary>
    public InProcessConfig() =>
        AddJob(Job.Default.WithToolchain(InProcessEmitToolchain.Instance).WithLaunchCount(1).WithWarmupCount(3).WithIterationCount(15));
}
