using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Modules;

/// <summary>A quantized replacement for <see cref="TorchSharp.Modules.Linear"/>: <c>y = x W^T + b</c> through the weight's layout.</summary>
public sealed class QuantizedLinear : QuantizedModule
{
    /// <summary>Creates a quantized linear layer from a quantized <c>[out, in]</c> weight.</summary>
    /// <param name="weight">The quantized weight (rank 2).</param>
    /// <param name="bias">The float bias <c>[out]</c> (copied), or null.</param>
    /// <param name="input">Static input quantization, or null.</param>
    /// <exception cref="ArgumentException">The weight is not rank 2 or the bias does not match.</exception>
    public QuantizedLinear(QuantizedWeight weight, Tensor? bias = null, ActivationQuantization? input = null)
        : base(nameof(QuantizedLinear), weight, bias, input)
    {
        if (weight.Shape.Count != 2) throw new ArgumentException($"A linear weight has rank 2, got shape {QuantSpec.FormatShape([.. weight.Shape])}.", nameof(weight));
        if (bias is not null && (bias.dim() != 1 || bias.shape[0] != weight.Shape[0]))
            throw new ArgumentException($"The bias must have shape [{weight.Shape[0]}], got {QuantSpec.FormatShape(bias.shape)}.", nameof(bias));
    }

#pragma warning disable IDE1006 // TorchSharp's names
    /// <summary>Input features.</summary>
    public long in_features => WeightShape[1];

    /// <summary>Output features.</summary>
    public long out_features => WeightShape[0];
#pragma warning restore IDE1006

    /// <inheritdoc/>
    public override Tensor forward(Tensor input) => Forward(input, null);

    /// <summary>
    /// The forward pass; <paramref name="route"/> forces a weight-only route (tests and benches), null: the measured
    /// rule; <paramref name="integer"/> false takes W8A8's simulated path where the integer kernels apply (benches).
    /// </summary>
    internal Tensor Forward(Tensor input, LinearRoute? route, bool integer = true)
    {
        using var scope = NewDisposeScope();
        var b = bias;
        // W8A8 in integers where the layout has the kernel; otherwise the input is quantized and dequantized here
        // (simulated) and the layout's Linear runs (kernels where they apply, dequantize + float op elsewhere).
        var y = InputQuantizer is { } quantizer && integer ? weight.Layout.QuantizedInputLinear(input, b, quantizer) : null;
        if (y is null)
        {
            bool half = input.dtype is ScalarType.Float16 or ScalarType.BFloat16;
            var x = QuantizeInput(half ? input.to(ScalarType.Float32) : input);
            y = Guard(input, $"a float32 input whose last dimension is {in_features}", () => (route ?? Route(input)) switch
            {
                LinearRoute.BFloat16 => BFloat16Linear(x, b),
                _ => weight.Linear(x, b),
            });
            if (half) y = y.to(input.dtype);
        }
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The route of a weight-only call (<see cref="LinearCost"/>), decided on shapes alone: the kernels for inputs that
    /// need gradients, non-CPU or non-float32 inputs (those take the weight's layout as before) and shapes libtorch
    /// would reject.
    /// </summary>
    internal LinearRoute Route(Tensor input)
    {
        if (!BFloat16MatMuls) return LinearRoute.Kernel; // the only other route
        if (input.dtype != ScalarType.Float32 || input.device_type != DeviceType.CPU) return LinearRoute.Kernel;
        if (input.requires_grad && is_grad_enabled()) return LinearRoute.Kernel;
        long inputs = in_features;
        long[] shape = TensorSpans.Shape(input);
        if (shape.Length == 0 || shape[^1] != inputs || inputs == 0) return LinearRoute.Kernel;
        return LinearCost.Choose(QuantSpec.Product(shape) / inputs, out_features, inputs, weight.Spec.Type, bfloat16: true);
    }

    /// <summary>
    /// <see cref="LinearRoute.BFloat16"/>: libtorch's bfloat16 linear on the weight, input and bias rounded to bfloat16,
    /// the result in float32. Weights beyond the thread's buffer (<see cref="QuantizedModule.BufferMaxElements"/>) run
    /// in blocks of rows that fill it (<see cref="BFloat16LinearByRows"/>).
    /// </summary>
    private Tensor BFloat16Linear(Tensor x, Tensor? b)
    {
        if ((long)out_features * in_features > BFloat16BlockElements) return BFloat16LinearByRows(x, b) ?? weight.Linear(x, b);
        using var w = DequantizeForCall(recordsGradient: false, ScalarType.BFloat16);
        using var xb = x.to(ScalarType.BFloat16);
        using var bb = b?.to(ScalarType.BFloat16);
        using var y = nn.functional.linear(xb, w, bb);
        return y.to(ScalarType.Float32);
    }

    /// <summary>Weight elements per block of <see cref="BFloat16LinearByRows"/> (the thread's buffer; settable for the tests).</summary>
    internal static long BFloat16BlockElements = BufferMaxElements;

    /// <summary>
    /// <see cref="LinearRoute.BFloat16"/> on a weight larger than the thread's buffer: blocks of output rows that fill
    /// it (<see cref="BFloat16BlockElements"/>), each dequantized to bfloat16 into the buffer and multiplied by libtorch,
    /// its outputs copied into their columns of the float32 result; a bfloat16 copy of the whole weight per thread
    /// would outweigh the quantized weight. 4096x4096 int8 at 512 rows: 85 ms on the kernels, 50 ms in blocks
    /// (docs/BENCHMARKS.md, stop 22). Null where the layout cannot dequantize rows.
    /// </summary>
    private Tensor? BFloat16LinearByRows(Tensor x, Tensor? b)
    {
        long inputs = in_features, outputs = out_features;
        long rowsPerBlock = Math.Max(1, BFloat16BlockElements / inputs);
        using var xb = x.to(ScalarType.BFloat16);
        using var bb = b?.to(ScalarType.BFloat16);
        long[] shape = TensorSpans.Shape(x);
        shape[^1] = outputs;
        var y = torch.empty(shape, ScalarType.Float32);
        for (long r0 = 0; r0 < outputs; r0 += rowsPerBlock)
        {
            long rows = Math.Min(rowsPerBlock, outputs - r0);
            using var w = DequantizeRowsForCall(r0, rows);
            if (w is null)
            {
                y.Dispose();
                return null;
            }
            using var blockBias = bb?.narrow(0, r0, rows);
            using var part = nn.functional.linear(xb, w, blockBias);
            using var columns = y.narrow(-1, r0, rows);
            columns.copy_(part);
        }
        return y;
    }
}
