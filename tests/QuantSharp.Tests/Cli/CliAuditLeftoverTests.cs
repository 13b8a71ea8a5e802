using System.Diagnostics;
using System.Text.RegularExpressions;
using QuantSharp.Cli.Demo;
using QuantSharp.Pipeline;
using QuantSharp.Serialization;
using QuantSharp.Tests.Checkpoints;
using QuantSharp.Tests.Hardening;

namespace QuantSharp.Tests.Cli;

/// <summary>
/// The rough edges the last user audit left (coordination note 4, "Not fixed"): each test failed on the code before its fix.
/// </summary>
public class CliAuditLeftoverTests
{
    [Fact]
    public void UsageLinesNameTheToolUsersType()
    {
        // Every usage line said "QuantSharp.Cli" (the entry assembly's name), also for the installed tool.
        var root = CliRun.Run("--help");
        Assert.Equal(0, root.Code);
        Assert.Contains("Usage:\n  quantsharp [command] [options]", root.Out.ReplaceLineEndings("\n"));
        var quantize = CliRun.Run("quantize", "--help");
        Assert.Contains("  quantsharp quantize <IN> <OUT> [options]", quantize.Out);
        Assert.DoesNotContain("QuantSharp.Cli", root.Out + quantize.Out);
        // The name is the tool's command name, as the package installs it.
        string project = File.ReadAllText(Path.Combine(Reference.RepoRoot, "src", "QuantSharp.Cli", "QuantSharp.Cli.csproj"));
        Assert.Contains($"<ToolCommandName>{QuantSharp.Cli.Program.CommandName}</ToolCommandName>", project);
        Assert.Equal(0, CliRun.Run("--version").Code);
    }

    [Fact]
    public void MessagesComposedFromAnInnerMessageHaveOnePeriod()
    {
        Assert.Equal("Access denied", ExceptionText.Clause(new UnauthorizedAccessException("Access denied. ")));
        Assert.Equal("bad value.", ExceptionText.Sentence(new ArgumentException("bad value", "x")));
        Assert.Equal("bad value.", ExceptionText.Sentence(new ArgumentException("bad value.", "x")));
        if (!OperatingSystem.IsLinux()) return;
        // Writing into /proc fails with a .NET message that ends with a period: it used to read "...qs-tmp-...'.. Nothing was written".
        using var dir = new TempDir();
        var run = CliRun.Run("quantize", DemoRunner.BundledModelPath, "/proc/out.safetensors");
        Assert.True(run.Code == 2, run.Err);
        Assert.StartsWith("error: Writing '/proc/out.safetensors' failed: ", run.Err);
        Assert.Contains("'. Nothing was written under '/proc/out.safetensors'", run.Err);
        Assert.DoesNotContain("..", run.Err);
        Assert.DoesNotContain(". .", run.Err);
    }

    [Fact]
    public async Task AnInterruptedDemoSaysSoAndWhatItKept()
    {
        if (!OperatingSystem.IsLinux()) return;
        using var dir = new TempDir();
        string save = dir["out"];
        // It used to exit 130 without a word. SIGTERM takes the same path as Ctrl+C (SIGINT, which test runners often
        // ignore for their children): the signal is sent once the first variant's file is there.
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "QuantSharp.Cli.dll"), "demo", "--data", "bundled", "--save", save })
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var outTask = p.StandardOutput.ReadToEndAsync();
        var errTask = p.StandardError.ReadToEndAsync();
        var sw = Stopwatch.StartNew();
        while (!File.Exists(Path.Combine(save, "float16.recipe.json")) && !p.HasExited && sw.Elapsed < TimeSpan.FromSeconds(120)) Thread.Sleep(10);
        bool signalled = Kill(p.Id, 15) == 0;
        await p.WaitForExitAsync();
        string err = await errTask, stdout = await outTask;
        Assert.True(signalled, "the demo ended before the signal: " + err);
        Assert.True(p.ExitCode == 130, $"exit {p.ExitCode}: {err}");
        Assert.StartsWith("error: Interrupted (SIGTERM) before the results table was printed; kept the ", err);
        Assert.DoesNotContain("Variant", stdout); // no table
        // What it names is there and complete (it reloads), and nothing else: no temporary file of an interrupted write.
        var kept = Directory.GetFiles(save).Select(Path.GetFileName).ToList();
        Assert.Contains("float16.safetensors", kept);
        Assert.All(kept, f => Assert.Contains(Path.Combine(save, f!), err));
        Assert.All(kept, f => Assert.True(f!.EndsWith(".safetensors", StringComparison.Ordinal) || f.EndsWith(".recipe.json", StringComparison.Ordinal), f));
        using var reloaded = QuantSharp.Quantizer.Load(() => new MnistNet(), Path.Combine(save, "float16.safetensors"));
    }

    [Fact]
    public void ADemoInterruptedBeforeAnyFileSaysNothingWasWritten()
    {
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        var options = new DemoOptions { Data = DemoDataChoice.Bundled, Limit = 20, CalibrationImages = 8, Cancellation = cancelled.Token };
        var ex = Assert.Throws<DemoInterruptedException>(() => DemoRunner.Run(options, DemoVariants.ForMethod(QuantizationMethod.RoundToNearest).ToList()));
        Assert.Empty(ex.Saved);
        Assert.Equal("Interrupted (SIGINT) before the results table was printed; nothing was written.",
            QuantSharp.Cli.Commands.DemoCommand.InterruptedMessage("SIGINT", ex.Saved));
    }

    private static void AssertOneErrorLine((int Code, string Out, string Err) run, string expected)
    {
        Assert.True(run.Code == 2, $"exit {run.Code}; stdout: {run.Out}; stderr: {run.Err}");
        Assert.Single(run.Err.Trim().Split('\n'));
        Assert.StartsWith("error: ", run.Err);
        Assert.Contains(expected, run.Err);
    }

    [Fact]
    public void RecipeErrorsNameTheOptionOrTheKeyTheUserWrote()
    {
        using var dir = new TempDir();
        string model = DemoRunner.BundledModelPath, output = dir["out.safetensors"];
        // They named C# properties: "MinElements must be at least 0", "WeightObserver: unknown observer", "Include: ...".
        AssertOneErrorLine(CliRun.Run("quantize", model, output, "--min-elements", "-5"), "error: --min-elements must be at least 0, got -5.");
        AssertOneErrorLine(CliRun.Run("quantize", model, output, "--observer", "foo"), "error: --observer: unknown observer 'foo'. Use one of: ");
        AssertOneErrorLine(CliRun.Run("quantize", model, output, "--include", ""), "error: --include: name patterns must not be empty");
        // In a recipe file: its key (and the C# property, as the same message serves the API).
        File.WriteAllText(dir["c.json"], """{ "calibration_samples": -1 }""");
        AssertOneErrorLine(CliRun.Run("quantize", model, output, "--config", dir["c.json"]),
            $"error: {dir["c.json"]}: \"calibration_samples\" (CalibrationSamples) must be positive, got -1 (default 150).");
        File.WriteAllText(dir["d.json"], """{ "min_elements": "ten" }""");
        AssertOneErrorLine(CliRun.Run("quantize", model, output, "--config", dir["d.json"]), "\"min_elements\": expected a number, got string");
        File.WriteAllText(dir["e.json"], """{ "calibration_samples": 1.5 }""");
        AssertOneErrorLine(CliRun.Run("quantize", model, output, "--config", dir["e.json"]), "\"calibration_samples\": expected a whole number, got 1.5");
        AssertOneErrorLine(CliRun.Run("quantize", model, output, "--config", dir.Path), $"'{dir.Path}' is a folder, not a recipe file");
        Assert.False(File.Exists(output));
        var api = Assert.Throws<RecipeException>(() => new QuantizationRecipe { MinElements = -1 }.Validate());
        Assert.Equal("\"min_elements\" (MinElements) must be at least 0, got -1.", api.Message);
        var observer = Assert.Throws<RecipeException>(() => new QuantizationRecipe { ActivationObserver = "kl" }.Validate());
        Assert.StartsWith("\"activation_observer\" (ActivationObserver): unknown observer 'kl'.", observer.Message);
    }

    [Fact]
    public void AGroupSizeThatMakesTheWeightsLargerThanFloat32IsAWarning()
    {
        using var dir = new TempDir();
        // int4 group:1 gives every half-byte value a 4-byte scale: the file was larger than float32 ("0.89x smaller"), silently.
        var run = CliRun.Run("quantize", DemoRunner.BundledModelPath, dir["g1.safetensors"], "--qtype", "int4", "--granularity", "group:1");
        Assert.True(run.Code == 0, run.Err);
        string text = Regex.Replace(run.Out, @"\s+", " ");
        Assert.Contains("warning: int4 symmetric group:1 makes 3 weight(s) larger than float32 (conv2.weight, fc1.weight, fc2.weight): ", text);
        Assert.Contains("because every group of 1 value carries its own 4-byte scale. Use a larger group size, e.g. group:32 (int4's default is group:128).", text);
        Assert.Contains("x larger); lowest SQNR", text);

        // The report (library and --json) carries it too, and the sizes it states are the bytes written.
        var report = CheckpointQuantizer.Quantize(DemoRunner.BundledModelPath, dir["affine.safetensors"],
            QuantizationRecipe.Int4WeightOnly(2) with { Type = QuantType.UInt4, Scheme = QuantScheme.Affine });
        Assert.Contains(report.Warnings, w => w.StartsWith("uint4 affine group:2 makes 3 weight(s) larger than float32", StringComparison.Ordinal)
            && w.Contains("carries its own 4-byte scale and zero point", StringComparison.Ordinal));
        foreach (var row in report.Layers.Where(r => r.Quantized))
            Assert.Equal((long?)row.StoredBytes, WeightGeometry.StoredBytes(row.Spec!, row.Shape!));
        var fine = CheckpointQuantizer.Quantize(DemoRunner.BundledModelPath, dir["g32.safetensors"], QuantizationRecipe.Int4WeightOnly(32));
        Assert.DoesNotContain(fine.Warnings, w => w.Contains("larger than float32", StringComparison.Ordinal));

        // The model path warns the same way.
        using var scope = TorchSharp.torch.NewDisposeScope();
        var model = Quantizer.Quantize(new QuantSharp.Tests.Modules.Mlp(), QuantizationRecipe.Int4WeightOnly(1), () => new QuantSharp.Tests.Modules.Mlp());
        Assert.Contains(model.Warnings, w => w.StartsWith("int4 symmetric group:1 makes ", StringComparison.Ordinal) && w.Contains("larger than float32", StringComparison.Ordinal));
    }

    [Fact]
    public void ValidateSaysInOneLineWhatTheFilesAreNot()
    {
        using var dir = new TempDir();
        string model = DemoRunner.BundledModelPath, quantized = dir["m.int8.safetensors"];
        Assert.Equal(0, CliRun.Run("quantize", model, quantized).Code);
        using (var w = TorchSharp.torch.randn(8, 8)) SafetensorsWriter.Save(dir["other.safetensors"], [("encoder.weight", w)]);

        AssertOneErrorLine(CliRun.Run("validate", model, model), $"'{model}' is not a QuantSharp quantized checkpoint");
        AssertOneErrorLine(CliRun.Run("validate", model, model), "Quantize it first");
        AssertOneErrorLine(CliRun.Run("validate", quantized, model), $"the wrong way round: '{quantized}' is a QuantSharp quantized checkpoint and '{model}' is not. " +
            $"Give the float checkpoint first: quantsharp validate '{model}' '{quantized}'.");
        AssertOneErrorLine(CliRun.Run("validate", quantized, quantized), $"'{quantized}' is itself a QuantSharp quantized checkpoint");
        // Unrelated files used to list one "has no original" problem per tensor (exit 1).
        var unrelated = CliRun.Run("validate", dir["other.safetensors"], quantized);
        AssertOneErrorLine(unrelated, $"'{quantized}' was not made from '{dir["other.safetensors"]}': they have no tensor name in common");
        Assert.Empty(unrelated.Out);
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);
}
