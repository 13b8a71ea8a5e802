using System.CommandLine;
using System.Globalization;
using QuantSharp.Validation;
using Spectre.Console;

namespace QuantSharp.Cli.Commands;

/// <summary><c>quantsharp validate ORIGINAL QUANTIZED</c>: per-tensor SQNR and bit-exactness of a quantized checkpoint.</summary>
internal static class ValidateCommand
{
    internal static Command Create()
    {
        var original = new Argument<string>("ORIGINAL") { Description = "The original checkpoint (file or folder)." };
        var quantized = new Argument<string>("QUANTIZED") { Description = "The quantized checkpoint (file or folder)." };
        var json = new Option<bool>("--json") { Description = "Print the report as JSON." };
        var config = new Option<string?>("--config") { Description = "Recipe file (JSON) whose validation.sqnr_thresholds_db apply." };
        var cmd = new Command("validate", "Compare a quantized checkpoint with its original: per-tensor SQNR against thresholds, range checks, sizes; unquantized tensors must be bit-exact. Exit code 1 when a check fails.");
        cmd.Arguments.Add(original);
        cmd.Arguments.Add(quantized);
        cmd.Options.Add(config);
        cmd.Options.Add(json);
        cmd.SetAction(parseResult =>
        {
            ValidationPolicy? thresholds = null;
            try
            {
                if (parseResult.GetValue(config) is { } path) thresholds = QuantizationRecipe.Load(path).Validation;
            }
            catch (Exception ex) when (ex is RecipeException or FileNotFoundException)
            {
                return CheckpointConsole.Fail(parseResult, ex.Message);
            }
            string a = parseResult.GetValue(original)!, b = parseResult.GetValue(quantized)!;
            QuantizationReport report;
            bool asJson = parseResult.GetValue(json);
            try
            {
                report = asJson ? CheckpointValidator.Compare(a, b, thresholds)
                    : CheckpointConsole.WithProgress(parseResult, "Validating", p => CheckpointValidator.Compare(a, b, thresholds, p));
            }
            catch (CheckpointQuantizationException ex)
            {
                return CheckpointConsole.Fail(parseResult, ex.Message);
            }
            if (asJson) CheckpointConsole.WriteJson(parseResult, report.ToJson());
            else
            {
                var console = CheckpointConsole.For(parseResult);
                console.Write(CheckpointConsole.TensorTable(report.Layers));
                int q = report.Layers.Count(t => t.Quantized);
                double? min = report.Layers.Where(t => t.WeightSqnrDb is not null).Select(t => t.WeightSqnrDb).DefaultIfEmpty(null).Min();
                double ratio = report.StoredBytes == 0 ? 1 : (double)report.OriginalBytes / report.StoredBytes;
                console.MarkupLine(Markup.Escape(
                    $"{q} quantized tensors, {report.Layers.Count - q} copied; {CheckpointConsole.Bytes(report.OriginalBytes)} -> " +
                    $"{CheckpointConsole.Bytes(report.StoredBytes)} ({ratio.ToString("0.00", CultureInfo.InvariantCulture)}x); lowest SQNR {CheckpointConsole.Db(min)} dB."));
                int byOutput = report.Layers.Count(t => t.Quantized && t.CalibrationOutputSqnrDb is not null);
                if (byOutput > 0)
                    console.MarkupLine(Markup.Escape(
                        $"{byOutput} of {q} quantized tensors (GPTQ) are gated on the calibration output SQNR recorded when they were quantized " +
                        "(it needs the calibration inputs; their weight SQNR is shown and must match the recorded one), the others on their weight SQNR."));
                CheckpointConsole.WriteProblems(console, report.Problems, asWarnings: false);
                console.MarkupLine(report.Passed ? "[green]Validation passed.[/]" : $"[red]Validation failed: {report.Problems.Count} problem(s).[/]");
            }
            return report.Passed ? CheckpointConsole.Ok : CheckpointConsole.ValidationFailed;
        });
        return cmd;
    }
}
