using System.CommandLine;
using System.Text.Json;
using QuantSharp.Cli;

namespace QuantSharp.Tests.Cli;

/// <summary>Runs <c>quantsharp observe</c> in-process on the reference file and checks its JSON against the reference.</summary>
public class ObserveCommandTests
{
    private static string ReferenceFile => Path.Combine(Reference.PyTorchDir, "reference.safetensors");

    /// <summary>The observe options that reproduce each reference tag (the command lines given in the report).</summary>
    private static readonly Dictionary<string, string> s_tagArgs = new()
    {
        ["minmax_affine_qint8"] = "--observer minmax --dtype int8 --scheme affine",
        ["minmax_affine_quint8"] = "--observer minmax --dtype uint8 --scheme affine",
        ["minmax_symmetric_qint8"] = "--observer minmax --dtype int8 --scheme symmetric",
        ["minmax_affine_qint8_reduce_range"] = "--observer minmax --dtype int8 --scheme affine --reduce-range",
        ["minmax_symmetric_int4"] = "--observer minmax --dtype int4 --scheme symmetric",
        ["minmax_affine_uint4"] = "--observer minmax --dtype uint4 --scheme affine",
        ["perchannel_affine_qint8"] = "--observer minmax --dtype int8 --scheme affine --axis 0",
        ["perchannel_symmetric_qint8"] = "--observer minmax --dtype int8 --scheme symmetric --axis 0",
        ["perchannel_symmetric_int4"] = "--observer minmax --dtype int4 --scheme symmetric --axis 0",
        ["perchannel_axis1_symmetric_qint8"] = "--observer minmax --dtype int8 --scheme symmetric --axis 1",
        ["moving_avg_affine_qint8_c0.01"] = "--observer moving-average --dtype int8 --scheme affine --averaging-constant 0.01 --chunks 4",
        ["moving_avg_symmetric_qint8_c0.1"] = "--observer moving-average --dtype int8 --scheme symmetric --averaging-constant 0.1 --chunks 4",
        ["histogram_l2_affine_quint8"] = "--observer histogram --method l2 --dtype uint8 --scheme affine --chunks 4",
        // ONNX Runtime calibrations: only the thresholds are compared.
        ["ort_entropy_asym"] = "--observer histogram --dtype int8 --scheme affine",
        ["ort_entropy_sym"] = "--observer histogram --dtype int8 --scheme symmetric",
        ["ort_percentile_sym_p99.99"] = "--observer percentile --dtype int8 --scheme symmetric --percentile 99.99",
        ["ort_percentile_asym_p99.9"] = "--observer percentile --dtype int8 --scheme affine --percentile 99.9",
    };

    /// <summary>Runs the CLI with output and error captured; returns (exit code, stdout, stderr).</summary>
    internal static (int Code, string Out, string Err) RunCli(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Program.BuildRoot().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }

    public static IEnumerable<object[]> CliTags()
    {
        foreach (var c in Reference.Json.GetProperty("cases").EnumerateObject())
        {
            if (c.Value.TryGetProperty("observers", out var obs))
                foreach (var tag in obs.EnumerateObject())
                    if (tag.Name != "moving_avg_perchannel_affine_qint8_c0.01") // fed x, 0.5x, 1.5x: not a CLI feeding
                        yield return [c.Name, tag.Name];
            if (c.Value.TryGetProperty("ort_calibration", out var ort))
                foreach (var tag in ort.EnumerateObject())
                    yield return [c.Name, tag.Name];
        }
    }

    [Theory]
    [MemberData(nameof(CliTags))]
    public void JsonMatchesReference(string caseName, string tag)
    {
        string[] args = ["observe", ReferenceFile, "--tensor", $"{caseName}/input", .. s_tagArgs[tag].Split(' '), "--json"];
        var (code, stdout, stderr) = RunCli(args);
        Assert.True(code == 0, $"exit {code}: {stderr}");
        using var doc = JsonDocument.Parse(stdout);
        var got = doc.RootElement;
        var caseJson = Reference.Json.GetProperty("cases").GetProperty(caseName);
        if (tag.StartsWith("ort_", StringComparison.Ordinal))
        {
            var expected = caseJson.GetProperty("ort_calibration").GetProperty(tag).GetProperty("thresholds");
            Assert.Equal(Floats(expected), Floats(got.GetProperty("threshold")));
            return;
        }
        var exp = caseJson.GetProperty("observers").GetProperty(tag);
        Assert.Equal(Floats(exp.GetProperty("scale")).Select(BitConverter.SingleToInt32Bits),
            Floats(got.GetProperty("scale")).Select(BitConverter.SingleToInt32Bits));
        Assert.Equal(exp.GetProperty("zero_point").EnumerateArray().Select(e => e.GetInt32()),
            got.GetProperty("zero_point").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Equal(Floats(exp.GetProperty("min_val")), Floats(got.GetProperty("min")));
        Assert.Equal(Floats(exp.GetProperty("max_val")), Floats(got.GetProperty("max")));
        Assert.Equal(tag.StartsWith("histogram", StringComparison.Ordinal), got.TryGetProperty("threshold", out _));
    }

    [Fact]
    public void TableOutputShowsTheParameters()
    {
        var (code, stdout, _) = RunCli("observe", ReferenceFile, "--tensor", "gauss/input", "--observer", "minmax", "--dtype", "int8", "--scheme", "symmetric");
        Assert.Equal(0, code);
        var exp = Reference.Json.GetProperty("cases").GetProperty("gauss").GetProperty("observers").GetProperty("minmax_symmetric_qint8");
        Assert.Contains(exp.GetProperty("scale")[0].GetSingle().ToString("R", System.Globalization.CultureInfo.InvariantCulture), stdout);
        Assert.Contains("zero point", stdout);
    }

    [Fact]
    public void MissingTensorListsNamesOnStderr()
    {
        var (code, stdout, stderr) = RunCli("observe", ReferenceFile, "--tensor", "gauss/inpt");
        Assert.NotEqual(0, code);
        Assert.Equal("", stdout);
        Assert.Contains("no tensor named 'gauss/inpt'", stderr);
        Assert.Contains("gauss/input", stderr);
    }

    [Fact]
    public void NonFloatTensorIsRefused()
    {
        var (code, _, stderr) = RunCli("observe", ReferenceFile, "--tensor", "ties/quantize_scale1_zp0");
        Assert.NotEqual(0, code);
        Assert.Contains("floating-point", stderr);
    }

    [Theory]
    [InlineData("--observer minmax --percentile 99", "--percentile applies only")]
    [InlineData("--observer minmax --averaging-constant 0.5", "--averaging-constant applies only")]
    [InlineData("--observer moving-average --averaging-constant 0", "(0, 1]")]
    [InlineData("--observer histogram --axis 0", "per-tensor only")]
    [InlineData("--observer minmax --axis 0 --group-size 32", "either a channel axis or a group size")]
    [InlineData("--observer minmax --dtype float16", "not supported")]
    [InlineData("--observer kl", "Unknown observer")]
    [InlineData("--observer minmax --scheme weird", "Unknown --scheme")]
    [InlineData("--observer minmax --chunks 0", "--chunks must be at least 1")]
    [InlineData("--observer minmax --group-size 48", "must divide the last dimension")]
    [InlineData("--observer histogram --method l2 --merge-batches", "--merge-batches applies only")]
    public void BadOptionCombinationsFailWithAMessage(string options, string message)
    {
        string[] args = ["observe", ReferenceFile, "--tensor", "gauss/input", .. options.Split(' ')];
        var (code, stdout, stderr) = RunCli(args);
        Assert.NotEqual(0, code);
        Assert.Equal("", stdout);
        Assert.Contains(message, stderr);
    }

    [Fact]
    public void ChunksAreOneCollectionUnlessMerged()
    {
        // gauss/input in 8 chunks: a later chunk exceeds the first one's range. By default the chunks are one
        // collection (the thresholds of the whole tensor); --merge-batches grows the histogram chunk by chunk.
        string[] Args(params string[] extra) => ["observe", ReferenceFile, "--tensor", "gauss/input", "--observer", "histogram", "--json", .. extra];
        var whole = Floats(JsonDocument.Parse(RunCli(Args()).Out).RootElement.GetProperty("threshold"));
        var chunked = Floats(JsonDocument.Parse(RunCli(Args("--chunks", "8")).Out).RootElement.GetProperty("threshold"));
        var merged = Floats(JsonDocument.Parse(RunCli(Args("--chunks", "8", "--merge-batches")).Out).RootElement.GetProperty("threshold"));
        Assert.Equal(whole, chunked);
        Assert.NotEqual(whole, merged);
    }

    [Fact]
    public void MissingFileFails()
    {
        var (code, _, stderr) = RunCli("observe", Path.Combine(Path.GetTempPath(), "no-such-file.safetensors"), "--tensor", "x");
        Assert.NotEqual(0, code);
        Assert.Contains("No such file", stderr);
    }

    private static float[] Floats(JsonElement array) => array.EnumerateArray().Select(e => e.GetSingleValue()).ToArray();
}
