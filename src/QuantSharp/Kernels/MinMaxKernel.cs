using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace QuantSharp.Kernels;

/// <summary>
/// Minimum and maximum of a float32 span. Any NaN makes both results NaN (so that choosing qparams fails loudly);
/// an empty span gives (+inf, -inf). The scalar method is the specification.
/// </summary>
internal static class MinMaxKernel
{
    /// <summary>Minimum and maximum of <paramref name="source"/>.</summary>
    public static (float Min, float Max) MinMax(ReadOnlySpan<float> source)
    {
        int n = source.Length;
        ref float src = ref MemoryMarshal.GetReference(source);
        int i = 0;
        float min = float.PositiveInfinity, max = float.NegativeInfinity;
        bool nan = false;
        if (Simd.Use256 && n >= 32)
        {
            var mn0 = Vector256.Create(float.PositiveInfinity); var mn1 = mn0;
            var mx0 = Vector256.Create(float.NegativeInfinity); var mx1 = mx0;
            var bad = Vector256<float>.Zero;
            for (; i <= n - 16; i += 16)
            {
                var a = Vector256.LoadUnsafe(ref src, (nuint)i);
                var b = Vector256.LoadUnsafe(ref src, (nuint)(i + 8));
                mn0 = Vector256.MinNative(mn0, a); mx0 = Vector256.MaxNative(mx0, a);
                mn1 = Vector256.MinNative(mn1, b); mx1 = Vector256.MaxNative(mx1, b);
                bad |= ~(Vector256.Equals(a, a) & Vector256.Equals(b, b));
            }
            var mn = Vector256.MinNative(mn0, mn1);
            var mx = Vector256.MaxNative(mx0, mx1);
            for (int k = 0; k < Vector256<float>.Count; k++) { min = MathF.Min(min, mn[k]); max = MathF.Max(max, mx[k]); }
            nan = bad != Vector256<float>.Zero;
        }
        else if (Simd.Use128 && n >= 16)
        {
            var mn = Vector128.Create(float.PositiveInfinity);
            var mx = Vector128.Create(float.NegativeInfinity);
            var bad = Vector128<float>.Zero;
            for (; i <= n - 4; i += 4)
            {
                var a = Vector128.LoadUnsafe(ref src, (nuint)i);
                mn = Vector128.MinNative(mn, a); mx = Vector128.MaxNative(mx, a);
                bad |= ~Vector128.Equals(a, a);
            }
            for (int k = 0; k < Vector128<float>.Count; k++) { min = MathF.Min(min, mn[k]); max = MathF.Max(max, mx[k]); }
            nan = bad != Vector128<float>.Zero;
        }
        var (tailMin, tailMax) = MinMaxScalar(source[i..]);
        if (nan || float.IsNaN(tailMin)) return (float.NaN, float.NaN);
        return (MathF.Min(min, tailMin), MathF.Max(max, tailMax));
    }

    /// <summary>
    /// The largest magnitude of <paramref name="source"/>, <c>max(-min(min, 0), max(max, 0))</c> of <see cref="MinMax"/>
    /// in one pass (0 for an empty span); NaN when any element is NaN. Dynamic activation quantization needs only this,
    /// once per row: a row of 64 floats spent most of its <see cref="MinMax"/> time folding the lanes one by one.
    /// </summary>
    public static float AbsMax(ReadOnlySpan<float> source)
    {
        int n = source.Length, i = 0;
        ref float src = ref MemoryMarshal.GetReference(source);
        float max = 0;
        bool nan = false;
        if (Simd.Use256 && n >= 16)
        {
            var m0 = Vector256<float>.Zero;
            var m1 = m0;
            var bad = Vector256<float>.Zero;
            for (; i <= n - 16; i += 16)
            {
                var a = Vector256.Abs(Vector256.LoadUnsafe(ref src, (nuint)i));
                var b = Vector256.Abs(Vector256.LoadUnsafe(ref src, (nuint)(i + 8)));
                m0 = Vector256.MaxNative(m0, a);
                m1 = Vector256.MaxNative(m1, b);
                bad |= ~(Vector256.Equals(a, a) & Vector256.Equals(b, b));
            }
            var m = Vector256.MaxNative(m0, m1);
            var h = Vector128.MaxNative(m.GetLower(), m.GetUpper());
            h = Vector128.MaxNative(h, Vector128.Shuffle(h, Vector128.Create(2, 3, 0, 1)));
            h = Vector128.MaxNative(h, Vector128.Shuffle(h, Vector128.Create(1, 0, 3, 2)));
            max = h.ToScalar();
            nan = bad != Vector256<float>.Zero;
        }
        for (; i < n; i++)
        {
            float v = MathF.Abs(Unsafe.Add(ref src, i));
            if (float.IsNaN(v)) nan = true;
            else if (v > max) max = v;
        }
        return nan ? float.NaN : max;
    }

    /// <summary>The specification of <see cref="MinMax"/>.</summary>
    public static (float Min, float Max) MinMaxScalar(ReadOnlySpan<float> source)
    {
        float min = float.PositiveInfinity, max = float.NegativeInfinity;
        foreach (float v in source)
        {
            if (float.IsNaN(v)) return (float.NaN, float.NaN);
            if (v < min) min = v;
            if (v > max) max = v;
        }
        return (min, max);
    }

    /// <summary>
    /// Folds <paramref name="values"/> into <paramref name="min"/>/<paramref name="max"/>. Returns false when a value
    /// is NaN or infinite (then min/max are left as they were); find it with <see cref="FirstNonFinite"/>.
    /// </summary>
    public static bool FoldFinite(ReadOnlySpan<float> values, ref float min, ref float max)
    {
        if (values.IsEmpty) return true;
        // NaN makes both results NaN; +inf or -inf shows up as the max or the min.
        var (mn, mx) = MinMax(values);
        if (!float.IsFinite(mn) || !float.IsFinite(mx)) return false;
        if (mn < min) min = mn;
        if (mx > max) max = mx;
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
