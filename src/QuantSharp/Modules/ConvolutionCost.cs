using System.Runtime.Intrinsics.X86;
using QuantSharp.Kernels;

namespace QuantSharp.Modules;

/// <summary>
/// Chooses, per call, how a <see cref="QuantizedConv"/> runs: unfold + the packed kernels (weights decoded in tiles,
/// W8A8 in integers), the small-convolution kernel (<see cref="DirectConvolution"/>), or dequantize-then-libtorch
/// convolution. Measured on the development machine (AMD EPYC, 2 cores, AVX-512 + AVX-VNNI;
/// <c>bench/QuantSharp.Bench conv</c>, docs/BENCHMARKS.md "Convolutions"):
/// <list type="bullet">
/// <item>1x1 convolutions (stride 1, no padding) are a plain matrix product: the packed GEMM took 0.57-0.81x the float32
/// convolution's time on one thread (256 channels, 28x28, batch 1 and 8) and 0.27-0.38x at batch 8 on two; at batch 1
/// on two threads it is at parity or slower under load (1.0-1.7x).</item>
/// <item>Small calls (up to <see cref="DirectMaxWork"/> multiply-adds, reduction up to
/// <see cref="DirectConvolution.MaxReduction"/>): libtorch's convolution is mostly fixed cost there (15-50 us for the
/// MNIST CNN's layers at batch 1), so the small-convolution kernel on the weight dequantized for the call wins
/// (0.3-0.9x float32 for the MNIST CNN's layers at batch 1, int8/int4/fp16 and simulated W8A8, two threads). At
/// batch 64 oneDNN runs at about twice its multiply-add rate and the kernel loses (1.3-2x).</item>
/// <item>Other weight-only convolutions: libtorch's float convolution (oneDNN) runs at about twice the packed GEMM's
/// multiply-add rate here, so dequantize + libtorch wins; its cost over float32 is the dequantization, one managed
/// pass (<see cref="Kernels.WeightDequantizer"/>: 5-15 us int8, 7-40 us int4 for 36K-147K-element weights; 50-170 us
/// for 590K-786K elements), written into the thread's buffer (<see cref="QuantizedConv"/>).</item>
/// <item>Static W8A8: the simulated path fake-quantizes the input in one managed pass before the float convolution;
/// the integer path quantizes the image once, unfolds its codes into position rows (one byte store per product term)
/// and runs the integer GEMM. The unfolding costs about as much per position as one output channel of the GEMM, so the
/// integer path wins with many output channels and long reductions (one thread: 3x3 256->256 at 14x14 1.5 ms against
/// 6.3 ms simulated, 3x3 128->256 stride 2 0.86 against 1.10 ms, Conv1d 512->512 k3 1.7 against 10 ms) and loses with
/// few (3x3 64->64 at 56x56 9.1 against 2.6 ms; 128->128 at 28x28 2.7 against 2.3 ms): <see cref="IntegerMinOutputs"/>
/// and <see cref="IntegerMinReduction"/>.</item>
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

    /// <summary>
    /// Whether this CPU computes bfloat16 dot products in hardware (AVX512-BF16: CPUID leaf 7 sub-leaf 1, EAX bit 5; or
    /// AMX-BF16: leaf 7, EDX bit 22) with AVX-512 in use by .NET, so that libtorch's bfloat16 convolution (oneDNN) runs
    /// at about twice its float32 rate. Without it oneDNN emulates bfloat16 and the route would lose.
    /// </summary>
    public static bool NativeBFloat16 { get; } = DetectBFloat16();

    private static bool DetectBFloat16()
    {
        if (!X86Base.IsSupported || !Avx512F.IsSupported || X86Base.CpuId(0, 0).Eax < 7) return false;
        bool avx512Bf16 = (X86Base.CpuId(7, 1).Eax & (1 << 5)) != 0;
        bool amxBf16 = (X86Base.CpuId(7, 0).Edx & (1 << 22)) != 0;
        return avx512Bf16 || amxBf16;
    }

    /// <summary>The route expected to be fastest for this call.</summary>
    /// <param name="unfold">The call's geometry.</param>
    /// <param name="outputs">Output channels.</param>
    /// <param name="quantizedInput">True for W8A8 layers (static input quantization).</param>
    /// <param name="bfloat16">True where the bfloat16 route may be taken (<see cref="QuantizedConv.UseBFloat16Compute"/> and <see cref="NativeBFloat16"/>).</param>
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
