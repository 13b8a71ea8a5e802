namespace QuantSharp.Tests;

public class QuantSpecTests
{
    [Fact]
    public void DefaultsArePerTensorSymmetric()
    {
        var spec = new QuantSpec(QuantType.Int8);
        Assert.Equal(QuantScheme.Symmetric, spec.Scheme);
        Assert.IsType<PerTensor>(spec.Granularity);
        Assert.False(spec.ReduceRange);
        Assert.Equal(new QuantRange(-128, 127), spec.Range);
        Assert.Equal(new QuantRange(-64, 63), (spec with { ReduceRange = true }).Range);
    }

    [Fact]
    public void GroupSizeThatDoesNotDivideNamesSizesAndSuggestsDivisors()
    {
        var spec = new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(48));
        var ex = Assert.Throws<ArgumentException>(() => spec.Validate([64, 128]));
        Assert.Contains("Group size 48", ex.Message);
        Assert.Contains("last dimension 128", ex.Message);
        Assert.Contains("[64, 128]", ex.Message);
        Assert.Contains("32 or 64", ex.Message); // 32 divides 128 below 48, 64 above
        spec.Validate([64, 96]); // 48 divides 96
    }

    [Fact]
    public void AxisOutOfRangeSaysWhichAxesExist()
    {
        var ex = Assert.Throws<ArgumentException>(() => new QuantSpec(QuantType.Int8, granularity: new PerAxis(2)).Validate([4, 5]));
        Assert.Contains("axis 2", ex.Message);
        Assert.Contains("0 to 1", ex.Message);
        Assert.Throws<ArgumentException>(() => new QuantSpec(QuantType.Int8, granularity: new PerAxis(-1)).Validate([4, 5]));
        Assert.Throws<ArgumentException>(() => new QuantSpec(QuantType.Int8, granularity: new PerAxis(0)).Validate([]));
        new QuantSpec(QuantType.Int8, granularity: new PerAxis(1)).Validate([4, 5]);
    }

    [Theory]
    [InlineData(QuantType.Float16)]
    [InlineData(QuantType.BFloat16)]
    public void FloatTypesTakeNoGranularityOrReduceRange(QuantType type)
    {
        var ex = Assert.Throws<ArgumentException>(() => new QuantSpec(type, granularity: new PerAxis(0)).Validate([4, 4]));
        Assert.Contains("takes no granularity", ex.Message);
        Assert.Throws<ArgumentException>(() => new QuantSpec(type, granularity: new PerGroup(2)).Validate([4, 4]));
        Assert.Throws<ArgumentException>(() => new QuantSpec(type, reduceRange: true).Validate([4, 4]));
        new QuantSpec(type).Validate([4, 4]);
    }

    [Fact]
    public void ReduceRangeOnlyForEightBit()
    {
        var ex = Assert.Throws<ArgumentException>(() => new QuantSpec(QuantType.Int4, reduceRange: true).Validate([8]));
        Assert.Contains("8-bit", ex.Message);
    }

    [Fact]
    public void NonPositiveGroupSizeIsRejected()
    {
        var ex = Assert.Throws<ArgumentException>(() => new QuantSpec(QuantType.Int4, granularity: new PerGroup(0)).Validate([8, 8]));
        Assert.Contains("positive", ex.Message);
    }

    [Fact]
    public void ParameterShapes()
    {
        long[] shape = [6, 8, 16];
        Assert.Empty(new QuantSpec(QuantType.Int8).ParameterShape(shape));
        Assert.Equal([8L], new QuantSpec(QuantType.Int8, granularity: new PerAxis(1)).ParameterShape(shape));
        Assert.Equal([6L, 8, 4], new QuantSpec(QuantType.Int4, granularity: new PerGroup(4)).ParameterShape(shape));
        Assert.Equal(6 * 8 * 4, new QuantSpec(QuantType.Int4, granularity: new PerGroup(4)).ParameterCount(shape));
    }

    [Theory]
    [InlineData("group:0", "the group size must be positive, got 0")]
    [InlineData("group:-1", "the group size must be positive, got -1")]
    [InlineData("group:abc", "Unknown granularity 'group:abc'")]
    [InlineData("per-row", "Unknown granularity 'per-row'")]
    public void BadGranularityTextNamesTheProblem(string text, string expected)
    {
        var ex = Assert.Throws<ArgumentException>(() => Granularity.Parse(text));
        Assert.Contains(expected, ex.Message);
        Assert.Equal(new PerGroup(32), Granularity.Parse("group:32"));
    }
}
