using QuantSharp.Kernels;
using QuantSharp.Modules;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// <see cref="HalfKernel.FromHalf"/> and <see cref="HalfKernel.FromBFloat16"/> at every vector width and in scalars
/// against libtorch's own widening to float32, on every one of the 65,536 bit patterns of each type (zeros, subnormals,
/// infinities, NaNs), at every tail length; and half-precision weights, convolution-shaped too, dequantized into float32
/// by rows (<see cref="LinearKernels.ManagedHalfToSingle"/> on and off).
/// </summary>
[Collection(SimdWidthCollection.Name)]
public class HalfToSingleTests
{
    /// <summary>libtorch's widening of <paramref name="bits"/> (of <paramref name="type"/>) to float32, as bits.</summary>
    private static uint[] Libtorch(ushort[] bits, ScalarType type)
    {
        using var h = torch.empty(bits.Length, type);
        h.bytes = bits.SelectMany(BitConverter.GetBytes).ToArray();
        using var f = h.to(ScalarType.Float32);
        var bytes = f.bytes.ToArray();
        return Enumerable.Range(0, bits.Length).Select(i => BitConverter.ToUInt32(bytes, 4 * i)).ToArray();
    }

    private static bool IsNaN(uint bits) => (bits & 0x7FFF_FFFFu) > 0x7F80_0000u;

    public static TheoryData<int, bool> WidthsAndTypes() => new()
    {
        { 512, true }, { 256, true }, { 128, true }, { 0, true },
        { 512, false }, { 256, false }, { 128, false }, { 0, false },
    };

    /// <summary>float16 (<paramref name="half"/>) or bfloat16: every bit pattern widened as the scalar specification and as libtorch.</summary>
    [Theory]
    [MemberData(nameof(WidthsAndTypes))]
    public void EveryPatternWidensAsLibtorch(int maxBits, bool half)
    {
        using var cap = new SimdWidthCap(maxBits);
        var bits = HalfToBFloat16Tests.EveryHalf();
        var expected = Libtorch(bits, half ? ScalarType.Float16 : ScalarType.BFloat16);
        var actual = new float[bits.Length];
        if (half) HalfKernel.FromHalf(bits, actual);
        else HalfKernel.FromBFloat16(bits, actual);
        string type = half ? "float16" : "bfloat16";
        for (int i = 0; i < bits.Length; i++)
        {
            uint a = BitConverter.SingleToUInt32Bits(actual[i]);
            uint spec = half ? BitConverter.SingleToUInt32Bits(HalfKernel.FromHalfBits(bits[i])) : (uint)bits[i] << 16;
            Assert.True(a == spec, $"{type}, {maxBits} bits: 0x{bits[i]:X4} -> 0x{a:X8}, not the scalar specification's 0x{spec:X8}");
            // NaN: libtorch may set the quiet bit of a signaling NaN; sign and the rest of the payload are kept by both.
            if (IsNaN(expected[i])) Assert.True(IsNaN(a) && ((a ^ expected[i]) & ~0x0040_0000u) == 0, $"{type}, {maxBits} bits: NaN 0x{bits[i]:X4} -> 0x{a:X8}, libtorch 0x{expected[i]:X8}");
            else Assert.True(a == expected[i], $"{type}, {maxBits} bits: 0x{bits[i]:X4} -> 0x{a:X8}, libtorch 0x{expected[i]:X8}");
        }
    }

    [Theory]
    [InlineData(512)]
    [InlineData(256)]
    [InlineData(128)]
    [InlineData(0)]
    public void EveryTailLengthEqualsTheScalarSpecification(int maxBits)
    {
        using var cap = new SimdWidthCap(maxBits);
        var random = new Random(13);
        for (int n = 0; n <= 100; n++)
        {
            var bits = Enumerable.Range(0, n).Select(_ => (ushort)random.Next(65536)).ToArray();
            var fromHalf = Enumerable.Repeat(-7f, n + 3).ToArray();
            var fromBFloat16 = Enumerable.Repeat(-7f, n + 3).ToArray();
            HalfKernel.FromHalf(bits, fromHalf);
            HalfKernel.FromBFloat16(bits, fromBFloat16);
            for (int i = 0; i < n; i++)
            {
                Assert.Equal(BitConverter.SingleToUInt32Bits(HalfKernel.FromHalfBits(bits[i])), BitConverter.SingleToUInt32Bits(fromHalf[i]));
                Assert.Equal((uint)bits[i] << 16, BitConverter.SingleToUInt32Bits(fromBFloat16[i]));
            }
            // Nothing written past the source's length.
            Assert.All(fromHalf[n..], v => Assert.Equal(-7f, v));
            Assert.All(fromBFloat16[n..], v => Assert.Equal(-7f, v));
        }
        Assert.Throws<ArgumentException>(() => HalfKernel.FromHalf(new ushort[5], new float[4]));
        Assert.Throws<ArgumentException>(() => HalfKernel.FromBFloat16(new ushort[5], new float[4]));
    }

    [Theory]
    [InlineData(QuantType.Float16)]
    [InlineData(QuantType.BFloat16)]
    public void HalfWeightsDequantizeToFloat32ByRowsAsLibtorch(QuantType type)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(29);
        // A Linear weight and a Conv2d weight (rank 4, 45 terms a row), values across float16's range down to subnormals.
        foreach (long[] shape in new[] { new long[] { 19, 72 }, [7, 5, 3, 3] })
        {
            var values = torch.randn(shape) * torch.pow(10, torch.randint(-7, 4, shape).to(ScalarType.Float32));
            using var weight = QuantizedWeight.Quantize(values, new QuantSpec(type));
            var half = weight.Layout.ToCanonical().Data;
            long rows = shape[0], cols = shape.Skip(1).Aggregate(1L, (a, b) => a * b);
            foreach (bool managed in new[] { true, false })
            {
                bool saved = LinearKernels.ManagedHalfToSingle;
                LinearKernels.ManagedHalfToSingle = managed;
                try
                {
                    var whole = torch.empty(shape);
                    Assert.True(weight.Layout.DequantizeInto(whole));
                    Assert.True(half.to(ScalarType.Float32).bytes.SequenceEqual(whole.bytes), $"{type} {string.Join('x', shape)}, managed {managed}: the whole weight");
                    var some = torch.empty(3, cols);
                    Assert.True(weight.Layout.DequantizeInto(some, rows - 4));
                    Assert.True(half.reshape(rows, cols).narrow(0, rows - 4, 3).to(ScalarType.Float32).bytes.SequenceEqual(some.bytes), $"{type} {string.Join('x', shape)}, managed {managed}: rows {rows - 4}-{rows - 2}");
                }
                finally
                {
                    LinearKernels.ManagedHalfToSingle = saved;
                }
            }
        }
    }
}
