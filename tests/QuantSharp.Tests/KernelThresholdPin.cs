using System.Runtime.CompilerServices;
using QuantSharp.Kernels;

namespace QuantSharp.Tests;

/// <summary>
/// Pins <see cref="KernelThreads.MinParallelWork"/> to 2^17 for the whole test run, before any test: the kernel tests'
/// shapes were chosen when that was the threshold, so that their larger calls run on several threads (split paths
/// included); the default (2^19) would send some of them to one thread.
/// </summary>
internal static class KernelThresholdPin
{
#pragma warning disable CA2255 // a test assembly's own set-up, not a library's
    [ModuleInitializer]
    internal static void Pin() => KernelThreads.MinParallelWork = Threshold;

    /// <summary>The tests' threshold.</summary>
    internal const long Threshold = 1 << 17;
#pragma warning restore CA2255
}
