using QuantSharp.Modules;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace QuantSharp.Tests.Modules;

/// <summary>Quantized layers against their float counterparts on random inputs (SQNR bounds per type).</summary>
public class QuantizedModulesTests
{
    // Bounds: int8 per-channel weights give ~40 dB weight SQNR on Gaussian weights, int4 group-32 ~20 dB (PyTorch's
    // own numbers for the reference data: 45 dB / 20.4 dB); fp16 ~75 dB, bf16 ~50 dB. The bounds leave a margin.
    public static TheoryData<string, double> Specs() => new()
    {
        { "int8", 30 },
        { "int8-affine", 30 },
        { "uint8-affine", 30 },
        { "int4-g32", 15 },
        { "uint4-g32", 15 },
        { "int4-pc", 10 },
        { "fp16", 60 },
        { "bf16", 40 },
    };

    internal static QuantSpec Parse(string name) => name switch
    {
        "int8" => new(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0)),
        "int8-affine" => new(QuantType.Int8, QuantScheme.Affine, new PerAxis(0)),
        "uint8-affine" => new(QuantType.UInt8, QuantScheme.Affine, new PerAxis(0)),
        "int4-g32" => new(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(32)),
        "uint4-g32" => new(QuantType.UInt4, QuantScheme.Affine, new PerGroup(32)),
        "int4-pc" => new(QuantType.Int4, QuantScheme.Symmetric, new PerAxis(0)),
        "fp16" => new(QuantType.Float16),
        "bf16" => new(QuantType.BFloat16),
        _ => throw new ArgumentException(name),
    };

    [Theory]
    [MemberData(nameof(Specs))]
    public void LinearOutputIsCloseToFloat(string specName, double minDb)
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(11);
        var lin = Linear(256, 64);
        var x = torch.randn(32, 256);
        var q = (QuantizedLinear)QuantizedModules.Quantize(lin, Parse(specName));
        double db = Metrics(lin.call(x), q.call(x));
        Assert.True(db > minDb, $"{specName}: output SQNR {db:F1} dB <= {minDb}");
        // The bias is kept exactly.
        Assert.True(TestData.BitEqual(lin.bias!, q.bias!));
    }

    [Theory]
    [MemberData(nameof(Specs))]
    public void Conv2dOutputIsCloseToFloat(string specName, double minDb)
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(12);
        // in*kh*kw = 8*2*2 = 32 fits group size 32; stride, padding and dilation are carried over.
        var conv = Conv2d(8, 16, 2, stride: 2, padding: 1, dilation: 1);
        var x = torch.randn(4, 8, 10, 10);
        var q = (QuantizedConv)QuantizedModules.Quantize(conv, Parse(specName));
        double db = Metrics(conv.call(x), q.call(x));
        Assert.True(db > minDb, $"{specName}: output SQNR {db:F1} dB <= {minDb}");
    }

    [Theory]
    [MemberData(nameof(Specs))]
    public void Conv1dOutputIsCloseToFloat(string specName, double minDb)
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(13);
        var conv = Conv1d(16, 8, 4, padding: 2, groups: 2); // per-group reduction: 16/2*4 = 32
        var x = torch.randn(3, 16, 20);
        var q = (QuantizedConv)QuantizedModules.Quantize(conv, Parse(specName));
        double db = Metrics(conv.call(x), q.call(x));
        Assert.True(db > minDb, $"{specName}: output SQNR {db:F1} dB <= {minDb}");
    }

    [Theory]
    [MemberData(nameof(Specs))]
    public void EmbeddingOutputIsCloseToFloat(string specName, double minDb)
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(14);
        var emb = Embedding(50, 64);
        var idx = torch.randint(0, 50, [6, 7], dtype: ScalarType.Int64);
        var q = (QuantizedEmbedding)QuantizedModules.Quantize(emb, Parse(specName));
        var expected = emb.call(idx);
        var actual = q.call(idx);
        Assert.Equal(expected.shape, actual.shape);
        double db = Metrics(expected, actual);
        Assert.True(db > minDb, $"{specName}: output SQNR {db:F1} dB <= {minDb}");
        // Row lookup gives exactly the rows of the fully dequantized table.
        var table = q.DequantizeWeight();
        Assert.True(TestData.BitEqual(table.index_select(0, idx.flatten()).reshape(6, 7, 64), actual));
    }

    [Fact]
    public void StorageIsSmall()
    {
        using var scope = NewDisposeScope();
        var lin = Linear(256, 128);
        var int8 = (QuantizedLinear)QuantizedModules.Quantize(lin, Parse("int8"));
        Assert.Equal(ScalarType.Int8, int8.state_dict()["weight"].dtype);
        Assert.Equal(256L * 128 + 128 * 4, int8.WeightStorageBytes); // data + one float32 scale per row, no zero point
        var int4 = (QuantizedLinear)QuantizedModules.Quantize(lin, Parse("int4-g32"));
        Assert.Equal(ScalarType.Byte, int4.state_dict()["weight"].dtype);
        Assert.Equal(new long[] { 128, 128 }, int4.state_dict()["weight"].shape);
        Assert.Equal(256L * 128 / 2 + 128 * 8 * 4, int4.WeightStorageBytes);
        var fp16 = (QuantizedLinear)QuantizedModules.Quantize(lin, Parse("fp16"));
        Assert.Equal(256L * 128 * 2, fp16.WeightStorageBytes);
        // The quantized data is in the state_dict (registered buffers), the float weight is not.
        var keys = int4.state_dict().Keys.ToHashSet();
        Assert.Equal(new HashSet<string> { "weight", "weight_scale", "bias" }, keys);
        Assert.Equal(ScalarType.Byte, int4.state_dict()["weight"].dtype);
    }

    [Fact]
    public void WrongInputShapeNamesTheLayer()
    {
        using var scope = NewDisposeScope();
        var q = (QuantizedLinear)QuantizedModules.Quantize(Linear(16, 4), Parse("int8"));
        q.LayerName = "head";
        var ex = Assert.Throws<ArgumentException>(() => q.call(torch.randn(2, 15)));
        Assert.Contains("'head'", ex.Message);
        Assert.Contains("[2, 15]", ex.Message);
        Assert.Contains("16", ex.Message);

        var conv = (QuantizedConv)QuantizedModules.Quantize(Conv2d(3, 4, 3), Parse("int8"));
        conv.LayerName = "stem";
        var ex2 = Assert.Throws<ArgumentException>(() => conv.call(torch.randn(1, 5, 8, 8)));
        Assert.Contains("'stem'", ex2.Message);
        Assert.Contains("3, height, width", ex2.Message);

        var emb = (QuantizedEmbedding)QuantizedModules.Quantize(Embedding(10, 4), Parse("int8"));
        Assert.Contains("out of range", Assert.Throws<ArgumentException>(() => emb.call(torch.tensor(new long[] { 3, 10 }))).Message);
    }

    [Fact]
    public void ActivationQuantizationMatchesPyTorchFakeQuant()
    {
        using var scope = NewDisposeScope();
        // An identity Linear whose input is quantized with PyTorch's uint8 affine qparams for 'gauss' must reproduce
        // PyTorch's fake-quantized tensor (fp16 identity weights are exactly 1.0).
        using var file = Reference.OpenTensors();
        var x = file.ReadTensor("gauss/input");
        var obs = Reference.Json.GetProperty("cases").GetProperty("gauss").GetProperty("observers").GetProperty("minmax_affine_quint8");
        float scale = obs.GetProperty("scale")[0].GetSingleValue();
        int zp = obs.GetProperty("zero_point")[0].GetInt32();
        var lin = Linear(128, 128, hasBias: false);
        using (no_grad()) lin.weight!.copy_(torch.eye(128));
        var q = (QuantizedLinear)QuantizedModules.Quantize(lin, Parse("fp16"), new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, scale, zp));
        var expected = file.ReadTensor("gauss/minmax_affine_quint8/fake_quant");
        // Bit for bit in float32 arithmetic: over many rows the bfloat16 route would round the quantized input.
        Float32Compute.Run(() => Assert.True(TestData.BitEqual(expected, q.call(x)), $"max |diff| {(expected - q.call(x)).abs().max().item<float>()}"));
        Assert.Equal(scale, q.get_buffer("input_scale")!.item<float>());
        Assert.Equal(zp, q.get_buffer("input_zero_point")!.item<int>());
    }

    private static double Metrics(Tensor reference, Tensor actual) => QuantSharp.Validation.Metrics.Sqnr(reference, actual);
}
