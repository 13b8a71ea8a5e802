using QuantSharp.Tensors;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace QuantSharp.Modules.Managed;

/// <summary>
/// A transformer encoder layer written with ordinary TorchSharp operations, with the same forward signatures and the
/// same arithmetic as TorchSharp's native <see cref="TransformerEncoderLayer"/> (libtorch's C++ layer), but whose
/// projections are replaceable children: <c>self_attn</c> (a <see cref="ManagedMultiheadAttention"/>) and the
/// feed-forward <c>linear1</c>/<c>linear2</c> (fields typed <c>Module&lt;Tensor, Tensor&gt;</c>).
/// </summary>
/// <remarks>
/// <para>Post-norm (the native layer's only form): <c>x = norm1(x + dropout1(self_attn(x)))</c>, then
/// <c>norm2(x + dropout2(linear2(dropout(activation(linear1(x))))))</c>. With <c>normFirst</c> (PyTorch's
/// <c>norm_first=True</c>, which the native layer does not offer): <c>x = x + dropout1(self_attn(norm1(x)))</c>, then
/// <c>x + dropout2(feed_forward(norm2(x)))</c>. Input is sequence-first <c>[S, N, E]</c>.</para>
/// <para>Dropout applies in training mode only (<c>train()</c>/<c>eval()</c>).</para>
/// </remarks>
public sealed class ManagedTransformerEncoderLayer : nn.Module<Tensor, Tensor>, nn.IModule<Tensor, Tensor, Tensor>, nn.IModule<Tensor, Tensor, Tensor, Tensor>
{
#pragma warning disable IDE1006 // TorchSharp registers components under their field names
    private ManagedMultiheadAttention self_attn;
    private nn.Module<Tensor, Tensor> linear1;
    private nn.Module<Tensor, Tensor> linear2;
    private nn.Module<Tensor, Tensor> norm1;
    private nn.Module<Tensor, Tensor> norm2;
    private Dropout dropout;
    private Dropout dropout1;
    private Dropout dropout2;
#pragma warning restore IDE1006

    /// <summary>Creates a layer initialized as TorchSharp's native one (same defaults).</summary>
    /// <param name="dModel">Model dimension E.</param>
    /// <param name="nhead">Attention heads; must divide <paramref name="dModel"/>.</param>
    /// <param name="dimFeedforward">Hidden features of the feed-forward block.</param>
    /// <param name="dropout">Dropout probability (attention weights, residual branches, feed-forward), training mode only.</param>
    /// <param name="activation">Feed-forward activation: ReLU or GELU (exact, not tanh-approximated).</param>
    /// <param name="normFirst">Pre-norm instead of the native post-norm.</param>
    /// <param name="layerNormEps">Epsilon of both layer norms (libtorch's default 1e-5).</param>
    /// <param name="device">Device of the parameters.</param>
    /// <param name="dtype">Element type of the parameters.</param>
    public ManagedTransformerEncoderLayer(long dModel = 512, long nhead = 8, long dimFeedforward = 2048, double dropout = 0.1,
        nn.Activations activation = nn.Activations.ReLU, bool normFirst = false, double layerNormEps = 1e-5, Device? device = null, ScalarType? dtype = null)
        : base(nameof(ManagedTransformerEncoderLayer))
    {
        if (dimFeedforward <= 0) throw new ArgumentException($"dimFeedforward must be positive; got {dimFeedforward}.", nameof(dimFeedforward));
        self_attn = new ManagedMultiheadAttention(dModel, nhead, dropout, device: device, dtype: dtype);
        linear1 = nn.Linear(dModel, dimFeedforward, true, device, dtype);
        linear2 = nn.Linear(dimFeedforward, dModel, true, device, dtype);
        norm1 = nn.LayerNorm(dModel, layerNormEps, device: device, dtype: dtype);
        norm2 = nn.LayerNorm(dModel, layerNormEps, device: device, dtype: dtype);
        this.dropout = nn.Dropout(dropout);
        dropout1 = nn.Dropout(dropout);
        dropout2 = nn.Dropout(dropout);
        Activation = activation;
        NormFirst = normFirst;
        RegisterComponents();
    }

    /// <summary>Model dimension E.</summary>
    public long DModel => self_attn.EmbedDim;

    /// <summary>Feed-forward activation.</summary>
    public nn.Activations Activation { get; internal set; }

    /// <summary>Whether the layer norms come before the attention and feed-forward blocks.</summary>
    public bool NormFirst { get; }

    /// <summary>The self-attention block (<c>self_attn</c>).</summary>
    public ManagedMultiheadAttention SelfAttn => self_attn;

    /// <summary>First feed-forward projection (<c>linear1</c>): a <see cref="Linear"/> until replaced.</summary>
    public nn.Module<Tensor, Tensor> Linear1 => linear1;

    /// <summary>Second feed-forward projection (<c>linear2</c>).</summary>
    public nn.Module<Tensor, Tensor> Linear2 => linear2;

    /// <summary>First layer norm (<c>norm1</c>): a <see cref="LayerNorm"/>.</summary>
    public nn.Module<Tensor, Tensor> Norm1 => norm1;

    /// <summary>Second layer norm (<c>norm2</c>).</summary>
    public nn.Module<Tensor, Tensor> Norm2 => norm2;

    /// <summary>Encodes <paramref name="src"/> without masks.</summary>
    /// <param name="src">Input <c>[S, N, E]</c>.</param>
    /// <returns>Output <c>[S, N, E]</c>.</returns>
    public override Tensor forward(Tensor src) => Encode(src, null, null);

    /// <summary>Encodes <paramref name="src"/> with an additive attention mask (no hooks run, as for the native layer).</summary>
    /// <param name="src">Input <c>[S, N, E]</c>.</param>
    /// <param name="src_mask">Additive attention mask <c>[S, S]</c>, or null.</param>
    /// <returns>Output <c>[S, N, E]</c>.</returns>
    public Tensor call(Tensor src, Tensor? src_mask) => Encode(src, src_mask, null);

    /// <summary>Encodes <paramref name="src"/> with masks (no hooks run, as for the native layer).</summary>
    /// <param name="src">Input <c>[S, N, E]</c>.</param>
    /// <param name="src_mask">Additive attention mask <c>[S, S]</c>, or null.</param>
    /// <param name="src_key_padding_mask">Bool mask <c>[N, S]</c> (true = padding), or null.</param>
    /// <returns>Output <c>[S, N, E]</c>.</returns>
    public Tensor call(Tensor src, Tensor? src_mask, Tensor? src_key_padding_mask) => Encode(src, src_mask, src_key_padding_mask);

    private Tensor Encode(Tensor src, Tensor? mask, Tensor? padding)
    {
        using var scope = NewDisposeScope();
        Tensor x;
        if (NormFirst)
        {
            x = KeptScalars.Plus(src, dropout1.call(Attend(norm1.call(src), mask, padding)));
            x = KeptScalars.Plus(x, dropout2.call(FeedForward(norm2.call(x))));
        }
        else
        {
            x = norm1.call(KeptScalars.Plus(src, dropout1.call(Attend(src, mask, padding))));
            x = norm2.call(KeptScalars.Plus(x, dropout2.call(FeedForward(x))));
        }
        return x.MoveToOuterDisposeScope();
    }

    private Tensor Attend(Tensor x, Tensor? mask, Tensor? padding) => self_attn.call(x, x, x, padding, false, mask).Item1;

    private Tensor FeedForward(Tensor x)
    {
        var h = linear1.call(x);
        h = Activation switch
        {
            nn.Activations.ReLU => nn.functional.relu(h),
            nn.Activations.GELU => nn.functional.gelu(h),
            _ => throw new InvalidOperationException($"Unsupported activation {Activation}: use ReLU or GELU."),
        };
        return linear2.call(dropout.call(h));
    }
}
