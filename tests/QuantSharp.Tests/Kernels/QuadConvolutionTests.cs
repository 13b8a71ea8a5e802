using QuantSharp.Kernels;
using QuantSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;
using static QuantSharp.Tests.Kernels.ConvolutionKernelTests;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// <see cref="QuadConvolution"/>: static W8A8 convolutions with the output channels in lanes, against the integer
/// specification bit for bit, through <see cref="Vnni512Kernel.QuadDots"/> and its twin.
/// </summary>
public unsafe class QuadConvolutionTests
{
    /// <summary>
    /// The generated dot products equal their portable twin on every run length and both vector counts, with steps
    /// whose offsets go back and forth and codes and weights at the ends of their ranges (255 x -128 sums).
    /// </summary>
    [Fact]
    public void QuadDotsEqualTheirTwinForEveryRunLength()
    {
        var random = new Random(11);
        const int Steps = 7;
        byte[] codes = new byte[4096];
        random.NextBytes(codes);
        codes[100] = codes[101] = codes[102] = codes[103] = 255;
        sbyte[] weights = new sbyte[Steps * 128];
        for (int i = 0; i < weights.Length; i++) weights[i] = (sbyte)random.Next(-128, 128);
        weights[0] = weights[1] = weights[2] = weights[3] = -128;
        nint[] offsets = [100, 2048, 4, 1500, 0, 3000, 640];
        int checkedNative = 0;
        for (int vectors = 1; vectors <= 2; vectors++)
            for (int positions = 1; positions * vectors <= Vnni512Kernel.QuadMaxAccumulators; positions++)
            {
                int[] twin = new int[positions * 16 * vectors], native = new int[twin.Length];
                Array.Fill(native, 12345);
                fixed (byte* x = codes) fixed (sbyte* w = weights) fixed (nint* table = offsets) fixed (int* t = twin) fixed (int* n = native)
                {
                    Vnni512Kernel.QuadDotsTwin(w, Steps, x, table, t, positions, vectors);
                    // One lane by hand: position 0, channel 0, step by step.
                    int expected = 0;
                    for (int s = 0; s < Steps; s++)
                        for (int i = 0; i < 4; i++) expected += codes[offsets[s] + i] * weights[s * 64 * vectors + i];
                    Assert.Equal(expected, twin[0]);
                    if (!Vnni512Kernel.IsSupported) continue;
                    Vnni512Kernel.QuadDots(w, Steps, x, table, n, positions, vectors);
                }
                Assert.Equal(twin, native);
                checkedNative++;
            }
        Assert.True(!Vnni512Kernel.IsSupported || checkedNative == 28 + 14, $"{checkedNative} run lengths through the generated code");
    }

    /// <summary>
    /// A static W8A8 convolution with the output channels in lanes gives, bit for bit, each group's integer
    /// specification (libtorch's columns of the group's channels quantized row by row, <see cref="IntegerMatMul.QuantizeStatic"/>,
    /// times the group's int8 rows with the integer kernels' epilogue, <see cref="IntegerMatMul.Reference"/>), through
    /// the generated dot products and their twin, runs within rows and over the wide grid: uint8 affine and int8
    /// symmetric inputs, a zero point at the top of the range (most inputs clamp, padding codes 255), per-channel and
    /// per-tensor weights; channels a group that are no multiple of four (the RGB stem's three), group outputs of 7, 16,
    /// 24 and 40 (one vector, two, two chunks), stride phases, dilation, rows longer than a run, a Conv1d, 5x5 taps (more
    /// than the weight's shuffle takes), one and three images; the work split by group and in shared passes.
    /// </summary>
    [Theory]
    [InlineData(0.021f, 131, 0, 255, false)]   // uint8 affine
    [InlineData(0.013f, 0, -128, 127, false)] // int8 symmetric
    [InlineData(0.5f, 255, 0, 255, true)]      // zero point at the top; a per-tensor weight
    public void QuadConvolutionGivesEachGroupsIntegerSpecification(float scale, int zeroPoint, int qmin, int qmax, bool perTensor)
    {
        using var scope = NewDisposeScope();
        // (C, H, W, KH, KW, SH, SW, PH, PW, DH, DW), groups, outputs.
        (int[] G, int Groups, int Outputs)[] cases =
        [
            ([32, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1], 2, 32),      // 16 channels and outputs a group onto 7x7
            ([3, 15, 17, 3, 3, 2, 2, 1, 1, 1, 1], 1, 24),     // an RGB stem at stride 2: one quad, 24 outputs
            ([12, 8, 7, 3, 2, 2, 1, 1, 0, 1, 2], 3, 21),      // 4 channels and 7 outputs a group, stride phases, dilation
            ([10, 5, 33, 3, 3, 1, 1, 1, 1, 1, 1], 2, 80),     // 5 channels a group, 40 outputs (two chunks), rows of 33
            ([8, 1, 40, 1, 3, 1, 1, 0, 1, 1, 1], 1, 16),      // a Conv1d
            ([16, 9, 10, 5, 5, 1, 1, 2, 2, 1, 1], 2, 32),     // 25 taps: the weight packed byte by byte
        ];
        int checkedNative = 0, checkedTwin = 0;
        foreach (var (g, groups, outputs) in cases)
        foreach (int images in new[] { 1, 3 })
        {
            var u = Unfolding(g).ForImages(images);
            int channels = g[0] / groups, k = channels * g[3] * g[4], p = u.Positions;
            Assert.True(QuadConvolution.Fits(u, outputs, groups));
            using var w = new PinnedWeight(WeightFormat.Int8, rows: outputs, cols: k, 0, zeroPoints: false, seed: k + p + outputs, perTensor: perTensor);
            var view = w.View;
            torch.manual_seed(p + images + groups);
            var batch = torch.randn(images, g[0], g[1], g[2]) * 2;
            float[] pixels = batch.data<float>().ToArray();
            float[] bias = KernelTestData.Activations(outputs, k);
            int[] single = [channels, .. g[1..]];
            var expected = BFloat16PackedKernelTests.IntegerSpecification(batch, view, bias, groups, single, p, scale, zeroPoint, qmin, qmax);
            string what = $"[{string.Join(",", g)}] x{images} in {groups} groups -> {outputs}, input {scale}/{zeroPoint}, per tensor {perTensor}";
            foreach (bool native in Vnni512Kernel.IsSupported ? new[] { false, true } : [false])
            foreach (bool rowRuns in new[] { false, true })
            foreach (bool byGroup in new[] { false, true })
            {
                var y = new float[images * outputs * p];
                Array.Fill(y, float.NaN);
                bool saved = QuadConvolution.UseNative;
                try
                {
                    QuadConvolution.UseNative = native;
                    QuadConvolution.ForcedRowRuns = rowRuns;
                    QuadConvolution.ForcedByGroup = byGroup;
                    fixed (float* px = pixels) fixed (float* pb = bias) fixed (float* py = y)
                        QuadConvolution.Run(view, px, pb, py, u, groups, scale, zeroPoint, qmin, qmax);
                }
                finally
                {
                    QuadConvolution.UseNative = saved;
                    QuadConvolution.ForcedRowRuns = null;
                    QuadConvolution.ForcedByGroup = null;
                }
                for (int i = 0; i < y.Length; i++)
                    Assert.True(BitConverter.SingleToUInt32Bits(expected[i]) == BitConverter.SingleToUInt32Bits(y[i]),
                        $"{what}{(native ? "" : ", twin")}{(rowRuns ? ", row runs" : ", wide runs")}{(byGroup ? ", by group" : ", shared passes")}: output {i} (image {i / (outputs * p)}, channel {i / p % outputs}) {y[i]:R}, the specification's {expected[i]:R}");
                if (native) checkedNative++;
                else checkedTwin++;
            }
        }
        Assert.Equal(8 * cases.Length, checkedTwin);
        Assert.True(!Vnni512Kernel.IsSupported || checkedNative == 8 * cases.Length, $"{checkedNative} calls through the generated code");
    }

    /// <summary>
    /// Static W8A8 layers through their <see cref="ConvolutionRoute.Quad"/> route agree with the simulated path within
    /// float rounding (the bits are checked above): grouped and not, strided, a Conv1d, an unbatched and a
    /// non-contiguous input, uint8 and int8 inputs, NaN and infinite inputs (which clamp as on the simulated path). The
    /// route runs where the CPU has the 512-bit VNNI kernel, for int8 symmetric weights and a static input whose zero point
    /// is one of its codes; forced elsewhere it is the Kernel route.
    /// </summary>
    [Fact]
    public void StaticW8A8LayersRunWithTheOutputChannelsInLanes()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(61);
        AssertW8A8MatchesSimulated(
        [
            (nn.Conv2d(32, 16, 3, padding: 1, groups: 2), torch.randn(2, 32, 14, 14)),
            (nn.Conv2d(32, 16, 3, padding: 1, groups: 2), torch.randn(2, 14, 14, 32).permute(0, 3, 1, 2)), // not contiguous
            (nn.Conv2d(8, 40, 3, padding: 1), torch.randn(1, 8, 20, 23)),
            (nn.Conv2d(12, 24, 3, stride: 2, padding: 1, groups: 3), torch.randn(12, 15, 17)),               // unbatched
            (nn.Conv1d(16, 64, 3, padding: 1), torch.randn(2, 16, 50)),
        ], ConvolutionRoute.Quad, nn.Conv2d(16, 16, 3, padding: 1, groups: 4), torch.randn(2, 16, 14, 14));
        var conv = nn.Conv2d(16, 32, 3, padding: 1);
        var x = torch.randn(2, 16, 14, 14) * 3;
        var int8 = QuantizationRecipe.Int8WeightOnly().BaseWeights;
        var uint8 = new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, 0.02f, 120);
        var int8Input = new ActivationQuantization(QuantType.Int8, QuantScheme.Symmetric, false, 0.03f, 0);
        foreach (var act in new[] { uint8, int8Input })
        {
            using var layer = (QuantizedConv)QuantizedModules.Quantize(conv, int8, act);
            var odd = x.clone();
            odd[0, 0, 0, 0] = torch.tensor(float.NaN);
            odd[0, 1, 2, 3] = torch.tensor(float.PositiveInfinity);
            odd[1, 5, 6, 7] = torch.tensor(float.NegativeInfinity);
            var quad = layer.Kernel(odd, ConvolutionRoute.Quad)!;
            Assert.True(quad.isfinite().all().item<bool>(), "non-finite outputs from NaN or infinite inputs");
            AssertClose(layer.Forward(odd, ConvolutionRoute.Reference), quad, 1e-5, $"{act.Type} input, NaN and infinities");
        }
        ConvolutionRoute[] Candidates(QuantSpec weights, ActivationQuantization? act, bool dynamic = false) => CandidatesOf(conv, x, weights, act, dynamic);
        bool vnni = Vnni512Kernel.IsSupported;
        Assert.Equal(vnni, Candidates(int8, uint8).Contains(ConvolutionRoute.Quad));
        Assert.Equal(vnni, Candidates(int8, int8Input).Contains(ConvolutionRoute.Quad));
        Assert.DoesNotContain(ConvolutionRoute.Quad, Candidates(int8, uint8 with { ZeroPoint = 300 }));
        Assert.DoesNotContain(ConvolutionRoute.Quad, Candidates(int8 with { Scheme = QuantScheme.Affine }, uint8));
        Assert.DoesNotContain(ConvolutionRoute.Quad, Candidates(int8, null, dynamic: true));
        Assert.DoesNotContain(ConvolutionRoute.Quad, Candidates(QuantizationRecipe.Int4WeightOnly(groupSize: 16).BaseWeights, uint8));
        Assert.DoesNotContain(ConvolutionRoute.Quad, Candidates(int8, null));
        // The rule: ResNet's 64->64 onto 56x56 takes it, the 512->512 layer onto 7x7 at batch 1 keeps the integer GEMM.
        using var resnet = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(64, 64, 3, padding: 1), int8, uint8);
        Assert.Equal(vnni ? ConvolutionRoute.Quad : ConvolutionRoute.Kernel, resnet.Route(torch.randn(1, 64, 56, 56)));
        using var deep = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(512, 512, 3, padding: 1), int8, uint8);
        Assert.Equal(ConvolutionRoute.Kernel, deep.Route(torch.randn(1, 512, 7, 7)));
    }

    /// <summary>
    /// <see cref="ConvolutionCost.QuadPays"/> at its edges: not pointwise, four or more channels a group, a group weight up
    /// to 1 MiB; from 392 positions over all images, or at fewer grouped layers of 16 outputs a group or more; not for
    /// fewer than 16 outputs a group where the pair images of codes pay.
    /// </summary>
    [Fact]
    public void QuadRuleTakesLayersOfEnoughPositionsAndSmallGroupWeights()
    {
        using var scope = NewDisposeScope();
        // Grouped, 16 outputs a group or more: at any positions (512 channels in 32 groups onto 7x7 at batch 1, 49
        // positions; 512 in 2 groups, 576 KiB a group); 15 outputs a group, not below 392 positions.
        Assert.True(ConvolutionCost.QuadPays(new Im2Col(512, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1), 512, 32));
        Assert.True(ConvolutionCost.QuadPays(new Im2Col(512, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1), 512, 2));
        Assert.True(ConvolutionCost.QuadPays(new Im2Col(4096, 1, 1, 1, 3, 1, 1, 0, 1, 1, 1), 16384, 1024)); // one position
        Assert.False(ConvolutionCost.QuadPays(new Im2Col(480, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(7), 480, 32)); // 343 positions
        Assert.True(ConvolutionCost.QuadPays(new Im2Col(480, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(8), 480, 32)); // 392
        // Ungrouped: from 392 positions, not 391 (a Conv1d of 64 channels, 1x3).
        Assert.True(ConvolutionCost.QuadPays(new Im2Col(64, 1, 392, 1, 3, 1, 1, 0, 1, 1, 1), 64, 1));
        Assert.False(ConvolutionCost.QuadPays(new Im2Col(64, 1, 391, 1, 3, 1, 1, 0, 1, 1, 1), 64, 1));
        Assert.False(ConvolutionCost.QuadPays(new Im2Col(128, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(4), 128, 1)); // 196 positions
        // Up to 1 MiB a group: 256->256 3x3 (576 KiB) at 2 images of 14x14, not 1; 512->512 (2.25 MiB) at none, nor in 2 groups of 4 images.
        Assert.True(ConvolutionCost.QuadPays(new Im2Col(256, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(2), 256, 1));
        Assert.False(ConvolutionCost.QuadPays(new Im2Col(256, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1), 256, 1));
        Assert.False(ConvolutionCost.QuadPays(new Im2Col(512, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(64), 512, 1));
        Assert.False(ConvolutionCost.QuadPays(new Im2Col(1024, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(4), 1024, 2)); // 2.25 MiB a group
        Assert.True(ConvolutionCost.QuadPays(new Im2Col(1024, 8, 8, 1, 1, 1, 1, 1, 1, 1, 1).ForImages(8), 1024, 1)); // 1 MiB, 1x1 padded: not pointwise
        Assert.False(ConvolutionCost.QuadPays(new Im2Col(1024, 8, 8, 1, 1, 1, 1, 1, 1, 1, 1).ForImages(8), 1025, 1));
        Assert.True(ConvolutionCost.QuadPays(new Im2Col(2048, 8, 8, 1, 1, 1, 1, 1, 1, 1, 1), 2048, 2)); // 1 MiB a group, 64 positions
        Assert.False(ConvolutionCost.QuadPays(new Im2Col(2048, 8, 8, 1, 1, 1, 1, 1, 1, 1, 1), 2050, 2));
        // Fewer than 16 outputs a group where the pair images of codes pay: those (256 channels in 32 groups onto 28x28 at batch 4).
        var eight = new Im2Col(256, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(4);
        Assert.True(ConvolutionCost.QuadPays(eight, 256, 32));
        Assert.False(ConvolutionCost.QuadPays(eight, 256, 32, pairCodesPay: true));
        Assert.True(ConvolutionCost.QuadPays(new Im2Col(512, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1).ForImages(4), 512, 32, pairCodesPay: true)); // 16 a group
        using (var layer = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(256, 256, 3, padding: 1, groups: 32), QuantizationRecipe.Int8WeightOnly().BaseWeights,
            new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, 0.02f, 120)))
        {
            bool pairs = Vnni512Kernel.BFloat16Supported && Float512.IsSupported;
            if (Vnni512Kernel.IsSupported)
            {
                Assert.Equal(pairs ? ConvolutionRoute.Kernel : ConvolutionRoute.Quad, layer.Route(torch.randn(4, 256, 28, 28)));
                Assert.Equal(ConvolutionRoute.Quad, layer.Route(torch.randn(1, 256, 28, 28))); // the codes' rule: 8 a group from 4 images
            }
        }
        // Pointwise, and fewer than four channels a group (the RGB stem), never.
        Assert.False(ConvolutionCost.QuadPays(new Im2Col(64, 56, 56, 1, 1, 1, 1, 0, 0, 1, 1).ForImages(8), 256, 1));
        Assert.False(ConvolutionCost.QuadPays(new Im2Col(3, 224, 224, 3, 3, 2, 2, 1, 1, 1, 1).ForImages(8), 32, 1));
        Assert.True(ConvolutionCost.QuadPays(new Im2Col(4, 224, 224, 3, 3, 2, 2, 1, 1, 1, 1), 32, 1));
        Assert.True(ConvolutionCost.QuadPays(new Im2Col(16, 1, 1000, 1, 3, 1, 1, 0, 1, 1, 1), 64, 1)); // a Conv1d
    }
}
