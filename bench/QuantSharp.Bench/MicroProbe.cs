using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using QuantSharp.Kernels;

namespace QuantSharp.Bench;

/// <summary>
/// The float micro-kernel of the packed GEMMs alone, on operands that stay in L1 (a tile of 8 decoded weight rows and
/// one packed strip of 32 positions, 256 reduction steps), at the widest float width here: how many multiply-adds a
/// core can do per second at best, to compare with the rate libtorch's float32 convolution reaches on a layer
/// (multiply-adds / time / threads). <c>dotnet QuantSharp.Bench.dll micro-probe [SECONDS]</c>: one thread, then one
/// loop per core at once (each on its own operands).
/// </summary>
internal static unsafe class MicroProbe
{
    private const int Steps = 256, Rows = 48, Lanes = 32;

    public static int Run(string[] args)
    {
        double seconds = args.Length > 0 ? double.Parse(args[0], System.Globalization.CultureInfo.InvariantCulture) : 1;
        if (args.Length > 1 && args[1] == "bfloat16") return BFloat16(seconds);
        Console.WriteLine($"Micro-kernel ({(Float512.IsSupported ? "512" : "256")}-bit, tiles of 8 rows x {Lanes} positions, {Steps} steps, operands in L1), {Environment.ProcessorCount} cores");
        foreach (int threads in new[] { 1, Environment.ProcessorCount })
        {
            for (int round = 0; round < 3; round++)
            {
                var rates = new double[threads];
                Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t => rates[t] = Loop(seconds));
                Console.WriteLine($"{threads} thread(s), round {round + 1}: {rates.Sum() / 1e9:F1} G multiply-adds/s in all, {rates.Average() / 1e9:F1} per thread");
            }
        }
        return 0;
    }

    /// <summary>
    /// <c>micro-probe SECONDS bfloat16</c>: the bfloat16 micro-kernel (<see cref="Vnni512Kernel.MicroBFloat16"/>, six rows,
    /// <c>vdpbf16ps</c>) on the same operand sizes (256 steps as 128 pairs), one thread then one per core.
    /// </summary>
    private static int BFloat16(double seconds)
    {
        if (!Vnni512Kernel.BFloat16Supported)
        {
            Console.WriteLine("No AVX512-BF16 micro-kernel on this CPU.");
            return 1;
        }
        Console.WriteLine($"bfloat16 micro-kernel (tiles of 6 rows x {Lanes} positions, {Steps} steps, operands in L1), {Environment.ProcessorCount} cores");
        foreach (int threads in new[] { 1, Environment.ProcessorCount })
        {
            for (int round = 0; round < 3; round++)
            {
                var rates = new double[threads];
                Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
                {
                    const int Pairs = Steps / 2, TileRows = 6, Tiles = Rows / TileRows;
                    uint* a = (uint*)NativeMemory.AlignedAlloc(4 * Rows * Pairs, 64);
                    uint* b = (uint*)NativeMemory.AlignedAlloc(4 * Lanes * Pairs, 64);
                    float* c = (float*)NativeMemory.AlignedAlloc(4 * Rows * Lanes, 64);
                    for (int i = 0; i < Rows * Pairs; i++) a[i] = 0x3C003C00u;
                    for (int i = 0; i < Lanes * Pairs; i++) b[i] = 0x3A803A80u;
                    new Span<float>(c, Rows * Lanes).Clear();
                    long calls = 0;
                    var watch = Stopwatch.StartNew();
                    while (watch.Elapsed.TotalSeconds < seconds)
                    {
                        for (int tile = 0; tile < Tiles; tile++)
                            Vnni512Kernel.MicroBFloat16(a + tile * TileRows * Pairs, Pairs * 4, b, Pairs, c + tile * TileRows * Lanes, Lanes * 4);
                        calls++;
                    }
                    rates[t] = (double)calls * Tiles * TileRows * Steps * Lanes / watch.Elapsed.TotalSeconds;
                    NativeMemory.AlignedFree(a);
                    NativeMemory.AlignedFree(b);
                    NativeMemory.AlignedFree(c);
                });
                Console.WriteLine($"{threads} thread(s), round {round + 1}: {rates.Sum() / 1e9:F1} G multiply-adds/s in all, {rates.Average() / 1e9:F1} per thread");
            }
        }
        return 0;
    }

    /// <summary>Multiply-adds per second (one per lane) of 8-row tiles over the strip, for about <paramref name="seconds"/>.</summary>
    private static double Loop(double seconds)
    {
        float* a = (float*)NativeMemory.AlignedAlloc(sizeof(float) * Rows * Steps, 64);
        float* b = (float*)NativeMemory.AlignedAlloc(sizeof(float) * Lanes * Steps, 64);
        float* c = (float*)NativeMemory.AlignedAlloc(sizeof(float) * Rows * Lanes, 64);
        try
        {
            for (int i = 0; i < Rows * Steps; i++) a[i] = 1e-3f * (i % 7);
            for (int i = 0; i < Lanes * Steps; i++) b[i] = 1e-3f * (i % 5);
            new Span<float>(c, Rows * Lanes).Clear();
            long calls = 0;
            var watch = Stopwatch.StartNew();
            while (watch.Elapsed.TotalSeconds < seconds)
            {
                for (int t = 0; t < Rows; t += 8)
                {
                    if (Float512.IsSupported)
                        MicroKernel.RunTile<FloatMicro<Float512, Vector512<float>>, Vector512<float>, float>(8, a + t * Steps, Steps, b, Steps, c + t * Lanes, Lanes);
                    else
                        MicroKernel.RunTile<FloatMicro<Float256, Vector256<float>>, Vector256<float>, float>(6, a + t * Steps, Steps, b, Steps, c + t * Lanes, Lanes);
                }
                calls++;
            }
            double tiles = Float512.IsSupported ? Rows : Rows / 8 * 6;
            return calls * tiles * Steps * (Float512.IsSupported ? Lanes : 16) / watch.Elapsed.TotalSeconds;
        }
        finally
        {
            NativeMemory.AlignedFree(a);
            NativeMemory.AlignedFree(b);
            NativeMemory.AlignedFree(c);
        }
    }
}
