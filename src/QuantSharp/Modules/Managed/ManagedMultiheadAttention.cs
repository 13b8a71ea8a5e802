using QuantSharp.Tensors;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace QuantSharp.Modules.Managed;

/// <summary>
/// Multi-head attention written with ordinary TorchSharp operations, with the same forward signature and the same
/// arithmetic as TorchSharp's native <see cref="MultiheadAttention"/> (libtorch's C++ <c>MultiheadAttention</c>), but
/// whose projections are replaceable child modules: <c>q_proj</c>, <c>k_proj</c>, <c>v_proj</c> and <c>out_proj</c>
/// (each a <see cref="Linear"/> held in a field typed <c>Module&lt;Tensor, Tensor&gt;</c>), so that a quantizer can swap
/// them for quantized layers.
/// </summary>
/// <remarks>
/// <para>Tensors are sequence-first, as in the native module: query <c>[L, N, E]</c>, key and value <c>[S, N, kdim]</c> /
/// <c>[S, N, vdim]</c>. The native module packs the three input projections into one <c>in_proj_weight</c> of shape
/// <c>[3E, E]</c>; here they are three <c>[E, E]</c> (or <c>[E, kdim]</c>, <c>[E, vdim]</c>) layers, which compute the
/// same rows of the same products.</para>
/// <para><c>attn_mask</c> is added to the attention logits (a float mask of shape <c>[L, S]</c>; libtorch's C++ module
/// accepts no 3-D mask); <c>key_padding_mask</c> (<c>[N, S]</c>, bool) sets the masked logits to -inf.</para>
/// </remarks>
public sealed class ManagedMultiheadAttention : nn.Module<Tensor, Tensor, Tensor, Tensor?, bool, Tensor?, Tuple<Tensor, Tensor>>
{
    // Field names are the registered component names: the quantizer replaces children through these fields.
#pragma warning disable IDE1006 // TorchSharp registers components under their field names
    private nn.Module<Tensor, Tensor> q_proj;
    private nn.Module<Tensor, Tensor> k_proj;
    private nn.Module<Tensor, Tensor> v_proj;
    private nn.Module<Tensor, Tensor> out_proj;
    private Parameter? bias_k;
    private Parameter? bias_v;
#pragma warning restore IDE1006

    /// <summary>Creates an attention layer initialized as TorchSharp's native one (Xavier-uniform input projections, zero biases).</summary>
    /// <param name="embedDim">Model dimension E (query features and output features).</param>
    /// <param name="numHeads">Number of heads; must divide <paramref name="embedDim"/>.</param>
    /// <param name="dropout">Dropout probability on the attention weights (training mode only).</param>
    /// <param name="bias">Whether the projections have biases.</param>
    /// <param name="addBiasKV">Appends learned vectors <c>bias_k</c>/<c>bias_v</c> to the key and value sequences.</param>
    /// <param name="addZeroAttn">Appends a zero vector to the (projected) key and value sequences.</param>
    /// <param name="kdim">Key features (default E).</param>
    /// <param name="vdim">Value features (default E).</param>
    /// <param name="device">Device of the parameters.</param>
    /// <param name="dtype">Element type of the parameters.</param>
    /// <exception cref="ArgumentException">A dimension is not positive, or <paramref name="numHeads"/> does not divide <paramref name="embedDim"/>.</exception>
    public ManagedMultiheadAttention(long embedDim, long numHeads, double dropout = 0.0, bool bias = true, bool addBiasKV = false,
        bool addZeroAttn = false, long? kdim = null, long? vdim = null, Device? device = null, ScalarType? dtype = null)
        : base(nameof(ManagedMultiheadAttention))
    {
        EmbedDim = embedDim;
        KDim = kdim ?? embedDim;
        VDim = vdim ?? embedDim;
        if (embedDim <= 0 || KDim <= 0 || VDim <= 0)
            throw new ArgumentException($"Attention dimensions must be positive (embedDim {embedDim}, kdim {KDim}, vdim {VDim}).", nameof(embedDim));
        NumHeads = numHeads;
        CheckHeads(embedDim, numHeads);
        Dropout = dropout;
        AddZeroAttn = addZeroAttn;
        q_proj = nn.Linear(embedDim, embedDim, bias, device, dtype);
        k_proj = nn.Linear(KDim, embedDim, bias, device, dtype);
        v_proj = nn.Linear(VDim, embedDim, bias, device, dtype);
        out_proj = nn.Linear(embedDim, embedDim, bias, device, dtype);
        if (addBiasKV)
        {
            bias_k = new Parameter(empty([1, 1, embedDim], dtype, device));
            bias_v = new Parameter(empty([1, 1, embedDim], dtype, device));
        }
        ResetParameters(bias);
        RegisterComponents();
    }

    private void ResetParameters(bool bias)
    {
        using var _ = no_grad();
        // libtorch initializes the packed [3E, E] in_proj_weight Xavier-uniformly (when kdim == vdim == E), else each
        // projection on its own; the three slices of the packed matrix share its bound.
        bool packed = KDim == EmbedDim && VDim == EmbedDim;
        foreach (var proj in new[] { q_proj, k_proj, v_proj })
        {
            var w = ((Linear)proj).weight!;
            if (packed)
            {
                double bound = Math.Sqrt(6.0 / (EmbedDim + 3 * EmbedDim));
                w.uniform_(-bound, bound);
            }
            else
            {
                nn.init.xavier_uniform_(w);
            }
            if (bias) ((Linear)proj).bias!.zero_();
        }
        if (bias) ((Linear)out_proj).bias!.zero_();
        if (bias_k is not null) nn.init.xavier_normal_(bias_k);
        if (bias_v is not null) nn.init.xavier_normal_(bias_v);
    }

    internal static void CheckHeads(long embedDim, long numHeads)
    {
        if (numHeads <= 0 || embedDim % numHeads != 0)
            throw new ArgumentException($"numHeads ({numHeads}) must be a positive divisor of embedDim ({embedDim}).", nameof(numHeads));
    }

    /// <summary>Model dimension E.</summary>
    public long EmbedDim { get; }

    /// <summary>Key features.</summary>
    public long KDim { get; }

    /// <summary>Value features.</summary>
    public long VDim { get; }

    /// <summary>Number of heads.</summary>
    public long NumHeads { get; internal set; }

    /// <summary>Features per head (<see cref="EmbedDim"/> / <see cref="NumHeads"/>).</summary>
    public long HeadDim => EmbedDim / NumHeads;

    /// <summary>Dropout probability on the attention weights in training mode.</summary>
    public double Dropout { get; }

    /// <summary>Whether a zero vector is appended to the projected key and value sequences.</summary>
    public bool AddZeroAttn { get; internal set; }

    /// <summary>Query projection (<c>q_proj</c>): a <see cref="Linear"/> until replaced.</summary>
    public nn.Module<Tensor, Tensor> QProj => q_proj;

    /// <summary>Key projection (<c>k_proj</c>).</summary>
    public nn.Module<Tensor, Tensor> KProj => k_proj;

    /// <summary>Value projection (<c>v_proj</c>).</summary>
    public nn.Module<Tensor, Tensor> VProj => v_proj;

    /// <summary>Output projection (<c>out_proj</c>).</summary>
    public nn.Module<Tensor, Tensor> OutProj => out_proj;

    /// <summary>Learned key bias appended to the key sequence (<c>[1, 1, E]</c>), or null.</summary>
    public Parameter? BiasK => bias_k;

    /// <summary>Learned value bias appended to the value sequence (<c>[1, 1, E]</c>), or null.</summary>
    public Parameter? BiasV => bias_v;

    /// <summary>Attention of <paramref name="query"/> over <paramref name="key"/>/<paramref name="value"/>.</summary>
    /// <param name="query">Queries, <c>[L, N, E]</c>.</param>
    /// <param name="key">Keys, <c>[S, N, kdim]</c>.</param>
    /// <param name="value">Values, <c>[S, N, vdim]</c>.</param>
    /// <param name="key_padding_mask">Optional bool mask <c>[N, S]</c>: true marks keys to ignore.</param>
    /// <param name="need_weights">Whether to return the attention weights averaged over heads.</param>
    /// <param name="attn_mask">Optional additive mask <c>[L, S]</c>.</param>
    /// <returns>The output <c>[L, N, E]</c> and the weights <c>[N, L, S]</c> (null when <paramref name="need_weights"/> is false;
    /// the native module returns an invalid tensor there).</returns>
    public override Tuple<Tensor, Tensor> forward(Tensor query, Tensor key, Tensor value, Tensor? key_padding_mask, bool need_weights, Tensor? attn_mask)
    {
        CheckInputs(query, key, value, key_padding_mask);
        using var scope = NewDisposeScope();
        using var kept = new KeptScalars();
        long tgtLen = query.shape[0], bsz = query.shape[1];
        long heads = NumHeads, headDim = HeadDim;
        double scaling = 1.0 / Math.Sqrt(headDim); // libtorch: 1 / std::sqrt(head_dim)

        var q = q_proj.call(query).mul(kept.Of(scaling));
        var k = k_proj.call(key);
        var v = v_proj.call(value);
        var mask = attn_mask;
        var padding = key_padding_mask;
        if (bias_k is not null && bias_v is not null)
        {
            k = cat([k, bias_k.repeat(1, bsz, 1)]);
            v = cat([v, bias_v.repeat(1, bsz, 1)]);
            mask = AppendZeroColumn(mask);
            padding = AppendZeroColumn(padding);
        }
        q = q.contiguous().view(tgtLen, bsz * heads, headDim).transpose(0, 1);
        k = k.contiguous().view(-1, bsz * heads, headDim).transpose(0, 1);
        v = v.contiguous().view(-1, bsz * heads, headDim).transpose(0, 1);
        if (AddZeroAttn)
        {
            k = cat([k, zeros([k.shape[0], 1, k.shape[2]], k.dtype, k.device)], 1);
            v = cat([v, zeros([v.shape[0], 1, v.shape[2]], v.dtype, v.device)], 1);
            mask = AppendZeroColumn(mask);
            padding = AppendZeroColumn(padding);
        }
        long srcLen = k.shape[1];

        var weights = bmm(q, k.transpose(1, 2));
        if (mask is not null) KeptScalars.PlusInPlace(weights, mask.unsqueeze(0));
        if (padding is not null)
        {
            weights = weights.view(bsz, heads, tgtLen, srcLen)
                .masked_fill(padding.unsqueeze(1).unsqueeze(2), kept.Of(double.NegativeInfinity))
                .view(bsz * heads, tgtLen, srcLen);
        }
        weights = weights.softmax(-1);
        weights = nn.functional.dropout(weights, Dropout, training);
        var output = bmm(weights, v).transpose(0, 1).contiguous().view(tgtLen, bsz, EmbedDim);
        output = out_proj.call(output);
        Tensor? averaged = need_weights ? weights.view(bsz, heads, tgtLen, srcLen).sum(1).div(kept.Of(heads)) : null;
        output.MoveToOuterDisposeScope();
        averaged?.MoveToOuterDisposeScope();
        return Tuple.Create(output, averaged!);
    }

    /// <summary>Runs the layer through its hooks, with the native module's defaults (<c>need_weights</c> true).</summary>
    /// <inheritdoc cref="forward"/>
    public new Tuple<Tensor, Tensor> call(Tensor query, Tensor key, Tensor value, Tensor? key_padding_mask = null, bool need_weights = true, Tensor? attn_mask = null) =>
        base.call(query, key, value, key_padding_mask, need_weights, attn_mask);

    private void CheckInputs(Tensor query, Tensor key, Tensor value, Tensor? keyPaddingMask)
    {
        if (query.dim() != 3 || query.shape[2] != EmbedDim)
            throw new ArgumentException($"query must be [target length, batch, {EmbedDim}] (sequence first); got [{string.Join(", ", query.shape)}].", nameof(query));
        if (key.dim() != 3 || key.shape[2] != KDim || key.shape[1] != query.shape[1])
            throw new ArgumentException($"key must be [source length, {query.shape[1]}, {KDim}]; got [{string.Join(", ", key.shape)}].", nameof(key));
        if (value.dim() != 3 || value.shape[2] != VDim || value.shape[0] != key.shape[0] || value.shape[1] != key.shape[1])
            throw new ArgumentException($"value must be [{key.shape[0]}, {key.shape[1]}, {VDim}] (as many positions as key); got [{string.Join(", ", value.shape)}].", nameof(value));
        if (keyPaddingMask is not null && (keyPaddingMask.dtype != ScalarType.Bool || keyPaddingMask.dim() != 2
                || keyPaddingMask.shape[0] != key.shape[1] || keyPaddingMask.shape[1] != key.shape[0]))
            throw new ArgumentException(
                $"key_padding_mask must be a bool tensor [{key.shape[1]}, {key.shape[0]}] (batch, key length; true = ignore that key); " +
                $"got {keyPaddingMask.dtype} [{string.Join(", ", keyPaddingMask.shape)}].", "key_padding_mask");
    }

    private static Tensor? AppendZeroColumn(Tensor? mask) =>
        mask is null ? null : cat([mask, zeros([mask.shape[0], 1], mask.dtype, mask.device)], 1);
}
