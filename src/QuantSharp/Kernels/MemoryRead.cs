using System.Runtime.Intrinsics;

namespace QuantSharp.Kernels;

/// <summary>
/// Reads memory on the kernels' threads as a batch-1 layer streams its weight: <c>quantsharp bench</c> measures the read
/// bandwidth and evicts the caches (<c>--cold</c>) with it, <c>QuantSharp.Bench stream-probe</c> times it.
/// </summary>
internal static unsafe class MemoryRead
{
    /// <summary>
    /// Sums the first <paramref name="count"/> floats of <paramref name="p"/> (rounded down to whole runs of 64 per
    /// thread), each kernel thread (<see cref="KernelThreads"/>) one contiguous run (below its parallel threshold, 2 MiB,
    /// the calling thread reads them all); returns the sum and the floats read. On those threads, not the thread pool's:
    /// while other threads read a 256 MiB eviction (about 8 ms at 35 GB/s), the kernels' OpenMP team most likely slept, and
    /// every cold call timed its wake-up too (batch-1 int4 on 4096x4096: medians of three processes 0.517 ms before,
    /// 0.446 after; docs/BENCHMARKS.md, stop 55); in a model the layers before keep the team awake.
    /// </summary>
    public static (float Sum, long Floats) OnKernelThreads(float* p, long count)
    {
        int threads = KernelThreads.Count;
        long perThread = count / threads / 64 * 64;
        nint address = (nint)p;
        var sums = new float[threads];
        KernelThreads.For(threads, perThread, t => sums[t] = Sum((float*)address + t * perThread, perThread));
        return (sums.Sum(), perThread * threads);
    }

    private static float Sum(float* p, long count)
    {
        Vector256<float> a = default, b = default, c = default, d = default;
        for (long i = 0; i + 32 <= count; i += 32)
        {
            a += Vector256.Load(p + i);
            b += Vector256.Load(p + i + 8);
            c += Vector256.Load(p + i + 16);
            d += Vector256.Load(p + i + 24);
        }
        return Vector256.Sum(a + b + c + d);
    }
}
