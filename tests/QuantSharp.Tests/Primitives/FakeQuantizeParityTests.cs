using System.Runtime.InteropServices;
using QuantSharp.Primitives;

namespace QuantSharp.Tests.Primitives;

/// <summary>The fake-quantize span API against PyTorch's fake-quant forward outputs recorded for QAT (reference qat_*).</summary>
public class FakeQuantizeParityTests
{
    private static float[] Floats(byte[] bytes) => MemoryMarshal.Cast<byte, float>(bytes).ToArray();

    private static void AssertBits(float[] expected, float[] actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]))
                Assert.Fail($"Element {i}: expected {expected[i]:R}, got {actual[i]:R}.");
        }
    }

    [Theory]
    [InlineData("qat_ste")]
    [InlineData("qat_lsq")] // LSQ's forward: the reference stores no separate input; it was fed qat_ste/input
    public void PerTensorMatchesFakeQuantizePerTensorAffine(string name)
    {
        var p = Reference.Json.GetProperty(name);
        using var file = Reference.OpenTensors();
        float[] x = Floats(file.ReadBytes("qat_ste/input"));
        float scale = p.GetProperty("scale").GetSingle();
        int zp = (int)p.GetProperty("zero_point").GetSingle();
        var range = new QuantRange(p.GetProperty("qmin").GetInt32(), p.GetProperty("qmax").GetInt32());
        var y = new float[x.Length];
        Quantization.FakeQuantize(x, scale, zp, range, y);
        AssertBits(Floats(file.ReadBytes($"{name}/output")), y);
    }

    [Fact]
    public void PerChannelMatchesFakeQuantizePerChannelAffine()
    {
        var p = Reference.Json.GetProperty("qat_ste_pc");
        Assert.Equal(0, p.GetProperty("axis").GetInt32());
        using var file = Reference.OpenTensors();
        using var input = file.ReadTensor("qat_ste_pc/input");
        float[] x = Floats(file.ReadBytes("qat_ste_pc/input"));
        float[] scales = Floats(file.ReadBytes("qat_ste_pc/scales"));
        int[] zps = MemoryMarshal.Cast<byte, int>(file.ReadBytes("qat_ste_pc/zero_points")).ToArray();
        int inner = (int)(input.numel() / input.shape[0]);
        var range = new QuantRange(p.GetProperty("qmin").GetInt32(), p.GetProperty("qmax").GetInt32());
        var y = new float[x.Length];
        Quantization.FakeQuantize(x, inner, scales, zps, range, y);
        AssertBits(Floats(file.ReadBytes("qat_ste_pc/output")), y);
    }
}
