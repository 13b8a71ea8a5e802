using CsCheck;
using QuantSharp.Observers;

namespace QuantSharp.Tests.Observers;

/// <summary>Properties that follow from the definitions (CsCheck, random shapes and splits).</summary>
public class ObserverPropertyTests
{
    private static ObserverBase Make(string name, ObserverOptions options) => (ObserverBase)ObserverFactory.Create(name, options);

    [Fact]
    public void MinMaxOfChunksEqualsMinMaxOfWhole()
    {
        // Running min/max is exact: any split along dim 0 gives the same parameters, per tensor and per channel.
        Gen.Select(Gen.Int[1, 12], Gen.Int[1, 9], Gen.Int[1, 5], Gen.Bool, Gen.Float[-1000f, 1000f].Array[108])
            .Sample((rows, cols, chunks, perChannel, pool) =>
            {
                float[] x = Enumerable.Range(0, rows * cols).Select(i => pool[i % pool.Length] * (1 + i % 7)).ToArray();
                var options = new ObserverOptions { Axis = perChannel ? 1 : null };
                var whole = Make("minmax", options);
                whole.ObserveValues(x, [rows, cols]);
                var split = Make("minmax", options);
                int size = (rows + chunks - 1) / chunks;
                for (int r = 0; r < rows; r += size)
                {
                    int n = Math.Min(size, rows - r);
                    split.ObserveValues(x.AsSpan(r * cols, n * cols), [n, cols]);
                }
                var a = whole.ComputeQParams();
                var b = split.ComputeQParams();
                Assert.Equal(a.Scale, b.Scale);
                Assert.Equal(a.ZeroPoint, b.ZeroPoint);
                Assert.Equal(a.Min, b.Min);
                Assert.Equal(a.Max, b.Max);
            });
    }

    [Fact]
    public void GroupsAreChannelsOfTheGroupView()
    {
        Gen.Select(Gen.Int[1, 6], Gen.Int[1, 4], Gen.Int[1, 8], Gen.Bool, Gen.Float[-50f, 50f].Array[192])
            .Sample((rows, groupsPerRow, groupSize, symmetric, x0) =>
            {
                int cols = groupsPerRow * groupSize;
                float[] x = x0.AsSpan(0, rows * cols).ToArray();
                var scheme = symmetric ? QuantScheme.Symmetric : QuantScheme.Affine;
                var grouped = Make("minmax", new ObserverOptions { Type = QuantType.Int4, Scheme = scheme, GroupSize = groupSize });
                grouped.ObserveValues(x, [rows, cols]);
                var channels = Make("minmax", new ObserverOptions { Type = QuantType.Int4, Scheme = scheme, Axis = 0 });
                channels.ObserveValues(x, [rows * groupsPerRow, groupSize]);
                Assert.Equal(channels.ComputeQParams().Scale, grouped.ComputeQParams().Scale);
                Assert.Equal(channels.ComputeQParams().ZeroPoint, grouped.ComputeQParams().ZeroPoint);
            });
    }

    [Fact]
    public void RangesAlwaysContainZeroAndRepresentIt()
    {
        // Every chosen zero point lies in the integer range, and zero is exactly representable.
        Gen.Select(Gen.Int[0, 3], Gen.Bool, Gen.Float[-1e4f, 1e4f].Array[1, 300])
            .Sample((t, symmetric, x) =>
            {
                var type = new[] { QuantType.Int8, QuantType.UInt8, QuantType.Int4, QuantType.UInt4 }[t];
                var options = new ObserverOptions { Type = type, Scheme = symmetric ? QuantScheme.Symmetric : QuantScheme.Affine };
                foreach (var name in ObserverFactory.Names)
                {
                    var o = Make(name, options);
                    o.ObserveValues(x, [x.Length]);
                    var r = o.ComputeQParams();
                    Assert.InRange(r.ZeroPoint[0], options.Range.QMin, options.Range.QMax);
                    Assert.True(r.Scale[0] > 0 && float.IsFinite(r.Scale[0]));
                    Assert.Equal(x.Min(), r.Min[0]);
                    Assert.Equal(x.Max(), r.Max[0]);
                    if (r.Threshold is { } th)
                        Assert.True(th[0] >= x.Min() && th[1] <= x.Max() && th[0] <= th[1], $"{name}: threshold [{th[0]}, {th[1]}] outside data");
                }
            });
    }
}
