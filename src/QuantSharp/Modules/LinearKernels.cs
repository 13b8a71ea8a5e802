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
    /// Whether float16 weights reach bfloat16 through <see cref="HalfKernel.HalfToBFloat16"/> on the kernel threads
    /// (false: libtorch's <c>copy_</c>, the same bits; a switch for the benchmark's before/after).
    /// </summary>
    internal static volatile bool ManagedHalfToBFloat16 = true;

    /// <summary>
    /// Whether half-precision weights reach a float32 destination through <see cref="HalfKernel.FromHalf"/> /
    /// <see cref="HalfKernel.FromBFloat16"/> on the kernel threads (false: libtorch's <c>copy_</c>, the same bits, whose
    /// three tensor calls cost a few microseconds: a quarter of the small-convolution kernel's call on the MNIST CNN's
    /// first layer; a switch for the benchmark's before/after).
    /// </summary>
    internal static volatile bool ManagedHalfToSingle = true;

    /// <summary>
    /// <c>y = x W^T + b</c> for the storage matrix of <paramref name="parts"/> through a kernel, or null. With
    /// <paramref name="input"/> the activations are quantized in the kernel (W8A8 in integers) when the weight is int8
    /// per row; otherwise the call returns null and the caller simulates.
    /// </summary>
    public static Tensor? TryLinear(QuantizedTensor parts, Tensor x, Tensor? bias, InputQuantizer? input = null)
    {
        if (!Usable(parts, x, out var format, out int groupSize)) return null;
        var (n, k) = Matrix(parts);
        // The shape is read once and the tensors touched only where needed: each TorchSharp call that makes a tensor
        // (a no-op to(), reshape() or contiguous() included) costs about half a microsecond, which a small layer's
        // call at batch 1 counts (8 such calls made an 8x8 layer three times slower than float32's linear).
        long[] shape = TensorSpans.Shape(x);
        if (shape.Length == 0 || shape[^1] != k) return null;
        long elements = QuantSpec.Product(shape);
        if (elements / Math.Max(k, 1) > int.MaxValue) return null;
        bool integer = format == WeightFormat.Int8 && groupSize == k && k <= IntegerMatMul.MaxReduction;
        if (input is not null && !integer) return null;

        int m = (int)(elements / Math.Max(k, 1));
        bool float32 = x.dtype == ScalarType.Float32;
        using var converted = float32 ? null : x.to(ScalarType.Float32);
        var source = converted ?? x;
        using var copy = source.is_contiguous() ? null : source.contiguous();
        var rows = copy ?? source;
        var outShape = (long[])shape.Clone();
        outShape[^1] = n;
        var y = torch.empty(outShape, ScalarType.Float32);
        try
        {
            Pinned(parts, format, groupSize, rows, bias, y, (in WeightView view, float* px, float* pb, float* py) =>
            {
                if (input is { } act)
                {
                    using var q = new QuantizedActivations(m, (int)k);
                    FloatActivations source;
                    if (act.Dynamic)
                    {
                        source = FloatActivations.Dynamic(px, (nint)k);
                    }
                    else
                    {
                        var range = QuantRange.For(act.Static!.Type, act.Static.ReduceRange);
                        source = FloatActivations.Static(px, (nint)k, act.Static.Scale, act.Static.ZeroPoint, range.QMin, range.QMax);
                    }
                    IntegerMatMul.Run(view, source, q, pb, py, (nint)n);
                }
                else
                {
                    QuantizedMatMul.Run(view, px, m, (nint)k, pb, py, (nint)n);
                }
            });
        }
        catch
        {
            y.Dispose();
            throw;
        }
        if (float32) return y;
        using (y) return y.to(x.dtype);
    }

    /// <summary>
    /// A convolution through the packed kernels, or null: <paramref name="images"/> is float32
    /// <c>[count, C, H, W]</c>, the storage matrix <c>[O, K]</c> with K = <c>C * kernel</c> (<paramref name="unfold"/>'s
    /// rows), the result <c>[count, O, P]</c> for P output positions. Each image is <c>W X</c> for its column matrix
    /// <c>X = [K, P]</c> (im2col), which the packed GEMM unfolds from the image as it packs it
    /// (<see cref="MatMulMethod.Transposed"/>) and whose result rows are the output channels: neither the columns nor a
    /// float weight is ever built. With a static <paramref name="input"/> (int8 weights, one scale per row or tensor)
    /// the images are quantized once and multiplied by the integer GEMM (W8A8, <see cref="IntegerMatMul.RunConvolution"/>),
    /// which packs its strips straight from their codes: the integers of the simulated path (zero padding becomes the
    /// zero point's code, which contributes nothing).
    /// </summary>
    /// <remarks>
    /// With <paramref name="bfloat16"/> (and no static <paramref name="input"/>) the packed GEMM multiplies in bfloat16
    /// (<see cref="PackedMatMul.Run"/>): the bfloat16 route where libtorch's bfloat16 convolution cannot run. A grouped
    /// convolution (<paramref name="groups"/> above one: a storage matrix of <c>C / groups * kernel</c> columns) runs
    /// only from pair images: in bfloat16 with <paramref name="bfloat16"/> (<see cref="PackedMatMul.GroupedBFloat16"/>),
    /// and with a static <paramref name="input"/> in integer codes, exactly (<see cref="PackedMatMul.GroupedCodes"/>; the
    /// CPU needs AVX512-BF16, the weight int8 of one scale a row or tensor, and the group sums must stay exact,
    /// <see cref="PackedMatMul.CodesExact"/>). Null without either, with a dynamic input, without AVX-512, or with an
    /// odd number of channels a group.
    /// With <paramref name="quads"/> and a static <paramref name="input"/> (int8 symmetric weights, one scale a row or
    /// tensor, the 512-bit VNNI kernel), grouped or not, the output channels in lanes (<see cref="QuadConvolution"/>):
    /// the same integers and floats as the integer GEMM.
    /// </remarks>
    public static Tensor? TryConvolution(QuantizedTensor parts, Tensor images, Im2Col unfold, Tensor? bias, InputQuantizer? input = null, bool bfloat16 = false, int groups = 1, bool quads = false)
    {
        if (images.dtype != ScalarType.Float32 || images.dim() != 4 || groups < 1) return null;
        long[] shape = TensorSpans.Shape(images);
        if (shape[0] > int.MaxValue || !Usable(parts, images, out var format, out int groupSize)) return null;
        var (n, k) = Matrix(parts);
        if (k * groups != unfold.Rows || shape[1] != unfold.Channels || shape[2] != unfold.Height || shape[3] != unfold.Width) return null;
        // The output channels in lanes where asked for and they apply (grouped or not); else the routes below.
        bool quad = quads && input?.Static is not null && format == WeightFormat.Int8 && groupSize == k && Vnni512Kernel.IsSupported
            && QuadConvolution.Fits(unfold.ForImages((int)shape[0]), n, groups) && !HasZeroPoints(View(parts, format, groupSize));
        if (!quad && groups > 1 && ((!bfloat16 && input is null) || !Float512.IsSupported || !PackedMatMul.GroupedBFloat16Fits(unfold, n, groups))) return null;
        if (input is not null && (input.Static is null || format != WeightFormat.Int8 || groupSize != k || (!quad && k > IntegerMatMul.MaxReduction))) return null;
        // Padding is the zero point's code, which must be one of the codes: a uint8 input's zero point of 300 has none
        // (its padding would be read as 44), so such a padded layer takes the packed kernels on the fake-quantized input.
        if (input?.Static is { } act && unfold.PadH + unfold.PadW > 0 && !ZeroPointIsACode(act)) return null;
        if (!quad && input is not null && groups == 1 && !IntegerMatMul.ConvolutionFits(unfold.ForImages((int)shape[0]))) return null;
        InputFakeQuantization? codes = !quad && groups > 1 && input?.Static is { } quantization ? InputCodes(quantization) : null;
        if (codes is { } c && (!Vnni512Kernel.BFloat16Supported || !PackedMatMul.CodesExact(k, PackedMatMul.InputCodeMax(c), PackedMatMul.WeightCodeMax(View(parts, format, groupSize))))) return null;

        // Ungrouped weight-only layers in bfloat16 with the output channels in lanes where that pays (PackedMatMul.UngroupedLanes).
        bool lanes = groups == 1 && bfloat16 && input is null && Float512.IsSupported && Vnni512Kernel.BFloat16Supported
            && PackedMatMul.GroupedBFloat16Fits(unfold, n, 1) && PackedMatMul.UngroupedLanes(unfold.ForImages((int)shape[0]), n);
        using var scope = NewDisposeScope();
        long count = shape[0], p = unfold.Positions, size = unfold.ImageSize;
        var x = images.contiguous();
        var y = torch.empty([count, n, p], ScalarType.Float32);
        Pinned(parts, format, groupSize, x, bias, y, (in WeightView view, float* px, float* pb, float* py) =>
        {
            if (codes is { } c)
            {
                PackedMatMul.GroupedCodes(view, px, pb, py, unfold.ForImages((int)count), groups, c);
                return;
            }
            if (input?.Static is { } act)
            {
                var range = QuantRange.For(act.Type, act.ReduceRange);
                if (quad) QuadConvolution.Run(view, px, pb, py, unfold.ForImages((int)count), groups, act.Scale, act.ZeroPoint, range.QMin, range.QMax);
                // Every image's positions are rows of one integer product, so small images still fill the GEMM's strips.
                else IntegerMatMul.RunConvolution(view, px, unfold.ForImages((int)count), act.Scale, act.ZeroPoint, range.QMin, range.QMax, pb, py);
                return;
            }
            if (groups > 1 || lanes) PackedMatMul.GroupedBFloat16(view, px, pb, py, unfold.ForImages((int)count), groups);
            else QuantizedMatMul.Run(view, px, (int)p, (nint)p, pb, py, (nint)p, method: MatMulMethod.Transposed, unfold: unfold.ForImages((int)count), bfloat16: bfloat16);
        });
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The integer storage matrix of <paramref name="parts"/> dequantized to a new float32 tensor of its shape in one
    /// managed pass (<see cref="WeightDequantizer"/>: the same bits as the tensor-operation formula), or null where no
    /// kernel reads the format (half precision, whose libtorch conversion is one vectorized call already; 2-bit types,
    /// non-CPU or non-contiguous storage, kernels turned off).
    /// </summary>
    public static Tensor? TryDequantize(QuantizedTensor parts)
    {
        if (!CanDequantize(parts, toBFloat16: false, out var format, out int groupSize)) return null;
        var y = torch.empty(parts.Shape, ScalarType.Float32);
        Pinned(parts, format, groupSize, null, null, y, (in WeightView view, float* px, float* pb, float* py) => WeightDequantizer.Run(view, py));
        return y;
    }

    /// <summary>
    /// As <see cref="TryDequantize"/>, into <paramref name="destination"/> (contiguous float32 or bfloat16 CPU, any
    /// shape; bfloat16 rounded to nearest even from the float32 values): the storage matrix's rows from
    /// <paramref name="firstRow"/> on, as many as the destination holds whole rows (all of them by default). Half
    /// precision: into float32 through <see cref="HalfKernel.FromHalf"/> / <see cref="HalfKernel.FromBFloat16"/>, float16
    /// into bfloat16 through <see cref="HalfKernel.HalfToBFloat16"/>, bfloat16 into bfloat16 (and everything with the
    /// switches off) through libtorch's conversion; false where no kernel reads the format.
    /// </summary>
    public static bool TryDequantizeInto(QuantizedTensor parts, Tensor destination, long firstRow = 0)
    {
        bool bfloat16 = destination.dtype == ScalarType.BFloat16;
        var (rows, cols) = Matrix(parts);
        long count = cols == 0 ? 0 : destination.numel() / cols;
        if ((destination.dtype != ScalarType.Float32 && !bfloat16) || destination.device_type != DeviceType.CPU || !destination.is_contiguous()
            || destination.numel() != count * cols || firstRow < 0 || firstRow + count > rows)
            throw new ArgumentException($"The destination must be a contiguous float32 or bfloat16 CPU tensor of whole rows of {cols} elements, rows {firstRow} on within {rows}.", nameof(destination));
        if (!CanDequantize(parts, bfloat16, out var format, out int groupSize))
        {
            if (parts.Spec.Type.IsInteger()) return false;
            // Other half precision (bfloat16 into bfloat16, or a switch off): libtorch's conversion (exact to float32,
            // round to nearest even to bfloat16, as float16 -> float32 -> bfloat16) into the buffer.
            using var noGrad = no_grad();
            using var source = parts.Data.narrow(0, firstRow, count);
            using var view = destination.view(source.shape);
            view.copy_(source);
            return true;
        }
        int first = (int)firstRow, n = (int)count;
        Pinned(parts, format, groupSize, null, null, destination, bfloat16
            ? (in WeightView view, float* px, float* pb, float* py) => WeightDequantizer.RunBFloat16(view.RowRange(first, n), (ushort*)py)
            : (in WeightView view, float* px, float* pb, float* py) => WeightDequantizer.Run(view.RowRange(first, n), py));
        return true;
    }

    /// <summary>
    /// Runs <paramref name="kernel"/> on the storage matrix of <paramref name="parts"/> read in place, where
    /// <see cref="WeightDequantizer"/> reads it into float32 (as <see cref="TryDequantizeInto"/>); false elsewhere.
    /// </summary>
    public static bool TryWithWeightView(QuantizedTensor parts, WeightViewAction kernel)
    {
        if (!CanDequantize(parts, toBFloat16: false, out var format, out int groupSize)) return false;
        kernel(View(parts, format, groupSize));
        return true;
    }

    /// <summary>
    /// Whether <see cref="WeightDequantizer"/> reads <paramref name="parts"/>: integer weights, float16 weights into
    /// bfloat16 (<paramref name="toBFloat16"/>, <see cref="ManagedHalfToBFloat16"/>) and half-precision weights into
    /// float32 (<see cref="ManagedHalfToSingle"/>).
    /// </summary>
    private static bool CanDequantize(QuantizedTensor parts, bool toBFloat16, out WeightFormat format, out int groupSize)
    {
        format = default;
        groupSize = 0;
        bool managed = parts.Spec.Type.IsInteger()
            || (toBFloat16 && ManagedHalfToBFloat16 && parts.Spec.Type == QuantType.Float16)
            || (!toBFloat16 && ManagedHalfToSingle && parts.Spec.Type is QuantType.Float16 or QuantType.BFloat16);
        if (!Enabled || !managed || parts.Shape.Length < 2 || parts.Data.device_type != DeviceType.CPU || !parts.Data.is_contiguous()) return false;
        var (rows, cols) = Matrix(parts);
        if (rows > int.MaxValue || cols > int.MaxValue || rows * cols == 0 || Format(parts.Spec, cols, out groupSize) is not { } f) return false;
        format = f;
        return true;
    }

    /// <summary>The storage as a matrix: rows (first dimension) by the product of the others (a half-precision convolution weight keeps its rank-3/4 shape).</summary>
    private static (long Rows, long Cols) Matrix(QuantizedTensor parts)
    {
        var shape = parts.Shape;
        long cols = 1;
        for (int i = 1; i < shape.Length; i++) cols *= shape[i];
        return (shape[0], cols);
    }

    /// <summary>Whether a kernel can read <paramref name="parts"/> (a CPU storage matrix) for the CPU input <paramref name="x"/>.</summary>
    private static bool Usable(QuantizedTensor parts, Tensor x, out WeightFormat format, out int groupSize)
    {
        format = default;
        groupSize = 0;
        if (!Enabled || parts.Shape.Length < 2) return false;
        var (rows, cols) = Matrix(parts);
        if (rows > int.MaxValue || cols > int.MaxValue || (parts.Shape.Length > 2 && parts.Spec.Type.IsInteger())) return false;
        if (x.device_type != DeviceType.CPU || x.dtype is not (ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16)) return false;
        if (x.requires_grad && torch.is_grad_enabled()) return false;
        if (parts.Data.device_type != DeviceType.CPU || !parts.Data.is_contiguous()) return false;
        if (Format(parts.Spec, cols, out groupSize) is not { } f) return false;
        format = f;
        return true;
    }

    /// <summary>Whether <paramref name="act"/>'s zero point is one of its codes (within <c>[qmin, qmax]</c>).</summary>
    internal static bool ZeroPointIsACode(ActivationQuantization act)
    {
        var range = QuantRange.For(act.Type, act.ReduceRange);
        return act.ZeroPoint >= range.QMin && act.ZeroPoint <= range.QMax;
    }

    /// <summary>Whether any row of <paramref name="w"/> has a zero point other than 0.</summary>
    private static bool HasZeroPoints(in WeightView w)
    {
        for (int r = 0; r < w.Rows && w.ZeroPoint != null; r++)
            if (w.Params(r, 0).ZeroPoint != 0) return true;
        return false;
    }

    private delegate void KernelCall(in WeightView w, float* x, float* bias, float* y);

    /// <summary>
    /// A static input quantization as the integer kernels apply it (<c>clamp(round(x * (1 / scale)) + zero point, qmin,
    /// qmax)</c>, <see cref="IntegerMatMul.RunConvolution"/>), for <see cref="PackedMatMul.GroupedCodes"/>.
    /// </summary>
    internal static InputFakeQuantization InputCodes(ActivationQuantization act)
    {
        var range = QuantRange.For(act.Type, act.ReduceRange);
        return new InputFakeQuantization(act.Scale, 1f / act.Scale, act.ZeroPoint, range.QMin, range.QMax);
    }

    /// <summary>Runs <paramref name="call"/> on the weight's parts, <paramref name="x"/> (or null) and <paramref name="y"/> (contiguous float32) and the bias, pinned.</summary>
    private static void Pinned(QuantizedTensor parts, WeightFormat format, int groupSize, Tensor? x, Tensor? bias, Tensor y, KernelCall call)
    {
        bool asIs = bias is null || (bias.dtype == ScalarType.Float32 && bias.is_contiguous());
        using var converted = asIs ? null : bias!.to(ScalarType.Float32);
        using var b = converted?.contiguous();
        call(View(parts, format, groupSize), (float*)AddressOrNull(x), (float*)AddressOrNull(b ?? bias), (float*)AddressOrNull(y));
    }

    /// <summary>The weight's parts as a <see cref="WeightView"/> of <paramref name="format"/> (the tensors' memory, not copied).</summary>
    private static WeightView View(QuantizedTensor parts, WeightFormat format, int groupSize)
    {
        // By address (libtorch's CPU memory never moves): the weight's data may be 2 GiB or more, beyond what one span covers.
        byte* pData = (byte*)TensorSpans.Address(parts.Data);
        bool perTensor = parts.Spec.Granularity is PerTensor;
        var (rows, cols) = Matrix(parts);
        return new WeightView(format, (int)rows, (int)cols, pData, groupSize, (float*)AddressOrNull(parts.Scale), (int*)AddressOrNull(parts.ZeroPoint), perTensor ? 0 : -1);
    }

    /// <summary>The first element's address of a contiguous CPU tensor, or null for none or an empty one.</summary>
    private static nint AddressOrNull(Tensor? t) => t is null || t.numel() == 0 ? 0 : TensorSpans.Address(t);

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
