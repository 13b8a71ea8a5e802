using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace QuantSharp.Models.MiniLM;

// The BERT encoder as Hugging Face's modeling_bert.py names it, so that state_dict keys are the checkpoint's tensor
// names (encoder.layer.0.attention.self.query.weight, ...). Layers to quantize are fields typed Module<Tensor, Tensor>
// named as their component, so the quantizer can put a quantized module in their place; they run through .call()
// so that calibration hooks fire. Field names follow the checkpoint, not .NET naming.
#pragma warning disable IDE1006 // names are the checkpoint's

/// <summary>Word + position + token type embeddings, then LayerNorm.</summary>
internal sealed class BertEmbeddings : Module<Tensor, Tensor>
{
    private readonly Module<Tensor, Tensor> word_embeddings;
    private readonly Module<Tensor, Tensor> position_embeddings;
    private readonly Module<Tensor, Tensor> token_type_embeddings;
    private readonly Module<Tensor, Tensor> LayerNorm;

    public BertEmbeddings(BertConfig config) : base(nameof(BertEmbeddings))
    {
        word_embeddings = Embedding(config.VocabSize, config.HiddenSize);
        position_embeddings = Embedding(config.MaxPositions, config.HiddenSize);
        token_type_embeddings = Embedding(config.TypeVocabSize, config.HiddenSize);
        LayerNorm = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        RegisterComponents();
    }

    /// <summary>Token ids [batch, sequence] (int64) to hidden states [batch, sequence, hidden]; token type 0 everywhere.</summary>
    public override Tensor forward(Tensor inputIds)
    {
        using var scope = NewDisposeScope();
        using var kept = new KeptScalars();
        var positions = arange(kept.Of(0), kept.Of(inputIds.shape[1]), kept.Of(1), dtype: ScalarType.Int64, device: inputIds.device).unsqueeze(0);
        var x = KeptScalars.Plus(word_embeddings.call(inputIds), token_type_embeddings.call(zeros_like(inputIds)));
        x = KeptScalars.Plus(x, position_embeddings.call(positions));
        return LayerNorm.call(x).MoveToOuterDisposeScope();
    }
}

/// <summary>Multi-head self-attention: query, key and value projections and scaled dot-product attention.</summary>
internal sealed class BertSelfAttention : Module<Tensor, Tensor, Tensor>
{
    private readonly Module<Tensor, Tensor> query;
    private readonly Module<Tensor, Tensor> key;
    private readonly Module<Tensor, Tensor> value;
    private readonly int _heads;
    private readonly int _headSize;

    public BertSelfAttention(BertConfig config) : base(nameof(BertSelfAttention))
    {
        query = Linear(config.HiddenSize, config.HiddenSize);
        key = Linear(config.HiddenSize, config.HiddenSize);
        value = Linear(config.HiddenSize, config.HiddenSize);
        _heads = config.Heads;
        _headSize = config.HeadSize;
        RegisterComponents();
    }

    /// <summary>Hidden states [batch, sequence, hidden] and the additive mask [batch, 1, 1, sequence] to the attention context.</summary>
    public override Tensor forward(Tensor hidden, Tensor additiveMask)
    {
        using var scope = NewDisposeScope();
        var q = Heads(query.call(hidden));
        var k = Heads(key.call(hidden));
        var v = Heads(value.call(hidden));
        using var kept = new KeptScalars();
        var scores = KeptScalars.Plus(matmul(q, k.transpose(-1, -2)).div(kept.Of(Math.Sqrt(_headSize))), additiveMask);
        var context = matmul(functional.softmax(scores, -1), v);
        long[] shape = [hidden.shape[0], hidden.shape[1], (long)_heads * _headSize];
        return context.permute(0, 2, 1, 3).contiguous().view(shape).MoveToOuterDisposeScope();
    }

    // [batch, sequence, hidden] -> [batch, heads, sequence, head size]
    private Tensor Heads(Tensor x) => x.view(x.shape[0], x.shape[1], _heads, _headSize).permute(0, 2, 1, 3);
}

/// <summary>Dense projection, then LayerNorm of (projection + residual): BERT's <c>BertSelfOutput</c> and <c>BertOutput</c>.</summary>
internal sealed class BertResidualOutput : Module<Tensor, Tensor, Tensor>
{
    private readonly Module<Tensor, Tensor> dense;
    private readonly Module<Tensor, Tensor> LayerNorm;

    public BertResidualOutput(int inFeatures, BertConfig config) : base(nameof(BertResidualOutput))
    {
        dense = Linear(inFeatures, config.HiddenSize);
        LayerNorm = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor residual)
    {
        using var scope = NewDisposeScope();
        return LayerNorm.call(KeptScalars.Plus(dense.call(x), residual)).MoveToOuterDisposeScope();
    }
}

/// <summary>Self-attention and its output projection (<c>attention.self</c>, <c>attention.output</c>).</summary>
internal sealed class BertAttention : Module<Tensor, Tensor, Tensor>
{
    private readonly BertSelfAttention self;
    private readonly BertResidualOutput output;

    public BertAttention(BertConfig config) : base(nameof(BertAttention))
    {
        self = new BertSelfAttention(config);
        output = new BertResidualOutput(config.HiddenSize, config);
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden, Tensor additiveMask)
    {
        using var context = self.call(hidden, additiveMask);
        return output.call(context, hidden);
    }
}

/// <summary>Feed-forward expansion with BERT's exact (erf) GELU.</summary>
internal sealed class BertIntermediate : Module<Tensor, Tensor>
{
    private readonly Module<Tensor, Tensor> dense;

    public BertIntermediate(BertConfig config) : base(nameof(BertIntermediate))
    {
        dense = Linear(config.HiddenSize, config.IntermediateSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var h = dense.call(x);
        return functional.gelu(h);
    }
}

/// <summary>One encoder layer: attention, then feed-forward, each with a residual LayerNorm.</summary>
internal sealed class BertLayer : Module<Tensor, Tensor, Tensor>
{
    private readonly BertAttention attention;
    private readonly BertIntermediate intermediate;
    private readonly BertResidualOutput output;

    public BertLayer(BertConfig config) : base(nameof(BertLayer))
    {
        attention = new BertAttention(config);
        intermediate = new BertIntermediate(config);
        output = new BertResidualOutput(config.IntermediateSize, config);
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden, Tensor additiveMask)
    {
        using var scope = NewDisposeScope();
        var a = attention.call(hidden, additiveMask);
        return output.call(intermediate.call(a), a).MoveToOuterDisposeScope();
    }
}

/// <summary>The stack of encoder layers (<c>encoder.layer.N</c>).</summary>
internal sealed class BertEncoder : Module<Tensor, Tensor, Tensor>
{
    private readonly TorchSharp.Modules.ModuleList<BertLayer> layer;

    public BertEncoder(BertConfig config) : base(nameof(BertEncoder))
    {
        layer = new TorchSharp.Modules.ModuleList<BertLayer>(Enumerable.Range(0, config.Layers).Select(_ => new BertLayer(config)).ToArray());
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden, Tensor additiveMask)
    {
        using var scope = NewDisposeScope();
        var x = hidden;
        foreach (var l in layer) x = l.call(x, additiveMask);
        return x.MoveToOuterDisposeScope();
    }
}
