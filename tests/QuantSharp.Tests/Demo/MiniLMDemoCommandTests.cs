using System.Text.Json;

namespace QuantSharp.Tests.Demo;

public class MiniLMDemoCommandTests
{
    [Fact]
    public void Json_has_the_issue_schema_and_int8_keeps_the_embeddings()
    {
        var (exit, output, error) = DemoCommandTests.RunCli("demo", "minilm", "--json", "--only", "int8-per-channel", "--limit", "40");
        Assert.True(exit == 0, error);
        using var doc = JsonDocument.Parse(output);
        var root = doc.RootElement;
        Assert.Equal(40, root.GetProperty("evaluation").GetProperty("sentences").GetInt32());
        Assert.Equal(100, root.GetProperty("calibration").GetProperty("sentences").GetInt32());
        Assert.True(root.GetProperty("float32_vs_onnxruntime").GetProperty("mean_cosine").GetDouble() >= 0.99999);
        Assert.True(root.GetProperty("float32_vs_onnxruntime").GetProperty("min_cosine").GetDouble() >= 0.9999);
        var v = Assert.Single(root.GetProperty("variants").EnumerateArray());
        Assert.Equal("int8-per-channel", v.GetProperty("name").GetString());
        Assert.InRange(v.GetProperty("mean_cosine").GetDouble(), 0.999, 1.0);
        Assert.InRange(v.GetProperty("min_cosine").GetDouble(), 0.99, v.GetProperty("mean_cosine").GetDouble());
        Assert.InRange(v.GetProperty("mean_cosine_vs_onnxruntime").GetDouble(), 0.999, 1.0);
        Assert.InRange(v.GetProperty("top10_agreement").GetDouble(), 0.9, 1.0);
        long floatBytes = root.GetProperty("float32").GetProperty("size_bytes").GetInt64();
        Assert.InRange(v.GetProperty("size_bytes").GetInt64(), floatBytes / 5, floatBytes / 3);
        Assert.True(v.GetProperty("encode_ms").GetDouble() > 0);
    }

    [Fact]
    public void Unknown_variant_is_refused_with_the_list_of_names()
    {
        var (exit, _, error) = DemoCommandTests.RunCli("demo", "minilm", "--only", "int3");
        Assert.Equal(2, exit); // bad input, as every command (1 means validation failed)
        Assert.StartsWith("error: ", error);
        Assert.Contains("int8-per-channel", error);
    }

    [Fact]
    public void Only_takes_a_comma_separated_list()
    {
        // "int8-per-channel,int3" was refused as one unknown name; now each name is checked (and int3 refused alone).
        var (exit, _, error) = DemoCommandTests.RunCli("demo", "minilm", "--only", "int8-per-channel,int3", "float16");
        Assert.Equal(2, exit);
        Assert.Contains("Unknown variant(s) int3;", error);
    }
}
