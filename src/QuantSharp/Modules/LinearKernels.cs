using QuantSharp.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Modules;

/// <summary>
/// The fast forward of a quantized linear layer: the kernels of <see cref="QuantizedMatMul"/> (weight-only and W8A8 with
/// non-int8 weights) and <see cref="IntegerMatMul"/> (W8A8 with int8 per-row weights) read the layer's buffers in place.
/// Returns null where no kernel applies, and the layer then dequantizes and calls the float op (the differentiable,
/// reference path): inputs that need gradients, non-CPU tensors, other dtypes, shapes libtorch would reject.
/// </summary>
internal static unsafe class LinearKernels
{
    /// <summary>Whether the kernels may be used (tests and the bench turn them off to time the reference path).</summary>
    internal static volatile bool Enabled = true;

    /// <summary><c>y = x W^T + b</c> through a kernel, or null.</summary>
    public static Tensor? TryForward(QuantizedModule layer, Tensor input, Tensor? bias)
    {
        if (!Enabled || layer.WeightShape.Count != 2) return null;
        long n = layer.WeightShape[0], k = layer.WeightShape[1];
        if (input.device_type != DeviceType.CPU || input.dim() == 0 || input.shape[^1] != k) return null;
        if (input.dtype is not (ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16)) return null;
        if (input.requires_grad && torch.is_grad_enabled()) return null;
        if (n > int.MaxValue || k > int.MaxValue || input.numel() / Math.Max(k, 1) > int.MaxValue) return null;
        var format = Format(layer.WeightSpec, k, out int groupSize);
        if (format is null) return null;
        var data = layer.WeightData;
        var scale = layer.WeightScale;
        var zeroPoint = layer.WeightZeroPoint;
        if (data.device_type != DeviceType.CPU || !data.is_contiguous()) return null;

        using var scope = NewDisposeScope();
        int m = (int)(input.numel() / k);
        var x = input.to(ScalarType.Float32).reshape(m, k).contiguous();
        var y = torch.empty([m, n], ScalarType.Float32);
        var b = bias?.to(ScalarType.Float32).contiguous();
        var act = layer.InputQuantization;
        bool quantizedInput = act is not null || layer.DynamicInput;
        bool integer = quantizedInput && format == WeightFormat.Int8 && groupSize == k && k <= IntegerMatMul.MaxReduction;
        if (quantizedInput && !integer)
        {
            x = layer.QuantizeInput(x).contiguous(); // W8A8 whose weights the integer kernel does not take: simulated input
        }
        fixed (byte* pData = data.bytes)
        fixed (byte* pScale = scale is null ? default : scale.bytes)
        fixed (byte* pZero = zeroPoint is null ? default : zeroPoint.bytes)
        fixed (byte* pX = x.bytes)
        fixed (byte* pY = y.bytes)
        fixed (byte* pBias = b is null ? default : b.bytes)
        {
            bool perTensor = layer.WeightSpec.Granularity is PerTensor;
            var view = new WeightView(format.Value, (int)n, (int)k, pData, groupSize, (float*)pScale, (int*)pZero, perTensor ? 0 : -1);
            if (integer)
            {
                using var q = new QuantizedActivations(m, (int)k);
                if (act is null)
                {
                    IntegerMatMul.QuantizeDynamic((float*)pX, (nint)k, q);
                }
                else
                {
                    var range = QuantRange.For(act.Type, act.ReduceRange);
                    IntegerMatMul.QuantizeStatic((float*)pX, (nint)k, act.Scale, act.ZeroPoint, range.QMin, range.QMax, q);
                }
                IntegerMatMul.Run(view, q, (float*)pBias, (float*)pY, (nint)n);
            }
            else
            {
                QuantizedMatMul.Run(view, (float*)pX, m, (nint)k, (float*)pBias, (float*)pY, (nint)n);
            }
        }
        var outShape = input.shape[..^1].Append(n).ToArray();
        return y.reshape(outShape).to(input.dtype).MoveToOuterDisposeScope();
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
