using System.Diagnostics;
using QuantSharp.Kernels;
using TorchSharp;

namespace QuantSharp.Modules;

/// <summary>
/// The route one <see cref="QuantizedConv"/> keeps per input shape under <see cref="QuantizedConv.Autotune"/>, and the
/// measurement that picks it: on the first call with a shape, every applicable route runs on that call's input, round
/// robin (so drift in the machine's speed reaches them alike), first one call each to warm up, then
/// <see cref="TimedRounds"/> timed rounds of a block of calls each; the route with the lowest median time is kept if it
/// beats the first candidate, the measured rule's route, by <see cref="RuleMargin"/>, else the rule's. Ties go to the
/// earlier candidate. Shapes are kept apart by whether the bfloat16 route may run (its switch can change between calls).
/// </summary>
/// <remarks>
/// The warm-up runs until the JIT has compiled nothing for <see cref="QuietSeconds"/> and each route has run
/// <see cref="WarmupRounds"/> times (or for <see cref="WarmupSeconds"/>, for slow calls), and at most
/// <see cref="MaxWarmupSeconds"/>. Timing the first few calls instead chose wrongly: .NET runs a method's first calls in
/// unoptimized code and recompiles it only after 30 calls counted from 100 ms after the last such compilation, and
/// libtorch's first calls of a shape are slow too; from a cold start the stem's static W8A8 call (3->32, stride 2,
/// 224x224) at batch 1 took 651-854 us through the integer route in its second to sixth calls, where it takes about
/// 160 us warm, and lost to libtorch's route (docs/BENCHMARKS.md, stop 34). Up to <see cref="MaxShapes"/> shapes per layer are tuned; later
/// shapes keep the rule. One thread tunes a layer at a time; other calls of the layer wait for it.
/// </remarks>
internal sealed class ConvolutionTuner
{
    /// <summary>Timed rounds after the warm-up, a block of calls of each route per round (the median of each route's block times decides).</summary>
    internal const int TimedRounds = 9;

    /// <summary>Input shapes tuned per layer; calls on further shapes take the rule.</summary>
    internal const int MaxShapes = 64;

    /// <summary>Warm-up rounds (each route called once) enough for fast calls, as the repository's benches warm up (50 calls).</summary>
    internal static int WarmupRounds = 50;

    /// <summary>Warm-up time enough for slow calls (at least three rounds).</summary>
    internal static double WarmupSeconds = 1;

    /// <summary>The JIT must have compiled nothing for this long before the timing starts.</summary>
    internal static double QuietSeconds = 0.25;

    /// <summary>The warm-up ends after this long even if the JIT never falls quiet (other threads compiling).</summary>
    internal static double MaxWarmupSeconds = 5;

    /// <summary>A timed block of calls of one route lasts about this long (by the warm-up's last calls) ...</summary>
    internal const double BlockSeconds = 0.005;

    /// <summary>... and has at most this many calls (the conv bench's blocks).</summary>
    internal static int MaxBlockCalls = 20;

    /// <summary>
    /// Another route replaces the first candidate (the measured rule's) only when its median time is below this fraction
    /// of the rule's: nine short blocks a route tell routes a few percent apart only by chance (the rule rests on many paired
    /// runs), and a route picked by chance is as good as the rule.
    /// </summary>
    internal const double RuleMargin = 0.95;

    /// <summary>For tests: replaces a timed block's measured time per call (in <see cref="Stopwatch"/> ticks) by this route's value.</summary>
    internal static Func<ConvolutionRoute, long>? TestTicks;

    private readonly Dictionary<(long, long, long, long, bool), ConvolutionRoute> _kept = [];
    private readonly Lock _gate = new();

    /// <summary>
    /// The route for a call on images <paramref name="shape"/> <c>[n, C, H, W]</c> (<paramref name="bfloat16"/>: whether
    /// the bfloat16 route may run): the one kept for the shape, measured now (<see cref="Measure"/>, running each of
    /// <paramref name="candidates"/>' routes through <paramref name="run"/>) if there is none yet, or
    /// <see cref="ConvolutionRoute.Auto"/> (the rule) for a shape beyond <see cref="MaxShapes"/>.
    /// <paramref name="candidates"/> gives the distinct applicable routes (at least one), the rule's first.
    /// </summary>
    public ConvolutionRoute Route(long[] shape, bool bfloat16, Func<ConvolutionRoute[]> candidates, Func<ConvolutionRoute, torch.Tensor> run)
    {
        var key = (shape[0], shape[1], shape[2], shape[3], bfloat16);
        lock (_gate)
        {
            if (_kept.TryGetValue(key, out var kept)) return kept;
            if (_kept.Count >= MaxShapes) return ConvolutionRoute.Auto;
            var routes = candidates();
            kept = routes.Length == 1 ? routes[0] : Measure(routes, run);
            _kept[key] = kept;
            return kept;
        }
    }

    /// <summary>The route kept for images <paramref name="shape"/> with the bfloat16 route allowed or not, or null.</summary>
    public ConvolutionRoute? Kept(long[] shape, bool bfloat16)
    {
        lock (_gate) return _kept.TryGetValue((shape[0], shape[1], shape[2], shape[3], bfloat16), out var kept) ? kept : null;
    }

    /// <summary>Warms <paramref name="routes"/> up and times them (see the class); returns the one kept.</summary>
    internal static ConvolutionRoute Measure(ConvolutionRoute[] routes, Func<ConvolutionRoute, torch.Tensor> run)
    {
        var clock = Stopwatch.StartNew();
        var jit = JitQuiet.Start();
        var last = new long[routes.Length];
        for (int round = 1; ; round++)
        {
            for (int i = 0; i < routes.Length; i++)
            {
                long start = Stopwatch.GetTimestamp();
                run(routes[i]).Dispose();
                last[i] = Stopwatch.GetTimestamp() - start;
            }
            double now = clock.Elapsed.TotalSeconds, quiet = jit.Observe();
            bool warm = round >= WarmupRounds || (round >= 3 && now >= WarmupSeconds);
            if ((warm && quiet >= QuietSeconds) || (round >= 3 && now >= MaxWarmupSeconds)) break;
        }
        // Blocks of calls of one route, as the conv bench times them: a call right after another route's ran at another
        // speed (the stem at batch 1: its small kernel looked faster than libtorch's route in single calls taken in
        // turn, and was slower in blocks, docs/BENCHMARKS.md, stop 34).
        int block = (int)Math.Clamp(BlockSeconds * Stopwatch.Frequency / Math.Max(1, last.Min()), 1, MaxBlockCalls);
        var ticks = routes.Select(_ => new double[TimedRounds]).ToArray();
        for (int round = 0; round < TimedRounds; round++)
        {
            for (int i = 0; i < routes.Length; i++)
            {
                long start = Stopwatch.GetTimestamp();
                for (int call = 0; call < block; call++) run(routes[i]).Dispose();
                double perCall = (Stopwatch.GetTimestamp() - start) / (double)block;
                ticks[i][round] = TestTicks is { } fake ? fake(routes[i]) : perCall;
            }
        }
        int best = 0;
        for (int i = 1; i < routes.Length; i++)
            if (Median(ticks[i]) < Median(ticks[best])) best = i;
        return Median(ticks[best]) < RuleMargin * Median(ticks[0]) ? routes[best] : routes[0];
    }

    private static double Median(double[] ticks)
    {
        var sorted = ticks.Order().ToArray();
        int m = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[m] : (sorted[m - 1] + sorted[m]) / 2;
    }
}
