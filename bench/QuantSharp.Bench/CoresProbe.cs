using System.Globalization;

namespace QuantSharp.Bench;

/// <summary>
/// Does the machine's second processor run at full speed while the first is busy? <c>dotnet run -c Release --project
/// bench/QuantSharp.Bench -- cores-probe [WINDOWS]</c> times <see cref="RowKernelProbe"/>'s loop of multiply-adds on
/// independent registers (no memory traffic) on one thread, then on two threads started together, once per window, in
/// WINDOWS windows (default 60) 0.2 s apart, and prints each window's two times and their ratio, then how many windows
/// took more than 1.2x. Two real cores give about 1.0 in every window. Its first version (a 256-bit loop, the second
/// thread created while the first was already computing) read up to 2x in about half the windows on the Zen 4 VM, most
/// of it the probe's own doing; this one read above 1.2x in 2-5 windows of 60 there (docs/BENCHMARKS.md, stop 54).
/// <c>row-kernels</c> runs the same loop too, but keeps the best of five passes, which hides those windows.
/// </summary>
internal static class CoresProbe
{
    private const int Iterations = 20_000_000;

    public static int Run(string[] args)
    {
        int windows = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 60;
        RowKernelProbe.Compute(1000);
        var ratios = new List<double>();
        for (int w = 0; w < windows; w++)
        {
            double one = RowKernelProbe.BestOf(1, 1, _ => RowKernelProbe.Compute(Iterations)).Wall * 1e3;
            double two = RowKernelProbe.BestOf(1, 2, _ => RowKernelProbe.Compute(Iterations)).Wall * 1e3;
            ratios.Add(two / one);
            Console.WriteLine(FormattableString.Invariant($"window {w}: one thread {one:F1} ms, two threads {two:F1} ms, ratio {two / one:F2}"));
            Thread.Sleep(200);
        }
        ratios.Sort();
        Console.WriteLine(FormattableString.Invariant(
            $"{windows} windows: ratio min {ratios[0]:F2}, median {ratios[ratios.Count / 2]:F2}, max {ratios[^1]:F2}; above 1.2 in {ratios.Count(r => r > 1.2)}"));
        return 0;
    }
}
