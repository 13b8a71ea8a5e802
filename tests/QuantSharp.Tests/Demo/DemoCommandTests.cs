using System.CommandLine;
using System.Text.Json;
using QuantSharp.Cli;

namespace QuantSharp.Tests.Demo;

public class DemoCommandTests
{
    internal static (int Exit, string Output, string Error) RunCli(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int exit = Program.BuildRoot().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (exit, output.ToString(), error.ToString());
    }

    [Fact]
    public void Json_on_bundled_data_has_four_variants_within_the_issue_bounds()
    {
        var (exit, output, error) = RunCli("demo", "--data", "bundled", "--json");
        Assert.True(exit == 0, error);
        using var doc = JsonDocument.Parse(output);
        var root = doc.RootElement;
        Assert.Equal("bundled", root.GetProperty("data").GetString());
        Assert.Equal(1000, root.GetProperty("evaluation").GetProperty("images").GetInt32());

        var variants = root.GetProperty("variants").EnumerateArray().ToDictionary(v => v.GetProperty("name").GetString()!);
        Assert.Equal(["float32", "float16", "int8-per-channel", "int4-group32", "w8a8", "w8a8-dynamic"], variants.Keys);
        foreach (var v in variants.Values)
        {
            // accuracyPercent is consistent with the counts it reports.
            Assert.Equal(100.0 * v.GetProperty("correct").GetInt32() / v.GetProperty("total").GetInt32(),
                v.GetProperty("accuracyPercent").GetDouble(), 3);
            Assert.Equal(1000, v.GetProperty("total").GetInt32());
            Assert.True(v.GetProperty("inferenceMs").GetDouble() > 0, "inference time per variant");
        }

        double Acc(string name) => variants[name].GetProperty("accuracyPercent").GetDouble();
        long Size(string name) => variants[name].GetProperty("sizeBytes").GetInt64();
        double floatAcc = Acc("float32");
        Assert.InRange(floatAcc, 98.5, 100.0);
        // Bounds of the issue: int8 per-channel loses at most 0.1 points, int4 group-32 at most 0.5, W8A8 at most 0.3.
        Assert.True(Acc("int8-per-channel") >= floatAcc - 0.1 - 1e-9, $"int8: {Acc("int8-per-channel")} vs float {floatAcc}");
        Assert.True(Acc("int4-group32") >= floatAcc - 0.5 - 1e-9, $"int4: {Acc("int4-group32")} vs float {floatAcc}");
        Assert.True(Acc("w8a8") >= floatAcc - 0.3 - 1e-9, $"w8a8: {Acc("w8a8")} vs float {floatAcc}");
        Assert.True(Acc("w8a8-dynamic") >= floatAcc - 0.3 - 1e-9, $"w8a8-dynamic: {Acc("w8a8-dynamic")} vs float {floatAcc}");
        Assert.True(Acc("float16") >= floatAcc - 0.1 - 1e-9, $"float16: {Acc("float16")} vs float {floatAcc}");

        // float32 size is 4 bytes per parameter of the network (56,714 parameters).
        Assert.Equal(56_714L * 4, Size("float32"));
        Assert.InRange(Size("float16"), 56_714L * 2 - 1, 56_714L * 2 + 1024);
        Assert.True(Size("int8-per-channel") < Size("float32") / 3, $"int8 size {Size("int8-per-channel")}");
        Assert.True(Size("int4-group32") < Size("int8-per-channel"), $"int4 size {Size("int4-group32")}");

        // SQNR of the logits: fp16 is close to float32, int4 is noisier than int8.
        double Sqnr(string name) => variants[name].GetProperty("sqnrDb").GetDouble();
        Assert.True(Sqnr("float16") > Sqnr("int8-per-channel"));
        Assert.True(Sqnr("int8-per-channel") > Sqnr("int4-group32"));
        Assert.True(Sqnr("int4-group32") > 10, $"int4 SQNR {Sqnr("int4-group32")} dB");
    }

    [Fact]
    public void Full_data_without_the_cache_explains_how_to_get_it()
    {
        string empty = Directory.CreateTempSubdirectory("no-mnist-").FullName;
        try
        {
            var (exit, _, error) = RunCli("demo", "--data", "full", "--mnist-dir", empty, "--json");
            Assert.Equal(2, exit); // bad input, as every command (1 means validation failed)
            Assert.StartsWith("error: --data full needs", error);
            Assert.Contains("scripts/fetch-mnist.sh", error);
        }
        finally
        {
            Directory.Delete(empty);
        }
    }

    [Fact]
    public void Help_describes_the_options()
    {
        var (exit, output, _) = RunCli("demo", "--help");
        Assert.Equal(0, exit);
        foreach (var option in new[] { "--data", "--json", "--model", "--calibration-images", "--mnist-dir" })
            Assert.Contains(option, output);
        Assert.Contains("int4 group-32", output);
    }
}
