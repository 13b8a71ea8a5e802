using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Modules;

/// <summary>
/// A quantized replacement for <see cref="TorchSharp.Modules.Embedding"/>: looks up the stored rows and dequantizes
/// only those (per-channel means one scale per embedding row). <c>max_norm</c> renormalization is not applied.
/// </summary>
public sealed class QuantizedEmbedding : QuantizedModule
{
    /// <summary>Creates a quantized embedding from a quantized <c>[num_embeddings, embedding_dim]</c> table.</summary>
    /// <param name="weight">The quantized table (rank 2).</param>
    /// <exception cref="ArgumentException">The weight is not rank 2.</exception>
    public QuantizedEmbedding(QuantizedWeight weight)
        : base(nameof(QuantizedEmbedding), weight, bias: null, input: null)
    {
        if (weight.Shape.Count != 2) throw new ArgumentException($"An embedding table has rank 2, got shape {QuantSpec.FormatShape([.. weight.Shape])}.", nameof(weight));
    }

#pragma warning disable IDE1006 // TorchSharp's names
    /// <summary>Number of embeddings (rows).</summary>
    public long num_embeddings => WeightShape[0];

    /// <summary>Embedding dimension.</summary>
    public long embedding_dim => WeightShape[1];
#pragma warning restore IDE1006

    /// <inheritdoc/>
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        if (input.dtype is not (ScalarType.Int64 or ScalarType.Int32))
            throw new ArgumentException($"Quantized embedding '{LayerName}' needs integer indices (Int64 or Int32), got {input.dtype}.");
        var flat = input.flatten().to(ScalarType.Int64);
        if (flat.numel() > 0)
        {
            long lo = flat.min().item<long>(), hi = flat.max().item<long>();
            if (lo < 0 || hi >= num_embeddings)
                throw new ArgumentException($"Quantized embedding '{LayerName}' has {num_embeddings} rows; index {(lo < 0 ? lo : hi)} is out of range.");
        }
        var rows = weight.GatherRows(flat);
        var shape = input.shape.Append(embedding_dim).ToArray();
        return rows.reshape(shape).MoveToOuterDisposeScope();
    }
}
