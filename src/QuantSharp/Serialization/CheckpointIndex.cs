using System.Text.Json;

namespace QuantSharp.Serialization;

/// <summary>
/// The index of a sharded checkpoint (<c>model.safetensors.index.json</c>): <c>{"metadata": {"total_size": N, ...},
/// "weight_map": {tensor name: shard file name}}</c>. The one place where QuantSharp reads and writes it, with one
/// set of limits: at most <see cref="MaxIndexBytes"/> bytes, UTF-8, no comments, nesting at most 8 deep, no key
/// twice (in the root, <c>metadata</c> or <c>weight_map</c>), shard names plain file names in the index's folder.
/// </summary>
internal static class CheckpointIndex
{
    /// <summary>Largest index read (the same limit as a safetensors header).</summary>
    public const long MaxIndexBytes = SafetensorsHeader.MaxHeaderLength;

    /// <summary>Reads <c>weight_map</c> and <c>metadata.total_size</c> of an index, strictly.</summary>
    /// <exception cref="SafetensorsFormatException">Rule <see cref="SafetensorsRule.InvalidIndex"/>, naming the tensor where one is concerned.</exception>
    public static (Dictionary<string, string> WeightMap, long? TotalSize) Read(string indexPath)
    {
        byte[] bytes;
        using (var stream = new FileStream(indexPath, FileMode.Open, FileAccess.Read, FileShare.Read))
        {
            if (stream.Length > MaxIndexBytes)
                throw new SafetensorsFormatException(SafetensorsRule.InvalidIndex, indexPath, null, $"the index has {stream.Length} bytes, more than {MaxIndexBytes}");
            bytes = new byte[stream.Length];
            stream.ReadExactly(bytes);
        }
        SafetensorsFormatException Bad(string detail, string? tensor = null, Exception? inner = null) =>
            new(SafetensorsRule.InvalidIndex, indexPath, tensor, detail, inner);
        if (!System.Text.Unicode.Utf8.IsValid(bytes)) throw Bad("the index is not valid UTF-8");
        try
        {
            return Parse(bytes, Bad);
        }
        catch (InvalidOperationException e) // a string that cannot be decoded (escaped lone surrogate)
        {
            throw Bad($"a string cannot be decoded: {e.Message}", null, e);
        }
    }

    private static (Dictionary<string, string> WeightMap, long? TotalSize) Parse(byte[] bytes,
        Func<string, string?, Exception?, SafetensorsFormatException> bad)
    {
        SafetensorsFormatException Bad(string detail, string? tensor = null, Exception? inner = null) => bad(detail, tensor, inner);
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 8, CommentHandling = JsonCommentHandling.Disallow });
        }
        catch (JsonException e)
        {
            throw Bad($"malformed JSON: {e.Message}", null, e);
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw Bad("the index must be a JSON object");
            if (StrictJson.FirstDuplicateKey(root) is { } dupRoot) throw Bad($"key '{dupRoot}' appears twice in the index");
            long? totalSize = null;
            if (root.TryGetProperty("metadata", out var meta) && meta.ValueKind != JsonValueKind.Null)
            {
                if (meta.ValueKind != JsonValueKind.Object) throw Bad("'metadata' must be an object");
                if (StrictJson.FirstDuplicateKey(meta) is { } dupMeta) throw Bad($"key 'metadata.{dupMeta}' appears twice in the index");
                if (meta.TryGetProperty("total_size", out var ts))
                {
                    // Some writers store it as a float (e.g. 1.2e9); accept any non-negative integral number.
                    if (ts.ValueKind != JsonValueKind.Number) throw Bad("'metadata.total_size' must be a number");
                    if (ts.TryGetInt64(out long l) && l >= 0) totalSize = l;
                    else if (ts.TryGetDouble(out double d) && d >= 0 && d < 9e18 && Math.Floor(d) == d) totalSize = (long)d;
                    else throw Bad("'metadata.total_size' must be a non-negative integer");
                }
            }
            if (!root.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw Bad("'weight_map' (an object of tensor name -> shard file name) is missing");
            var weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var entry in map.EnumerateObject())
            {
                if (entry.Value.ValueKind != JsonValueKind.String) throw Bad("the weight map value must be a shard file name", entry.Name);
                string shard = entry.Value.GetString()!;
                if (shard.Length == 0 || shard is "." or ".." || shard.IndexOfAny(['/', '\\', '\0']) >= 0 || Path.IsPathRooted(shard))
                    throw Bad($"shard '{shard}' must be a plain file name in the index's folder", entry.Name);
                if (!weightMap.TryAdd(entry.Name, shard)) throw Bad("the tensor appears twice in the weight map", entry.Name);
            }
            return (weightMap, totalSize);
        }
    }

    /// <summary>
    /// The bytes of an index: <c>metadata</c> (<c>total_size</c>, then <paramref name="metadata"/>), then the weight
    /// map sorted by tensor name; indented, UTF-8, ending with a newline. The same content always gives the same bytes.
    /// </summary>
    public static byte[] ToBytes(IReadOnlyDictionary<string, string> weightMap, long totalSize, IReadOnlyDictionary<string, string>? metadata = null)
    {
        using var ms = new MemoryStream();
        using (var json = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            json.WriteStartObject("metadata");
            json.WriteNumber("total_size", totalSize);
            foreach (var (k, v) in metadata ?? new Dictionary<string, string>()) json.WriteString(k, v);
            json.WriteEndObject();
            json.WriteStartObject("weight_map");
            foreach (var (k, v) in weightMap.OrderBy(kv => kv.Key, StringComparer.Ordinal)) json.WriteString(k, v);
            json.WriteEndObject();
            json.WriteEndObject();
        }
        ms.WriteByte((byte)'\n');
        return ms.ToArray();
    }
}

/// <summary>Checks shared by the JSON QuantSharp reads (indexes, per-layer metadata, model structure).</summary>
internal static class StrictJson
{
    /// <summary>The first key that appears twice in an object (null when none does, or for a non-object).</summary>
    public static string? FirstDuplicateKey(JsonElement e)
    {
        if (e.ValueKind != JsonValueKind.Object) return null;
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var p in e.EnumerateObject())
            if (!seen.Add(p.Name)) return p.Name;
        return null;
    }

    /// <summary>The first key that appears twice in any object of the document, with its path (<c>a.b</c>).</summary>
    public static string? FirstDuplicateKeyAnywhere(JsonElement e, string path = "")
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.Object:
                if (FirstDuplicateKey(e) is { } dup) return path.Length == 0 ? dup : path + "." + dup;
                foreach (var p in e.EnumerateObject())
                    if (FirstDuplicateKeyAnywhere(p.Value, path.Length == 0 ? p.Name : path + "." + p.Name) is { } inner) return inner;
                return null;
            case JsonValueKind.Array:
                int i = 0;
                foreach (var item in e.EnumerateArray())
                    if (FirstDuplicateKeyAnywhere(item, $"{path}[{i++}]") is { } inner) return inner;
                return null;
            default:
                return null;
        }
    }
}
