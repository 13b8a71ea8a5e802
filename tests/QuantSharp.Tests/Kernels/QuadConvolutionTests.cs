using QuantSharp.Kernels;
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
    /// 24 and 40 (one vector, two, two chunks), stride phases, dilation, rows longer than a run, a Conv1d, one and three images.
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
        ];
        int checkedNative = 0, checkedTwin = 0;
        foreach (var (g, groups, outputs) in cases)
        foreach (int images in new[] { 1, 3 })
        {
            var u = Unfolding(g).ForImages(images);
            int channels = g[0] / groups, k = channels * g[3] * g[4], p = u.Positions, groupRows = outputs / groups;
            Assert.True(QuadConvolution.Fits(u, outputs, groups));
            using var w = new PinnedWeight(WeightFormat.Int8, rows: outputs, cols: k, 0, zeroPoints: false, seed: k + p + outputs, perTensor: perTensor);
            var view = w.View;
            torch.manual_seed(p + images + groups);
            var batch = torch.randn(images, g[0], g[1], g[2]) * 2;
            float[] pixels = batch.data<float>().ToArray();
            float[] bias = KernelTestData.Activations(outputs, k);
            int[] single = [channels, .. g[1..]];
            var expected = BFloat16PackedKernelTests.PerGroup(batch, view, bias, groups, single, p, (rowsView, groupBias, rows, group, i) =>
            {
                var part = new float[p * groupRows];
                using var quantized = new QuantizedActivations(p, k);
                fixed (float* pr = rows) fixed (float* pb = groupBias) fixed (float* ps = part)
                {
                    IntegerMatMul.QuantizeStatic(pr, k, scale, zeroPoint, qmin, qmax, quantized);
                    IntegerMatMul.Reference(rowsView, quantized, pb, ps, groupRows);
                }
                return part;
            });
            string what = $"[{string.Join(",", g)}] x{images} in {groups} groups -> {outputs}, input {scale}/{zeroPoint}, per tensor {perTensor}";
            foreach (bool native in Vnni512Kernel.IsSupported ? new[] { false, true } : [false])
            foreach (bool rowRuns in new[] { false, true })
            {
                var y = new float[images * outputs * p];
                Array.Fill(y, float.NaN);
                bool saved = QuadConvolution.UseNative;
                try
                {
                    QuadConvolution.UseNative = native;
                    QuadConvolution.ForcedRowRuns = rowRuns;
                    fixed (float* px = pixels) fixed (float* pb = bias) fixed (float* py = y)
                        QuadConvolution.Run(view, px, pb, py, u, groups, scale, zeroPoint, qmin, qmax);
                }
                finally
                {
                    QuadConvolution.UseNative = saved;
                    QuadConvolution.ForcedRowRuns = null;
                }
                for (int i = 0; i < y.Length; i++)
                    Assert.True(BitConverter.SingleToUInt32Bits(expected[i]) == BitConverter.SingleToUInt32Bits(y[i]),
                        $"{what}{(native ? "" : ", twin")}{(rowRuns ? ", row runs" : ", wide runs")}: output {i} (image {i / (outputs * p)}, channel {i / p % outputs}) {y[i]:R}, the specification's {expected[i]:R}");
                if (native) checkedNative++;
                else checkedTwin++;
            }
        }
        Assert.Equal(4 * cases.Length, checkedTwin);
        Assert.True(!Vnni512Kernel.IsSupported || checkedNative == 4 * cases.Length, $"{checkedNative} calls through the generated code");
    }
}
