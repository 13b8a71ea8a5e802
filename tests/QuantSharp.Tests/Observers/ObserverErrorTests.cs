using QuantSharp.Observers;
using TorchSharp;

namespace QuantSharp.Tests.Observers;

public class ObserverErrorTests
{
    public static IEnumerable<object[]> AllObservers() => ObserverFactory.Names.Select(n => new object[] { n });

    [Theory]
    [MemberData(nameof(AllObservers))]
    public void NaNIsRefusedNamingTheTensor(string name)
    {
        var observer = ObserverFactory.Create(name, new ObserverOptions { Name = "layer1.weight" });
        using var x = torch.tensor(new float[] { 1f, float.NaN, 2f });
        var ex = Assert.Throws<ArgumentException>(() => observer.Observe(x));
        Assert.Contains("layer1.weight", ex.Message);
        Assert.Contains("NaN", ex.Message);
        Assert.Contains("index 1", ex.Message);
        Assert.Equal(0, observer.Count);
    }

    [Theory]
    [MemberData(nameof(AllObservers))]
    public void InfinityIsRefusedNamingTheTensor(string name)
    {
        var observer = ObserverFactory.Create(name, new ObserverOptions { Name = "act.out" });
        using var x = torch.tensor(new float[] { 1f, 2f, float.NegativeInfinity });
        var ex = Assert.Throws<ArgumentException>(() => observer.Observe(x));
        Assert.Contains("act.out", ex.Message);
        Assert.Contains("-infinity", ex.Message);
    }

    [Theory]
    [MemberData(nameof(AllObservers))]
    public void EmptyTensorIsAnError(string name)
    {
        var observer = ObserverFactory.Create(name, new ObserverOptions { Name = "empty.t" });
        using var x = torch.zeros(0, 4);
        var ex = Assert.Throws<ArgumentException>(() => observer.Observe(x));
        Assert.Contains("empty.t", ex.Message);
        Assert.Contains("empty", ex.Message);
        // Nothing observed: no silent scale of 1.
        Assert.Throws<InvalidOperationException>(() => observer.ComputeQParams());
    }

    [Theory]
    [InlineData(0f)]
    [InlineData(-0.5f)]
    [InlineData(1.0001f)]
    [InlineData(float.NaN)]
    public void AveragingConstantOutsideZeroOneIsRefused(float c)
    {
        var ex = Assert.Throws<ArgumentException>(() =>
            ObserverFactory.Create("moving-average", new ObserverOptions { AveragingConstant = c }));
        Assert.Contains("(0, 1]", ex.Message);
    }

    [Fact]
    public void AveragingConstantOneIsAllowedAndTracksTheLastBatch()
    {
        var observer = ObserverFactory.Create("moving-average", new ObserverOptions { AveragingConstant = 1f });
        using var a = torch.tensor(new float[] { -4f, 8f });
        using var b = torch.tensor(new float[] { -1f, 2f });
        observer.Observe(a);
        observer.Observe(b);
        var r = observer.ComputeQParams();
        // min += 1 * (min_now - min) gives exactly the last batch's range.
        Assert.Equal([-1f], r.Min);
        Assert.Equal([2f], r.Max);
    }

    [Fact]
    public void IntegerTensorIsRefused()
    {
        var observer = ObserverFactory.Create("minmax", new ObserverOptions { Name = "ids" });
        using var x = torch.tensor(new int[] { 1, 2, 3 });
        var ex = Assert.Throws<ArgumentException>(() => observer.Observe(x));
        Assert.Contains("ids", ex.Message);
        Assert.Contains("floating-point", ex.Message);
    }

    [Fact]
    public void UnknownObserverNameListsTheKnownOnes()
    {
        var ex = Assert.Throws<ArgumentException>(() => ObserverFactory.Create("kl"));
        Assert.Contains("minmax", ex.Message);
        Assert.Contains("percentile", ex.Message);
    }

    [Theory]
    [InlineData("histogram")]
    [InlineData("percentile")]
    public void HistogramObserversArePerTensorOnly(string name)
    {
        var ex = Assert.Throws<ArgumentException>(() => ObserverFactory.Create(name, new ObserverOptions { Axis = 0 }));
        Assert.Contains("per-tensor", ex.Message);
    }

    [Fact]
    public void GroupSizeMustDivideTheLastDimension()
    {
        var observer = ObserverFactory.Create("minmax", new ObserverOptions { GroupSize = 32, Name = "w" });
        using var x = torch.ones(4, 48);
        var ex = Assert.Throws<ArgumentException>(() => observer.Observe(x));
        Assert.Contains("group size 32", ex.Message);
        Assert.Contains("48", ex.Message);
    }

    [Fact]
    public void AxisOutOfRangeIsRefused()
    {
        var observer = ObserverFactory.Create("minmax", new ObserverOptions { Axis = 2, Name = "w" });
        using var x = torch.ones(4, 8);
        var ex = Assert.Throws<ArgumentException>(() => observer.Observe(x));
        Assert.Contains("no axis 2", ex.Message);
    }

    [Fact]
    public void ChannelCountMustStayTheSame()
    {
        var observer = ObserverFactory.Create("minmax", new ObserverOptions { Axis = 0, Name = "w" });
        using var a = torch.ones(4, 8);
        using var b = torch.ones(5, 8);
        observer.Observe(a);
        var ex = Assert.Throws<ArgumentException>(() => observer.Observe(b));
        Assert.Contains("channel", ex.Message);
    }

    [Fact]
    public void ResetForgetsEverything()
    {
        var observer = ObserverFactory.Create("minmax");
        using var a = torch.tensor(new float[] { -10f, 10f });
        using var b = torch.tensor(new float[] { -1f, 1f });
        observer.Observe(a);
        observer.Reset();
        Assert.Equal(0, observer.Count);
        Assert.Throws<InvalidOperationException>(() => observer.ComputeQParams());
        observer.Observe(b);
        var r = observer.ComputeQParams();
        Assert.Equal([-1f], r.Min);
        Assert.Equal([1f], r.Max);
    }
}

public class ObserverEdgeCaseTests
{
    public static IEnumerable<object[]> Configurations()
    {
        foreach (var name in ObserverFactory.Names)
            foreach (var scheme in new[] { QuantScheme.Symmetric, QuantScheme.Affine })
                foreach (float value in new[] { 0f, 3f, -2.5f })
                    yield return [name, scheme, value];
    }

    [Theory]
    [MemberData(nameof(Configurations))]
    public void ConstantTensorsGiveTheirOwnRange(string name, QuantScheme scheme, float value)
    {
        var observer = ObserverFactory.Create(name, new ObserverOptions { Scheme = scheme, Name = "c" });
        using var x = torch.full(8, 8, value);
        observer.Observe(x);
        observer.Observe(x);
        var r = observer.ComputeQParams();
        Assert.Equal([value], r.Min);
        Assert.Equal([value], r.Max);
        if (r.Threshold is { } th)
        {
            // Symmetric percentile works on |x|: its range may be (-|c|, |c|) clipped to the data, i.e. [c, c].
            Assert.Equal(value, th[0]);
            Assert.Equal(value, th[1]);
        }
        Assert.True(r.Scale[0] > 0);
        Assert.InRange(r.ZeroPoint[0], -128, 255);
    }
}
