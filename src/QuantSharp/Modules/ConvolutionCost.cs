using QuantSharp.Kernels;

namespace QuantSharp.Modules;

/// <summary>
/// Chooses, per call, between the two ways a <see cref="QuantizedConv"/> runs: unfold + the packed kernels (weights
/// decoded in tiles, W8A8 in integers) or dequantize-then-libtorch convolution. The constants are measured on the
/// development machine (docs/BENCHMARKS.md, "Convolutions").
/// </summary>
internal static class ConvolutionCost
{
    /// <summary>Whether unfold + the packed kernel is expected to be faster than dequantize + libtorch for this call.</summary>
    public static bool KernelPays(Im2Col unfold, long images, QuantSpec weight, bool quantizedInput) =>
        unfold.KernelH * unfold.KernelW == 1 && unfold.StrideH * unfold.StrideW == 1 && unfold.PadH + unfold.PadW == 0;
}
