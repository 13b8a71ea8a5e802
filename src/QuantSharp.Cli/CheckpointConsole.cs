using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using QuantSharp.Validation;
using Spectre.Console;

namespace QuantSharp.Cli;

/// <summary>Console plumbing shared by the checkpoint commands (quantize, inspect, validate).</summary>
internal static class CheckpointConsole
{
    /// <summary>Exit code: success.</summary>
    public const int Ok = 0;
    /// <summary>Exit code: the work ran but validation failed.</summary>
    public const int ValidationFailed = 1;
    /// <summary>Exit code: bad input, bad options or an I/O failure; nothing was written.</summary>
    public const int BadInput = 2;
    /// <summary>Exit code: interrupted by SIGINT (Ctrl+C) or SIGTERM, as shells report 128 + SIGINT; nothing was written.</summary>
    public const int Interrupted = 130;

    /// <summary>A Spectre console writing to the invocation's output (plain text when it is not a terminal).</summary>
    public static IAnsiConsole For(ParseResult parseResult, bool error = false)
    {
        var writer = error ? parseResult.InvocationConfiguration.Error : parseResult.InvocationConfiguration.Output;
        bool terminal = ReferenceEquals(writer, Console.Out) && !Console.IsOutputRedirected
            || ReferenceEquals(writer, Console.Error) && !Console.IsErrorRedirected;
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = terminal ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = terminal ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = terminal ? InteractionSupport.Detect : InteractionSupport.No,
        });
        if (!terminal) console.Profile.Width = 250; // files and pipes: no wrapping of long tensor names
        return console;
    }

    /// <summary>Refuses, before any work, an option that names an output folder (<c>--save</c>, <c>--plot</c>) but points at an
    /// existing file: the folder is created when missing, a file there is never replaced by one.</summary>
    public static void RequireFolder(string? path, string option)
    {
        if (path is not null && File.Exists(path))
            throw new ArgumentException($"{option} '{path}' is a file, not a folder. Give a folder (it is created if missing), e.g. {option} out/.");
    }

    /// <summary>True when progress bars can be drawn.</summary>
    public static bool CanShowProgress(ParseResult parseResult)
        => ReferenceEquals(parseResult.InvocationConfiguration.Output, Console.Out) && !Console.IsOutputRedirected;

    /// <summary>Writes JSON to the invocation's output.</summary>
    public static void WriteJson(ParseResult parseResult, JsonNode node)
        => parseResult.InvocationConfiguration.Output.WriteLine(node.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));

    /// <summary>Writes an error message to the invocation's error output.</summary>
    public static int Fail(ParseResult parseResult, string message, int code = BadInput)
    {
        // ArgumentException appends " (Parameter 'x')", which means nothing to a command-line user.
        message = System.Text.RegularExpressions.Regex.Replace(message, @" \(Parameter '[^']*'\)", "");
        parseResult.InvocationConfiguration.Error.WriteLine("error: " + message);
        return code;
    }

    /// <summary>Runs <paramref name="work"/> with a progress bar (when on a terminal) fed by its progress reports.</summary>
    public static T WithProgress<T>(ParseResult parseResult, string title, Func<IProgress<CheckpointProgress>?, T> work)
    {
        if (!CanShowProgress(parseResult)) return work(null);
        T result = default!;
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(title, maxValue: 1);
                var progress = new SyncProgress(p =>
                {
                    task.MaxValue = Math.Max(1, p.BytesTotal);
                    task.Value = p.BytesDone;
                });
                result = work(progress);
                task.Value = task.MaxValue;
            });
        return result;
    }

    private sealed class SyncProgress(Action<CheckpointProgress> report) : IProgress<CheckpointProgress>
    {
        public void Report(CheckpointProgress value) => report(value);
    }

    /// <summary>Human size (B, KiB, MiB, GiB).</summary>
    public static string Bytes(long b) => b switch
    {
        >= 1L << 30 => (b / (double)(1L << 30)).ToString("0.00", CultureInfo.InvariantCulture) + " GiB",
        >= 1L << 20 => (b / (double)(1L << 20)).ToString("0.00", CultureInfo.InvariantCulture) + " MiB",
        >= 1L << 10 => (b / (double)(1L << 10)).ToString("0.0", CultureInfo.InvariantCulture) + " KiB",
        _ => b.ToString(CultureInfo.InvariantCulture) + " B",
    };

    /// <summary>Shape as [a, b].</summary>
    public static string Shape(long[] shape) => "[" + string.Join(", ", shape) + "]";

    /// <summary>SQNR text.</summary>
    public static string Db(double? db) => db switch
    {
        null => "",
        double d when double.IsPositiveInfinity(d) => "inf",
        double d => d.ToString("0.00", CultureInfo.InvariantCulture),
    };

    /// <summary>The per-tensor table of a quantization or validation report: the quantized tensors and any tensor with
    /// a problem (copied tensors that pass are summarized in one line).</summary>
    public static Table TensorTable(IEnumerable<LayerReport> all)
    {
        var tensors = all.Where(t => t.Quantized || t.Problems.Count > 0).ToList();
        // The calibration output SQNR (recorded for GPTQ weights, their gate) only when a tensor has one.
        bool calibration = tensors.Any(t => t.CalibrationOutputSqnrDb is not null);
        var table = new Table().Border(TableBorder.Rounded)
            .AddColumn("Tensor").AddColumn("Action").AddColumn("Settings").AddColumn("Shape")
            .AddColumn(new TableColumn("Original").RightAligned()).AddColumn(new TableColumn("Stored").RightAligned())
            .AddColumn(new TableColumn("SQNR dB").RightAligned());
        if (calibration) table.AddColumn(new TableColumn("Calib. output SQNR dB").RightAligned()).AddColumn("Gate");
        table.AddColumn("Check");
        foreach (var t in tensors)
        {
            List<string> cells =
            [
                Markup.Escape(t.Name),
                t.Quantized ? "quantized" : "copied",
                Markup.Escape(t.Spec?.ToString() ?? ""),
                Markup.Escape(Shape(t.Shape ?? [])),
                Bytes(t.OriginalBytes),
                Bytes(t.StoredBytes),
                Db(t.WeightSqnrDb),
            ];
            if (calibration) cells.AddRange([Db(t.CalibrationOutputSqnrDb), t.Quantized ? ValidationPolicy.GateName(t.CalibrationOutputSqnrDb) : ""]);
            cells.Add(t.Problems.Count == 0 ? "[green]ok[/]" : "[red]FAIL[/]");
            table.AddRow([.. cells]);
        }
        return table;
    }

    /// <summary>Prints problems, if any.</summary>
    public static void WriteProblems(IAnsiConsole console, IReadOnlyList<string> problems, bool asWarnings)
    {
        foreach (var p in problems)
            console.MarkupLine((asWarnings ? "[yellow]warning:[/] " : "[red]problem:[/] ") + Markup.Escape(p));
    }
}
