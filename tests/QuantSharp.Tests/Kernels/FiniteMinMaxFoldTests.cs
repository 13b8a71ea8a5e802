using QuantSharp.Kernels;

namespace QuantSharp.Tests.Kernels;

/// <summary>The observers' finite min/max fold (MinMaxKernel.FoldFinite) against its scalar specification, for every length 0..256.</summary>
public class FiniteMinMaxFoldTests
{
    [Fact]
    public void VectorPathMatchesScalarForEveryLength()
    {
        var rng = new Random(7);
        for (int n = 0; n <= 256; n++)
        {
            float[] x = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 200 - 100)).ToArray();
            float vMin = float.PositiveInfinity, vMax = float.NegativeInfinity;
            float sMin = float.PositiveInfinity, sMax = float.NegativeInfinity;
            Assert.True(MinMaxKernel.FoldFinite(x, ref vMin, ref vMax));
            if (n > 0) (sMin, sMax) = MinMaxKernel.MinMaxScalar(x);
            Assert.Equal(sMin, vMin);
            Assert.Equal(sMax, vMax);
            if (n > 0)
            {
                Assert.Equal(x.Min(), vMin);
                Assert.Equal(x.Max(), vMax);
            }
        }
    }

    [Fact]
    public void NonFiniteIsFoundAtEveryPosition()
    {
        foreach (float bad in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity })
        {
            for (int n = 1; n <= 70; n++)
            {
                for (int at = 0; at < n; at++)
                {
                    float[] x = Enumerable.Range(0, n).Select(i => (float)i).ToArray();
                    x[at] = bad;
                    float lo = float.PositiveInfinity, hi = float.NegativeInfinity;
                    Assert.False(MinMaxKernel.FoldFinite(x, ref lo, ref hi));
                    Assert.Equal(at, MinMaxKernel.FirstNonFinite(x));
                }
            }
        }
    }
}
