using System.CommandLine;
using System.Globalization;
using QuantSharp.Validation;
using Spectre.Console;

namespace QuantSharp.Cli.Commands;

/// <summary><c>quantsharp quantize IN OUT</c>: quantizes a safetensors checkpoint without its model code.</summary>
internal static class QuantizeCommand
{
    internal static Command Create()
    {
        var input = new Argument<string>("IN") { Description = "Input checkpoint: a .safetensors file or a folder of shards (never modified)." };
        var output = new Argument<string>("OUT") { Description = "Output file (for a file input) or new folder (for a folder input)." };
        var qtype = new Option<string?>("--qtype") { Description = "int8 | uint8 | int4 | uint4 | int2 | uint2 | float16 | bfloat16 (default int8)." };
        var scheme = new Option<string?>("--scheme") { Description = "symmetric | affine (default symmetric)." };
        var granularity = new Option<string?>("--granularity") { Description = "per-tensor | per-channel | per-channel:AXIS | group:SIZE (default per-channel for 8-bit, group:128 for 4-bit)." };
        var observer = new Option<string?>("--observer") { Description = "Range observer: minmax (default, streamed), percentile, histogram, moving-average (these read each tensor whole)." };
        var include = new Option<string[]>("--include") { Description = "Quantize only tensors whose name matches this glob (repeatable; replaces the default *.weight rule)." };
        var exclude = new Option<string[]>("--exclude") { Description = "Never quantize tensors whose name matches this glob (repeatable; wins over --include)." };
        var minElements = new Option<long?>("--min-elements") { Description = "Smallest tensor (elements) the default rule quantizes (default 0: every *.weight of rank 2+)." };
        var strictGroups = new Option<bool>("--strict-group-size") { Description = "Refuse a tensor whose reduction length the group size does not divide (default: fall back per tensor, see docs/FORMAT.md)." };
        var config = new Option<string?>("--config") { Description = "Recipe file (JSON, docs/FORMAT.md \"Recipe\"; e.g. written by 'demo --save'); options given here win over it." };
        var onFailure = new Option<string?>("--on-failure") { Description = "error | warn | ignore: what to do when validation fails (default error: nothing is written)." };
        var noValidate = new Option<bool>("--no-validate") { Description = "Skip validation (SQNR, reload and range tests)." };
        var json = new Option<bool>("--json") { Description = "Print the report as JSON." };
        var strict = new Option<bool>("--strict") { Description = "Refuse what would be a warning about the selection or settings (nothing quantized, a pattern matching nothing, a group size on float16/bfloat16)." };
        var overwrite = new Option<bool>("--overwrite") { Description = "Replace an existing output (a regular writable file or a folder; never a link or device)." };

        var cmd = new Command("quantize", "Quantize a safetensors checkpoint (file or sharded folder) to int8/uint8/int4/uint4/int2/uint2/float16/bfloat16, then validate it.");
        cmd.Arguments.Add(input);
        cmd.Arguments.Add(output);
        foreach (var o in new Option[] { qtype, scheme, granularity, observer, include, exclude, minElements, strictGroups, strict, config, onFailure, noValidate, json, overwrite })
            cmd.Options.Add(o);

        cmd.SetAction(parseResult =>
        {
            QuantizationRecipe recipe;
            try
            {
                // Precedence: options given here > the recipe file > the recipe defaults.
                recipe = parseResult.GetValue(config) is { } path ? QuantizationRecipe.Load(path) : new QuantizationRecipe();
                // A setting given here is named by its option in a validation message (--min-elements, not MinElements).
                var given = new Dictionary<string, string>();
                foreach (var (option, property) in new (Option, string)[]
                {
                    (qtype, nameof(QuantizationRecipe.Type)), (scheme, nameof(QuantizationRecipe.Scheme)), (granularity, nameof(QuantizationRecipe.Granularity)),
                    (observer, nameof(QuantizationRecipe.WeightObserver)), (include, nameof(QuantizationRecipe.Include)),
                    (exclude, nameof(QuantizationRecipe.Exclude)), (minElements, nameof(QuantizationRecipe.MinElements)),
                })
                {
                    if (parseResult.GetResult(option) is { Implicit: false }) given[property] = option.Name;
                }
                var weightOptions = new[] { qtype, scheme, granularity }.Where(o => given.ContainsValue(o.Name)).Select(o => o.Name).ToList();
                if (weightOptions.Count > 0) given[QuantizationRecipe.WeightsSetting] = string.Join(" / ", weightOptions);
                if (parseResult.GetValue(qtype) is { } t)
                {
                    var type = QuantTypeInfo.Parse(t);
                    // A new bit width without --granularity takes its own default (int8: per-channel, int4: group:128).
                    recipe = recipe with { Type = type, Granularity = type.Bits() == recipe.Type.Bits() ? recipe.Granularity : null };
                }
                if (parseResult.GetValue(scheme) is { } s) recipe = recipe with { Scheme = QuantizationRecipe.ParseScheme(s) };
                if (parseResult.GetValue(granularity) is { } g) recipe = recipe with { Granularity = Granularity.Parse(g) };
                if (parseResult.GetValue(observer) is { } o) recipe = recipe with { WeightObserver = o };
                if (parseResult.GetValue(include) is { Length: > 0 } inc) recipe = recipe with { Include = inc };
                if (parseResult.GetValue(exclude) is { Length: > 0 } exc) recipe = recipe with { Exclude = exc };
                if (parseResult.GetValue(minElements) is { } m) recipe = recipe with { MinElements = m };
                if (parseResult.GetValue(strictGroups)) recipe = recipe with { StrictGroupSize = true };
                if (parseResult.GetValue(strict)) recipe = recipe with { Strict = true };
                if (parseResult.GetValue(onFailure) is { } f)
                    recipe = recipe with { Validation = recipe.Validation with { OnFailure = QuantizationRecipe.ParseOnFailure(f) } };
                if (parseResult.GetValue(noValidate)) recipe = recipe with { Validation = recipe.Validation with { Enabled = false } };
                recipe.Validate(given);
            }
            catch (Exception ex) when (ex is ArgumentException or RecipeException or FileNotFoundException)
            {
                return CheckpointConsole.Fail(parseResult, ex.Message);
            }

            bool asJson = parseResult.GetValue(json);
            string inPath = parseResult.GetValue(input)!, outPath = parseResult.GetValue(output)!;
            bool replace = parseResult.GetValue(overwrite);
            QuantizationReport report;
            // Ctrl+C and SIGTERM cancel the run between chunks, which removes its temporary folder before exiting.
            using var interrupt = new InterruptCancellation();
            try
            {
                report = asJson
                    ? CheckpointQuantizer.Quantize(inPath, outPath, recipe, null, interrupt.Token, replace)
                    : CheckpointConsole.WithProgress(parseResult, "Quantizing", p => CheckpointQuantizer.Quantize(inPath, outPath, recipe, p, interrupt.Token, replace));
            }
            catch (OperationCanceledException) when (interrupt.Token.IsCancellationRequested)
            {
                return CheckpointConsole.Fail(parseResult, $"Interrupted ({interrupt.Signal}); nothing was written under '{outPath}' and the temporary files were removed.",
                    CheckpointConsole.Interrupted);
            }
            catch (CheckpointValidationException ex)
            {
                if (asJson) CheckpointConsole.WriteJson(parseResult, ex.Report.ToJson());
                else Print(parseResult, ex.Report);
                return CheckpointConsole.Fail(parseResult, ex.Message, CheckpointConsole.ValidationFailed);
            }
            catch (CheckpointQuantizationException ex)
            {
                return CheckpointConsole.Fail(parseResult, ex.Message);
            }

            if (asJson) CheckpointConsole.WriteJson(parseResult, report.ToJson());
            else Print(parseResult, report);
            // Failures under --on-failure error end above; warn and ignore write the output and succeed.
            return CheckpointConsole.Ok;
        });
        return cmd;
    }

    /// <summary>"3.94x smaller", or "1.12x larger" when the settings made the tensors bigger (it said "0.89x smaller").</summary>
    internal static string SizeChange(double ratio) => ratio >= 1
        ? $"{ratio.ToString("0.00", CultureInfo.InvariantCulture)}x smaller"
        : $"{(1 / ratio).ToString("0.00", CultureInfo.InvariantCulture)}x larger";

    private static void Print(ParseResult parseResult, QuantizationReport r)
    {
        var console = CheckpointConsole.For(parseResult);
        console.Write(CheckpointConsole.TensorTable(r.Layers));
        int q = r.Layers.Count(t => t.Quantized);
        double? min = r.Layers.Where(t => t.WeightSqnrDb is not null).Select(t => t.WeightSqnrDb).DefaultIfEmpty(null).Min();
        console.MarkupLine(Markup.Escape(
            $"{q} tensors quantized, {r.Layers.Count - q} copied; tensors {CheckpointConsole.Bytes(r.OriginalBytes)} -> {CheckpointConsole.Bytes(r.StoredBytes)} " +
            $"({SizeChange(r.Ratio)}); lowest SQNR {CheckpointConsole.Db(min)} dB; " +
            $"{r.Elapsed.TotalSeconds.ToString("0.0", CultureInfo.InvariantCulture)} s."));
        foreach (var w in r.Warnings) console.MarkupLine("[yellow]" + Markup.Escape("warning: " + w) + "[/]");
        CheckpointConsole.WriteProblems(console, r.Problems, asWarnings: r.Written);
        if (r.Written)
            console.MarkupLine(Markup.Escape($"Wrote {r.Output} ({CheckpointConsole.Bytes(r.OutputFileBytes)})" +
                (r.Validated ? (r.Passed ? "; validation passed (SQNR, reload, range)." : "; validation found problems.") : "; not validated.")));
    }
}
