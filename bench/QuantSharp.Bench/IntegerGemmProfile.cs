using System.Diagnostics;
using System.Runtime.InteropServices;
using QuantSharp.Kernels;
using QuantSharp.Modules;
using QuantSharp.Primitives;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Bench;

/// <summary>
/// The W8A8 large-batch GEMM against libtorch's bfloat16 <c>Linear</c> in one process, interleaved, on 1 and 2 threads:
/// <c>-- int-gemm-profile [OUTxIN ...] [--batches 64,512] [--threads 1,2] [--repeats 7]</c>. Prints, per row, the median
/// milliseconds and GMAC/s of the bf16 <c>Linear</c>, the whole W8A8 dynamic layer, its activation quantization alone
/// and the integer GEMM alone (<see cref="IntegerMatMul.Run"/> on already quantized activations). <c>--cpu-time</c>
/// measures the calling thread's CPU time instead of wall time (meaningful with <c>--threads 1</c> only);
/// <c>--packed-min-rows N</c> sets where the packed GEMM takes over from the row kernels (1: always, 1000: never);
/// <c>--micro</c> times the micro-kernels alone.
/// </summary>
internal static unsafe class IntegerGemmProfile
{
    public static int Run(string[] args)
    {
        var shapes = new List<(long Out, long In)>();
        int[] batches = [64, 512], threads = [1, 2];
        int repeats = 7;
        for (int a = 0; a < args.Length; a++)
        {
            switch (args[a])
            {
                case "--batches": batches = args[++a].Split(',').Select(int.Parse).ToArray(); break;
                case "--threads": threads = args[++a].Split(',').Select(int.Parse).ToArray(); break;
                case "--repeats": repeats = int.Parse(args[++a]); break;
                case "--cpu-time": s_cpuTime = true; break;
                case "--packed-min-rows": IntegerMatMul.PackedMinRows = IntegerMatMul.PackedMinRowsVnni512 = IntegerMatMul.PackedMinRowsMadd256 = int.Parse(args[++a]); break;
                case "--micro": return MicroPeak();
                default:
                    var p = args[a].Split('x');
                    shapes.Add((long.Parse(p[0]), long.Parse(p[1])));
                    break;
            }
        }
        if (shapes.Count == 0) shapes.Add((4096, 4096));
        using var noGrad = no_grad();
        Console.WriteLine($"load {File.ReadAllText("/proc/loadavg").Split(' ')[0]}");
        Console.WriteLine("| shape | batch | threads | bf16 Linear ms | W8A8 layer ms | quantize ms | GEMM ms | bf16 GMAC/s/core | layer GMAC/s/core | GEMM GMAC/s/core | layer vs bf16 |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var (n, k) in shapes)
        {
            using var scope = NewDisposeScope();
            torch.manual_seed(0);
            using var linear = nn.Linear(k, n);
            var spec = new QuantSpec(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0));
            using var layer = new QuantizedLinear(QuantizedWeight.Quantize(linear.weight!, spec), linear.bias) { DynamicInput = true };
            using var bf16 = nn.Linear(k, n, dtype: ScalarType.BFloat16);
            var parts = QuantizedTensor.Quantize(linear.weight!.detach(), spec);
            var data = parts.Data.contiguous();
            var scales = parts.Scale!.to(ScalarType.Float32).contiguous();
            foreach (int m in batches)
            {
                var x = torch.randn(m, k);
                var xb = x.to(ScalarType.BFloat16);
                var y = torch.empty(m, n);
                using var q = new QuantizedActivations(m, (int)k);
                foreach (int t in threads)
                {
                    torch.set_num_threads(t);
                    KernelThreads.Count = t;
                    var times = new List<double>[4];
                    for (int i = 0; i < 4; i++) times[i] = [];
                    for (int r = -2; r < repeats; r++)
                    {
                        Add(times[0], r, () => bf16.call(xb).Dispose());
                        Add(times[1], r, () => layer.call(x).Dispose());
                        fixed (byte* px = x.bytes, pd = data.bytes, ps = scales.bytes, py = y.bytes)
                        {
                            float* xp = (float*)px, yp = (float*)py;
                            var view = new WeightView(WeightFormat.Int8, (int)n, (int)k, pd, (int)k, (float*)ps);
                            Add(times[2], r, () => IntegerMatMul.QuantizeDynamic(xp, (nint)k, q));
                            Add(times[3], r, () => IntegerMatMul.Run(view, q, null, yp, (nint)n));
                        }
                    }
                    double[] med = times.Select(Median).ToArray();
                    double macs = (double)m * n * k;
                    double G(double ms) => macs / (ms * 1e6) / t;
                    Console.WriteLine($"| {n}x{k} | {m} | {t} | {med[0]:0.00} | {med[1]:0.00} | {med[2]:0.00} | {med[3]:0.00} | {G(med[0]):0} | {G(med[1]):0} | {G(med[3]):0} | {med[0] / med[1]:0.00}x |");
                }
            }
        }
        Console.WriteLine($"load {File.ReadAllText("/proc/loadavg").Split(' ')[0]}");
        return 0;
    }

    /// <summary>Adds the call's milliseconds: wall time, or with <see cref="s_cpuTime"/> the calling thread's CPU time
    /// (single-threaded runs execute on the calling thread, so this is robust to other processes' load).</summary>
    /// <summary>The micro-kernels alone on L1-resident data (6 x 128 groups of weights, one strip): their GMAC/s per core.</summary>
    private static int MicroPeak()
    {
        const int Groups = 128;
        byte* a = (byte*)NativeMemory.AlignedAlloc(6 * Groups * 4, 64), b = (byte*)NativeMemory.AlignedAlloc(Groups * 128, 64);
        int* c = (int*)NativeMemory.AlignedAlloc(6 * 32 * 4, 64);
        new Span<byte>(a, 6 * Groups * 4).Fill(1);
        new Span<byte>(b, Groups * 128).Fill(2);
        for (int rep = 0; rep < 5; rep++)
        {
            const int Calls = 200_000;
            double cpu0 = ThreadCpuMs();
            for (int i = 0; i < Calls; i++) MicroKernel.Run<GemmVnni256, System.Runtime.Intrinsics.Vector256<int>, int, Six>((int*)a, Groups, (int*)b, Groups, c, 16);
            double ms = ThreadCpuMs() - cpu0;
            Console.Write($"micro-kernel, 256-bit AVX-VNNI: {(double)Calls * Groups * 4 * 6 * 16 / (ms * 1e6):0} GMAC/s");
            if (Vnni512Kernel.IsSupported)
            {
                cpu0 = ThreadCpuMs();
                for (int i = 0; i < Calls; i++) Vnni512Kernel.Micro(a, Groups * 4, b, Groups, c, 32 * 4);
                ms = ThreadCpuMs() - cpu0;
                Console.Write($"; generated 512-bit AVX512-VNNI: {(double)Calls * Groups * 4 * 6 * 32 / (ms * 1e6):0} GMAC/s");
            }
            Console.WriteLine(" (thread CPU time)");
        }
        return 0;
    }

    private static void Add(List<double> into, int repeat, Action call)
    {
        long start = Stopwatch.GetTimestamp();
        double cpu0 = ThreadCpuMs();
        call();
        double ms = s_cpuTime ? ThreadCpuMs() - cpu0 : Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        if (repeat >= 0) into.Add(ms);
    }

    private static bool s_cpuTime;

    [StructLayout(LayoutKind.Sequential)]
    private struct TimeSpec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [DllImport("libc", EntryPoint = "clock_gettime")]
    private static extern int ClockGetTime(int clock, out TimeSpec time);

    private static double ThreadCpuMs()
    {
        const int ClockThreadCpuTime = 3;
        ClockGetTime(ClockThreadCpuTime, out var t);
        return t.Seconds * 1e3 + t.Nanoseconds / 1e6;
    }

    private static double Median(List<double> xs)
    {
        var s = xs.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }
}
