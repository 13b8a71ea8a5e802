using QuantSharp.Kernels;

namespace QuantSharp.Primitives;

/// <summary>
/// float32 to and from float16 / bfloat16, bit-identical to PyTorch's CPU casts: round to nearest even, overflow to
/// infinity, subnormals kept (float16) and NaN to a quiet NaN (float16: sign | 0x7E00; bfloat16: 0x7FC0).
/// Values are raw 16-bit patterns so that they can be written to or read from tensors and files directly.
/// </summary>
internal static class FloatConversion
{
    /// <summary>Converts to IEEE float16 bit patterns.</summary>
    /// <param name="source">float32 values.</param>
    /// <param name="destination">Receives one 16-bit pattern per value.</param>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is too short.</exception>
    public static void ToFloat16(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        CheckLength(source.Length, destination.Length);
        HalfKernel.ToHalf(source, destination);
    }

    /// <summary>Converts IEEE float16 bit patterns to float32 (exact).</summary>
    /// <param name="source">float16 bit patterns.</param>
    /// <param name="destination">Receives one float per value.</param>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is too short.</exception>
    public static void FromFloat16(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        CheckLength(source.Length, destination.Length);
        HalfKernel.FromHalf(source, destination);
    }

    /// <summary>Converts to bfloat16 bit patterns.</summary>
    /// <param name="source">float32 values.</param>
    /// <param name="destination">Receives one 16-bit pattern per value.</param>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is too short.</exception>
    public static void ToBFloat16(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        CheckLength(source.Length, destination.Length);
        HalfKernel.ToBFloat16(source, destination);
    }

    /// <summary>Converts bfloat16 bit patterns to float32 (exact).</summary>
    /// <param name="source">bfloat16 bit patterns.</param>
    /// <param name="destination">Receives one float per value.</param>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is too short.</exception>
    public static void FromBFloat16(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        CheckLength(source.Length, destination.Length);
        HalfKernel.FromBFloat16(source, destination);
    }

    private static void CheckLength(int source, int destination)
    {
        if (destination < source)
            throw new ArgumentException($"destination has {destination} elements but the source has {source}.", nameof(destination));
    }
}
