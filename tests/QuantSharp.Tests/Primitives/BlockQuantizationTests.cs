using System.Runtime.InteropServices;
using QuantSharp.Primitives;

namespace QuantSharp.Tests.Primitives;

/// <summary>Our MatMulNBits block quantization against ONNX Runtime 1.30's <c>quantize_matmul_4bits</c> output.</summary>
public class BlockQuantizationTests
{
    public static TheoryData<string> Cases()
    {
        var data = new TheoryData<string>();
        foreach (var c in Reference.Json.GetProperty("matmulnbits").EnumerateObject()) data.Add(c.Name);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesOnnxRuntimeBytes(string name)
    {
        var meta = Reference.Json.GetProperty("matmulnbits").GetProperty(name);
        int k = meta.GetProperty("K").GetInt32(), n = meta.GetProperty("N").GetInt32(), bs = meta.GetProperty("block_size").GetInt32();
        bool symmetric = meta.GetProperty("symmetric").GetBoolean();
        using var file = Reference.OpenTensors();
        float[] weight = MemoryMarshal.Cast<byte, float>(file.ReadBytes($"{name}/weight_KxN")).ToArray();
        byte[] refPacked = file.ReadBytes($"{name}/packed");
        byte[] refScales = file.ReadBytes($"{name}/scales");
        byte[] refZp = file.ReadBytes($"{name}/zero_points_packed");

        var packed = new byte[BlockQuantization.PackedLength(k, n, bs)];
        var scales = new float[n * BlockQuantization.BlockCount(k, bs)];
        var zp = new byte[BlockQuantization.ZeroPointLength(k, n, bs)];
        BlockQuantization.QuantizeMatMul4Bits(weight, k, n, bs, symmetric, packed, scales, zp);

        Assert.Equal(refPacked.Length, packed.Length);
        Assert.Equal(refPacked, packed);
        Assert.Equal(refScales, MemoryMarshal.AsBytes(scales.AsSpan()).ToArray());
        Assert.Equal(refZp.Length, zp.Length);
        if (symmetric)
        {
            // ONNX Runtime writes no zero points for symmetric blocks (implicit 8): the buffer stays as allocated (zeros).
            Assert.All(refZp, b => Assert.Equal(0, b));
            Assert.All(zp, b => Assert.Equal(0, b));
        }
        else
        {
            Assert.Equal(refZp, zp);
        }
    }

    [Fact]
    public void RejectsBadBlockSize()
    {
        var ex = Assert.Throws<ArgumentException>(() =>
            BlockQuantization.QuantizeMatMul4Bits(new float[48], 24, 2, 24, true, new byte[48], new float[4], []));
        Assert.Contains("Block size 24", ex.Message);
    }
}
