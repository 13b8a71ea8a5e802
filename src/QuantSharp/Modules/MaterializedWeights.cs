using System.Reflection;
using System.Runtime.CompilerServices;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Modules;

/// <summary>
/// Keeps a float module but stores some of its parameters quantized: each parameter's tensor is emptied (its
/// storage freed) and the quantized weight's tensors become buffers of the module under the names of
/// <see cref="QuantizedWeightNames.InModule"/> (the data buffer takes the parameter's name, so <c>state_dict</c>
/// looks like a quantized module's). A forward pre-hook dequantizes each weight into its parameter (same tensor
/// object, so native modules such as <c>LSTM</c> see it) and a forward post-hook empties it again.
/// </summary>
/// <remarks>
/// Hooks fire only when the module runs through <c>call</c> (a parent calling <c>forward</c> directly gets an empty
/// weight and a libtorch shape error). If the forward throws, the post-hook does not run and the weights stay
/// materialized until the next successful call.
/// </remarks>
internal sealed class MaterializedWeights
{
    private static readonly ConditionalWeakTable<nn.Module, MaterializedWeights> s_attached = [];

    private readonly (string Name, TorchSharp.Modules.Parameter Parameter, QuantizedWeight Weight)[] _weights;
    private readonly List<Action> _unhook = [];

    private MaterializedWeights(nn.Module module, (string, TorchSharp.Modules.Parameter, QuantizedWeight)[] weights)
    {
        Module = module;
        _weights = weights;
    }

    /// <summary>The float module.</summary>
    public nn.Module Module { get; }

    /// <summary>The quantized parameters: name within the module, and the weight.</summary>
    public IEnumerable<(string Name, QuantizedWeight Weight)> Weights => _weights.Select(w => (w.Name, w.Weight));

    /// <summary>The attachment of <paramref name="module"/>, or null.</summary>
    public static MaterializedWeights? Of(nn.Module module) => s_attached.TryGetValue(module, out var m) ? m : null;

    /// <summary>
    /// Stores <paramref name="weights"/> (parameter name within <paramref name="module"/> -> quantized weight) in place of
    /// the float parameters and hooks the module. Takes ownership of the weights.
    /// </summary>
    public static MaterializedWeights Attach(nn.Module module, IReadOnlyList<(string Name, QuantizedWeight Weight)> weights)
    {
        if (Of(module) is not null) throw new InvalidOperationException($"{module.GetType().Name} already stores quantized weights.");
        var parameters = InternalParameters(module);
        var list = new List<(string, TorchSharp.Modules.Parameter, QuantizedWeight)>();
        foreach (var (name, weight) in weights)
        {
            if (!parameters.TryGetValue(name, out var p))
                throw new ArgumentException($"{module.GetType().Name} has no parameter '{name}'.", nameof(weights));
            list.Add((name, p, weight));
        }
        var attached = new MaterializedWeights(module, [.. list]);
        using (no_grad())
        {
            foreach (var (name, p, weight) in list)
            {
                parameters.Remove(name);
                foreach (var (part, t) in weight.Layout.Tensors)
                    module.register_buffer(QuantizedWeightNames.InModule(name, part), t, persistent: true);
                Empty(p);
            }
        }
        attached._unhook.Add(AddHook(module, "register_forward_pre_hook", attached.Materialize));
        attached._unhook.Add(AddHook(module, "register_forward_hook", attached.Release));
        s_attached.Add(module, attached);
        return attached;
    }

    /// <summary>Dequantizes every weight into its parameter (original dtype).</summary>
    private void Materialize(nn.Module _)
    {
        using var noGrad = no_grad();
        foreach (var (_, p, weight) in _weights)
        {
            using var w = weight.Dequantize();
            using var typed = w.to(weight.OriginalDType);
            p.set_(typed);
        }
    }

    /// <summary>Frees the materialized float weights.</summary>
    private void Release(nn.Module _)
    {
        using var noGrad = no_grad();
        foreach (var (_, p, _) in _weights) Empty(p);
    }

    private static void Empty(TorchSharp.Modules.Parameter p)
    {
        using var empty = torch.empty(0, p.dtype);
        p.set_(empty);
    }

    /// <summary>The module's own parameter registry (TorchSharp keeps it in a protected dictionary; native modules list nested names flat).</summary>
    private static IDictionary<string, TorchSharp.Modules.Parameter> InternalParameters(nn.Module module) =>
        (IDictionary<string, TorchSharp.Modules.Parameter>)(typeof(nn.Module).GetField("_internal_params", BindingFlags.Instance | BindingFlags.NonPublic)
            ?.GetValue(module) ?? throw new InvalidOperationException("This TorchSharp version has no Module._internal_params (unsupported TorchSharp version)."));

    /// <summary>Registers an <c>Action&lt;Module&gt;</c> hook on any hookable module type; returns the remover.</summary>
    private static Action AddHook(nn.Module module, string method, Action<nn.Module> hook)
    {
        var m = module.GetType().GetMethod(method, [typeof(Action<nn.Module>)])
            ?? throw new ArgumentException($"{module.GetType().Name} does not accept forward hooks, so its weights cannot be materialized around its forward.");
        object remover = m.Invoke(module, [hook])!;
        var remove = remover.GetType().GetMethod("remove")!;
        return () => remove.Invoke(remover, null);
    }
}
