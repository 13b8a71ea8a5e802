using QuantSharp.Modules.Managed;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace QuantSharp.Tests.Modules.Managed;

/// <summary>
/// Managed attention and encoder layers against TorchSharp's native (libtorch) modules on random inputs, in eval mode.
/// Tolerance: max |managed - native| &lt;= tol * (1 + max |native|), tol = 1e-12 in float64 and 2e-5 in float32 (the
/// managed module computes the same operations; the three q/k/v products instead of one packed product may round
/// differently in the last bit).
/// </summary>
public class ManagedAttentionTests
{
    internal static double Tolerance(ScalarType t) => t == ScalarType.Float64 ? 1e-12 : 2e-5;

    internal static void AssertClose(Tensor expected, Tensor actual, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        Assert.Equal(expected.dtype, actual.dtype);
        double scale = 1 + expected.abs().max().to(ScalarType.Float64).item<double>();
        double diff = (expected.to(ScalarType.Float64) - actual.to(ScalarType.Float64)).abs().max().item<double>();
        Assert.True(diff <= Tolerance(expected.dtype) * scale, $"{what}: max difference {diff:E3} (scale {scale:F2}, {expected.dtype})");
    }

    public static TheoryData<ScalarType, string> AttentionCases()
    {
        var data = new TheoryData<ScalarType, string>();
        foreach (var t in new[] { ScalarType.Float32, ScalarType.Float64 })
            foreach (var c in new[] { "self", "cross", "masks", "nobias", "bias_kv", "zero_attn", "kvdim", "bias_kv_zero_attn_masks" })
                data.Add(t, c);
        return data;
    }

    [Theory]
    [MemberData(nameof(AttentionCases))]
    public void AttentionMatchesNative(ScalarType dtype, string variant)
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(41);
        const long E = 24, H = 4, L = 5, S = 7, N = 3;
        bool cross = variant != "self";
        long kv = variant == "kvdim" ? 10 : E;
        bool masks = variant.Contains("masks");
        var native = MultiheadAttention(E, H, dropout: 0.1, bias: variant != "nobias", add_bias_kv: variant.StartsWith("bias_kv"),
            add_zero_attn: variant.Contains("zero_attn"), kdim: kv, vdim: kv);
        native.to(dtype);
        native.eval();
        var managed = ManagedModules.FromNative(native);
        Assert.Equal(H, managed.NumHeads);
        Assert.Equal(variant.Contains("zero_attn"), managed.AddZeroAttn);
        Assert.False(managed.training);

        var q = randn(L, N, E, dtype);
        var k = cross ? randn(S, N, kv, dtype) : q;
        var v = cross ? randn(S, N, kv, dtype) : q;
        long src = cross ? S : L;
        Tensor? attnMask = masks ? randn(L, src, dtype) : null;
        Tensor? padding = null;
        if (masks)
        {
            padding = zeros(N, src, ScalarType.Bool);
            padding[0, src - 1] = true;
            padding[2, 1] = true;
        }
        var (expected, expectedWeights) = native.call(q, k, v, padding, true, attnMask);
        var (actual, actualWeights) = managed.call(q, k, v, padding, true, attnMask);
        AssertClose(expected, actual, $"{variant} output");
        AssertClose(expectedWeights, actualWeights, $"{variant} weights");

        var (noWeights, none) = managed.call(q, k, v, padding, false, attnMask);
        Assert.Null(none);
        AssertClose(expected, noWeights, $"{variant} output without weights");
    }

    [Fact]
    public void BoolAttentionMaskIsAddedAsTheNativeModuleDoes()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(42);
        var native = MultiheadAttention(16, 2);
        var managed = ManagedModules.FromNative(native);
        var x = randn(6, 2, 16);
        var mask = ones(6, 6, ScalarType.Bool).triu(1);
        AssertClose(native.call(x, x, x, null, true, mask).Item1, managed.call(x, x, x, null, true, mask).Item1, "bool attn_mask");
    }

    public static TheoryData<ScalarType, Activations, bool> EncoderCases()
    {
        var data = new TheoryData<ScalarType, Activations, bool>();
        foreach (var t in new[] { ScalarType.Float32, ScalarType.Float64 })
            foreach (var a in new[] { Activations.ReLU, Activations.GELU })
                foreach (bool masks in new[] { false, true })
                    data.Add(t, a, masks);
        return data;
    }

    [Theory]
    [MemberData(nameof(EncoderCases))]
    public void EncoderLayerMatchesNative(ScalarType dtype, Activations activation, bool masks)
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(43);
        var native = TransformerEncoderLayer(32, 8, 48, 0.1, activation);
        native.to(dtype);
        native.eval();
        var managed = ManagedModules.FromNative(native);
        Assert.Equal(8, managed.SelfAttn.NumHeads);
        Assert.Equal(activation, managed.Activation);

        var x = randn(9, 3, 32, dtype);
        if (!masks)
        {
            AssertClose(native.call(x), managed.call(x), "no masks");
            return;
        }
        var mask = zeros(9, 9, dtype).masked_fill(ones(9, 9, ScalarType.Bool).triu(1), double.NegativeInfinity);
        var padding = zeros(3, 9, ScalarType.Bool);
        padding[1, 8] = true;
        padding[1, 7] = true;
        AssertClose(native.call(x, mask, padding), managed.call(x, mask, padding), "causal + padding masks");
        AssertClose(native.call(x, mask), managed.call(x, mask), "causal mask");
    }

    [Theory]
    [InlineData(ScalarType.Float32, 1)]
    [InlineData(ScalarType.Float64, 2)]
    [InlineData(ScalarType.Float64, 3)]
    public void EncoderStackMatchesNative(ScalarType dtype, int layers)
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(44);
        var native = TransformerEncoder(TransformerEncoderLayer(16, 4, 32, 0.0, Activations.GELU), layers);
        native.to(dtype);
        // The native layers start as clones of one layer: make them differ, so that each must be copied from its own weights.
        using (no_grad())
            foreach (var (name, p) in native.named_parameters())
                p.mul_(1 + 0.25 * int.Parse(name.Split('.')[1]));
        var managed = ManagedModules.FromNative(native);
        Assert.Equal(layers, managed.Layers.Count);
        Assert.All(managed.Layers, l => Assert.Equal((4L, Activations.GELU), (l.SelfAttn.NumHeads, l.Activation)));

        var x = randn(6, 2, 16, dtype);
        var padding = zeros(2, 6, ScalarType.Bool);
        padding[0, 5] = true;
        AssertClose(native.call(x, null, padding), managed.call(x, null, padding), $"{layers} layers");
    }

    [Fact]
    public void ConversionCopiesWeightsAndLeavesTheNativeModuleAsItWas()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(45);
        var native = TransformerEncoderLayer(16, 2, 32, 0.1);
        Assert.True(native.training);
        var x = randn(4, 2, 16);
        native.eval();
        var before = native.call(x);
        native.train();
        var managed = ManagedModules.FromNative(native);
        Assert.True(native.training);
        Assert.True(managed.training);
        managed.eval();
        native.eval();
        Assert.True(before.equal(native.call(x)).all().item<bool>());
        var managedBefore = managed.call(x);

        // No shared storage: changing the native weights does not change the managed module.
        using (no_grad())
            foreach (var (_, p) in native.named_parameters()) p.add_(1.0);
        Assert.True(managedBefore.equal(managed.call(x)).all().item<bool>());
        Assert.False(before.allclose(native.call(x)));
    }

    [Fact]
    public void ExplicitSettingsAreCheckedAgainstTheNativeOutput()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(46);
        var native = MultiheadAttention(16, 4);
        Assert.Equal(4, ManagedModules.FromNative(native, new NativeConversionOptions { NumHeads = 4 }).NumHeads);
        var e = Assert.Throws<NotSupportedException>(() => ManagedModules.FromNative(native, new NativeConversionOptions { NumHeads = 2 }));
        Assert.Contains("NativeConversionOptions", e.Message);

        var layer = TransformerEncoderLayer(16, 4, 32, 0.0, Activations.ReLU);
        Assert.Throws<NotSupportedException>(() => ManagedModules.FromNative(layer, new NativeConversionOptions { Activation = Activations.GELU }));
    }

    [Fact]
    public void UndetectableSettingsAreRefusedWithAClearMessage()
    {
        using var scope = NewDisposeScope();
        var native = MultiheadAttention(8, 2);
        using (no_grad())
            foreach (var (_, p) in native.named_parameters()) p.zero_();
        var e = Assert.Throws<ArgumentException>(() => ManagedModules.FromNative(native));
        Assert.Contains("NumHeads", e.Message);
        Assert.Equal(2, ManagedModules.FromNative(native, new NativeConversionOptions { NumHeads = 2, AddZeroAttn = false }).NumHeads);
    }

    [Fact]
    public void BadInputsNameTheExpectedShape()
    {
        using var scope = NewDisposeScope();
        var m = new ManagedMultiheadAttention(8, 2);
        var x = randn(3, 2, 8);
        Assert.Contains("query must be [target length, batch, 8]", Assert.Throws<ArgumentException>(() => m.call(randn(3, 8), x, x)).Message);
        Assert.Contains("key_padding_mask must be a bool tensor [2, 3]",
            Assert.Throws<ArgumentException>(() => m.call(x, x, x, zeros(2, 3))).Message);
        Assert.Contains("positive divisor", Assert.Throws<ArgumentException>(() => new ManagedMultiheadAttention(8, 3)).Message);
    }

    [Fact]
    public void TrainingModeAppliesDropoutAndGradientsReachEveryProjection()
    {
        torch.manual_seed(47);
        var layer = new ManagedTransformerEncoderLayer(16, 4, 32, dropout: 0.5);
        var x = randn(5, 2, 16);
        layer.train();
        Assert.False(layer.call(x).allclose(layer.call(x)));
        layer.eval();
        Assert.True(layer.call(x).equal(layer.call(x)).all().item<bool>());

        layer.train();
        layer.call(x).pow(2).sum().backward();
        foreach (var (name, p) in layer.named_parameters())
        {
            Assert.True(p.grad is not null, $"{name} has no gradient");
            Assert.True(p.grad!.abs().sum().item<float>() > 0, $"{name} has a zero gradient");
        }
        Assert.Contains("self_attn.q_proj.weight", layer.named_parameters().Select(p => p.name));
    }

    [Fact]
    public void NormFirstNormalizesBeforeEachBlock()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(48);
        var layer = new ManagedTransformerEncoderLayer(16, 4, 32, 0.0, Activations.GELU, normFirst: true, dtype: ScalarType.Float64);
        layer.eval();
        var x = randn(5, 2, 16, ScalarType.Float64);
        // PyTorch's norm_first formula written out with the layer's own parts.
        var n1 = layer.Norm1.call(x);
        var h = x + layer.SelfAttn.call(n1, n1, n1, null, false, null).Item1;
        var expected = h + layer.Linear2.call(functional.gelu(layer.Linear1.call(layer.Norm2.call(h))));
        AssertClose(expected, layer.call(x), "norm_first");
        var postNorm = new ManagedTransformerEncoderLayer(16, 4, 32, 0.0, Activations.GELU, dtype: ScalarType.Float64);
        postNorm.load_state_dict(layer.state_dict());
        postNorm.eval();
        Assert.False(postNorm.call(x).allclose(layer.call(x)));
    }

    [Fact]
    public void ProjectionsAreReplaceableChildren()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(49);
        var native = TransformerEncoderLayer(16, 4, 32, 0.0);
        var model = new Holder(ManagedModules.FromNative(native));
        var names = model.named_modules().Select(m => m.name).ToList();
        Assert.Contains("layer.self_attn.q_proj", names);
        Assert.Contains("layer.linear1", names);
        var x = randn(4, 2, 16);
        var before = model.call(x);

        // Swap linear1 and q_proj for layers that compute twice the original (what a quantizer does with its own layers).
        foreach (var name in new[] { "layer.linear1", "layer.self_attn.q_proj" })
        {
            var entry = QuantSharp.Modules.ModuleTree.Walk(model).Single(e => e.Name == name);
            Assert.Null(QuantSharp.Modules.ModuleTree.CannotReplace(entry, typeof(Doubled)));
            QuantSharp.Modules.ModuleTree.Replace(entry, new Doubled((Linear)entry.Module));
        }
        Assert.IsType<Doubled>(model.named_modules().Single(m => m.name == "layer.linear1").module);
        Assert.False(before.allclose(model.call(x)));
        Assert.Contains("layer.self_attn.q_proj.inner.weight", model.state_dict().Keys);
    }

    private sealed class Holder : Module<Tensor, Tensor>
    {
        private readonly Module<Tensor, Tensor> layer;

        public Holder(Module<Tensor, Tensor> layer) : base(nameof(Holder))
        {
            this.layer = layer;
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => layer.call(x);
    }

    private sealed class Doubled : Module<Tensor, Tensor>
    {
        private readonly Linear inner;

        public Doubled(Linear inner) : base(nameof(Doubled))
        {
            this.inner = inner;
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => inner.call(x) * 2;
    }
}
