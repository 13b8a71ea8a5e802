using QuantSharp.Kernels;
using static QuantSharp.Kernels.QuantizeKernel;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// The vector paths (512/256/128-bit, whichever this CPU runs; re-run with DOTNET_EnableAVX2=0 or
/// DOTNET_EnableHWIntrinsic=0 to cover the others) against the scalar specification, for every length 0..256.
/// </summary>
public class KernelVectorTests
{
    private static float[] Data(int n, int seed, float scale)
    {
        var rng = new Random(seed);
        var x = new float[n];
        for (int i = 0; i < n; i++)
        {
            x[i] = (i % 7) switch
            {
                0 => (rng.Next(-300, 300) + 0.5f) * scale,          // exact ties
                1 => rng.Next(-300, 300) * scale,                     // exact integers
                2 => (float)(rng.NextDouble() * 1e6 - 5e5),           // far outside the range
                3 when i % 35 == 3 => float.NaN,
                4 when i % 35 == 4 => float.PositiveInfinity,
                5 when i % 35 == 5 => float.NegativeInfinity,
                6 when i % 35 == 6 => i % 2 == 0 ? 3e38f : -3e38f,    // beyond int32 once scaled
                6 when i % 35 == 13 => -0f,
                _ => (float)(rng.NextDouble() * 2 - 1) * 200 * scale,
            };
        }
        return x;
    }

    public static IEnumerable<object[]> Lengths() => Enumerable.Range(0, 257).Select(n => new object[] { n });

    [Theory]
    [MemberData(nameof(Lengths))]
    public void QuantizeVectorEqualsScalar(int n)
    {
        const float scale = 0.0371f;
        float[] x = Data(n, n, scale);
        foreach (var (zp, qmin, qmax) in new[] { (3f, -128f, 127f), (128f, 0f, 255f), (0f, -8f, 7f) })
        {
            var v = new sbyte[n]; var s = new sbyte[n];
            Quantize(x, 1f / scale, zp, qmin, qmax, v);
            QuantizeScalar(x, 1f / scale, zp, qmin, qmax, s);
            Assert.Equal(s, v);

            var fv = new float[n]; var fs = new float[n];
            FakeQuantize(x, scale, 1f / scale, zp, qmin, qmax, fv);
            FakeQuantizeScalar(x, scale, 1f / scale, zp, qmin, qmax, fs);
            Assert.Equal(fs, fv);
        }
    }

    [Theory]
    [MemberData(nameof(Lengths))]
    public void PerElementVectorEqualsScalar(int n)
    {
        float[] x = Data(n, 1000 + n, 0.05f);
        var rng = new Random(n);
        float[] inv = Enumerable.Range(0, n).Select(_ => 1f / (float)(0.01 + rng.NextDouble())).ToArray();
        float[] zp = Enumerable.Range(0, n).Select(_ => (float)rng.Next(-128, 128)).ToArray();
        var v = new sbyte[n]; var s = new sbyte[n];
        QuantizePerElement(x, inv, zp, -128, 127, v);
        QuantizePerElementScalar(x, inv, zp, -128, 127, s);
        Assert.Equal(s, v);
    }

    [Theory]
    [MemberData(nameof(Lengths))]
    public void DequantizeVectorEqualsScalar(int n)
    {
        var rng = new Random(n);
        var q8 = new sbyte[n]; var u8 = new byte[n];
        for (int i = 0; i < n; i++) { q8[i] = (sbyte)rng.Next(-128, 128); u8[i] = (byte)rng.Next(0, 256); }
        var v = new float[n]; var s = new float[n];
        Dequantize(q8, 0.0173f, -5f, v);
        DequantizeScalar(q8, 0.0173f, -5f, s);
        Assert.Equal(s, v);
        Dequantize(u8, 0.0173f, 131f, v);
        DequantizeScalar(u8, 0.0173f, 131f, s);
        Assert.Equal(s, v);
    }

    [Theory]
    [MemberData(nameof(Lengths))]
    public void MinMaxAndBFloat16VectorEqualScalar(int n)
    {
        var rng = new Random(n);
        float[] x = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 20 - 10)).ToArray();
        Assert.Equal(MinMaxKernel.MinMaxScalar(x), MinMaxKernel.MinMax(x));
        if (n > 0)
        {
            x[rng.Next(n)] = float.NaN;
            var r = MinMaxKernel.MinMax(x);
            Assert.True(float.IsNaN(r.Min) && float.IsNaN(r.Max));
            x[rng.Next(n)] = float.PositiveInfinity;
            x[rng.Next(n)] = BitConverter.UInt32BitsToSingle(0x0000_0123); // subnormal
        }
        var v = new ushort[n]; var s = new ushort[n];
        HalfKernel.ToBFloat16(x, v);
        HalfKernel.ToBFloat16Scalar(x, s);
        Assert.Equal(s, v);
    }

    /// <summary>The summing quantizer writes the codes of the plain one and returns the sum of the integers written, NaN (qmin) and clamped values included.</summary>
    [Theory]
    [MemberData(nameof(Lengths))]
    public void QuantizeAndSumWritesTheSameCodesAndTheirSum(int n)
    {
        var rng = new Random(9000 + n);
        float[] x = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 300 - 150)).ToArray();
        if (n > 2) { x[0] = float.NaN; x[1] = float.PositiveInfinity; }
        foreach (var (zero, qmin, qmax) in new[] { (128f, 1f, 255f), (3f, 0f, 255f), (0f, -127f, 127f) })
        {
            var plain = new sbyte[n];
            var summed = new sbyte[n];
            QuantizeKernel.Quantize(x, 0.9f, zero, qmin, qmax, plain);
            int sum = QuantizeKernel.QuantizeAndSum(x, 0.9f, zero, qmin, qmax, summed);
            Assert.Equal(plain, summed);
            int expected = 0;
            for (int i = 0; i < n; i++) expected += QuantizeKernel.QuantizeOne(x[i], 0.9f, zero, qmin, qmax);
            Assert.Equal(expected, sum);
        }
    }

    /// <summary>
    /// The fused quantize-and-interleave of four channels puts in byte i of each position's value the code
    /// <see cref="QuantizeKernel.QuantizeOne"/> gives channel i (NaN, infinities and ties to even included), and the zero
    /// point's code for a missing channel; over lengths that leave every tail; where AVX-512 does not run it refuses.
    /// </summary>
    [Theory]
    [InlineData(16)]
    [InlineData(17)]
    [InlineData(31)]
    [InlineData(49)]
    [InlineData(64)]
    [InlineData(100)]
    public unsafe void QuantizeQuadsInterleavesTheCodesOfFourChannels(int n)
    {
        var rng = new Random(4400 + n);
        const float Inv = 0.5f; // x = 2k + 1 is a tie: k + 0.5
        float[][] channels = Enumerable.Range(0, 4).Select(_ => Enumerable.Range(0, n).Select(_ => rng.Next(3) == 0 ? 2 * rng.Next(-300, 300) + 1f : (float)(rng.NextDouble() * 600 - 300)).ToArray()).ToArray();
        channels[0][n - 1] = float.NaN;
        channels[1][0] = float.PositiveInfinity;
        channels[2][n / 2] = float.NegativeInfinity;
        if (!QuantizeKernel.QuadsInVectors)
        {
            Assert.Throws<ArgumentException>(() => QuantizeKernel.QuantizeQuads(null, null, null, null, n, Inv, 128, 0, 255, null));
            return;
        }
        foreach (var (zero, qmin, qmax) in new[] { (131f, 0f, 255f), (128f, 0f, 255f), (255f, 0f, 255f) })
        foreach (bool missing in new[] { false, true })
        {
            uint[] quads = new uint[n];
            fixed (float* c0 = channels[0]) fixed (float* c1 = channels[1]) fixed (float* c2 = channels[2]) fixed (float* c3 = channels[3]) fixed (uint* q = quads)
            {
                QuantizeKernel.QuantizeQuads(c0, c1, c2, missing ? null : c3, n, Inv, zero, qmin, qmax, q);
            }
            for (int j = 0; j < n; j++)
                for (int i = 0; i < 4; i++)
                {
                    int expected = i == 3 && missing ? (int)zero : QuantizeKernel.QuantizeOne(channels[i][j], Inv, zero, qmin, qmax);
                    Assert.True(expected == (int)(quads[j] >> 8 * i & 0xFF), $"position {j} channel {i} ({channels[i][j]:R}), zero point {zero}: {quads[j] >> 8 * i & 0xFF}, expected {expected}");
                }
        }
    }

    /// <summary>The largest magnitude equals <c>max(-min(min, 0), max(max, 0))</c> of the scalar min/max, bit for bit, and is NaN with a NaN anywhere.</summary>
    [Theory]
    [MemberData(nameof(Lengths))]
    public void AbsMaxEqualsTheMagnitudeOfMinMax(int n)
    {
        var rng = new Random(7000 + n);
        float[] x = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 20 - 10)).ToArray();
        foreach (var shift in new[] { 0f, 12f, -12f }) // mixed signs, all positive, all negative
        {
            var y = x.Select(v => v + shift).ToArray();
            var (min, max) = MinMaxKernel.MinMaxScalar(y);
            float expected = n == 0 ? 0 : MathF.Max(-MathF.Min(min, 0), MathF.Max(max, 0));
            Assert.Equal(BitConverter.SingleToUInt32Bits(expected), BitConverter.SingleToUInt32Bits(MinMaxKernel.AbsMax(y)));
        }
        if (n == 0) return;
        var z = new float[n]; // zeros of both signs: +0
        for (int i = 0; i < n; i++) z[i] = i % 2 == 0 ? -0f : 0f;
        Assert.Equal(0u, BitConverter.SingleToUInt32Bits(MinMaxKernel.AbsMax(z)));
        x[rng.Next(n)] = float.NegativeInfinity;
        Assert.Equal(float.PositiveInfinity, MinMaxKernel.AbsMax(x));
        x[rng.Next(n)] = float.NaN;
        Assert.True(float.IsNaN(MinMaxKernel.AbsMax(x)));
    }

    [Theory]
    [MemberData(nameof(Lengths))]
    public void HalfVectorEqualsScalar(int n)
    {
        var rng = new Random(5000 + n);
        // Random bit patterns (NaN, infinities, subnormals included) and values around the half subnormal range.
        float[] x = Enumerable.Range(0, n).Select(i => i % 2 == 0
            ? BitConverter.UInt32BitsToSingle((uint)rng.NextInt64(0, 1L << 32))
            : (float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-30, 18)))).ToArray();
        var v = new ushort[n]; var s = new ushort[n];
        HalfKernel.ToHalf(x, v);
        HalfKernel.ToHalfScalar(x, s);
        Assert.Equal(s, v);
    }

    /// <summary>Vector and scalar half conversion agree on 16.7M float32 bit patterns: every value of the top 24 bits (low 8 bits derived from them).</summary>
    [Fact]
    public void HalfVectorEqualsScalarAcrossBitPatterns()
    {
        const int N = 1 << 16;
        var x = new float[N];
        var v = new ushort[N]; var s = new ushort[N];
        for (uint hi = 0; hi < (1u << 8); hi++)
        {
            for (uint k = 0; k < N; k++) x[k] = BitConverter.UInt32BitsToSingle((hi << 24) | (k << 8) | (k & 0xFF));
            HalfKernel.ToHalf(x, v);
            HalfKernel.ToHalfScalar(x, s);
            if (!v.AsSpan().SequenceEqual(s)) Assert.Equal(s, v);
        }
    }

    /// <summary>The half conversion agrees with .NET's own IEEE conversion on every finite float32 pattern sampled.</summary>
    [Fact]
    public void HalfBitsAgreeWithSystemHalfOnNonNaN()
    {
        var rng = new Random(7);
        for (int i = 0; i < 200_000; i++)
        {
            uint bits = (uint)rng.NextInt64(0, 1L << 32);
            float f = BitConverter.UInt32BitsToSingle(bits);
            if (float.IsNaN(f)) continue;
            Assert.Equal(BitConverter.HalfToUInt16Bits((Half)f), HalfKernel.ToHalfBits(f));
        }
        for (int h = 0; h < 65536; h++)
        {
            var half = BitConverter.UInt16BitsToHalf((ushort)h);
            if (Half.IsNaN(half)) continue;
            Assert.Equal(BitConverter.SingleToUInt32Bits((float)half), BitConverter.SingleToUInt32Bits(HalfKernel.FromHalfBits((ushort)h)));
        }
    }
}
