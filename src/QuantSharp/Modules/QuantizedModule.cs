using System.Runtime.Intrinsics.X86;
using System.Runtime.InteropServices;
using QuantSharp.Kernels;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Modules;

/// <summary>
/// Base of the quantized layers that replace float modules (<c>Linear</c>, <c>Conv1d</c>, <c>Conv2d</c>,
/// <c>Embedding</c>, and whatever is registered in <see cref="QuantizedModules"/>). The weight is a
/// <see cref="QuantizedWeight"/> whose layout tensors are registered buffers (so <c>state_dict</c>, <c>buffers()</c>
/// and memory measurements see the small tensors), named by <see cref="QuantizedWeightNames.InModule"/>:
/// <c>weight</c> (Int8, packed 4-bit Byte, or Float16/BFloat16), <c>weight_scale</c> (float32) and
/// <c>weight_zero_point</c> (int32, only when needed). The bias stays a float32 parameter <c>bias</c>. With static
/// activation quantization the calibrated input range is kept as <c>input_scale</c> (float32 scalar) and
/// <c>input_zero_point</c> (int32 scalar).
/// </summary>
/// <remarks>
/// <para>Extenders derive from this class for their own layer type, pass the quantized weight and the float bias to
/// this constructor, implement <c>forward</c> with <see cref="weight"/>'s operations, and register a
/// handler for the float type with <see cref="QuantizedModules.Register{TFloat}"/>.</para>
/// <para>With the canonical layouts the forward pass dequantizes the weight to float32 on every call (nothing is
/// cached, so memory stays small) and runs TorchSharp's functional linear/conv/embedding in float32; kernel layouts
/// run their own kernels. With activation quantization the input is first quantized and dequantized with the
/// calibrated scale and zero point (W8A8 simulated on CPU).</para>
/// </remarks>
public abstract class QuantizedModule : nn.Module<Tensor, Tensor>
{
    private const string WeightParameter = "weight";
    private const string BiasName = "bias";
    private const string InputScaleName = "input_scale";
    private const string InputZeroPointName = "input_zero_point";

    /// <summary>Creates the module; takes ownership of <paramref name="weight"/> and of a copy of <paramref name="bias"/>.</summary>
    /// <param name="typeName">Module type name (e.g. <c>QuantizedLinear</c>).</param>
    /// <param name="weight">The quantized weight (it may be shared with another module: tied weights).</param>
    /// <param name="bias">The float bias (copied to float32), or null.</param>
    /// <param name="input">Static input quantization, or null (weight-only).</param>
    protected QuantizedModule(string typeName, QuantizedWeight weight, Tensor? bias, ActivationQuantization? input)
        : base(typeName)
    {
        ArgumentNullException.ThrowIfNull(weight);
        this.weight = weight;
        InputQuantization = input;
        foreach (var (part, t) in weight.Layout.Tensors)
            register_buffer(QuantizedWeightNames.InModule(WeightParameter, part), t, persistent: true);
        if (bias is not null)
        {
            using var noGrad = no_grad();
            register_parameter(BiasName, new TorchSharp.Modules.Parameter(bias.detach().to(ScalarType.Float32).clone().DetachFromDisposeScope(), requires_grad: false));
        }
        if (input is not null)
        {
            register_buffer(InputScaleName, torch.tensor(input.Scale, ScalarType.Float32).DetachFromDisposeScope(), persistent: true);
            register_buffer(InputZeroPointName, torch.tensor(input.ZeroPoint, ScalarType.Int32).DetachFromDisposeScope(), persistent: true);
        }
    }

#pragma warning disable IDE1006 // TorchSharp's names, so that code written for the float module reads the same
    /// <summary>The quantized weight (named as the float module's parameter).</summary>
    public QuantizedWeight weight { get; }

    /// <summary>The bias (float32), or null.</summary>
    public Tensor? bias => get_parameter(BiasName);
#pragma warning restore IDE1006

    /// <summary>How the weight is quantized.</summary>
    public QuantSpec WeightSpec => weight.Spec;

    /// <summary>The float weight's shape (e.g. <c>[out, in]</c> or <c>[out, in/groups, kh, kw]</c>).</summary>
    public IReadOnlyList<long> WeightShape => weight.Shape;

    /// <summary>The static input quantization (W8A8), or null for weight-only quantization.</summary>
    public ActivationQuantization? InputQuantization { get; }

    /// <summary>
    /// The layer's name in the model (set by the quantizer); used in error messages. Not stored in checkpoints.
    /// </summary>
    public string LayerName { get; internal set; } = "";

    /// <summary>The float module type this module replaced (recorded in saved files), or null when built directly.</summary>
    internal string? FloatTypeName { get; set; }

    /// <summary>The weight dequantized to float32 in its original shape (a new tensor; dispose it).</summary>
    public Tensor DequantizeWeight() => weight.Dequantize();

    /// <summary>Bytes of the weight storage: data, scale and zero point.</summary>
    public long WeightStorageBytes => weight.StorageBytes;

    /// <summary>
    /// Dynamic W8A8: each input row (last axis) is quantized on the fly to int8, symmetric over [-127, 127] with
    /// <c>scale = max(amax / 127, eps)</c> (torchao's <c>Int8DynamicActivationInt8WeightConfig</c>); int8 per-row
    /// weights then multiply in integers. Not stored in checkpoints.
    /// </summary>
    internal bool DynamicInput { get; set; }

    /// <summary>How the input is quantized for an integer kernel (static or dynamic W8A8), or null for weight-only layers.</summary>
    internal InputQuantizer? InputQuantizer => DynamicInput ? new InputQuantizer(null) : InputQuantization is { } act ? new InputQuantizer(act) : null;

    /// <summary>Quantizes and dequantizes <paramref name="x"/> with the calibrated input qparams, or per row when
    /// <see cref="DynamicInput"/> (identity for weight-only layers).</summary>
    protected internal Tensor QuantizeInput(Tensor x)
    {
        if (DynamicInput)
        {
            if (LinearKernels.Enabled && DynamicInputInOnePass && FakeQuantizeRowsManaged(x) is { } rows) return rows;
            using var kept = new KeptScalars();
            var amax = x.abs().amax([-1], keepdim: true);
            var scale = amax.div(kept.Of(127f)).clamp_min(kept.Of(1.1920929e-07f));
            return (x * scale.reciprocal()).round().clamp(kept.Of(-127), kept.Of(127)) * scale;
        }
        if (InputQuantization is not { } act) return x;
        if (StaticInputFakeQuantization() is { } managed && FakeQuantizeManaged(x, managed) is { } y) return y;
        var s = get_buffer(InputScaleName)!;
        var z = get_buffer(InputZeroPointName)!;
        return WeightQuantizer.FakeQuantize(x, s, z.to(ScalarType.Float32), QuantRange.For(act.Type, act.ReduceRange));
    }

    /// <summary>
    /// Whether quantized layers may compute in bfloat16 where the CPU does so in hardware (AVX512-BF16 or AMX-BF16;
    /// default true). There, convolutions that are neither small nor differentiated, and linear layers over many rows
    /// whose weight-only path would run slower (the measured rules of <c>ConvolutionCost</c> and <c>LinearCost</c>), run
    /// libtorch's bfloat16 convolution or matrix product on the weight dequantized to bfloat16 and the (for W8A8:
    /// fake-quantized) input rounded to bfloat16, accumulating in float32, and return float32. On the development
    /// machine (AMD EPYC, AVX512-BF16) that took 0.5-0.94x the float32 layer's time, where the float32 routes took
    /// 1.0-1.9x (docs/BENCHMARKS.md). The price is bfloat16's 8-bit significand on inputs and weights (relative rounding
    /// up to 2^-8 each, below an int8 or int4 weight's quantization step; float16 weights lose 3 bits): outputs differ
    /// from the float32 computation by up to about 0.5% of their largest magnitude (docs/ACCURACY.md, "bfloat16
    /// compute"). PyTorch makes the same trade with <c>torch.backends.mkldnn.conv.fp32_precision = "bf16"</c>. Set false
    /// for float32 arithmetic everywhere; CPUs without native bfloat16 never compute in bfloat16, nor does a process in
    /// which libtorch's bfloat16 convolution (or matrix product) failed a known-answer check at its first use (it
    /// returned wrong values on one Zen 5 CPU) with libtorch's operation: convolutions then compute in bfloat16 on the
    /// packed kernels (<c>vdpbf16ps</c>, CPUs with AVX512-BF16) where that was measured faster than float32 (weight-only
    /// reductions of 128 or more terms into 256 or more channels, or of 256 or more into 128 or more on more than 128
    /// positions), and keep their float32 routes elsewhere; where both libtorch's and the packed kernels' bfloat16
    /// convolutions run (a Zen 4 CPU), the packed kernels take the calls of up to 64 output positions, pointwise calls
    /// of one image and reductions of fewer than 96 terms whose images they read in place, libtorch's the rest but other
    /// reductions of fewer than 96 terms (float32 there);
    /// linear layers keep their float32 routes. Integer W8A8 layers keep their integer kernels.
    /// </summary>
    public static bool UseBFloat16Compute { get; set; } = true;

    /// <summary>
    /// Whether the bfloat16 convolution route may run in this process: <see cref="UseBFloat16Compute"/> on a CPU with
    /// native bfloat16 where libtorch's bfloat16 convolution gave the known answers (<see cref="BFloat16Check"/>), or,
    /// where it did not, the packed kernels can multiply in bfloat16 (<see cref="PackedBFloat16Convolutions"/>).
    /// </summary>
    internal static bool BFloat16Convolutions => UseBFloat16Compute && NativeBFloat16 && (BFloat16Check.Convolutions || Vnni512Kernel.BFloat16Supported);

    /// <summary>
    /// Whether the bfloat16 convolution route runs on the packed kernels in bfloat16 (<see cref="PackedMatMul.Run"/>'s
    /// bfloat16 mode, <c>vdpbf16ps</c>) instead of libtorch's bfloat16 convolution: where that failed
    /// <see cref="BFloat16Check"/> and the CPU has AVX512-BF16 (<see cref="Vnni512Kernel.BFloat16Supported"/>).
    /// </summary>
    internal static bool PackedBFloat16Convolutions => !BFloat16Check.Convolutions && Vnni512Kernel.BFloat16Supported;

    /// <summary>
    /// Whether both bfloat16 convolutions run here: libtorch's passed <see cref="BFloat16Check"/> and the packed kernels
    /// multiply in bfloat16 too (<see cref="Vnni512Kernel.BFloat16Supported"/>). The bfloat16 route then runs on the
    /// packed kernels where <see cref="ConvolutionCost.PackedBFloat16BeatsLibTorch"/>, on libtorch's elsewhere (weight-only
    /// calls of fewer than <see cref="ConvolutionCost.LibTorchBFloat16MinReduction"/> terms take another route where the
    /// packed kernels do not apply).
    /// </summary>
    internal static bool BothBFloat16Convolutions => BFloat16Check.Convolutions && Vnni512Kernel.BFloat16Supported;

    /// <summary>As <see cref="BFloat16Convolutions"/>, for the linear layers' bfloat16 route (libtorch's bfloat16 matrix product).</summary>
    internal static bool BFloat16MatMuls => UseBFloat16Compute && NativeBFloat16 && BFloat16Check.MatMuls;

    /// <summary>
    /// Whether this CPU computes bfloat16 dot products in hardware (AVX512-BF16: CPUID leaf 7 sub-leaf 1, EAX bit 5; or
    /// AMX-BF16: leaf 7, EDX bit 22) with AVX-512 in use by .NET, so that libtorch's bfloat16 convolution and GEMM
    /// (oneDNN) run at about twice their float32 rate. Without it oneDNN emulates bfloat16 and the routes would lose.
    /// </summary>
    internal static bool NativeBFloat16 { get; } = DetectBFloat16();

    private static bool DetectBFloat16()
    {
        if (!X86Base.IsSupported || !Avx512F.IsSupported || X86Base.CpuId(0, 0).Eax < 7) return false;
        bool amxBf16 = (X86Base.CpuId(7, 0).Edx & (1 << 22)) != 0;
        return Simd.Avx512BFloat16 || amxBf16;
    }

    /// <summary>Weights from this many elements (256 KiB in float32) are dequantized into the thread's buffer (<see cref="DequantizeForCall"/>).</summary>
    internal const long BufferMinElements = 1 << 16;

    /// <summary>Weights above this many elements (16 MiB in float32) get a new tensor on every call, never the thread's buffer.</summary>
    internal const long BufferMaxElements = 1 << 22;

    [ThreadStatic]
    private static Tensor? t_weightBuffer;

    [ThreadStatic]
    private static Tensor? t_bfloat16Buffer;

    /// <summary>
    /// The weight dequantized to <paramref name="dtype"/> (float32 or bfloat16) for one libtorch operation. Where no
    /// gradient is recorded and the weight is between <see cref="BufferMinElements"/> and
    /// <see cref="BufferMaxElements"/>, the values go into a buffer of that type the calling thread keeps for its next
    /// call (one per thread and type, as large as the largest such weight it has run; never a copy per layer, rewritten
    /// every call): a new multi-megabyte tensor on every call was returned to the system and faulted in again each time,
    /// and the convolution that read it then took 16-90x the float layer's time on this loaded VM (3x3 256->256, Conv1d
    /// 512->512; the same convolution on a reused buffer 1.0-1.4x). With gradients the weight is a new tensor, since
    /// autograd keeps it for the backward pass. Dispose the result (a view of the buffer, or a new tensor).
    /// </summary>
    internal Tensor DequantizeForCall(bool recordsGradient, ScalarType dtype = ScalarType.Float32)
    {
        long count = WeightShape.Aggregate(1L, (a, b) => a * b);
        if (!recordsGradient)
        {
            // Smaller and larger weights: a new tensor of the type, written in the same single pass.
            var target = count < BufferMinElements || count > BufferMaxElements ? torch.empty([.. WeightShape], dtype)
                : dtype == ScalarType.BFloat16 ? BufferView(ref t_bfloat16Buffer, dtype, count) : BufferView(ref t_weightBuffer, dtype, count);
            if (weight.Layout.DequantizeInto(target)) return target;
            target.Dispose();
        }
        var w = DequantizeWeight();
        if (dtype == ScalarType.Float32) return w;
        using (w) return w.to(dtype);
    }

    /// <summary>
    /// Rows <c>firstRow..firstRow + rows - 1</c> of the storage matrix dequantized to bfloat16 into the thread's buffer,
    /// as <c>[rows, columns]</c>, for one libtorch operation (weights beyond <see cref="BufferMaxElements"/>, in blocks of
    /// rows); null where the layout has no kernel for it. Dispose the result.
    /// </summary>
    internal Tensor? DequantizeRowsForCall(long firstRow, long rows)
    {
        long columns = WeightShape.Skip(1).Aggregate(1L, (a, b) => a * b);
        var target = BufferView(ref t_bfloat16Buffer, ScalarType.BFloat16, rows * columns, [rows, columns]);
        if (weight.Layout.DequantizeInto(target, firstRow)) return target;
        target.Dispose();
        return null;
    }

    /// <summary>A view of <paramref name="shape"/> (the weight's by default) on the thread's <paramref name="buffer"/> of <paramref name="dtype"/>, grown when too small.</summary>
    private Tensor BufferView(ref Tensor? buffer, ScalarType dtype, long count, long[]? shape = null)
    {
        if (buffer is null || buffer.numel() < count)
        {
            buffer?.Dispose();
            buffer = torch.empty(count, dtype).DetachFromDisposeScope();
        }
        return buffer.narrow(0, 0, count).view(shape ?? [.. WeightShape]);
    }

    /// <summary>
    /// The calibrated input quantization as the managed kernels apply it (<see cref="QuantizeKernel.FakeQuantize"/>,
    /// the values of <see cref="QuantizeInput"/>), or null for weight-only and dynamic layers and where the kernels are
    /// turned off.
    /// </summary>
    internal InputFakeQuantization? StaticInputFakeQuantization()
    {
        if (DynamicInput || InputQuantization is not { } act || !LinearKernels.Enabled) return null;
        var range = QuantRange.For(act.Type, act.ReduceRange);
        float s = Scalar<float>(get_buffer(InputScaleName)!);
        return new InputFakeQuantization(s, 1f / s, Scalar<int>(get_buffer(InputZeroPointName)!), range.QMin, range.QMax);
    }

    /// <summary>Whether <see cref="FakeQuantizeRowsManaged"/> replaces the dynamic tensor operations (the probe turns it off to measure the difference).</summary>
    internal static bool DynamicInputInOnePass = true;

    /// <summary>Elements per work item of <see cref="FakeQuantizeManaged"/>.</summary>
    private const int FakeQuantizeChunk = 1 << 15;

    /// <summary>
    /// <see cref="WeightQuantizer.FakeQuantize"/> in one managed pass (<see cref="QuantizeKernel.FakeQuantize"/>: the same
    /// float32 operations, so the same values; a NaN becomes the lowest code's value, as in PyTorch's fake-quantize and
    /// the integer kernels, where the tensor operations kept it NaN), or null where the input needs the differentiable
    /// tensor operations (gradients) or is not a float32 CPU tensor.
    /// </summary>
    private static unsafe Tensor? FakeQuantizeManaged(Tensor x, InputFakeQuantization quantization)
    {
        if (x.dtype != ScalarType.Float32 || x.device_type != DeviceType.CPU || (x.requires_grad && is_grad_enabled())) return null;
        long count = x.numel();
        if (count == 0 || count > int.MaxValue) return null;
        using var source = x.contiguous();
        var y = torch.empty_like(source); // contiguous float32 like the source (x.shape alone costs about 0.7 us)
        float* px = (float*)TensorSpans.Address(source), py = (float*)TensorSpans.Address(y);
        int chunks = (int)((count + FakeQuantizeChunk - 1) / FakeQuantizeChunk);
        KernelThreads.For(chunks, FakeQuantizeChunk, c =>
        {
            long start = (long)c * FakeQuantizeChunk;
            int length = (int)Math.Min(FakeQuantizeChunk, count - start);
            quantization.Apply(new ReadOnlySpan<float>(px + start, length), new Span<float>(py + start, length));
        });
        return y;
    }

    /// <summary>
    /// The dynamic input quantization of <see cref="QuantizeInput"/> in one managed pass per row: the largest magnitude
    /// (<see cref="MinMaxKernel.AbsMax"/>), the scale of the integer kernels (<see cref="IntegerMatMul.DynamicScale"/>:
    /// <c>max(amax / 127, eps)</c>, the tensor operations' float32 value) and <see cref="QuantizeKernel.FakeQuantize"/>
    /// with its reciprocal (the tensor operations' <c>reciprocal</c>, <c>round</c>, <c>clamp</c> and product). The same
    /// values as the tensor operations (a row with a NaN is NaN either way), except an infinite input, which becomes
    /// the lowest code's value (infinite) where the tensor operations give NaN, as the integer kernels do; or null where the
    /// input needs the differentiable tensor operations or is not a float32 CPU tensor. With the eight tensor operations
    /// the simulated dynamic path of an int8 64x800 layer over 1-64 rows took 1.88-4.14x float32's time, with the pass
    /// 1.00-1.75x (docs/BENCHMARKS.md, stop 21).
    /// </summary>
    private static unsafe Tensor? FakeQuantizeRowsManaged(Tensor x)
    {
        if (x.dtype != ScalarType.Float32 || x.device_type != DeviceType.CPU || (x.requires_grad && is_grad_enabled())) return null;
        long[] shape = TensorSpans.Shape(x);
        long count = QuantSpec.Product(shape);
        if (count == 0 || count > int.MaxValue || shape.Length == 0) return null;
        int k = (int)shape[^1], rows = (int)(count / k);
        using var source = x.contiguous();
        var y = torch.empty_like(source);
        float* px = (float*)TensorSpans.Address(source), py = (float*)TensorSpans.Address(y);
        int rowsPerItem = Math.Clamp(FakeQuantizeChunk / k, 1, rows), items = (rows + rowsPerItem - 1) / rowsPerItem;
        KernelThreads.For(items, 2L * rowsPerItem * k, item =>
        {
            for (int i = item * rowsPerItem, end = Math.Min(rows, i + rowsPerItem); i < end; i++)
            {
                var row = new ReadOnlySpan<float>(px + (nint)i * k, k);
                float scale = IntegerMatMul.DynamicScale(MinMaxKernel.AbsMax(row));
                QuantizeKernel.FakeQuantize(row, scale, 1f / scale, 0f, -127f, 127f, new Span<float>(py + (nint)i * k, k));
            }
        });
        return y;
    }

    /// <summary>The value of a one-element tensor: read from its CPU memory (0.1 us; <c>item</c> took about 1 us, which counts in a small convolution's call), else through <c>item</c>.</summary>
    private static T Scalar<T>(Tensor t) where T : unmanaged
    {
        if (t.device_type == DeviceType.CPU && t.numel() == 1 && t.ElementSize == System.Runtime.CompilerServices.Unsafe.SizeOf<T>()
            && t.dtype == (typeof(T) == typeof(float) ? ScalarType.Float32 : ScalarType.Int32))
            return System.Runtime.InteropServices.MemoryMarshal.Read<T>(t.bytes);
        return t.item<T>();
    }

    /// <summary>Runs <paramref name="op"/> and turns libtorch's shape errors into one that names the layer.</summary>
    protected Tensor Guard(Tensor input, string expects, Func<Tensor> op)
    {
        try
        {
            return op();
        }
        catch (ExternalException e)
        {
            throw new ArgumentException(
                $"Quantized layer '{LayerName}' ({GetType().Name}) cannot take an input of shape [{string.Join(", ", input.shape)}] " +
                $"and dtype {input.dtype}: it expects {expects}. libtorch said: {FirstLine(e.Message)}", e);
        }
    }

    internal static string FirstLine(string message)
    {
        int i = message.IndexOf('\n');
        return i < 0 ? message : message[..i];
    }
}

/// <summary>Calibrated static quantization of a layer's input (per-tensor).</summary>
/// <param name="Type">Integer type of the activations (UInt8 affine as PyTorch's default, or Int8).</param>
/// <param name="Scheme">Symmetric or affine.</param>
/// <param name="ReduceRange">One bit less of range.</param>
/// <param name="Scale">Scale (finite, &gt; 0).</param>
/// <param name="ZeroPoint">Zero point within the type's range.</param>
public sealed record ActivationQuantization(QuantType Type, QuantScheme Scheme, bool ReduceRange, float Scale, int ZeroPoint);
