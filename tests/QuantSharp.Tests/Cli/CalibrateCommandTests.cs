using System.Buffers.Binary;
using System.Text.Json;
using System.Xml.Linq;
using QuantSharp.Tests.Demo;
using SkiaSharp;

namespace QuantSharp.Tests.Cli;

/// <summary><c>quantsharp calibrate compare|sensitivity|mixed</c> on the bundled MNIST CNN, run in-process as a user would.</summary>
public class CalibrateCommandTests
{
    /// <summary>Runs the CLI in-process, requires exit 0 and parses its JSON output.</summary>
    internal static JsonElement Json(params string[] args)
    {
        var (exit, output, error) = DemoCommandTests.RunCli(args);
        Assert.True(exit == 0, $"exit {exit}: {error}");
        return JsonDocument.Parse(output).RootElement.Clone();
    }

    /// <summary>A PNG: signature, IHDR width and height, and decoded pixels that are not all alike.</summary>
    internal static void AssertPicture(string png, int width, int height)
    {
        byte[] bytes = File.ReadAllBytes(png);
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A }, bytes[..8]);
        Assert.Equal("IHDR", System.Text.Encoding.ASCII.GetString(bytes, 12, 4));
        Assert.Equal(width, BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(16)));
        Assert.Equal(height, BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(20)));
        using var bitmap = SKBitmap.Decode(png);
        Assert.NotNull(bitmap);
        Assert.Equal(width, bitmap.Width);
        double sum = 0, sumSq = 0;
        int n = 0;
        for (int y = 0; y < bitmap.Height; y += 2)
        {
            for (int x = 0; x < bitmap.Width; x += 2)
            {
                var c = bitmap.GetPixel(x, y);
                double v = (c.Red + c.Green + c.Blue) / 3.0;
                sum += v;
                sumSq += v * v;
                n++;
            }
        }
        double variance = sumSq / n - (sum / n) * (sum / n);
        Assert.True(variance > 50, $"{png}: pixel variance {variance:F1} (blank picture?)");
        // Mostly white background with drawn content: not a single colour, not noise.
        Assert.InRange(sum / n, 100, 254);

        string svg = Path.ChangeExtension(png, ".svg");
        var doc = XDocument.Load(svg);
        Assert.Equal("svg", doc.Root!.Name.LocalName);
        Assert.True(doc.Descendants().Count() > 20, $"{svg}: only {doc.Descendants().Count()} elements");
    }

    [Fact]
    public void Compare_writes_the_table_and_one_histogram_picture_per_layer()
    {
        string dir = Directory.CreateTempSubdirectory("calibrate-compare-").FullName;
        try
        {
            var root = Json("calibrate", "compare", "--data", "bundled", "--samples", "64", "--plot", dir, "--json");
            Assert.Equal(64, root.GetProperty("samples").GetInt32());
            var layers = root.GetProperty("layers").EnumerateArray().ToList();
            Assert.Equal(["conv1", "conv2", "fc1", "fc2"], layers.Select(l => l.GetProperty("layer").GetString()));
            foreach (var l in layers)
            {
                var observers = l.GetProperty("observers").EnumerateArray().Select(o => o.GetProperty("observer").GetString()).ToList();
                Assert.Equal(["minmax", "moving-average", "percentile", "histogram-kl", "histogram-kl-50-100", "histogram-l2"], observers);
                Assert.Contains(l.GetProperty("auto_choice_experimental").GetString(), observers);
            }
            var pictures = root.GetProperty("pictures").EnumerateArray().Select(p => p.GetString()!).ToList();
            Assert.Equal(8, pictures.Count);
            foreach (var png in pictures.Where(p => p.EndsWith(".png", StringComparison.Ordinal)))
                AssertPicture(png, 900, 520);
            Assert.Empty(Directory.GetFiles(dir, "*.tmp-*"));

            var (exit, table, _) = DemoCommandTests.RunCli("calibrate", "compare", "--data", "bundled", "--samples", "64");
            Assert.Equal(0, exit);
            Assert.Contains("histogram-kl-50-100", table);
            Assert.Contains("Output SQNR dB", table);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Sensitivity_ranking_is_reproducible_with_a_seed_and_pictured()
    {
        string dir = Directory.CreateTempSubdirectory("calibrate-sensitivity-").FullName;
        try
        {
            string[] args = ["calibrate", "sensitivity", "--data", "bundled", "--samples", "96", "--seed", "5", "--types", "int8,int4", "--json"];
            var a = Json([.. args, "--plot", dir]);
            var b = Json(args);
            Assert.Equal(a.GetProperty("ranking").ToString(), b.GetProperty("ranking").ToString());
            Assert.Equal(a.GetProperty("layers").ToString(), b.GetProperty("layers").ToString());
            var ranking = a.GetProperty("ranking").EnumerateArray().Select(r => r.GetString()).ToList();
            Assert.Equal(["conv1", "conv2", "fc1", "fc2"], ranking.Order());
            // Ranked by the int4 SQNR, lowest first.
            var int4 = a.GetProperty("layers").EnumerateArray().ToDictionary(l => l.GetProperty("layer").GetString()!,
                l => l.GetProperty("variants")[1].GetProperty("output_sqnr_db").GetDouble());
            Assert.Equal(ranking, ranking.OrderBy(r => int4[r!]).ToList());
            // Another seed draws other images: other numbers.
            var c = Json("calibrate", "sensitivity", "--data", "bundled", "--samples", "96", "--seed", "6", "--types", "int8,int4", "--json");
            Assert.NotEqual(a.GetProperty("layers").ToString(), c.GetProperty("layers").ToString());
            AssertPicture(Path.Combine(dir, "sensitivity.png"), 900, 520);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Mixed_plan_within_a_budget_between_int4_and_int8_is_saved_and_reused_by_quantize()
    {
        string dir = Directory.CreateTempSubdirectory("calibrate-mixed-").FullName;
        try
        {
            string recipe = Path.Combine(dir, "mixed.recipe.json");
            // Uniform int8 and int4 group-32 of the bundled CNN: 57,568 and 36,168 bytes of quantized layers (sensitivity test).
            var root = Json("calibrate", "mixed", "--data", "bundled", "--samples", "128", "--budget-bytes", "46000", "--save-recipe", recipe, "--json");
            long planBytes = root.GetProperty("plan_bytes").GetInt64();
            // On the bundled images uniform int4 (99.1%) happens to beat float32 (99.0%): the plan may have to stay there.
            Assert.InRange(planBytes, 36_168, 46_000);
            var uniform = root.GetProperty("uniform").EnumerateArray().ToList();
            double int4 = uniform[2].GetProperty("accuracy").GetDouble();
            double mixed = root.GetProperty("measured").GetProperty("accuracy").GetDouble();
            Assert.True(mixed >= int4, $"mixed {mixed} < uniform int4 {int4}");
            Assert.True(root.GetProperty("measured").GetProperty("model_bytes").GetInt64() < uniform[1].GetProperty("model_bytes").GetInt64());

            // The saved recipe drives quantsharp quantize on the checkpoint.
            string output = Path.Combine(dir, "mixed.safetensors");
            var (exit, _, error) = DemoCommandTests.RunCli("quantize", QuantSharp.Cli.Demo.DemoRunner.BundledModelPath, output, "--config", recipe, "--json");
            Assert.True(exit == 0, error);
            Assert.True(File.Exists(output));

            var (bad, _, message) = DemoCommandTests.RunCli("calibrate", "mixed", "--data", "bundled", "--samples", "64", "--types", "int8,int4", "--budget-bytes", "1000");
            Assert.Equal(2, bad);
            Assert.Contains("below the smallest plan", message);
            Assert.DoesNotContain("   at ", message);
            (bad, _, message) = DemoCommandTests.RunCli("calibrate", "mixed", "--data", "bundled", "--samples", "64");
            Assert.Equal(2, bad);
            Assert.Contains("exactly one budget", message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
    /// <summary>The plan's layers and their type names, each among <paramref name="types"/> (the chosen types listed).</summary>
    private static Dictionary<string, string> PlanTypes(JsonElement root, params string[] types)
    {
        var plan = root.GetProperty("plan").EnumerateArray().ToDictionary(l => l.GetProperty("layer").GetString()!, l => l.GetProperty("spec").GetString()!.Split(' ')[0]);
        Assert.Equal(["conv1", "conv2", "fc1", "fc2"], plan.Keys.Order());
        Assert.All(plan.Values, t => Assert.Contains(t, types));
        return plan;
    }

    [Fact]
    public void Mixed_plan_says_which_layer_could_not_take_the_requested_types_and_why()
    {
        // conv1 has 1*3*3 = 9 inputs per filter: no 4-bit or 2-bit packing fits an odd length, so it falls back to int8
        // per-channel. The plan used to show it at int8 without a word.
        string[] args = ["calibrate", "mixed", "--data", "bundled", "--samples", "16", "--types", "int4,int2", "--bits-per-weight", "8"];
        var root = Json([.. args, "--json"]);
        var conv1 = root.GetProperty("plan").EnumerateArray().Single(l => l.GetProperty("layer").GetString() == "conv1");
        Assert.Equal("int8 symmetric per-channel", conv1.GetProperty("spec").GetString());
        Assert.StartsWith("int", conv1.GetProperty("requested").GetString());
        Assert.Contains("group:32", conv1.GetProperty("requested").GetString());
        Assert.StartsWith("'conv1.weight' [16, 1, 3, 3]: ", conv1.GetProperty("fallback").GetString());
        Assert.Contains("reduction length", conv1.GetProperty("fallback").GetString());
        Assert.Contains("9; quantized as int8 symmetric per-channel instead", conv1.GetProperty("fallback").GetString());
        // conv2 (144 inputs per filter) takes groups of 24 instead of 32, and says so; fc1 and fc2 are as asked.
        var conv2 = root.GetProperty("plan").EnumerateArray().Single(l => l.GetProperty("layer").GetString() == "conv2");
        Assert.Contains("group:24", conv2.GetProperty("spec").GetString());
        Assert.Contains("does not divide the reduction length 144", conv2.GetProperty("fallback").GetString());
        foreach (var layer in root.GetProperty("plan").EnumerateArray().Where(l => l.GetProperty("layer").GetString() is "fc1" or "fc2"))
        {
            Assert.Equal(JsonValueKind.Null, layer.GetProperty("fallback").ValueKind);
            Assert.Equal(layer.GetProperty("requested").GetString(), layer.GetProperty("spec").GetString());
        }
        var (exit, table, error) = DemoCommandTests.RunCli(args);
        Assert.True(exit == 0, error);
        Assert.Contains("(asked int", table);
        Assert.Contains("conv1: 'conv1.weight' [16, 1, 3, 3]: ", table);
    }

    [Fact]
    public void Mixed_plan_under_a_bits_per_weight_budget_stays_within_it_and_beats_uniform_int4()
    {
        // Uniform int4 group-32 is 36,168 bytes for 56,592 weights (5.11 bits per weight), int8 57,568 (8.14): 6.5 is between.
        var root = Json("calibrate", "mixed", "--data", "bundled", "--samples", "128", "--bits-per-weight", "6.5", "--json");
        Assert.Equal("at most 6.5 bits per weight", root.GetProperty("budget").GetString());
        long bytes = root.GetProperty("plan_bytes").GetInt64();
        double bits = root.GetProperty("bits_per_weight").GetDouble();
        Assert.Equal(bytes * 8.0 / 56_592, bits, 5);
        Assert.InRange(bytes, 36_168, (long)(6.5 * 56_592 / 8));
        Assert.InRange(bits, 36_168 * 8.0 / 56_592 - 1e-5, 6.5);
        Assert.Equal(bytes, root.GetProperty("plan").EnumerateArray().Sum(l => l.GetProperty("bytes").GetInt64()));
        PlanTypes(root, "float16", "int8", "int4");
        var uniform = root.GetProperty("uniform").EnumerateArray().ToList();
        double int4 = uniform[2].GetProperty("accuracy").GetDouble();
        double mixed = root.GetProperty("measured").GetProperty("accuracy").GetDouble();
        Assert.True(mixed >= int4, $"mixed {mixed} < uniform int4 {int4}");
        // Offline uniform int4 (99.1%) beats float32 (99.0%) on the bundled images, so the plan may stay at int4 (docs/CALIBRATION.md);
        // it is never larger than the budget and never below int4's size.
        Assert.True(root.GetProperty("measured").GetProperty("model_bytes").GetInt64() >= uniform[2].GetProperty("model_bytes").GetInt64());
    }

    [Fact]
    public void Mixed_plan_with_gptq_stays_within_the_budget_records_the_method_and_beats_round_to_nearest()
    {
        string dir = Directory.CreateTempSubdirectory("calibrate-mixed-gptq-").FullName;
        try
        {
            string recipeFile = Path.Combine(dir, "gptq.recipe.json");
            // int2/int4 group-32 of the bundled CNN: 22,056 / 36,168 bytes (3.12 / 5.11 bits per weight); 3.5 is between.
            var root = Json("calibrate", "mixed", "--data", "bundled", "--samples", "64", "--types", "int4,int2", "--bits-per-weight", "3.5",
                "--method", "gptq", "--save-recipe", recipeFile, "--json");
            long bytes = root.GetProperty("plan_bytes").GetInt64();
            Assert.Equal(bytes, root.GetProperty("plan").EnumerateArray().Sum(l => l.GetProperty("bytes").GetInt64()));
            Assert.Equal(bytes * 8.0 / 56_592, root.GetProperty("bits_per_weight").GetDouble(), 5);
            Assert.InRange(bytes, 22_056, (long)(3.5 * 56_592 / 8));
            Assert.Equal(bytes, root.GetProperty("measured").GetProperty("model_bytes").GetInt64()); // the measured model is the plan

            // The plan's recipe (printed and saved) is a GPTQ recipe.
            Assert.Equal("gptq", root.GetProperty("recipe").GetProperty("method").GetString());
            var saved = QuantizationRecipe.Load(recipeFile);
            Assert.Equal(QuantizationMethod.Gptq, saved.Method);
            Assert.Equal(root.GetProperty("plan").EnumerateArray().Select(l => l.GetProperty("layer").GetString()), saved.Overrides.Select(o => o.Pattern));

            // Its uniform variants were rounded by GPTQ: uniform int2 beats round to nearest (quantized here) on the same images.
            var int2 = root.GetProperty("uniform").EnumerateArray().Single(u => u.GetProperty("variant").GetString() == "int2 symmetric group:32");
            using var model = QuantSharp.Cli.Demo.MnistNet.Load(QuantSharp.Cli.Demo.DemoRunner.BundledModelPath);
            using var images = QuantSharp.Cli.Demo.DemoRunner.LoadBundled();
            var rtnRecipe = QuantizationRecipe.Int8WeightOnly().WithWeights(new QuantSpec(QuantType.Int2, QuantScheme.Symmetric, new PerGroup(32))) with { Validation = new ValidationPolicy() };
            var rtn = Quantizer.Quantize(model, rtnRecipe, factory: () => new QuantSharp.Cli.Demo.MnistNet(), onFailure: ValidationFailureMode.Warn);
            using var rtnModel = rtn.Model;
            using var reference = QuantSharp.Cli.Demo.DemoRunner.Logits(model, images);
            using var rtnLogits = QuantSharp.Cli.Demo.DemoRunner.Logits(rtnModel, images);
            double rtnSqnr = QuantSharp.Cli.Demo.DemoRunner.Sqnr(reference, rtnLogits), rtnAccuracy = images.Accuracy(rtnModel);
            Assert.Equal(22_056, int2.GetProperty("model_bytes").GetInt64());
            Assert.Equal(22_056, QuantSharp.Cli.Demo.DemoRunner.ModelBytes(rtnModel));
            Assert.True(int2.GetProperty("logits_sqnr_db").GetDouble() > rtnSqnr + 3,
                $"GPTQ int2 logits SQNR {int2.GetProperty("logits_sqnr_db").GetDouble():F2} dB vs round to nearest {rtnSqnr:F2} dB");
            Assert.True(int2.GetProperty("accuracy").GetDouble() > rtnAccuracy, $"GPTQ int2 {int2.GetProperty("accuracy").GetDouble()} vs RTN {rtnAccuracy}");
            // The mixed plan is at least as good as uniform int2 (it spends more bytes) and within 2 points of float32.
            double measured = root.GetProperty("measured").GetProperty("accuracy").GetDouble();
            Assert.True(measured >= int2.GetProperty("accuracy").GetDouble(), $"mixed {measured} < GPTQ int2");
            Assert.True(measured >= root.GetProperty("float32").GetProperty("accuracy").GetDouble() - 0.02, $"mixed {measured}");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Mixed_plan_under_an_accuracy_drop_is_within_it_and_cheaper_than_int8()
    {
        // With int2 among the types uniform int2 loses about 2.6 points on the bundled images: the plan upgrades layers
        // until the accuracy on the metric images (the same 1,000 images offline) is within one point of float32.
        var root = Json("calibrate", "mixed", "--data", "bundled", "--samples", "128", "--types", "int8,int4,int2", "--max-accuracy-drop", "1", "--json");
        Assert.Equal("metric at most 0.01 below float", root.GetProperty("budget").GetString());
        double floatAcc = root.GetProperty("float32").GetProperty("accuracy").GetDouble();
        double metric = root.GetProperty("metric_accuracy").GetDouble();
        Assert.True(metric >= floatAcc - 0.01 - 1e-12, $"plan {metric} vs float32 {floatAcc}");
        // Offline the metric images are the evaluation images: the measured accuracy is the one the plan was chosen by.
        Assert.Equal(metric, root.GetProperty("measured").GetProperty("accuracy").GetDouble(), 6);
        var uniform = root.GetProperty("uniform").EnumerateArray().ToList();
        double int2 = uniform[2].GetProperty("accuracy").GetDouble();
        Assert.True(int2 < floatAcc - 0.01, $"uniform int2 {int2} is already within the drop: the test would not exercise the planner");
        Assert.True(root.GetProperty("plans_evaluated").GetInt32() >= 2);
        PlanTypes(root, "int8", "int4", "int2");
        Assert.True(root.GetProperty("plan_bytes").GetInt64() < 57_568, $"plan {root.GetProperty("plan_bytes").GetInt64()} bytes, not below uniform int8");
        Assert.True(root.GetProperty("measured").GetProperty("model_bytes").GetInt64() < uniform[0].GetProperty("model_bytes").GetInt64());
    }
}
