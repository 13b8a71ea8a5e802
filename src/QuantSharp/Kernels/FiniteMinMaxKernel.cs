using System.Numerics;
using System.Runtime.InteropServices;

namespace QuantSharp.Kernels;

/// <summary>
/// Minimum, maximum and a finiteness check of float32 values in one pass: SIMD (<see cref="Vector{T}"/>) over the
/// bulk, scalar over the remainder. <see cref="MinMaxScalar"/> is the specification; the vector path is tested
/// against it.
/// </summary>
internal static class FiniteMinMaxKernel
{
    /// <summary>
    /// Folds <paramref name="values"/> into <paramref name="min"/>/<paramref name="max"/>. Returns false when a
    /// value is NaN or infinite (then min/max are unspecified); find it with <see cref="FirstNonFinite"/>.
    /// </summary>
    public static bool MinMax(ReadOnlySpan<float> values, ref float min, ref float max)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated && values.Length >= 2 * Vector<float>.Count)
        {
            var vectors = MemoryMarshal.Cast<float, Vector<float>>(values);
            var vmin = new Vector<float>(min);
            var vmax = new Vector<float>(max);
            // x - x is 0 for finite x and NaN for NaN or +-infinity; NaN never equals 0.
            var finite = Vector<int>.AllBitsSet;
            foreach (var v in vectors)
            {
                vmin = Vector.Min(vmin, v);
                vmax = Vector.Max(vmax, v);
                finite &= Vector.Equals(v - v, Vector<float>.Zero);
            }
            if (!Vector.EqualsAll(finite, Vector<int>.AllBitsSet)) return false;
            for (int k = 0; k < Vector<float>.Count; k++)
            {
                if (vmin[k] < min) min = vmin[k];
                if (vmax[k] > max) max = vmax[k];
            }
            i = vectors.Length * Vector<float>.Count;
        }
        return MinMaxScalar(values[i..], ref min, ref max);
    }

    /// <summary>The scalar specification of <see cref="MinMax"/>.</summary>
    public static bool MinMaxScalar(ReadOnlySpan<float> values, ref float min, ref float max)
    {
        foreach (float v in values)
        {
            if (!float.IsFinite(v)) return false;
            if (v < min) min = v;
            if (v > max) max = v;
        }
        return true;
    }

    /// <summary>Index of the first NaN or infinity, or -1.</summary>
    public static int FirstNonFinite(ReadOnlySpan<float> values)
    {
        for (int i = 0; i < values.Length; i++)
            if (!float.IsFinite(values[i])) return i;
        return -1;
    }
}
