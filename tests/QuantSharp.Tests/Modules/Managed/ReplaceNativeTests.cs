using QuantSharp.Modules.Managed;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace QuantSharp.Tests.Modules.Managed;

/// <summary><see cref="ManagedModules.ReplaceNative"/> on a model that holds native modules in every kind of place.</summary>
public class ReplaceNativeTests
{
    /// <summary>Native modules in fields of their generic base type (replaceable), a typed field and a Sequential.</summary>
    private sealed class Mixed : Module<Tensor, Tensor>
    {
        private readonly Module<Tensor, Tensor, Tensor, Tensor?, bool, Tensor?, Tuple<Tensor, Tensor>> attention;
        private readonly MultiheadAttention typedAttention;
        private readonly Module<Tensor, Tensor> encoderLayer;
        private readonly Module<Tensor, Tensor?, Tensor?, Tensor> encoder;
        private readonly Sequential stack;
        private readonly TransformerDecoderLayer decoder;
        private readonly Module<Tensor, (Tensor, Tensor)?, (Tensor, Tensor, Tensor)> lstm;
        private readonly GRU gru;

        public Mixed() : base(nameof(Mixed))
        {
            torch.manual_seed(61);
            attention = MultiheadAttention(16, 4);
            typedAttention = MultiheadAttention(16, 2);
            encoderLayer = TransformerEncoderLayer(16, 2, 32, 0.1, Activations.GELU);
            encoder = TransformerEncoder(TransformerEncoderLayer(16, 8, 24, 0.1), 2);
            stack = Sequential(("0", TransformerEncoderLayer(16, 4, 32, 0.1)), ("1", nn.Identity()));
            decoder = TransformerDecoderLayer(16, 2, 32, 0.1);
            lstm = LSTM(16, 8, 2, bidirectional: true, batchFirst: true);
            gru = GRU(16, 16);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            x = x + attention.call(x, x, x, null, false, null).Item1;
            x = x + typedAttention.call(x, x, x, null, false, null).Item1;
            x = encoderLayer.call(x);
            x = encoder.call(x, null, null);
            x = stack.call(x);
            x = decoder.call(x, x);
            x = lstm.call(x, null).Item1;
            return gru.call(x).Item1;
        }
    }

    [Fact]
    public void ReplacesWhereTheDeclaredTypeAllowsAndReportsTheRest()
    {
        using var scope = NewDisposeScope();
        var model = new Mixed();
        model.eval();
        var x = randn(5, 2, 16);
        var before = model.call(x);

        var result = ManagedModules.ReplaceNative(model);

        Assert.Equal(new[] { "attention", "encoderLayer", "encoder", "stack.0", "lstm" }, result.Replaced.Select(r => r.Name));
        Assert.IsType<ManagedMultiheadAttention>(result.Replaced[0].Managed);
        Assert.IsType<ManagedTransformerEncoder>(result.Replaced[2].Managed);
        var kept = result.Kept.ToDictionary(k => k.Name);
        Assert.Equal(new[] { "typedAttention", "decoder", "gru" }, result.Kept.Select(k => k.Name));
        Assert.Contains("declared as GRU", kept["gru"].Reason);
        Assert.True(((ManagedLstm)result.Replaced[4].Managed).BatchFirst);
        Assert.Contains("declared as MultiheadAttention", kept["typedAttention"].Reason);
        Assert.Contains("Module<Tensor, Tensor, Tensor, Tensor, Boolean, Tensor, Tuple<Tensor, Tensor>>", kept["typedAttention"].Reason);
        Assert.Contains("no managed counterpart of TransformerDecoderLayer", kept["decoder"].Reason);

        // Same outputs, and the projections are now ordinary children the quantizer can see.
        ManagedAttentionTests.AssertClose(before, model.call(x), "model output");
        var modules = model.named_modules().Select(m => m.name).ToHashSet();
        Assert.Contains("attention.q_proj", modules);
        Assert.Contains("encoder.layers.1.linear2", modules);
        Assert.Contains("stack.0.self_attn.out_proj", modules);
        Assert.Contains("lstm.hh.l1_reverse", modules);
        Assert.Contains("encoderLayer.linear1.weight", model.state_dict().Keys);
        Assert.Equal(4, ((ManagedMultiheadAttention)result.Replaced[0].Managed).NumHeads);
        Assert.Equal(8, ((ManagedTransformerEncoder)result.Replaced[2].Managed).Layers[1].SelfAttn.NumHeads);
    }

    [Fact]
    public void TheModelItselfIsReportedWhenNative()
    {
        using var scope = NewDisposeScope();
        var result = ManagedModules.ReplaceNative(MultiheadAttention(8, 2));
        Assert.Empty(result.Replaced);
        Assert.Contains("FromNative", Assert.Single(result.Kept).Reason);
    }
}
