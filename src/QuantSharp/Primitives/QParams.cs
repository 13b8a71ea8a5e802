namespace QuantSharp.Primitives;

/// <summary>
/// Chooses scale and zero point from an observed range exactly as PyTorch's observers do
/// (<c>torch.ao.quantization.observer._calculate_qparams</c>), in float32 arithmetic:
/// the range is widened to include 0; symmetric uses max(|min|, |max|) / ((qmax - qmin) / 2);
/// affine uses (max - min) / (qmax - qmin) and zero point qmin - round(min / scale) clamped to the range;
/// the scale is never below float32 epsilon.
/// </summary>
public static class QParams
{
    /// <summary>The smallest scale ever chosen: <c>torch.finfo(torch.float32).eps</c>.</summary>
    public const float Epsilon = 1.1920929e-07f;

    /// <summary>Scale and zero point for one observed range.</summary>
    /// <param name="min">Observed minimum (finite).</param>
    /// <param name="max">Observed maximum (finite, at least <paramref name="min"/>).</param>
    /// <param name="range">Integer range, e.g. <see cref="QuantRange.For"/>.</param>
    /// <param name="scheme">Symmetric or affine.</param>
    /// <returns>The scale (float32) and the zero point.</returns>
    public static (float Scale, int ZeroPoint) Choose(float min, float max, QuantRange range, QuantScheme scheme)
    {
        if (!float.IsFinite(min) || !float.IsFinite(max))
            throw new ArgumentException($"Cannot choose a scale for a non-finite range [{min}, {max}]: the data contains NaN or infinity.");
        if (min > max)
            throw new ArgumentException($"Observed minimum {min} is greater than maximum {max}.");

        float minNeg = MathF.Min(min, 0f);
        float maxPos = MathF.Max(max, 0f);
        int qmin = range.QMin, qmax = range.QMax;

        if (scheme == QuantScheme.Symmetric)
        {
            float absMax = MathF.Max(-minNeg, maxPos);
            float scale = MathF.Max(absMax / ((qmax - qmin) / 2f), Epsilon);
            // Signed ranges use 0; unsigned ones 128 for [0, 255] and otherwise the rounded-down midpoint, as
            // PyTorch does for a customized range. (PyTorch keeps 128 for reduce-range uint8 [0, 127], outside
            // the range; we use the midpoint 63 there.)
            int zeroPoint = qmin < 0 ? 0 : qmax == 255 ? 128 : (qmin + qmax) / 2;
            return (scale, zeroPoint);
        }
        else
        {
            float scale = MathF.Max((maxPos - minNeg) / (float)(qmax - qmin), Epsilon);
            int zeroPoint = qmin - (int)MathF.Round(minNeg / scale, MidpointRounding.ToEven);
            return (scale, Math.Clamp(zeroPoint, qmin, qmax));
        }
    }

    /// <summary>Scale and zero point for each range of a per-channel or per-group observation.</summary>
    /// <param name="min">Observed minima, one per channel or group.</param>
    /// <param name="max">Observed maxima, same length as <paramref name="min"/>.</param>
    /// <param name="range">Integer range.</param>
    /// <param name="scheme">Symmetric or affine.</param>
    /// <param name="scale">Receives the scales.</param>
    /// <param name="zeroPoint">Receives the zero points.</param>
    public static void Choose(ReadOnlySpan<float> min, ReadOnlySpan<float> max, QuantRange range, QuantScheme scheme,
        Span<float> scale, Span<int> zeroPoint)
    {
        if (max.Length != min.Length) throw new ArgumentException("min and max must have the same length.", nameof(max));
        if (scale.Length < min.Length) throw new ArgumentException("Destination too short.", nameof(scale));
        if (zeroPoint.Length < min.Length) throw new ArgumentException("Destination too short.", nameof(zeroPoint));
        for (int i = 0; i < min.Length; i++)
            (scale[i], zeroPoint[i]) = Choose(min[i], max[i], range, scheme);
    }
}
