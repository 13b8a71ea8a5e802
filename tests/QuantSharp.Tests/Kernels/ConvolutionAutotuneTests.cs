using QuantSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// <see cref="QuantizedConv.Autotune"/>: the tuner warms every candidate route up round robin, then times nine rounds of
/// a block of calls of each and keeps the lowest median if it beats the rule's route by 5% (<see cref="ConvolutionTuner"/>);
/// a tuned layer runs the kept route for that shape from the first call on, tunes each shape once, and leaves calls with
/// gradients, and everything with the option off, alone.
/// </summary>
public class ConvolutionAutotuneTests
{
    private const ConvolutionRoute R = ConvolutionRoute.Reference, K = ConvolutionRoute.Kernel, D = ConvolutionRoute.Direct;

    /// <summary>Timed blocks of at most this many calls in the tests (calls of a few microseconds fill them).</summary>
    private const int Block = 3;

    /// <summary>
    /// Runs <paramref name="body"/> with a short warm-up (<paramref name="rounds"/> rounds, no waiting on the JIT),
    /// blocks of <see cref="Block"/> calls and <paramref name="ticks"/> as the timed blocks' times per call.
    /// </summary>
    private static void WithTuning(int rounds, Func<ConvolutionRoute, long>? ticks, Action body)
    {
        (int w, double s, double q, int b, bool a) = (ConvolutionTuner.WarmupRounds, ConvolutionTuner.WarmupSeconds, ConvolutionTuner.QuietSeconds, ConvolutionTuner.MaxBlockCalls, QuantizedConv.Autotune);
        try
        {
            (ConvolutionTuner.WarmupRounds, ConvolutionTuner.WarmupSeconds, ConvolutionTuner.QuietSeconds, ConvolutionTuner.MaxBlockCalls) = (rounds, 1000, 0, Block);
            ConvolutionTuner.TestTicks = ticks;
            body();
        }
        finally
        {
            (ConvolutionTuner.WarmupRounds, ConvolutionTuner.WarmupSeconds, ConvolutionTuner.QuietSeconds, ConvolutionTuner.MaxBlockCalls, QuantizedConv.Autotune) = (w, s, q, b, a);
            ConvolutionTuner.TestTicks = null;
        }
    }

    [Fact]
    public void MeasureWarmsUpRoundRobinThenKeepsTheLowestMedianOfTheTimedBlocks()
    {
        // Kernel's mean (33.8) is below Reference's 50, its median (60) above; Direct's one fast block does not count either.
        var times = new Dictionary<ConvolutionRoute, Queue<long>>
        {
            [R] = new([50, 50, 50, 50, 50, 50, 50, 50, 50]),
            [K] = new([60, 60, 60, 1, 60, 1, 60, 1, 1]),
            [D] = new([70, 20, 70, 70, 90, 70, 70, 70, 70]),
        };
        var calls = new List<ConvolutionRoute>();
        WithTuning(3, r => times[r].Dequeue(), () =>
        {
            var kept = ConvolutionTuner.Measure([R, K, D], r => { calls.Add(r); return torch.zeros(1); });
            Assert.Equal(R, kept);
        });
        // Three warm-up rounds of one call each, then nine rounds of a block of calls of each route.
        var expected = Enumerable.Repeat(new[] { R, K, D }, 3).SelectMany(r => r)
            .Concat(Enumerable.Repeat(new[] { R, K, D }.SelectMany(r => Enumerable.Repeat(r, Block)), ConvolutionTuner.TimedRounds).SelectMany(r => r));
        Assert.Equal(expected, calls);
        Assert.All(times.Values, q => Assert.Empty(q));
        // The first candidate (the rule's) is replaced only by a route 5% faster; among the others a tie goes to the earlier.
        WithTuning(1, _ => 40, () => Assert.Equal(D, ConvolutionTuner.Measure([D, K], _ => torch.zeros(1))));
        WithTuning(1, r => r == K ? 39 : 40, () => Assert.Equal(D, ConvolutionTuner.Measure([D, K], _ => torch.zeros(1))));
        WithTuning(1, r => r == K ? 37 : 40, () => Assert.Equal(K, ConvolutionTuner.Measure([D, K], _ => torch.zeros(1))));
        WithTuning(1, r => r == D ? 100 : 40, () => Assert.Equal(R, ConvolutionTuner.Measure([D, R, K], _ => torch.zeros(1))));
    }

    [Fact]
    public void TunerMeasuresEachShapeOnceAndLeavesShapesBeyondItsCapToTheRule()
    {
        var tuner = new ConvolutionTuner();
        int measured = 0;
        WithTuning(1, r => r == K ? 1 : 2, () =>
        {
            Func<ConvolutionRoute, Tensor> run = _ => { measured++; return torch.zeros(1); };
            Assert.Null(tuner.Kept([2, 8, 12, 12], false));
            Assert.Equal(K, tuner.Route([2, 8, 12, 12], false, () => [R, K], run));
            Assert.Equal(2 * (1 + ConvolutionTuner.TimedRounds * Block), measured);
            Assert.Equal(K, tuner.Route([2, 8, 12, 12], false, () => throw new InvalidOperationException("measured again"), run));
            Assert.Equal(2 * (1 + ConvolutionTuner.TimedRounds * Block), measured);
            Assert.Equal(K, tuner.Kept([2, 8, 12, 12], false));
            // A single candidate is kept without running it.
            Assert.Equal(D, tuner.Route([1, 8, 12, 12], false, () => [D], run));
            Assert.Equal(2 * (1 + ConvolutionTuner.TimedRounds * Block), measured);
            // With the bfloat16 route allowed the same shape is another entry.
            Assert.Null(tuner.Kept([2, 8, 12, 12], true));
            Assert.Equal(D, tuner.Route([2, 8, 12, 12], true, () => [D], run));
            Assert.Equal(K, tuner.Kept([2, 8, 12, 12], false));
            for (int n = 3; n < ConvolutionTuner.MaxShapes; n++) tuner.Route([n, 8, 12, 12], false, () => [D], run);
            Assert.Equal(ConvolutionRoute.Auto, tuner.Route([1000, 8, 12, 12], false, () => [R, K], run));
            Assert.Null(tuner.Kept([1000, 8, 12, 12], false));
            Assert.Equal(2 * (1 + ConvolutionTuner.TimedRounds * Block), measured);
        });
    }

    [Fact]
    public void CandidatesAreEveryApplicableRouteOnceTheRulesFirst()
    {
        using var scope = NewDisposeScope();
        ConvolutionRoute[] bf16 = QuantizedModule.BFloat16Convolutions ? [ConvolutionRoute.BFloat16] : [];
        // MNIST conv2 at batch 64, weight-only: the rule takes libtorch (float32 or bfloat16), the small kernel fits.
        using var mnist = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(16, 32, 3), QuantizationRecipe.Int8WeightOnly().BaseWeights);
        var x = torch.randn(64, 16, 13, 13);
        var candidates = mnist.Candidates(x);
        Assert.Equal(mnist.Route(x), candidates[0]);
        Assert.NotEqual(D, candidates[0]);
        Assert.Equal(new[] { K, D, R }.Concat(bf16).Order(), candidates.Order());
        // A reduction too long for the small kernel: it is not a candidate.
        using var wide = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(256, 16, 3, padding: 1), QuantizationRecipe.Int8WeightOnly().BaseWeights);
        var w = torch.randn(1, 256, 6, 6);
        Assert.Equal(new[] { K, R }.Concat(bf16).Order(), wide.Candidates(w).Order());
    }

    [Fact]
    public void AutotunedLayerRunsTheRouteTimedFastestForEachShapeFromItsFirstCall()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(41);
        var act = new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, 0.03f, 110);
        foreach (var (input, fastest) in new (ActivationQuantization?, ConvolutionRoute)[] { (null, D), (null, K), (act, R), (act, K) })
        {
            using var conv = nn.Conv2d(8, 16, 3, padding: 1);
            using var layer = (QuantizedConv)QuantizedModules.Quantize(conv, QuantizationRecipe.Int8WeightOnly().BaseWeights, input);
            var x = torch.randn(2, 8, 12, 12);
            var candidates = layer.Candidates(x);
            Assert.Equal(layer.Route(x), candidates[0]);
            // Static W8A8 with the 512-bit VNNI kernel: the output channels in lanes too.
            ConvolutionRoute[] quad = input is not null && QuantSharp.Kernels.Vnni512Kernel.IsSupported ? [ConvolutionRoute.Quad] : [];
            Assert.Equal(new[] { K, D, R }.Concat(QuantizedModule.BFloat16Convolutions ? [ConvolutionRoute.BFloat16] : []).Concat(quad).Order(), candidates.Order());
            WithTuning(2, r => r == fastest ? 10 : 100, () =>
            {
                QuantizedConv.Autotune = true;
                var expected = layer.Forward(x, fastest);
                Assert.Null(layer.TunedRoute(x));
                Assert.True(layer.call(x).equal(expected).all().item<bool>(), $"the first call did not return {fastest}'s output");
                Assert.Equal(fastest, layer.TunedRoute(x));
                Assert.True(layer.call(x).equal(expected).all().item<bool>(), $"the tuned layer did not run {fastest}");
                ConvolutionKernelTests.AssertClose(layer.Forward(x, R), expected, 1e-5, $"{fastest} against the reference");
                // Another shape is tuned on its own first call; the first keeps its route.
                var one = torch.randn(1, 8, 12, 12);
                Assert.Null(layer.TunedRoute(one));
                layer.call(one);
                Assert.Equal(fastest, layer.TunedRoute(one));
                // Off: the rule again (what was tuned stays with the layer).
                QuantizedConv.Autotune = false;
                Assert.True(layer.call(x).equal(layer.Forward(x, layer.Route(x))).all().item<bool>(), "with the option off the rule runs");
                Assert.Equal(fastest, layer.TunedRoute(x));
            });
        }
    }

    [Fact]
    public void SwitchingBFloat16ComputeOffNeverKeepsTheBFloat16Route()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(43);
        using var conv = nn.Conv2d(16, 32, 3);
        using var layer = (QuantizedConv)QuantizedModules.Quantize(conv, QuantizationRecipe.Int8WeightOnly().BaseWeights);
        var x = torch.randn(64, 16, 13, 13);
        bool saved = QuantizedModule.UseBFloat16Compute;
        try
        {
            // bfloat16 timed fastest, every other route alike (the rule's is kept among them).
            WithTuning(1, r => r == ConvolutionRoute.BFloat16 ? 1 : 100, () =>
            {
                QuantizedConv.Autotune = true;
                QuantizedModule.UseBFloat16Compute = true;
                bool bf16 = QuantizedModule.BFloat16Convolutions; // a native-bf16 CPU whose libtorch passed the check
                layer.call(x);
                Assert.Equal(bf16 ? ConvolutionRoute.BFloat16 : layer.Route(x), layer.TunedRoute(x));
                QuantizedModule.UseBFloat16Compute = false;
                if (bf16) Assert.Null(layer.TunedRoute(x)); // tuned again without it
                var y = layer.call(x);
                Assert.Equal(layer.Route(x), layer.TunedRoute(x));
                Assert.NotEqual(ConvolutionRoute.BFloat16, layer.TunedRoute(x));
                Assert.True(y.equal(layer.Forward(x, layer.Route(x))).all().item<bool>(), "with bfloat16 off the layer ran another route than the kept one");
            });
        }
        finally
        {
            QuantizedModule.UseBFloat16Compute = saved;
        }
    }

    [Fact]
    public void AutotuneWithRealTimesKeepsAnApplicableRouteAndLeavesGradientsAlone()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(42);
        using var conv = nn.Conv2d(4, 6, 3, stride: 2, padding: 1);
        using var layer = (QuantizedConv)QuantizedModules.Quantize(conv, QuantizationRecipe.Int8WeightOnly().BaseWeights);
        var x = torch.randn(3, 4, 11, 11);
        bool saved = QuantizedConv.Autotune;
        try
        {
            using (no_grad()) layer.call(x);
            Assert.Null(layer.TunedRoute(x));
            QuantizedConv.Autotune = true;
            AssertFirstCallTunes(layer, x, "tuned");
            // An input that needs gradients takes the differentiable path, untuned.
            var g = torch.randn(2, 4, 9, 9, requires_grad: true);
            var z = layer.call(g);
            Assert.True(z.requires_grad);
            z.sum().backward();
            Assert.NotNull(g.grad);
            Assert.Null(layer.TunedRoute(g));
        }
        finally
        {
            QuantizedConv.Autotune = saved;
        }
    }

    [Fact]
    public void AutotuneTimesAGroupedLayersSmallKernelAgainstLibtorchsRoute()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(44);
        // 2 groups of 80 channels (720 terms a group): the rule keeps libtorch's route, the small kernel is a candidate.
        using var conv = nn.Conv2d(160, 16, 3, stride: 2, padding: 1, groups: 2);
        using var layer = (QuantizedConv)QuantizedModules.Quantize(conv, QuantizationRecipe.Int8WeightOnly().BaseWeights);
        var x = torch.randn(2, 160, 12, 12);
        Assert.Equal(R, layer.Route(x));
        Assert.Contains(ConvolutionRoute.Direct, layer.Candidates(x));
        bool saved = QuantizedConv.Autotune;
        try
        {
            QuantizedConv.Autotune = true;
            AssertFirstCallTunes(layer, x, "grouped, tuned");
        }
        finally
        {
            QuantizedConv.Autotune = saved;
        }
    }

    /// <summary>
    /// With <see cref="QuantizedConv.Autotune"/> on, the layer's first call on <paramref name="x"/> keeps one of its
    /// candidate routes and returns libtorch's result within float32 rounding, or, where the bfloat16 route was kept (its
    /// bound is checked in <see cref="BFloat16ConvolutionTests"/>), that route's output.
    /// </summary>
    private static void AssertFirstCallTunes(QuantizedConv layer, Tensor x, string what)
    {
        using var noGrad = no_grad();
        var y = layer.call(x);
        var tuned = layer.TunedRoute(x);
        Assert.NotNull(tuned);
        Assert.Contains(tuned!.Value, layer.Candidates(x));
        if (tuned == ConvolutionRoute.BFloat16) Assert.True(layer.Forward(x, tuned.Value).equal(y).all().item<bool>(), $"{what}: not the bfloat16 route's output");
        else ConvolutionKernelTests.AssertClose(layer.Forward(x, R), y, 1e-5, $"{what} {tuned}");
    }
}
