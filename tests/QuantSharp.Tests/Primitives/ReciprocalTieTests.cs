using System.Runtime.InteropServices;
using QuantSharp.Kernels;
using QuantSharp.Primitives;
using QuantSharp.Tensors;
using TorchSharp;

namespace QuantSharp.Tests.Primitives;

/// <summary>
/// Quantization rounds <c>x * (1f / s)</c> (the reciprocal first, then the product, in float32), as PyTorch's
/// quantize/fake-quantize and torchao's <c>quantize_affine</c> do, and never <c>x / s</c>. The inputs here are built
/// (not sampled from the reference) so that <c>x / s</c> is an exact tie <c>k + 0.5</c> while the product lands
/// beside it: every granularity, the span API and the SIMD kernels must round the product.
/// </summary>
public class ReciprocalTieTests
{
    private const int Rows = 48;
    private const int Cols = 64; // one group (and one channel) per row; long enough for the 512-bit kernel path

    // Float32 arithmetic emulated in double, independently of the library: the quotient and the product of two
    // float32 values computed in double and rounded once to float32 are the correctly rounded float32 results
    // (53 >= 2 * 24 + 2 bits).
    private static float Reciprocal(float s) => (float)(1.0 / s);
    private static float Product(float x, float s) => (float)((double)x * Reciprocal(s));
    private static float Quotient(float x, float s) => (float)((double)x / s);
    private static int Round(float v, QuantRange r) => (int)Math.Clamp(Math.Round((double)v, MidpointRounding.ToEven), r.QMin, r.QMax);

    /// <summary>
    /// Rows of <see cref="Cols"/> values: one is +-A (the row's absolute maximum, so the symmetric scale is
    /// <c>A / half</c>); the others are floats near <c>(k + 0.5) * s</c> whose quotient by s is exactly the tie and whose
    /// reciprocal product is not, where such a float exists within a few ulps.
    /// </summary>
    private static (float[] X, float[] Scale) Build(QuantRange range, int seed)
    {
        var rng = new Random(seed);
        float half = (range.QMax - range.QMin) / 2f;
        var x = new float[Rows * Cols];
        var scale = new float[Rows];
        for (int r = 0; r < Rows; r++)
        {
            float a = (float)(0.05 + rng.NextDouble() * 8);
            float s = (float)((double)a / half); // PyTorch's symmetric scale, max(|min|, |max|) / ((qmax - qmin) / 2)
            scale[r] = s;
            x[r * Cols] = rng.Next(2) == 0 ? a : -a;
            for (int j = 1; j < Cols; j++)
            {
                int k = rng.Next(range.QMin + 1, range.QMax); // |k + 0.5| < half: the value stays below A
                double tie = k + 0.5;
                float candidate = (float)(tie * s), found = candidate, fallback = candidate;
                for (int step = -6; step <= 6; step++)
                {
                    float v = Ulps(candidate, step);
                    if (Quotient(v, s) != tie) continue;
                    fallback = v;
                    if (Product(v, s) != tie) { found = v; break; }
                }
                x[r * Cols + j] = Quotient(found, s) == tie && Product(found, s) != tie ? found : fallback;
            }
        }
        return (x, scale);
    }

    private static float Ulps(float v, int n)
    {
        for (; n > 0; n--) v = MathF.BitIncrement(v);
        for (; n < 0; n++) v = MathF.BitDecrement(v);
        return v;
    }

    public static TheoryData<QuantType> Types() => new() { QuantType.Int8, QuantType.Int4 };

    [Theory]
    [MemberData(nameof(Types))]
    public void EveryPathRoundsTheReciprocalProductAtTies(QuantType type)
    {
        var range = QuantRange.For(type);
        var (x, scale) = Build(range, seed: type == QuantType.Int8 ? 11 : 12);
        var expected = new int[x.Length];
        int differ = 0;
        for (int i = 0; i < x.Length; i++)
        {
            float s = scale[i / Cols];
            expected[i] = Round(Product(x[i], s), range);
            if (Round(Quotient(x[i], s), range) != expected[i]) differ++;
        }
        // The inputs really separate the two arithmetics (about a quarter of the constructed ties do).
        Assert.True(differ > Rows * Cols / 10, $"only {differ} elements where x / s and x * (1 / s) round differently");

        using var scope = torch.NewDisposeScope();
        using var input = torch.tensor(x, [Rows, Cols]);
        foreach (Granularity granularity in new Granularity[] { new PerGroup(Cols), new PerAxis(0) })
        {
            using var q = QuantizedTensor.Quantize(input, new QuantSpec(type, QuantScheme.Symmetric, granularity));
            Assert.Equal(scale, q.ScaleValues);
            AssertInts(expected, q.IntegerValues(), granularity.ToString()!);
        }
        // Channel axis last: the per-element kernel.
        using (var qt = QuantizedTensor.Quantize(input.t().contiguous(), new QuantSpec(type, QuantScheme.Symmetric, new PerAxis(1))))
            AssertInts(expected, qt.IntegerValues().t().contiguous(), "per-axis 1");
        // Per tensor: each row alone.
        for (int r = 0; r < Rows; r++)
        {
            using var q = QuantizedTensor.Quantize(input[r], new QuantSpec(type, QuantScheme.Symmetric));
            AssertInts(expected.AsSpan(r * Cols, Cols).ToArray(), q.IntegerValues(), $"per-tensor row {r}");
        }

        // The span API (blocked quantize and fake-quantize) and the vector kernel against its scalar specification.
        var spanQ = new sbyte[x.Length];
        Quantization.Quantize(x, Cols, scale, [], range, spanQ);
        Assert.Equal(expected, spanQ.Select(v => (int)v).ToArray());
        var fake = new float[x.Length];
        Quantization.FakeQuantize(x, Cols, scale, [], range, fake);
        for (int i = 0; i < x.Length; i++)
            Assert.Equal(BitConverter.SingleToInt32Bits(expected[i] * scale[i / Cols]), BitConverter.SingleToInt32Bits(fake[i]));
        var vector = new sbyte[Cols];
        var scalar = new sbyte[Cols];
        for (int r = 0; r < Rows; r++)
        {
            var row = x.AsSpan(r * Cols, Cols);
            float inv = Reciprocal(scale[r]);
            QuantizeKernel.Quantize(row, inv, 0f, range.QMin, range.QMax, vector);
            QuantizeKernel.QuantizeScalar(row, inv, 0f, range.QMin, range.QMax, scalar);
            Assert.Equal(scalar, vector);
            Assert.Equal(expected.AsSpan(r * Cols, Cols).ToArray(), vector.Select(v => (int)v).ToArray());
        }
    }

    private static void AssertInts(int[] expected, torch.Tensor actual, string what)
    {
        int[] got = MemoryMarshal.Cast<byte, int>(actual.to(torch.ScalarType.Int32).contiguous().bytes).ToArray();
        for (int i = 0; i < expected.Length; i++)
        {
            if (got[i] != expected[i])
                Assert.Fail($"{what}: element {i} is {got[i]}, round_half_even(x * (1 / s)) is {expected[i]}.");
        }
    }
}
