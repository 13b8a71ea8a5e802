using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace QuantSharp.Modules.Managed;

/// <summary>
/// A stack of <see cref="ManagedTransformerEncoderLayer"/>s (<c>layers.0</c>, <c>layers.1</c>, ...) with an optional final
/// <c>norm</c>: the managed counterpart of TorchSharp's native <see cref="TransformerEncoder"/>, with the same forward
/// signatures (<c>forward(src, src_mask, src_key_padding_mask)</c>).
/// </summary>
/// <remarks>TorchSharp's native encoder is built without a final norm; the managed one accepts one for models built
/// from scratch (PyTorch's <c>TransformerEncoder(norm=...)</c>).</remarks>
public sealed class ManagedTransformerEncoder : nn.Module<Tensor, Tensor?, Tensor?, Tensor>, nn.IModule<Tensor, Tensor, Tensor>, nn.IModule<Tensor, Tensor>
{
#pragma warning disable IDE1006 // TorchSharp registers components under their field names
    private ModuleList<ManagedTransformerEncoderLayer> layers;
    private nn.Module<Tensor, Tensor>? norm;
#pragma warning restore IDE1006

    /// <summary>Stacks <paramref name="layers"/> (each its own parameters), optionally followed by <paramref name="norm"/>.</summary>
    /// <param name="layers">The layers, applied in order.</param>
    /// <param name="norm">Optional final normalization (e.g. a <c>LayerNorm</c>).</param>
    /// <exception cref="ArgumentException">The same layer object appears twice.</exception>
    public ManagedTransformerEncoder(IEnumerable<ManagedTransformerEncoderLayer> layers, nn.Module<Tensor, Tensor>? norm = null)
        : base(nameof(ManagedTransformerEncoder))
    {
        ArgumentNullException.ThrowIfNull(layers);
        var list = layers.ToArray();
        if (list.Distinct().Count() != list.Length)
            throw new ArgumentException("The same ManagedTransformerEncoderLayer appears more than once; create one layer object per position.", nameof(layers));
        this.layers = nn.ModuleList(list);
        this.norm = norm;
        RegisterComponents();
    }

    /// <summary>The layers in order.</summary>
    public IReadOnlyList<ManagedTransformerEncoderLayer> Layers => layers.ToList();

    /// <summary>The final normalization, or null.</summary>
    public nn.Module<Tensor, Tensor>? Norm => norm;

    /// <summary>Encodes <paramref name="src"/> through every layer, then the final norm.</summary>
    /// <param name="src">Input <c>[S, N, E]</c>.</param>
    /// <param name="src_mask">Additive attention mask <c>[S, S]</c>, or null.</param>
    /// <param name="src_key_padding_mask">Bool mask <c>[N, S]</c> (true = padding), or null.</param>
    /// <returns>Output <c>[S, N, E]</c>.</returns>
    public override Tensor forward(Tensor src, Tensor? src_mask, Tensor? src_key_padding_mask)
    {
        using var scope = NewDisposeScope();
        var x = src;
        foreach (var layer in layers) x = layer.call(x, src_mask, src_key_padding_mask);
        if (norm is not null) x = norm.call(x);
        return (ReferenceEquals(x, src) ? x.alias() : x).MoveToOuterDisposeScope();
    }

    /// <summary>Encodes with an attention mask and no padding mask (through the hooks).</summary>
    /// <param name="src">Input <c>[S, N, E]</c>.</param>
    /// <param name="src_mask">Additive attention mask <c>[S, S]</c>, or null.</param>
    /// <returns>Output <c>[S, N, E]</c>.</returns>
    public Tensor call(Tensor src, Tensor? src_mask) => base.call(src, src_mask, null);

    /// <summary>Encodes without masks (through the hooks).</summary>
    /// <param name="src">Input <c>[S, N, E]</c>.</param>
    /// <returns>Output <c>[S, N, E]</c>.</returns>
    public Tensor call(Tensor src) => base.call(src, null, null);
}
