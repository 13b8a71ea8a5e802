using System.CommandLine;
using System.Text.Json;
using QuantSharp.Serialization;
using QuantSharp.Tests.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Cli;

/// <summary>Runs the tool as a user would (in process, with arguments), then reloads and checks what it wrote
/// (as optimum-quanto's tests/cli/test_quantize_cli.py does).</summary>
public class CheckpointCliTests
{
    internal static (int Code, string Out, string Err) Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = QuantSharp.Cli.Program.BuildRoot().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }

    [Fact]
    public void QuantizeInspectValidate()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["model.safetensors"], ScalarType.BFloat16);
        File.WriteAllText(dir["cfg.json"], """
            { "qtype": "int8", "granularity": "per-channel",
              "overrides": [ { "pattern": "model.layers.*.mlp.*", "qtype": "int4", "granularity": "group:64" } ] }
            """);
        string output = dir["q.safetensors"];
        var (code, stdout, stderr) = Run("quantize", input, output, "--config", dir["cfg.json"], "--exclude", "model.embed_tokens.*", "--json");
        Assert.True(code == 0, stderr);
        using (var report = JsonDocument.Parse(stdout))
        {
            Assert.True(report.RootElement.GetProperty("passed").GetBoolean());
            Assert.True(report.RootElement.GetProperty("written").GetBoolean());
            Assert.Equal(SyntheticCheckpoint.QuantizedByDefault.Length - 1, report.RootElement.GetProperty("quantized").GetInt32());
        }

        using (var ckpt = QuantizedCheckpoint.Load(output))
        {
            Assert.False(ckpt.Layers.ContainsKey("model.embed_tokens.weight"));
            Assert.Equal(QuantType.Int4, ckpt.Layers["model.layers.0.mlp.up_proj.weight"].Type);
            Assert.Equal(new PerGroup(64), ckpt.Layers["model.layers.0.mlp.up_proj.weight"].Granularity);
            Assert.Equal(QuantType.Int8, ckpt.Layers["lm_head.weight"].Type);
            Assert.Equal(new PerAxis(0), ckpt.Layers["model.layers.1.self_attn.q_proj.weight"].Granularity);
            using var orig = SafetensorsFile.Open(input);
            using var head = orig.ReadTensor("lm_head.weight");
            using var loaded = ckpt.GetFloat("lm_head.weight");
            using var x = head.to(ScalarType.Float32);
            using var diff = (x - loaded).abs().max();
            Assert.True(diff.item<float>() > 0 && diff.item<float>() < 0.01f);
            Assert.Equal(orig.ReadBytes("model.embed_tokens.weight"), SafetensorsFile.Open(output).ReadBytes("model.embed_tokens.weight"));
        }

        (code, stdout, stderr) = Run("inspect", output, "--json");
        Assert.True(code == 0, stderr);
        using (var inspect = JsonDocument.Parse(stdout))
        {
            var root = inspect.RootElement;
            Assert.True(root.GetProperty("quantized_checkpoint").GetBoolean());
            var up = root.GetProperty("layers").GetProperty("model.layers.1.mlp.down_proj.weight");
            Assert.Equal("int4", up.GetProperty("qtype").GetString());
            Assert.Equal("BF16", up.GetProperty("original_dtype").GetString());
            var scale = root.GetProperty("tensors").EnumerateArray().Single(t => t.GetProperty("name").GetString() == "lm_head.weight.scale");
            Assert.Equal("scale", scale.GetProperty("role").GetString());
            Assert.Equal("F32", scale.GetProperty("dtype").GetString());
        }
        (code, stdout, _) = Run("inspect", output);
        Assert.Equal(0, code);
        Assert.Contains("lm_head.weight.scale", stdout);
        Assert.Contains("int4 symmetric group:64", stdout);
        Assert.Contains("quantsharp.format", stdout);

        (code, stdout, stderr) = Run("validate", input, output);
        Assert.True(code == 0, stderr + stdout);
        Assert.Contains("Validation passed", stdout);
        Assert.Contains("model.layers.0.mlp.gate_proj.weight", stdout);

        // A tampered copy fails validation with exit code 1 and names the tensor.
        string tampered = dir["tampered.safetensors"];
        var bytes = File.ReadAllBytes(output);
        using (var f = SafetensorsFile.Open(output))
        {
            var norm = f.GetInfo("model.norm.weight");
            bytes[f.DataStart + norm.Begin] ^= 0x40;
        }
        File.WriteAllBytes(tampered, bytes);
        (code, stdout, _) = Run("validate", input, tampered, "--json");
        Assert.Equal(1, code);
        using (var v = JsonDocument.Parse(stdout))
        {
            Assert.False(v.RootElement.GetProperty("passed").GetBoolean());
            Assert.Contains("'model.norm.weight'", v.RootElement.GetProperty("problems")[0].GetString());
        }

        // A negative scale fails the range test.
        bytes = File.ReadAllBytes(output);
        using (var f = SafetensorsFile.Open(output))
        {
            var scale = f.GetInfo("lm_head.weight.scale");
            BitConverter.GetBytes(-1f).CopyTo(bytes, f.DataStart + scale.Begin);
        }
        File.WriteAllBytes(tampered, bytes);
        (code, stdout, _) = Run("validate", input, tampered);
        Assert.Equal(1, code);
        Assert.Contains("'lm_head.weight': 1 of 256 scales are not finite and positive", stdout);
    }

    [Fact]
    public void HumanOutputShowsTableAndSummary()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteSharded(dir["in"], ScalarType.Float32);
        var (code, stdout, stderr) = Run("quantize", dir["in"], dir["out"], "--qtype", "int4", "--granularity", "group:32", "--scheme", "affine");
        Assert.True(code == 0, stderr);
        Assert.Contains("int4 affine group:32", stdout);
        Assert.Contains("validation passed", stdout);
        Assert.True(File.Exists(Path.Combine(dir["out"], "model.safetensors.index.json")));
        (code, stdout, stderr) = Run("inspect", dir["out"], "--json");
        Assert.True(code == 0, stderr);
        using (var inspect = JsonDocument.Parse(stdout))
        {
            Assert.True(inspect.RootElement.GetProperty("sharded").GetBoolean());
            Assert.Equal("model.safetensors.index.json", inspect.RootElement.GetProperty("index").GetString());
            Assert.True(inspect.RootElement.GetProperty("files").GetArrayLength() >= 3);
            Assert.Equal(SyntheticCheckpoint.QuantizedByDefault.Length, inspect.RootElement.GetProperty("layers").EnumerateObject().Count());
        }
        using var ckpt = QuantizedCheckpoint.Load(dir["out"]);
        Assert.Equal(SyntheticCheckpoint.QuantizedByDefault.Order(), ckpt.Layers.Keys.Order());
        Assert.All(ckpt.Layers.Values, l => Assert.Equal(QuantScheme.Affine, l.Scheme));
    }

    [Theory]
    [InlineData("unknown-qtype")]
    [InlineData("same-path")]
    [InlineData("bad-group")]
    [InlineData("missing-config")]
    [InlineData("garbage")]
    [InlineData("threshold")]
    public void FailuresExitNonZeroWithAPreciseMessage(string kind)
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["m.safetensors"], ScalarType.Float32);
        File.WriteAllBytes(dir["garbage.safetensors"], new byte[100]);
        File.WriteAllText(dir["strict.json"], """{ "validation": { "sqnr_thresholds_db": { "int8": 80 } } }""");
        var before = SyntheticCheckpoint.HashTree(input);
        var (code, _, stderr) = kind switch
        {
            "unknown-qtype" => Run("quantize", input, dir["o.safetensors"], "--qtype", "int3"),
            "same-path" => Run("quantize", input, input),
            "bad-group" => Run("quantize", input, dir["o.safetensors"], "--qtype", "int4", "--granularity", "group:48", "--strict-group-size"),
            "missing-config" => Run("quantize", input, dir["o.safetensors"], "--config", dir["nope.json"]),
            "garbage" => Run("inspect", dir["garbage.safetensors"]),
            _ => Run("quantize", input, dir["o.safetensors"], "--config", dir["strict.json"]),
        };
        string expected = kind switch
        {
            "unknown-qtype" => "Unknown quantization type 'int3'",
            "same-path" => "is the input",
            "bad-group" => "group size 48 does not divide the reduction length 128, and StrictGroupSize refuses a fallback",
            "missing-config" => "nope.json' does not exist",
            "garbage" => "garbage.safetensors",
            _ => "below the int8 threshold 80 dB",
        };
        Assert.Equal(kind == "threshold" ? 1 : 2, code);
        Assert.Contains(expected, stderr);
        Assert.False(File.Exists(dir["o.safetensors"]));
        Assert.Equal(before, SyntheticCheckpoint.HashTree(input));
    }
}
