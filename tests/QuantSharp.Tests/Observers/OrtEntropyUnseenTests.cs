using System.Text.Json;
using CsCheck;
using QuantSharp.Observers;

namespace QuantSharp.Tests.Observers;

/// <summary>
/// ONNX Runtime entropy thresholds on inputs that are not in ../shared/reference: Gaussian-like data of other sizes
/// and seeds, vectors with outliers, and data collected in three batches. The expected thresholds come from
/// <c>scripts/ort-entropy-reference.py</c>, an independent NumPy re-derivation of ONNX Runtime 1.30's
/// <c>HistogramCollector</c> (it reproduces every shared-reference entropy case), run once into
/// <c>Data/ort-entropy-unseen.json</c>; the inputs are regenerated here by the same integer generator.
/// </summary>
public class OrtEntropyUnseenTests
{
    private static readonly Lazy<JsonElement> s_cases = new(() => JsonDocument.Parse(File.ReadAllBytes(
        Path.Combine(Reference.RepoRoot, "tests", "QuantSharp.Tests", "Observers", "Data", "ort-entropy-unseen.json"))).RootElement.GetProperty("cases"));

    public static TheoryData<string> Cases()
    {
        var data = new TheoryData<string>();
        foreach (var c in s_cases.Value.EnumerateObject()) data.Add(c.Name);
        return data;
    }

    /// <summary>SplitMix64, as the script: uniform doubles from the top 53 bits.</summary>
    private sealed class SplitMix64(ulong seed)
    {
        private ulong _state = seed;

        public ulong Next()
        {
            ulong z = _state += 0x9E3779B97F4A7C15;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
            return z ^ (z >> 31);
        }

        public double Uniform() => (Next() >> 11) * (1.0 / (1UL << 53));
    }

    /// <summary>Irwin-Hall sums of 12 uniforms (mean 0, variance 1) times sigma, then outliers multiplied by 8.</summary>
    internal static float[] Input(ulong seed, int n, double sigma, int outliers)
    {
        var rng = new SplitMix64(seed);
        var x = new float[n];
        for (int i = 0; i < n; i++)
        {
            double g = 0;
            for (int k = 0; k < 12; k++) g += rng.Uniform();
            x[i] = (float)((g - 6.0) * sigma);
        }
        for (int o = 0; o < outliers; o++)
        {
            int k = (int)(rng.Next() % (ulong)n);
            x[k] *= 8f;
        }
        return x;
    }

    private static float[] Thresholds(float[] x, int batches, bool merge)
    {
        var observer = (ObserverBase)ObserverFactory.Create("histogram", new ObserverOptions { MergeBatches = merge });
        int size = x.Length / batches;
        for (int b = 0; b < batches; b++) observer.ObserveValues(x.AsSpan(b * size, size), [size]);
        return observer.ComputeQParams().Threshold!;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesTheNumPyDerivationBitForBit(string name)
    {
        var c = s_cases.Value.GetProperty(name);
        float[] x = Input(c.GetProperty("seed").GetUInt64(), c.GetProperty("n").GetInt32(), c.GetProperty("sigma").GetDouble(), c.GetProperty("outliers").GetInt32());
        int batches = c.GetProperty("batches").GetInt32();
        float[] expected = c.GetProperty("thresholds").EnumerateArray().Select(e => (float)e.GetDouble()).ToArray();
        float[] merged = c.GetProperty("merged_thresholds").EnumerateArray().Select(e => (float)e.GetDouble()).ToArray();

        // Default: all batches are one collection (ONNX Runtime's quantize_static); MergeBatches: one collect per batch.
        Assert.Equal(expected, Thresholds(x, batches, merge: false));
        Assert.Equal(merged, Thresholds(x, batches, merge: true));
    }

    [Fact]
    public void BatchesAreOneCollectionUnlessMerged()
    {
        // Where a later batch exceeds the range of the first, the merged histogram has other bins: the reference
        // cases include such inputs, and the two answers really differ there.
        int differ = 0;
        foreach (var c in s_cases.Value.EnumerateObject())
        {
            if (c.Value.GetProperty("merged_bins").GetInt32() == 2048) continue;
            Assert.NotEqual(c.Value.GetProperty("thresholds").ToString(), c.Value.GetProperty("merged_thresholds").ToString());
            differ++;
        }
        Assert.True(differ >= 2, $"only {differ} cases grow the merged histogram");
    }

    [Fact]
    public void ThresholdsDoNotDependOnHowTheDataIsBatched()
    {
        // One collection is the histogram of the concatenated data: any split, in any order, gives the same answer.
        Gen.Select(Gen.ULong, Gen.Int[300, 3000], Gen.Int[1, 6], Gen.Int[0, 4]).Sample((seed, n, batches, outliers) =>
        {
            float[] x = Input(seed, n, 2.0, outliers);
            var whole = (ObserverBase)ObserverFactory.Create("histogram", new ObserverOptions());
            whole.ObserveValues(x, [n]);
            var split = (ObserverBase)ObserverFactory.Create("histogram", new ObserverOptions());
            int size = (n + batches - 1) / batches;
            for (int start = ((n - 1) / size) * size; start >= 0; start -= size) // last batch first
                split.ObserveValues(x.AsSpan(start, Math.Min(size, n - start)), [Math.Min(size, n - start)]);
            Assert.Equal(whole.ComputeQParams().Threshold, split.ComputeQParams().Threshold);
        }, iter: 30);
    }

    [Fact]
    public void ScalingByAPowerOfTwoScalesTheThresholds()
    {
        // Every step is float32 arithmetic on values and edges that scale exactly by 2^k, and the counts do not
        // change: the chosen window is the same and its edges scale exactly.
        Gen.Select(Gen.ULong, Gen.Int[500, 4000], Gen.Int[-6, 6]).Sample((seed, n, k) =>
        {
            float[] x = Input(seed, n, 1.5, 3);
            float f = MathF.ScaleB(1f, k);
            float[] a = Thresholds(x, 1, merge: false);
            float[] b = Thresholds(x.Select(v => v * f).ToArray(), 1, merge: false);
            Assert.Equal(a.Select(v => v * f), b);
        }, iter: 20);
    }

    [Fact]
    public void TheWindowHoldsAtLeastTheQuantizedBinsAndStaysInTheData()
    {
        Gen.Select(Gen.ULong, Gen.Int[200, 3000], Gen.Int[0, 6]).Sample((seed, n, outliers) =>
        {
            float[] x = Input(seed, n, 3.0, outliers);
            float[] t = Thresholds(x, 1, merge: false);
            float max = x.Max(MathF.Abs), bin = 2 * max / 2048;
            Assert.InRange(t[0], x.Min(), t[1]);
            Assert.InRange(t[1], t[0], x.Max());
            // The narrowest window is 129 bins around zero (zero bin +-64: edges -64 and +65 bins of the histogram over
            // [-max|x|, max|x|]); each edge is then clipped to the data's min or max, as ONNX Runtime clips it, so a
            // window can be narrower than 129 bins only on a side where it ends at the data (seed 16001, n 230, 6
            // outliers: [-17.25, 44.75] with x.Min() = -17.25 and 64 bins = 31.5).
            Assert.True(t[0] == x.Min() || t[0] <= -63.99f * bin, $"window [{t[0]}, {t[1]}] starts above -64 bins of {bin} and above the data's min {x.Min()}");
            Assert.True(t[1] == x.Max() || t[1] >= 64.99f * bin, $"window [{t[0]}, {t[1]}] ends below 65 bins of {bin} and below the data's max {x.Max()}");
        }, iter: 30);
    }
}
