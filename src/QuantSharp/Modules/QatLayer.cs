using QuantSharp.Tensors;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace QuantSharp.Modules;

/// <summary>
/// A float <c>Linear</c>, <c>Conv1d</c> or <c>Conv2d</c> prepared for quantization-aware training: the forward pass uses
/// the fake-quantized weight (<see cref="WeightFakeQuant"/>) and, when the recipe quantizes activations, the
/// fake-quantized input (<see cref="InputFakeQuant"/>); the gradients reach the float weight (straight-through) and,
/// with LSQ, the scales. Made by <see cref="QuantizationAwareTraining.Prepare{T}"/>.
/// </summary>
/// <remarks>
/// The layer registers the float module's own <c>weight</c> and <c>bias</c> parameters (the same objects) and the
/// fake-quantize module as <c>weight_fake_quant</c>, so an optimizer built after preparing trains them all, and the
/// state-dict names are <c>weight</c>, <c>bias</c>, <c>weight_fake_quant.scale</c>, <c>weight_fake_quant.zero_point</c>
/// (and <c>input_fake_quant.scale</c>, <c>input_fake_quant.zero_point</c> with activations).
/// The weight is fake-quantized as the matrix the quantized file stores (<see cref="QuantizedWeight.StorageShape"/>:
/// a convolution's <c>[out, in/groups * kernel]</c>), so groups run along the same axis as after conversion.
/// </remarks>
public sealed class QatLayer : nn.Module<Tensor, Tensor>
{
    private readonly nn.Module _float;
    private readonly long[] _shape, _storage, _stride = [], _padding = [], _dilation = [];
    private readonly long _groups = 1;
    private readonly Parameter weight;
    private readonly Parameter? bias;
    private readonly FakeQuantize weight_fake_quant;
    private readonly FakeQuantize? input_fake_quant;

    internal QatLayer(nn.Module floatModule, QuantSpec spec, FakeQuantizeOptions? options, QuantSpec? input = null, FakeQuantizeOptions? inputOptions = null)
        : base(nameof(QatLayer))
    {
        _float = floatModule;
        Spec = spec;
        switch (floatModule)
        {
            case Linear l:
                weight = l.weight!;
                bias = l.bias;
                break;
            case Convolution c when QuantizedConv.Unsupported(c) is null && c.weight!.dim() is 3 or 4:
                weight = c.weight!;
                bias = c.bias;
                QuantizedConv.ResolvePadding(c, out _padding);
                int n = (int)c.weight.dim() - 2;
                _stride = QuantizedConv.Expand(c.stride, n);
                _dilation = QuantizedConv.Expand(c.dilation, n);
                _groups = c.groups;
                break;
            default:
                throw new ArgumentException($"Quantization-aware training supports Linear, Conv1d and Conv2d (zero padding), not {floatModule.GetType().Name}.", nameof(floatModule));
        }
        _shape = weight.shape;
        _storage = QuantizedWeight.StorageShape(spec, _shape);
        weight_fake_quant = new FakeQuantize(spec, options, _storage);
        register_parameter(nameof(weight), weight);
        if (bias is not null) register_parameter(nameof(bias), bias);
        register_module(nameof(weight_fake_quant), weight_fake_quant);
        if (input is not null)
        {
            input_fake_quant = new FakeQuantize(input, inputOptions);
            register_module(nameof(input_fake_quant), input_fake_quant);
        }
    }

    /// <summary>The float module whose parameters this layer trains (its weight and bias are this layer's).</summary>
    public nn.Module FloatModule => _float;

    /// <summary>How the weight is quantized (fitted to the weight by the recipe's planner).</summary>
    public QuantSpec Spec { get; }

    /// <summary>The weight's fake-quantize module (its scale and zero point are stored at conversion).</summary>
    public FakeQuantize WeightFakeQuant => weight_fake_quant;

    /// <summary>The input's fake-quantize module (per-tensor, the recipe's activation spec), or null for weight-only recipes.</summary>
    public FakeQuantize? InputFakeQuant => input_fake_quant;

    /// <summary>The fake-quantized weight, shaped as the float weight.</summary>
    public Tensor FakeQuantizedWeight() => weight_fake_quant.call(weight.reshape(_storage)).reshape(_shape);

    /// <inheritdoc/>
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        var w = FakeQuantizedWeight();
        var x = input_fake_quant is null ? input : input_fake_quant.call(input);
        var y = _float switch
        {
            Linear => nn.functional.linear(x, w, bias),
            _ when _shape.Length == 3 => nn.functional.conv1d(x, w, bias, _stride[0], _padding[0], _dilation[0], _groups),
            _ => nn.functional.conv2d(x, w, bias, _stride, _padding, _dilation, _groups),
        };
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>The static input quantization with the observed or learned scale and zero point, or null without activations.</summary>
    internal ActivationQuantization? ToInputQuantization()
    {
        if (input_fake_quant is null) return null;
        using var _ = no_grad();
        var spec = input_fake_quant.Spec;
        return new ActivationQuantization(spec.Type, spec.Scheme, spec.ReduceRange, input_fake_quant.Scale.detach().item<float>(),
            spec.HasZeroPoint ? input_fake_quant.IntegerZeroPoints()[0] : 0);
    }

    /// <summary>The quantized weight with the learned scales and zero points (the caller owns it).</summary>
    internal QuantizedWeight ToQuantizedWeight()
    {
        using var _ = no_grad();
        float[] scales = weight_fake_quant.Scale.detach().contiguous().data<float>().ToArray();
        int[]? zps = Spec.HasZeroPoint ? weight_fake_quant.IntegerZeroPoints() : null;
        using var matrix = weight.detach().reshape(_storage);
        var parts = QuantizedTensor.QuantizeWith(matrix, Spec, scales, zps);
        return QuantizedWeight.FromCanonical(parts, _shape, weight.dtype);
    }
}
