using QuantSharp.Tensors;
using QuantSharp.Modules;
using QuantSharp.Primitives;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Modules;

/// <summary>The layer-weight quantizer against PyTorch 2.11's observers and fake-quantize (reference data).</summary>
public class WeightQuantizerTests
{
    public static TheoryData<string, string> PerChannelCases()
    {
        var data = new TheoryData<string, string>();
        foreach (var c in new[] { "gauss", "heavy_t3", "outlier_rows_cols", "conv4d", "uniform_pos", "neg_only", "row_constant", "huge_range", "tiny_range" })
            foreach (var tag in new[] { "perchannel_symmetric_qint8", "perchannel_affine_qint8", "perchannel_symmetric_int4", "minmax_symmetric_qint8", "minmax_affine_quint8", "minmax_affine_qint8_reduce_range", "minmax_symmetric_int4", "minmax_affine_uint4" })
                data.Add(c, tag);
        return data;
    }

    private static QuantSpec SpecFor(string tag) => tag switch
    {
        "perchannel_symmetric_qint8" => new(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0)),
        "perchannel_affine_qint8" => new(QuantType.Int8, QuantScheme.Affine, new PerAxis(0)),
        "perchannel_symmetric_int4" => new(QuantType.Int4, QuantScheme.Symmetric, new PerAxis(0)),
        "minmax_symmetric_qint8" => new(QuantType.Int8, QuantScheme.Symmetric, Granularity.Tensor),
        "minmax_affine_quint8" => new(QuantType.UInt8, QuantScheme.Affine, Granularity.Tensor),
        "minmax_affine_qint8_reduce_range" => new(QuantType.Int8, QuantScheme.Affine, Granularity.Tensor, reduceRange: true),
        "minmax_symmetric_int4" => new(QuantType.Int4, QuantScheme.Symmetric, Granularity.Tensor),
        "minmax_affine_uint4" => new(QuantType.UInt4, QuantScheme.Affine, Granularity.Tensor),
        _ => throw new ArgumentException(tag),
    };

    [Theory]
    [MemberData(nameof(PerChannelCases))]
    public void MatchesPyTorchFakeQuantizeAndQParams(string caseName, string tag)
    {
        using var scope = NewDisposeScope();
        using var file = Reference.OpenTensors();
        var input = file.ReadTensor($"{caseName}/input");
        var expected = file.ReadTensor($"{caseName}/{tag}/fake_quant");
        var spec = SpecFor(tag);

        var (data, scale, zp, dq) = QuantizeWeight(input, spec);

        Assert.True(TestData.BitEqual(expected, dq), $"{caseName}/{tag}: max |diff| = {(expected - dq).abs().max().item<float>()}");
        var obs = Reference.Json.GetProperty("cases").GetProperty(caseName).GetProperty("observers").GetProperty(tag);
        float[] refScale = obs.GetProperty("scale").EnumerateArray().Select(e => e.GetSingleValue()).ToArray();
        int[] refZp = obs.GetProperty("zero_point").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        Assert.Equal(refScale, scale!.flatten().data<float>().ToArray());
        int[] ourZp = zp is null ? new int[refZp.Length] : zp.flatten().data<int>().ToArray();
        Assert.Equal(refZp, ourZp);
    }

    public static TheoryData<string, string> GroupCases()
    {
        var data = new TheoryData<string, string>();
        foreach (var c in new[] { "grp0", "grp1", "grp2" })
            foreach (var tag in new[] { "g32_int4_sym", "g32_uint4_affine", "g32_int8_sym", "g64_int4_sym", "g64_uint4_affine", "g64_int8_sym" })
                if (!(c == "grp2" && tag.StartsWith("g64", StringComparison.Ordinal))) data.Add(c, tag);
        return data;
    }

    [Theory]
    [MemberData(nameof(GroupCases))]
    public void PerGroupMatchesPyTorch(string caseName, string tag)
    {
        using var scope = NewDisposeScope();
        using var file = Reference.OpenGroups();
        var input = file.ReadTensor($"{caseName}/input");
        int g = tag.StartsWith("g32", StringComparison.Ordinal) ? 32 : 64;
        var spec = tag.EndsWith("int4_sym", StringComparison.Ordinal) ? new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(g))
            : tag.EndsWith("uint4_affine", StringComparison.Ordinal) ? new QuantSpec(QuantType.UInt4, QuantScheme.Affine, new PerGroup(g))
            : new QuantSpec(QuantType.Int8, QuantScheme.Symmetric, new PerGroup(g));

        var (data, scale, zp, dq) = QuantizeWeight(input, spec);

        var refScale = file.ReadTensor($"{caseName}/{tag}/scale");
        Assert.True(TestData.BitEqual(refScale, scale!), "scales differ");
        // The stored integers are PyTorch's / torchao's per-group integers (round(x * (1 / s))), and the module's
        // dequantized weight is the reference fake_quant bit for bit.
        var refQ = file.ReadTensor($"{caseName}/{tag}/q").to(ScalarType.Float32);
        var ourQ = WeightQuantizer.IntegerValues(data, spec.Type).reshape(refQ.shape);
        Assert.True(TestData.BitEqual(refQ, ourQ), $"integers differ: max |diff| = {(refQ - ourQ).abs().max().item<float>()}");
        var refZp = file.ReadTensor($"{caseName}/{tag}/zero_point").to(ScalarType.Float32);
        long groups = refScale.shape[1];
        var expected = ((refQ.reshape(refQ.shape[0], groups, g) - refZp.unsqueeze(-1)) * refScale.unsqueeze(-1)).reshape(refQ.shape);
        Assert.True(TestData.BitEqual(expected, dq), $"max |diff| = {(expected - dq).abs().max().item<float>()}");
        Assert.True(TestData.BitEqual(file.ReadTensor($"{caseName}/{tag}/fake_quant"), dq), "fake_quant differs");
        if (spec.Type.Bits() == 4)
            Assert.Equal(new[] { input.shape[0], input.shape[1] / 2 }, data.shape);
    }

    [Fact]
    public void HalfCastsMatchPyTorch()
    {
        using var scope = NewDisposeScope();
        using var file = Reference.OpenTensors();
        foreach (var c in new[] { "gauss", "conv4d", "huge_range" })
        {
            var input = file.ReadTensor($"{c}/input");
            foreach (var (type, tag) in new[] { (QuantType.Float16, "fp16_roundtrip"), (QuantType.BFloat16, "bf16_roundtrip") })
            {
                var spec = new QuantSpec(type);
                var (_, scale, zp, dq) = QuantizeWeight(input, spec);
                Assert.Null(scale);
                Assert.Null(zp);
                Assert.True(TestData.BitEqual(file.ReadTensor($"{c}/{tag}"), dq), $"{c} {type}");
            }
        }
    }

    /// <summary>The canonical parts (copies) and the dequantized weight of <paramref name="input"/> quantized as a layer weight.</summary>
    private static (Tensor Data, Tensor? Scale, Tensor? ZeroPoint, Tensor Dequantized) QuantizeWeight(Tensor input, QuantSpec spec)
    {
        using var w = QuantizedWeight.Quantize(input, spec);
        using var c = w.ToCanonical();
        return (c.Data.clone(), c.Scale?.clone(), c.ZeroPoint?.clone(), w.Dequantize());
    }

    private static Tensor Pack4(float[] values, int rows)
    {
        // Packed by the library's span packer (QuantSharp.Primitives.Packing), unpacked by the module path.
        var bytes = new byte[Packing.PackedLength(values.Length, 4)];
        Packing.Pack(values.Select(v => (sbyte)v).ToArray(), 4, bytes);
        return torch.tensor(bytes, ScalarType.Byte).reshape(rows, bytes.Length / rows);
    }

    [Fact]
    public void Int4UnpackIsExactForEveryValuePair()
    {
        using var scope = NewDisposeScope();
        // Every ordered pair of 4-bit values, signed and unsigned: pack then unpack gives them back.
        var signedVals = Enumerable.Range(-8, 16).SelectMany(a => Enumerable.Range(-8, 16).SelectMany(b => new[] { a, b })).Select(v => (float)v).ToArray();
        var packed = Pack4(signedVals, 16);
        Assert.Equal(new long[] { 16, 16 }, packed.shape);
        Assert.True(TestData.BitEqual(torch.tensor(signedVals).reshape(16, 32), WeightQuantizer.Unpack(packed, QuantType.Int4)));
        // Low nibble first: (-8, 7) -> 0x8 | 0x7 << 4 = 0x78.
        Assert.Equal((byte)0x78, Pack4([-8, 7], 1).data<byte>()[0]);

        var unsignedVals = signedVals.Select(v => v + 8).ToArray();
        Assert.True(TestData.BitEqual(torch.tensor(unsignedVals).reshape(16, 32), WeightQuantizer.Unpack(Pack4(unsignedVals, 16), QuantType.UInt4)));
    }

    [Fact]
    public void UnsupportedShapesAreExplained()
    {
        var g32 = new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(32));
        Assert.Contains("does not divide the reduction length 9", WeightQuantizer.Unsupported(g32, [16, 1, 3, 3]));
        Assert.Null(WeightQuantizer.Unsupported(g32, [16, 8, 2, 2]));
        Assert.Contains("even", WeightQuantizer.Unsupported(new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerAxis(0)), [4, 9]));
        var ex = Assert.Throws<ArgumentException>(() => QuantizedWeight.Quantize(torch.zeros(4, 9), g32));
        Assert.Contains("group size 32", ex.Message);
    }
}
