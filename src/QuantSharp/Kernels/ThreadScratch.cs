using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace QuantSharp.Kernels;

/// <summary>
/// A thread's scratch of bytes for kernels that keep buffers across work items (<see cref="QuadConvolution"/>'s and
/// <see cref="PairLanesConvolution"/>'s packed weights and planes): a pinned array held in a <c>[ThreadStatic]</c> field of
/// the caller, grown when a call needs more, used from its first 64-byte boundary on.
/// </summary>
internal static unsafe class ThreadScratch
{
    /// <summary>
    /// At least <paramref name="bytes"/> bytes of <paramref name="array"/> (reallocated, pinned, when shorter:
    /// <paramref name="grown"/>, and whatever the caller kept there is gone), from its first 64-byte boundary on.
    /// </summary>
    public static byte* Bytes(ref byte[]? array, long bytes, out bool grown)
    {
        grown = array is null || array.Length < bytes + 64;
        if (grown) array = GC.AllocateUninitializedArray<byte>(checked((int)(bytes + 64)), pinned: true);
        // A pinned array: its address is fixed for its lifetime.
        nint first = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(array!));
        return (byte*)((first + 63) & ~(nint)63);
    }

    /// <summary><paramref name="bytes"/> rounded up to whole 64-byte cache lines (so the next buffer in the scratch starts on one).</summary>
    public static long Lines(long bytes) => (bytes + 63) / 64 * 64;
}
