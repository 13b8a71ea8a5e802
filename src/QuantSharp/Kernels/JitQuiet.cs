using System.Diagnostics;
using System.Runtime;

namespace QuantSharp.Kernels;

/// <summary>
/// How long the JIT has compiled nothing, as seen at each <see cref="Observe"/>: the warm-ups that time code wait for it
/// (.NET runs a method's first calls in quick tier-0 code and recompiles it optimized on a background thread after 30
/// calls and a 100 ms delay, so timing before it settles measures code a long-running program never runs).
/// </summary>
internal struct JitQuiet
{
    private long _compiled;
    private long _lastCompile;

    /// <summary>Starts watching now (the clock of <see cref="Observe"/> starts at the last compilation seen, now).</summary>
    public static JitQuiet Start() => new() { _compiled = JitInfo.GetCompiledMethodCount(), _lastCompile = Stopwatch.GetTimestamp() };

    /// <summary>Seconds since the compiled-method count last changed between observations (0 if it just did).</summary>
    public double Observe()
    {
        long now = Stopwatch.GetTimestamp(), count = JitInfo.GetCompiledMethodCount();
        if (count != _compiled) (_compiled, _lastCompile) = (count, now);
        return Stopwatch.GetElapsedTime(_lastCompile, now).TotalSeconds;
    }
}
