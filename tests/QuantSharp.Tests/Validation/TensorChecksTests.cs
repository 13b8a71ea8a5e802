using QuantSharp.Validation;

namespace QuantSharp.Tests.Validation;

/// <summary>The vectorized checks against their scalar definitions for every length 0..256 (and a long one).</summary>
public class TensorChecksTests
{
    private static float[] Data(int n, int seed)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(r.NextDouble() * 20 - 10)).ToArray();
    }

    public static IEnumerable<object[]> Lengths() => Enumerable.Range(0, 257).Append(10_001).Select(n => new object[] { n });

    [Theory]
    [MemberData(nameof(Lengths))]
    public void SpanKernelsMatchScalarDefinitions(int n)
    {
        float[] x = Data(n, n), d = Data(n, n + 1000);
        double signal = 0, noise = 0;
        for (int i = 0; i < n; i++) { signal += (double)x[i] * x[i]; noise += ((double)x[i] - d[i]) * ((double)x[i] - d[i]); }
        var acc = new SqnrAccumulator();
        acc.Add(x, d);
        Assert.Equal(signal, acc.Signal, signal * 1e-5 + 1e-9);
        Assert.Equal(noise, acc.Noise, noise * 1e-5 + 1e-9);

        if (n > 0)
        {
            var (min, max) = TensorChecks.MinMax(x);
            Assert.Equal(x.Min(), min);
            Assert.Equal(x.Max(), max);
            foreach (int at in new[] { 0, n / 2, n - 1 })
            {
                foreach (float bad in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity })
                {
                    var y = (float[])x.Clone();
                    y[at] = bad;
                    y[n - 1 - at] = bad;
                    Assert.Equal(at == n - 1 - at ? 1 : 2, TensorChecks.NonFiniteCount(y));
                }
            }
        }
        Assert.Equal(0, TensorChecks.NonFiniteCount(x));
    }
}
