using System.Runtime.Intrinsics;

namespace QuantSharp.Kernels;

/// <summary>
/// Which vector widths the kernels may use: the widest the CPU accelerates, capped by <see cref="MaxBits"/>. Tests lower
/// the cap to run the 128-bit and scalar paths on a wide CPU (every path computes the same bits).
/// </summary>
internal static class Simd
{
    /// <summary>Widest vector width allowed, in bits: 512, 256, 128, or 0 for scalar only.</summary>
    internal static volatile int MaxBits = 512;

    /// <summary>Use <see cref="Vector512{T}"/>.</summary>
    public static bool Use512 => Vector512.IsHardwareAccelerated && MaxBits >= 512;

    /// <summary>Use <see cref="Vector256{T}"/>.</summary>
    public static bool Use256 => Vector256.IsHardwareAccelerated && MaxBits >= 256;

    /// <summary>Use <see cref="Vector128{T}"/>.</summary>
    public static bool Use128 => Vector128.IsHardwareAccelerated && MaxBits >= 128;
}
