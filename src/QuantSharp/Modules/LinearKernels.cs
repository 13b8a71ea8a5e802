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
        var shape = parts.Shape;
        if (!Enabled || shape.Length != 2) return null;
        long n = shape[0], k = shape[1];
        if (x.device_type != DeviceType.CPU || x.dim() == 0 || x.shape[^1] != k) return null;
        if (x.dtype is not (ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16)) return null;
        if (x.requires_grad && torch.is_grad_enabled()) return null;
        if (n > int.MaxValue || k > int.MaxValue || x.numel() / Math.Max(k, 1) > int.MaxValue) return null;
        var format = Format(parts.Spec, k, out int groupSize);
        if (format is null) return null;
        bool integer = format == WeightFormat.Int8 && groupSize == k && k <= IntegerMatMul.MaxReduction;
        if (input is not null && !integer) return null;
        var data = parts.Data;
        var scale = parts.Scale;
        var zeroPoint = parts.ZeroPoint;
        if (data.device_type != DeviceType.CPU || !data.is_contiguous()) return null;

        using var scope = NewDisposeScope();
        int m = (int)(x.numel() / k);
        var rows = x.to(ScalarType.Float32).reshape(m, k).contiguous();
        var y = torch.empty([m, n], ScalarType.Float32);
        var b = bias?.to(ScalarType.Float32).contiguous();
        // The weight by address: its data may be 2 GiB or more, beyond what one span covers.
        byte* pData = (byte*)TensorSpans.Address(data);
        fixed (byte* pScale = scale is null ? default : scale.bytes)
        fixed (byte* pZero = zeroPoint is null ? default : zeroPoint.bytes)
        fixed (byte* pX = rows.bytes)
        fixed (byte* pY = y.bytes)
        fixed (byte* pBias = b is null ? default : b.bytes)
        {
            bool perTensor = parts.Spec.Granularity is PerTensor;
            var view = new WeightView(format.Value, (int)n, (int)k, pData, groupSize, (float*)pScale, (int*)pZero, perTensor ? 0 : -1);
            if (input is { } act)
            {
                using var q = new QuantizedActivations(m, (int)k);
                if (act.Dynamic)
                {
                    IntegerMatMul.QuantizeDynamic((float*)pX, (nint)k, q);
                }
                else
                {
                    var range = QuantRange.For(act.Static!.Type, act.Static.ReduceRange);
                    IntegerMatMul.QuantizeStatic((float*)pX, (nint)k, act.Static.Scale, act.Static.ZeroPoint, range.QMin, range.QMax, q);
                }
                IntegerMatMul.Run(view, q, (float*)pBias, (float*)pY, (nint)n);
            }
            else
            {
                QuantizedMatMul.Run(view, (float*)pX, m, (nint)k, (float*)pBias, (float*)pY, (nint)n);
            }
        }
        var outShape = x.shape[..^1].Append(n).ToArray();
        return y.reshape(outShape).to(x.dtype).MoveToOuterDisposeScope();
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
