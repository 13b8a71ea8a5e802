using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Modules;

/// <summary>
/// A quantized replacement for <see cref="TorchSharp.Modules.Embedding"/>: looks up the stored rows and dequantizes
/// only those (per-channel means one scale per embedding row). <c>max_norm</c> renormalization is not applied.
/// </summary>
public sealed class QuantizedEmbedding : QuantizedModule
{
    internal QuantizedEmbedding(QuantSpec spec, long[] weightShape, Tensor data, Tensor? scale, Tensor? zeroPoint)
        : base(nameof(QuantizedEmbedding), spec, weightShape, data, scale, zeroPoint, bias: null, input: null)
    {
    }

    /// <summary>Number of embeddings (rows).</summary>
    public long NumEmbeddings => WeightShape[0];

    /// <summary>Embedding dimension.</summary>
    public long EmbeddingDim => WeightShape[1];

    internal static QuantizedEmbedding FromFloat(TorchSharp.Modules.Embedding embedding, QuantSpec spec)
    {
        var (data, scale, zp) = WeightQuantizer.Quantize(embedding.weight!, spec);
        return new QuantizedEmbedding(spec, embedding.weight!.shape, data, scale, zp);
    }

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
            if (lo < 0 || hi >= NumEmbeddings)
                throw new ArgumentException($"Quantized embedding '{LayerName}' has {NumEmbeddings} rows; index {(lo < 0 ? lo : hi)} is out of range.");
        }
        Tensor rows;
        if (!WeightSpec.Type.IsInteger())
        {
            rows = WeightData.index_select(0, flat).to(ScalarType.Float32);
        }
        else
        {
            var q = WeightQuantizer.IntegerValues(WeightData.index_select(0, flat), WeightSpec.Type);
            var s = WeightScale!;
            var z = WeightZeroPoint;
            if (WeightSpec.Granularity is not PerTensor)
            {
                s = s.index_select(0, flat);
                z = z?.index_select(0, flat);
            }
            rows = WeightQuantizer.DequantizeRows(q, s, z, WeightSpec);
        }
        var shape = input.shape.Append(EmbeddingDim).ToArray();
        return rows.reshape(shape).MoveToOuterDisposeScope();
    }
}
