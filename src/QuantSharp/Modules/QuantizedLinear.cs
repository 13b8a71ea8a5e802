using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Modules;

/// <summary>A quantized replacement for <see cref="TorchSharp.Modules.Linear"/>: <c>y = x W^T + b</c> with W dequantized from its stored form.</summary>
public sealed class QuantizedLinear : QuantizedModule
{
    internal QuantizedLinear(QuantSpec spec, long[] weightShape, Tensor data, Tensor? scale, Tensor? zeroPoint, Tensor? bias, ActivationQuantization? input)
        : base(nameof(QuantizedLinear), spec, weightShape, data, scale, zeroPoint, bias, input)
    {
    }

    /// <summary>Input features.</summary>
    public long InFeatures => WeightShape[1];

    /// <summary>Output features.</summary>
    public long OutFeatures => WeightShape[0];

    internal static QuantizedLinear FromFloat(TorchSharp.Modules.Linear linear, QuantSpec spec, ActivationQuantization? input)
    {
        var (data, scale, zp) = WeightQuantizer.Quantize(linear.weight, spec);
        var bias = linear.bias is null ? null : linear.bias.detach().to(ScalarType.Float32).clone();
        return new QuantizedLinear(spec, linear.weight.shape, data, scale, zp, bias, input);
    }

    /// <inheritdoc/>
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        var bias = Bias;
        // Kernels read the stored weight in place; where none applies (gradients, other devices or dtypes), the
        // reference path dequantizes the weight and calls the float op.
        var y = LinearKernels.TryForward(this, input, bias);
        if (y is null)
        {
            bool half = input.dtype is ScalarType.Float16 or ScalarType.BFloat16;
            var x = QuantizeInput(half ? input.to(ScalarType.Float32) : input);
            var w = DequantizeWeight();
            y = Guard(input, $"a float32 input whose last dimension is {InFeatures}", () => nn.functional.linear(x, w, bias));
            if (half) y = y.to(input.dtype);
        }
        return y.MoveToOuterDisposeScope();
    }
}
