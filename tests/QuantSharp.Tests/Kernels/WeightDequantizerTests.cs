using QuantSharp.Kernels;
using QuantSharp.Modules;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// The managed one-pass dequantization (<see cref="WeightDequantizer"/>) equals the specification
/// (<see cref="WeightView.Dequantized"/>) bit for bit for every integer format, group size, zero point and row/column tail, on
/// every vector width; the canonical layouts' <c>Dequantize</c> built on it equals the tensor-operation formula it
/// replaced bit for bit; the static and dynamic input fake-quantizations done in one managed pass equal the tensor
/// operations.
/// </summary>
[Collection(SimdWidthCollection.Name)]
public unsafe class WeightDequantizerTests
{
    private static readonly (WeightFormat Format, int Group, bool ZeroPoints, bool PerTensor)[] Formats =
    [
        (WeightFormat.Int8, 0, false, false),
        (WeightFormat.Int8, 0, true, true),
        (WeightFormat.Int8, 4, true, false),
        (WeightFormat.UInt8, 0, true, false),
        (WeightFormat.UInt8, 2, true, false),
        (WeightFormat.Int4, 2, false, false),
        (WeightFormat.Int4, 0, false, false),
        (WeightFormat.Int4, 4, true, false),
        (WeightFormat.UInt4, 0, true, true),
        (WeightFormat.UInt4, 2, true, false),
        // Groups of whole runs of 16 (and rows of them): the nibble lookup of the 512-bit path.
        (WeightFormat.Int4, 16, true, false),
        (WeightFormat.Int4, 32, false, false),
        (WeightFormat.UInt4, 16, true, false),
        (WeightFormat.UInt4, 32, true, true),
    ];

    [Theory]
    [InlineData(512)]
    [InlineData(256)]
    [InlineData(128)]
    [InlineData(0)]
    public void EveryFormatEqualsTheSpecificationBitForBit(int maxBits)
    {
        using var cap = new SimdWidthCap(maxBits);
        int seed = 0;
        foreach (var (format, group, zeroPoints, perTensor) in Formats)
        foreach (int rows in new[] { 1, 3, 17 })
        foreach (int cols in new[] { 4, 8, 9, 15, 16, 28, 32, 36, 64, 100, 256, 260 })
        {
            // (9 and 15: the short rows of a depthwise layer's taps, in a loop of their own.)
            if (group > 0 && cols % group != 0 || WeightView.IsPacked(format) && cols % 2 != 0) continue;
            using var w = new PinnedWeight(format, rows, cols, group, zeroPoints, ++seed, perTensor);
            var actual = new float[rows * cols];
            fixed (float* p = actual) WeightDequantizer.Run(w.View, p);
            for (int n = 0; n < rows; n++)
            for (int k = 0; k < cols; k++)
            {
                float expected = w.View.Dequantized(n, k);
                Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(actual[n * cols + k]),
                    $"{format} group {group} zp {zeroPoints} per-tensor {perTensor} [{rows}x{cols}] width {maxBits}: [{n},{k}] {actual[n * cols + k]} != {expected}");
            }
        }
    }

    [Fact]
    public void NibblesUnpackAsThePackingSpecificationForEveryByteAndTail()
    {
        var packed = new byte[300];
        for (int i = 0; i < packed.Length; i++) packed[i] = (byte)(i * 37 + 11);
        foreach (bool signed in new[] { true, false })
        foreach (int count in new[] { 2, 30, 32, 34, 64, 66, 600 })
        {
            var expected = new sbyte[count];
            QuantSharp.Primitives.Packing.Unpack(packed, 4, signed, expected);
            var actual = new sbyte[count];
            fixed (byte* src = packed)
            fixed (sbyte* dst = actual)
                WeightDequantizer.UnpackNibbles(src, count, signed, dst);
            Assert.Equal(expected, actual);
        }
    }

    private static readonly QuantSpec[] LayerSpecs =
    [
        new(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0)),
        new(QuantType.Int8, QuantScheme.Affine, Granularity.Tensor),
        new(QuantType.Int8, QuantScheme.Affine, new PerGroup(16)),
        new(QuantType.UInt8, QuantScheme.Affine, new PerAxis(0)),
        new(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(8)),
        new(QuantType.Int4, QuantScheme.Symmetric, new PerAxis(0)),
        new(QuantType.UInt4, QuantScheme.Affine, new PerGroup(32)),
        new(QuantType.UInt4, QuantScheme.Affine, Granularity.Tensor),
        new(QuantType.Float16),
        new(QuantType.BFloat16),
    ];

    [Fact]
    public void LayoutDequantizeEqualsTheTensorOperationFormulaBitForBit()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(5);
        foreach (var shape in new long[][] { [7, 96], [33, 64], [12, 8, 3, 3], [5, 32, 4] })
        foreach (var spec in LayerSpecs)
        {
            if (spec.Granularity is PerGroup g && shape.Skip(1).Aggregate(1L, (a, b) => a * b) % g.GroupSize != 0) continue;
            using var weight = QuantizedWeight.Quantize(torch.randn(shape) * 3, spec);
            using var canonical = weight.Layout.ToCanonical();
            using var managed = weight.Layout.Dequantize();
            var expected = spec.Type.IsInteger()
                ? WeightQuantizer.DequantizeRows(WeightQuantizer.IntegerValues(canonical.Data, spec.Type), canonical.Scale!, canonical.ZeroPoint, spec)
                : canonical.Data.to(ScalarType.Float32);
            Assert.True(TensorSpans.BitEqual(expected, managed), $"{spec} [{string.Join(",", shape)}]");
            using var into = torch.full(managed.numel(), float.NaN);
            Assert.True(weight.Layout.DequantizeInto(into));
            Assert.True(TensorSpans.BitEqual(managed.reshape(-1), into), $"{spec} [{string.Join(",", shape)}] into a buffer");
        }
    }

    [Fact]
    public void StaticInputFakeQuantizationEqualsTheTensorOperationsAndKeepsGradients()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(6);
        foreach (var (type, scale, zeroPoint) in new[] { (QuantType.UInt8, 0.02f, 120), (QuantType.Int8, 0.013f, -3), (QuantType.UInt8, 0.5f, 0) })
        {
            var act = new ActivationQuantization(type, type == QuantType.UInt8 ? QuantScheme.Affine : QuantScheme.Symmetric, false, scale, zeroPoint);
            using var layer = (QuantizedConv)QuantizedModules.Quantize(nn.Conv2d(4, 6, 3), QuantizationRecipe.Int8WeightOnly().BaseWeights, act);
            var range = QuantRange.For(type, false);
            var s = torch.tensor(scale);
            var z = torch.tensor((float)zeroPoint);
            // Ties at half a step, values beyond the range both ways, a non-contiguous view, 70,000 elements (several chunks).
            var ties = (torch.arange(-300, 300, ScalarType.Float32) + 0.5f) * scale;
            foreach (var x in new[] { torch.randn(2, 4, 9, 9) * 3, ties.reshape(4, 1, 150), torch.randn(2, 9, 4, 9).transpose(1, 2), torch.randn(70_000) * 10 })
            {
                var expected = WeightQuantizer.FakeQuantize(x, s, z, range);
                var actual = layer.QuantizeInput(x);
                Assert.True(TensorSpans.BitEqual(expected.contiguous(), actual.contiguous()), $"{type} scale {scale} zp {zeroPoint} [{string.Join(",", x.shape)}]");
            }
            // An input that needs gradients keeps the differentiable tensor operations.
            var leaf = torch.randn(3, 4, 5, 5).requires_grad_();
            Assert.True(layer.QuantizeInput(leaf).requires_grad);
        }
    }

    [Fact]
    public void DynamicInputFakeQuantizationEqualsTheTensorOperationsAndKeepsGradients()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(7);
        using var layer = (QuantizedLinear)QuantizedModules.Quantize(nn.Linear(40, 3), QuantizationRecipe.Int8WeightOnly().BaseWeights, null);
        layer.DynamicInput = true;
        // Per row: scale = max(amax / 127, eps), then round(x * (1 / scale)) clamped to [-127, 127], times the scale.
        static Tensor Expected(Tensor x)
        {
            var scale = x.abs().amax([-1], keepdim: true).div(127f).clamp_min(1.1920929e-07f);
            return (x * scale.reciprocal()).round().clamp(-127, 127) * scale;
        }
        // Ties at half a step (rows of amax 31.75, so the scale is 0.25 and x * 4 = j + 0.5), a zero row (the smallest scale), a row
        // with a NaN (NaN throughout), a non-contiguous 3-D view, 1,000 rows of 40 (several work items).
        var ties = ((torch.arange(-127, 127, ScalarType.Float32) + 0.5f) * 0.25f).reshape(2, 127);
        ties[0, 0] = torch.tensor(-31.75f);
        ties[1, 126] = torch.tensor(31.75f);
        var withNaN = torch.randn(3, 40);
        withNaN[1, 7] = torch.tensor(float.NaN);
        foreach (var x in new[] { torch.randn(5, 40) * 3, torch.zeros(2, 40), withNaN, torch.randn(2, 40, 6).transpose(1, 2), torch.randn(1000, 40) * 100 })
        {
            var expected = Expected(x);
            var actual = layer.QuantizeInput(x);
            bool same = expected.eq(actual).logical_or(expected.isnan().logical_and(actual.isnan())).all().item<bool>();
            Assert.True(same, $"[{string.Join(",", x.shape)}]");
        }
        // The ties' row on its own (its own scale).
        foreach (var row in new[] { ties[0].unsqueeze(0), ties[1].unsqueeze(0) })
        {
            var expected = Expected(row);
            Assert.True(expected.eq(layer.QuantizeInput(row)).all().item<bool>());
        }
        Assert.Equal(-31.75f, layer.QuantizeInput(ties[0].unsqueeze(0))[0, 0].item<float>());
        Assert.True(layer.QuantizeInput(torch.randn(2, 40).requires_grad_()).requires_grad);
    }
}
