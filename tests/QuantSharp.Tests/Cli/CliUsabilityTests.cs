using QuantSharp.Cli.Demo;
using QuantSharp.Tests.Checkpoints;
using QuantSharp.Tests.Hardening;

namespace QuantSharp.Tests.Cli;

/// <summary>
/// What a user meets when they type a command slightly wrong (found by trying the README and docs as a user would):
/// each mistake gives one <c>error:</c> line that names the problem and the fix, exit code 2, before any work, and
/// leaves the files it was given as they were.
/// </summary>
public class CliUsabilityTests
{
    private static void AssertBadInput((int Code, string Out, string Err) run, string expected)
    {
        Assert.True(run.Code == 2, $"exit {run.Code}; stderr: {run.Err}");
        Assert.StartsWith("error: ", run.Err);
        Assert.Contains(expected, run.Err);
        Assert.DoesNotContain("   at ", run.Err);
        Assert.DoesNotContain("unexpected", run.Err);
    }

    [Fact]
    public void DemoOptionErrorsAreErrorLinesWithExitCode2()
    {
        AssertBadInput(CliRun.Run("demo", "--limit", "0"), "--limit must be positive, got 0");
        AssertBadInput(CliRun.Run("demo", "--calibration-images", "-1"), "--calibration-images must be positive, got -1");
    }

    [Fact]
    public void DemoModelThatIsAlreadyQuantizedIsNamedAsSuch()
    {
        using var dir = new TempDir();
        string quantized = dir["model.int8.safetensors"];
        var made = CliRun.Run("quantize", DemoRunner.BundledModelPath, quantized, "--qtype", "int8");
        Assert.True(made.Code == 0, made.Err);
        byte[] before = File.ReadAllBytes(quantized);

        // It used to end in "unexpected InvalidOperationException: Tensor invalid -- empty handle".
        AssertBadInput(CliRun.Run("demo", "--model", quantized, "--limit", "10"), "is already quantized");
        AssertBadInput(CliRun.Run("calibrate", "compare", "--model", quantized, "--samples", "8"), "float32 MnistNet weights");
        Assert.Equal(before, File.ReadAllBytes(quantized));
    }

    [Fact]
    public void AFolderWhereAFileIsExpectedIsCalledAFolder()
    {
        using var dir = new TempDir();
        // They used to say "Access to the path ... is denied" (demo, calibrate) and "No such file" (observe).
        AssertBadInput(CliRun.Run("demo", "--model", dir.Path, "--limit", "10"), "is a folder");
        AssertBadInput(CliRun.Run("calibrate", "sensitivity", "--model", dir.Path, "--samples", "8"), "is a folder");
        AssertBadInput(CliRun.Run("observe", dir.Path, "--tensor", "fc1.weight"), "is a folder");
    }

    [Fact]
    public void AFileWhereAnOutputFolderIsExpectedIsRefusedBeforeAnyWork()
    {
        using var dir = new TempDir();
        string file = dir["picture.png"];
        File.WriteAllBytes(file, [0x89, (byte)'P', (byte)'N', (byte)'G']);

        var demo = CliRun.Run("demo", "--data", "bundled", "--limit", "10", "--save", file);
        AssertBadInput(demo, "--save '" + file + "' is a file, not a folder");
        Assert.DoesNotContain("float32", demo.Out); // refused before the model ran
        AssertBadInput(CliRun.Run("calibrate", "compare", "--data", "bundled", "--samples", "8", "--plot", file), "--plot '" + file + "' is a file");
        AssertBadInput(CliRun.Run("calibrate", "sensitivity", "--data", "bundled", "--samples", "8", "--plot", file), "--plot '" + file + "' is a file");
        Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], File.ReadAllBytes(file));
        Assert.Single(Directory.GetFileSystemEntries(dir.Path));
    }

    [Fact]
    public void MixedPrecisionBudgetErrorsNameTheOptions()
    {
        // The library's messages name MixedPrecisionBudget's properties (MaxBytes, ...); the user typed options.
        AssertBadInput(CliRun.Run("calibrate", "mixed", "--data", "bundled", "--samples", "8"), "--budget-bytes N, --bits-per-weight B");
        AssertBadInput(CliRun.Run("calibrate", "mixed", "--data", "bundled", "--samples", "8", "--budget-bytes", "1000", "--bits-per-weight", "4"),
            "(2 were given)");
        AssertBadInput(CliRun.Run("calibrate", "mixed", "--data", "bundled", "--samples", "8", "--budget-bytes", "0"), "--budget-bytes must be positive, got 0");
        AssertBadInput(CliRun.Run("calibrate", "mixed", "--data", "bundled", "--samples", "8", "--bits-per-weight", "-2"), "--bits-per-weight must be positive, got -2");
        AssertBadInput(CliRun.Run("calibrate", "mixed", "--data", "bundled", "--samples", "8", "--max-accuracy-drop", "-1"),
            "--max-accuracy-drop must be at least 0 points, got -1");
    }

    [Fact]
    public void DemoTableIsNotWrappedWhenTheOutputIsNotATerminal()
    {
        // Piped or redirected, the demo's table used to be cut at 80 columns: "Accur…" headers and sizes split over two lines.
        var run = CliRun.Run("demo", "--data", "bundled", "--limit", "20", "--calibration-images", "8");
        Assert.True(run.Code == 0, run.Err);
        var lines = run.Out.Split('\n');
        Assert.Contains(lines, l => l.Contains("Accuracy") && l.Contains("Size (bytes)") && l.Contains("min weight SQNR dB") && l.Contains("Inference ms"));
        string floatRow = Assert.Single(lines, l => l.StartsWith("│ float32 ", StringComparison.Ordinal));
        Assert.Contains("226,856", floatRow); // 56,714 parameters x 4 bytes, on one line
        Assert.Contains("100.0%", floatRow);
    }

    [Fact]
    public void HelpNamesEveryTypeTheCommandsAccept()
    {
        // The descriptions used to stop at int4/uint4 (quantize) and at W8A8 with calibration (demo).
        var quantize = CliRun.Run("quantize", "--help");
        Assert.Equal(0, quantize.Code);
        string description = quantize.Out.Split('\n')[1];
        foreach (var type in new[] { "int8", "uint8", "int4", "uint4", "int2", "uint2", "float16", "bfloat16" })
            Assert.Contains(type, description);
        var demo = CliRun.Run("demo", "--help");
        Assert.Contains("W8A8 with dynamic activations", demo.Out.Replace("\n  ", " "));
    }

    [Fact]
    public void AGroupSizeOfZeroIsCalledOutOfRange()
    {
        using var dir = new TempDir();
        // It used to say "Unknown granularity 'group:0'", as if the syntax were wrong.
        AssertBadInput(CliRun.Run("quantize", DemoRunner.BundledModelPath, dir["out.safetensors"], "--qtype", "int4", "--granularity", "group:0"),
            "the group size must be positive, got 0");
        Assert.Empty(Directory.GetFileSystemEntries(dir.Path));
    }
}
