using QuantSharp.Kernels;
using QuantSharp.Primitives;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// The blocked span API (per-channel / per-group dispatch: per-element rows, chunked and parallel blocks) against a
/// plain element-by-element loop over the scalar specification, for many channel counts and block lengths.
/// </summary>
public class BlockedQuantizationTests
{
    public static TheoryData<int, int, int> Shapes()
    {
        var data = new TheoryData<int, int, int>();
        foreach (int channels in new[] { 1, 2, 3, 7, 8, 16, 33, 64 })
            foreach (int block in new[] { 1, 3, 16, 31, 32, 100 })
                foreach (int outer in new[] { 1, 3 })
                    data.Add(outer, channels, block);
        data.Add(1, 5, 70_000); // blocks split into 65,536-element chunks, processed in parallel
        data.Add(2, 3, 50_000); // parallel, channel cycling over outer
        data.Add(3000, 100, 1); // channel axis last, parallel rows
        return data;
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void MatchesElementwiseSpecification(int outer, int channels, int block)
    {
        int n = outer * channels * block;
        var rng = new Random(outer * 1000 + channels * 10 + block);
        float[] x = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 20 - 10)).ToArray();
        float[] scale = Enumerable.Range(0, channels).Select(_ => (float)(0.01 + rng.NextDouble() * 0.1)).ToArray();
        int[] zp = Enumerable.Range(0, channels).Select(_ => rng.Next(-20, 21)).ToArray();
        var range = new QuantRange(-128, 127);
        var q = new sbyte[n];
        Quantization.Quantize(x, block, scale, zp, range, q);
        var fq = new float[n];
        Quantization.FakeQuantize(x, block, scale, zp, range, fq);
        var dq = new float[n];
        Quantization.Dequantize(q, block, scale, zp, dq);
        for (int k = 0; k < n; k++)
        {
            int c = k / block % channels;
            int expected = QuantizeKernel.QuantizeOne(x[k], 1f / scale[c], zp[c], -128, 127);
            if (q[k] != expected) Assert.Fail($"element {k} (channel {c}): {q[k]} != {expected}");
            float value = (expected - zp[c]) * scale[c];
            if (BitConverter.SingleToInt32Bits(fq[k]) != BitConverter.SingleToInt32Bits(value)) Assert.Fail($"fake-quant element {k}: {fq[k]} != {value}");
            if (BitConverter.SingleToInt32Bits(dq[k]) != BitConverter.SingleToInt32Bits(value)) Assert.Fail($"dequantize element {k}: {dq[k]} != {value}");
        }
    }

    [Fact]
    public void ArgumentErrorsNameTheParameter()
    {
        var range = new QuantRange(-128, 127);
        Assert.Equal("destination", Assert.Throws<ArgumentException>(() => Quantization.Quantize(new float[4], 1f, 0, range, new sbyte[3])).ParamName);
        Assert.Equal("scale", Assert.Throws<ArgumentException>(() => Quantization.Quantize(new float[4], -1f, 0, range, new sbyte[4])).ParamName);
        Assert.Equal("zeroPoint", Assert.Throws<ArgumentException>(() => Quantization.Quantize(new float[4], 2, [1f, 1f], [0], range, new sbyte[4])).ParamName);
        Assert.Equal("range", Assert.Throws<ArgumentException>(() => Quantization.Quantize(new float[4], 1f, 0, new QuantRange(0, 255), new sbyte[4])).ParamName);
        Assert.Equal("blockLength", Assert.Throws<ArgumentOutOfRangeException>(() => Quantization.Quantize(new float[4], 0, [1f], [0], range, new sbyte[4])).ParamName);
    }
}
