using QuantSharp.Primitives;

namespace QuantSharp.Tests;

public class QuantRangeTests
{
    [Theory]
    [InlineData(QuantType.Int8, false, -128, 127)]
    [InlineData(QuantType.UInt8, false, 0, 255)]
    [InlineData(QuantType.Int8, true, -64, 63)]
    [InlineData(QuantType.UInt8, true, 0, 127)]
    [InlineData(QuantType.Int4, false, -8, 7)]
    [InlineData(QuantType.UInt4, false, 0, 15)]
    [InlineData(QuantType.Int2, false, -2, 1)]
    public void RangesMatchPyTorch(QuantType type, bool reduce, int qmin, int qmax)
    {
        Assert.Equal(new QuantRange(qmin, qmax), QuantRange.For(type, reduce));
    }
}
