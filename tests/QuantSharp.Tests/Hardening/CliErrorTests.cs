using System.CommandLine;
using System.Diagnostics;
using QuantSharp.Cli;
using QuantSharp.Serialization;
using QuantSharp.Tests.Checkpoints;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Hardening;

/// <summary>Issue 8, messages: one top-level handler for every command (no stack trace, exit 2 or 1), libtorch load
/// failures explained, and the messages the issue found wrong (read-only file system, input changed, 1e400).</summary>
public class CliErrorTests
{
    private static (int Code, string Out, string Err) Run(Command root, params string[] args) => CliRun.Run(root, args);

    private static IEnumerable<Command> All(Command c) => c.Subcommands.SelectMany(All).Prepend(c);

    [Fact]
    public void EveryCommandOfTheToolIsGuarded()
    {
        var root = Program.BuildRoot();
        var commands = All(root).Where(c => c.Action is not null).ToList();
        Assert.Contains(commands, c => c.Name == "quantize");
        Assert.Contains(commands, c => c.Name == "minilm"); // a subcommand (demo minilm) too
        foreach (var c in commands)
            Assert.True(c.Action!.GetType().DeclaringType == typeof(TopLevelErrors), $"'{c.Name}' is not guarded ({c.Action.GetType().Name})");
    }

    [Fact]
    public void AnUnexpectedExceptionIsOneErrorLineWithExitCode2()
    {
        var root = new RootCommand();
        var boom = new Command("boom");
        boom.SetAction(new Func<ParseResult, int>(_ => ((string?)null)!.Length));
        var bad = new Command("bad");
        bad.SetAction(new Func<ParseResult, int>(_ => throw new ArgumentException("Tensor 'x' is odd.", "input")));
        var slow = new Command("slow");
        slow.SetAction((_, _) => Task.FromException<int>(new InvalidDataException("truncated")));
        root.Subcommands.Add(boom);
        root.Subcommands.Add(bad);
        root.Subcommands.Add(slow);
        TopLevelErrors.Guard(root);

        var (code, _, err) = Run(root, "boom");
        Assert.Equal(2, code);
        Assert.StartsWith("error: unexpected NullReferenceException", err);
        Assert.Contains("QUANTSHARP_DEBUG=1", err);
        Assert.DoesNotContain("   at ", err);
        (code, _, err) = Run(root, "bad");
        Assert.Equal(2, code);
        Assert.Equal("error: Tensor 'x' is odd.", err.Trim()); // no " (Parameter 'input')"
        (code, _, err) = Run(root, "slow");
        Assert.Equal(2, code);
        Assert.Equal("error: truncated", err.Trim());
    }

    [Fact]
    public void ParseErrorsExitWithCode2()
    {
        var (code, _, err) = Run(Program.BuildRoot(), "quantize", "--qtype");
        Assert.Equal(2, code);
        Assert.NotEmpty(err);
        (code, _, _) = Run(Program.BuildRoot(), "no-such-command");
        Assert.Equal(2, code);
    }

    [Fact]
    public void LibtorchLoadFailuresNameTheCauseAndTheFix()
    {
        // The messages TorchSharp 0.107.0 throws from LoadNativeBackend (also wrapped in a type initializer's exception).
        var failures = new Exception[]
        {
            new NotSupportedException("The libtorch-cpu native library could not be loaded. Consider referencing one of the combination packages TorchSharp-cpu, ... Trace from LoadNativeBackend:\n  ..."),
            new TypeInitializationException("TorchSharp.torch", new DllNotFoundException("libLibTorchSharp.so: /lib/x86_64-linux-gnu/libstdc++.so.6: version `GLIBCXX_3.4.32' not found")),
        };
        foreach (var ex in failures)
        {
            Assert.True(TopLevelErrors.IsNativeLoadFailure(ex is TypeInitializationException t ? t.InnerException! : ex));
            var (message, code) = TopLevelErrors.Describe(ex);
            Assert.Equal(2, code);
            Assert.Contains("libtorch", message);
            Assert.Contains("TorchSharp-cpu 0.107.0", message);
            Assert.Contains("libstdc++", message);
            Assert.DoesNotContain("\n", message);
        }
        Assert.False(TopLevelErrors.IsNativeLoadFailure(new NotSupportedException("Tensor 'w' has dtype U16, which TorchSharp cannot hold.")));
    }

    [Fact]
    public void AMissingLibtorchEndsInTheExplainedErrorNotAStackTrace()
    {
        if (!OperatingSystem.IsLinux()) return;
        // The CLI from a folder without its native libraries (runtimes/), and no NuGet cache to fall back on.
        using var dir = new TempDir();
        string bin = AppContext.BaseDirectory;
        foreach (string entry in Directory.EnumerateFileSystemEntries(bin))
        {
            string name = Path.GetFileName(entry);
            if (name == "runtimes" || name.StartsWith("lib", StringComparison.Ordinal) && name.Contains(".so", StringComparison.Ordinal)) continue;
            // The host resolves the application's real path: its own files are copies, the rest links.
            if (name.StartsWith("QuantSharp.Cli.", StringComparison.Ordinal)) File.Copy(entry, dir[name]);
            else if (Directory.Exists(entry)) Directory.CreateSymbolicLink(dir[name], entry);
            else File.CreateSymbolicLink(dir[name], entry);
        }
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false, WorkingDirectory = dir.Path };
        foreach (var a in new[] { dir["QuantSharp.Cli.dll"], "version" }) psi.ArgumentList.Add(a);
        psi.Environment["NUGET_PACKAGES"] = dir["no-packages"];
        psi.Environment["HOME"] = dir.Path;
        using var p = Process.Start(psi)!;
        string stdout = p.StandardOutput.ReadToEnd(), err = p.StandardError.ReadToEnd();
        Assert.True(p.WaitForExit(120_000));
        Assert.True(p.ExitCode == 2, $"exit {p.ExitCode}: {stdout}\n{err}");
        Assert.StartsWith("error: libtorch", err);
        Assert.Contains("TorchSharp-cpu", err);
        Assert.DoesNotContain("   at ", err);
    }

    [Fact]
    public void AnOverflowingThresholdIsRefusedByName()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir["cfg.json"], """{ "validation": { "sqnr_thresholds_db": { "int8": 1e400 } } }""");
        var ex = Assert.Throws<RecipeException>(() => QuantizationRecipe.Load(dir["cfg.json"]));
        Assert.Contains("sqnr_thresholds_db.int8", ex.Message);
        Assert.Contains("finite", ex.Message);
        File.WriteAllText(dir["cfg2.json"], """{ "validation": { "min_output_sqnr_db": -1e999 } }""");
        Assert.Contains("min_output_sqnr_db", Assert.Throws<RecipeException>(() => QuantizationRecipe.Load(dir["cfg2.json"])).Message);

        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        var (code, _, err) = Run(Program.BuildRoot(), "quantize", input, dir["out.safetensors"], "--config", dir["cfg.json"]);
        Assert.Equal(2, code);
        Assert.Contains("sqnr_thresholds_db.int8", err);
        Assert.False(File.Exists(dir["out.safetensors"]));
    }

    /// <summary>Issue 8 as found on d617afc: <c>observe --dtype int3</c> ended "(Parameter 'name')" with exit code 1.</summary>
    [Fact]
    public void ObserveRefusesABadDtypeWithoutTheParameterName()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        var (code, _, err) = Run(Program.BuildRoot(), "observe", input, "--tensor", "model.layers.1.mlp.down_proj.weight", "--dtype", "int3");
        Assert.Equal(2, code);
        Assert.Equal("error: Unknown quantization type 'int3'. Use one of: int8, uint8, int4, uint4, int2, uint2, float16, bfloat16.", err.Trim());
    }

    [Fact]
    public void AReadOnlyFileSystemIsNotCalledAFullDisk()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        SafetensorsStreamWriter.StreamFactoryForTests = p => throw new IOException($"Read-only file system : '{p}'", 30); // EROFS, as .NET reports it
        try
        {
            var ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(input, dir["out.safetensors"]));
            Assert.Contains("the file system is read-only", ex.Message);
            Assert.Contains("writable file system", ex.Message);
            Assert.DoesNotContain("Free some space", ex.Message);
            Assert.DoesNotContain("disk is full", ex.Message);
        }
        finally { SafetensorsStreamWriter.StreamFactoryForTests = null; }
        Assert.Equal(["in.safetensors"], Directory.GetFileSystemEntries(dir.Path).Select(Path.GetFileName));
    }

    private sealed class SyncProgress(Action<CheckpointProgress> report) : IProgress<CheckpointProgress>
    {
        public void Report(CheckpointProgress value) => report(value);
    }

    [Theory]
    [InlineData("truncate")]
    [InlineData("touch")]
    public void AnInputChangedDuringTheRunIsSaidToHaveChanged(string change)
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        int reports = 0;
        var progress = new SyncProgress(_ =>
        {
            if (++reports != 2) return;
            var args = change == "truncate" ? new[] { "-s", "100000", input } : ["-d", "2001-01-01", input];
            using var p = Process.Start(change, args)!;
            p.WaitForExit();
        });
        var ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(input, dir["out.safetensors"], null, progress));
        Assert.Contains("changed while it was being quantized", ex.Message);
        Assert.DoesNotContain("Writing", ex.Message);
        Assert.Equal(["in.safetensors"], Directory.GetFileSystemEntries(dir.Path).Select(Path.GetFileName));
    }
}
