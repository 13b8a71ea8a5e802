using QuantSharp.Tensors;
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

    /// <summary>Creates a quantized convolution from a quantized <c>[out, in/groups, k...]</c> weight (rank 3: Conv1d, rank 4: Conv2d).</summary>
    /// <param name="weight">The quantized weight.</param>
    /// <param name="bias">The float bias <c>[out]</c> (copied), or null.</param>
    /// <param name="stride">Stride per spatial dimension.</param>
    /// <param name="padding">Zero padding per spatial dimension (both sides).</param>
    /// <param name="dilation">Dilation per spatial dimension.</param>
    /// <param name="groups">Number of convolution groups.</param>
    /// <param name="input">Static input quantization, or null.</param>
    /// <exception cref="ArgumentException">The weight is not rank 3 or 4, or the geometry arrays do not have one entry per spatial dimension.</exception>
    public QuantizedConv(QuantizedWeight weight, Tensor? bias, long[] stride, long[] padding, long[] dilation, long groups = 1, ActivationQuantization? input = null)
        : base(weight.Shape.Count == 3 ? "QuantizedConv1d" : "QuantizedConv2d", weight, bias, input)
    {
        if (weight.Shape.Count is not (3 or 4)) throw new ArgumentException($"Only Conv1d and Conv2d weights (rank 3 or 4) are supported, got rank {weight.Shape.Count}.", nameof(weight));
        int n = weight.Shape.Count - 2;
        if (stride.Length != n || padding.Length != n || dilation.Length != n)
            throw new ArgumentException($"stride, padding and dilation need {n} value(s) each (one per spatial dimension).", nameof(stride));
        if (groups < 1) throw new ArgumentException($"groups must be at least 1, got {groups}.", nameof(groups));
        _stride = (long[])stride.Clone();
        _padding = (long[])padding.Clone();
        _dilation = (long[])dilation.Clone();
        this.groups = groups;
    }

#pragma warning disable IDE1006 // TorchSharp's names
    /// <summary>Stride per spatial dimension.</summary>
    public IReadOnlyList<long> stride => _stride;

    /// <summary>Zero padding per spatial dimension (both sides).</summary>
    public IReadOnlyList<long> padding => _padding;

    /// <summary>Dilation per spatial dimension.</summary>
    public IReadOnlyList<long> dilation => _dilation;

    /// <summary>Number of convolution groups.</summary>
    public long groups { get; }

    /// <summary>Input channels.</summary>
    public long in_channels => WeightShape[1] * groups;

    /// <summary>Output channels.</summary>
    public long out_channels => WeightShape[0];

    /// <summary>Kernel size per spatial dimension.</summary>
    public IReadOnlyList<long> kernel_size => WeightShape.Skip(2).ToArray();
#pragma warning restore IDE1006

    /// <summary>Spatial dimensions: 1 for Conv1d, 2 for Conv2d.</summary>
    internal int SpatialDims => WeightShape.Count - 2;

    /// <summary>Why a float convolution cannot be converted (unsupported padding), or null.</summary>
    internal static string? Unsupported(TorchSharp.Modules.Convolution conv)
    {
        if (conv.transposed) return "transposed convolutions are not supported";
        if (conv.padding_mode != PaddingModes.Zeros) return $"padding mode {conv.padding_mode} is not supported (only zeros)";
        if (conv.weight is null || conv.weight.dim() is not (3 or 4)) return "only Conv1d and Conv2d are supported";
        return ResolvePadding(conv, out _);
    }

    internal static string? ResolvePadding(TorchSharp.Modules.Convolution conv, out long[] padding)
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

    /// <summary>A quantized convolution with <paramref name="conv"/>'s geometry and bias around <paramref name="weight"/>.</summary>
    internal static QuantizedConv Create(TorchSharp.Modules.Convolution conv, QuantizedWeight weight, ActivationQuantization? input)
    {
        string? why = Unsupported(conv);
        if (why != null) throw new ArgumentException($"Cannot quantize this convolution: {why}.");
        ResolvePadding(conv, out long[] padding);
        int n = (int)conv.weight!.dim() - 2;
        return new QuantizedConv(weight, conv.bias, Expand(conv.stride, n), padding, Expand(conv.dilation, n), conv.groups, input);
    }

    /// <summary>
    /// A 1x1 convolution with stride 1, no padding and one group is a matrix product over channels per image: it runs
    /// through the weight's packed kernel (<see cref="WeightLayout.PointwiseConvolution"/>), which reads the images in
    /// place. Null for every other convolution and wherever the kernel does not apply.
    /// </summary>
    private Tensor? Pointwise(Tensor x)
    {
        if (groups != 1 || WeightShape.Skip(2).Any(s => s != 1) || _stride.Any(s => s != 1) || _padding.Any(p => p != 0)) return null;
        bool batched = x.dim() == SpatialDims + 2;
        if (!batched && x.dim() != SpatialDims + 1) return null;
        long[] shape = x.shape;
        var images = batched ? x.reshape(shape[0], shape[1], -1) : x.reshape(1, shape[0], -1);
        var y = weight.Layout.PointwiseConvolution(images, bias);
        if (y is null) return null;
        long[] outShape = batched ? [shape[0], out_channels, .. shape[2..]] : [out_channels, .. shape[1..]];
        return y.reshape(outShape);
    }

    internal static long[] Expand(long[] v, int n) => v.Length == n ? (long[])v.Clone() : Enumerable.Repeat(v[0], n).ToArray();

    /// <inheritdoc/>
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        var x = QuantizeInput(input);
        if (Pointwise(x) is { } pointwise) return pointwise.MoveToOuterDisposeScope();
        using var w = DequantizeWeight();
        long inChannels = in_channels;
        string expects = SpatialDims == 1
            ? $"a float32 input [batch, {inChannels}, length] (or [{inChannels}, length])"
            : $"a float32 input [batch, {inChannels}, height, width] (or [{inChannels}, height, width])";
        var y = Guard(input, expects, () => SpatialDims == 1
            ? nn.functional.conv1d(x, w, bias, _stride[0], _padding[0], _dilation[0], groups)
            : nn.functional.conv2d(x, w, bias, _stride, _padding, _dilation, groups));
        return y.MoveToOuterDisposeScope();
    }
}
