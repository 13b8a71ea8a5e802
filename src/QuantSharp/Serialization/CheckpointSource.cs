using System.Text.Json;
using Microsoft.Win32.SafeHandles;

namespace QuantSharp.Serialization;

/// <summary>
/// A checkpoint opened for reading: one <c>.safetensors</c> file, or a folder of shards (listed by a
/// <c>*.safetensors.index.json</c> when there is one, else every <c>*.safetensors</c> file in name order).
/// Only headers are read on opening.
/// </summary>
internal sealed class CheckpointSource : IDisposable
{
    private readonly List<Shard> _shards = [];
    private readonly Dictionary<string, (Shard Shard, SafetensorsTensorInfo Info)> _byName = new(StringComparer.Ordinal);

    /// <summary>One shard: the strict reader plus a handle for ranged reads.</summary>
    internal sealed class Shard(SafetensorsFile file, SafeFileHandle handle, long headerBytes) : IDisposable
    {
        public SafetensorsFile File { get; } = file;
        public SafeFileHandle Handle { get; } = handle;
        public long HeaderBytes { get; } = headerBytes;
        public string FileName => System.IO.Path.GetFileName(File.Path);
        public void Dispose() { Handle.Dispose(); File.Dispose(); }
    }

    private CheckpointSource(string path, bool isFolder, string? indexPath)
    {
        Path = path; IsFolder = isFolder; IndexPath = indexPath;
    }

    /// <summary>The path given.</summary>
    public string Path { get; }

    /// <summary>True for a sharded folder.</summary>
    public bool IsFolder { get; }

    /// <summary>The index file of a sharded folder, if any.</summary>
    public string? IndexPath { get; }

    /// <summary>The shards, in order.</summary>
    public IReadOnlyList<Shard> Shards => _shards;

    /// <summary>Total bytes of all shard files.</summary>
    public long TotalFileBytes => _shards.Sum(s => new FileInfo(s.File.Path).Length);

    /// <summary>The shard and entry of a tensor.</summary>
    public (Shard Shard, SafetensorsTensorInfo Info) Find(string name) => _byName.TryGetValue(name, out var r)
        ? r : throw new KeyNotFoundException($"{Path}: no tensor named '{name}'.");

    /// <summary>True when a tensor of that name exists.</summary>
    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>All tensors, shard by shard, in file order.</summary>
    public IEnumerable<(Shard Shard, SafetensorsTensorInfo Info)> All => _shards.SelectMany(s => s.File.Tensors.Select(t => (s, t)));

    /// <summary>Opens a file or a sharded folder.</summary>
    /// <exception cref="FileNotFoundException">Nothing at <paramref name="path"/>, or a listed shard is missing.</exception>
    /// <exception cref="InvalidDataException">A malformed file or index.</exception>
    public static CheckpointSource Open(string path)
    {
        string full = System.IO.Path.GetFullPath(path);
        if (File.Exists(full))
        {
            var src = new CheckpointSource(full, false, null);
            try { src.AddShard(full); return src; }
            catch { src.Dispose(); throw; }
        }
        if (!Directory.Exists(full))
            throw new FileNotFoundException($"No checkpoint at '{path}': expected a .safetensors file or a folder of shards.", path);

        string[] indexes = Directory.GetFiles(full, "*.safetensors.index.json");
        if (indexes.Length > 1)
            throw new InvalidDataException($"Folder '{path}' has {indexes.Length} *.safetensors.index.json files; keep one.");
        List<string> shardFiles;
        Dictionary<string, string>? weightMap = null;
        if (indexes.Length == 1)
        {
            weightMap = ReadWeightMap(indexes[0]);
            shardFiles = weightMap.Values.Distinct(StringComparer.Ordinal).OrderBy(f => f, StringComparer.Ordinal).ToList();
            foreach (string f in shardFiles)
            {
                if (f.Contains('/') || f.Contains('\\') || f == ".." )
                    throw new InvalidDataException($"{indexes[0]}: shard name '{f}' must be a plain file name in the same folder.");
                if (!File.Exists(System.IO.Path.Combine(full, f)))
                    throw new FileNotFoundException($"{indexes[0]} lists shard '{f}', which is missing from '{path}'.", f);
            }
        }
        else
        {
            shardFiles = Directory.GetFiles(full, "*.safetensors").Select(System.IO.Path.GetFileName).OrderBy(f => f, StringComparer.Ordinal).ToList()!;
            if (shardFiles.Count == 0)
                throw new FileNotFoundException($"Folder '{path}' holds no .safetensors files.", path);
        }

        var source = new CheckpointSource(full, true, indexes.Length == 1 ? indexes[0] : null);
        try
        {
            foreach (string f in shardFiles) source.AddShard(System.IO.Path.Combine(full, f));
            if (weightMap is not null)
            {
                foreach (var (name, file) in weightMap)
                {
                    if (!source._byName.TryGetValue(name, out var at))
                        throw new InvalidDataException($"{source.IndexPath}: tensor '{name}' is listed in '{file}' but no shard holds it.");
                    if (at.Shard.FileName != file)
                        throw new InvalidDataException($"{source.IndexPath}: tensor '{name}' is listed in '{file}' but found in '{at.Shard.FileName}'.");
                }
                foreach (var name in source._byName.Keys)
                {
                    if (!weightMap.ContainsKey(name))
                        throw new InvalidDataException($"{source.IndexPath}: tensor '{name}' (in '{source._byName[name].Shard.FileName}') is missing from the weight_map.");
                }
            }
            return source;
        }
        catch
        {
            source.Dispose();
            throw;
        }
    }

    /// <summary>Reads <c>weight_map</c> of an index file.</summary>
    internal static Dictionary<string, string> ReadWeightMap(string indexPath)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(indexPath));
            if (!doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"{indexPath}: no \"weight_map\" object.");
            var result = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var p in map.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"{indexPath}: weight_map entry '{p.Name}' is not a file name.");
                result[p.Name] = p.Value.GetString()!;
            }
            return result;
        }
        catch (JsonException ex)
        {
            throw new InvalidDataException($"{indexPath}: not valid JSON ({ex.Message}).", ex);
        }
    }

    private void AddShard(string file)
    {
        var st = SafetensorsFile.Open(file);
        SafeFileHandle? handle = null;
        try
        {
            handle = File.OpenHandle(file, FileMode.Open, FileAccess.Read, FileShare.Read);
            var shard = new Shard(st, handle, st.DataStart);
            foreach (var t in st.Tensors)
            {
                if (!_byName.TryAdd(t.Name, (shard, t)))
                    throw new InvalidDataException($"Tensor '{t.Name}' appears in both '{_byName[t.Name].Shard.FileName}' and '{shard.FileName}'.");
            }
            _shards.Add(shard);
        }
        catch
        {
            handle?.Dispose();
            st.Dispose();
            throw;
        }
    }

    /// <summary>Reads bytes [offset, offset + destination.Length) of a tensor's data.</summary>
    public static void ReadRange(Shard shard, SafetensorsTensorInfo info, long offset, Span<byte> destination)
    {
        if (offset < 0 || offset + destination.Length > info.ByteLength) throw new ArgumentOutOfRangeException(nameof(offset));
        long at = shard.HeaderBytes + info.Begin + offset;
        while (destination.Length > 0)
        {
            int n = RandomAccess.Read(shard.Handle, destination, at);
            if (n <= 0) throw new InvalidDataException($"{shard.File.Path}: file ends inside tensor '{info.Name}'.");
            destination = destination[n..];
            at += n;
        }
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        foreach (var s in _shards) s.Dispose();
        _shards.Clear();
    }
}
