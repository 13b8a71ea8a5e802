using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using QuantSharp.Kernels;
using QuantSharp.Serialization;
using Spectre.Console;

namespace QuantSharp.Cli.Commands;

/// <summary>
/// <c>quantsharp bench</c>: does quantizing pay on this machine? Times a quantized layer against TorchSharp float32 and
/// bfloat16 <c>Linear</c> in the same run, and prints the weight's effective read bandwidth next to the machine's.
/// </summary>
internal static class BenchCommand
{
    internal static Command Create()
    {
        var shape = new Option<string?>("--shape") { Description = "Layer shape OUTxIN (e.g. 4096x4096)." };
        var batch = new Option<int>("--batch") { Description = "Input rows (batch 1 is bound by memory, large batches by arithmetic).", DefaultValueFactory = _ => 1 };
        var qtype = new Option<string>("--qtype") { Description = "int8, int4, uint4, float16, bfloat16, w8a8-dynamic or w8a8-static.", DefaultValueFactory = _ => "int8" };
        var groupSize = new Option<int?>("--group-size") { Description = "Group size of integer weights (default: int8 per channel, int4/uint4 128)." };
        var threads = new Option<int?>("--threads") { Description = "Threads for both TorchSharp and the kernels (default: all cores)." };
        var model = new Option<string?>("--model") { Description = "A file written by Quantizer.Save or `quantsharp quantize`: time every quantized layer's shape and type at batch 1 and 64." };
        var repeats = new Option<int>("--repeats") { Description = "Timed calls per side; the median is reported.", DefaultValueFactory = _ => 20 };
        var cold = new Option<bool>("--cold") { Description = "Evict the caches before every timed call (a layer among others in a model whose weights exceed the caches); by default a layer is timed called again right after itself, part of its weight still cached." };
        var evictMib = new Option<int>("--evict-mib") { Description = $"MiB read before every timed call with --cold (default {LayerBench.DefaultEvictionMib}: use a few times your CPU's last-level cache).", DefaultValueFactory = _ => LayerBench.DefaultEvictionMib };
        var json = new Option<bool>("--json") { Description = "One JSON object per measurement (a single measurement prints one object, several an array)." };
        var cmd = new Command("bench", "Time quantized layers against TorchSharp float32 and bfloat16 Linear on this machine, with the machine's memory read bandwidth.");
        foreach (var o in new Option[] { shape, batch, qtype, groupSize, threads, model, repeats, cold, evictMib, json }) cmd.Options.Add(o);
        cmd.SetAction(parseResult =>
        {
            try
            {
                var request = new BenchRequest(parseResult.GetValue(shape), parseResult.GetValue(batch), parseResult.GetValue(qtype)!,
                    parseResult.GetValue(groupSize), parseResult.GetValue(threads), parseResult.GetValue(model), parseResult.GetValue(repeats), parseResult.GetValue(cold), parseResult.GetValue(evictMib));
                var results = Run(request);
                if (parseResult.GetValue(json))
                {
                    JsonNode node = results.Count == 1 ? results[0].ToJson() : new JsonArray(results.Select(r => (JsonNode)r.ToJson()).ToArray());
                    CheckpointConsole.WriteJson(parseResult, node);
                }
                else
                {
                    Print(CheckpointConsole.For(parseResult), results);
                }
                return CheckpointConsole.Ok;
            }
            catch (Exception ex) when (ex is ArgumentException or IOException or QuantizationException or UnauthorizedAccessException)
            {
                return CheckpointConsole.Fail(parseResult, ex.Message);
            }
        });
        return cmd;
    }

    /// <summary>What to time.</summary>
    internal sealed record BenchRequest(string? Shape, int Batch, string QType, int? GroupSize, int? Threads, string? Model, int Repeats, bool Cold = false, int EvictMib = LayerBench.DefaultEvictionMib);

    /// <summary>Memory read by the bandwidth measurement (512 MiB, far beyond any cache; tests read less).</summary>
    internal static long BandwidthBytes { get; set; } = 512L << 20;

    /// <summary>Runs the measurements of <paramref name="request"/>.</summary>
    internal static List<LayerTiming> Run(BenchRequest request)
    {
        if (request.Batch < 1) throw new ArgumentException($"--batch must be at least 1, got {request.Batch}.");
        if (request.Repeats < 1) throw new ArgumentException($"--repeats must be at least 1, got {request.Repeats}.");
        if (request.EvictMib is < 1 or > 16384) throw new ArgumentException($"--evict-mib must be 1-16384, got {request.EvictMib}.");
        if (request.Threads is < 1) throw new ArgumentException($"--threads must be at least 1, got {request.Threads}.");
        if (request.GroupSize is int g && (g < 2 || g % 2 != 0)) throw new ArgumentException($"--group-size must be an even number of at least 2, got {g}.");
        if (!LayerBench.QTypes.Contains(request.QType))
            throw new ArgumentException($"Unknown --qtype '{request.QType}'; use one of {string.Join(", ", LayerBench.QTypes)}.");
        if (request.Model is null == request.Shape is null)
            throw new ArgumentException("Give either --shape OUTxIN (one layer) or --model FILE (every quantized layer of a file).");
        var layers = request.Model is null
            ? [(null, ParseShape(request.Shape!), request.QType, request.GroupSize)]
            : ModelLayers(request.Model);
        int[] batches = request.Model is null ? [request.Batch] : [1, 64];

        int savedThreads = TorchSharp.torch.get_num_threads();
        int savedKernelThreads = KernelThreads.Count;
        long savedEviction = LayerBench.EvictionBytes;
        try
        {
            LayerBench.EvictionBytes = (long)request.EvictMib << 20;
            if (request.Threads is int t)
            {
                TorchSharp.torch.set_num_threads(t);
                KernelThreads.Count = t;
            }
            double bandwidth = LayerBench.MemoryReadGbps(BandwidthBytes);
            var results = new List<LayerTiming>();
            foreach (var (name, (outF, inF), qtype, group) in layers)
                foreach (int b in batches)
                    results.Add(LayerBench.Measure(outF, inF, b, qtype, group, request.Repeats, bandwidth, name, request.Cold));
            return results;
        }
        finally
        {
            TorchSharp.torch.set_num_threads(savedThreads);
            KernelThreads.Count = savedKernelThreads;
            LayerBench.EvictionBytes = savedEviction;
        }
    }

    private static (long Out, long In) ParseShape(string text)
    {
        var parts = text.ToLowerInvariant().Split('x');
        if (parts.Length == 2 && long.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out long o)
            && long.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out long i) && o > 0 && i > 0)
            return (o, i);
        throw new ArgumentException($"--shape must be OUTxIN with positive integers (e.g. 4096x4096), got '{text}'.");
    }

    /// <summary>Every quantized layer of a file: name, matrix shape <c>[rows, product of the rest]</c>, qtype, group size.</summary>
    private static List<(string?, (long, long), string, int?)> ModelLayers(string path)
    {
        using var source = ShardedCheckpoint.Open(path);
        var layers = new List<(string?, (long, long), string, int?)>();
        foreach (var shard in source.Files)
        {
            if (!shard.Metadata.ContainsKey(QuantizedCheckpoint.FormatKey)) continue;
            foreach (var (name, info) in QuantizedCheckpoint.ReadLayers(shard).OrderBy(kv => kv.Key, StringComparer.Ordinal))
            {
                if (info.Shape.Length < 2 || info.Type is QuantType.Int2 or QuantType.UInt2 or QuantType.UInt8) continue;
                long cols = info.Shape.Skip(1).Aggregate(1L, (a, d) => a * d);
                string qtype = info.Type switch
                {
                    QuantType.Int8 => "int8",
                    QuantType.Int4 => "int4",
                    QuantType.UInt4 => "uint4",
                    QuantType.Float16 => "float16",
                    _ => "bfloat16",
                };
                int? group = info.Granularity is PerGroup pg ? pg.GroupSize : null;
                if (qtype is "int4" or "uint4" && group is null) group = (int)Math.Min(cols, int.MaxValue); // per-channel 4-bit: one group per row
                layers.Add((name, (info.Shape[0], cols), qtype, group));
            }
        }
        if (layers.Count == 0)
            throw new ArgumentException($"'{path}' holds no quantized layers (no quantsharp.layers metadata with a 2-D or larger int8/int4/uint4/float16/bfloat16 weight): " +
                "give a file written by Quantizer.Save or `quantsharp quantize`, or time one shape with --shape OUTxIN --qtype TYPE.");
        return layers;
    }

    private static void Print(IAnsiConsole console, List<LayerTiming> results)
    {
        string F(double v) => v.ToString(v >= 100 ? "0" : v >= 10 ? "0.0" : "0.000", CultureInfo.InvariantCulture);
        bool named = results.Any(r => r.Layer is not null);
        var table = new Table().Border(TableBorder.Rounded);
        if (named) table.AddColumn("Layer");
        table.AddColumn("Shape").AddColumn(new TableColumn("Batch").RightAligned()).AddColumn("Type")
            .AddColumn(new TableColumn("float32 ms").RightAligned()).AddColumn(new TableColumn("bfloat16 ms").RightAligned())
            .AddColumn(new TableColumn("quantized ms").RightAligned()).AddColumn(new TableColumn("vs float32").RightAligned())
            .AddColumn(new TableColumn("vs bfloat16").RightAligned()).AddColumn(new TableColumn("weight GB/s").RightAligned());
        foreach (var r in results)
        {
            var cells = new List<string>();
            if (named) cells.Add(Markup.Escape(r.Layer ?? ""));
            cells.AddRange([
                $"{r.Out}x{r.In}", r.Batch.ToString(CultureInfo.InvariantCulture),
                r.GroupSize is int g ? $"{r.QType} g{g}" : r.QType,
                F(r.Float32Ms), F(r.BFloat16Ms), F(r.QuantizedMs),
                (r.SpeedupVsFloat32 >= 1 ? "[green]" : "[red]") + r.SpeedupVsFloat32.ToString("0.00", CultureInfo.InvariantCulture) + "x[/]",
                r.SpeedupVsBFloat16.ToString("0.00", CultureInfo.InvariantCulture) + "x",
                r.WeightGbps.ToString("0.0", CultureInfo.InvariantCulture)]);
            table.AddRow(cells.ToArray());
        }
        console.Write(table);
        console.WriteLine($"Memory read bandwidth: {results[0].MemoryReadGbps.ToString("0.0", CultureInfo.InvariantCulture)} GB/s " +
            $"({KernelThreads.Count} thread(s)); weight GB/s at batch 1 near it means the layer runs at the speed of memory.");
        console.WriteLine(results[0].Cold
            ? "Caches evicted before every timed call (--cold): each layer read its weight from memory."
            : "Each layer timed called again right after itself: a weight that fits in the caches partly stays there (--cold evicts them).");
    }
}
