using System.Runtime.InteropServices;
using QuantSharp.Primitives;

namespace QuantSharp.Tests.Primitives;

/// <summary>The public span conversions against PyTorch's casts of the edge cases (overflow, subnormals, ties).</summary>
public class FloatConversionTests
{
    [Fact]
    public void EdgeCasesMatchPyTorch()
    {
        using var file = Reference.OpenTensors();
        float[] x = MemoryMarshal.Cast<byte, float>(file.ReadBytes("fp16_edges/input")).ToArray();
        var h = new ushort[x.Length];
        FloatConversion.ToFloat16(x, h);
        Assert.Equal(MemoryMarshal.Cast<byte, ushort>(file.ReadBytes("fp16_edges/fp16")).ToArray(), h);
        var b = new ushort[x.Length];
        FloatConversion.ToBFloat16(x, b);
        Assert.Equal(MemoryMarshal.Cast<byte, ushort>(file.ReadBytes("fp16_edges/bf16")).ToArray(), b);

        var back = new float[x.Length];
        FloatConversion.FromFloat16(h, back);
        Assert.Equal(MemoryMarshal.Cast<byte, uint>(file.ReadBytes("fp16_edges/fp16_roundtrip")).ToArray(), MemoryMarshal.Cast<float, uint>(back).ToArray());
        FloatConversion.FromBFloat16(b, back);
        Assert.Equal(MemoryMarshal.Cast<byte, uint>(file.ReadBytes("fp16_edges/bf16_roundtrip")).ToArray(), MemoryMarshal.Cast<float, uint>(back).ToArray());
    }

    [Fact]
    public void NaNBecomesPyTorchsQuietNaN()
    {
        var h = new ushort[2];
        FloatConversion.ToFloat16([float.NaN, -float.NaN], h);
        Assert.Equal(0x7E00, h[0] & 0x7FFF);
        var b = new ushort[1];
        FloatConversion.ToBFloat16([BitConverter.UInt32BitsToSingle(0xFFC0_0001)], b);
        Assert.Equal(0x7FC0, b[0]);
    }

    [Fact]
    public void ShortDestinationIsRejected()
    {
        var ex = Assert.Throws<ArgumentException>(() => FloatConversion.ToFloat16(new float[3], new ushort[2]));
        Assert.Equal("destination", ex.ParamName);
    }
}
