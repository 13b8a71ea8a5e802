using System.Text.Json;
using System.Text.RegularExpressions;
using TorchSharp;

namespace QuantSharp.Serialization;

/// <summary>
/// A safetensors checkpoint opened for reading: one <c>.safetensors</c> file, or a sharded checkpoint
/// (<c>model.safetensors.index.json</c> + <c>model-00001-of-00003.safetensors</c>...), presented through one API.
/// This is QuantSharp's only checkpoint reader: the quantizers, the validator, <see cref="QuantizedCheckpoint.Load"/>
/// and every CLI command open their input through it, with the same folder rules and limits. Opening reads headers
/// only (names, dtypes, shapes, offsets, metadata); every shard is checked against the index (each tensor of the
/// weight map lies in the shard it names, each tensor of a shard is in the weight map, no name twice). Tensor data
/// is read on request: mapped (<see cref="ReadTensor"/>, <see cref="GetSpan"/>) or by ranged reads that fail cleanly
/// if the file is truncated while open (<see cref="ReadRange"/>).
/// </summary>
/// <remarks>
/// What <see cref="Open"/> accepts (docs/SAFETENSORS.md):
/// <list type="bullet">
/// <item>a <c>.safetensors</c> file;</item>
/// <item>an index (a path ending in <c>.json</c>, e.g. <c>model.safetensors.index.json</c>): its shards are in its folder;</item>
/// <item>a folder: its <c>*.safetensors.index.json</c> when it holds exactly one, else <c>model.safetensors</c>,
/// else its only <c>*.safetensors</c> file. A folder with several indexes, or several <c>.safetensors</c> files and
/// no index, is refused (pass the index or the file you mean).</item>
/// </list>
/// </remarks>
public sealed class ShardedCheckpoint : IDisposable
{
    /// <summary>Name of the index of a sharded checkpoint saved with base name "model".</summary>
    public const string DefaultIndexFileName = "model.safetensors.index.json";

    /// <summary>Suffix of index file names.</summary>
    public const string IndexSuffix = ".safetensors.index.json";

    private readonly List<SafetensorsFile> _files;
    private readonly Dictionary<string, SafetensorsFile> _owner;

    private ShardedCheckpoint(string path, bool isFolder, string? indexPath, List<SafetensorsFile> files, long? totalSize)
    {
        Path = path;
        IsFolder = isFolder;
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

    /// <summary>The full path that was opened: the <c>.safetensors</c> file for a single file, else the folder of the shards.</summary>
    public string Path { get; }

    /// <summary>True when a folder or an index was opened (a quantized copy of it is a folder too).</summary>
    public bool IsFolder { get; }

    /// <summary>The index file, or null for a single-file checkpoint.</summary>
    public string? IndexPath { get; }

    /// <summary><c>metadata.total_size</c> of the index (bytes of tensor data), or null.</summary>
    public long? TotalSize { get; }

    /// <summary>The open files: one, or the shards in file name order.</summary>
    public IReadOnlyList<SafetensorsFile> Files => _files;

    /// <summary>All tensors: shard by shard, each in offset order.</summary>
    public IReadOnlyList<SafetensorsTensorInfo> Tensors { get; }

    /// <summary>The <c>__metadata__</c> of the first file (every shard written by <see cref="Save"/> holds the same).</summary>
    public IReadOnlyDictionary<string, string> Metadata => _files.Count > 0 ? _files[0].Metadata : new Dictionary<string, string>();

    /// <summary>Total bytes of the shard files (headers included).</summary>
    public long TotalFileBytes => _files.Sum(f => f.FileLength);

    /// <summary>Every tensor with the file that holds it, shard by shard, each in offset order.</summary>
    internal IEnumerable<(SafetensorsFile File, SafetensorsTensorInfo Info)> All => _files.SelectMany(f => f.Tensors.Select(t => (f, t)));

    /// <summary>
    /// Opens a checkpoint, reading headers only: a <c>.safetensors</c> file, an index (<c>*.json</c>), or a folder
    /// (see the remarks of <see cref="ShardedCheckpoint"/>).
    /// </summary>
    /// <exception cref="SafetensorsFormatException">A file or the index breaks the format, or the index disagrees with the shards.</exception>
    /// <exception cref="FileNotFoundException">Nothing to open.</exception>
    /// <exception cref="IOException">A folder is ambiguous (several indexes, or several files and no index).</exception>
    public static ShardedCheckpoint Open(string pathOrFolder)
    {
        ArgumentException.ThrowIfNullOrEmpty(pathOrFolder);
        string full = System.IO.Path.GetFullPath(pathOrFolder);
        if (Directory.Exists(full))
        {
            var indexes = Directory.GetFiles(full, "*" + IndexSuffix);
            if (indexes.Length == 1) return OpenIndex(full, indexes[0]);
            if (indexes.Length > 1)
                throw new IOException($"'{pathOrFolder}' holds {indexes.Length} *{IndexSuffix} files; open one of them (give its path).");
            string single = System.IO.Path.Combine(full, "model.safetensors");
            if (File.Exists(single)) return OpenSingle(full, single, isFolder: true);
            var files = Directory.GetFiles(full, "*.safetensors");
            if (files.Length == 1) return OpenSingle(full, files[0], isFolder: true);
            throw files.Length == 0
                ? new FileNotFoundException($"'{pathOrFolder}' holds no .safetensors file.", pathOrFolder)
                : new IOException($"'{pathOrFolder}' holds {files.Length} .safetensors files and no index; open one of them, or add a {DefaultIndexFileName}.");
        }
        if (!File.Exists(full)) throw new FileNotFoundException($"No file or folder '{pathOrFolder}': expected a .safetensors file, an index or a folder of shards.", pathOrFolder);
        return full.EndsWith(".json", StringComparison.OrdinalIgnoreCase)
            ? OpenIndex(System.IO.Path.GetDirectoryName(full)!, full)
            : OpenSingle(full, full, isFolder: false);
    }

    private static ShardedCheckpoint OpenSingle(string path, string file, bool isFolder)
    {
        var st = SafetensorsFile.Open(file);
        try { return new ShardedCheckpoint(path, isFolder, null, [st], null); }
        catch { st.Dispose(); throw; }
    }

    private static ShardedCheckpoint OpenIndex(string folder, string indexPath)
    {
        var (weightMap, totalSize) = CheckpointIndex.Read(indexPath);
        var shardNames = weightMap.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();
        var files = new List<SafetensorsFile>();
        try
        {
            foreach (string shard in shardNames)
            {
                string shardPath = System.IO.Path.Combine(folder, shard);
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
            return new ShardedCheckpoint(folder, true, indexPath, files, totalSize);
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
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

    /// <summary>Reads bytes [offset, offset + destination.Length) of a tensor's data (see <see cref="SafetensorsFile.ReadRange"/>).</summary>
    public void ReadRange(string name, long offset, Span<byte> destination)
    {
        var file = GetFile(name);
        file.ReadRange(file.GetInfo(name), offset, destination);
    }

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
                var map = new Dictionary<string, string>(StringComparer.Ordinal);
                for (int s = 0; s < shards.Count; s++)
                    foreach (int i in shards[s]) map[specs[i].Name] = names[s];
                index = SafetensorsWriterTextFile.Create(indexPath, CheckpointIndex.ToBytes(map, total));
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
