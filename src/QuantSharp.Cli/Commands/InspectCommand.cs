using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using QuantSharp.Serialization;
using Spectre.Console;

namespace QuantSharp.Cli.Commands;

/// <summary><c>quantsharp inspect FILE</c>: header, tensors and metadata of a safetensors file or sharded folder.</summary>
internal static class InspectCommand
{
    internal static Command Create()
    {
        var file = new Argument<string>("FILE") { Description = "A .safetensors file, a sharded checkpoint's *.safetensors.index.json, or a folder of shards." };
        var json = new Option<bool>("--json") { Description = "Print as JSON." };
        var cmd = new Command("inspect", "Show the header of a safetensors checkpoint: tensors, dtypes, shapes, sizes, metadata, and the per-layer settings of a quantized checkpoint.");
        cmd.Arguments.Add(file);
        cmd.Options.Add(json);
        cmd.SetAction(parseResult =>
        {
            string path = parseResult.GetValue(file)!;
            try
            {
                var result = Inspect(path);
                if (parseResult.GetValue(json)) CheckpointConsole.WriteJson(parseResult, result);
                else Print(parseResult, result);
                return CheckpointConsole.Ok;
            }
            catch (Exception ex) when (ex is IOException or QuantizationException or UnauthorizedAccessException)
            {
                return CheckpointConsole.Fail(parseResult, $"Cannot read '{path}': {ex.Message}");
            }
        });
        return cmd;
    }

    /// <summary>Everything <c>inspect</c> shows, as JSON (headers only, through the library's public reader).</summary>
    internal static JsonObject Inspect(string path)
    {
        using var source = ShardedCheckpoint.Open(path);
        var files = new JsonArray();
        var tensors = new JsonArray();
        var layersOut = new JsonObject();
        bool quantized = false;
        foreach (var shard in source.Files)
        {
            string fileName = Path.GetFileName(shard.Path);
            var md = new JsonObject();
            foreach (var (k, v) in shard.Metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            {
                if (k is QuantizedCheckpoint.LayersKey) continue;
                md[k] = k == QuantizedCheckpoint.ConfigKey ? TryParse(v) : v;
            }
            files.Add(new JsonObject
            {
                ["file"] = fileName,
                ["file_bytes"] = shard.FileLength,
                ["header_bytes"] = shard.DataStart - 8,
                ["tensor_count"] = shard.Tensors.Count,
                ["metadata"] = md,
            });
            IReadOnlyDictionary<string, QuantizedLayerInfo> layers = new Dictionary<string, QuantizedLayerInfo>();
            if (shard.Metadata.ContainsKey(QuantizedCheckpoint.FormatKey))
            {
                quantized = true;
                layers = QuantizedCheckpoint.ReadLayers(shard);
                foreach (var (n, info) in layers) layersOut[n] = info.ToJson();
            }
            var roles = new Dictionary<string, (string Role, string Of)>(StringComparer.Ordinal);
            foreach (var n in layers.Keys)
            {
                roles[n] = ("quantized data", n);
                roles[n + QuantizedCheckpoint.ScaleSuffix] = ("scale", n);
                roles[n + QuantizedCheckpoint.ZeroPointSuffix] = ("zero point", n);
            }
            foreach (var t in shard.Tensors)
            {
                var o = new JsonObject
                {
                    ["name"] = t.Name,
                    ["file"] = fileName,
                    ["dtype"] = t.DType.ToString(),
                    ["shape"] = new JsonArray(t.Shape.Select(d => (JsonNode)JsonValue.Create(d)).ToArray()),
                    ["bytes"] = t.ByteLength,
                    ["role"] = roles.TryGetValue(t.Name, out var r) ? r.Role : "tensor",
                };
                if (layers.TryGetValue(t.Name, out var li))
                {
                    o["qtype"] = li.Type.ToName();
                    o["settings"] = li.ToSpec().ToString();
                    o["sqnr_db"] = li.ToJson()["sqnr_db"]?.DeepClone();
                }
                tensors.Add(o);
            }
        }
        return new JsonObject
        {
            ["path"] = source.Path,
            ["sharded"] = source.IsFolder,
            ["index"] = source.IndexPath is null ? null : Path.GetFileName(source.IndexPath),
            ["quantized_checkpoint"] = quantized,
            ["total_file_bytes"] = source.TotalFileBytes,
            ["total_tensor_bytes"] = source.Tensors.Sum(t => t.ByteLength),
            ["files"] = files,
            ["tensors"] = tensors,
            ["layers"] = layersOut,
        };
    }

    private static JsonNode? TryParse(string v)
    {
        try { return JsonNode.Parse(v); }
        catch (JsonException) { return v; }
    }

    private static void Print(ParseResult parseResult, JsonObject r)
    {
        var console = CheckpointConsole.For(parseResult);
        console.MarkupLine(Markup.Escape($"{r["path"]}: {(r["sharded"]!.GetValue<bool>() ? "sharded folder" : "file")}, " +
            $"{CheckpointConsole.Bytes(r["total_file_bytes"]!.GetValue<long>())}" +
            (r["quantized_checkpoint"]!.GetValue<bool>() ? ", QuantSharp quantized checkpoint" : "")));
        foreach (var f in r["files"]!.AsArray())
        {
            console.MarkupLine(Markup.Escape($"{f!["file"]}: {CheckpointConsole.Bytes(f["file_bytes"]!.GetValue<long>())}, header {f["header_bytes"]} bytes, {f["tensor_count"]} tensors"));
            var md = f["metadata"]!.AsObject();
            if (md.Count > 0)
            {
                var mt = new Table().Border(TableBorder.Rounded).AddColumn("Metadata key").AddColumn("Value");
                foreach (var (k, v) in md)
                {
                    string text = v is null ? "" : v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : v.ToJsonString();
                    mt.AddRow(Markup.Escape(k), Markup.Escape(text));
                }
                console.Write(mt);
            }
        }
        var table = new Table().Border(TableBorder.Rounded).AddColumn("Tensor").AddColumn("DType").AddColumn("Shape")
            .AddColumn(new TableColumn("Bytes").RightAligned()).AddColumn("Role").AddColumn("Quantization").AddColumn(new TableColumn("SQNR dB").RightAligned());
        foreach (var t in r["tensors"]!.AsArray())
        {
            var sq = t!["sqnr_db"];
            table.AddRow(
                Markup.Escape(t["name"]!.GetValue<string>()),
                t["dtype"]!.GetValue<string>(),
                Markup.Escape(t["shape"]!.ToJsonString().Replace(",", ", ")),
                CheckpointConsole.Bytes(t["bytes"]!.GetValue<long>()),
                t["role"]!.GetValue<string>(),
                Markup.Escape(t["settings"]?.GetValue<string>() ?? ""),
                sq is null ? "" : Markup.Escape(sq.ToJsonString().Trim('"')));
        }
        console.Write(table);
    }
}
