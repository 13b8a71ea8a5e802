using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using QuantSharp.Serialization;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Bench;

/// <summary>
/// End-to-end checkpoint benchmark (no BenchmarkDotNet: one long run):
/// <c>dotnet run -c Release --project bench/QuantSharp.Bench -- checkpoint --size-gb 8 --dir /tmp/qsbench</c>.
/// Writes a synthetic Llama-shaped bf16 checkpoint of about <c>--size-gb</c> GB in 2 GB shards, copies the shards
/// (File.Copy: the machine's plain copy rate, the baseline), quantizes it to int8 per-channel and to int4 group-128
/// with validation on, and reports GB/s (input bytes / wall time) and the peak resident memory of each phase
/// (VmHWM, reset through /proc/self/clear_refs before each phase). Deletes everything afterwards.
/// </summary>
internal static class CheckpointBench
{
    public static int Run(string[] args)
    {
        double sizeGb = 8;
        string dir = "/tmp/qsbench";
        bool keep = false;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--size-gb": sizeGb = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--dir": dir = args[++i]; break;
                case "--keep": keep = true; break;
                default: Console.Error.WriteLine($"unknown argument {args[i]}"); return 2;
            }
        }
        torch.set_num_threads(Environment.ProcessorCount);
        string input = Path.Combine(dir, "in"), copy = Path.Combine(dir, "copy"), out8 = Path.Combine(dir, "int8"), out4 = Path.Combine(dir, "int4");
        if (Directory.Exists(dir)) Directory.Delete(dir, true);
        Directory.CreateDirectory(input);
        try
        {
            Console.WriteLine($"machine: {Environment.ProcessorCount} cores, {Environment.OSVersion}, .NET {Environment.Version}, TorchSharp {typeof(torch).Assembly.GetName().Version}");
            ResetPeak();
            var sw = Stopwatch.StartNew();
            var (bytes, largest) = Generate(input, sizeGb);
            Console.WriteLine($"generate: {Gb(bytes)} GB in {sw.Elapsed.TotalSeconds:0.0} s; largest tensor {largest / 1e6:0.0} MB; peak RSS {PeakMb():0} MB");

            ResetPeak();
            sw.Restart();
            Directory.CreateDirectory(copy);
            foreach (var f in Directory.GetFiles(input)) File.Copy(f, Path.Combine(copy, Path.GetFileName(f)));
            double copySeconds = sw.Elapsed.TotalSeconds;
            Console.WriteLine($"baseline File.Copy: {Gb(bytes)} GB in {copySeconds:0.0} s = {bytes / 1e9 / copySeconds:0.000} GB/s");
            Directory.Delete(copy, true);

            var results = new List<(string Name, double Seconds, double PeakMb, QuantSharp.Validation.QuantizationReport Report)>();
            foreach (var (name, path, settings) in new[]
            {
                ("int8 per-channel", out8, new QuantizationRecipe { Type = QuantType.Int8 }),
                ("int4 group:128", out4, new QuantizationRecipe { Type = QuantType.Int4, Granularity = new PerGroup(128) }),
            })
            {
                GC.Collect();
                ResetPeak();
                sw.Restart();
                var report = CheckpointQuantizer.Quantize(input, path, settings);
                double s = sw.Elapsed.TotalSeconds;
                double peak = PeakMb();
                results.Add((name, s, peak, report));
                double min = report.Layers.Where(t => t.WeightSqnrDb is not null).Min(t => t.WeightSqnrDb!.Value);
                Console.WriteLine($"{name}: {Gb(bytes)} GB in {s:0.0} s = {bytes / 1e9 / s:0.000} GB/s ({bytes / 1e9 / s / (bytes / 1e9 / copySeconds):0.00}x File.Copy); " +
                    $"output {Gb(report.OutputFileBytes)} GB ({report.Ratio:0.00}x smaller); min SQNR {min:0.00} dB; passed {report.Passed}; " +
                    $"peak RSS {peak:0} MB (limit 1536 + {largest / 1048576.0:0} = {1536 + largest / 1048576.0:0} MB)");
                Directory.Delete(path, true);
            }
            bool ok = results.All(r => r.PeakMb <= 1536 + largest / 1048576.0 && r.Report.Passed);
            Console.WriteLine(ok ? "PASS: peak memory within 1.5 GB + largest tensor; validation passed" : "FAIL");
            return ok ? 0 : 1;
        }
        finally
        {
            if (!keep && Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    private static string Gb(long b) => (b / 1e9).ToString("0.00", CultureInfo.InvariantCulture);

    /// <summary>A Llama-7B-like layout in bf16 (hidden 4096, MLP 11008, vocab 32000), as many layers as fit.</summary>
    private static (long Bytes, long Largest) Generate(string folder, double sizeGb)
    {
        const long H = 4096, F = 11008, V = 32000;
        var specs = new List<(string Name, long[] Shape)> { ("model.embed_tokens.weight", [V, H]) };
        long perLayer = 2 * (4 * H * H + 3 * H * F + 2 * H);
        int layers = (int)Math.Max(1, Math.Ceiling((sizeGb * 1e9 - 2 * 2 * V * H) / perLayer)); // at least --size-gb
        for (int l = 0; l < layers; l++)
        {
            string p = $"model.layers.{l}.";
            specs.Add((p + "input_layernorm.weight", [H]));
            foreach (var n in new[] { "q_proj", "k_proj", "v_proj", "o_proj" }) specs.Add((p + $"self_attn.{n}.weight", [H, H]));
            specs.Add((p + "post_attention_layernorm.weight", [H]));
            specs.Add((p + "mlp.gate_proj.weight", [F, H]));
            specs.Add((p + "mlp.up_proj.weight", [F, H]));
            specs.Add((p + "mlp.down_proj.weight", [H, F]));
        }
        specs.Add(("model.norm.weight", [H]));
        specs.Add(("lm_head.weight", [V, H]));

        // Shards of at most 2 GB, in order.
        const long shardMax = 2_000_000_000;
        var shards = new List<List<(string Name, long[] Shape)>> { new() };
        long cur = 0;
        foreach (var s in specs)
        {
            long b = s.Shape.Aggregate(1L, (a, x) => a * x) * 2;
            if (cur + b > shardMax && shards[^1].Count > 0) { shards.Add([]); cur = 0; }
            shards[^1].Add(s);
            cur += b;
        }
        var weightMap = new JsonObject();
        long total = 0, largest = 0;
        var gen = new torch.Generator(1);
        for (int i = 0; i < shards.Count; i++)
        {
            string file = $"model-{i + 1:00000}-of-{shards.Count:00000}.safetensors";
            using var w = SafetensorsWriter.Create(Path.Combine(folder, file),
                shards[i].Select(s => new SafetensorsTensorSpec(s.Name, SafetensorsDType.BF16, s.Shape)), new Dictionary<string, string> { ["format"] = "pt" });
            foreach (var (name, shape) in shards[i])
            {
                using var scope = NewDisposeScope();
                var t = shape.Length == 1
                    ? torch.ones(shape, ScalarType.BFloat16)
                    : (torch.randn(shape, ScalarType.Float32, generator: gen) * (1.0 / Math.Sqrt(shape[1]))).to(ScalarType.BFloat16);
                w.Write(name, t);
                long b = t.numel() * 2;
                total += b;
                largest = Math.Max(largest, b);
                weightMap[name] = file;
            }
            w.Commit();
        }
        File.WriteAllText(Path.Combine(folder, "model.safetensors.index.json"),
            new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = total }, ["weight_map"] = weightMap }.ToJsonString());
        return (total, largest);
    }

    private static void ResetPeak()
    {
        try { File.WriteAllText("/proc/self/clear_refs", "5"); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    private static double PeakMb()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) / 1024.0;
        }
        return double.NaN;
    }
}
