using QuantSharp.Kernels;
using static QuantSharp.Kernels.QuantizeKernel;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// Re-runs the vector-vs-scalar comparisons with the kernels capped at 128-bit vectors and at scalar only, so that
/// every path runs on this machine (in addition to DOTNET_EnableAVX2=0 / DOTNET_EnableHWIntrinsic=0 runs).
/// </summary>
[Collection(SimdWidthCollection.Name)]
public class KernelWidthTests
{
    [Theory]
    [InlineData(128)]
    [InlineData(0)]
    public void NarrowPathsEqualScalar(int maxBits)
    {
        using var cap = new SimdWidthCap(maxBits);
        var vectorTests = new KernelVectorTests();
        for (int n = 0; n <= 256; n++)
        {
            vectorTests.QuantizeVectorEqualsScalar(n);
            vectorTests.PerElementVectorEqualsScalar(n);
            vectorTests.DequantizeVectorEqualsScalar(n);
            vectorTests.MinMaxAndBFloat16VectorEqualScalar(n);
            vectorTests.HalfVectorEqualsScalar(n);
        }
    }
}

/// <summary>
/// <see cref="HalfKernel.AllFinite"/> at every vector width and in scalars: an infinity or NaN of either sign at every
/// position of every length up to 100 (whole vectors and tails) is found; the largest finite halves and subnormals are not
/// taken for one.
/// </summary>
[Collection(SimdWidthCollection.Name)]
public unsafe class AllFiniteTests
{
    [Theory]
    [InlineData(512)]
    [InlineData(256)]
    [InlineData(128)]
    [InlineData(0)]
    public void FindsEveryInfinityAndNaN(int maxBits)
    {
        using var cap = new SimdWidthCap(maxBits);
        ushort[] finite = [0x7BFF, 0xFBFF, 0x03FF, 0x8001, 0x3C00, 0x0000, 0x8000];
        ushort[] special = [0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFFFF];
        for (int n = 0; n <= 100; n++)
        {
            var h = new ushort[n];
            for (int i = 0; i < n; i++) h[i] = finite[i % finite.Length];
            fixed (ushort* p = h)
            {
                Assert.True(HalfKernel.AllFinite(p, n), $"{maxBits} bits, length {n}: finite halves taken for a special");
                for (int at = 0; at < n; at++)
                {
                    ushort kept = h[at];
                    h[at] = special[(at + n) % special.Length];
                    Assert.False(HalfKernel.AllFinite(p, n), $"{maxBits} bits, length {n}: 0x{h[at]:X4} at {at} missed");
                    h[at] = kept;
                }
            }
        }
    }
}

/// <summary>
/// <see cref="KernelWidthTests"/> changes the process-wide <see cref="Simd.MaxBits"/>; a test that asks for an explicit
/// kernel path (V256, V512) while it is capped gets "not supported on this CPU". This collection runs alone, after the
/// parallel tests.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SimdWidthCollection
{
    /// <summary>The collection's name.</summary>
    public const string Name = "Simd width cap (process-wide)";
}

/// <summary>
/// <see cref="HalfLanes.ScaleUp"/>: every value times 2^112 exactly (subnormal ones included), and true only while every
/// magnitude is below 2^16 (the largest float below it is taken; 2^16, infinities and NaNs at any position, in the vector
/// body or the tail, are not).
/// </summary>
public unsafe class ScaleUpTests
{
    [Fact]
    public void ScalesExactlyBelow2Pow16()
    {
        foreach (int n in new[] { 1, 7, 16, 37 })
        {
            var x = new float[n];
            for (int i = 0; i < n; i++) x[i] = (i % 3) switch { 0 => 65535.996f, 1 => -1.4e-45f, _ => (i - 20) * 0.37f };
            var y = new float[n];
            fixed (float* px = x) fixed (float* py = y)
            {
                Assert.True(HalfLanes.ScaleUp(px, py, n), $"length {n}");
                for (int i = 0; i < n; i++) Assert.Equal((double)x[i] * Math.Pow(2, 112), (double)y[i]);
                foreach (float bad in new[] { 65536f, -65536f, float.PositiveInfinity, float.NaN })
                    for (int at = 0; at < n; at++)
                    {
                        float kept = x[at];
                        x[at] = bad;
                        Assert.False(HalfLanes.ScaleUp(px, py, n), $"length {n}: {bad} at {at} taken");
                        x[at] = kept;
                    }
            }
        }
    }
}

/// <summary>
/// <see cref="PackedMatMul.AddRun"/> (the packed kernels' output runs with their bias) at every vector width and in
/// scalars: the bits of <c>src[j] + bias</c> for every length up to 70 (whole vectors, tails from
/// <c>n - Count</c>, runs shorter than a vector), nothing written before or past the run.
/// </summary>
[Collection(SimdWidthCollection.Name)]
public unsafe class AddRunTests
{
    [Theory]
    [InlineData(512)]
    [InlineData(256)]
    [InlineData(128)]
    [InlineData(0)]
    public void AddsTheBiasToEveryValueOfTheRunAndNothingElse(int maxBits)
    {
        using var cap = new SimdWidthCap(maxBits);
        var random = new Random(51);
        const float Bias = 0.1f, Sentinel = -12345.5f;
        for (int n = 0; n <= 70; n++)
        {
            // Values of every magnitude, so that the sums round (a 0.1 bias onto 1e7, onto 1e-7 and onto -0.1).
            var src = new float[n];
            for (int j = 0; j < n; j++) src[j] = (float)((random.NextDouble() - 0.5) * Math.Pow(10, random.Next(-7, 8)));
            if (n > 3) src[3] = -Bias;
            var dst = new float[n + 2];
            Array.Fill(dst, Sentinel);
            fixed (float* s = src, d = dst) PackedMatMul.AddRun(s, d + 1, n, Bias);
            Assert.Equal(Sentinel, dst[0]);
            Assert.Equal(Sentinel, dst[n + 1]);
            for (int j = 0; j < n; j++)
                Assert.True(BitConverter.SingleToInt32Bits(src[j] + Bias) == BitConverter.SingleToInt32Bits(dst[j + 1]),
                    $"{maxBits} bits, length {n}, value {j}: {dst[j + 1]} for {src[j]} + {Bias}");
        }
    }
}
