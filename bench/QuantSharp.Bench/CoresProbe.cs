using System.Diagnostics;
using System.Globalization;
using System.Runtime.Intrinsics;

namespace QuantSharp.Bench;

/// <summary>
/// Does the machine's second processor run at full speed while the first is busy? <c>dotnet run -c Release --project
/// bench/QuantSharp.Bench -- cores-probe [WINDOWS]</c> times a fixed loop of multiply-adds on independent registers (no
/// memory traffic) on one thread, then the same loop on two threads at once, in WINDOWS windows (default 60) 0.2 s
/// apart, and prints each window's two times and their ratio, then how many windows took more than 1.2x. Two real cores
/// give about 1.0 in every window. On a VM whose two vCPUs the host sometimes runs on one core's two hardware threads
/// (or time-slices), windows of up to 2.0 appear, invisible to the guest (no steal time): the "slow state" of two-thread
/// routes in docs/BENCHMARKS.md (stop 54 measured it on the Zen 4 VM).
/// </summary>
internal static class CoresProbe
{
    private const long Iterations = 20_000_000;

    public static int Run(string[] args)
    {
        int windows = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 60;
        Loop(1000);
        var ratios = new List<double>();
        for (int w = 0; w < windows; w++)
        {
            var clock = Stopwatch.StartNew();
            Loop(Iterations);
            double one = clock.Elapsed.TotalMilliseconds;
            clock.Restart();
            var other = new Thread(() => Loop(Iterations));
            other.Start();
            Loop(Iterations);
            other.Join();
            double two = clock.Elapsed.TotalMilliseconds;
            ratios.Add(two / one);
            Console.WriteLine(FormattableString.Invariant($"window {w}: one thread {one:F1} ms, two threads {two:F1} ms, ratio {two / one:F2}"));
            Thread.Sleep(200);
        }
        ratios.Sort();
        Console.WriteLine(FormattableString.Invariant(
            $"{windows} windows: ratio min {ratios[0]:F2}, median {ratios[ratios.Count / 2]:F2}, max {ratios[^1]:F2}; above 1.2 in {ratios.Count(r => r > 1.2)}"));
        return 0;
    }

    /// <summary>Eight independent chains of multiply-adds: compute-bound, the result kept so the loop is not removed.</summary>
    private static float Loop(long iterations)
    {
        var a = Vector256.Create(1.0001f);
        var b = Vector256.Create(0.9999f);
        Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default, s4 = default, s5 = default, s6 = default, s7 = default;
        for (long i = 0; i < iterations; i++)
        {
            s0 = Vector256.FusedMultiplyAdd(s0, a, b); s1 = Vector256.FusedMultiplyAdd(s1, a, b);
            s2 = Vector256.FusedMultiplyAdd(s2, a, b); s3 = Vector256.FusedMultiplyAdd(s3, a, b);
            s4 = Vector256.FusedMultiplyAdd(s4, a, b); s5 = Vector256.FusedMultiplyAdd(s5, a, b);
            s6 = Vector256.FusedMultiplyAdd(s6, a, b); s7 = Vector256.FusedMultiplyAdd(s7, a, b);
        }
        return (s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7).GetElement(0);
    }
}
