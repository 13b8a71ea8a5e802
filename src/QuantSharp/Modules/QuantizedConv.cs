using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Modules;

/// <summary>
/// A quantized replacement for <see cref="TorchSharp.Modules.Conv1d"/> and <see cref="TorchSharp.Modules.Conv2d"/>
/// (zero padding only). Per-group scales run along the flattened <c>in/groups * kernel</c> reduction axis of each
/// output channel.
/// </summary>
public sealed class QuantizedConv : QuantizedModule
{
    private readonly long[] _stride, _padding, _dilation;

    internal QuantizedConv(QuantSpec spec, long[] weightShape, long[] stride, long[] padding, long[] dilation, long groups,
        Tensor data, Tensor? scale, Tensor? zeroPoint, Tensor? bias, ActivationQuantization? input)
        : base(weightShape.Length == 3 ? "QuantizedConv1d" : "QuantizedConv2d", spec, weightShape, data, scale, zeroPoint, bias, input)
    {
        if (weightShape.Length is not (3 or 4)) throw new ArgumentException($"Only Conv1d and Conv2d weights (rank 3 or 4) are supported, got rank {weightShape.Length}.");
        _stride = (long[])stride.Clone();
        _padding = (long[])padding.Clone();
        _dilation = (long[])dilation.Clone();
        Groups = groups;
    }

    /// <summary>Spatial dimensions: 1 for Conv1d, 2 for Conv2d.</summary>
    public int SpatialDims => WeightShape.Count - 2;

    /// <summary>Stride per spatial dimension.</summary>
    public IReadOnlyList<long> Stride => _stride;

    /// <summary>Zero padding per spatial dimension (both sides).</summary>
    public IReadOnlyList<long> Padding => _padding;

    /// <summary>Dilation per spatial dimension.</summary>
    public IReadOnlyList<long> Dilation => _dilation;

    /// <summary>Number of convolution groups.</summary>
    public long Groups { get; }

    /// <summary>Why a float convolution cannot be converted (unsupported padding), or null.</summary>
    internal static string? Unsupported(TorchSharp.Modules.Convolution conv)
    {
        if (conv.transposed) return "transposed convolutions are not supported";
        if (conv.padding_mode != PaddingModes.Zeros) return $"padding mode {conv.padding_mode} is not supported (only zeros)";
        if (conv.weight is null || conv.weight.dim() is not (3 or 4)) return "only Conv1d and Conv2d are supported";
        return ResolvePadding(conv, out _);
    }

    private static string? ResolvePadding(TorchSharp.Modules.Convolution conv, out long[] padding)
    {
        int n = (int)conv.weight!.dim() - 2;
        padding = new long[n];
        if (conv.padding_type is { } type)
        {
            if (type == TorchSharp.Padding.Valid) return null;
            for (int i = 0; i < n; i++)
            {
                long total = conv.dilation[i] * (conv.kernel_size[i] - 1);
                if (total % 2 != 0) return "padding 'same' with an even effective kernel (asymmetric padding) is not supported";
                padding[i] = total / 2;
            }
            return null;
        }
        var p = conv.padding;
        for (int i = 0; i < n; i++) padding[i] = p is null ? 0 : p.Length == 1 ? p[0] : p[i];
        return null;
    }

    internal static QuantizedConv FromFloat(TorchSharp.Modules.Convolution conv, QuantSpec spec, ActivationQuantization? input)
    {
        string? why = Unsupported(conv);
        if (why != null) throw new ArgumentException($"Cannot quantize this convolution: {why}.");
        ResolvePadding(conv, out long[] padding);
        int n = (int)conv.weight!.dim() - 2;
        long[] stride = Expand(conv.stride, n), dilation = Expand(conv.dilation, n);
        var (data, scale, zp) = WeightQuantizer.Quantize(conv.weight, spec);
        var bias = conv.bias is null ? null : conv.bias.detach().to(ScalarType.Float32).clone();
        return new QuantizedConv(spec, conv.weight.shape, stride, padding, dilation, conv.groups, data, scale, zp, bias, input);
    }

    /// <summary>A quantized convolution with <paramref name="conv"/>'s geometry and the given stored parts (checkpoint loading).</summary>
    internal static QuantizedConv FromParts(TorchSharp.Modules.Convolution conv, QuantSpec spec, Tensor data, Tensor? scale, Tensor? zeroPoint, Tensor? bias, ActivationQuantization? input)
    {
        string? why = Unsupported(conv);
        if (why != null) throw new ArgumentException($"Cannot rebuild this convolution: {why}.");
        ResolvePadding(conv, out long[] padding);
        int n = (int)conv.weight!.dim() - 2;
        return new QuantizedConv(spec, conv.weight.shape, Expand(conv.stride, n), padding, Expand(conv.dilation, n), conv.groups, data, scale, zeroPoint, bias, input);
    }

    private static long[] Expand(long[] v, int n) => v.Length == n ? (long[])v.Clone() : Enumerable.Repeat(v[0], n).ToArray();

    /// <inheritdoc/>
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        var x = QuantizeInput(input);
        var w = DequantizeWeight();
        long inChannels = WeightShape[1] * Groups;
        string expects = SpatialDims == 1
            ? $"a float32 input [batch, {inChannels}, length] (or [{inChannels}, length])"
            : $"a float32 input [batch, {inChannels}, height, width] (or [{inChannels}, height, width])";
        var y = Guard(input, expects, () => SpatialDims == 1
            ? nn.functional.conv1d(x, w, Bias, _stride[0], _padding[0], _dilation[0], Groups)
            : nn.functional.conv2d(x, w, Bias, _stride, _padding, _dilation, Groups));
        return y.MoveToOuterDisposeScope();
    }
}
