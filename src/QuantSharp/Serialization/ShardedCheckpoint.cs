using System.Text.Json;
using System.Text.RegularExpressions;
using TorchSharp;

namespace QuantSharp.Serialization;

/// <summary>
/// The tensors of a single safetensors file or of a sharded checkpoint (<c>model.safetensors.index.json</c> +
/// <c>model-00001-of-00003.safetensors</c>...), presented through one API. Every shard is opened (header only,
/// memory-mapped) and checked against the index: each tensor of the weight map lies in the shard it names, and
/// each tensor of a shard is in the weight map.
/// </summary>
public sealed class ShardedCheckpoint : IDisposable
{
    /// <summary>Name of the index of a sharded checkpoint saved with base name "model".</summary>
    public const string DefaultIndexFileName = "model.safetensors.index.json";

    private const long MaxIndexBytes = 100_000_000;

    private readonly List<SafetensorsFile> _files;
    private readonly Dictionary<string, SafetensorsFile> _owner;

    private ShardedCheckpoint(string? indexPath, List<SafetensorsFile> files, long? totalSize)
    {
        IndexPath = indexPath;
        _files = files;
        TotalSize = totalSize;
        _owner = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        var tensors = new List<SafetensorsTensorInfo>();
        foreach (var f in files)
        {
            foreach (var t in f.Tensors)
            {
                if (!_owner.TryAdd(t.Name, f))
                    throw new SafetensorsFormatException(SafetensorsRule.InvalidIndex, indexPath ?? f.Path, t.Name,
                        $"the tensor is in both '{_owner[t.Name].Path}' and '{f.Path}'");
                tensors.Add(t);
            }
        }
        Tensors = tensors;
    }

    /// <summary>The index file, or null for a single-file checkpoint.</summary>
    public string? IndexPath { get; }

    /// <summary><c>metadata.total_size</c> of the index (bytes of tensor data), or null.</summary>
    public long? TotalSize { get; }

    /// <summary>The open files (one, or the shards in index order).</summary>
    public IReadOnlyList<SafetensorsFile> Files => _files;

    /// <summary>All tensors: shard by shard, each in offset order.</summary>
    public IReadOnlyList<SafetensorsTensorInfo> Tensors { get; }

    /// <summary>The <c>__metadata__</c> of the first file (every shard written by <see cref="Save"/> holds the same).</summary>
    public IReadOnlyDictionary<string, string> Metadata => _files.Count > 0 ? _files[0].Metadata : new Dictionary<string, string>();

    /// <summary>
    /// Opens a checkpoint: a <c>.safetensors</c> file, a <c>.safetensors.index.json</c> file, or a folder holding
    /// <c>model.safetensors.index.json</c>, else one <c>*.safetensors.index.json</c>, else <c>model.safetensors</c>,
    /// else exactly one <c>*.safetensors</c> file.
    /// </summary>
    /// <exception cref="SafetensorsFormatException">A file or the index breaks the format, or the index disagrees with the shards.</exception>
    /// <exception cref="FileNotFoundException">Nothing to open.</exception>
    public static ShardedCheckpoint Open(string pathOrFolder)
    {
        ArgumentException.ThrowIfNullOrEmpty(pathOrFolder);
        if (Directory.Exists(pathOrFolder))
        {
            string index = System.IO.Path.Combine(pathOrFolder, DefaultIndexFileName);
            if (File.Exists(index)) return OpenIndex(index);
            var indexes = Directory.GetFiles(pathOrFolder, "*.safetensors.index.json");
            if (indexes.Length == 1) return OpenIndex(indexes[0]);
            if (indexes.Length > 1)
                throw new IOException($"'{pathOrFolder}' holds {indexes.Length} *.safetensors.index.json files; open one of them.");
            string single = System.IO.Path.Combine(pathOrFolder, "model.safetensors");
            if (File.Exists(single)) return OpenSingle(single);
            var files = Directory.GetFiles(pathOrFolder, "*.safetensors");
            if (files.Length == 1) return OpenSingle(files[0]);
            throw files.Length == 0
                ? new FileNotFoundException($"'{pathOrFolder}' holds no .safetensors file.")
                : new IOException($"'{pathOrFolder}' holds {files.Length} .safetensors files and no index; open one of them.");
        }
        if (!File.Exists(pathOrFolder)) throw new FileNotFoundException($"No file or folder '{pathOrFolder}'.", pathOrFolder);
        return pathOrFolder.EndsWith(".json", StringComparison.OrdinalIgnoreCase) ? OpenIndex(pathOrFolder) : OpenSingle(pathOrFolder);
    }

    private static ShardedCheckpoint OpenSingle(string path)
    {
        var file = SafetensorsFile.Open(path);
        try { return new ShardedCheckpoint(null, [file], null); }
        catch { file.Dispose(); throw; }
    }

    private static ShardedCheckpoint OpenIndex(string indexPath)
    {
        var (weightMap, totalSize) = ReadIndex(indexPath);
        string dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(indexPath))!;
        var shardNames = weightMap.Values.Distinct(StringComparer.Ordinal).ToList();
        var files = new List<SafetensorsFile>();
        try
        {
            foreach (string shard in shardNames)
            {
                string shardPath = System.IO.Path.Combine(dir, shard);
                if (!File.Exists(shardPath))
                    throw new SafetensorsFormatException(SafetensorsRule.InvalidIndex, indexPath, null, $"shard '{shard}' does not exist");
                var file = SafetensorsFile.Open(shardPath);
                files.Add(file);
                foreach (var t in file.Tensors)
                {
                    if (!weightMap.TryGetValue(t.Name, out string? listed))
                        throw new SafetensorsFormatException(SafetensorsRule.InvalidIndex, indexPath, t.Name, $"shard '{shard}' holds the tensor but the weight map does not list it");
                    if (listed != shard)
                        throw new SafetensorsFormatException(SafetensorsRule.InvalidIndex, indexPath, t.Name, $"shard '{shard}' holds the tensor but the weight map puts it in '{listed}'");
                }
            }
            foreach (var (name, shard) in weightMap)
            {
                if (!files[shardNames.IndexOf(shard)].Contains(name))
                    throw new SafetensorsFormatException(SafetensorsRule.InvalidIndex, indexPath, name, $"the weight map puts the tensor in '{shard}', which does not hold it");
            }
            return new ShardedCheckpoint(indexPath, files, totalSize);
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    /// <summary>Reads <c>weight_map</c> and <c>metadata.total_size</c> of an index, strictly.</summary>
    internal static (Dictionary<string, string> WeightMap, long? TotalSize) ReadIndex(string indexPath)
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
            return ParseIndex(bytes, Bad);
        }
        catch (InvalidOperationException e) // a string that cannot be decoded (escaped lone surrogate)
        {
            throw Bad($"a string cannot be decoded: {e.Message}", null, e);
        }
    }

    private static (Dictionary<string, string> WeightMap, long? TotalSize) ParseIndex(byte[] bytes,
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
            long? totalSize = null;
            if (root.TryGetProperty("metadata", out var meta) && meta.ValueKind != JsonValueKind.Null)
            {
                if (meta.ValueKind != JsonValueKind.Object) throw Bad("'metadata' must be an object");
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
                if (shard.Length == 0 || shard is "." or ".." || shard.IndexOfAny(['/', '\\', '\0']) >= 0 || System.IO.Path.IsPathRooted(shard))
                    throw Bad($"shard '{shard}' must be a plain file name in the index's folder", entry.Name);
                if (!weightMap.TryAdd(entry.Name, shard)) throw Bad("the tensor appears twice in the weight map", entry.Name);
            }
            return (weightMap, totalSize);
        }
    }

    /// <summary>True when the checkpoint holds a tensor of that name.</summary>
    public bool Contains(string name) => _owner.ContainsKey(name);

    /// <summary>The file holding a tensor.</summary>
    /// <exception cref="KeyNotFoundException">No tensor of that name.</exception>
    public SafetensorsFile GetFile(string name) => _owner.TryGetValue(name, out var f)
        ? f
        : throw new KeyNotFoundException($"'{IndexPath ?? _files.FirstOrDefault()?.Path}': no tensor named '{name}'.");

    /// <summary>The entry of a tensor.</summary>
    public SafetensorsTensorInfo GetInfo(string name) => GetFile(name).GetInfo(name);

    /// <summary>Copies a tensor's raw bytes (see <see cref="SafetensorsFile.ReadBytes"/>).</summary>
    public byte[] ReadBytes(string name) => GetFile(name).ReadBytes(name);

    /// <summary>A view of a tensor's raw bytes, valid until Dispose (see <see cref="SafetensorsFile.GetSpan"/>).</summary>
    public ReadOnlySpan<byte> GetSpan(string name) => GetFile(name).GetSpan(name);

    /// <summary>A stream over a tensor's raw bytes (see <see cref="SafetensorsFile.OpenRead"/>).</summary>
    public Stream OpenRead(string name) => GetFile(name).OpenRead(name);

    /// <summary>Reads a tensor into a new CPU tensor (see <see cref="SafetensorsFile.ReadTensor"/>).</summary>
    public torch.Tensor ReadTensor(string name) => GetFile(name).ReadTensor(name);

    /// <summary>Closes every file.</summary>
    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
    }

    /// <summary>
    /// Saves tensors as a checkpoint in <paramref name="folder"/>: one file <c>{baseName}.safetensors</c> when they
    /// fit in <paramref name="maxShardBytes"/>, else shards <c>{baseName}-00001-of-0000N.safetensors</c> (tensors kept
    /// in order, a new shard started when the next tensor would exceed the limit; a larger tensor gets a shard of its
    /// own) and <c>{baseName}.safetensors.index.json</c>. Every file is written to a temporary file first; the
    /// shards are renamed into place once all are complete, the index last. Shards or an index of an earlier save
    /// under the same base name that the new checkpoint does not use are deleted afterwards.
    /// </summary>
    /// <returns>The paths written (shards, then the index).</returns>
    public static IReadOnlyList<string> Save(string folder, IEnumerable<(string Name, torch.Tensor Tensor)> tensors, long maxShardBytes,
        IReadOnlyDictionary<string, string>? metadata = null, string baseName = "model")
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        ArgumentNullException.ThrowIfNull(tensors);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxShardBytes);
        ArgumentException.ThrowIfNullOrEmpty(baseName);
        if (baseName.IndexOfAny(['/', '\\']) >= 0) throw new ArgumentException("baseName must be a plain file name.", nameof(baseName));
        if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"Folder '{folder}' does not exist.");
        var list = tensors.ToList();
        var specs = list.Select(t => SafetensorsTensorSpec.FromTensor(t.Name, t.Tensor)).ToList();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var s in specs)
            if (!seen.Add(s.Name)) throw new ArgumentException($"Tensor name '{s.Name}' appears twice.", nameof(tensors));

        // Partition in order.
        var shards = new List<List<int>>();
        long current = 0, total = 0;
        for (int i = 0; i < specs.Count; i++)
        {
            long size = checked(specs[i].Shape.Aggregate(1L, (a, b) => checked(a * b)) * specs[i].DType.ElementSize());
            if (shards.Count == 0 || (current > 0 && checked(current + size) > maxShardBytes)) { shards.Add([]); current = 0; }
            shards[^1].Add(i);
            current += size;
            total = checked(total + size);
        }
        if (shards.Count == 0) shards.Add([]);

        string indexName = baseName + ".safetensors.index.json";
        string[] names = shards.Count == 1
            ? [baseName + ".safetensors"]
            : Enumerable.Range(1, shards.Count).Select(k => $"{baseName}-{k:D5}-of-{shards.Count:D5}.safetensors").ToArray();
        var writers = new List<SafetensorsWriter>();
        var written = new List<string>();
        try
        {
            for (int s = 0; s < shards.Count; s++)
            {
                var writer = SafetensorsWriter.Create(System.IO.Path.Combine(folder, names[s]), shards[s].Select(i => specs[i]), metadata);
                writers.Add(writer);
                foreach (int i in shards[s]) writer.Write(list[i].Name, list[i].Tensor);
                writer.Finish();
            }
            string? indexPath = null;
            SafetensorsWriterTextFile? index = null;
            if (shards.Count > 1)
            {
                indexPath = System.IO.Path.Combine(folder, indexName);
                index = SafetensorsWriterTextFile.Create(indexPath, BuildIndex(specs, shards, names, total));
            }
            using (index)
            {
                foreach (var w in writers) { w.Publish(); written.Add(w.Path); }
                if (index is not null) { index.Publish(); written.Add(indexPath!); }
            }
        }
        finally
        {
            foreach (var w in writers) w.Dispose();
        }

        // Remove files of an earlier save that the new checkpoint does not use.
        var keep = new HashSet<string>(names, StringComparer.Ordinal);
        var pattern = new Regex("^" + Regex.Escape(baseName) + @"-\d{5}-of-\d{5}\.safetensors$", RegexOptions.CultureInvariant);
        foreach (string f in Directory.GetFiles(folder))
        {
            string n = System.IO.Path.GetFileName(f);
            bool stale = !keep.Contains(n) && (pattern.IsMatch(n) || (shards.Count == 1 && n == indexName) || (shards.Count > 1 && n == baseName + ".safetensors"));
            if (stale && !SafetensorsFile.IsOpen(f)) File.Delete(f);
        }
        return written;
    }

    private static byte[] BuildIndex(List<SafetensorsTensorSpec> specs, List<List<int>> shards, string[] names, long total)
    {
        var map = new SortedDictionary<string, string>(StringComparer.Ordinal);
        for (int s = 0; s < shards.Count; s++)
            foreach (int i in shards[s]) map[specs[i].Name] = names[s];
        using var ms = new MemoryStream();
        using (var json = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            json.WriteStartObject("metadata");
            json.WriteNumber("total_size", total);
            json.WriteEndObject();
            json.WriteStartObject("weight_map");
            foreach (var (k, v) in map) json.WriteString(k, v);
            json.WriteEndObject();
            json.WriteEndObject();
        }
        ms.WriteByte((byte)'\n');
        return ms.ToArray();
    }
}

/// <summary>A small file written to a temporary file in the same folder and renamed into place.</summary>
internal sealed class SafetensorsWriterTextFile : IDisposable
{
    private string? _tempPath;

    private SafetensorsWriterTextFile(string path, string tempPath)
    {
        Path = path;
        _tempPath = tempPath;
    }

    public string Path { get; }

    public static SafetensorsWriterTextFile Create(string path, byte[] content)
    {
        string dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!;
        string temp = System.IO.Path.Combine(dir, $".{System.IO.Path.GetFileName(path)}.{Guid.NewGuid():N}.tmp");
        using (var fs = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
        {
            fs.Write(content);
            fs.Flush(flushToDisk: true);
        }
        return new SafetensorsWriterTextFile(path, temp);
    }

    public void Publish()
    {
        File.Move(_tempPath!, Path, overwrite: true);
        _tempPath = null;
    }

    public void Dispose()
    {
        if (_tempPath is null) return;
        try { File.Delete(_tempPath); } catch (IOException) { }
        _tempPath = null;
    }
}
