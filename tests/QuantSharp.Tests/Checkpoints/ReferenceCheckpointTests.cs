using System.Text.Json;
using QuantSharp.Serialization;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Checkpoints;

/// <summary>
/// The stored integers, scales and zero points of a quantized checkpoint, read back as a plain safetensors file and
/// decoded by the rules of docs/FORMAT.md (written out here independently), equal PyTorch's (shared/reference).
/// </summary>
public class ReferenceCheckpointTests
{
    private static string MakeInput(TempDir dir)
    {
        using var refs = Reference.OpenTensors();
        using var groups = Reference.OpenGroups();
        using var gauss = refs.ReadTensor("gauss/input");          // [64, 128]
        using var outl = refs.ReadTensor("outlier_rows_cols/input"); // [48, 96]
        using var grp = groups.ReadTensor("grp0/input");             // [32, 256]
        SafetensorsWriter.Save(dir["ref.safetensors"], [("gauss.weight", gauss), ("outlier.weight", outl), ("grp.weight", grp)]);
        return dir["ref.safetensors"];
    }

    /// <summary>FORMAT.md decoding of packed 4-bit data: element 2k is the low nibble of byte k, 2k+1 the high nibble.</summary>
    private static int[] Unpack4(byte[] packed, bool signed)
    {
        var v = new int[packed.Length * 2];
        for (int k = 0; k < packed.Length; k++)
        {
            int lo = packed[k] & 0xF, hi = packed[k] >> 4;
            v[2 * k] = signed && lo >= 8 ? lo - 16 : lo;
            v[2 * k + 1] = signed && hi >= 8 ? hi - 16 : hi;
        }
        return v;
    }

    private static float[] Floats(byte[] b) => System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(b).ToArray();
    private static int[] Ints(byte[] b) => System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(b).ToArray();

    [Theory]
    [InlineData("gauss", "perchannel_symmetric_qint8", "symmetric")]
    [InlineData("gauss", "perchannel_affine_qint8", "affine")]
    [InlineData("outlier_rows_cols", "perchannel_symmetric_qint8", "symmetric")]
    public void Int8PerChannelMatchesPyTorch(string refCase, string tag, string scheme)
    {
        using var dir = new TempDir();
        string input = MakeInput(dir);
        string name = refCase == "gauss" ? "gauss.weight" : "outlier.weight";
        var settings = QuantizationRecipe.FromJson($$"""{"qtype": "int8", "scheme": "{{scheme}}", "granularity": "per-channel", "include": ["{{name}}"]}""");
        var report = CheckpointQuantizer.Quantize(input, dir["out.safetensors"], settings);
        Assert.True(report.Passed, string.Join("\n", report.Problems));

        using var refs = Reference.OpenTensors();
        var expected = Reference.Json.GetProperty("cases").GetProperty(refCase).GetProperty("observers").GetProperty(tag);
        using var f = SafetensorsFile.Open(dir["out.safetensors"]);
        Assert.Equal(refs.ReadBytes($"{refCase}/{tag}/q"), f.ReadBytes(name));
        Assert.Equal(expected.GetProperty("scale").EnumerateArray().Select(e => e.GetSingleValue()), Floats(f.ReadBytes(name + ".scale")));
        var zp = expected.GetProperty("zero_point").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        if (scheme == "affine") Assert.Equal(zp, Ints(f.ReadBytes(name + ".zero_point")));
        else { Assert.All(zp, z => Assert.Equal(0, z)); Assert.False(f.Contains(name + ".zero_point")); }
        Assert.Equal(expected.GetProperty("sqnr_db").GetSingleValue(), report.Layers.Single(t => t.Name == name).WeightSqnrDb!.Value, 2);
    }

    [Theory]
    [InlineData("g32_int4_sym", "int4", "symmetric", 32)]
    [InlineData("g64_int4_sym", "int4", "symmetric", 64)]
    [InlineData("g32_uint4_affine", "uint4", "affine", 32)]
    [InlineData("g64_int8_sym", "int8", "symmetric", 64)]
    public void PerGroupMatchesPyTorch(string tag, string qtype, string scheme, int group)
    {
        using var dir = new TempDir();
        string input = MakeInput(dir);
        var settings = QuantizationRecipe.FromJson(
            $$"""{"qtype": "{{qtype}}", "scheme": "{{scheme}}", "granularity": "group:{{group}}", "include": ["grp.weight"]}""");
        var report = CheckpointQuantizer.Quantize(input, dir["out.safetensors"], settings);
        Assert.True(report.Passed, string.Join("\n", report.Problems));

        using var groups = Reference.OpenGroups();
        using var refQ = groups.ReadTensor($"grp0/{tag}/q");
        using var refScale = groups.ReadTensor($"grp0/{tag}/scale");
        using var refZp = groups.ReadTensor($"grp0/{tag}/zero_point");
        int[] expectedQ = refQ.to(ScalarType.Int32).data<int>().ToArray();
        using var f = SafetensorsFile.Open(dir["out.safetensors"]);
        byte[] stored = f.ReadBytes("grp.weight");
        int[] q = qtype switch
        {
            "int8" => stored.Select(b => (int)(sbyte)b).ToArray(),
            _ => Unpack4(stored, signed: qtype == "int4"),
        };
        Assert.Equal(expectedQ, q);
        Assert.Equal(new long[] { 32, 256 / group }, f.GetInfo("grp.weight.scale").Shape);
        Assert.Equal(refScale.to(ScalarType.Float32).data<float>().ToArray(), Floats(f.ReadBytes("grp.weight.scale")));
        if (scheme == "affine") Assert.Equal(refZp.to(ScalarType.Int32).data<int>().ToArray(), Ints(f.ReadBytes("grp.weight.zero_point")));
        double refSqnr = Reference.GroupsJson.GetProperty("cases").GetProperty("grp0").GetProperty(tag).GetProperty("sqnr_db").GetDouble();
        Assert.Equal(refSqnr, report.Layers.Single(t => t.Name == "grp.weight").WeightSqnrDb!.Value, 2);
    }
}
