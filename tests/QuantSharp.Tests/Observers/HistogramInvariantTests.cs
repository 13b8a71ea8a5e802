using QuantSharp.Observers;
using TorchSharp;

namespace QuantSharp.Tests.Observers;

/// <summary>Identities of the histogram bookkeeping that follow from the algorithms themselves.</summary>
public class HistogramInvariantTests
{
    private static float[] Gauss()
    {
        using var file = Reference.OpenTensors();
        using var x = file.ReadTensor("gauss/input");
        return x.flatten().data<float>().ToArray();
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void OrtSameRangeBatchesAddCounts(bool mergeEachBatch)
    {
        float[] x = Gauss();
        var once = new OrtHistogram(2048, absolute: false);
        once.Collect(x);
        var twice = new OrtHistogram(2048, absolute: false, mergeEachBatch);
        twice.Collect(x);
        twice.Collect(x);
        Assert.Equal(once.Counts.Select(c => 2 * c), twice.Counts);
        Assert.Equal(once.Edges, twice.Edges);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void OrtBatchesWithoutMergingAreOneHistogramOfAllValues(bool absolute)
    {
        // ONNX Runtime's calibrators collect every batch at once: the histogram of the concatenation, 2048 bins.
        float[] x = Gauss();
        float[] small = x.Select(v => v * 0.25f).ToArray();
        var h = new OrtHistogram(2048, absolute);
        h.Collect(small);
        h.Collect(x);
        var whole = new OrtHistogram(2048, absolute);
        whole.Collect([.. small, .. x]);
        Assert.Equal(2048, h.Counts.Length);
        Assert.Equal(whole.Counts, h.Counts);
        Assert.Equal(whole.Edges, h.Edges);
    }

    [Fact]
    public void OrtGrowsByWholeBinsAndKeepsEveryCount()
    {
        float[] x = Gauss();
        float[] small = x.Select(v => v * 0.25f).ToArray();
        var h = new OrtHistogram(2048, absolute: false, mergeEachBatch: true);
        h.Collect(small);
        long[] before = (long[])h.Counts.Clone();
        float oldWidth = h.Edges[1] - h.Edges[0];
        h.Collect(x);
        int grown = h.Counts.Length - 2048;
        Assert.True(grown > 0 && grown % 2 == 0, $"grew by {grown} bins");
        Assert.Equal((long)2 * x.Length, h.Counts.Sum());
        // The new range covers the data and keeps the old bin width (to float32 rounding of the edges).
        Assert.True(h.Edges[0] <= x.Min() && h.Edges[^1] >= x.Max());
        Assert.Equal(oldWidth, h.Edges[1] - h.Edges[0], oldWidth * 1e-3f);
        // Each old count still sits in the middle block of bins, under the new ones.
        var (fresh, _) = OrtHistogram.UniformHistogram(x, h.Counts.Length, h.Edges[0], h.Edges[^1]);
        for (int i = 0; i < 2048; i++) Assert.Equal(before[i] + fresh[grown / 2 + i], h.Counts[grown / 2 + i]);
    }

    [Fact]
    public void OrtAbsoluteModeExtendsToLargerBatches()
    {
        float[] x = Gauss();
        var h = new OrtHistogram(2048, absolute: true, mergeEachBatch: true);
        h.Collect(x.Select(v => v * 0.5f).ToArray());
        h.Collect(x);
        Assert.Equal((long)2 * x.Length, h.Counts.Sum());
        Assert.True(h.Edges[^1] >= x.Max(MathF.Abs));
        Assert.Equal(h.Counts.Length + 1, h.Edges.Length);
    }

    [Fact]
    public void TorchHistogramOfChunksEqualsWholeWhenTheFirstChunkHoldsTheRange()
    {
        float[] x = Gauss();
        int lo = Array.IndexOf(x, x.Min()), hi = Array.IndexOf(x, x.Max());
        // Move min and max to the front so that the first chunk fixes the range and no re-binning happens.
        var reordered = x.ToList();
        float a = x[lo], b = x[hi];
        reordered.Remove(a);
        reordered.Remove(b);
        reordered.InsertRange(0, [a, b]);
        float[] y = reordered.ToArray();

        var whole = new TorchHistogram(2048, 256);
        whole.Observe(y);
        var chunked = new TorchHistogram(2048, 256);
        for (int i = 0; i < y.Length; i += 1000) chunked.Observe(y.AsSpan(i, Math.Min(1000, y.Length - i)));
        Assert.Equal(whole.Histogram, chunked.Histogram);
        Assert.Equal(whole.L2Search(), chunked.L2Search());
    }

    [Fact]
    public void TorchRebinningKeepsTheTotalCount()
    {
        float[] x = Gauss();
        var h = new TorchHistogram(2048, 256);
        h.Observe(x.Select(v => v * 0.3f + 0.1f).ToArray());
        h.Observe(x);
        h.Observe(x.Select(v => v * 2f).ToArray());
        // Counts are spread in 1/16ths: the float32 sum is exact at this size.
        Assert.Equal(3f * x.Length, h.Histogram.Sum());
        Assert.Equal(2f * x.Min(), h.Min);
        Assert.Equal(2f * x.Max(), h.Max);
    }

    [Fact]
    public void NegativeAxisCountsFromTheEnd()
    {
        var exp = Reference.Json.GetProperty("cases").GetProperty("gauss").GetProperty("observers").GetProperty("perchannel_axis1_symmetric_qint8");
        var observer = ObserverFactory.Create("minmax", new ObserverOptions { Scheme = QuantScheme.Symmetric, Axis = -1 });
        using (var file = Reference.OpenTensors())
        using (var x = file.ReadTensor("gauss/input"))
            observer.Observe(x);
        Assert.Equal(ReferenceObserverSpecs.Floats(exp.GetProperty("scale")), observer.ComputeQParams().Scale);
    }

    [Fact]
    public void NonContiguousAndDoubleInputsAreObservedAsFloat32()
    {
        using var file = Reference.OpenTensors();
        using var x = file.ReadTensor("gauss/input");
        using var t = x.t();                    // non-contiguous view
        using var d = x.to(torch.float64);      // float64 holding the same float32 values
        var exp = Reference.Json.GetProperty("cases").GetProperty("gauss").GetProperty("observers").GetProperty("perchannel_axis1_symmetric_qint8");
        var a = ObserverFactory.Create("minmax", new ObserverOptions { Scheme = QuantScheme.Symmetric, Axis = 0 });
        a.Observe(t);
        var b = ObserverFactory.Create("minmax", new ObserverOptions { Scheme = QuantScheme.Symmetric, Axis = 1 });
        b.Observe(d);
        float[] expected = ReferenceObserverSpecs.Floats(exp.GetProperty("scale"));
        Assert.Equal(expected, a.ComputeQParams().Scale);
        Assert.Equal(expected, b.ComputeQParams().Scale);
    }
}
