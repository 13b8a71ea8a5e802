using System.CommandLine;
using System.Diagnostics;
using QuantSharp.Serialization;
using QuantSharp.Tests.Checkpoints;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Hardening;

/// <summary>Issue 8: the input is only read in any spelling, side files are regular files only, existing outputs
/// need --overwrite (never a link or special file), and temporary folders do not outlive their run.</summary>
public class PathSafetyTests
{
    private static (int Code, string Out, string Err) Cli(params string[] args) => CliRun.Run(args);

    private static void AssertUnchanged(Dictionary<string, string> before, string path)
        => Assert.Equal(before, SyntheticCheckpoint.HashTree(path));

    [Fact]
    public void SymlinkedFolderSpellingsOfTheInputAreRefused()
    {
        using var dir = new TempDir();
        string real = Directory.CreateDirectory(dir["a/b/real"]).FullName;
        Directory.CreateSymbolicLink(dir["link"], real);
        Directory.CreateSymbolicLink(dir["rel"], "a/b/real"); // relative target
        string input = SyntheticCheckpoint.WriteFile(Path.Combine(real, "in.safetensors"), ScalarType.Float32);
        var before = SyntheticCheckpoint.HashTree(input);
        string[] spellings =
        [
            dir["link/in.safetensors"],                 // output through the link
            dir["rel/in.safetensors"],
            dir["link/../real/in.safetensors"],         // POSIX: link/.. is a/b, not the folder holding the link
            dir["a/./b/../b/real/in.safetensors"],
        ];
        foreach (string output in spellings)
        {
            var ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(input, output, overwrite: true));
            Assert.Contains("is the input", ex.Message);
            var ex2 = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(output, input, overwrite: true)); // input through the link
            Assert.Contains("is the input", ex2.Message);
            AssertUnchanged(before, input);
        }
        var (code, _, err) = Cli("quantize", dir["link/in.safetensors"], input, "--overwrite");
        Assert.Equal(2, code);
        Assert.Contains("is the input", err);
        AssertUnchanged(before, input);
        Assert.Equal(["in.safetensors"], Directory.GetFileSystemEntries(real).Select(Path.GetFileName));
    }

    [Fact]
    public void BadInputIsExitCodeTwoInEveryCommand()
    {
        using var dir = new TempDir();
        foreach (var args in new[]
        {
            new[] { "observe", dir["missing.safetensors"], "--tensor", "w", "--observer", "minmax", "--dtype", "int8", "--scheme", "affine" },
            ["inspect", dir["missing.safetensors"]],
            ["quantize", dir["missing.safetensors"], dir["out.safetensors"]],
            ["quantize", dir["missing.safetensors"], ""],
            ["validate", dir["missing.safetensors"], dir["missing.safetensors"]],
        })
        {
            var (code, _, err) = Cli(args);
            Assert.True(code == 2, $"{args[0]}: exit {code}: {err}");
            Assert.StartsWith("error: ", err);
            Assert.DoesNotContain(" (Parameter '", err);
            Assert.DoesNotContain("   at ", err);
        }
    }

    [Fact]
    public void RealPathResolvesEveryComponent()
    {
        using var dir = new TempDir();
        string real = Directory.CreateDirectory(dir["x/y"]).FullName;
        Directory.CreateSymbolicLink(dir["l1"], dir["x"]);
        Directory.CreateSymbolicLink(dir["x/y/l2"], "../../l1/y"); // a chain through another link
        string root = PathIdentity.RealPath(dir.Path);
        Assert.Equal(Path.Combine(root, "x", "y"), PathIdentity.RealPath(dir["l1/y"]));
        Assert.Equal(Path.Combine(root, "x", "y", "new", "file"), PathIdentity.RealPath(dir["x/y/l2/l2/new/file"]));
        Assert.Equal(Path.Combine(root, "x"), PathIdentity.RealPath(dir["l1/y/.."]));
        Assert.True(PathIdentity.IsWithin(dir["l1/y/z.bin"], real));
        Assert.False(PathIdentity.IsWithin(dir["x/yz"], real));
    }

    [Fact]
    public void ExistingOutputNeedsOverwriteAndOnlyRegularFilesAreReplaced()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        string output = dir["out.safetensors"];
        File.WriteAllText(output, "precious");
        var ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(input, output));
        Assert.Contains("--overwrite", ex.Message);
        Assert.Equal("precious", File.ReadAllText(output));
        var (code, _, err) = Cli("quantize", input, output);
        Assert.Equal(2, code);
        Assert.Contains("exists", err);
        Assert.Equal("precious", File.ReadAllText(output));

        // Read-only: not replaced even with --overwrite.
        File.SetAttributes(output, FileAttributes.ReadOnly);
        ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(input, output, overwrite: true));
        Assert.Contains("read-only", ex.Message);
        File.SetAttributes(output, FileAttributes.Normal);

        (code, _, err) = Cli("quantize", input, output, "--overwrite");
        Assert.True(code == 0, err);
        using (var q = QuantizedCheckpoint.Load(output)) Assert.NotEmpty(q.Layers);

        // A symbolic link at the output path is never replaced, nor its target written.
        File.WriteAllText(dir["target.txt"], "target");
        File.CreateSymbolicLink(dir["link.safetensors"], dir["target.txt"]);
        ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(input, dir["link.safetensors"], overwrite: true));
        Assert.Contains("symbolic link", ex.Message);
        Assert.Equal("target", File.ReadAllText(dir["target.txt"]));
        Assert.NotNull(new FileInfo(dir["link.safetensors"]).LinkTarget);

        // A FIFO (like a device node) is never replaced by a regular file.
        if (OperatingSystem.IsLinux())
        {
            Process.Start("mkfifo", dir["fifo.safetensors"])!.WaitForExit();
            ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(input, dir["fifo.safetensors"], overwrite: true));
            Assert.Contains("device, FIFO or socket", ex.Message);
            Assert.Equal(EntryKind.Other, PathIdentity.Kind(dir["fifo.safetensors"]));
            Assert.Equal(EntryKind.Other, PathIdentity.Kind("/dev/null"));
        }
        Assert.Empty(Directory.GetDirectories(dir.Path)); // no temporary folder left by any refusal
    }

    [Fact]
    public void FolderOutputsContainingOrInsideTheInputAreRefused()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteSharded(dir["m/in"], ScalarType.Float32);
        Directory.CreateSymbolicLink(dir["alias"], dir["m/in"]);
        var before = SyntheticCheckpoint.HashTree(input);
        foreach (string output in new[] { dir["alias"], dir["alias/../in"], dir["m"], dir.Path, dir["alias/sub"] })
        {
            var ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(input, output, overwrite: true));
            Assert.Matches("is the input|contains the input|inside the input", ex.Message);
            AssertUnchanged(before, input);
        }

        // A non-empty output folder needs --overwrite, then is replaced as a whole.
        Directory.CreateDirectory(dir["out"]);
        File.WriteAllText(dir["out/old.txt"], "old");
        var e = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(input, dir["out"]));
        Assert.Contains("--overwrite", e.Message);
        var report = CheckpointQuantizer.Quantize(input, dir["out"], overwrite: true);
        Assert.True(report.Written);
        Assert.False(File.Exists(dir["out/old.txt"]));
        Assert.True(File.Exists(dir["out/config.json"]));
        Assert.Equal(["alias", "m", "out"], Directory.GetFileSystemEntries(dir.Path).Select(Path.GetFileName).Order());
    }

    [Fact]
    public void SideFilesAreRegularFilesOnlyAndTheRestIsNamed()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteSharded(dir["in"], ScalarType.Float32);
        File.WriteAllText(dir["secret.txt"], "host secret");
        File.CreateSymbolicLink(Path.Combine(input, "tokenizer.json"), dir["secret.txt"]);
        Directory.CreateDirectory(Path.Combine(input, "onnx"));
        File.WriteAllText(Path.Combine(input, "onnx", "model.onnx"), "x");
        if (OperatingSystem.IsLinux()) Process.Start("mkfifo", Path.Combine(input, "pipe"))!.WaitForExit();
        var report = CheckpointQuantizer.Quantize(input, dir["out"]);
        Assert.True(report.Written);
        Assert.False(File.Exists(dir["out/tokenizer.json"]));
        Assert.False(Directory.Exists(dir["out/onnx"]));
        Assert.False(File.Exists(dir["out/pipe"]));
        Assert.Equal("{\"model_type\": \"synthetic\"}", File.ReadAllText(dir["out/config.json"]));
        Assert.Contains(report.Warnings, w => w.Contains("'tokenizer.json'") && w.Contains("symbolic link"));
        Assert.Contains(report.Warnings, w => w.Contains("'onnx/'") && w.Contains("not copied"));
        if (OperatingSystem.IsLinux()) Assert.Contains(report.Warnings, w => w.Contains("'pipe'") && w.Contains("FIFO"));
        Assert.DoesNotContain(Directory.GetFiles(dir["out"]), f => File.ReadAllText(f).Contains("host secret"));

        var (code, stdout, err) = Cli("quantize", input, dir["out2"]);
        Assert.True(code == 0, err);
        Assert.Contains("warning: 'tokenizer.json' in the input folder is a symbolic link", stdout);
    }

    [Fact]
    public void StaleTemporaryFoldersOfDeadRunsAreRemoved()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        using var dead = Process.Start(new ProcessStartInfo("true") { UseShellExecute = false })!;
        dead.WaitForExit();
        string stale = dir[$".out.safetensors.qs-tmp-{dead.Id}-0123456789abcdef0123456789abcdef"];
        string live = dir[$".out.safetensors.qs-tmp-{Environment.ProcessId}-fedcba9876543210fedcba9876543210"];
        string other = dir[$".other.safetensors.qs-tmp-{dead.Id}-0123456789abcdef0123456789abcdef"];
        foreach (var d in new[] { stale, live, other })
        {
            Directory.CreateDirectory(d);
            File.WriteAllText(Path.Combine(d, "out.safetensors"), "partial");
        }
        CheckpointQuantizer.Quantize(input, dir["out.safetensors"]);
        Assert.False(Directory.Exists(stale));   // its process is gone
        Assert.True(Directory.Exists(live));     // a run still going (this process) is left alone
        Assert.True(Directory.Exists(other));    // another output's folder is not ours to clean
    }

    [Fact]
    public void CancellationRemovesTheTemporaryFolder()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        using var cts = new CancellationTokenSource();
        int reports = 0;
        var progress = new SyncProgress(_ => { if (++reports == 3) cts.Cancel(); });
        Assert.ThrowsAny<OperationCanceledException>(() => CheckpointQuantizer.Quantize(input, dir["out.safetensors"], null, progress, cts.Token));
        Assert.True(reports >= 3);
        Assert.Equal(["in.safetensors"], Directory.GetFileSystemEntries(dir.Path).Select(Path.GetFileName));
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);

    private static bool IgnoresSigint(int pid)
    {
        string line = File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("SigIgn:", StringComparison.Ordinal));
        ulong mask = ulong.Parse(line["SigIgn:".Length..].Trim(), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture);
        return (mask & 2) != 0; // bit 1: SIGINT (2)
    }

    private sealed class SyncProgress(Action<CheckpointProgress> report) : IProgress<CheckpointProgress>
    {
        public void Report(CheckpointProgress value) => report(value);
    }

    private static readonly Lazy<bool> s_defaultSigint = new(() =>
    {
        try
        {
            var psi = new ProcessStartInfo("env") { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
            foreach (var a in new[] { "--default-signal=INT", "true" }) psi.ArgumentList.Add(a);
            using var p = Process.Start(psi)!;
            p.WaitForExit();
            return p.ExitCode == 0;
        }
        catch (System.ComponentModel.Win32Exception) { return false; }
    });

    [Fact]
    public void SigintAndSigtermRemoveTheTemporaryFolder()
    {
        if (!OperatingSystem.IsLinux()) return;
        using var dir = new TempDir();
        // Large enough that the run is still going when the signal arrives.
        using (var w = randn([4096, 8192]))
            SafetensorsWriter.Save(dir["in.safetensors"], [("big.weight", w)]);
        string cli = Path.Combine(AppContext.BaseDirectory, "QuantSharp.Cli.dll");
        foreach (string signal in new[] { "TERM", "INT" })
        {
            // Through `env --default-signal=INT` where coreutils has it (8.31+): the CLI then gets SIGINT's default
            // disposition even when the test runner ignores SIGINT, so the SIGINT case runs here too.
            var psi = new ProcessStartInfo(s_defaultSigint.Value ? "env" : "dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
            foreach (var a in (s_defaultSigint.Value ? ["--default-signal=INT", "dotnet"] : Array.Empty<string>()).Concat([cli, "quantize", dir["in.safetensors"], dir["out.safetensors"]]))
                psi.ArgumentList.Add(a);
            using var p = Process.Start(psi)!;
            var sw = Stopwatch.StartNew();
            while (!Directory.EnumerateDirectories(dir.Path, ".out.safetensors.qs-tmp-*").Any() && !p.HasExited && sw.Elapsed < TimeSpan.FromSeconds(60))
                Thread.Sleep(20);
            if (p.HasExited) Assert.Fail("the run ended before the signal: " + p.StandardError.ReadToEnd());
            if (signal == "INT" && IgnoresSigint(p.Id))
            {
                // A child of a process that ignores SIGINT (test runners do) inherits that; .NET keeps it ignored,
                // as shells do for background jobs. From a terminal (checked by hand) Ctrl+C reaches the handler.
                p.Kill();
                p.WaitForExit();
                foreach (var d in Directory.EnumerateDirectories(dir.Path, ".out.safetensors.qs-tmp-*")) Directory.Delete(d, true);
                continue;
            }
            Assert.Equal(0, Kill(p.Id, signal == "INT" ? 2 : 15));
            Assert.True(p.WaitForExit(60_000));
            string err = p.StandardError.ReadToEnd();
            Assert.True(p.ExitCode == 130, $"exit {p.ExitCode}: {err}");
            Assert.Contains("Interrupted", err);
            Assert.Equal(["in.safetensors"], Directory.GetFileSystemEntries(dir.Path).Select(Path.GetFileName));
        }
    }
}
