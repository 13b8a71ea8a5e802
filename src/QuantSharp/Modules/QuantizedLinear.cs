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
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        var x = QuantizeInput(input);
        var y = Guard(input, $"a float32 input whose last dimension is {in_features}", () => weight.Linear(x, bias));
        return y.MoveToOuterDisposeScope();
    }
}
