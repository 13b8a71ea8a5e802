using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace QuantSharp.Kernels;

/// <summary>
/// The weight rows <see cref="DirectConvolution"/> and <see cref="DepthwiseConvolution"/> multiply, group by group: a
/// float32 matrix read in place, or a quantized weight whose group rows each thread dequantizes
/// (<see cref="WeightDequantizer.Row"/>, the same values as the whole weight's pass) into a buffer of its own when it
/// first needs them in a call, and keeps while its work items stay in that group (<see cref="Group"/>), or a work item
/// into its scratch (<see cref="Rows"/>). Dequantizing the whole weight before the call was one thread's pass whose 1.2-4.7 MB of floats
/// the other threads then read from its cache: 11-46% of the kernel's time on grouped layers at batch 1 onto 7x7 and
/// 14x14 (docs/BENCHMARKS.md, stop 40's table).
/// </summary>
internal readonly unsafe struct GroupWeights
{
    private readonly float* _values;
    private readonly WeightView _quantized;
    private readonly int _columns;
    private readonly long _call;

    private GroupWeights(float* values, in WeightView quantized, int columns, long call)
    {
        _values = values;
        _quantized = quantized;
        _columns = columns;
        _call = call;
    }

    /// <summary>A float32 matrix of rows of <paramref name="columns"/> values.</summary>
    public static GroupWeights Float(float* values, int columns) => new(values, default, columns, 0);

    /// <summary>A quantized weight, dequantized by group in each thread; each such instance is a call of its own.</summary>
    public static GroupWeights Quantized(in WeightView weight) => new(null, weight, weight.Cols, Interlocked.Increment(ref s_calls));

    private static long s_calls;

    /// <summary>Whether the rows are dequantized as they are read (a quantized weight), not read in place.</summary>
    public bool Dequantizes => _values == null;

    /// <summary>
    /// Rows <c>first..first + count - 1</c> as floats: in place for a float32 matrix, else dequantized into
    /// <paramref name="destination"/> (<c>count x columns</c> floats), which is returned.
    /// </summary>
    public float* Rows(int first, int count, float* destination)
    {
        if (_values != null) return _values + (nint)first * _columns;
        for (int r = 0; r < count; r++) WeightDequantizer.Row(_quantized, first + r, destination + (nint)r * _columns);
        return destination;
    }

    /// <summary>The thread's dequantized group (its rows from the first 64-byte boundary of the array on), and the call and group they belong to.</summary>
    [ThreadStatic] private static float[]? t_values;
    [ThreadStatic] private static long t_call;
    [ThreadStatic] private static int t_group;

    /// <summary>
    /// Group <paramref name="g"/>'s <paramref name="rows"/> rows (rows <c>g * rows</c> on) as floats, valid until this
    /// thread's next call of this method.
    /// </summary>
    public float* Group(int g, int rows)
    {
        if (_values != null) return _values + (nint)g * rows * _columns;
        int size = rows * _columns;
        // Whole cache lines of the thread's own: two threads' buffers of a few values (a depthwise layer's 9 taps) in
        // one line made every plane's rows a line moved between the cores.
        int lines = (size + 15) / 16 * 16;
        if (t_values is null || t_values.Length < lines + 16)
        {
            t_values = GC.AllocateUninitializedArray<float>(lines + 16, pinned: true);
            t_call = 0;
        }
        // A pinned array: its address is fixed for its lifetime.
        nint first = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(t_values));
        float* values = (float*)((first + 63) & ~(nint)63);
        if (t_call != _call || t_group != g)
        {
            for (int r = 0; r < rows; r++) WeightDequantizer.Row(_quantized, g * rows + r, values + (nint)r * _columns);
            t_call = _call;
            t_group = g;
        }
        return values;
    }
}
