using System.Runtime.InteropServices;
using System.Text.Json;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Tensors;

/// <summary>
/// QuantizedTensor against PyTorch 2.11 (../shared/reference/pytorch): qparams, integers, fake-quant outputs,
/// half-precision casts and per-group quantization, all bit-exact.
/// </summary>
public class QuantizedTensorParityTests
{
    /// <summary>The observer tags whose qparams come from MinMax observers, with the spec each one means.</summary>
    internal static QuantSpec? SpecForTag(string tag) => tag switch
    {
        "minmax_affine_qint8" => new QuantSpec(QuantType.Int8, QuantScheme.Affine),
        "minmax_affine_quint8" => new QuantSpec(QuantType.UInt8, QuantScheme.Affine),
        "minmax_symmetric_qint8" => new QuantSpec(QuantType.Int8, QuantScheme.Symmetric),
        "minmax_affine_qint8_reduce_range" => new QuantSpec(QuantType.Int8, QuantScheme.Affine, reduceRange: true),
        "minmax_symmetric_int4" => new QuantSpec(QuantType.Int4, QuantScheme.Symmetric),
        "minmax_affine_uint4" => new QuantSpec(QuantType.UInt4, QuantScheme.Affine),
        "perchannel_affine_qint8" => new QuantSpec(QuantType.Int8, QuantScheme.Affine, new PerAxis(0)),
        "perchannel_symmetric_qint8" => new QuantSpec(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0)),
        "perchannel_axis1_symmetric_qint8" => new QuantSpec(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(1)),
        "perchannel_symmetric_int4" => new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerAxis(0)),
        _ => null,
    };

    public static TheoryData<string, string> MinMaxTags()
    {
        var data = new TheoryData<string, string>();
        foreach (var c in Reference.Json.GetProperty("cases").EnumerateObject())
            foreach (var tag in c.Value.GetProperty("observers").EnumerateObject())
                if (tag.Name.StartsWith("minmax_", StringComparison.Ordinal) || tag.Name.StartsWith("perchannel_", StringComparison.Ordinal))
                    data.Add(c.Name, tag.Name);
        return data;
    }

    [Fact]
    public void EveryMinMaxTagHasASpec()
    {
        var tags = MinMaxTags().Select(r => (string)r[1]).Distinct().ToList();
        Assert.Equal(10, tags.Count);
        Assert.All(tags, t => Assert.NotNull(SpecForTag(t)));
    }

    [Theory]
    [MemberData(nameof(MinMaxTags))]
    public void QuantizeMatchesPyTorchObserverAndQuantization(string caseName, string tag)
    {
        var spec = SpecForTag(tag)!;
        var expected = Reference.Json.GetProperty("cases").GetProperty(caseName).GetProperty("observers").GetProperty(tag);
        var range = expected.GetProperty("qmin_qmax");
        Assert.Equal(new QuantRange(range[0].GetInt32(), range[1].GetInt32()), spec.Range);

        using var file = Reference.OpenTensors();
        using var input = file.ReadTensor($"{caseName}/input");
        using var q = QuantizedTensor.Quantize(input, spec);

        // qparams: scale bit-equal, zero point equal.
        float[] refScale = expected.GetProperty("scale").EnumerateArray().Select(e => e.GetSingle()).ToArray();
        int[] refZp = expected.GetProperty("zero_point").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        Assert.Equal(refScale.Select(BitConverter.SingleToInt32Bits), q.ScaleValues.Select(BitConverter.SingleToInt32Bits));
        Assert.Equal(refZp, q.ZeroPointValues);
        if (q.ZeroPoint is null) Assert.All(refZp, z => Assert.Equal(0, z));
        Assert.Equal(spec.ParameterShape(input.shape), q.Scale!.shape);

        // Integers, where the reference stored them (8-bit tags).
        string qName = $"{caseName}/{tag}/q";
        if (file.Contains(qName))
        {
            using var refQ = file.ReadTensor(qName);
            using var ours = q.IntegerValues();
            using var refInt = refQ.to(ScalarType.Int32);
            Assert.Equal(Ints(refInt), Ints(ours));
            // The stored data itself has the dtype PyTorch uses.
            Assert.Equal(refQ.dtype, q.Data.dtype);
            Assert.Equal(file.ReadBytes(qName), q.Data.bytes.ToArray());
        }

        // Dequantized output equals PyTorch's fake-quant output bit for bit.
        using var deq = q.Dequantize();
        Assert.Equal(input.shape, deq.shape);
        AssertBitsEqual(file.ReadBytes($"{caseName}/{tag}/fake_quant"), deq);
    }

    public static TheoryData<string> HalfCases()
    {
        var data = new TheoryData<string>();
        foreach (var c in Reference.Json.GetProperty("cases").EnumerateObject()) data.Add(c.Name);
        data.Add("fp16_edges");
        return data;
    }

    [Theory]
    [MemberData(nameof(HalfCases))]
    public void Float16AndBFloat16CastsMatchPyTorch(string caseName)
    {
        using var file = Reference.OpenTensors();
        using var input = file.ReadTensor($"{caseName}/input");
        foreach (var (type, name) in new[] { (QuantType.Float16, "fp16"), (QuantType.BFloat16, "bf16") })
        {
            using var q = QuantizedTensor.Quantize(input, new QuantSpec(type));
            Assert.Null(q.Scale);
            Assert.Null(q.ZeroPoint);
            Assert.Equal(file.ReadTensor($"{caseName}/{name}").dtype, q.Data.dtype);
            Assert.Equal(file.ReadBytes($"{caseName}/{name}"), q.Data.bytes.ToArray());
            using var back = q.Dequantize();
            AssertBitsEqual(file.ReadBytes($"{caseName}/{name}_roundtrip"), back);
            Assert.Equal(input.numel() * 2, q.StorageBytes);
        }
    }

    [Fact]
    public void TiesRoundHalfToEven()
    {
        using var file = Reference.OpenTensors();
        using var input = file.ReadTensor("ties/input");
        using var q = QuantizedTensor.QuantizeWith(input, new QuantSpec(QuantType.Int8, QuantScheme.Affine), [1f], [0]);
        Assert.Equal(file.ReadBytes("ties/quantize_scale1_zp0"), q.Data.bytes.ToArray());
        using var deq = q.Dequantize();
        AssertBitsEqual(file.ReadBytes("ties/fake_quant_scale1_zp0"), deq);
    }

    public static TheoryData<string, string> GroupTags()
    {
        var data = new TheoryData<string, string>();
        foreach (var c in Reference.GroupsJson.GetProperty("cases").EnumerateObject())
            foreach (var tag in c.Value.EnumerateObject())
                if (tag.Name.StartsWith('g') && tag.Value.ValueKind == JsonValueKind.Object)
                    data.Add(c.Name, tag.Name);
        return data;
    }

    [Theory]
    [MemberData(nameof(GroupTags))]
    public void PerGroupMatchesPyTorch(string caseName, string tag)
    {
        // Tag: g{G}_{int4_sym|uint4_affine|int8_sym}
        string[] parts = tag.Split('_');
        int groupSize = int.Parse(parts[0][1..], System.Globalization.CultureInfo.InvariantCulture);
        var type = QuantTypeInfo.Parse(parts[1]);
        var scheme = parts[2] == "sym" ? QuantScheme.Symmetric : QuantScheme.Affine;
        var spec = new QuantSpec(type, scheme, new PerGroup(groupSize));
        var range = Reference.GroupsJson.GetProperty("cases").GetProperty(caseName).GetProperty(tag).GetProperty("qmin_qmax");
        Assert.Equal(new QuantRange(range[0].GetInt32(), range[1].GetInt32()), spec.Range);

        using var file = Reference.OpenGroups();
        using var input = file.ReadTensor($"{caseName}/input");
        using var q = QuantizedTensor.Quantize(input, spec);

        using var refScale = file.ReadTensor($"{caseName}/{tag}/scale");
        Assert.Equal(refScale.shape, q.Scale!.shape);
        Assert.Equal(file.ReadBytes($"{caseName}/{tag}/scale"), q.Scale.bytes.ToArray());
        using var refZp = file.ReadTensor($"{caseName}/{tag}/zero_point");
        if (q.ZeroPoint is null) Assert.True(Ints(refZp).All(z => z == 0));
        else Assert.Equal(file.ReadBytes($"{caseName}/{tag}/zero_point"), q.ZeroPoint.bytes.ToArray());

        using var refQ = file.ReadTensor($"{caseName}/{tag}/q");
        using var refInt = refQ.to(ScalarType.Int32);
        using var ours = q.IntegerValues();
        Assert.Equal(Ints(refInt), Ints(ours));

        // Dequantize() is (q - zp) * scale of the reference integers, in float32, and equals the reference
        // fake_quant bit for bit (both come from round(x * (1 / scale)), torchao's quantize_affine arithmetic).
        float[] s = MemoryMarshal.Cast<byte, float>(file.ReadBytes($"{caseName}/{tag}/scale")).ToArray();
        int[] z = Ints(refZp);
        int[] refInts = Ints(refInt);
        int groups = s.Length, g = refInts.Length / groups;
        var expectedDeq = new float[refInts.Length];
        for (int i = 0; i < refInts.Length; i++) expectedDeq[i] = (refInts[i] - z[i / g]) * s[i / g];
        using var deq = q.Dequantize();
        AssertBitsEqual(MemoryMarshal.AsBytes(expectedDeq.AsSpan()).ToArray(), deq);
        AssertBitsEqual(file.ReadBytes($"{caseName}/{tag}/fake_quant"), deq);

        // Fake quantization with PyTorch's fake-quant arithmetic reproduces the reference fake_quant bit for bit.
        var x = MemoryMarshal.Cast<byte, float>(file.ReadBytes($"{caseName}/input")).ToArray();
        var fq = new float[x.Length];
        QuantSharp.Primitives.Quantization.FakeQuantize(x, g, s, z, spec.Range, fq);
        using var fqTensor = torch.tensor(fq);
        AssertBitsEqual(file.ReadBytes($"{caseName}/{tag}/fake_quant"), fqTensor);
    }

    internal static int[] Ints(Tensor t) => MemoryMarshal.Cast<byte, int>(t.contiguous().bytes).ToArray();

    internal static void AssertBitsEqual(byte[] expected, Tensor actual)
    {
        Assert.Equal(ScalarType.Float32, actual.dtype);
        var e = MemoryMarshal.Cast<byte, uint>(expected);
        var a = MemoryMarshal.Cast<byte, uint>(actual.bytes);
        Assert.Equal(e.Length, a.Length);
        for (int i = 0; i < e.Length; i++)
        {
            if (e[i] != a[i])
                Assert.Fail($"Element {i}: expected {BitConverter.UInt32BitsToSingle(e[i]):R} (0x{e[i]:X8}), got {BitConverter.UInt32BitsToSingle(a[i]):R} (0x{a[i]:X8}).");
        }
    }
}
