using System.Runtime.InteropServices;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Tensors;

/// <summary>QuantizedTensor's contract: storage layout, sizes, FromParts and errors.</summary>
public class QuantizedTensorTests
{
    [Fact]
    public void Int4DataIsPackedTwoPerByteLowNibbleFirst()
    {
        // Symmetric int4 with |max| = 7: scale = 7 / 7.5, values round to known integers.
        using var x = torch.tensor(new float[] { -7f, 7f, 0f, 1.0f, -1.0f }, [1, 5]);
        using var q = QuantizedTensor.Quantize(x, new QuantSpec(QuantType.Int4));
        Assert.Equal([1L, 3], q.Data.shape);
        Assert.Equal(ScalarType.Byte, q.Data.dtype);
        float s = 7f / 7.5f;
        Assert.Equal(s, q.ScaleValues[0]);
        int[] expected = new[] { -7f, 7f, 0f, 1f, -1f }.Select(v => Math.Clamp((int)MathF.Round(v * (1f / s)), -8, 7)).ToArray();
        Assert.Equal([-8, 7, 0, 1, -1], expected); // 7 / s = 7.5 rounds to 8, clamped to 7
        using var ints = q.IntegerValues();
        Assert.Equal(expected, MemoryMarshal.Cast<byte, int>(ints.bytes).ToArray());
        byte[] data = q.Data.bytes.ToArray();
        Assert.Equal((byte)((expected[0] & 0xF) | ((expected[1] & 0xF) << 4)), data[0]);
        Assert.Equal((byte)(expected[4] & 0xF), data[2]); // odd last dimension: high nibble padded with 0
        Assert.Null(q.ZeroPoint);
        Assert.Equal(3 + 4, q.StorageBytes); // 3 data bytes + one float32 scale
    }

    [Theory]
    [InlineData(QuantType.Int8, 1.0)]
    [InlineData(QuantType.UInt8, 1.0)]
    [InlineData(QuantType.Int4, 0.5)]
    [InlineData(QuantType.UInt4, 0.5)]
    [InlineData(QuantType.Int2, 0.25)]
    [InlineData(QuantType.UInt2, 0.25)]
    public void StorageBytesPerGroup(QuantType type, double bytesPerValue)
    {
        using var x = torch.randn(8, 64);
        var spec = new QuantSpec(type, QuantScheme.Affine, new PerGroup(32));
        using var q = QuantizedTensor.Quantize(x, spec);
        long groups = 8 * 64 / 32;
        Assert.Equal((long)(8 * 64 * bytesPerValue) + groups * 4 + groups * 4, q.StorageBytes);
        Assert.Equal([8L, 2], q.Scale!.shape);
        Assert.Equal([8L, 2], q.ZeroPoint!.shape);
        Assert.Equal(ScalarType.Int32, q.ZeroPoint.dtype);
        using var d = q.Dequantize();
        Assert.Equal(x.shape, d.shape);
    }

    [Fact]
    public void PerAxisOnMiddleAxisOfFourDimensions()
    {
        using var x = torch.randn(3, 5, 2, 4);
        using var q = QuantizedTensor.Quantize(x, new QuantSpec(QuantType.Int8, QuantScheme.Affine, new PerAxis(1)));
        Assert.Equal([5L], q.Scale!.shape);
        // Each channel's scale comes from that channel's own min/max.
        for (int c = 0; c < 5; c++)
        {
            using var ch = x.select(1, c);
            float mn = Math.Min(ch.min().item<float>(), 0f), mx = Math.Max(ch.max().item<float>(), 0f);
            Assert.Equal((mx - mn) / 255f, q.ScaleValues[c]);
        }
        using var d = q.Dequantize();
        using var err = (d - x).abs().max();
        Assert.True(err.item<float>() <= q.ScaleValues.Max() / 2 * 1.0001f);
    }

    [Fact]
    public void FromPartsRoundTripsAndTakesOwnership()
    {
        using var x = torch.randn(4, 6);
        var spec = new QuantSpec(QuantType.UInt4, QuantScheme.Affine, new PerAxis(0));
        using var q = QuantizedTensor.Quantize(x, spec);
        using var expected = q.Dequantize();
        using var r = QuantizedTensor.FromParts(spec, [4, 6], q.Data.clone(), q.Scale!.clone(), q.ZeroPoint!.clone());
        using var actual = r.Dequantize();
        Assert.True(expected.equal(actual).all().item<bool>());
        Assert.Equal(q.StorageBytes, r.StorageBytes);
    }

    [Fact]
    public void FromPartsNamesTheWrongPart()
    {
        var spec = new QuantSpec(QuantType.Int4, granularity: new PerAxis(0));
        var ex = Assert.Throws<ArgumentException>(() => QuantizedTensor.FromParts(spec, [4, 6], torch.zeros(4, 6, dtype: ScalarType.Byte), torch.ones(4), null));
        Assert.Contains("[4, 3]", ex.Message); // packed shape expected
        ex = Assert.Throws<ArgumentException>(() => QuantizedTensor.FromParts(spec, [4, 6], torch.zeros(4, 3, dtype: ScalarType.Int8), torch.ones(4), null));
        Assert.Contains("Byte", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => QuantizedTensor.FromParts(spec, [4, 6], torch.zeros(4, 3, dtype: ScalarType.Byte), torch.ones(5), null));
        Assert.Equal("scale", ex.ParamName);
        ex = Assert.Throws<ArgumentException>(() => QuantizedTensor.FromParts(spec, [4, 6], torch.zeros(4, 3, dtype: ScalarType.Byte), null, null));
        Assert.Equal("scale", ex.ParamName);
        ex = Assert.Throws<ArgumentException>(() => QuantizedTensor.FromParts(spec, [4, 6], torch.zeros(4, 3, dtype: ScalarType.Byte), torch.tensor(new[] { 1f, 0f, 1f, 1f }), null));
        Assert.Contains("Scale 1", ex.Message);
        var affine = new QuantSpec(QuantType.UInt4, QuantScheme.Affine, new PerAxis(0));
        ex = Assert.Throws<ArgumentException>(() => QuantizedTensor.FromParts(affine, [4, 6], torch.zeros(4, 3, dtype: ScalarType.Byte), torch.ones(4), torch.tensor(new[] { 0, 3, 16, 1 })));
        Assert.Contains("Zero point 2", ex.Message);
    }

    [Fact]
    public void QuantizeRejectsNaNAndIntegerInput()
    {
        using var x = torch.tensor(new[] { 1f, float.NaN, 2f });
        var ex = Assert.Throws<ArgumentException>(() => QuantizedTensor.Quantize(x, new QuantSpec(QuantType.Int8)));
        Assert.Contains("NaN", ex.Message);
        using var i = torch.ones(3, dtype: ScalarType.Int32);
        ex = Assert.Throws<ArgumentException>(() => QuantizedTensor.Quantize(i, new QuantSpec(QuantType.Int8)));
        Assert.Contains("floating-point", ex.Message);
    }

    [Fact]
    public void QuantizeWithChecksCountsAndRanges()
    {
        using var x = torch.randn(4, 8);
        var spec = new QuantSpec(QuantType.Int8, QuantScheme.Affine, new PerAxis(0));
        var ex = Assert.Throws<ArgumentException>(() => QuantizedTensor.QuantizeWith(x, spec, [0.1f, 0.1f], null));
        Assert.Contains("Expected 4 scale(s)", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => QuantizedTensor.QuantizeWith(x, spec, [0.1f, 0.1f, 0.1f, 0.1f], [0, 0, 0, 200]));
        Assert.Contains("outside the range", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => QuantizedTensor.QuantizeWith(x, spec, [0.1f, 0f, 0.1f, 0.1f], null));
        Assert.Contains("positive", ex.Message);
    }

    [Fact]
    public void ScalarAndEmptyTensors()
    {
        using var s = torch.tensor(1.5f);
        using var qs = QuantizedTensor.Quantize(s, new QuantSpec(QuantType.Int4, QuantScheme.Affine));
        using var ds = qs.Dequantize();
        Assert.Empty(ds.shape);
        Assert.Equal(1.5f, ds.item<float>(), 0.2f);
        using var e = torch.zeros(0, 8);
        using var qe = QuantizedTensor.Quantize(e, new QuantSpec(QuantType.Int8, granularity: new PerGroup(4)));
        using var de = qe.Dequantize();
        Assert.Equal([0L, 8], de.shape);
    }

    [Fact]
    public void QuantizeDoesNotModifyInputAndLeavesNothingInCallersScope()
    {
        using var x = torch.randn(16, 16);
        using var before = x.clone();
        QuantizedTensor q;
        using (var scope = torch.NewDisposeScope())
        {
            q = QuantizedTensor.Quantize(x, new QuantSpec(QuantType.Int8, granularity: new PerAxis(0)));
        }
        // The scope ended: the quantized tensor's parts are still alive.
        using var d = q.Dequantize();
        Assert.True(before.equal(x).all().item<bool>());
        q.Dispose();
        Assert.Throws<ObjectDisposedException>(() => q.Dequantize());
    }
}

public class QuantizedTensorPathTests
{
    /// <summary>
    /// Large per-tensor inputs take the two-pass path (parallel min/max, then quantize); its qparams are those of
    /// torch's own min/max, and its integers those of QuantizeWith with these qparams.
    /// </summary>
    [Theory]
    [InlineData(QuantScheme.Affine)]
    [InlineData(QuantScheme.Symmetric)]
    public void TwoPassPerTensorUsesTorchMinMax(QuantScheme scheme)
    {
        using var x = torch.randn(300, 301) * 2 + 0.5;
        var spec = new QuantSpec(QuantType.Int8, scheme);
        using var q = QuantizedTensor.Quantize(x, spec);
        var (s, z) = QuantSharp.Primitives.QParams.Choose(x.min().item<float>(), x.max().item<float>(), spec.Range, scheme);
        Assert.Equal(s, q.ScaleValues[0]);
        Assert.Equal(z, q.ZeroPointValues[0]);
        using var w = QuantizedTensor.QuantizeWith(x, spec, [s], [z]);
        Assert.Equal(w.Data.bytes.ToArray(), q.Data.bytes.ToArray());
    }

    [Fact]
    public void NaNInOneChannelIsReportedByChannel()
    {
        using var x = torch.randn(8, 256);
        x[5, 17] = torch.tensor(float.NaN);
        var ex = Assert.Throws<ArgumentException>(() => QuantizedTensor.Quantize(x, new QuantSpec(QuantType.Int8, granularity: new PerAxis(0))));
        Assert.Contains("channel/group 5", ex.Message);
    }
}
