using QuantSharp.Kernels;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Modules;

/// <summary>
/// The kernels behind the canonical weight layouts' <c>Linear</c>: <see cref="QuantizedMatMul"/> (weight-only, any
/// stored type) and <see cref="IntegerMatMul"/> (W8A8 with int8 weights, one scale per row or tensor) read the
/// layout's tensors in place (the canonical storage is the kernels' format: nothing is repacked or copied).
/// Returns null where no kernel applies; the caller then dequantizes and runs the float op (the differentiable,
/// reference path): inputs that need gradients, non-CPU tensors, other dtypes, shapes libtorch would reject.
/// </summary>
internal static unsafe class LinearKernels
{
    /// <summary>Whether the kernels may be used (the bench turns them off to time the reference path).</summary>
    internal static volatile bool Enabled = true;

    /// <summary>
    /// <c>y = x W^T + b</c> for the storage matrix of <paramref name="parts"/> through a kernel, or null. With
    /// <paramref name="input"/> the activations are quantized in the kernel (W8A8 in integers) when the weight is int8
    /// per row; otherwise the call returns null and the caller simulates.
    /// </summary>
    public static Tensor? TryLinear(QuantizedTensor parts, Tensor x, Tensor? bias, InputQuantizer? input = null)
    {
        if (!Usable(parts, x, out var format, out int groupSize)) return null;
        long n = parts.Shape[0], k = parts.Shape[1];
        if (x.dim() == 0 || x.shape[^1] != k || x.numel() / Math.Max(k, 1) > int.MaxValue) return null;
        bool integer = format == WeightFormat.Int8 && groupSize == k && k <= IntegerMatMul.MaxReduction;
        if (input is not null && !integer) return null;

        using var scope = NewDisposeScope();
        int m = (int)(x.numel() / k);
        var rows = x.to(ScalarType.Float32).reshape(m, k).contiguous();
        var y = torch.empty([m, n], ScalarType.Float32);
        Pinned(parts, format, groupSize, rows, bias, y, (in WeightView view, float* px, float* pb, float* py) =>
        {
            if (input is { } act)
            {
                using var q = new QuantizedActivations(m, (int)k);
                if (act.Dynamic)
                {
                    IntegerMatMul.QuantizeDynamic(px, (nint)k, q);
                }
                else
                {
                    var range = QuantRange.For(act.Static!.Type, act.Static.ReduceRange);
                    IntegerMatMul.QuantizeStatic(px, (nint)k, act.Static.Scale, act.Static.ZeroPoint, range.QMin, range.QMax, q);
                }
                IntegerMatMul.Run(view, q, pb, py, (nint)n);
            }
            else
            {
                QuantizedMatMul.Run(view, px, m, (nint)k, pb, py, (nint)n);
            }
        });
        var outShape = x.shape[..^1].Append(n).ToArray();
        return y.reshape(outShape).to(x.dtype).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// A 1x1 convolution (stride 1, no padding, one group) through the packed kernel, or null: <paramref name="x"/> is
    /// float32 <c>[images, C, P]</c> (P = spatial positions), the storage matrix <c>[O, C]</c>, the result
    /// <c>[images, O, P]</c>. Each image is <c>W X</c> with <c>X = [C, P]</c>, which the packed GEMM reads and writes
    /// in place (<see cref="MatMulMethod.Transposed"/>): no channels-last copy of the input or the output.
    /// </summary>
    public static Tensor? TryPointwise(QuantizedTensor parts, Tensor x, Tensor? bias)
    {
        if (x.dtype != ScalarType.Float32 || x.dim() != 3 || !Usable(parts, x, out var format, out int groupSize)) return null;
        long n = parts.Shape[0], k = parts.Shape[1], images = x.shape[0], p = x.shape[2];
        if (x.shape[1] != k || p > int.MaxValue) return null;

        using var scope = NewDisposeScope();
        var input = x.contiguous();
        var y = torch.empty([images, n, p], ScalarType.Float32);
        Pinned(parts, format, groupSize, input, bias, y, (in WeightView view, float* px, float* pb, float* py) =>
        {
            for (long i = 0; i < images; i++)
                QuantizedMatMul.Run(view, px + i * k * p, (int)p, (nint)p, pb, py + i * n * p, (nint)p, method: MatMulMethod.Transposed);
        });
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>Whether a kernel can read <paramref name="parts"/> (a CPU storage matrix) for the CPU input <paramref name="x"/>.</summary>
    private static bool Usable(QuantizedTensor parts, Tensor x, out WeightFormat format, out int groupSize)
    {
        format = default;
        groupSize = 0;
        var shape = parts.Shape;
        if (!Enabled || shape.Length != 2 || shape[0] > int.MaxValue || shape[1] > int.MaxValue) return false;
        if (x.device_type != DeviceType.CPU || x.dtype is not (ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16)) return false;
        if (x.requires_grad && torch.is_grad_enabled()) return false;
        if (parts.Data.device_type != DeviceType.CPU || !parts.Data.is_contiguous()) return false;
        if (Format(parts.Spec, shape[1], out groupSize) is not { } f) return false;
        format = f;
        return true;
    }

    private delegate void KernelCall(in WeightView w, float* x, float* bias, float* y);

    /// <summary>Runs <paramref name="call"/> on the weight's parts, <paramref name="x"/> and <paramref name="y"/> (contiguous float32) and the bias, pinned.</summary>
    private static void Pinned(QuantizedTensor parts, WeightFormat format, int groupSize, Tensor x, Tensor? bias, Tensor y, KernelCall call)
    {
        using var b = bias?.to(ScalarType.Float32).contiguous();
        var scale = parts.Scale;
        var zeroPoint = parts.ZeroPoint;
        // The weight by address: its data may be 2 GiB or more, beyond what one span covers.
        byte* pData = (byte*)TensorSpans.Address(parts.Data);
        fixed (byte* pScale = scale is null ? default : scale.bytes)
        fixed (byte* pZero = zeroPoint is null ? default : zeroPoint.bytes)
        fixed (byte* pX = x.bytes)
        fixed (byte* pY = y.bytes)
        fixed (byte* pBias = b is null ? default : b.bytes)
        {
            bool perTensor = parts.Spec.Granularity is PerTensor;
            var view = new WeightView(format, (int)parts.Shape[0], (int)parts.Shape[1], pData, groupSize, (float*)pScale, (int*)pZero, perTensor ? 0 : -1);
            call(view, (float*)pX, (float*)pBias, (float*)pY);
        }
    }

    /// <summary>The kernel format of a layer weight, or null when no kernel reads it (2-bit types, per-axis other than 0).</summary>
    internal static WeightFormat? Format(QuantSpec spec, long k, out int groupSize)
    {
        groupSize = (int)Math.Min(k, int.MaxValue);
        switch (spec.Granularity)
        {
            case PerGroup g: groupSize = g.GroupSize; break;
            case PerAxis a when a.Axis != 0: return null;
        }
        return spec.Type switch
        {
            QuantType.Int8 => WeightFormat.Int8,
            QuantType.UInt8 => WeightFormat.UInt8,
            QuantType.Int4 => WeightFormat.Int4,
            QuantType.UInt4 => WeightFormat.UInt4,
            QuantType.Float16 => WeightFormat.Float16,
            QuantType.BFloat16 => WeightFormat.BFloat16,
            _ => null,
        };
    }
}

/// <summary>How a W8A8 layer quantizes its input for the integer kernel: calibrated (static) or per row on the fly (dynamic).</summary>
/// <param name="Static">The calibrated input quantization, or null for dynamic.</param>
internal sealed record InputQuantizer(ActivationQuantization? Static)
{
    /// <summary>Per-row symmetric int8 computed on each call (torchao's dynamic activation quantization).</summary>
    public bool Dynamic => Static is null;
}
