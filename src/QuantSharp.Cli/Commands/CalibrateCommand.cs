using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using QuantSharp.Calibration;
using QuantSharp.Cli.Calibrate;
using QuantSharp.Cli.Demo;
using Spectre.Console;

namespace QuantSharp.Cli.Commands;

/// <summary>
/// <c>quantsharp calibrate compare|sensitivity|mixed</c>: the calibration tools on the demo's MNIST CNN (or another
/// MnistNet checkpoint, e.g. one trained on Fashion-MNIST): observers per layer, per-layer sensitivity, mixed precision.
/// </summary>
internal static class CalibrateCommand
{
    /// <summary>Options every subcommand takes.</summary>
    private sealed class Common
    {
        public readonly Option<string> Data = new("--data")
        {
            Description = "'bundled' = the 1,000 MNIST test images shipped with the CLI (offline), 'full' = the IDX files of --mnist-dir " +
                          "(calibration and metric on training images, results on the test split), 'auto' = full when present.",
            DefaultValueFactory = _ => "auto",
        };
        public readonly Option<string?> MnistDir = new("--mnist-dir") { Description = "Folder with the four IDX files (default .cache/mnist; .cache/fashion-mnist for Fashion-MNIST)." };
        public readonly Option<string?> Model = new("--model") { Description = "MnistNet float32 weights (default: the bundled MNIST CNN)." };
        public readonly Option<int> Samples = new("--samples") { Description = "Calibration images, drawn with --seed.", DefaultValueFactory = _ => 256 };
        public readonly Option<int> Seed = new("--seed") { Description = "Seed of the image draw; the same seed gives the same results.", DefaultValueFactory = _ => 1 };
        public readonly Option<int> MetricImages = new("--metric-images") { Description = "With full data: training images the accuracy metric uses.", DefaultValueFactory = _ => 2000 };
        public readonly Option<bool> Json = new("--json") { Description = "Print JSON instead of tables." };

        public Common() => Data.AcceptOnlyFromAmong("auto", "full", "bundled");

        public void AddTo(Command c)
        {
            foreach (var o in new Option[] { Data, MnistDir, Model, Samples, Seed, MetricImages, Json }) c.Options.Add(o);
        }

        public CalibrationInputs Inputs(ParseResult p) => new(p.GetValue(Data)!, p.GetValue(MnistDir), p.GetValue(Model), p.GetValue(Samples), p.GetValue(Seed), p.GetValue(MetricImages));
    }

    internal static Command Create()
    {
        var cmd = new Command("calibrate",
            "Calibration tools on the demo's MNIST CNN (or --model): compare observers per layer, per-layer sensitivity, mixed precision under a budget.");
        cmd.Subcommands.Add(Compare());
        cmd.Subcommands.Add(Sensitivity());
        cmd.Subcommands.Add(Mixed());
        return cmd;
    }

    /// <summary>Runs a subcommand body with the shared error handling: bad input exits 2 with one line, no stack trace.</summary>
    private static int Run(ParseResult p, Func<int> body)
    {
        try
        {
            return body();
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or IOException or InvalidDataException
                                      or UnauthorizedAccessException or NotSupportedException or QuantizationException)
        {
            return CheckpointConsole.Fail(p, e.Message);
        }
    }

    private static Command Compare()
    {
        var common = new Common();
        var dtype = new Option<string>("--dtype") { Description = "Activation type: uint8 (default, as W8A8) or int8.", DefaultValueFactory = _ => "uint8" };
        var scheme = new Option<string>("--scheme") { Description = "affine (default) or symmetric.", DefaultValueFactory = _ => "affine" };
        var plot = new Option<string?>("--plot") { Description = "Write DIR/histogram-LAYER.png and .svg: each layer's input histogram with every observer's range." };
        var save = new Option<string?>("--save-recipe")
        {
            Description = "EXPERIMENTAL: write a W8A8 recipe (JSON) to FILE that calibrates each layer's input with its automatic choice " +
                          "(one override per layer; calibration_samples = --samples), for 'quantsharp demo --recipe FILE' or QuantizationRecipe.Load.",
        };
        var cmd = new Command("compare",
            "Compare activation observers per layer (minmax, moving-average, percentile, histogram KL with and without the 50-100% search " +
            "window, histogram L2): range, clipped values, SQNR of the layer output with its input quantized, KL divergence; and the " +
            "experimental automatic choice (best output SQNR).");
        common.AddTo(cmd);
        cmd.Options.Add(dtype);
        cmd.Options.Add(scheme);
        cmd.Options.Add(plot);
        cmd.Options.Add(save);
        cmd.SetAction(p => Run(p, () =>
        {
            CheckpointConsole.RequireFolder(p.GetValue(plot), "--plot");
            var type = QuantTypeInfo.Parse(p.GetValue(dtype)!);
            var spec = new QuantSpec(type, QuantizationRecipe.ParseScheme(p.GetValue(scheme)!), Granularity.Tensor);
            using var setup = CalibrationSetup.Load(common.Inputs(p));
            var comparison = ObserverComparison.Compare(setup.Model, setup.Batches(), spec, maxSamples: setup.Calibration.Count);
            var pictures = p.GetValue(plot) is { } dir ? CalibrationPlots.Histograms(comparison, dir) : [];
            string? recipe = p.GetValue(save);
            if (recipe is not null) comparison.ToRecipe().Save(recipe);
            if (p.GetValue(common.Json)) CheckpointConsole.WriteJson(p, CompareJson(comparison, setup, pictures, recipe));
            else WriteCompare(CheckpointConsole.For(p), comparison, setup, pictures, recipe);
            return CheckpointConsole.Ok;
        }));
        return cmd;
    }

    private static Command Sensitivity()
    {
        var common = new Common();
        var (types, group) = SpecOptions();
        var plot = new Option<string?>("--plot") { Description = "Write DIR/sensitivity.png and .svg: the per-layer ranking." };
        var cmd = new Command("sensitivity",
            "Quantize one layer at a time with each type and measure the model output's SQNR against float32 and the accuracy; " +
            "rank the layers (most sensitive first) and show every layer quantized the same way for reference.");
        common.AddTo(cmd);
        cmd.Options.Add(types);
        cmd.Options.Add(group);
        cmd.Options.Add(plot);
        cmd.SetAction(p => Run(p, () =>
        {
            CheckpointConsole.RequireFolder(p.GetValue(plot), "--plot");
            var specs = ParseSpecs(p.GetValue(types)!, p.GetValue(group));
            using var setup = CalibrationSetup.Load(common.Inputs(p));
            var report = Measure(setup, specs);
            var pictures = p.GetValue(plot) is { } dir ? CalibrationPlots.Sensitivity(report, dir) : [];
            if (p.GetValue(common.Json)) CheckpointConsole.WriteJson(p, SensitivityJson(report, setup, pictures));
            else WriteSensitivity(CheckpointConsole.For(p), report, setup, pictures);
            return CheckpointConsole.Ok;
        }));
        return cmd;
    }

    private static Command Mixed()
    {
        var common = new Common();
        var (types, group) = SpecOptions();
        var bytes = new Option<long?>("--budget-bytes") { Description = "At most this many bytes for the quantized layers (data, scales, zero points, biases)." };
        var bits = new Option<double?>("--bits-per-weight") { Description = "At most this many bits per weight on average (bytes x 8 / weight elements)." };
        var sqnr = new Option<double?>("--min-sqnr") { Description = "The cheapest plan whose predicted model-output SQNR reaches this (dB)." };
        var drop = new Option<double?>("--max-accuracy-drop") { Description = "The cheapest plan whose accuracy on the metric images is at most this many points below float32." };
        var save = new Option<string?>("--save-recipe") { Description = "Write the plan's recipe (JSON) to FILE, for 'quantsharp quantize --config FILE' or QuantizationRecipe.Load." };
        var method = new Option<string>("--method")
        {
            Description = "How the integer variants round: rtn (round to nearest, default) or gptq (GPTQ on the calibration images; the plan's " +
                          "recipe then needs a model and data: 'quantsharp demo --recipe FILE', not 'quantize').",
            DefaultValueFactory = _ => "rtn",
        };
        method.AcceptOnlyFromAmong("rtn", "gptq");
        var cmd = new Command("mixed",
            "Mixed precision under a budget: choose per layer among the --types from the sensitivity measurements (greedy: most output noise " +
            "removed per byte), pick the most accurate plan of the path on the metric images, and report the plan with its measured accuracy, " +
            "size and SQNR next to the uniform variants. Give one of --budget-bytes, --bits-per-weight, --min-sqnr, --max-accuracy-drop.");
        common.AddTo(cmd);
        foreach (var o in new Option[] { types, group, bytes, bits, sqnr, drop, save, method }) cmd.Options.Add(o);
        cmd.SetAction(p => Run(p, () =>
        {
            var specs = ParseSpecs(p.GetValue(types)!, p.GetValue(group));
            var budget = Budget(p.GetValue(bytes), p.GetValue(bits), p.GetValue(sqnr), p.GetValue(drop));
            var baseRecipe = QuantizationRecipe.Int8WeightOnly() with { Method = QuantizationRecipe.ParseMethod(p.GetValue(method)!) };
            using var setup = CalibrationSetup.Load(common.Inputs(p));
            var report = Measure(setup, specs, baseRecipe);
            var plan = MixedPrecisionPlan.Plan(report, budget, recipe => Evaluate(setup, recipe, setup.Metric).Accuracy);
            var measured = Evaluate(setup, plan.Recipe, setup.Evaluation);
            var uniform = report.Specs.Select(s => Evaluate(setup, report.BaseRecipe.WithWeights(s) with { Validation = new ValidationPolicy() }, setup.Evaluation)).ToList();
            var floatResult = Evaluate(setup, null, setup.Evaluation);
            if (p.GetValue(save) is { } file) plan.Recipe.Save(file);
            if (p.GetValue(common.Json)) CheckpointConsole.WriteJson(p, MixedJson(plan, measured, report, uniform, floatResult, setup));
            else WriteMixed(CheckpointConsole.For(p), plan, measured, report, uniform, floatResult, setup, p.GetValue(save));
            return CheckpointConsole.Ok;
        }));
        return cmd;
    }

    /// <summary>The budget of <c>calibrate mixed</c>, checked before any measurement, in the words of its options.</summary>
    private static MixedPrecisionBudget Budget(long? bytes, double? bits, double? sqnr, double? dropPoints)
    {
        int given = new object?[] { bytes, bits, sqnr, dropPoints }.Count(v => v is not null);
        if (given != 1)
            throw new ArgumentException($"Give exactly one budget{(given == 0 ? "" : $" ({given} were given)")}: --budget-bytes N, --bits-per-weight B, " +
                "--min-sqnr DB or --max-accuracy-drop POINTS (e.g. --budget-bytes 46868).");
        if (bytes is <= 0) throw new ArgumentException($"--budget-bytes must be positive, got {bytes}.");
        if (bits is { } b && !(b > 0)) throw new ArgumentException($"--bits-per-weight must be positive, got {b}.");
        if (sqnr is { } s && !double.IsFinite(s)) throw new ArgumentException($"--min-sqnr must be a finite number of dB, got {s}.");
        if (dropPoints is { } d && !(d >= 0)) throw new ArgumentException($"--max-accuracy-drop must be at least 0 points, got {d}.");
        return new MixedPrecisionBudget { MaxBytes = bytes, MaxBitsPerWeight = bits, MinOutputSqnrDb = sqnr, MaxMetricDrop = dropPoints / 100 };
    }

    private static (Option<string> Types, Option<int> Group) SpecOptions() => (
        new Option<string>("--types") { Description = "Weight types to try per layer, comma-separated (float16, bfloat16, int8, int4, int2).", DefaultValueFactory = _ => "float16,int8,int4" },
        new Option<int>("--group-size") { Description = "Group size of the 4-bit types (8-bit types are per-channel).", DefaultValueFactory = _ => 32 });

    /// <summary>Weight specs from type names: symmetric, per-channel for 8-bit, groups for fewer bits.</summary>
    internal static List<QuantSpec> ParseSpecs(string types, int groupSize)
    {
        var specs = types.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(QuantTypeInfo.Parse)
            .Select(t => !t.IsInteger() ? new QuantSpec(t, QuantScheme.Symmetric, Granularity.Tensor)
                : new QuantSpec(t, QuantScheme.Symmetric, t.Bits() == 8 ? new PerAxis(0) : new PerGroup(groupSize)))
            .ToList();
        if (specs.Count == 0) throw new ArgumentException("--types names no type; use e.g. float16,int8,int4.");
        foreach (var s in specs) s.Validate();
        return specs;
    }

    private static SensitivityReport Measure(CalibrationSetup setup, IReadOnlyList<QuantSpec> specs, QuantizationRecipe? baseRecipe = null) =>
        SensitivityReport.Measure(setup.Model, () => new MnistNet(), setup.Batches(), specs, m => setup.Metric.Accuracy(m), baseRecipe);

    /// <summary>Accuracy, size and logits SQNR of the model quantized with <paramref name="recipe"/> (null: float32) on <paramref name="set"/>.</summary>
    private static Measured Evaluate(CalibrationSetup setup, QuantizationRecipe? recipe, MnistSet set)
    {
        using var reference = DemoRunner.Logits(setup.Model, set);
        if (recipe is null)
            return new Measured(set.Accuracy(setup.Model), DemoRunner.ModelBytes(setup.Model), double.PositiveInfinity);
        // GPTQ rounds with each layer's inputs: the calibration images.
        var result = recipe.Method == QuantizationMethod.Gptq
            ? Quantizer.Quantize(setup.Model, recipe, setup.Batches(), factory: () => new MnistNet(), onFailure: ValidationFailureMode.Warn)
            : Quantizer.Quantize(setup.Model, recipe, factory: () => new MnistNet(), onFailure: ValidationFailureMode.Warn);
        using var model = result.Model;
        using var logits = DemoRunner.Logits(model, set);
        return new Measured(set.Accuracy(model), DemoRunner.ModelBytes(model), DemoRunner.Sqnr(reference, logits));
    }

    /// <summary>A measured model: accuracy (fraction), bytes of parameters and buffers, logits SQNR (dB).</summary>
    private sealed record Measured(double Accuracy, long Bytes, double SqnrDb);

    // ---- output ----

    private static string F(double v, string format = "0.00") =>
        double.IsPositiveInfinity(v) ? "inf" : v.ToString(format, CultureInfo.InvariantCulture);

    private static JsonNode? Num(double v) => double.IsFinite(v) ? JsonValue.Create(Math.Round(v, 6)) : JsonValue.Create(v.ToString(CultureInfo.InvariantCulture));

    private static JsonArray Files(IEnumerable<string> files) => new(files.Select(f => (JsonNode?)JsonValue.Create(f)).ToArray());

    private static JsonObject CompareJson(ObserverComparison c, CalibrationSetup setup, List<string> pictures, string? recipe)
    {
        var chosen = c.ChooseObservers();
        return new JsonObject
        {
            ["data"] = setup.Description,
            ["activations"] = c.Activations.ToString(),
            ["samples"] = c.Samples,
            ["layers"] = new JsonArray(c.Layers.Select(l => (JsonNode?)new JsonObject
            {
                ["layer"] = l.Layer,
                ["module_type"] = l.ModuleType,
                ["min"] = l.Min,
                ["max"] = l.Max,
                ["auto_choice_experimental"] = chosen[l.Layer].Label,
                ["observers"] = new JsonArray(l.Choices.Select(o => (JsonNode?)new JsonObject
                {
                    ["observer"] = o.Observer, ["low"] = o.Low, ["high"] = o.High, ["scale"] = o.Scale, ["zero_point"] = o.ZeroPoint,
                    ["clipped_percent"] = Num(o.ClippedPercent), ["output_sqnr_db"] = Num(o.OutputSqnrDb), ["kl_divergence"] = Num(o.KlDivergence),
                }).ToArray()),
            }).ToArray()),
            ["pictures"] = Files(pictures),
            ["recipe_experimental"] = recipe,
        };
    }

    private static void WriteCompare(IAnsiConsole console, ObserverComparison c, CalibrationSetup setup, List<string> pictures, string? recipe)
    {
        console.MarkupLine($"[grey]{Markup.Escape(setup.Description)}[/]");
        var table = new Table().Border(TableBorder.Rounded)
            .Title($"Observers per layer input ({Markup.Escape(c.Activations.ToString())}, {c.Samples} samples)")
            .Caption("output SQNR: layer output with its input quantized (float weights) vs float; KL: entropy-calibration divergence of the range; * best SQNR (experimental auto choice)")
            .AddColumn("Layer").AddColumn("Observer").AddColumn(new TableColumn("Low").RightAligned()).AddColumn(new TableColumn("High").RightAligned())
            .AddColumn(new TableColumn("Scale").RightAligned()).AddColumn(new TableColumn("ZP").RightAligned()).AddColumn(new TableColumn("Clipped %").RightAligned())
            .AddColumn(new TableColumn("Output SQNR dB").RightAligned()).AddColumn(new TableColumn("KL").RightAligned());
        foreach (var l in c.Layers)
        {
            var best = l.Best;
            foreach (var o in l.Choices)
            {
                table.AddRow(o == l.Choices[0] ? Markup.Escape($"{l.Layer} [{l.Min:G4}, {l.Max:G4}]") : "",
                    Markup.Escape(o.Observer) + (ReferenceEquals(o, best) ? " *" : ""),
                    o.Low.ToString("G5", CultureInfo.InvariantCulture), o.High.ToString("G5", CultureInfo.InvariantCulture),
                    o.Scale.ToString("G5", CultureInfo.InvariantCulture), o.ZeroPoint.ToString(CultureInfo.InvariantCulture),
                    F(o.ClippedPercent, "0.####"), F(o.OutputSqnrDb), F(o.KlDivergence, "0.0000"));
            }
            table.AddEmptyRow();
        }
        console.Write(table);
        foreach (var f in pictures) console.MarkupLine($"wrote {Markup.Escape(f)}");
        if (recipe is not null)
            console.MarkupLine($"wrote {Markup.Escape(recipe)} (experimental: each layer's input calibrated with its * observer; quantsharp demo --recipe {Markup.Escape(recipe)})");
    }

    private static JsonObject SensitivityJson(SensitivityReport r, CalibrationSetup setup, List<string> pictures) => new()
    {
        ["data"] = setup.Description,
        ["samples"] = r.Samples,
        ["specs"] = new JsonArray(r.Specs.Select(s => (JsonNode?)JsonValue.Create(s.ToString())).ToArray()),
        ["float_accuracy"] = r.FloatMetric,
        ["ranking"] = new JsonArray(r.Ranking().Select(l => (JsonNode?)JsonValue.Create(l.Layer)).ToArray()),
        ["layers"] = new JsonArray(r.Layers.Select(l => (JsonNode?)new JsonObject
        {
            ["layer"] = l.Layer,
            ["module_type"] = l.ModuleType,
            ["weight_elements"] = l.WeightElements,
            ["float_bytes"] = l.FloatBytes,
            ["variants"] = MeasurementsJson(l.Measurements),
        }).ToArray()),
        ["uniform"] = MeasurementsJson(r.Uniform),
        ["pictures"] = Files(pictures),
    };

    private static JsonArray MeasurementsJson(IEnumerable<SensitivityMeasurement> ms) => new(ms.Select(m => (JsonNode?)new JsonObject
    {
        ["spec"] = m.Spec.ToString(),
        ["applied"] = m.Applied.ToString(),
        ["bytes"] = m.Bytes,
        ["output_sqnr_db"] = Num(m.OutputSqnrDb),
        ["accuracy"] = m.Metric,
    }).ToArray());

    private static void WriteSensitivity(IAnsiConsole console, SensitivityReport r, CalibrationSetup setup, List<string> pictures)
    {
        console.MarkupLine($"[grey]{Markup.Escape(setup.Description)}[/]");
        var table = new Table().Border(TableBorder.Rounded)
            .Title($"Per-layer sensitivity (one layer quantized at a time; {r.Samples} samples; float32 accuracy {r.FloatMetric * 100:F2}%)")
            .Caption("most sensitive first (lowest output SQNR at the last type); SQNR of the model's logits vs float32; accuracy on the metric images")
            .AddColumn("#").AddColumn("Layer").AddColumn(new TableColumn("Weights").RightAligned());
        foreach (var s in r.Specs) table.AddColumn(new TableColumn($"{Markup.Escape(s.ToString())}\nSQNR dB / acc % / bytes").RightAligned());
        int rank = 1;
        foreach (var l in r.Ranking())
            table.AddRow([(rank++).ToString(CultureInfo.InvariantCulture), Markup.Escape(l.Layer), l.WeightElements.ToString("N0", CultureInfo.InvariantCulture),
                .. l.Measurements.Select(Cell)]);
        table.AddEmptyRow();
        table.AddRow(["", "all layers (uniform)", r.Layers.Sum(l => l.WeightElements).ToString("N0", CultureInfo.InvariantCulture), .. r.Uniform.Select(Cell)]);
        console.Write(table);
        foreach (var l in r.Layers)
            foreach (var m in l.Measurements.Where(m => !m.Applied.Equals(m.Spec)))
                console.MarkupLine($"[yellow]{Markup.Escape(l.Layer)}: {Markup.Escape(m.Spec.ToString())} does not fit, measured as {Markup.Escape(m.Applied.ToString())}[/]");
        foreach (var f in pictures) console.MarkupLine($"wrote {Markup.Escape(f)}");

        static string Cell(SensitivityMeasurement m) =>
            $"{F(m.OutputSqnrDb, "0.0")} / {(m.Metric is { } a ? F(a * 100) : "-")} / {m.Bytes.ToString("N0", CultureInfo.InvariantCulture)}";
    }

    private static JsonObject MixedJson(MixedPrecisionPlan plan, Measured measured, SensitivityReport r, List<Measured> uniform, Measured fp32, CalibrationSetup setup) => new()
    {
        ["data"] = setup.Description,
        ["budget"] = plan.Budget.ToString(),
        ["plan"] = new JsonArray(plan.Layers.Select(c => (JsonNode?)new JsonObject
        {
            ["layer"] = c.Layer, ["spec"] = c.Spec.ToString(), ["requested"] = c.Requested?.ToString(), ["fallback"] = c.Fallback,
            ["bytes"] = c.Bytes, ["single_layer_output_sqnr_db"] = Num(c.OutputSqnrDb),
        }).ToArray()),
        ["plan_bytes"] = plan.Bytes,
        ["bits_per_weight"] = Num(plan.BitsPerWeight),
        ["predicted_output_sqnr_db"] = Num(plan.PredictedOutputSqnrDb),
        ["metric_accuracy"] = plan.Metric,
        ["plans_evaluated"] = plan.CandidatesEvaluated,
        ["recipe"] = JsonNode.Parse(plan.Recipe.ToJson()),
        ["measured"] = MeasuredJson("mixed", measured),
        ["float32"] = MeasuredJson("float32", fp32),
        ["uniform"] = new JsonArray(r.Specs.Select((s, i) => (JsonNode?)MeasuredJson(s.ToString(), uniform[i])).ToArray()),
    };

    private static JsonObject MeasuredJson(string name, Measured m) => new()
    {
        ["variant"] = name, ["accuracy"] = Num(m.Accuracy), ["model_bytes"] = m.Bytes, ["logits_sqnr_db"] = Num(m.SqnrDb),
    };

    private static void WriteMixed(IAnsiConsole console, MixedPrecisionPlan plan, Measured measured, SensitivityReport r, List<Measured> uniform,
        Measured fp32, CalibrationSetup setup, string? saved)
    {
        console.MarkupLine($"[grey]{Markup.Escape(setup.Description)}[/]");
        var choices = new Table().Border(TableBorder.Rounded)
            .Title($"Mixed-precision plan: {Markup.Escape(plan.Budget.ToString())}")
            .Caption($"{plan.Bytes:N0} bytes in the quantized layers, {plan.BitsPerWeight:0.###} bits per weight, predicted output SQNR {F(plan.PredictedOutputSqnrDb)} dB; " +
                     $"{plan.CandidatesEvaluated} plans of the upgrade path evaluated on the metric images")
            .AddColumn("Layer").AddColumn("Spec").AddColumn(new TableColumn("Bytes").RightAligned()).AddColumn(new TableColumn("Output SQNR dB (layer alone)").RightAligned());
        foreach (var c in plan.Layers)
            choices.AddRow(Markup.Escape(c.Layer), Markup.Escape(c.Spec + (c.Fallback is null ? "" : $" (asked {c.Requested}: fallback)")),
                c.Bytes.ToString("N0", CultureInfo.InvariantCulture), F(c.OutputSqnrDb));
        console.Write(choices);
        // A layer that could not take the requested type (e.g. 9 inputs per filter: no 4-bit or 2-bit packing) says why.
        foreach (var c in plan.Layers.Where(c => c.Fallback is not null))
            console.MarkupLine($"[yellow]{Markup.Escape($"{c.Layer}: {c.Fallback}")}[/]");
        var results = new Table().Border(TableBorder.Rounded).Title("Measured on the evaluation images")
            .AddColumn("Variant").AddColumn(new TableColumn("Accuracy").RightAligned()).AddColumn(new TableColumn("Model bytes").RightAligned())
            .AddColumn(new TableColumn("Logits SQNR dB").RightAligned());
        void Row(string name, Measured m) => results.AddRow(Markup.Escape(name), $"{F(m.Accuracy * 100)}%", m.Bytes.ToString("N0", CultureInfo.InvariantCulture), F(m.SqnrDb));
        Row("float32", fp32);
        for (int i = 0; i < r.Specs.Count; i++) Row($"uniform {r.Specs[i]}", uniform[i]);
        Row("mixed plan", measured);
        console.Write(results);
        if (saved is not null) console.MarkupLine($"wrote {Markup.Escape(saved)} (quantsharp quantize MODEL OUT --config {Markup.Escape(saved)})");
    }
}
