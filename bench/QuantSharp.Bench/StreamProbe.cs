using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using QuantSharp.Kernels;

namespace QuantSharp.Bench;

/// <summary>
/// How fast can a batch-1 layer stream its weight from memory at best? <c>dotnet run -c Release --project
/// bench/QuantSharp.Bench -- stream-probe [REPEATS] [MIB...]</c> sums a buffer of each size (default 8, 16, 43 and 64 MiB:
/// a 4096x4096 int4 and int8 weight, 11008x4096 int8, 4096x4096 float32) on the kernels' threads, one contiguous half
/// each, after reading 256 MiB on the same threads as <c>quantsharp bench --cold</c> does ("cold"), and without
/// ("warm"), and prints the medians of REPEATS (default 30) calls in ms and GB/s; then the same with each thread reading
/// four rows of 4 KiB side by side, as the batch-1 row kernels read an int8 4096-column weight ("rows"). A cold kernel
/// call cannot beat the cold sum of its weight's bytes; the sum's own figures say what the memory gives this access.
/// </summary>
internal static unsafe class StreamProbe
{
    private const long EvictionBytes = 256L << 20;

    public static int Run(string[] args)
    {
        int repeats = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 30;
        var sizes = args.Length > 1 ? args[1..].Select(a => double.Parse(a, CultureInfo.InvariantCulture)).ToArray() : [8, 16, 43, 64];
        float* eviction = Allocate(EvictionBytes);
        try
        {
            Console.WriteLine($"threads {KernelThreads.Count}; medians of {repeats} calls");
            foreach (double mib in sizes)
            {
                long bytes = (long)(mib * (1 << 20)) / 16384 * 16384;
                float* buffer = Allocate(bytes);
                try
                {
                    foreach (bool rows in new[] { false, true })
                        foreach (bool cold in new[] { false, true })
                        {
                            double ms = Median(repeats, () =>
                            {
                                if (cold) Read(eviction, EvictionBytes, rows: false);
                                long start = Stopwatch.GetTimestamp();
                                Read(buffer, bytes, rows);
                                return Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                            });
                            Console.WriteLine(FormattableString.Invariant(
                                $"{mib,6:F1} MiB {(rows ? "rows" : "runs"),-4} {(cold ? "cold" : "warm")}: {ms:F3} ms, {bytes / ms / 1e6:F1} GB/s"));
                        }
                }
                finally
                {
                    NativeMemory.AlignedFree(buffer);
                }
            }
        }
        finally
        {
            NativeMemory.AlignedFree(eviction);
        }
        return 0;
    }

    private static float* Allocate(long bytes)
    {
        var p = (float*)NativeMemory.AlignedAlloc((nuint)bytes, 4096);
        for (long i = 0; i < bytes / sizeof(float); i += 1024) p[i] = 1f; // touch every page
        return p;
    }

    private static double Median(int repeats, Func<double> call)
    {
        for (int i = 0; i < 5; i++) call();
        var times = new double[repeats];
        for (int i = 0; i < repeats; i++) times[i] = call();
        Array.Sort(times);
        return times[repeats / 2];
    }

    private static float s_sink;

    /// <summary>Sums <paramref name="bytes"/> at <paramref name="p"/> on the kernel threads, each thread a contiguous share: read straight through (<see cref="MemoryRead"/>, as <c>quantsharp bench</c> reads), or (<paramref name="rows"/>) as four 4 KiB rows side by side.</summary>
    private static void Read(float* p, long bytes, bool rows)
    {
        if (!rows)
        {
            s_sink = MemoryRead.OnKernelThreads(p, bytes / sizeof(float)).Sum;
            return;
        }
        int threads = KernelThreads.Count;
        long share = bytes / threads / 16384 * 16384;
        nint address = (nint)p;
        var sums = new float[threads];
        KernelThreads.For(threads, share / sizeof(float), t =>
        {
            byte* start = (byte*)address + t * share;
            sums[t] = FourRows(start, share);
        });
        s_sink = sums.Sum();
    }

    /// <summary>Four 4 KiB rows at a time, 32 bytes of each per step, as the batch-1 int8 row kernels walk a 4096-column weight.</summary>
    private static float FourRows(byte* p, long bytes)
    {
        const int Row = 4096;
        Vector256<float> a = default, b = default, c = default, d = default;
        for (long r = 0; r + 4 * Row <= bytes; r += 4 * Row)
        {
            byte* r0 = p + r;
            for (int i = 0; i < Row; i += 32)
            {
                a += Vector256.Load((float*)(r0 + i));
                b += Vector256.Load((float*)(r0 + Row + i));
                c += Vector256.Load((float*)(r0 + 2 * Row + i));
                d += Vector256.Load((float*)(r0 + 3 * Row + i));
            }
        }
        return Vector256.Sum(a + b + c + d);
    }
}
