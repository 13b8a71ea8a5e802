using System.Runtime.InteropServices;
using QuantSharp.Kernels;

namespace QuantSharp.Tests.Kernels;

/// <summary>Random weights of one format held in pinned arrays, exposed as a <see cref="WeightView"/>.</summary>
internal sealed unsafe class PinnedWeight : IDisposable
{
    private readonly List<GCHandle> _handles = [];

    public PinnedWeight(WeightFormat format, int rows, int cols, int groupSize, bool zeroPoints, int seed, bool perTensor = false)
    {
        var rng = new Random(seed);
        int rowBytes = format switch
        {
            WeightFormat.Int4 or WeightFormat.UInt4 => cols / 2,
            WeightFormat.Float16 or WeightFormat.BFloat16 => cols * 2,
            _ => cols,
        };
        Data = new byte[Math.Max(1, rows * rowBytes)];
        if (WeightView.IsFloat(format))
        {
            var halves = MemoryMarshal.Cast<byte, ushort>(Data.AsSpan());
            for (int i = 0; i < halves.Length; i++)
            {
                float v = (float)(rng.NextDouble() * 4 - 2) * (i % 5 == 0 ? 1e-6f : 1f); // some half subnormals
                halves[i] = format == WeightFormat.Float16 ? HalfKernel.ToHalfBits(v) : HalfKernel.ToBFloat16Bits(v);
            }
            View = new WeightView(format, rows, cols, Pin(Data));
            return;
        }
        rng.NextBytes(Data); // every bit pattern: all int8/uint8 values, every nibble
        int g = groupSize <= 0 ? cols : groupSize;
        int groups = perTensor ? 1 : rows * (cols / g);
        Scales = new float[groups];
        for (int i = 0; i < groups; i++) Scales[i] = (float)(rng.NextDouble() * 0.1 + 1e-3);
        if (zeroPoints)
        {
            var (lo, hi) = format switch
            {
                WeightFormat.Int8 => (-128, 128),
                WeightFormat.UInt8 => (0, 256),
                WeightFormat.Int4 => (-8, 8),
                _ => (0, 16),
            };
            ZeroPoints = new int[groups];
            for (int i = 0; i < groups; i++) ZeroPoints[i] = rng.Next(lo, hi);
        }
        View = new WeightView(format, rows, cols, Pin(Data), perTensor ? cols : g, (float*)Pin(Scales),
            ZeroPoints is null ? null : (int*)Pin(ZeroPoints), perTensor ? 0 : -1);
    }

    public byte[] Data { get; }
    public float[]? Scales { get; }
    public int[]? ZeroPoints { get; }
    public WeightView View { get; }

    private byte* Pin(Array a)
    {
        var h = GCHandle.Alloc(a, GCHandleType.Pinned);
        _handles.Add(h);
        return (byte*)h.AddrOfPinnedObject();
    }

    public void Dispose()
    {
        foreach (var h in _handles) h.Free();
        _handles.Clear();
    }
}

internal static class KernelTestData
{
    /// <summary>The kernel paths this CPU can run (always Scalar and Auto).</summary>
    public static IEnumerable<KernelPath> FloatPaths() =>
        new[] { KernelPath.Scalar, KernelPath.V128, KernelPath.V256, KernelPath.V512, KernelPath.Auto }.Where(QuantizedMatMul.IsSupported);

    public static float[] Activations(int count, int seed)
    {
        var rng = new Random(seed);
        var x = new float[count];
        for (int i = 0; i < count; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }
}

/// <summary>Caps <see cref="Simd.MaxBits"/> (process-wide) until disposed, then restores it; for tests in <see cref="SimdWidthCollection"/>.</summary>
internal sealed class SimdWidthCap : IDisposable
{
    private readonly int _saved = Simd.MaxBits;

    public SimdWidthCap(int maxBits) => Simd.MaxBits = maxBits;

    public void Dispose() => Simd.MaxBits = _saved;
}
