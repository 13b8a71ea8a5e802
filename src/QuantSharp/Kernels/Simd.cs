using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

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

    /// <summary>
    /// Whether the CPU reports AVX512-BF16 (CPUID leaf 7 subleaf 1, EAX bit 5), read once: a CPUID in a virtual machine
    /// exits to the hypervisor (read on every call it cost MNIST conv1's 7 us call 2 us on the development VM).
    /// </summary>
    public static readonly bool Avx512BFloat16 = X86Base.IsSupported && X86Base.CpuId(0, 0).Eax >= 7 && (X86Base.CpuId(7, 1).Eax & (1 << 5)) != 0;
}
