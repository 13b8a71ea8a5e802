using QuantSharp.Kernels;

namespace QuantSharp.Modules;

/// <summary>
/// Chooses, per call, how a <see cref="QuantizedConv"/> runs. Measured on the development machine (AMD EPYC, 2 vCPUs,
/// AVX-512 with VNNI and BF16, AVX-VNNI; <c>bench/QuantSharp.Bench conv</c>, docs/BENCHMARKS.md "Convolutions"), two
/// threads on both sides, ratios to the float32 layer's time:
/// <list type="bullet">
/// <item>Small calls (up to <see cref="DirectMaxWork"/> multiply-adds, reduction up to
/// <see cref="DirectConvolution.MaxReduction"/>): the small-convolution kernel (<see cref="DirectConvolution"/>; stride
/// 1 reads the padded image without unfolding it) on the weight dequantized for the call, a static W8A8 input
/// quantized as the image is copied. libtorch's convolution is mostly fixed cost there: 0.56-0.76x for the MNIST CNN's
/// layers at batch 1, W8A8 included.</item>
/// <item>CPUs with native bfloat16 (<see cref="QuantizedModule.NativeBFloat16"/>) and <see cref="QuantizedModule.UseBFloat16Compute"/>:
/// libtorch's bfloat16 convolution (oneDNN) on the weight dequantized to bfloat16, 0.51-0.94x for every other
/// convolution with a reduction of <see cref="BFloat16MinReduction"/> or more (ResNet 3x3 and 1x1 layers, stride 2,
/// Conv1d, MNIST conv2 at batch 64 and 500; every weight format and W8A8). Below it (3 input channels x 3x3, MNIST
/// conv1) oneDNN's float32 convolution is already efficient (9 multiply-adds per output for MNIST conv1: mostly memory
/// traffic) and its bfloat16 one is slower, so dequantize + float32 libtorch runs: 0.90-1.21x weight-only, 1.06-1.38x
/// W8A8 (the dequantization of a weight of a few hundred elements, and the input's quantization pass).</item>
/// <item>Elsewhere the float32 rule: 1x1 convolutions (a plain matrix product) and static W8A8 with 256+ outputs and a
/// reduction of 256+ (<see cref="IntegerMinOutputs"/>, <see cref="IntegerMinReduction"/>: the image is quantized once,
/// unfolded in integers and multiplied by the integer GEMM) run unfold + the packed kernels; the rest dequantize +
/// float32 libtorch, whose cost over float32 is one managed dequantization pass (<see cref="Kernels.WeightDequantizer"/>)
/// into the thread's buffer (<see cref="QuantizedConv"/>), 1.0-1.3x.</item>
/// </list>
/// </summary>
internal static class ConvolutionCost
{
    /// <summary>Reduction length (input channels x kernel taps) from which static W8A8 takes the integer kernel.</summary>
    internal const int IntegerMinReduction = 256;

    /// <summary>Output channels from which static W8A8 takes the integer kernel (with <see cref="IntegerMinReduction"/>).</summary>
    internal const int IntegerMinOutputs = 256;

    /// <summary>
    /// Reduction length (input channels x kernel taps) from which the bfloat16 route is taken: below it oneDNN's float32
    /// convolution is already efficient and its bfloat16 one is not (3 input channels, 3x3: bfloat16 1.3-1.5x float32's
    /// time; MNIST conv1, 9 terms, at batch 64: 1.5-2.3x), so dequantize + float32 libtorch runs (1.00-1.10x).
    /// </summary>
    internal const int BFloat16MinReduction = 64;

    /// <summary>Multiply-adds per call (images x positions x outputs x reduction) up to which the small-convolution kernel is taken.</summary>
    internal const long DirectMaxWork = 1 << 22;

    /// <summary>The route expected to be fastest for this call.</summary>
    /// <param name="unfold">The call's geometry.</param>
    /// <param name="outputs">Output channels.</param>
    /// <param name="quantizedInput">True for W8A8 layers (static input quantization).</param>
    /// <param name="bfloat16">True where the bfloat16 route may be taken (<see cref="QuantizedModule.UseBFloat16Compute"/> and <see cref="QuantizedModule.NativeBFloat16"/>).</param>
    public static ConvolutionRoute Choose(Im2Col unfold, long outputs, bool quantizedInput, bool bfloat16)
    {
        bool small = (long)unfold.Images * unfold.Positions * outputs * unfold.Rows <= DirectMaxWork && DirectConvolution.Fits(unfold, outputs);
        if (bfloat16)
        {
            if (small) return ConvolutionRoute.Direct;
            return unfold.Rows < BFloat16MinReduction ? ConvolutionRoute.Reference : ConvolutionRoute.BFloat16;
        }
        if (KernelPays(unfold, outputs, quantizedInput)) return ConvolutionRoute.Kernel;
        return small ? ConvolutionRoute.Direct : ConvolutionRoute.Reference;
    }

    /// <summary>Whether unfold + the packed kernel is expected to be faster than dequantize + libtorch for this call.</summary>
    /// <param name="unfold">The call's geometry.</param>
    /// <param name="outputs">Output channels.</param>
    /// <param name="quantizedInput">True for W8A8 layers (static input quantization).</param>
    public static bool KernelPays(Im2Col unfold, long outputs, bool quantizedInput)
    {
        bool pointwise = unfold.KernelH * unfold.KernelW == 1 && unfold.StrideH * unfold.StrideW == 1 && unfold.PadH + unfold.PadW == 0;
        if (pointwise) return true;
        return quantizedInput && unfold.Rows >= IntegerMinReduction && outputs >= IntegerMinOutputs;
    }
}
