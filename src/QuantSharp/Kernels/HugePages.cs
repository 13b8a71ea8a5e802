using System.Runtime.InteropServices;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Kernels;

/// <summary>
/// Backs a large quantized weight with 2 MiB pages (Linux transparent huge pages), so that a kernel streaming it from
/// memory at batch 1 walks one page table entry per 2 MiB instead of one per 4 KiB.
/// </summary>
/// <remarks>
/// <para>libtorch allocates a tensor with 4 KiB pages unless the system's transparent huge pages are <c>always</c> (most
/// distributions ship <c>madvise</c>; libtorch asks for them only when <c>THP_MEM_ALLOC_ENABLE=1</c>). A quantized weight
/// is written once and then only read, so <see cref="Advise"/> marks the whole-2-MiB part of its buffer
/// <c>MADV_HUGEPAGE</c> and asks the kernel to collapse it now (<c>MADV_COLLAPSE</c>, Linux 6.1+: the pages are copied
/// into huge pages, the contents unchanged). Where either call is refused (another system, an older kernel, huge pages
/// <c>never</c>, no free 2 MiB block), the weight stays as it was: only the speed differs.</para>
/// <para>A trial, reverted: measured on a Zen 4 VM (docs/BENCHMARKS.md, stop 55) with <c>quantsharp bench --cold</c>,
/// with and without <c>QUANTSHARP_HUGE_PAGES=0</c>, which turns it off.</para>
/// </remarks>
internal static unsafe partial class HugePages
{
    /// <summary>2 MiB, the x64 huge page.</summary>
    internal const long Size = 2L << 20;

    private const int MadviseHugePage = 14, MadviseCollapse = 25;

    /// <summary>Whether <see cref="Advise"/> asks for huge pages (Linux, and <c>QUANTSHARP_HUGE_PAGES</c> is not <c>0</c>); tests and benchmarks may switch it.</summary>
    internal static bool Enabled { get; set; } = OperatingSystem.IsLinux() && Environment.GetEnvironmentVariable("QUANTSHARP_HUGE_PAGES") != "0";

    /// <summary>
    /// Asks for huge pages under the 2 MiB-aligned part of <paramref name="tensor"/>'s memory (a contiguous CPU tensor
    /// of at least two huge pages' bytes; others are left alone). Returns the bytes it asked for (0 when it asked for none).
    /// </summary>
    internal static long Advise(Tensor tensor)
    {
        if (!Enabled || tensor.device_type != DeviceType.CPU || !tensor.is_contiguous()) return 0;
        long bytes = tensor.numel() * tensor.ElementSize;
        if (bytes < 2 * Size) return 0;
        long start = (long)TensorSpans.Address(tensor);
        long first = (start + Size - 1) & ~(Size - 1), end = (start + bytes) & ~(Size - 1);
        if (end <= first) return 0;
        try
        {
            if (Madvise((nint)first, (nuint)(end - first), MadviseHugePage) != 0) return 0;
            Madvise((nint)first, (nuint)(end - first), MadviseCollapse); // refused on kernels before 6.1; khugepaged may still collapse it later
            return end - first;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            Enabled = false; // a C library without madvise under this name
            return 0;
        }
    }

    [LibraryImport("libc", EntryPoint = "madvise")]
    private static partial int Madvise(nint address, nuint length, int advice);
}
