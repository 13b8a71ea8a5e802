using QuantSharp.Kernels;
using QuantSharp.Modules;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// Convolutions through the packed kernels (<see cref="Im2Col"/> unfolded while packing): the unfolded rows equal
/// libtorch's <c>unfold</c> exactly; the float GEMM on every instruction-set path and weight format equals the float64
/// specification on libtorch's columns; W8A8 gives exactly the integers and outputs of quantizing libtorch's columns and
/// multiplying them by the specification; the module's kernel route equals its dequantize + libtorch route. Geometries
/// cover kernel sizes 1 to 5, strides 1 to 3, padding 0 to 3 (rows and columns entirely in the padding), dilation 1 and
/// 2, Conv1d as height 1, and position counts that leave partial strips. CI re-runs this class with AVX-512, AVX-VNNI,
/// AVX2 and all intrinsics turned off (.ci/run selects the Kernels namespace).
/// </summary>
public unsafe class ConvolutionKernelTests
{
    /// <summary>The float tolerance of <see cref="QuantizedMatMulTests"/>: a fraction of the sum of absolute products.</summary>
    private const double RelativeTolerance = 2e-5;

    // (C, H, W, KH, KW, SH, SW, PH, PW, DH, DW)
    private static readonly int[][] Geometries =
    [
        [3, 7, 9, 3, 3, 1, 1, 1, 1, 1, 1],
        [2, 8, 5, 3, 2, 2, 1, 1, 0, 1, 2],
        [4, 11, 10, 5, 5, 3, 2, 2, 2, 1, 1],
        [5, 6, 6, 1, 1, 1, 1, 0, 0, 1, 1],
        [3, 9, 9, 2, 3, 2, 3, 0, 1, 2, 1],
        [2, 3, 3, 3, 3, 1, 1, 3, 2, 1, 1],
        [8, 20, 24, 3, 3, 1, 1, 1, 1, 1, 1],
        [6, 1, 40, 1, 3, 1, 1, 0, 1, 1, 1],
        [4, 1, 33, 1, 4, 1, 2, 0, 3, 1, 2],
    ];

    private static Im2Col Unfolding(int[] g) => new(g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10]);

    /// <summary>libtorch's columns of one image <c>[C, H, W]</c>: <c>[K, P]</c>.</summary>
    private static Tensor LibtorchColumns(Tensor image, int[] g) =>
        nn.functional.unfold(image.unsqueeze(0), (g[3], g[4]), (g[9], g[10]), (g[7], g[8]), (g[5], g[6]))[0];

    [Fact]
    public void UnfoldedRowsEqualLibtorchUnfold()
    {
        using var scope = NewDisposeScope();
        foreach (var g in Geometries)
        {
            var u = Unfolding(g);
            torch.manual_seed(g.Sum());
            var image = torch.randn(g[0], g[1], g[2]);
            var expected = LibtorchColumns(image, g).contiguous().data<float>().ToArray();
            Assert.Equal(u.Rows * u.Positions, expected.Length);
            var pixels = image.data<float>().ToArray();
            var row = new float[u.Positions];
            fixed (float* px = pixels) fixed (float* pr = row)
            {
                for (int k = 0; k < u.Rows; k++)
                {
                    // The whole row, then runs that start and end inside output rows.
                    u.Row(px, k, 0, u.Positions, pr, 0f);
                    Assert.Equal(expected.AsSpan(k * u.Positions, u.Positions).ToArray(), row);
                    for (int p0 = 0; p0 < u.Positions; p0 += 7)
                    {
                        int count = Math.Min(5 + k % 11, u.Positions - p0);
                        Array.Fill(row, float.NaN);
                        u.Row(px, k, p0, count, pr, 0f);
                        Assert.Equal(expected.AsSpan(k * u.Positions + p0, count).ToArray(), row.AsSpan(0, count).ToArray());
                        Assert.True(count == u.Positions || float.IsNaN(row[count]), "Row wrote past its run");
                    }
                }
            }
        }
    }

    public static IEnumerable<object[]> Formats() => Enum.GetNames<WeightFormat>().Select(f => new object[] { f });

    [Theory]
    [MemberData(nameof(Formats))]
    public void FloatKernelOnEveryPathMatchesTheSpecificationOnLibtorchColumns(string formatName)
    {
        using var scope = NewDisposeScope();
        var format = Enum.Parse<WeightFormat>(formatName);
        foreach (var g in Geometries)
        {
            var u = Unfolding(g);
            int k = u.Rows, p = u.Positions;
            if (WeightView.IsPacked(format) && k % 2 != 0) continue;
            // Per channel, and groups of one kernel window's channel slice where it divides (several groups per row).
            int taps = g[3] * g[4];
            int groupSize = WeightView.IsFloat(format) || (WeightView.IsPacked(format) && taps % 2 != 0) ? 0 : taps;
            using var w = new PinnedWeight(format, rows: 13, cols: k, groupSize, zeroPoints: true, seed: k + p);
            var view = w.View;
            torch.manual_seed(p);
            var image = torch.randn(g[0], g[1], g[2]);
            float[] pixels = image.data<float>().ToArray();
            float[] rows = LibtorchColumns(image, g).t().contiguous().data<float>().ToArray(); // [P, K]
            float[] bias = KernelTestData.Activations(13, k);
            var expected = new float[p * 13];
            var actual = new float[13 * p];
            fixed (float* px = pixels) fixed (float* pr = rows) fixed (float* pb = bias) fixed (float* pe = expected) fixed (float* pa = actual)
            {
                QuantizedMatMul.Reference(view, pr, p, k, pb, pe, 13);
                foreach (var path in KernelTestData.FloatPaths())
                {
                    Array.Fill(actual, float.NaN);
                    QuantizedMatMul.Run(view, px, p, p, pb, pa, p, path, MatMulMethod.Transposed, u);
                    for (int pos = 0; pos < p; pos++)
                    {
                        for (int n = 0; n < 13; n++)
                        {
                            double magnitude = Math.Abs(bias[n]);
                            for (int kk = 0; kk < k; kk++) magnitude += Math.Abs((double)rows[pos * k + kk] * view.Dequantized(n, kk));
                            double err = Math.Abs(actual[n * p + pos] - expected[pos * 13 + n]);
                            Assert.True(err <= RelativeTolerance * magnitude + 1e-30,
                                $"{format} {path} geometry [{string.Join(",", g)}] position {pos} channel {n}: {actual[n * p + pos]} vs {expected[pos * 13 + n]}");
                        }
                    }
                }
            }
        }
    }

    private static IEnumerable<KernelPath> IntegerPaths() =>
        new[] { KernelPath.Scalar, KernelPath.V128, KernelPath.V256, KernelPath.V512, KernelPath.Vnni256, KernelPath.Auto }.Where(IntegerMatMul.IsSupported);

    [Theory]
    [InlineData(0.021f, 131, 0, 255, false)] // uint8 affine (PyTorch's default activations)
    [InlineData(0.013f, 0, -128, 127, true)] // int8 symmetric, per-tensor weight with a zero point
    [InlineData(0.5f, 255, 0, 255, false)]   // zero point at the top: padding codes are 255, most inputs clamp
    public void IntegerConvolutionGivesExactlyTheIntegersOfQuantizedLibtorchColumns(float scale, int zeroPoint, int qmin, int qmax, bool perTensor)
    {
        using var scope = NewDisposeScope();
        foreach (var g in Geometries)
        {
            var u = Unfolding(g);
            int k = u.Rows, p = u.Positions;
            using var w = new PinnedWeight(WeightFormat.Int8, rows: 19, cols: k, groupSize: 0, zeroPoints: perTensor, seed: k * 3 + p, perTensor: perTensor);
            var view = w.View;
            torch.manual_seed(k + p);
            var image = torch.randn(g[0], g[1], g[2]);
            float[] pixels = image.data<float>().ToArray();
            float[] rows = LibtorchColumns(image, g).t().contiguous().data<float>().ToArray();
            float[] bias = KernelTestData.Activations(19, p);
            var expected = new float[p * 19];
            var actual = new float[p * 19];
            using var simulated = new QuantizedActivations(p, k);
            using var unfolded = new QuantizedActivations(p, k);
            fixed (float* px = pixels) fixed (float* pr = rows) fixed (float* pb = bias) fixed (float* pe = expected) fixed (float* pa = actual)
            {
                IntegerMatMul.QuantizeStatic(pr, k, scale, zeroPoint, qmin, qmax, simulated);
                IntegerMatMul.QuantizeUnfolded(px, u, scale, zeroPoint, qmin, qmax, unfolded);
                Assert.Equal(new ReadOnlySpan<byte>(simulated.Codes, p * k).ToArray(), new ReadOnlySpan<byte>(unfolded.Codes, p * k).ToArray());
                Assert.Equal(simulated.Sums, unfolded.Sums);
                Assert.Equal(simulated.ZeroPoints, unfolded.ZeroPoints);
                Assert.Equal(simulated.Scales, unfolded.Scales);
                IntegerMatMul.Reference(view, simulated, pb, pe, 19);
                foreach (var path in IntegerPaths())
                foreach (var method in new[] { MatMulMethod.Rows, MatMulMethod.Packed })
                {
                    Array.Fill(actual, float.NaN);
                    IntegerMatMul.Run(view, unfolded, pb, pa, 19, path, method);
                    Assert.True(expected.AsSpan().SequenceEqual(actual), $"{path} {method} geometry [{string.Join(",", g)}] differs from the specification");
                }
            }
        }
    }

    internal static readonly QuantSpec[] ModuleSpecs =
    [
        new(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0)),
        new(QuantType.Int8, QuantScheme.Affine, Granularity.Tensor),
        new(QuantType.UInt8, QuantScheme.Affine, new PerAxis(0)),
        new(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(8)),
        new(QuantType.UInt4, QuantScheme.Affine, new PerAxis(0)),
        new(QuantType.Float16),
        new(QuantType.BFloat16),
    ];

    internal static void AssertClose(Tensor expected, Tensor actual, double relative, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        using var e = expected.to(ScalarType.Float64);
        using var a = actual.to(ScalarType.Float64);
        double scale = e.abs().max().item<double>() + 1e-12;
        double err = (e - a).abs().max().item<double>();
        Assert.True(err <= relative * scale, $"{what}: max |error| {err:G3} against max |value| {scale:G3}");
    }

    [Fact]
    public void ModuleKernelRouteMatchesDequantizeAndLibtorchForEveryFormatAndInputForm()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(21);
        var convs = new (nn.Module<Tensor, Tensor> Conv, Tensor[] Inputs)[]
        {
            (nn.Conv2d(6, 10, (3, 4), stride: (2, 1), padding: (1, 2), dilation: (1, 2)),
                [torch.randn(3, 6, 9, 11), torch.randn(6, 7, 8), torch.randn(2, 6, 11, 9).transpose(2, 3)]),
            (nn.Conv2d(8, 7, 1), [torch.randn(2, 8, 5, 7), torch.randn(8, 3, 3)]),
            (nn.Conv1d(4, 9, 4, stride: 2, padding: 3, dilation: 2, bias: false), [torch.randn(3, 4, 21), torch.randn(4, 17), torch.randn(2, 21, 4).transpose(1, 2)]),
        };
        foreach (var (conv, inputs) in convs)
        foreach (var spec in ModuleSpecs)
        {
            using var layer = (QuantizedConv)QuantizedModules.Quantize(conv, spec);
            foreach (var x in inputs)
            {
                var expected = layer.Forward(x, ConvolutionRoute.Reference);
                var actual = layer.Forward(x, ConvolutionRoute.Kernel);
                AssertClose(expected, actual, 1e-5, $"{layer.GetType().Name} {spec} input [{string.Join(",", x.shape)}]");
                AssertClose(expected, layer.call(x), 1e-5, $"{spec} through the rule");
            }
            // The kernel ran: the layout serves this weight.
            using var images = torch.randn(1, layer.in_channels, 9, 9);
            var unfold = new Im2Col((int)layer.in_channels, 9, 9, (int)layer.kernel_size[0], (int)layer.kernel_size[^1], 1, 1, 0, 0, 1, 1);
            if (layer.SpatialDims == 2) Assert.NotNull(layer.weight.Layout.Convolution(images, unfold, layer.bias, null));
        }
    }

    [Fact]
    public void StaticW8A8ConvolutionRunsInIntegersAndMatchesTheSimulatedPath()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(22);
        var act = new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, 0.02f, 120);
        foreach (var conv in new nn.Module<Tensor, Tensor>[] { nn.Conv2d(5, 12, 3, stride: 2, padding: 1), nn.Conv2d(16, 8, 1), nn.Conv1d(7, 6, 3, padding: 2, dilation: 2) })
        {
            using var layer = (QuantizedConv)QuantizedModules.Quantize(conv, QuantizationRecipe.Int8WeightOnly().BaseWeights, act);
            int dims = layer.SpatialDims;
            var x = dims == 2 ? torch.randn(2, layer.in_channels, 10, 9) : torch.randn(2, layer.in_channels, 19);
            var simulated = layer.Forward(x, ConvolutionRoute.Reference);
            var integer = layer.Forward(x, ConvolutionRoute.Kernel);
            // Same integers; the two differ only by the float rounding of the simulated convolution's sums.
            AssertClose(simulated, integer, 2e-6, $"W8A8 {layer.GetType().Name}");
            var images = dims == 2 ? x : x.unsqueeze(2);
            var unfold = dims == 2
                ? new Im2Col((int)layer.in_channels, 10, 9, 3, 3, 2, 2, 1, 1, 1, 1)
                : new Im2Col((int)layer.in_channels, 1, 19, 1, 3, 1, 1, 0, 2, 1, 2);
            if (layer.kernel_size[0] == 1) unfold = new Im2Col((int)layer.in_channels, 10, 9, 1, 1, 1, 1, 0, 0, 1, 1);
            Assert.NotNull(layer.weight.Layout.Convolution(images, unfold, layer.bias, layer.InputQuantizer));
        }
    }

    [Fact]
    public void MeasuredRuleTakesTheKernelForPointwiseAndWideLongW8A8Only()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var int8 = QuantizationRecipe.Int8WeightOnly().BaseWeights;
        var act = new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, 0.02f, 120);
        bool Takes(nn.Module<Tensor, Tensor> conv, ActivationQuantization? input, Tensor x)
        {
            using var layer = (QuantizedConv)QuantizedModules.Quantize(conv, int8, input);
            return layer.Route(x) == ConvolutionRoute.Kernel;
        }
        var image = torch.randn(1, 32, 8, 8);
        Assert.True(Takes(nn.Conv2d(32, 16, 1), null, image));                   // 1x1: a plain GEMM
        Assert.False(Takes(nn.Conv2d(32, 16, 3, padding: 1), null, image));      // weight-only 3x3: libtorch
        Assert.True(Takes(nn.Conv2d(32, 256, 3, padding: 1), act, image));       // W8A8, K = 288, 256 outputs: integers
        Assert.False(Takes(nn.Conv2d(32, 64, 3, padding: 1), act, image));       // W8A8, 64 outputs: simulated
        Assert.False(Takes(nn.Conv2d(16, 256, 3), act, torch.randn(1, 16, 8, 8))); // W8A8, K = 144: simulated
        Assert.False(Takes(nn.Conv2d(32, 16, 3, padding: 1), null, torch.randn(1, 32, 8, 8).to(ScalarType.Float64)));
    }
}
