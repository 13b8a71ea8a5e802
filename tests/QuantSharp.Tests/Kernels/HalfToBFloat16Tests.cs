using QuantSharp.Kernels;
using QuantSharp.Modules;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// <see cref="HalfKernel.HalfToBFloat16"/> at every vector width and in scalars against libtorch's own float16 ->
/// bfloat16 conversion, on every one of the 65,536 half bit patterns (zeros, subnormals, the ties of bfloat16's rounding,
/// infinities, NaNs), at every tail length; and the bfloat16 route's dequantization of a float16 weight by rows.
/// </summary>
[Collection(SimdWidthCollection.Name)]
public unsafe class HalfToBFloat16Tests
{
    /// <summary>Every one of the 65,536 16-bit patterns, in order.</summary>
    internal static ushort[] EveryHalf() => Enumerable.Range(0, 65536).Select(i => (ushort)i).ToArray();

    /// <summary>libtorch's conversion of <paramref name="halves"/> (bfloat16 bits).</summary>
    private static ushort[] Libtorch(ushort[] halves)
    {
        using var h = torch.empty(halves.Length, ScalarType.Float16);
        h.bytes = halves.SelectMany(BitConverter.GetBytes).ToArray();
        using var b = h.to(ScalarType.BFloat16);
        var bytes = b.bytes.ToArray();
        return Enumerable.Range(0, halves.Length).Select(i => BitConverter.ToUInt16(bytes, 2 * i)).ToArray();
    }

    [Theory]
    [InlineData(512)]
    [InlineData(256)]
    [InlineData(128)]
    [InlineData(0)]
    public void EveryHalfConvertsAsLibtorch(int maxBits)
    {
        using var cap = new SimdWidthCap(maxBits);
        var halves = EveryHalf();
        var expected = Libtorch(halves);
        var actual = new ushort[halves.Length];
        HalfKernel.HalfToBFloat16(halves, actual);
        for (int i = 0; i < halves.Length; i++)
        {
            // NaN: libtorch keeps a NaN (its sign and payload may differ from the scalar rounding's 0x7FC0); ours is 0x7FC0.
            bool nan = (halves[i] & 0x7C00) == 0x7C00 && (halves[i] & 0x03FF) != 0;
            if (nan) Assert.True(actual[i] == 0x7FC0 && (expected[i] & 0x7F80) == 0x7F80 && (expected[i] & 0x7F) != 0, $"{maxBits} bits: NaN 0x{halves[i]:X4} -> 0x{actual[i]:X4}");
            else Assert.True(expected[i] == actual[i], $"{maxBits} bits: 0x{halves[i]:X4} -> 0x{actual[i]:X4}, libtorch 0x{expected[i]:X4}");
        }
    }

    [Theory]
    [InlineData(512)]
    [InlineData(128)]
    [InlineData(0)]
    public void EveryTailLengthEqualsTheScalarSpecification(int maxBits)
    {
        using var cap = new SimdWidthCap(maxBits);
        var random = new Random(11);
        for (int n = 0; n <= 70; n++)
        {
            var halves = Enumerable.Range(0, n).Select(_ => (ushort)random.Next(65536)).ToArray();
            var actual = Enumerable.Repeat((ushort)0xABCD, n + 3).ToArray();
            HalfKernel.HalfToBFloat16(halves, actual);
            for (int i = 0; i < n; i++)
                Assert.Equal(HalfKernel.ToBFloat16Bits(HalfKernel.FromHalfBits(halves[i])), actual[i]);
            Assert.All(actual[n..], v => Assert.Equal(0xABCD, v)); // nothing written past the source's length
        }
    }

    [Fact]
    public void AFloat16WeightDequantizesToBFloat16ByRowsAsLibtorch()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        torch.manual_seed(23);
        // Values across float16's range: large, small and subnormal magnitudes (the ties and specials: the tests above).
        var values = torch.randn(19, 72) * torch.pow(10, torch.randint(-7, 4, [19, 72]).to(ScalarType.Float32));
        using var weight = QuantizedWeight.Quantize(values, new QuantSpec(QuantType.Float16));
        var half = weight.Layout.ToCanonical().Data;
        foreach (bool managed in new[] { true, false })
        {
            bool saved = LinearKernels.ManagedHalfToBFloat16;
            LinearKernels.ManagedHalfToBFloat16 = managed;
            try
            {
                var whole = torch.empty(19, 72, ScalarType.BFloat16);
                Assert.True(weight.Layout.DequantizeInto(whole));
                Assert.True(half.to(ScalarType.BFloat16).bytes.SequenceEqual(whole.bytes), $"managed {managed}: the whole weight");
                var rows = torch.empty(5, 72, ScalarType.BFloat16);
                Assert.True(weight.Layout.DequantizeInto(rows, 11));
                Assert.True(half.narrow(0, 11, 5).to(ScalarType.BFloat16).bytes.SequenceEqual(rows.bytes), $"managed {managed}: rows 11-15");
            }
            finally
            {
                LinearKernels.ManagedHalfToBFloat16 = saved;
            }
        }
    }
}
