using System.Diagnostics;
using System.Runtime;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using QuantSharp.Kernels;
using QuantSharp.Modules;
using QuantSharp.Primitives;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Cli.Commands;

/// <summary>One timed layer: TorchSharp float32 and bfloat16 <c>Linear</c> against the quantized layer, same run.</summary>
internal sealed record LayerTiming(string? Layer, long Out, long In, int Batch, string QType, int? GroupSize,
    double Float32Ms, double BFloat16Ms, double QuantizedMs, long WeightBytes, double MemoryReadGbps, bool Cold = false)
{
    public double SpeedupVsFloat32 => Float32Ms / QuantizedMs;
    public double SpeedupVsBFloat16 => BFloat16Ms / QuantizedMs;

    /// <summary>Stored weight bytes (data, scales, zero points) read per forward, per second.</summary>
    public double WeightGbps => WeightBytes / (QuantizedMs * 1e6);

    public JsonObject ToJson()
    {
        var o = new JsonObject();
        if (Layer is not null) o["layer"] = Layer;
        o["shape"] = $"{Out}x{In}";
        o["batch"] = Batch;
        o["qtype"] = QType;
        o["group_size"] = GroupSize;
        o["float32_ms"] = Math.Round(Float32Ms, 4);
        o["bfloat16_ms"] = Math.Round(BFloat16Ms, 4);
        o["quantized_ms"] = Math.Round(QuantizedMs, 4);
        o["speedup_vs_float32"] = Math.Round(SpeedupVsFloat32, 3);
        o["speedup_vs_bfloat16"] = Math.Round(SpeedupVsBFloat16, 3);
        o["weight_gbps"] = Significant(WeightGbps);
        o["memory_read_gbps"] = Significant(MemoryReadGbps);
        o["cold"] = Cold;
        return o;
    }

    /// <summary>
    /// <paramref name="value"/> to 4 significant digits: a small layer on a loaded machine reads its weights at
    /// thousandths of a GB/s, which two decimals printed as 0.
    /// </summary>
    private static double Significant(double value)
    {
        if (value == 0 || !double.IsFinite(value)) return value;
        int decimals = 3 - (int)Math.Floor(Math.Log10(Math.Abs(value)));
        return Math.Round(value, Math.Clamp(decimals, 0, 15));
    }
}

/// <summary>The measurements behind <c>quantsharp bench</c>.</summary>
internal static class LayerBench
{
    /// <summary>The <c>--qtype</c> values.</summary>
    public static readonly string[] QTypes = ["int8", "int4", "uint4", "float16", "bfloat16", "w8a8-dynamic", "w8a8-static"];

    private static int s_primed;

    /// <summary>
    /// Once per process, allocates and frees a 24 MiB tensor, so that glibc's malloc serves every later block below
    /// that size from its heap (freeing a memory-mapped block raises its mmap threshold to the block's size). Without
    /// it, whether a side's output is mapped and faulted in afresh on every call depends on what the process allocated
    /// before: the float32 side of a 64x800 layer at 64 rows measured 0.071 and 2.156 ms in two fresh processes
    /// (docs/BENCHMARKS.md, convolutions of stop 11, for the mechanism).
    /// </summary>
    private static void PrimeAllocator()
    {
        if (Interlocked.Exchange(ref s_primed, 1) == 0) torch.empty(6L << 20, ScalarType.Float32).Dispose();
    }

    /// <summary>Times one <c>[outFeatures, inFeatures]</c> layer at <paramref name="batch"/>.</summary>
    /// <param name="qtype">One of <see cref="QTypes"/>.</param>
    /// <param name="groupSize">Per-group size for integer weights, or null (int8: per channel; int4/uint4: 128).</param>
    /// <param name="repeats">Timed calls per side (the median is reported), after two warm-up calls.</param>
    /// <param name="memoryReadGbps">The machine's read bandwidth, measured once by the caller.</param>
    /// <param name="layer">Layer name (for <c>--model</c>), or null.</param>
    /// <param name="cold">Evict the caches before every timed call (<see cref="EvictCaches"/>).</param>
    public static LayerTiming Measure(long outFeatures, long inFeatures, int batch, string qtype, int? groupSize, int repeats, double memoryReadGbps, string? layer = null, bool cold = false)
    {
        PrimeAllocator();
        var (spec, dynamic, staticInput) = Spec(qtype, ref groupSize);
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        torch.manual_seed(0);
        var linear = nn.Linear(inFeatures, outFeatures);
        var x = torch.randn(batch, inFeatures);
        ActivationQuantization? input = null;
        if (staticInput)
        {
            // Calibrated on the bench input itself: uint8 affine, PyTorch's default activation quantization.
            var (scale, zero) = QParams.Choose(x.min().item<float>(), x.max().item<float>(), QuantRange.For(QuantType.UInt8, false), QuantScheme.Affine);
            input = new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, scale, zero);
        }
        using var quantized = new QuantizedLinear(QuantizedWeight.Quantize(linear.weight!, spec), linear.bias, input);
        quantized.DynamicInput = dynamic;
        using var bf16 = nn.Linear(inFeatures, outFeatures, dtype: ScalarType.BFloat16);
        var xb = x.to(ScalarType.BFloat16);
        double f32 = Time(() => linear.call(x), repeats, cold);
        double b16 = Time(() => bf16.call(xb), repeats, cold);
        double q = Time(() => quantized.call(x), repeats, cold);
        linear.Dispose();
        return new LayerTiming(layer, outFeatures, inFeatures, batch, qtype, groupSize, f32, b16, q, quantized.WeightStorageBytes, memoryReadGbps, cold);
    }

    /// <summary>The weight spec of a <c>--qtype</c>; int4 and uint4 default to group 128.</summary>
    internal static (QuantSpec Spec, bool Dynamic, bool StaticInput) Spec(string qtype, ref int? groupSize)
    {
        if (qtype is "int4" or "uint4") groupSize ??= 128;
        if (qtype is "float16" or "bfloat16") groupSize = null; // plain casts: no groups
        Granularity granularity = groupSize is int g ? new PerGroup(g) : new PerAxis(0);
        return qtype switch
        {
            "int8" => (new QuantSpec(QuantType.Int8, QuantScheme.Symmetric, granularity), false, false),
            "int4" => (new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, granularity), false, false),
            "uint4" => (new QuantSpec(QuantType.UInt4, QuantScheme.Affine, granularity), false, false),
            "float16" => (new QuantSpec(QuantType.Float16), false, false),
            "bfloat16" => (new QuantSpec(QuantType.BFloat16), false, false),
            "w8a8-dynamic" => (new QuantSpec(QuantType.Int8, QuantScheme.Symmetric, granularity), true, false),
            "w8a8-static" => (new QuantSpec(QuantType.Int8, QuantScheme.Symmetric, granularity), false, true),
            _ => throw new ArgumentException($"Unknown --qtype '{qtype}'; use one of {string.Join(", ", QTypes)}."),
        };
    }

    /// <summary>How long the JIT must have compiled nothing before the timed calls start.</summary>
    private const double JitQuietMilliseconds = 250;

    /// <summary>The longest warm-up, for a program whose JIT never goes quiet.</summary>
    private const double MaxWarmUpMilliseconds = 3000;

    /// <summary>
    /// Median milliseconds of <paramref name="repeats"/> calls after warm-up calls: at least two, at least 20 ms, and
    /// until the JIT has compiled nothing new for <see cref="JitQuietMilliseconds"/> (at most <see cref="MaxWarmUpMilliseconds"/>).
    /// </summary>
    /// <remarks>
    /// The warm-up time lets the threads of the side timed before settle (libgomp's OpenMP workers spin for a while after
    /// a libtorch op, on the core the next side's kernels want) and lets this side's own threads start. Waiting for the
    /// JIT measures the steady state a long-running program sees: the .NET runtime first runs a method's quick tier-0
    /// code and recompiles it optimized on a background thread after 30 calls and a 100 ms delay; timing during that
    /// compile took the second core from the kernels (batch-1 int4 calls measured 0.69 ms instead of 0.29-0.38 ms).
    /// </remarks>
    private static double Time(Func<Tensor> forward, int repeats, bool cold)
    {
        long warmUp = Stopwatch.GetTimestamp();
        var jit = JitQuiet.Start();
        for (int i = 0; ; i++)
        {
            forward().Dispose();
            bool quiet = jit.Observe() * 1000 >= JitQuietMilliseconds;
            double elapsed = Stopwatch.GetElapsedTime(warmUp).TotalMilliseconds;
            if (i >= 1 && elapsed >= 20 && (quiet || elapsed >= MaxWarmUpMilliseconds)) break;
        }
        var times = new double[Math.Max(1, repeats)];
        for (int i = 0; i < times.Length; i++)
        {
            if (cold) EvictCaches();
            long start = Stopwatch.GetTimestamp();
            forward().Dispose();
            times[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }
        Array.Sort(times);
        return times.Length % 2 == 1 ? times[times.Length / 2] : (times[times.Length / 2 - 1] + times[times.Length / 2]) / 2;
    }

    /// <summary>
    /// Bytes <see cref="EvictCaches"/> reads (<c>--evict-mib</c>): by default 256 MiB, several times the last-level cache
    /// a process sees on the machines measured (32 MiB).
    /// </summary>
    internal static long EvictionBytes { get; set; } = DefaultEvictionMib << 20;

    /// <summary>The default of <c>--evict-mib</c>.</summary>
    internal const int DefaultEvictionMib = 256;

    private static float[]? s_eviction;

    /// <summary>
    /// Reads <see cref="EvictionBytes"/> of memory on the kernel threads (<see cref="MemoryRead.OnKernelThreads"/>), so that
    /// the next call finds none of its weight in the caches, as a layer among others does in a model whose weights
    /// exceed them (<c>--cold</c>). Called right after itself a layer finds part of its weight still in L3: on the Zen 4
    /// VM of stop 54 a 4096x4096 int8 layer at batch 1 "read" its 16 MiB at 52.5 GB/s against 32.6 GB/s measured from
    /// memory (docs/BENCHMARKS.md).
    /// </summary>
    internal static unsafe void EvictCaches()
    {
        long floats = EvictionBytes / sizeof(float);
        if (s_eviction is null || s_eviction.LongLength != floats)
        {
            s_eviction = GC.AllocateArray<float>(checked((int)floats), pinned: true);
            s_eviction.AsSpan().Fill(1f); // touch every page once
        }
        s_evictionSum = MemoryRead.OnKernelThreads((float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(s_eviction)), floats).Sum;
    }

    /// <summary>What the last <see cref="EvictCaches"/> read, kept so that the reads are not optimized away.</summary>
    private static float s_evictionSum;

    /// <summary>
    /// Memory read bandwidth in GB/s: the best of three passes summing <paramref name="bytes"/> of memory on the kernels'
    /// threads (<see cref="KernelThreads"/>), the same access pattern as a batch-1 layer streaming its weight.
    /// </summary>
    public static unsafe double MemoryReadGbps(long bytes)
    {
        long floats = bytes / sizeof(float);
        float* buffer = (float*)NativeMemory.Alloc((nuint)floats, sizeof(float));
        try
        {
            new Span<float>(buffer, (int)Math.Min(floats, int.MaxValue)).Fill(1f); // touch every page first
            double best = 0;
            for (int pass = 0; pass < 3; pass++)
            {
                long start = Stopwatch.GetTimestamp();
                long read = MemoryRead.OnKernelThreads(buffer, floats).Floats;
                double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
                best = Math.Max(best, read * sizeof(float) / seconds / 1e9);
            }
            return best;
        }
        finally
        {
            NativeMemory.Free(buffer);
        }
    }
}
