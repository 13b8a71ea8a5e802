using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace QuantSharp.Modules.Managed;

/// <summary>
/// Converts TorchSharp's native modules (whose forward runs inside libtorch and whose projections are parameters, not
/// <see cref="Linear"/> children) into managed counterparts with the same forward signature and arithmetic, whose
/// projections are ordinary replaceable layers — so that a quantizer can quantize them.
/// </summary>
/// <remarks>
/// <para>Conversions copy the weights: the managed module shares no storage with the native one, and the native module is
/// not modified (it is run on a small probe input in eval mode to detect settings TorchSharp does not expose, see
/// <see cref="NativeConversionOptions"/>; its training flag is restored afterwards). The managed module has the native
/// module's element type, device and training flag.</para>
/// <para>Supported: <see cref="MultiheadAttention"/>, <see cref="TransformerEncoderLayer"/>, <see cref="TransformerEncoder"/>,
/// <see cref="LSTM"/>, <see cref="GRU"/>. Not supported (no managed counterpart yet): the transformer decoder modules,
/// <see cref="Transformer"/>, <see cref="RNN"/> and the <c>*Cell</c> modules.</para>
/// </remarks>
public static class ManagedModules
{
    /// <summary>Managed copy of a native attention layer.</summary>
    /// <param name="native">The native module (not modified).</param>
    /// <param name="options">Settings that cannot be read from the native module; null detects them.</param>
    /// <returns>An equivalent <see cref="ManagedMultiheadAttention"/> with copied weights.</returns>
    /// <exception cref="NotSupportedException">No setting reproduces the native output (e.g. a wrong <see cref="NativeConversionOptions.NumHeads"/>).</exception>
    /// <exception cref="ArgumentException">Several settings reproduce it (e.g. all-zero weights): give them in <paramref name="options"/>.</exception>
    public static ManagedMultiheadAttention FromNative(MultiheadAttention native, NativeConversionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(native);
        options ??= new();
        var p = NativeParameters.Of(native);
        var managed = Attention(p, "", options);
        using var probeScope = NewDisposeScope();
        var (query, key, value) = AttentionProbe(managed, p);
        NativeProbe.Resolve("MultiheadAttention", native, managed,
            AttentionCandidates(managed.EmbedDim, options),
            c => (managed.NumHeads, managed.AddZeroAttn) = (c.Heads, c.ZeroAttn),
            () => Pair(native.call(query, key, value, null, true, null)),
            () => Pair(managed.call(query, key, value, null, true, null)));
        return managed;
    }

    /// <summary>Managed copy of a native encoder layer.</summary>
    /// <param name="native">The native module (not modified).</param>
    /// <param name="options">Settings that cannot be read from the native module; null detects them.</param>
    /// <returns>An equivalent <see cref="ManagedTransformerEncoderLayer"/> with copied weights.</returns>
    /// <inheritdoc cref="FromNative(MultiheadAttention, NativeConversionOptions?)" path="/exception"/>
    public static ManagedTransformerEncoderLayer FromNative(TransformerEncoderLayer native, NativeConversionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(native);
        options ??= new();
        var p = NativeParameters.Of(native);
        var managed = EncoderLayer(p, "", options);
        using var probeScope = NewDisposeScope();
        var src = p.Probe(4, 2, managed.DModel);
        NativeProbe.Resolve("TransformerEncoderLayer", native, managed,
            EncoderCandidates(managed.DModel, options),
            c => SetEncoderSettings([managed], c),
            () => [native.call(src)],
            () => [managed.call(src)]);
        return managed;
    }

    /// <summary>Managed copy of a native encoder stack.</summary>
    /// <param name="native">The native module (not modified).</param>
    /// <param name="options">Settings that cannot be read from the native module; null detects them.</param>
    /// <returns>An equivalent <see cref="ManagedTransformerEncoder"/> with copied weights (no final norm, as the native one).</returns>
    /// <inheritdoc cref="FromNative(MultiheadAttention, NativeConversionOptions?)" path="/exception"/>
    public static ManagedTransformerEncoder FromNative(TransformerEncoder native, NativeConversionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(native);
        options ??= new();
        var p = NativeParameters.Of(native);
        int count = p.CountIndexed("layers.");
        if (count == 0) throw new NotSupportedException("The TransformerEncoder has no layers ('layers.0.*' parameters); nothing to convert.");
        var layers = Enumerable.Range(0, count).Select(i => EncoderLayer(p, $"layers.{i}.", options)).ToArray();
        var managed = new ManagedTransformerEncoder(layers);
        managed.train(native.training);
        using var probeScope = NewDisposeScope();
        var src = p.Probe(4, 2, layers[0].DModel);
        NativeProbe.Resolve("TransformerEncoder", native, managed,
            EncoderCandidates(layers[0].DModel, options),
            c => SetEncoderSettings(layers, c),
            () => [native.call(src)],
            () => [managed.call(src)]);
        return managed;
    }

    /// <summary>Managed copy of a native LSTM.</summary>
    /// <param name="native">The native module (not modified).</param>
    /// <param name="options">Settings that cannot be read from the native module (<c>batch_first</c> is detected; dropout is not).</param>
    /// <returns>An equivalent <see cref="ManagedLstm"/> with copied weights.</returns>
    /// <inheritdoc cref="FromNative(MultiheadAttention, NativeConversionOptions?)" path="/exception"/>
    public static ManagedLstm FromNative(LSTM native, NativeConversionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(native);
        return (ManagedLstm)Recurrent(native, options, 4,
            (s, o, p) => new ManagedLstm(s.Input, s.Hidden, s.Layers, s.Bias, false, o.Dropout, s.Bidirectional, p.Device, p.DType),
            x => Outputs(native.call(x)), (m, x) => Outputs(((ManagedLstm)m).call(x)));
    }

    /// <summary>Managed copy of a native GRU.</summary>
    /// <param name="native">The native module (not modified).</param>
    /// <param name="options">Settings that cannot be read from the native module (<c>batch_first</c> is detected; dropout is not).</param>
    /// <returns>An equivalent <see cref="ManagedGru"/> with copied weights.</returns>
    /// <inheritdoc cref="FromNative(MultiheadAttention, NativeConversionOptions?)" path="/exception"/>
    public static ManagedGru FromNative(GRU native, NativeConversionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(native);
        return (ManagedGru)Recurrent(native, options, 3,
            (s, o, p) => new ManagedGru(s.Input, s.Hidden, s.Layers, s.Bias, false, o.Dropout, s.Bidirectional, p.Device, p.DType),
            x => Outputs(native.call(x)), (m, x) => Outputs(((ManagedGru)m).call(x)));
    }

    /// <summary>
    /// Replaces every supported native module inside <paramref name="model"/> (in place) by its managed counterpart,
    /// where the parent can hold it: a <c>Sequential</c> or <c>ModuleList</c>/<c>ModuleDict</c> of a type the managed
    /// module has, or a field declared with the native module's generic base type (e.g. <c>Module&lt;Tensor, Tensor&gt;</c>
    /// for an encoder layer) rather than the sealed native type.
    /// </summary>
    /// <param name="model">The model to change in place (convert a copy to keep the original).</param>
    /// <param name="options">Settings that cannot be read from native modules; null detects them per module.</param>
    /// <returns>What was replaced, and what was kept native with the reason (a typed field, an unsupported type, settings that could not be detected).</returns>
    public static NativeConversionResult ReplaceNative(nn.Module model, NativeConversionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        var replaced = new List<NativeModuleReplacement>();
        var kept = new List<NativeModuleKept>();
        if (IsNative(model, out _))
            kept.Add(new("", model.GetType().Name, "the model itself is a native module: convert it with ManagedModules.FromNative"));
        foreach (var entry in ModuleTree.Walk(model))
        {
            if (!IsNative(entry.Module, out var managedType)) continue;
            string nativeType = entry.Module.GetType().Name;
            if (managedType is null)
            {
                kept.Add(new(entry.Name, nativeType, $"QuantSharp has no managed counterpart of {nativeType}"));
                continue;
            }
            string? why = ModuleTree.CannotReplace(entry, managedType);
            if (why != null)
            {
                kept.Add(new(entry.Name, nativeType, why));
                continue;
            }
            nn.Module managed;
            try
            {
                managed = Convert(entry.Module, options);
            }
            catch (Exception e) when (e is NotSupportedException or ArgumentException)
            {
                kept.Add(new(entry.Name, nativeType, e.Message));
                continue;
            }
            ModuleTree.Replace(entry, managed);
            replaced.Add(new(entry.Name, nativeType, managed));
        }
        return new(replaced, kept);
    }

    private static nn.Module Convert(nn.Module native, NativeConversionOptions? options) => native switch
    {
        MultiheadAttention m => FromNative(m, options),
        TransformerEncoderLayer m => FromNative(m, options),
        TransformerEncoder m => FromNative(m, options),
        LSTM m => FromNative(m, options),
        GRU m => FromNative(m, options),
        _ => throw new NotSupportedException($"No managed counterpart of {native.GetType().Name}."),
    };

    private static readonly Dictionary<Type, Type?> NativeTypes = new()
    {
        [typeof(MultiheadAttention)] = typeof(ManagedMultiheadAttention),
        [typeof(TransformerEncoderLayer)] = typeof(ManagedTransformerEncoderLayer),
        [typeof(TransformerEncoder)] = typeof(ManagedTransformerEncoder),
        [typeof(LSTM)] = typeof(ManagedLstm),
        [typeof(GRU)] = typeof(ManagedGru),
        [typeof(TransformerDecoderLayer)] = null,
        [typeof(TransformerDecoder)] = null,
        [typeof(Transformer)] = null,
        [typeof(RNN)] = null,
        [typeof(LSTMCell)] = null,
        [typeof(GRUCell)] = null,
        [typeof(RNNCell)] = null,
    };

    /// <summary>Whether <paramref name="module"/> is one of TorchSharp's native composite modules; <paramref name="managedType"/> is its counterpart or null.</summary>
    internal static bool IsNative(nn.Module module, out Type? managedType) => NativeTypes.TryGetValue(module.GetType(), out managedType);

    private readonly record struct AttentionSettings(long Heads, bool ZeroAttn);

    private readonly record struct EncoderSettings(long Heads, nn.Activations Activation);

    private static IEnumerable<long> Heads(long embedDim, long? given) =>
        given is long h ? [h] : Enumerable.Range(1, (int)Math.Min(embedDim, int.MaxValue)).Select(i => (long)i).Where(i => embedDim % i == 0);

    private static List<AttentionSettings> AttentionCandidates(long embedDim, NativeConversionOptions options) =>
        (from h in Heads(embedDim, options.NumHeads)
         from z in options.AddZeroAttn is bool b ? [b] : new[] { false, true }
         select new AttentionSettings(h, z)).ToList();

    private static List<EncoderSettings> EncoderCandidates(long dModel, NativeConversionOptions options) =>
        (from h in Heads(dModel, options.NumHeads)
         from a in options.Activation is nn.Activations act ? [act] : new[] { nn.Activations.ReLU, nn.Activations.GELU }
         select new EncoderSettings(h, a)).ToList();

    private static void SetEncoderSettings(IEnumerable<ManagedTransformerEncoderLayer> layers, EncoderSettings s)
    {
        foreach (var layer in layers)
        {
            ManagedMultiheadAttention.CheckHeads(layer.DModel, s.Heads);
            layer.SelfAttn.NumHeads = s.Heads;
            layer.Activation = s.Activation;
        }
    }

    private static Tensor[] Pair(Tuple<Tensor, Tensor> t) => [t.Item1, t.Item2];

    private static Tensor[] Outputs((Tensor, Tensor) t) => [t.Item1, t.Item2];

    private static Tensor[] Outputs((Tensor, Tensor, Tensor) t) => [t.Item1, t.Item2, t.Item3];

    /// <summary>Sizes of a native recurrent module, read from its parameter names and shapes.</summary>
    private sealed record RecurrentShape(long Input, long Hidden, long Layers, bool Bias, bool Bidirectional);

    private static ManagedRecurrent<TState, TResult> Recurrent<TState, TResult>(nn.Module native, NativeConversionOptions? options, int gates,
        Func<RecurrentShape, NativeConversionOptions, NativeParameters, ManagedRecurrent<TState, TResult>> create,
        Func<Tensor, Tensor[]> runNative, Func<ManagedRecurrent<TState, TResult>, Tensor, Tensor[]> runManaged)
    {
        options ??= new();
        var p = NativeParameters.Of(native);
        var ihWeight = p.Get("weight_ih_l0");
        long hidden = p.Get("weight_hh_l0").shape[1];
        if (ihWeight.shape[0] != gates * hidden)
            throw new NotSupportedException($"The {native.GetType().Name}'s weight_ih_l0 has {ihWeight.shape[0]} rows, not {gates} gates x {hidden} hidden features.");
        long layers = 0;
        while (p.Find($"weight_ih_l{layers}") is not null) layers++;
        var shape = new RecurrentShape(ihWeight.shape[1], hidden, layers, p.Find("bias_ih_l0") is not null, p.Find("weight_ih_l0_reverse") is not null);
        var managed = create(shape, options, p);
        using (no_grad())
        {
            for (long layer = 0; layer < layers; layer++)
            {
                foreach (bool reverse in shape.Bidirectional ? new[] { false, true } : [false])
                {
                    string suffix = $"_l{layer}{(reverse ? "_reverse" : "")}";
                    CopyLinear(managed.InputProjection(layer, reverse), p.Get("weight_ih" + suffix), p.Find("bias_ih" + suffix));
                    CopyLinear(managed.HiddenProjection(layer, reverse), p.Get("weight_hh" + suffix), p.Find("bias_hh" + suffix));
                }
            }
        }
        managed.train(p.Training);
        using (NewDisposeScope())
        {
            var x = p.Probe(3, 2, shape.Input); // 3 != 2: a wrong batch_first changes the output
            NativeProbe.Resolve<bool>(native.GetType().Name, native, managed,
                options.BatchFirst is bool b ? [b] : [false, true],
                batchFirst => managed.BatchFirst = batchFirst,
                () => runNative(x),
                () => runManaged(managed, x));
        }
        return managed;
    }

    private static (Tensor Query, Tensor Key, Tensor Value) AttentionProbe(ManagedMultiheadAttention m, NativeParameters p) =>
        (p.Probe(3, 2, m.EmbedDim), p.Probe(4, 2, m.KDim), p.Probe(4, 2, m.VDim));

    /// <summary>Builds an attention layer (one head; detection sets the heads) from the native parameters under <paramref name="prefix"/>.</summary>
    private static ManagedMultiheadAttention Attention(NativeParameters p, string prefix, NativeConversionOptions options)
    {
        var outWeight = p.Get(prefix + "out_proj.weight");
        var (_, kw, vw, inBias) = InputProjections(p, prefix);
        var m = new ManagedMultiheadAttention(outWeight.shape[0], 1, options.Dropout, inBias is not null, p.Find(prefix + "bias_k") is not null, false,
            kw.shape[1], vw.shape[1], outWeight.device, outWeight.dtype);
        LoadAttention(m, p, prefix);
        m.train(p.Training);
        return m;
    }

    /// <summary>The q/k/v weights (slices of the packed <c>in_proj_weight</c> when kdim == vdim == E) and the packed bias.</summary>
    private static (Tensor Q, Tensor K, Tensor V, Tensor? Bias) InputProjections(NativeParameters p, string prefix)
    {
        Tensor? packed = p.Find(prefix + "in_proj_weight");
        Tensor? bias = p.Find(prefix + "in_proj_bias");
        if (packed is null) return (p.Get(prefix + "q_proj_weight"), p.Get(prefix + "k_proj_weight"), p.Get(prefix + "v_proj_weight"), bias);
        long e = packed.shape[1];
        return (packed.narrow(0, 0, e), packed.narrow(0, e, e), packed.narrow(0, 2 * e, e), bias);
    }

    private static void LoadAttention(ManagedMultiheadAttention m, NativeParameters p, string prefix)
    {
        var (qw, kw, vw, inBias) = InputProjections(p, prefix);
        long e = m.EmbedDim;
        using var _ = no_grad();
        CopyLinear(m.QProj, qw, inBias?.narrow(0, 0, e));
        CopyLinear(m.KProj, kw, inBias?.narrow(0, e, e));
        CopyLinear(m.VProj, vw, inBias?.narrow(0, 2 * e, e));
        CopyLinear(m.OutProj, p.Get(prefix + "out_proj.weight"), p.Find(prefix + "out_proj.bias"));
        if (m.BiasK is not null)
        {
            m.BiasK.copy_(p.Get(prefix + "bias_k"));
            m.BiasV!.copy_(p.Get(prefix + "bias_v"));
        }
    }

    private static ManagedTransformerEncoderLayer EncoderLayer(NativeParameters p, string prefix, NativeConversionOptions options)
    {
        var w1 = p.Get(prefix + "linear1.weight");
        var layer = new ManagedTransformerEncoderLayer(w1.shape[1], 1, w1.shape[0], options.Dropout, nn.Activations.ReLU, false, 1e-5, w1.device, w1.dtype);
        LoadAttention(layer.SelfAttn, p, prefix + "self_attn.");
        using (no_grad())
        {
            CopyLinear(layer.Linear1, w1, p.Find(prefix + "linear1.bias"));
            CopyLinear(layer.Linear2, p.Get(prefix + "linear2.weight"), p.Find(prefix + "linear2.bias"));
            foreach (var (norm, module) in new[] { ("norm1", layer.Norm1), ("norm2", layer.Norm2) })
            {
                var ln = (LayerNorm)module;
                ln.weight!.copy_(p.Get($"{prefix}{norm}.weight"));
                ln.bias!.copy_(p.Get($"{prefix}{norm}.bias"));
            }
        }
        layer.train(p.Training);
        return layer;
    }

    private static void CopyLinear(nn.Module<Tensor, Tensor> target, Tensor weight, Tensor? bias)
    {
        var linear = (Linear)target;
        linear.weight!.copy_(weight);
        if (bias is not null) linear.bias!.copy_(bias);
    }
}
