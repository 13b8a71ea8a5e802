using System.Buffers;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using QuantSharp.Primitives;

namespace QuantSharp.Kernels;

/// <summary>
/// A whole integer weight matrix dequantized to float32 in one pass over its codes:
/// <c>w[n, k] = (q[n, k] - zeroPoint) * scale</c> (<see cref="WeightView.Dequantized"/>, bit for bit). This is what the
/// dequantize-then-libtorch route feeds libtorch's float op; done with libtorch tensor operations it took several calls
/// and temporaries (a 256-entry table gather for 4-bit codes), 5-600 us per convolution weight.
/// </summary>
/// <remarks>
/// 8-bit codes go through <see cref="QuantizeKernel.Dequantize(ReadOnlySpan{sbyte}, float, float, Span{float})"/> one
/// group at a time; 4-bit codes are first unpacked to one signed byte per value (<see cref="UnpackNibbles"/>). Half
/// precision is widened exactly (<see cref="HalfKernel.FromHalf"/>, <see cref="HalfKernel.FromBFloat16"/>), float16 into
/// bfloat16 converted directly (<see cref="RunBFloat16"/>, through <see cref="HalfKernel.HalfToBFloat16"/>). Rows run on
/// <see cref="KernelThreads"/> when there are enough of them.
/// </remarks>
internal static unsafe class WeightDequantizer
{
    /// <summary>Codes of one row unpacked on the stack up to this many values (larger rows rent an array).</summary>
    private const int StackValues = 16384;

    /// <summary>Writes the dequantized <c>[Rows, Cols]</c> matrix of <paramref name="weight"/> to <paramref name="destination"/> (row-major).</summary>
    public static void Run(in WeightView weight, float* destination)
    {
        var w = weight;
        KernelThreads.For(w.Rows, w.Cols, n => Row(w, n, destination + (nint)n * w.Cols));
    }

    /// <summary>
    /// As <see cref="Run"/>, rounded to bfloat16 (<see cref="HalfKernel.ToBFloat16"/>: round to nearest even, as
    /// libtorch's conversion) into <paramref name="destination"/> (bfloat16 bits): one pass over the codes, each row
    /// through a float32 scratch row, for the bfloat16 routes of the quantized layers; float16 weights converted
    /// directly (<see cref="HalfKernel.HalfToBFloat16"/>).
    /// </summary>
    public static void RunBFloat16(in WeightView weight, ushort* destination)
    {
        var w = weight;
        if (w.Format == WeightFormat.Float16)
        {
            // float16 straight to bfloat16 (exact widening, one rounding; libtorch's copy_ took about 10 ms on 4096x4096).
            KernelThreads.For(w.Rows, w.Cols, n => HalfKernel.HalfToBFloat16(
                new ReadOnlySpan<ushort>(w.Data + n * w.RowBytes, w.Cols), new Span<ushort>(destination + (nint)n * w.Cols, w.Cols)));
            return;
        }
        KernelThreads.For(w.Rows, w.Cols, n =>
        {
            int cols = w.Cols;
            float[]? rented = cols > StackValues ? ArrayPool<float>.Shared.Rent(cols) : null;
            Span<float> row = rented is null ? stackalloc float[cols] : rented.AsSpan(0, cols);
            try
            {
                fixed (float* pRow = row) Row(w, n, pRow);
                HalfKernel.ToBFloat16(row, new Span<ushort>(destination + (nint)n * cols, cols));
            }
            finally
            {
                if (rented is not null) ArrayPool<float>.Shared.Return(rented);
            }
        });
    }

    /// <summary>Row <paramref name="n"/> of <paramref name="w"/> dequantized into <paramref name="destination"/> (<c>Cols</c> floats).</summary>
    public static void Row(in WeightView w, int n, float* destination)
    {
        int cols = w.Cols;
        byte* row = w.Data + n * w.RowBytes;
        if (cols < 16 && w.GroupSize == cols && WeightView.IsInteger8(w.Format))
        {
            // A short 8-bit row in one group (a depthwise layer's 9 taps): the values in a plain loop, without the
            // group and span set-up, which cost more than they do (the operations of QuantizeKernel.DequantizeScalar,
            // so the same bits).
            var (scale, zeroPoint) = w.Params(n, 0);
            float z = zeroPoint;
            if (w.Format == WeightFormat.Int8)
                for (int j = 0; j < cols; j++) destination[j] = ((sbyte)row[j] - z) * scale;
            else
                for (int j = 0; j < cols; j++) destination[j] = (row[j] - z) * scale;
            return;
        }
        var dst = new Span<float>(destination, cols);
        switch (w.Format)
        {
            case WeightFormat.Float16:
                HalfKernel.FromHalf(new ReadOnlySpan<ushort>(row, cols), dst);
                return;
            case WeightFormat.BFloat16:
                HalfKernel.FromBFloat16(new ReadOnlySpan<ushort>(row, cols), dst);
                return;
            case WeightFormat.Int8:
                Groups(w, n, new ReadOnlySpan<sbyte>(row, cols), dst);
                return;
            case WeightFormat.UInt8:
                Groups(w, n, new ReadOnlySpan<byte>(row, cols), dst);
                return;
        }
        if (Simd.Use512 && Avx512F.IsSupported && w.GroupSize % 16 == 0)
        {
            NibbleGroups512(w, n, row, destination);
            return;
        }
        // 4-bit: unpack to one byte per value (uint4's 0..15 read the same as sbyte or byte), then as 8-bit codes.
        sbyte[]? rented = cols > StackValues ? ArrayPool<sbyte>.Shared.Rent(cols) : null;
        Span<sbyte> codes = rented is null ? stackalloc sbyte[cols] : rented.AsSpan(0, cols);
        try
        {
            fixed (sbyte* pCodes = codes) UnpackNibbles(row, cols, w.Format == WeightFormat.Int4, pCodes);
            Groups(w, n, codes, dst);
        }
        finally
        {
            if (rented is not null) ArrayPool<sbyte>.Shared.Return(rented);
        }
    }

    /// <summary>
    /// A 4-bit row whose groups are whole runs of 16 values, with AVX-512: a group has only 16 possible values, so they
    /// are computed once, <c>(q - zeroPoint) * scale</c> for every code q (the same float operations as
    /// <see cref="QuantizeKernel.DequantizeScalar(ReadOnlySpan{sbyte}, float, float, Span{float})"/>, so the same bits),
    /// into one vector, and each run of 16 nibbles (8 bytes) is spread to 32-bit lanes and looked up in it with one
    /// permute. Unpacking the nibbles to bytes first and then converting each cost about twice an int8 weight's pass: on
    /// libtorch's route ResNet's 3x3 256->256 at batch 1 took 1.11-1.16x float32's time with int4, 1.06-1.09x with int8,
    /// and 1.04-1.05x with int4 this way (docs/BENCHMARKS.md, stop 28).
    /// </summary>
    private static void NibbleGroups512(in WeightView w, int n, byte* row, float* destination)
    {
        // The value of each nibble u as a code: two's complement for int4 (8..15 are -8..-1), u itself for uint4.
        var codes = w.Format == WeightFormat.Int4
            ? Vector512.Create(0f, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1)
            : Vector512.Create(0f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        var low = Vector128.Create((byte)0x0F);
        int size = w.GroupSize;
        for (int g = 0, k = 0; k < w.Cols; g++, k += size)
        {
            var (scale, zeroPoint) = w.Params(n, g);
            var table = (codes - Vector512.Create((float)zeroPoint)) * Vector512.Create(scale);
            for (int j = k; j < k + size; j += 16)
            {
                var bytes = Vector128.CreateScalar(*(ulong*)(row + j / 2)).AsByte();
                // Value 2i is byte i's low nibble, value 2i + 1 its high one.
                var nibbles = Sse2.UnpackLow(bytes & low, Vector128.ShiftRightLogical(bytes, 4));
                Avx512F.PermuteVar16x32(table, Avx512F.ConvertToVector512Int32(nibbles)).Store(destination + j);
            }
        }
    }

    private static void Groups(in WeightView w, int n, ReadOnlySpan<sbyte> codes, Span<float> dst)
    {
        int size = w.GroupSize;
        for (int g = 0, k = 0; k < w.Cols; g++, k += size)
        {
            var (s, z) = w.Params(n, g);
            QuantizeKernel.Dequantize(codes.Slice(k, size), s, z, dst.Slice(k, size));
        }
    }

    private static void Groups(in WeightView w, int n, ReadOnlySpan<byte> codes, Span<float> dst)
    {
        int size = w.GroupSize;
        for (int g = 0, k = 0; k < w.Cols; g++, k += size)
        {
            var (s, z) = w.Params(n, g);
            QuantizeKernel.Dequantize(codes.Slice(k, size), s, z, dst.Slice(k, size));
        }
    }

    /// <summary>
    /// <paramref name="count"/> (even) packed 4-bit values, element 2j in the low nibble of byte j, to one byte each in
    /// order, sign-extended when <paramref name="signed"/> (<see cref="Packing.Unpack"/> is the specification).
    /// </summary>
    public static void UnpackNibbles(byte* packed, int count, bool signed, sbyte* destination)
    {
        int bytes = count / 2, i = 0;
        if (Simd.Use128)
        {
            var low = Vector128.Create((ushort)0x0F);
            var eight = Vector128.Create((byte)8);
            for (; i <= bytes - 16; i += 16)
            {
                // Widened to 16 bits, a byte's two nibbles become the low and high byte of one word: the values in order.
                var (a, b) = Vector128.Widen(Vector128.Load(packed + i));
                var first = ((a & low) | ((a >> 4) << 8)).AsByte();
                var second = ((b & low) | ((b >> 4) << 8)).AsByte();
                if (signed)
                {
                    first = (first ^ eight) - eight; // u ^ 8 = q + 8 for a two's-complement nibble, in wrapping byte arithmetic
                    second = (second ^ eight) - eight;
                }
                first.Store((byte*)destination + 2 * i);
                second.Store((byte*)destination + 2 * i + 16);
            }
        }
        Packing.Unpack(new ReadOnlySpan<byte>(packed + i, bytes - i), 4, signed, new Span<sbyte>(destination + 2 * i, count - 2 * i));
    }
}
