using QuantSharp.Modules.Managed;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using static QuantSharp.Tests.Modules.Managed.ManagedAttentionTests;

namespace QuantSharp.Tests.Modules.Managed;

/// <summary>
/// Managed LSTM and GRU against TorchSharp's native modules (libtorch) on random inputs, eval mode, outputs and final
/// states, with the tolerances of <see cref="ManagedAttentionTests"/> (1e-12 in float64, 2e-5 in float32, relative to
/// 1 + max |native|).
/// </summary>
public class ManagedRecurrentTests
{
    public static TheoryData<string, ScalarType, int, bool, bool, bool, bool> Cases()
    {
        var data = new TheoryData<string, ScalarType, int, bool, bool, bool, bool>();
        var shapes = new (int Layers, bool Bidirectional, bool BatchFirst, bool Bias, bool States)[]
        {
            (1, false, false, true, false), (2, true, false, true, true), (3, false, true, true, true), (2, true, true, false, false), (1, true, true, true, true),
        };
        foreach (var kind in new[] { "LSTM", "GRU" })
            foreach (var dtype in new[] { ScalarType.Float32, ScalarType.Float64 })
                foreach (var s in shapes)
                    data.Add(kind, dtype, s.Layers, s.Bidirectional, s.BatchFirst, s.Bias, s.States);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesNative(string kind, ScalarType dtype, int layers, bool bidirectional, bool batchFirst, bool bias, bool withStates)
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(51);
        const long I = 6, H = 10, T = 7, N = 3;
        long cells = layers * (bidirectional ? 2 : 1);
        var x = batchFirst ? randn(N, T, I, dtype) : randn(T, N, I, dtype);
        var h0 = withStates ? randn(cells, N, H, dtype) : null;
        var c0 = withStates ? randn(cells, N, H, dtype) : null;
        string what = $"{kind} {dtype} layers={layers} bidirectional={bidirectional} batchFirst={batchFirst} bias={bias} states={withStates}";
        if (kind == "LSTM")
        {
            var native = LSTM(I, H, layers, bias, batchFirst, 0.3, bidirectional, dtype: dtype);
            native.eval();
            var managed = ManagedModules.FromNative(native);
            Assert.Equal((batchFirst, (long)layers, bidirectional, bias), (managed.BatchFirst, managed.NumLayers, managed.Bidirectional, managed.Bias));
            (Tensor, Tensor)? states = withStates ? (h0!, c0!) : null;
            var (eo, eh, ec) = native.call(x, states);
            var (ao, ah, ac) = managed.call(x, states);
            AssertClose(eo, ao, what + " output");
            AssertClose(eh, ah, what + " h_n");
            AssertClose(ec, ac, what + " c_n");
        }
        else
        {
            var native = GRU(I, H, layers, bias, batchFirst, 0.3, bidirectional, dtype: dtype);
            native.eval();
            var managed = ManagedModules.FromNative(native);
            Assert.Equal((batchFirst, (long)layers, bidirectional, bias), (managed.BatchFirst, managed.NumLayers, managed.Bidirectional, managed.Bias));
            var (eo, eh) = native.call(x, h0);
            var (ao, ah) = managed.call(x, h0);
            AssertClose(eo, ao, what + " output");
            AssertClose(eh, ah, what + " h_n");
        }
    }

    [Fact]
    public void UnbatchedInputEqualsABatchOfOne()
    {
        // libtorch's C++ LSTM refuses 2-D input ("input must have 3 dimensions"); the managed one accepts it as PyTorch does.
        using var scope = NewDisposeScope();
        torch.manual_seed(52);
        var native = LSTM(4, 5, 2, bidirectional: true, dtype: ScalarType.Float64);
        var managed = ManagedModules.FromNative(native);
        var x = randn(6, 4, ScalarType.Float64);
        var h0 = randn(4, 5, ScalarType.Float64);
        var c0 = randn(4, 5, ScalarType.Float64);
        var (eo, eh, ec) = native.call(x.unsqueeze(1), (h0.unsqueeze(1), c0.unsqueeze(1)));
        var (ao, ah, ac) = managed.call(x, (h0, c0));
        AssertClose(eo.squeeze(1), ao, "unbatched output");
        AssertClose(eh.squeeze(1), ah, "unbatched h_n");
        AssertClose(ec.squeeze(1), ac, "unbatched c_n");
    }

    [Fact]
    public void Float32LstmWithoutGradientsMatchesAFloat64Reference()
    {
        // libtorch's own float32 LSTM is wrong under no_grad on CPU here (see NativeProbe); the managed one is not.
        using var scope = NewDisposeScope();
        torch.manual_seed(55);
        var lstm = new ManagedLstm(6, 10);
        lstm.eval();
        var x = randn(5, 3, 6);
        Tensor actual;
        using (no_grad()) actual = lstm.call(x).Item1;
        var reference = new ManagedLstm(6, 10, dtype: ScalarType.Float64);
        reference.load_state_dict(lstm.state_dict());
        var expected = reference.call(x.to(ScalarType.Float64)).Item1;
        var p = lstm.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.to(ScalarType.Float64));
        // The textbook cell, written out (gates i, f, g, o), is the reference's reference.
        var h = zeros(3, 10, ScalarType.Float64);
        var c = zeros(3, 10, ScalarType.Float64);
        for (int t = 0; t < 5; t++)
        {
            var g = functional.linear(x[t].to(ScalarType.Float64), p["ih.l0.weight"], p["ih.l0.bias"]) + functional.linear(h, p["hh.l0.weight"], p["hh.l0.bias"]);
            var gates = g.chunk(4, 1);
            c = gates[1].sigmoid() * c + gates[0].sigmoid() * gates[2].tanh();
            h = gates[3].sigmoid() * c.tanh();
        }
        AssertClose(h, expected[4], "float64 managed vs textbook");
        Assert.True((actual.to(ScalarType.Float64) - expected).abs().max().item<double>() < 1e-6);
    }

    [Fact]
    public void TrainingModeDropsBetweenLayersAndGradientsReachEveryProjection()
    {
        torch.manual_seed(53);
        var gru = new ManagedGru(4, 8, numLayers: 2, dropout: 0.5, bidirectional: true);
        var x = randn(5, 2, 4);
        gru.train();
        Assert.False(gru.call(x).Item1.allclose(gru.call(x).Item1));
        gru.eval();
        Assert.True(gru.call(x).Item1.equal(gru.call(x).Item1).all().item<bool>());

        var lstm = new ManagedLstm(4, 8, numLayers: 2, bidirectional: true);
        lstm.train();
        var (o, h, c) = lstm.call(x);
        (o.pow(2).sum() + h.sum() + c.sum()).backward();
        var names = lstm.named_parameters().Select(p => p.name).ToList();
        Assert.Equal(16, names.Count);
        Assert.Contains("ih.l1_reverse.weight", names);
        foreach (var (name, p) in lstm.named_parameters())
            Assert.True(p.grad is not null && p.grad.abs().sum().item<float>() > 0, $"{name} has no gradient");
    }

    [Fact]
    public void ProjectionsAreReplaceableChildren()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(54);
        var lstm = new ManagedLstm(4, 6, numLayers: 2);
        lstm.eval();
        var x = randn(3, 2, 4);
        var before = lstm.call(x).Item1;
        var entry = QuantSharp.Modules.ModuleTree.Walk(lstm).Single(e => e.Name == "hh.l1");
        Assert.Null(QuantSharp.Modules.ModuleTree.CannotReplace(entry, typeof(Zero)));
        QuantSharp.Modules.ModuleTree.Replace(entry, new Zero());
        Assert.IsType<Zero>(lstm.HiddenProjection(1));
        Assert.DoesNotContain("hh.l1.weight", lstm.state_dict().Keys);
        Assert.False(before.allclose(lstm.call(x).Item1));
    }

    private sealed class Zero : Module<Tensor, Tensor>
    {
        public Zero() : base(nameof(Zero)) { }

        public override Tensor forward(Tensor x) => zeros([x.shape[0], 24], x.dtype);
    }

    [Fact]
    public void BadShapesNameWhatIsExpected()
    {
        using var scope = NewDisposeScope();
        var gru = new ManagedGru(4, 6, numLayers: 2, batchFirst: true);
        Assert.Contains("input must be [batch, steps, features]", Assert.Throws<ArgumentException>(() => gru.call(randn(2, 3, 5))).Message);
        Assert.Contains("initial states must be [2, 2, 6]", Assert.Throws<ArgumentException>(() => gru.call(randn(2, 3, 4), randn(2, 3, 6))).Message);
        Assert.Contains("at least 1", Assert.Throws<ArgumentException>(() => gru.call(randn(2, 0, 4))).Message);
        Assert.Throws<ArgumentException>(() => gru.InputProjection(0, reverse: true));
    }

    [Fact]
    public void ExplicitBatchFirstIsChecked()
    {
        using var scope = NewDisposeScope();
        var native = GRU(4, 6, batchFirst: true);
        Assert.True(ManagedModules.FromNative(native).BatchFirst);
        Assert.Throws<NotSupportedException>(() => ManagedModules.FromNative(native, new NativeConversionOptions { BatchFirst = false }));
    }
}
