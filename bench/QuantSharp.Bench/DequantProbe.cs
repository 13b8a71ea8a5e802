using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using QuantSharp.Kernels;
using QuantSharp.Tensors;
using TorchSharp;

namespace QuantSharp.Bench;

/// <summary>
/// What dequantize + libtorch costs over the float32 convolution, in parts (medians of 200 calls after 20):
/// <c>dequant-probe ROWS COLS</c> times <see cref="WeightDequantizer.Run"/> of an int8 <c>[ROWS, COLS]</c> weight into a
/// float32 buffer against plain writes of the buffer (<c>Span.Fill</c> and 512-bit non-temporal stores, by rows on
/// <see cref="KernelThreads"/>); <c>dequant-probe ROWS COLS HW</c> times libtorch's 3x3 convolution (padding 1) of one
/// <c>[COLS/9, HW, HW]</c> image with a float32 weight, and with the buffer after each way of writing it (or none);
/// <c>dequant-probe stem BATCH</c> the same for the stem's input (3x224x224, stride 2). Run with
/// <c>MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824</c> (outputs above glibc's mmap threshold are
/// faulted in afresh on every call otherwise).
/// </summary>
internal static unsafe class DequantProbe
{
    public static int Run(string[] args)
    {
        if (args[0] == "stem") return Stem(int.Parse(args[1]));
        int rows = int.Parse(args[0]), cols = int.Parse(args[1]);
        byte* q = (byte*)NativeMemory.AlignedAlloc((nuint)rows * (nuint)cols, 64);
        float* s = (float*)NativeMemory.AlignedAlloc((nuint)rows * 4, 64);
        for (long i = 0; i < (long)rows * cols; i++) q[i] = (byte)(i * 7);
        for (int i = 0; i < rows; i++) s[i] = 0.01f;
        var view = new WeightView(WeightFormat.Int8, rows, cols, q, 0, s, null);
        using var buffer = torch.empty(rows, cols / 9, 3, 3);
        float* pb = (float*)TensorSpans.Address(buffer);
        void Fill() => KernelThreads.For(rows, cols, n => new Span<float>(pb + (long)n * cols, cols).Fill(0.01f));
        void Streamed() => KernelThreads.For(rows, cols, n => Stream(pb + (long)n * cols, cols));
        if (args.Length == 2)
        {
            for (int round = 0; round < 4; round++)
                Console.WriteLine($"round {round}: dequantize {Time(() => WeightDequantizer.Run(view, pb)):F1} us, fill {Time(Fill):F1} us, non-temporal {Time(Streamed):F1} us");
            return 0;
        }
        int hw = int.Parse(args[2]);
        if (args.Length > 3) return Sliced(view, rows, cols, hw, args[3..]);
        using var x = torch.randn(1, cols / 9, hw, hw);
        using var weight = torch.randn(rows, cols / 9, 3, 3);
        void Conv(torch.Tensor w) => torch.nn.functional.conv2d(x, w, padding: [1, 1]).Dispose();
        for (int round = 0; round < 4; round++)
            Console.WriteLine($"round {round}: float32 weight {Time(() => Conv(weight)):F1} us, buffer unwritten {Time(() => Conv(buffer)):F1} us, " +
                $"dequantized {Time(() => { WeightDequantizer.Run(view, pb); Conv(buffer); }):F1} us, filled {Time(() => { Fill(); Conv(buffer); }):F1} us, " +
                $"non-temporal {Time(() => { Streamed(); Conv(buffer); }):F1} us");
        return 0;
    }

    /// <summary>The convolution in slices of output channels, each slice's weight dequantized into one small buffer just before its call, the outputs concatenated.</summary>
    private static int Sliced(WeightView view, int rows, int cols, int hw, string[] slices)
    {
        using var x = torch.randn(1, cols / 9, hw, hw);
        using var weight = torch.randn(rows, cols / 9, 3, 3);
        using var buffer = torch.empty(rows, cols / 9, 3, 3);
        float* pb = (float*)TensorSpans.Address(buffer);
        void Conv(torch.Tensor w) => torch.nn.functional.conv2d(x, w, padding: [1, 1]).Dispose();
        void Slices(int s)
        {
            int r = rows / s;
            var outs = new torch.Tensor[s];
            using var slice = torch.empty(r, cols / 9, 3, 3);
            float* ps = (float*)TensorSpans.Address(slice);
            for (int i = 0; i < s; i++)
            {
                WeightDequantizer.Run(view.RowRange(i * r, r), ps);
                outs[i] = torch.nn.functional.conv2d(x, slice, padding: [1, 1]);
            }
            using var y = torch.cat(outs, 1);
            foreach (var o in outs) o.Dispose();
        }
        for (int round = 0; round < 4; round++)
        {
            var line = $"round {round}: float32 weight {Time(() => Conv(weight)):F1} us, dequantized {Time(() => { WeightDequantizer.Run(view, pb); Conv(buffer); }):F1} us";
            foreach (var a in slices) { int s = int.Parse(a); line += $", {s} slices {Time(() => Slices(s)):F1} us"; }
            Console.WriteLine(line);
        }
        return 0;
    }

    private static int Stem(int batch)
    {
        using var x = torch.randn(batch, 3, 224, 224);
        using var buffer = torch.randn(batch, 3, 224, 224);
        using var w = torch.randn(32, 3, 3, 3);
        float* px = (float*)TensorSpans.Address(buffer);
        int chunks = (int)(buffer.numel() / 32768);
        void Conv(torch.Tensor input) => torch.nn.functional.conv2d(input, w, strides: [2, 2], padding: [1, 1]).Dispose();
        void Fill() => KernelThreads.For(chunks, 32768, c => new Span<float>(px + (long)c * 32768, 32768).Fill(0.5f));
        void Streamed() => KernelThreads.For(chunks, 32768, c => Stream(px + (long)c * 32768, 32768));
        for (int round = 0; round < 4; round++)
            Console.WriteLine($"round {round}: convolution {Time(() => Conv(x)):F1} us, filled {Time(() => { Fill(); Conv(buffer); }):F1} us, " +
                $"non-temporal {Time(() => { Streamed(); Conv(buffer); }):F1} us, fill {Time(Fill):F1} us, non-temporal alone {Time(Streamed):F1} us");
        return 0;
    }

    /// <summary>Writes 1 to <paramref name="n"/> floats with non-temporal 512-bit stores (AVX-512; <paramref name="p"/> 64-byte aligned where n is a multiple of 16).</summary>
    private static void Stream(float* p, int n)
    {
        var v = Vector512.Create(1f);
        int i = 0;
        if (Avx512F.IsSupported && ((nint)p & 63) == 0)
            for (; i <= n - 16; i += 16) Avx512F.StoreAlignedNonTemporal(p + i, v);
        for (; i < n; i++) p[i] = 1f;
    }

    /// <summary>Median of 200 calls after 20, in microseconds.</summary>
    private static double Time(Action call)
    {
        for (int i = 0; i < 20; i++) call();
        var times = new double[200];
        for (int i = 0; i < times.Length; i++)
        {
            long t0 = Stopwatch.GetTimestamp();
            call();
            times[i] = Stopwatch.GetElapsedTime(t0).TotalMicroseconds;
        }
        Array.Sort(times);
        return times[times.Length / 2];
    }
}
