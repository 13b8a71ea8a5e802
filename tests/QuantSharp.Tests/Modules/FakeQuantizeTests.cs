using System.Runtime.InteropServices;
using QuantSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Modules;

/// <summary>
/// <see cref="FakeQuantize"/> against PyTorch 2.11's fake-quant forward outputs and gradients (reference qat_ste,
/// qat_ste_pc, qat_lsq), and against a scalar transcription of PyTorch's CPU kernels on other inputs.
/// </summary>
public class FakeQuantizeTests
{
    private static float[] Floats(Tensor t) => t.contiguous().data<float>().ToArray();

    private static void AssertBits(float[] expected, float[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]))
                Assert.Fail($"{what} element {i}: expected {expected[i]:R}, got {actual[i]:R}.");
        }
    }

    private static FakeQuantize PerTensor(QuantRange range, float scale, int zeroPoint, bool learnable)
    {
        var type = range.QMin < 0 ? QuantType.Int8 : QuantType.UInt8;
        var fq = new FakeQuantize(new QuantSpec(type, QuantScheme.Affine), new FakeQuantizeOptions { Learnable = learnable });
        fq.SetQParams([scale], [zeroPoint]);
        return fq;
    }

    [Fact]
    public void SteForwardAndInputGradientMatchPyTorch()
    {
        var p = Reference.Json.GetProperty("qat_ste");
        using var file = Reference.OpenTensors();
        using var x = file.ReadTensor("qat_ste/input").requires_grad_(true);
        using var gradOut = file.ReadTensor("qat_ste/grad_out");
        var range = new QuantRange(p.GetProperty("qmin").GetInt32(), p.GetProperty("qmax").GetInt32());
        Assert.Equal(new QuantRange(-128, 127), range);
        using var fq = PerTensor(range, p.GetProperty("scale").GetSingle(), p.GetProperty("zero_point").GetInt32(), learnable: false);

        using var y = fq.call(x);
        y.backward([gradOut]);

        using var expectedY = file.ReadTensor("qat_ste/output");
        using var expectedGrad = file.ReadTensor("qat_ste/grad_input");
        AssertBits(Floats(expectedY), Floats(y), "output");
        AssertBits(Floats(expectedGrad), Floats(x.grad!), "grad_input");
        // The reference is not trivial: some inputs are clamped (gradient 0), most pass.
        int zerosInGrad = Floats(expectedGrad).Count(v => v == 0f);
        Assert.InRange(zerosInGrad, 1, (int)x.numel() - 1);
    }

    [Fact]
    public void PerChannelSteForwardAndInputGradientMatchPyTorch()
    {
        var p = Reference.Json.GetProperty("qat_ste_pc");
        using var file = Reference.OpenTensors();
        using var x = file.ReadTensor("qat_ste_pc/input").requires_grad_(true);
        float[] scales = MemoryMarshal.Cast<byte, float>(file.ReadBytes("qat_ste_pc/scales")).ToArray();
        int[] zps = MemoryMarshal.Cast<byte, int>(file.ReadBytes("qat_ste_pc/zero_points")).ToArray();
        Assert.Equal((-8, 7), (p.GetProperty("qmin").GetInt32(), p.GetProperty("qmax").GetInt32()));
        var spec = new QuantSpec(QuantType.Int4, QuantScheme.Affine, new PerAxis(p.GetProperty("axis").GetInt32()));
        using var fq = new FakeQuantize(spec, tensorShape: x.shape);
        fq.SetQParams(scales, zps);

        using var y = fq.call(x);
        using var ones = ones_like(y);
        y.backward([ones]); // the reference's upstream gradient is ones

        using var expectedY = file.ReadTensor("qat_ste_pc/output");
        using var expectedGrad = file.ReadTensor("qat_ste_pc/grad_input");
        AssertBits(Floats(expectedY), Floats(y), "output");
        AssertBits(Floats(expectedGrad), Floats(x.grad!), "grad_input");
    }

    [Fact]
    public void LsqOutputAndGradientsMatchPyTorch()
    {
        var p = Reference.Json.GetProperty("qat_lsq");
        Assert.Equal(1.0f, p.GetProperty("grad_factor").GetSingle()); // PyTorch's default: no gradient scaling
        using var file = Reference.OpenTensors();
        using var x = file.ReadTensor("qat_ste/input").requires_grad_(true);     // LSQ was fed the qat_ste input
        using var gradOut = file.ReadTensor("qat_ste/grad_out");                  // and upstream gradient
        var range = new QuantRange(p.GetProperty("qmin").GetInt32(), p.GetProperty("qmax").GetInt32());
        using var fq = PerTensor(range, p.GetProperty("scale").GetSingle(), (int)p.GetProperty("zero_point").GetSingle(), learnable: true);

        using var y = fq.call(x);
        y.backward([gradOut]);

        using var expectedY = file.ReadTensor("qat_lsq/output");
        using var expectedGrad = file.ReadTensor("qat_lsq/grad_input");
        AssertBits(Floats(expectedY), Floats(y), "output");
        AssertBits(Floats(expectedGrad), Floats(x.grad!), "grad_input");
        // Sums over 2,048 elements in another order: float32 tolerance relative to the size of the sum.
        float gs = fq.Scale.grad!.item<float>(), gz = fq.ZeroPoint.grad!.item<float>();
        Assert.Equal(p.GetProperty("grad_scale").GetSingle(), gs, 3540f * 1e-5f);
        Assert.Equal(p.GetProperty("grad_zero_point").GetSingle(), gz, 1e-4f);
    }

    // PyTorch's CPU kernels (fake_quantize_tensor_cachemask_kernel, _fake_quantize_grad_learnable_tensor_kernel_cpu)
    // transcribed element by element: output, input gradient, per-element scale and zero-point gradients.
    private static (float Y, float Dx, float Ds, float Dz) Kernel(float x, float dy, float s, int z, int qmin, int qmax, float gf)
    {
        float inv = 1f / s;
        long xqi = (long)MathF.Round(z + x * inv, MidpointRounding.ToEven);
        long q = Math.Min(Math.Max(z + (long)MathF.Round(x * inv, MidpointRounding.ToEven), qmin), qmax);
        float y = (q - z) * s;
        bool inside = xqi >= qmin && xqi <= qmax;
        float dx = dy * (inside ? 1f : 0f); // -0 for a negative upstream gradient, as PyTorch
        float xfq = (Math.Max(Math.Min(xqi, qmax), qmin) - z) * s;
        float ds = inside ? dy * (xfq - x) * inv * gf : (xqi < qmin ? dy * (qmin - z) : dy * (qmax - z)) * gf;
        float dz = inside ? 0f : dy * -1f * s * gf;
        return (y, dx, ds, dz);
    }

    [Theory]
    [InlineData(QuantType.Int8, 1)]
    [InlineData(QuantType.UInt8, 2)]
    [InlineData(QuantType.Int4, 3)]
    [InlineData(QuantType.UInt4, 4)]
    [InlineData(QuantType.Int2, 5)]
    [InlineData(QuantType.UInt2, 6)]
    public void PerGroupLsqMatchesPyTorchKernelsOnRandomInputs(QuantType type, int seed)
    {
        const int rows = 6, cols = 32, group = 8;
        var rng = new Random(seed);
        float[] xs = new float[rows * cols], dys = new float[rows * cols];
        var range = QuantRange.For(type, false);
        // inputs over 1.2 times the integer range: with scales in [0.05, 1.55] some are clamped, most are not
        float span = 1.2f * (range.QMax - range.QMin);
        for (int i = 0; i < xs.Length; i++) { xs[i] = (float)((rng.NextDouble() - 0.5) * span); dys[i] = (float)(rng.NextDouble() * 2 - 1); }
        int nParams = rows * cols / group;
        float[] scales = new float[nParams];
        int[] zps = new int[nParams];
        for (int g = 0; g < nParams; g++)
        {
            scales[g] = (float)(0.05 + rng.NextDouble() * 1.5);
            zps[g] = rng.Next(range.QMin, range.QMax + 1);
        }
        var spec = new QuantSpec(type, QuantScheme.Affine, new PerGroup(group));
        using var fq = new FakeQuantize(spec, new FakeQuantizeOptions { Learnable = true, GradScaling = true }, [rows, cols]);
        fq.SetQParams(scales, zps);
        using var x = tensor(xs, [rows, cols]).requires_grad_(true);
        using var dy = tensor(dys, [rows, cols]);
        using var y = fq.call(x);
        y.backward([dy]);

        float gf = 1f / MathF.Sqrt((float)xs.Length * range.QMax);
        float[] ey = new float[xs.Length], edx = new float[xs.Length];
        double[] eds = new double[nParams], edz = new double[nParams];
        for (int i = 0; i < xs.Length; i++)
        {
            int g = i / group;
            var k = Kernel(xs[i], dys[i], scales[g], zps[g], range.QMin, range.QMax, gf);
            (ey[i], edx[i]) = (k.Y, k.Dx);
            eds[g] += k.Ds;
            edz[g] += k.Dz;
        }
        AssertBits(ey, Floats(y), "output");
        AssertBits(edx, Floats(x.grad!), "grad_input");
        float[] ds = Floats(fq.Scale.grad!), dz = Floats(fq.ZeroPoint.grad!);
        for (int g = 0; g < nParams; g++)
        {
            Assert.Equal(eds[g], ds[g], 1e-5);
            Assert.Equal(edz[g], dz[g], 1e-5);
        }
        Assert.Contains(edx, v => v == 0f); // some elements are clamped at these scales
        Assert.Contains(edx, v => v != 0f);
    }

    [Fact]
    public void ObserverSetsParametersInTrainingAndFreezesAfterNSteps()
    {
        var spec = new QuantSpec(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0));
        using var fq = new FakeQuantize(spec, new FakeQuantizeOptions { FreezeObserverAfter = 2 }, [2, 4]);
        fq.train();
        using var a = tensor(new float[] { 1, -2, 0.5f, 0, 4, 1, -1, 2 }, [2, 4]);
        fq.call(a).Dispose();
        Assert.Equal([2f / 127.5f, 4f / 127.5f], Floats(fq.Scale));
        using var b = a * 2;
        fq.call(b).Dispose(); // second step still observed (min/max over both batches)
        Assert.Equal([4f / 127.5f, 8f / 127.5f], Floats(fq.Scale));
        Assert.False(fq.ObserverEnabled);
        using var c = a * 10;
        fq.call(c).Dispose(); // frozen
        Assert.Equal([4f / 127.5f, 8f / 127.5f], Floats(fq.Scale));
        Assert.Equal(3, fq.Steps);
        fq.eval();
        using var y = fq.call(a);
        // int8 symmetric fake quant of a with the frozen scales, element by element
        var expected = new float[8];
        QuantSharp.Primitives.Quantization.FakeQuantize(Floats(a), 4, [4f / 127.5f, 8f / 127.5f], [0, 0], QuantRange.For(QuantType.Int8, false), expected);
        AssertBits(expected, Floats(y), "output");
    }

    [Fact]
    public void LsqLearnsScaleWithAnOrdinaryOptimizer()
    {
        // Start from a far too large scale: training the scale to reduce the MSE must shrink it.
        var spec = new QuantSpec(QuantType.Int4, QuantScheme.Symmetric);
        using var fq = new FakeQuantize(spec, new FakeQuantizeOptions { Learnable = true });
        fq.SetQParams([2f], [0]);
        var opt = optim.Adam(fq.parameters(), lr: 0.05);
        using var x = randn(256, generator: new Generator(7));
        float first = 0, last = 0;
        for (int step = 0; step < 60; step++)
        {
            opt.zero_grad();
            using var loss = (fq.call(x) - x).pow(2).mean();
            loss.backward();
            opt.step();
            if (step == 0) first = loss.item<float>();
            last = loss.item<float>();
        }
        Assert.True(last < first / 4, $"LSQ did not reduce the error: {first} -> {last}");
        Assert.InRange(fq.Scale.item<float>(), 0.1f, 1f);
        Assert.Single(fq.parameters(), t => t.requires_grad); // symmetric int4: the zero point is fixed
    }

    [Fact]
    public void RejectsWhatItCannotSimulate()
    {
        var e = Assert.Throws<ArgumentException>(() => new FakeQuantize(new QuantSpec(QuantType.Float16)));
        Assert.Contains("int8", e.Message);
        e = Assert.Throws<ArgumentException>(() => new FakeQuantize(new QuantSpec(QuantType.Int8, granularity: new PerAxis(0))));
        Assert.Contains("tensorShape", e.Message);
        using var fq = new FakeQuantize(new QuantSpec(QuantType.Int8, granularity: new PerAxis(0)), tensorShape: [4, 4]);
        using var wrong = zeros(3, 4);
        e = Assert.Throws<ArgumentException>(() => fq.call(wrong));
        Assert.Contains("[4, 4]", e.Message);
    }
}
