using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Modules;

/// <summary>
/// Base of the quantized layers that replace <c>Linear</c>, <c>Conv1d</c>, <c>Conv2d</c> and <c>Embedding</c>.
/// The weight is kept only in quantized form, as registered buffers (so <c>state_dict</c>, <c>buffers()</c> and
/// memory measurements see the small tensors): <c>weight</c> (Int8, packed 4-bit Byte, or Float16/BFloat16),
/// <c>weight_scale</c> (float32) and <c>weight_zero_point</c> (int32, only when needed). The bias stays a float32
/// parameter. With static activation quantization the calibrated input range is kept as <c>input_scale</c>
/// (float32 scalar) and <c>input_zero_point</c> (int32 scalar).
/// </summary>
/// <remarks>
/// The forward pass dequantizes the weight to float32 on every call (nothing is cached, so memory stays small) and
/// then runs TorchSharp's functional linear/conv/embedding in float32; Float16/BFloat16 weights are likewise cast
/// up to float32, so inputs stay float32. With activation quantization the input is first quantized and
/// dequantized with the calibrated scale and zero point (W8A8 simulated on CPU).
/// </remarks>
public abstract class QuantizedModule : nn.Module<Tensor, Tensor>
{
    private protected const string WeightName = "weight";
    private protected const string ScaleName = "weight_scale";
    private protected const string ZeroPointName = "weight_zero_point";
    private protected const string BiasName = "bias";
    private protected const string InputScaleName = "input_scale";
    private protected const string InputZeroPointName = "input_zero_point";

    private readonly long[] _weightShape;

    private protected QuantizedModule(string typeName, QuantSpec weightSpec, long[] weightShape,
        Tensor data, Tensor? scale, Tensor? zeroPoint, Tensor? bias, ActivationQuantization? input)
        : base(typeName)
    {
        WeightSpec = weightSpec;
        _weightShape = (long[])weightShape.Clone();
        InputQuantization = input;
        register_buffer(WeightName, data, persistent: true);
        if (scale is not null) register_buffer(ScaleName, scale, persistent: true);
        if (zeroPoint is not null) register_buffer(ZeroPointName, zeroPoint, persistent: true);
        if (bias is not null) register_parameter(BiasName, new TorchSharp.Modules.Parameter(bias, requires_grad: false));
        if (input is not null)
        {
            register_buffer(InputScaleName, torch.tensor(input.Scale, ScalarType.Float32), persistent: true);
            register_buffer(InputZeroPointName, torch.tensor(input.ZeroPoint, ScalarType.Int32), persistent: true);
        }
    }

    /// <summary>How the weight is quantized.</summary>
    public QuantSpec WeightSpec { get; }

    /// <summary>The float weight's shape (e.g. <c>[out, in]</c> or <c>[out, in/groups, kh, kw]</c>).</summary>
    public IReadOnlyList<long> WeightShape => _weightShape;

    /// <summary>The static input quantization (W8A8), or null for weight-only quantization.</summary>
    public ActivationQuantization? InputQuantization { get; }

    /// <summary>
    /// The layer's name in the model (set by the quantizer); used in error messages. Not stored in checkpoints.
    /// </summary>
    public string LayerName { get; internal set; } = "";

    /// <summary>The dtype of the float weight this layer was quantized from (recorded in saved files).</summary>
    internal Serialization.SafetensorsDType OriginalDType { get; set; } = Serialization.SafetensorsDType.F32;

    /// <summary>SQNR (dB) of the dequantized weight against the float weight when it was quantized (null: not measured).</summary>
    internal double? WeightSqnrDb { get; set; }

    /// <summary>The observer that chose the weight range (null for float16/bfloat16).</summary>
    internal string? WeightObserver { get; set; } = "minmax";

    /// <summary>The bias (float32), or null.</summary>
    public Tensor? Bias => named_parameters(recurse: false).Where(p => p.name == BiasName).Select(p => (Tensor)p.parameter).FirstOrDefault();

    /// <summary>
    /// The logical shape of the stored weight: the original shape for Float16/BFloat16, otherwise the matrix
    /// <c>[rows, K]</c> whose last axis the groups and the 4-bit packing run along.
    /// </summary>
    internal long[] StorageShape => WeightSpec.Type.IsInteger() ? [_weightShape[0], WeightQuantizer.Cols(_weightShape)] : (long[])_weightShape.Clone();

    internal Tensor WeightData => get_buffer(WeightName)!;
    internal Tensor? WeightScale => TryBuffer(ScaleName);
    internal Tensor? WeightZeroPoint => TryBuffer(ZeroPointName);

    private Tensor? TryBuffer(string name)
    {
        foreach (var (n, b) in named_buffers(recurse: false))
            if (n == name) return b;
        return null;
    }

    /// <summary>The weight dequantized to float32 in its original shape (a new tensor; dispose it).</summary>
    public Tensor DequantizeWeight()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        return WeightQuantizer.Dequantize(WeightData, WeightScale, WeightZeroPoint, WeightSpec, _weightShape).MoveToOuterDisposeScope();
    }

    /// <summary>Bytes of the weight storage: data, scale and zero point.</summary>
    public long WeightStorageBytes =>
        Bytes(WeightData) + (WeightScale is { } s ? Bytes(s) : 0) + (WeightZeroPoint is { } z ? Bytes(z) : 0);

    private static long Bytes(Tensor t) => t.numel() * t.element_size();

    /// <summary>Quantizes and dequantizes <paramref name="x"/> with the calibrated input qparams (identity without them).</summary>
    private protected Tensor QuantizeInput(Tensor x)
    {
        if (InputQuantization is not { } act) return x;
        var range = QuantRange.For(act.Type, act.ReduceRange);
        var s = get_buffer(InputScaleName)!;
        var z = get_buffer(InputZeroPointName)!.to(ScalarType.Float32);
        return WeightQuantizer.FakeQuantize(x, s, z, range);
    }

    /// <summary>Runs <paramref name="op"/> and turns libtorch's shape errors into one that names the layer.</summary>
    private protected Tensor Guard(Tensor input, string expects, Func<Tensor> op)
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

/// <summary>Builds the quantized module that replaces a float module, from stored parts (one place for the quantizer and the loader).</summary>
internal static class QuantizedModules
{
    /// <summary>A quantized replacement of <paramref name="floatModule"/> holding the given parts (taken over; detached from any
    /// dispose scope) and a copy of the float module's bias.</summary>
    public static QuantizedModule FromParts(nn.Module floatModule, QuantSpec spec, Tensor data, Tensor? scale, Tensor? zeroPoint, ActivationQuantization? input)
    {
        data = data.DetachFromDisposeScope();
        scale = scale?.DetachFromDisposeScope();
        zeroPoint = zeroPoint?.DetachFromDisposeScope();
        return floatModule switch
        {
            TorchSharp.Modules.Linear l => new QuantizedLinear(spec, l.weight.shape, data, scale, zeroPoint, Bias(l.bias), input),
            TorchSharp.Modules.Embedding emb => new QuantizedEmbedding(spec, emb.weight!.shape, data, scale, zeroPoint),
            TorchSharp.Modules.Convolution c => QuantizedConv.FromParts(c, spec, data, scale, zeroPoint, Bias(c.bias), input),
            _ => throw new ArgumentException($"QuantSharp does not quantize {floatModule.GetType().Name} layers."),
        };

        static Tensor? Bias(Tensor? bias) => bias?.detach().to(ScalarType.Float32).clone().DetachFromDisposeScope();
    }
}

/// <summary>Calibrated static quantization of a layer's input (per-tensor).</summary>
/// <param name="Type">Integer type of the activations (UInt8 affine as PyTorch's default, or Int8).</param>
/// <param name="Scheme">Symmetric or affine.</param>
/// <param name="ReduceRange">One bit less of range.</param>
/// <param name="Scale">Scale (finite, &gt; 0).</param>
/// <param name="ZeroPoint">Zero point within the type's range.</param>
public sealed record ActivationQuantization(QuantType Type, QuantScheme Scheme, bool ReduceRange, float Scale, int ZeroPoint);
