using System.Diagnostics;
using System.Globalization;
using QuantSharp.Kernels;

namespace QuantSharp.Bench;

/// <summary>
/// <c>pack-probe [C H W K PAD STRIDE]</c>: one thread packs every strip of one image (<see cref="Im2Col.PackStrip"/>,
/// 32 lanes, the packed GEMM's operand at 512 bits) for 2 s, and prints the time per strip and per 8-lane chunk;
/// <c>PACK_COPY=1</c> also times a plain copy of as many bytes (from a source of a strip's size).
/// </summary>
internal static unsafe class PackProbe
{
    public static int Run(string[] args)
    {
        int[] a = args.Length >= 6 ? args.Take(6).Select(int.Parse).ToArray() : [64, 56, 56, 3, 1, 1];
        var u = new Im2Col(a[0], a[1], a[2], a[3], a[3], a[5], a[5], a[4], a[4], 1, 1);
        const int width = 32;
        var image = new float[u.ImageSize];
        for (int i = 0; i < image.Length; i++) image[i] = i % 7;
        int strips = (u.Positions + width - 1) / width;
        var strip = new float[u.Rows * width];
        long packed = 0;
        var sw = Stopwatch.StartNew();
        fixed (float* px = image) fixed (float* ps = strip)
        {
            while (sw.ElapsedMilliseconds < 2000)
            {
                for (int s = 0; s < strips; s++) u.PackStrip(px, s * width, Math.Min(width, u.Positions - s * width), width, ps);
                packed += strips;
            }
        }
        double ns = sw.Elapsed.TotalNanoseconds / packed;
        if (Environment.GetEnvironmentVariable("PACK_COPY") == "1")
        {
            // The same number of bytes as a plain copy from a source of a strip's size, for the store side's cost.
            var source = new float[strip.Length];
            long copies = 0;
            sw.Restart();
            fixed (float* px = source) fixed (float* ps = strip)
            {
                long bytes = 4L * strip.Length;
                while (sw.ElapsedMilliseconds < 2000)
                {
                    for (int s = 0; s < strips; s++) Buffer.MemoryCopy(px, ps, bytes, bytes);
                    copies += strips;
                }
            }
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"plain copy of a strip's bytes: {sw.Elapsed.TotalNanoseconds / copies:F0} ns"));
        }
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{string.Join(" ", a)}: {ns:F0} ns per strip of {u.Rows} rows, {ns / (u.Rows * width / 8.0):F2} ns per 8-lane chunk"));
        return 0;
    }
}
