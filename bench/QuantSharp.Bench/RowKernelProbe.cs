using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using QuantSharp.Kernels;
using QuantSharp.Modules;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Bench;

/// <summary>
/// Batch-1/8 row kernels alone and inside <see cref="QuantizedLinear"/>, on 1 and 2 threads, plus what the machine itself
/// scales: <c>dotnet run -c Release --project bench/QuantSharp.Bench -- row-kernels [calls]</c>. Reports the minimum
/// and the median of <c>calls</c> calls (default 200) after warm-up: minima are the figures to compare on a shared
/// machine, where other jobs only ever add time.
/// </summary>
internal static unsafe class RowKernelProbe
{
    public static int Run(string[] args)
    {
        int calls = args.Length > 0 ? int.Parse(args[0], System.Globalization.CultureInfo.InvariantCulture) : 200;
        Console.WriteLine($"load {File.ReadAllText("/proc/loadavg").Trim()}, {Environment.ProcessorCount} cores, {calls} calls per row");
        if (Environment.GetEnvironmentVariable("PROBE_KBLOCK") is { } kb) QuantizedMatMul.ReductionBlock = int.Parse(kb, System.Globalization.CultureInfo.InvariantCulture);
        if (Environment.GetEnvironmentVariable("PROBE_SCALING") != "0") Scaling();
        if (Environment.GetEnvironmentVariable("PROBE_SCALING_ONLY") == "1") return 0;
        if (Environment.GetEnvironmentVariable("PROBE_DISPATCH") != "0") Dispatch(calls * 10);
        var batches = (Environment.GetEnvironmentVariable("PROBE_BATCHES") ?? "1,8").Split(',').Select(int.Parse).ToArray();
        var threadCounts = (Environment.GetEnvironmentVariable("PROBE_THREADS") ?? "1,2").Split(',').Select(int.Parse).ToArray();
        var shapes = (Environment.GetEnvironmentVariable("PROBE_SHAPES") ?? "4096x4096,11008x4096").Split(',')
            .Select(t => t.Split('x')).Select(p => (int.Parse(p[0]), int.Parse(p[1]))).ToArray();
        foreach (var (n, k) in shapes)
            foreach (var format in new[] { WeightFormat.Int8, WeightFormat.Int4 })
                foreach (int m in batches)
                    foreach (int threads in threadCounts)
                        Kernel(n, k, format, m, threads, calls);
        if (Environment.GetEnvironmentVariable("PROBE_FLOAT") == "1") Float(batches, threadCounts, calls);
        if (Environment.GetEnvironmentVariable("PROBE_LAYER") == "1")
        {
            Layer(calls);
            Overhead(calls * 5);
        }
        KernelThreads.Count = 0;
        return 0;
    }

    /// <summary>A pure FMA loop and a pure memory-read loop, on 1 and then 2 threads started together.</summary>
    private static void Scaling()
    {
        const long ReadBytes = 256L << 20;
        float* buffer = (float*)NativeMemory.AlignedAlloc((nuint)ReadBytes, 64);
        new Span<float>(buffer, (int)(ReadBytes / 4)).Fill(1f);
        foreach (int threads in new[] { 1, 2 })
        {
            var (compute, computeCpu) = BestOf(5, threads, t => Compute(20_000_000));
            long per = ReadBytes / 4 / threads;
            var (read, readCpu) = BestOf(5, threads, t => Read(buffer + t * per, per));
            Console.WriteLine($"scaling threads={threads}: FMA loop {threads * 20_000_000.0 * 8 * 16 * 2 / compute / 1e9:0.0} GFLOP/s ({compute * 1e3:0.0} ms wall, "
                + $"{computeCpu * 1e3:0.0} ms CPU per thread: {20_000_000.0 * 8 * 16 * 2 / computeCpu / 1e9:0.0} GFLOP/s per thread while running), "
                + $"read {ReadBytes / read / 1e9:0.0} GB/s ({read * 1e3:0.00} ms wall, {readCpu * 1e3:0.00} ms CPU per thread: {ReadBytes / threads / readCpu / 1e9:0.0} GB/s per thread while running)");
        }
        NativeMemory.AlignedFree(buffer);
    }

    /// <summary>Best wall time of <paramref name="passes"/> runs of <paramref name="body"/> on threads started together, and the best per-thread CPU time.</summary>
    internal static (double Wall, double Cpu) BestOf(int passes, int threads, Action<int> body)
    {
        double best = double.MaxValue, bestCpu = double.MaxValue;
        for (int p = 0; p < passes; p++)
        {
            using var barrier = new Barrier(threads);
            var ts = new Thread[threads];
            var elapsed = new double[threads];
            var cpu = new double[threads];
            for (int t = 0; t < threads; t++)
            {
                int id = t;
                ts[t] = new Thread(() =>
                {
                    barrier.SignalAndWait();
                    long start = Stopwatch.GetTimestamp();
                    double cpuStart = ThreadCpuMs();
                    body(id);
                    elapsed[id] = Stopwatch.GetElapsedTime(start).TotalSeconds;
                    cpu[id] = (ThreadCpuMs() - cpuStart) / 1e3;
                });
                ts[t].Start();
            }
            foreach (var t in ts) t.Join();
            best = Math.Min(best, elapsed.Max());
            bestCpu = Math.Min(bestCpu, cpu.Max());
        }
        return (best, bestCpu);
    }

    internal static float Compute(int iterations)
    {
        var a = Vector512.Create(1f); var b = a; var c = a; var d = a; var e = a; var f = a; var g = a; var h = a;
        var x = Vector512.Create(0.999999f);
        var y = Vector512.Create(1e-7f);
        for (int i = 0; i < iterations; i++)
        {
            a = Vector512.FusedMultiplyAdd(a, x, y); b = Vector512.FusedMultiplyAdd(b, x, y);
            c = Vector512.FusedMultiplyAdd(c, x, y); d = Vector512.FusedMultiplyAdd(d, x, y);
            e = Vector512.FusedMultiplyAdd(e, x, y); f = Vector512.FusedMultiplyAdd(f, x, y);
            g = Vector512.FusedMultiplyAdd(g, x, y); h = Vector512.FusedMultiplyAdd(h, x, y);
        }
        return Vector512.Sum(a + b + c + d + e + f + g + h);
    }

    private static float Read(float* p, long count)
    {
        Vector512<float> a = default, b = default, c = default, d = default;
        for (long i = 0; i + 64 <= count; i += 64)
        {
            a += Vector512.Load(p + i); b += Vector512.Load(p + i + 16);
            c += Vector512.Load(p + i + 32); d += Vector512.Load(p + i + 48);
        }
        return Vector512.Sum(a + b + c + d);
    }

    /// <summary>The cost of handing an (almost) empty job to two threads: <see cref="KernelThreads.For"/> and raw <see cref="Parallel.For(int, int, Action{int})"/>.</summary>
    private static void Dispatch(int calls)
    {
        KernelThreads.Count = 2;
        var sink = new int[64];
        Report("dispatch KernelThreads.For(2 items)", calls, () => KernelThreads.For(2, 1 << 20, i => sink[i * 16]++));
        Report("dispatch KernelThreads.For(64 items)", calls, () => KernelThreads.For(64, 1 << 20, i => sink[(i & 3) * 16]++));
        KernelThreads.Count = 0;
    }

    private static void Kernel(int n, int k, WeightFormat format, int m, int threads, int calls)
    {
        bool packed = WeightView.IsPacked(format);
        int group = packed ? 128 : k;
        long bytes = packed ? (long)n * k / 2 : (long)n * k;
        byte* data = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
        var random = new Random(1);
        random.NextBytes(new Span<byte>(data, (int)bytes));
        int scales = n * (k / group);
        float* scale = (float*)NativeMemory.Alloc((nuint)scales, 4);
        for (int i = 0; i < scales; i++) scale[i] = 0.01f + i % 7 * 0.001f;
        int ldx = k + int.Parse(Environment.GetEnvironmentVariable("PROBE_PAD") ?? "0");
        float* x = (float*)NativeMemory.AlignedAlloc((nuint)(m * ldx * 4), 64);
        for (int i = 0; i < m * ldx; i++) x[i] = (float)(random.NextDouble() - 0.5);
        float* y = (float*)NativeMemory.AlignedAlloc((nuint)(m * n * 4), 64);
        var view = new WeightView(format, n, k, data, group, scale);
        KernelThreads.Count = threads;
        double weightBytes = bytes + scales * 4.0;
        var (min, median) = Report($"kernel {n}x{k} {format} g{group} batch {m} threads {threads}", calls,
            () => QuantizedMatMul.Run(view, x, m, ldx, null, y, n, method: MatMulMethod.Rows), weightBytes);
        _ = (min, median);
        KernelThreads.Count = 0;
        NativeMemory.AlignedFree(data);
        NativeMemory.Free(scale);
        NativeMemory.AlignedFree(x);
        NativeMemory.AlignedFree(y);
    }

    /// <summary>TorchSharp float32 and bfloat16 <c>Linear</c> on both shapes (the denominators of the bench's ratios).</summary>
    private static void Float(int[] batches, int[] threadCounts, int calls)
    {
        using var noGrad = no_grad();
        foreach (var (n, k) in new[] { (4096, 4096), (11008, 4096) })
        {
            using var linear = nn.Linear(k, n);
            using var bf16 = nn.Linear(k, n, dtype: ScalarType.BFloat16);
            foreach (int m in batches)
            {
                using var x = torch.randn(m, k);
                using var xb = x.to(ScalarType.BFloat16);
                foreach (int threads in threadCounts)
                {
                    torch.set_num_threads(threads);
                    Report($"float32 Linear {n}x{k} batch {m} threads {threads}", calls, () => linear.call(x).Dispose());
                    Report($"bfloat16 Linear {n}x{k} batch {m} threads {threads}", calls, () => bf16.call(xb).Dispose());
                }
            }
        }
    }

    /// <summary>The whole layer at batch 1 (2 threads) against the kernel alone, with and without a float Linear before each call.</summary>
    private static void Layer(int calls)
    {
        using var noGrad = no_grad();
        torch.set_num_threads(2);
        KernelThreads.Count = 2;
        foreach (var (format, spec) in new[]
        {
            ("int8", new QuantSpec(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0))),
            ("int4", new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(128))),
        })
        {
            torch.manual_seed(0);
            using var linear = nn.Linear(4096, 4096);
            using var quantized = new QuantizedLinear(QuantizedWeight.Quantize(linear.weight!, spec), linear.bias);
            using var x = torch.randn(1, 4096);
            Report($"layer 4096x4096 {format} batch 1 threads 2", calls, () => quantized.call(x).Dispose());
            Report($"float32 Linear 4096x4096 batch 1 threads 2", calls, () => linear.call(x).Dispose());
            // libtorch's OpenMP workers spin for a while after each float op (libgomp's default wait policy): the
            // quantized call timed right after one competes with them for the second core.
            using var xb = torch.randn(1, 4096).to(ScalarType.BFloat16);
            using var bf16 = nn.Linear(4096, 4096, dtype: ScalarType.BFloat16);
            ReportAfter($"layer 4096x4096 {format} right after a bfloat16 Linear", calls, () => bf16.call(xb).Dispose(), () => quantized.call(x).Dispose());
            ReportAfter($"layer 4096x4096 {format} 20 ms after a bfloat16 Linear", calls, () =>
            {
                bf16.call(xb).Dispose();
                Thread.Sleep(20);
            }, () => quantized.call(x).Dispose());
        }
        KernelThreads.Count = 0;
    }

    /// <summary>The fixed cost of one <see cref="QuantizedLinear"/> call: a 16x256 layer (no work) and its steps one by one.</summary>
    private static void Overhead(int calls)
    {
        using var noGrad = no_grad();
        KernelThreads.Count = 2;
        torch.manual_seed(0);
        using var linear = nn.Linear(256, 16);
        var spec = new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(128));
        using var quantized = new QuantizedLinear(QuantizedWeight.Quantize(linear.weight!, spec), linear.bias);
        using var x = torch.randn(1, 256);
        Report("overhead: whole 16x256 int4 layer", calls, () => quantized.call(x).Dispose());
        Report("overhead: bias getter", calls, () => quantized.bias?.Dispose());
        Report("overhead: torch.empty(1, 4096)", calls, () => torch.empty([1, 4096], ScalarType.Float32).Dispose());
        Report("overhead: x.to(float32).reshape.contiguous", calls, () =>
        {
            using var scope = NewDisposeScope();
            _ = x.to(ScalarType.Float32).reshape(1, 256).contiguous();
        });
        Report("overhead: empty dispose scope", calls, () => { using var scope = NewDisposeScope(); });
        Report("overhead: x.bytes", calls, () => _ = x.bytes.Length);
        KernelThreads.Count = 0;
    }

    /// <summary>Times <paramref name="body"/> alone, each time right after <paramref name="before"/> (untimed).</summary>
    private static void ReportAfter(string what, int calls, Action before, Action body)
    {
        var times = new double[calls];
        for (int i = 0; i < calls; i++)
        {
            before();
            long start = Stopwatch.GetTimestamp();
            body();
            times[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }
        Array.Sort(times);
        Console.WriteLine($"{what}: min {times[0]:0.000} ms, median {times[calls / 2]:0.000} ms");
    }

    private static (double Min, double Median) Report(string what, int calls, Action body, double bytes = 0)
    {
        for (int i = 0; i < Math.Max(3, calls / 10); i++) body();
        var times = new double[calls];
        var cpu = new double[calls];
        for (int i = 0; i < calls; i++)
        {
            double cpuStart = ThreadCpuMs();
            long start = Stopwatch.GetTimestamp();
            body();
            times[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            cpu[i] = ThreadCpuMs() - cpuStart;
        }
        Array.Sort(times);
        Array.Sort(cpu);
        double min = times[0], median = times[calls / 2];
        string gbps = bytes > 0 ? $", {bytes / (min * 1e6):0.0} GB/s at the minimum" : "";
        Console.WriteLine($"{what}: min {min:0.000} ms, median {median:0.000} ms{gbps}; calling thread CPU min {cpu[0]:0.000} median {cpu[calls / 2]:0.000} ms");
        return (min, median);
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct TimeSpec
    {
        public long Seconds, Nanoseconds;
    }

    [DllImport("libc", EntryPoint = "clock_gettime")]
    private static extern int ClockGetTime(int clock, out TimeSpec time);

    /// <summary>CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID): time it was descheduled does not count.</summary>
    private static double ThreadCpuMs()
    {
        ClockGetTime(3, out var t);
        return t.Seconds * 1e3 + t.Nanoseconds / 1e6;
    }
}
