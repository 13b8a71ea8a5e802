using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using QuantSharp.Cli.Demo;
using Spectre.Console;

namespace QuantSharp.Cli.Commands;

/// <summary><c>quantsharp demo</c>: quantizes the bundled MNIST CNN four ways and compares accuracy, size and SQNR.</summary>
internal static class DemoCommand
{
    internal static Command Create()
    {
        var data = new Option<string>("--data")
        {
            Description = "Images to evaluate on: 'full' = the 10,000 MNIST test images in .cache/mnist (get them with " +
                          "scripts/fetch-mnist.sh; calibration then uses training images), 'bundled' = the first 1,000 test images " +
                          "shipped with the CLI (no network; calibration uses the first images of that slice), 'auto' = full when " +
                          ".cache/mnist is present, else bundled.",
            DefaultValueFactory = _ => "auto",
        };
        data.AcceptOnlyFromAmong("auto", "full", "bundled");
        var mnistDir = new Option<string?>("--mnist-dir")
        {
            Description = "Folder holding the four MNIST IDX files (default: .cache/mnist in the current directory or a parent).",
        };
        var model = new Option<string?>("--model")
        {
            Description = "Float32 MnistNet weights (safetensors) to quantize (default: the bundled Assets/mnist-cnn.safetensors).",
        };
        var calibration = new Option<int>("--calibration-images")
        {
            Description = "Number of images used to calibrate activation ranges for W8A8.",
            DefaultValueFactory = _ => 256,
        };
        var limit = new Option<int?>("--limit") { Description = "Evaluate on at most this many images (default: all)." };
        var json = new Option<bool>("--json") { Description = "Print the result as JSON (for machines) instead of a table." };
        var save = new Option<string?>("--save")
        {
            Description = "Write each variant to DIR as VARIANT.safetensors (Quantizer.Save, docs/FORMAT.md) and VARIANT.recipe.json " +
                          "(its recipe: 'quantsharp quantize MODEL OUT --config DIR/VARIANT.recipe.json' writes the same tensors, byte for byte).",
        };

        var method = new Option<string>("--method")
        {
            Description = "How the int8 and int4 weight-only variants round: rtn (round to nearest, default) or gptq (GPTQ on the calibration " +
                          "images; variants named *-gptq).",
            DefaultValueFactory = _ => "rtn",
        };
        method.AcceptOnlyFromAmong("rtn", "gptq");
        var recipeFile = new Option<string?>("--recipe")
        {
            Description = "Also quantize with this recipe (JSON, e.g. from 'calibrate compare --save-recipe'), calibrated on the calibration images.",
        };

        var cmd = new Command("demo",
            "Quantize the bundled MNIST CNN (float16, int8 per-channel, int4 group-32, W8A8 with calibration, W8A8 with dynamic " +
            "activations) and print accuracy, size, SQNR and inference time of each variant against float32. Runs offline on bundled data; with the full MNIST " +
            "test set after scripts/fetch-mnist.sh.");
        cmd.Options.Add(data);
        cmd.Options.Add(mnistDir);
        cmd.Options.Add(model);
        cmd.Options.Add(calibration);
        cmd.Options.Add(limit);
        cmd.Options.Add(json);
        cmd.Options.Add(save);
        cmd.Options.Add(method);
        cmd.Options.Add(recipeFile);
        cmd.Subcommands.Add(DemoMiniLMCommand.Create());
        cmd.SetAction(parseResult =>
        {
            var options = new DemoOptions
            {
                Data = Enum.Parse<DemoDataChoice>(parseResult.GetValue(data) ?? "auto", ignoreCase: true),
                MnistDirectory = parseResult.GetValue(mnistDir),
                ModelPath = parseResult.GetValue(model),
                CalibrationImages = parseResult.GetValue(calibration),
                Limit = parseResult.GetValue(limit),
                SaveDirectory = parseResult.GetValue(save),
            };
            bool asJson = parseResult.GetValue(json);
            // A bar for calibration runs above 50 samples, on an interactive terminal (not in --json or logs).
            if (!asJson && options.CalibrationImages > 50 && !Console.IsErrorRedirected)
                options = options with { CalibrationProgress = new CalibrationProgressBar(Console.Error) };
            var output = parseResult.InvocationConfiguration.Output;
            var console = CheckpointConsole.For(parseResult);
            // Bad options and inputs reach the top-level handler: one 'error:' line, exit code 2 (1 when validation fails).
            CheckpointConsole.RequireFolder(options.SaveDirectory, "--save");
            var variants = DemoVariants.ForMethod(QuantizationRecipe.ParseMethod(parseResult.GetValue(method)!)).ToList();
            if (parseResult.GetValue(recipeFile) is { } file)
                variants.Add(DemoVariants.FromRecipe(RecipeName(file), QuantizationRecipe.Load(file), file));
            // Ctrl+C and SIGTERM stop the run between variants (never inside a file write) with one line saying what was kept.
            using var interrupt = new InterruptCancellation();
            DemoReport report;
            try
            {
                report = DemoRunner.Run(options with { Cancellation = interrupt.Token }, variants,
                    asJson ? null : message => console.MarkupLine($"[grey]{Markup.Escape(message)}[/]"));
            }
            catch (DemoInterruptedException ex) when (interrupt.Token.IsCancellationRequested)
            {
                return CheckpointConsole.Fail(parseResult, InterruptedMessage(interrupt.Signal, ex.Saved), CheckpointConsole.Interrupted);
            }
            if (asJson) output.WriteLine(ToJson(report));
            else WriteTable(console, report);
            return 0;
        });
        return cmd;
    }

    /// <summary>The one line of an interrupted demo: no results table; which complete files <c>--save</c> had written, if any.</summary>
    internal static string InterruptedMessage(string? signal, IReadOnlyList<string> saved) =>
        $"Interrupted ({signal ?? "cancelled"}) before the results table was printed; " + (saved.Count == 0
            ? "nothing was written."
            : $"kept the {saved.Count} complete file(s) already saved ({string.Join(", ", saved)}); nothing else was written.");

    /// <summary>The variant name of a recipe file: its name without <c>.json</c> and <c>.recipe</c>.</summary>
    private static string RecipeName(string file)
    {
        string name = Path.GetFileNameWithoutExtension(file);
        return name.EndsWith(".recipe", StringComparison.OrdinalIgnoreCase) ? name[..^".recipe".Length] : name;
    }

    /// <summary>The report as indented JSON: data, sources and one object per variant.</summary>
    internal static string ToJson(DemoReport report)
    {
        static JsonNode? Num(double? v) => v is null ? null : double.IsFinite(v.Value) ? JsonValue.Create(Math.Round(v.Value, 4)) : JsonValue.Create(v.Value.ToString(CultureInfo.InvariantCulture));
        var floatAcc = report.Variants[0].AccuracyPercent;
        var variants = new JsonArray();
        foreach (var v in report.Variants)
        {
            variants.Add(new JsonObject
            {
                ["name"] = v.Name,
                ["description"] = v.Description,
                ["correct"] = v.Correct,
                ["total"] = v.Total,
                ["accuracyPercent"] = Num(v.AccuracyPercent),
                ["deltaPoints"] = Num(v.AccuracyPercent - floatAcc),
                ["sizeBytes"] = v.SizeBytes,
                ["sizeRatioVsFloat32"] = Num(v.SizeRatio),
                ["sqnrDb"] = Num(v.SqnrDb),
                ["minWeightSqnrDb"] = Num(v.MinWeightSqnrDb),
                ["warnings"] = new JsonArray(v.Warnings.Select(w => (JsonNode?)JsonValue.Create(w)).ToArray()),
                ["seconds"] = Num(v.Seconds),
                ["inferenceMs"] = Num(v.InferenceMs),
            });
        }
        var root = new JsonObject
        {
            ["data"] = report.Data,
            ["evaluation"] = new JsonObject { ["source"] = report.EvaluationSource, ["images"] = report.EvaluationImages },
            ["calibration"] = new JsonObject { ["source"] = report.CalibrationSource, ["images"] = report.CalibrationImages },
            ["model"] = report.ModelPath,
            ["sqnr"] = "sqnrDb: 20*log10(||logits_float32|| / ||logits_float32 - logits_variant||) over the evaluated images; " +
                       "minWeightSqnrDb: lowest per-layer SQNR of the dequantized weights against the float weights",
            ["variants"] = variants,
        };
        return root.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    private static void WriteTable(IAnsiConsole console, DemoReport report)
    {
        double floatAcc = report.Variants[0].AccuracyPercent;
        var table = new Table().Border(TableBorder.Rounded)
            .Title($"MNIST CNN: {Markup.Escape(report.EvaluationSource)}")
            .Caption($"calibration (W8A8): {Markup.Escape(report.CalibrationSource)}; size = parameters + buffers; SQNR against float32")
            .AddColumn(new TableColumn("Variant").NoWrap()).AddColumn(new TableColumn("Accuracy").RightAligned()).AddColumn(new TableColumn("Δ pts").RightAligned())
            .AddColumn(new TableColumn("Size (bytes)").RightAligned()).AddColumn(new TableColumn("vs fp32").RightAligned())
            .AddColumn(new TableColumn("SQNR logits dB").RightAligned()).AddColumn(new TableColumn("min weight SQNR dB").RightAligned())
            .AddColumn(new TableColumn("Inference ms").RightAligned());
        foreach (var v in report.Variants)
        {
            double delta = v.AccuracyPercent - floatAcc;
            table.AddRow(
                Markup.Escape(v.Name),
                $"{v.AccuracyPercent:F2}%",
                v.Name == "float32" ? "" : $"{delta:+0.00;-0.00;0.00}",
                v.SizeBytes.ToString("N0", CultureInfo.InvariantCulture),
                $"{v.SizeRatio * 100:F1}%",
                Db(v.SqnrDb),
                Db(v.MinWeightSqnrDb),
                v.InferenceMs.ToString("0.0", CultureInfo.InvariantCulture));
        }
        console.Write(table);
        foreach (var v in report.Variants)
            console.MarkupLine($"  [bold]{Markup.Escape(v.Name)}[/]: {Markup.Escape(v.Description)}");
        foreach (var v in report.Variants)
            foreach (var w in v.Warnings)
                console.MarkupLine($"[yellow]{Markup.Escape(v.Name)}: {Markup.Escape(w)}[/]");
    }

    private static string Db(double? value) =>
        value is null ? "" : double.IsPositiveInfinity(value.Value) ? "∞" : value.Value.ToString("F1", CultureInfo.InvariantCulture);
}
