using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Modules;

/// <summary>
/// How a float module type is quantized: <see cref="Create"/> builds the quantized module that replaces it around its
/// quantized weight. Registered with <see cref="QuantizedModules.Register{TFloat}"/>.
/// </summary>
/// <param name="FloatType">The float module type.</param>
/// <param name="WeightName">The float module's parameter that is quantized (e.g. <c>weight</c>).</param>
/// <param name="QuantizesInput">Whether the quantized module takes static input quantization (false for lookups such as embeddings).</param>
/// <param name="Unsupported">Why a given float module cannot be quantized (e.g. a padding mode), or null.</param>
/// <param name="Create">Builds the quantized module from the float module (for its geometry and bias), the quantized weight and the input quantization.</param>
public sealed record QuantizedModuleHandler(
    Type FloatType,
    string WeightName,
    bool QuantizesInput,
    Func<nn.Module, string?> Unsupported,
    Func<nn.Module, QuantizedWeight, ActivationQuantization?, QuantizedModule> Create);

/// <summary>
/// The registry of quantizable module types (as optimum-quanto's <c>@register_qmodule(nn.Linear)</c>): every layer type
/// the quantizer handles is registered here, the built-in ones included. Two kinds of registration:
/// <list type="bullet">
/// <item><see cref="Register{TFloat}"/>: the float module is <em>replaced</em> by a <see cref="QuantizedModule"/>
/// (where its parent's declared type allows; otherwise its weight is materialized, see below).</item>
/// <item><see cref="RegisterMaterialized{TFloat}"/>: the float module is kept and its weights are stored quantized,
/// materialized into the float parameters before each forward and freed after (forward hooks). Used for TorchSharp's
/// native modules (<c>MultiheadAttention</c>, <c>TransformerEncoderLayer</c>, <c>LSTM</c>, <c>GRU</c>...), whose
/// forward runs in libtorch.</item>
/// </list>
/// </summary>
/// <example>
/// <code>
/// // A custom layer with a [out, in] weight and a bias: one registration.
/// QuantizedModules.Register&lt;MyDense&gt;((dense, weight, input) =&gt; new QuantizedLinear(weight, dense.bias, input));
/// </code>
/// </example>
public static class QuantizedModules
{
    private static readonly Lock s_lock = new();
    private static readonly Dictionary<Type, QuantizedModuleHandler> s_handlers = [];
    private static readonly Dictionary<Type, Func<string, Tensor, bool>> s_materialized = [];

    static QuantizedModules()
    {
        Register<TorchSharp.Modules.Linear>((l, w, a) => new QuantizedLinear(w, l.bias, a));
        Register<TorchSharp.Modules.Conv1d>((c, w, a) => QuantizedConv.Create(c, w, a), QuantizedConv.Unsupported);
        Register<TorchSharp.Modules.Conv2d>((c, w, a) => QuantizedConv.Create(c, w, a), QuantizedConv.Unsupported);
        Register<TorchSharp.Modules.Embedding>((_, w, _) => new QuantizedEmbedding(w), quantizesInput: false);
        RegisterMaterialized<TorchSharp.Modules.MultiheadAttention>();
        RegisterMaterialized<TorchSharp.Modules.TransformerEncoderLayer>();
        RegisterMaterialized<TorchSharp.Modules.TransformerEncoder>();
        RegisterMaterialized<TorchSharp.Modules.TransformerDecoderLayer>();
        RegisterMaterialized<TorchSharp.Modules.TransformerDecoder>();
        RegisterMaterialized<TorchSharp.Modules.Transformer>();
        RegisterMaterialized<TorchSharp.Modules.LSTM>();
        RegisterMaterialized<TorchSharp.Modules.GRU>();
        RegisterMaterialized<TorchSharp.Modules.RNN>();
        RegisterMaterialized<TorchSharp.Modules.LSTMCell>();
        RegisterMaterialized<TorchSharp.Modules.GRUCell>();
        RegisterMaterialized<TorchSharp.Modules.RNNCell>();
    }

    /// <summary>
    /// Registers (or replaces) the quantized counterpart of <typeparamref name="TFloat"/>.
    /// </summary>
    /// <typeparam name="TFloat">The float module type (matched exactly).</typeparam>
    /// <param name="create">Builds the quantized module from the float module, its quantized weight and the input quantization (null for weight-only).</param>
    /// <param name="unsupported">Why a given float module cannot be quantized, or null (optional).</param>
    /// <param name="weightName">The float module's parameter to quantize (default <c>weight</c>).</param>
    /// <param name="quantizesInput">False when the module's input is not a float activation (lookups).</param>
    public static void Register<TFloat>(
        Func<TFloat, QuantizedWeight, ActivationQuantization?, QuantizedModule> create,
        Func<TFloat, string?>? unsupported = null,
        string weightName = "weight",
        bool quantizesInput = true)
        where TFloat : nn.Module
    {
        ArgumentNullException.ThrowIfNull(create);
        ArgumentException.ThrowIfNullOrWhiteSpace(weightName);
        var handler = new QuantizedModuleHandler(typeof(TFloat), weightName, quantizesInput,
            m => unsupported?.Invoke((TFloat)m), (m, w, a) => create((TFloat)m, w, a));
        lock (s_lock)
        {
            s_materialized.Remove(typeof(TFloat));
            s_handlers[typeof(TFloat)] = handler;
        }
    }

    /// <summary>
    /// Registers <typeparamref name="TFloat"/> as a module whose weights are stored quantized and materialized around
    /// each forward (the module itself is kept). By default every floating parameter of rank 2 or more is quantized.
    /// </summary>
    /// <typeparam name="TFloat">The float module type (matched exactly).</typeparam>
    /// <param name="quantizeParameter">Which parameters (name within the module, tensor) to quantize; null for every floating parameter of rank 2 or more.</param>
    public static void RegisterMaterialized<TFloat>(Func<string, Tensor, bool>? quantizeParameter = null) where TFloat : nn.Module
    {
        lock (s_lock)
        {
            s_handlers.Remove(typeof(TFloat));
            s_materialized[typeof(TFloat)] = quantizeParameter ?? DefaultParameterFilter;
        }
    }

    /// <summary>Removes a registration of either kind (returns false if <paramref name="floatType"/> was not registered).</summary>
    /// <param name="floatType">The float module type.</param>
    public static bool Unregister(Type floatType)
    {
        lock (s_lock) return s_handlers.Remove(floatType) | s_materialized.Remove(floatType);
    }

    /// <summary>Whether <paramref name="floatType"/> is registered (either kind).</summary>
    /// <param name="floatType">The float module type.</param>
    public static bool IsRegistered(Type floatType)
    {
        lock (s_lock) return s_handlers.ContainsKey(floatType) || s_materialized.ContainsKey(floatType);
    }

    /// <summary>The replacement handler of <paramref name="floatType"/>, or null.</summary>
    /// <param name="floatType">The float module type.</param>
    public static QuantizedModuleHandler? HandlerFor(Type floatType)
    {
        lock (s_lock) return s_handlers.GetValueOrDefault(floatType);
    }

    /// <summary>The parameter filter of a materialized registration, or null.</summary>
    internal static Func<string, Tensor, bool>? MaterializedFilter(Type floatType)
    {
        lock (s_lock) return s_materialized.GetValueOrDefault(floatType);
    }

    /// <summary>
    /// Quantizes one float module with its registered handler: a new quantized module (the float module is not changed).
    /// </summary>
    /// <param name="floatModule">A module of a type registered with <see cref="Register{TFloat}"/>.</param>
    /// <param name="spec">How to quantize its weight.</param>
    /// <param name="input">Static input quantization, or null.</param>
    /// <exception cref="ArgumentException">The type is not registered, or the module or spec is not supported (the message says why).</exception>
    public static QuantizedModule Quantize(nn.Module floatModule, QuantSpec spec, ActivationQuantization? input = null)
    {
        ArgumentNullException.ThrowIfNull(floatModule);
        ArgumentNullException.ThrowIfNull(spec);
        var handler = HandlerFor(floatModule.GetType())
            ?? throw new ArgumentException($"{floatModule.GetType().Name} has no quantized counterpart; register one with QuantizedModules.Register<{floatModule.GetType().Name}>(...).", nameof(floatModule));
        if (handler.Unsupported(floatModule) is { } why) throw new ArgumentException($"Cannot quantize this {floatModule.GetType().Name}: {why}.", nameof(floatModule));
        var w = Parameter(floatModule, handler.WeightName)
            ?? throw new ArgumentException($"{floatModule.GetType().Name} has no parameter '{handler.WeightName}'.", nameof(floatModule));
        var weight = QuantizedWeight.Quantize(w, spec);
        try
        {
            return handler.Create(floatModule, weight, handler.QuantizesInput ? input : null);
        }
        catch
        {
            weight.Dispose();
            throw;
        }
    }

    /// <summary>The module's own parameter <paramref name="name"/> (nested native names such as <c>self_attn.in_proj_weight</c> included), or null.</summary>
    internal static TorchSharp.Modules.Parameter? Parameter(nn.Module module, string name) =>
        module.named_parameters(recurse: true).Where(p => p.name == name).Select(p => p.parameter).FirstOrDefault();

    private static bool DefaultParameterFilter(string name, Tensor p) => p.is_floating_point() && p.dim() >= 2;
}
