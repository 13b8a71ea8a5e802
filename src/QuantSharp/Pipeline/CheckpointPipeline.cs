using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using QuantSharp.Serialization;
using QuantSharp.Tensors;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Pipeline;

/// <summary>The plan of one checkpoint tensor: quantized with <paramref name="Spec"/>, or copied unchanged when it is null.</summary>
internal sealed record TensorPlan(SafetensorsFile Shard, SafetensorsTensorInfo Info, QuantSpec? Spec, string? Fallback = null);

/// <summary>A checkpoint tensor in the pipeline.</summary>
internal sealed class CheckpointItem : PipelineItem
{
    public required TensorPlan Plan { get; init; }

    /// <summary>Quantization parameters that span rows, from the source's first pass over the tensor (null: each chunk
    /// has its own, and the sink gathers them).</summary>
    public Observers.ObserverResult? Global { get; set; }
}

/// <summary>Input bytes processed, reported as <see cref="CheckpointProgress"/>.</summary>
internal sealed class CheckpointProgressCounter(IProgress<CheckpointProgress>? progress, long total)
{
    private long _done;

    public void Add(long bytes, string tensor)
    {
        _done += bytes;
        progress?.Report(new CheckpointProgress(_done, total, tensor));
    }
}

/// <summary>
/// The checkpoint's source: every tensor of the plan, shard by shard. A quantized tensor is read and quantized in chunks
/// of whole rows (a weight is never held whole; <see cref="CheckpointChunks"/>), after a first pass when its parameters
/// span rows or its observer sees the whole tensor. Needs no model: sequential methods are refused before.
/// </summary>
internal sealed class CheckpointSource(IReadOnlyList<TensorPlan> plan, RecipePlanner planner, Func<SafetensorsFile, string> fileName,
    CheckpointProgressCounter progress, CancellationToken ct) : IWeightSource<CheckpointItem>
{
    private readonly IWeightQuantizer _quantizer = QuantizationPipeline.WeightQuantizerFor(planner.Recipe); // the quantize stage Quantizer uses too

    /// <inheritdoc/>
    public RowKind Rows => RowKind.Tensor;

    /// <summary>The method recorded per quantized tensor (<c>observer</c>).</summary>
    public string Method => _quantizer.Method;

    /// <inheritdoc/>
    public IEnumerable<CheckpointItem> Items()
    {
        for (int i = 0; i < plan.Count; i++)
        {
            ct.ThrowIfCancellationRequested();
            var p = plan[i];
            string file = fileName(p.Shard);
            yield return new CheckpointItem
            {
                Order = i, Plan = p, Weight = p.Spec is null ? null : new PlannedWeight(p.Info.Name, p.Info.Shape, p.Spec, p.Fallback),
                Row = p.Spec is null ? LayerReport.Copied(p.Info, file, [])
                    : new LayerReport { Name = p.Info.Name, File = file, OriginalDType = p.Info.DType, Shape = p.Info.Shape, OriginalBytes = p.Info.ByteLength },
            };
        }
    }

    /// <inheritdoc/>
    public IEnumerable<QuantizedPart> Parts(CheckpointItem item)
    {
        var info = item.Plan.Info;
        var planned = item.Weight!;
        var spec = planned.Spec;
        string name = info.Name;
        long[] storedShape = WeightGeometry.StorageShape(spec.Type, info.Shape);
        var (rows, rowsPerChunk) = CheckpointChunks.ChunkPlan(info.Shape);
        bool rowwise = CheckpointChunks.IsRowwise(info.Shape);
        long chunkCount = rowwise ? (rows + rowsPerChunk - 1) / rowsPerChunk : 1;
        long rowBytes = rowwise ? info.ByteLength / Math.Max(1, rows) : info.ByteLength;
        bool exact = info.DType is SafetensorsDType.F32 or SafetensorsDType.F16 or SafetensorsDType.BF16;
        bool validate = planner.Recipe.Validation.Enabled;

        // Parameters that span rows (per-tensor, per-channel along another axis) or come from a whole-tensor observer
        // need a first pass over all chunks; min/max per row (per-channel on axis 0, groups) is found chunk by chunk.
        var global = item.Global = spec.Type.IsInteger() && (_quantizer.Method != "minmax" || !CheckpointChunks.HasRowScales(spec))
            ? ObserveInChunks(item.Plan, spec, storedShape) : null;
        long paramsPerRow = global is not null && CheckpointChunks.HasRowScales(spec) ? global.Scale.Length / Math.Max(1, rows) : 0;

        // One float32 chunk buffer reused for every full chunk of this tensor.
        using var buffer = rowwise && chunkCount > 1 ? torch.empty([rowsPerChunk, .. info.Shape[1..]], ScalarType.Float32) : null;
        for (long c = 0; c < chunkCount; c++)
        {
            ct.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            long r0 = c * rowsPerChunk, r1 = rowwise ? Math.Min(rows, r0 + rowsPerChunk) : 1;
            var xf = CheckpointChunks.ReadRowsFloat32(item.Plan.Shard, info, r0, r1, rowwise, buffer);
            if (global is null) RequireFinite(xf, name); // else checked by the first pass
            // The quantizer sees the stored view: rows of the [d0, K] matrix for an integer weight of rank > 2.
            var xs = xf.dim() > 2 && spec.Type.IsInteger() ? xf.reshape(xf.shape[0], -1) : xf;
            using var q = global is null ? _quantizer.Quantize(planned, xs, null)
                : paramsPerRow > 0 ? QuantizedTensor.QuantizeWith(xs, spec, global.Scale[(int)(r0 * paramsPerRow)..(int)(r1 * paramsPerRow)],
                    global.ZeroPoint[(int)(r0 * paramsPerRow)..(int)(r1 * paramsPerRow)])
                : QuantizedTensor.QuantizeWith(xs, spec, global.Scale, global.ZeroPoint);
            // The SQNR is measured against the original values: float32 holds F32, F16 and BF16 exactly, F64 is read again.
            var original = exact ? xf : validate ? CheckpointChunks.ReadRows(item.Plan.Shard, info, r0, r1, rowwise) : null;
            yield return new QuantizedPart(name, q, original);
            progress.Add((r1 - r0) * rowBytes, name);
        }
    }

    /// <summary>
    /// The first pass for parameters that span rows: the weight's observer (min/max, moving average, histogram,
    /// percentile) fed the whole tensor in chunks, exactly as if it saw it at once (results do not depend on the chunk size).
    /// </summary>
    private Observers.ObserverResult ObserveInChunks(TensorPlan item, QuantSpec spec, long[] storedShape)
    {
        string name = item.Info.Name;
        var o = (Observers.ObserverBase)WeightQuantization.CreateObserver(_quantizer.Method, spec, name);
        var values = new CheckpointChunks.TensorFileChunks(item.Shard, item.Info, storedShape, ct);
        try
        {
            o.ObserveChunks(values);
            return o.ComputeQParams();
        }
        catch (ArgumentException ex)
        {
            long bad = 0;
            values.ForEach((chunk, _) => { foreach (float v in chunk) if (!float.IsFinite(v)) bad++; });
            if (bad > 0) throw NonFinite(name, bad);
            throw new CheckpointQuantizationException($"Tensor '{name}' cannot be quantized: {ExceptionText.Sentence(ex)} Change its settings or exclude it (--exclude '{name}').", ex);
        }
    }

    private static void RequireFinite(Tensor x, string name)
    {
        long bad = TensorChecks.NonFiniteCount(x);
        if (bad > 0) throw NonFinite(name, bad);
    }

    private static CheckpointQuantizationException NonFinite(string name, long count) => new(
        $"Tensor '{name}' contains {count} NaN or infinite value(s); it cannot be quantized. Fix the checkpoint, or exclude the tensor (--exclude '{name}') to copy it unchanged.");
}

/// <summary>
/// The checkpoint's sink: the streaming <see cref="QuantizedCheckpointWriter"/> of each shard in the temporary folder of
/// an <see cref="AtomicOutput"/> (data appended chunk by chunk, then the scales and zero points, the per-layer entry);
/// each shard committed and read back (the reload test) when the next begins; at the end the input stamps, the side files
/// and the index; the folder promoted to the output only when the result is kept. Values the stored type cannot hold
/// (infinite scales, float16 overflow) are refused under every failure mode.
/// </summary>
internal sealed class CheckpointSink : IQuantizedSink<CheckpointItem>, IDisposable
{
    private readonly ShardedCheckpoint _source;
    private readonly IReadOnlyList<TensorPlan> _plan;
    private readonly QuantizationRecipe _recipe;
    private readonly string _method;
    private readonly IReadOnlyList<string> _recipeWarnings;
    private readonly string _inFull, _outFull;
    private readonly CheckpointProgressCounter _progress;
    private readonly CancellationToken _ct;
    private readonly JsonObject _config;
    private readonly List<(string Path, (long, DateTime) Stamp)> _stamps;
    private readonly AtomicOutput _atomic;
    private readonly Dictionary<string, string> _weightMap = new(StringComparer.Ordinal);
    private readonly List<string> _unrepresentable = [];
    private readonly List<string> _reloadProblems = [];
    private int _nextShard;
    private SafetensorsFile? _shard;
    private QuantizedCheckpointWriter? _writer;
    private Dictionary<string, QuantizedLayerInfo> _layers = new(StringComparer.Ordinal);
    private readonly TensorParts _tensor = new();

    /// <summary>Stamps the input files and creates the temporary output folder.</summary>
    public CheckpointSink(ShardedCheckpoint source, IReadOnlyList<TensorPlan> plan, QuantizationRecipe recipe, string method, IReadOnlyList<string> recipeWarnings,
        string inFull, string outFull, CheckpointProgressCounter progress, CancellationToken ct)
    {
        (_source, _plan, _recipe, _method, _recipeWarnings, _inFull, _outFull, _progress, _ct) = (source, plan, recipe, method, recipeWarnings, inFull, outFull, progress, ct);
        _config = recipe.ToJsonNode();
        _stamps = source.Files.Select(f => (f.Path, Stamp(f.Path))).ToList();
        _atomic = AtomicOutput.Create(outFull);
    }

    /// <summary>The output file (shard) name of <paramref name="shard"/> of <paramref name="source"/> written to <paramref name="outFull"/>.</summary>
    public static string FileName(ShardedCheckpoint source, string outFull, SafetensorsFile shard) => Path.GetFileName(source.IsFolder ? shard.Path : outFull);

    private string FileName(SafetensorsFile shard) => FileName(_source, _outFull, shard);

    /// <inheritdoc/>
    public void Begin(CheckpointItem item)
    {
        AdvanceTo(item.Plan.Shard);
        var spec = item.Weight!.Spec;
        var layout = CheckpointLayout.For(spec.Type, spec.Granularity, WeightGeometry.StorageShape(spec.Type, item.Plan.Info.Shape));
        _tensor.Reset();
        _writer!.Raw.BeginTensor(item.Row.Name, layout.DataDType, layout.DataShape);
    }

    /// <inheritdoc/>
    public void Write(CheckpointItem item, QuantizedPart part)
    {
        var q = part.Quantized;
        var spec = q.Spec;
        string name = item.Row.Name;
        var data = q.Data.contiguous();
        if (_tensor.Unrepresentable is null && NonFiniteOutputs(q) is > 0 and var bad)
        {
            _tensor.Unrepresentable = $"'{name}': {bad} stored {(spec.Type.IsInteger() ? "scale(s)" : "value(s)")} would be infinite or NaN: " +
                $"{spec.Type.ToName()} cannot hold this tensor's range{(spec.Type == QuantType.Float16 ? " (float16 ends at ±65,504)" : "")}. " +
                $"Quantize it to another type (an override in --config, e.g. bfloat16 or int8) or exclude it (--exclude '{name}').";
            _unrepresentable.Add(_tensor.Unrepresentable);
        }
        _writer!.Raw.Append(data.numel() == 0 ? [] : data.bytes);
        _tensor.Stored += data.numel() * data.element_size();
        if (spec.Type.IsInteger() && item.Global is null)
        {
            _tensor.Scales.Add(q.Scale!.detach().clone().DetachFromDisposeScope());
            if (q.ZeroPoint is not null) _tensor.ZeroPoints.Add(q.ZeroPoint.detach().clone().DetachFromDisposeScope());
        }
    }

    /// <inheritdoc/>
    public LayerReport End(CheckpointItem item, LayerReport row)
    {
        var writer = _writer!;
        var spec = item.Weight!.Spec;
        var info = item.Plan.Info;
        writer.Raw.EndTensor();
        if (spec.Type.IsInteger())
        {
            var layout = CheckpointLayout.For(spec.Type, spec.Granularity, WeightGeometry.StorageShape(spec.Type, info.Shape));
            using var scope = NewDisposeScope();
            if (item.Global is { } global)
            {
                _tensor.Scales.Add(torch.tensor(global.Scale).DetachFromDisposeScope());
                if (spec.HasZeroPoint) _tensor.ZeroPoints.Add(torch.tensor(global.ZeroPoint).DetachFromDisposeScope());
            }
            var scale = (_tensor.Scales.Count == 1 ? _tensor.Scales[0] : cat(_tensor.Scales, 0)).contiguous().reshape(layout.ScaleShape);
            writer.Raw.Add(info.Name + QuantizedCheckpoint.ScaleSuffix, SafetensorsDType.F32, layout.ScaleShape, scale.numel() == 0 ? [] : scale.bytes);
            _tensor.Stored += scale.numel() * 4;
            if (_tensor.ZeroPoints.Count > 0)
            {
                var zero = (_tensor.ZeroPoints.Count == 1 ? _tensor.ZeroPoints[0] : cat(_tensor.ZeroPoints, 0)).to(ScalarType.Int32).contiguous().reshape(layout.ScaleShape);
                writer.Raw.Add(info.Name + QuantizedCheckpoint.ZeroPointSuffix, SafetensorsDType.I32, layout.ScaleShape, zero.numel() == 0 ? [] : zero.bytes);
                _tensor.Stored += zero.numel() * 4;
            }
        }
        _tensor.Reset(keepCounts: true);
        var layer = new QuantizedLayerInfo(info.DType, info.Shape, spec.Type,
            spec.Type.IsInteger() ? spec.Scheme : null, spec.Type.IsInteger() ? spec.Granularity : null,
            spec.ReduceRange, spec.Type.IsInteger() ? _method : null, row.WeightSqnrDb);
        writer.RecordLayer(info.Name, layer);
        _layers[info.Name] = layer;
        foreach (string n in OutputNames(info.Name, spec)) _weightMap[n] = row.File!;
        return row with
        {
            StoredBytes = _tensor.Stored,
            Problems = _tensor.Unrepresentable is { } u ? [.. row.Problems, u] : row.Problems,
        };
    }

    /// <inheritdoc/>
    public void Copy(CheckpointItem item)
    {
        AdvanceTo(item.Plan.Shard);
        var info = item.Plan.Info;
        var w = _writer!.Raw;
        w.BeginTensor(info.Name, info.DType, info.Shape);
        var buffer = new byte[(int)Math.Min(Math.Max(info.ByteLength, 1), 8 << 20)];
        for (long off = 0; off < info.ByteLength;)
        {
            _ct.ThrowIfCancellationRequested();
            int n = (int)Math.Min(buffer.Length, info.ByteLength - off);
            item.Plan.Shard.ReadRange(info, off, buffer.AsSpan(0, n));
            w.Append(buffer.AsSpan(0, n));
            off += n;
            _progress.Add(n, info.Name);
        }
        w.EndTensor();
        _weightMap[info.Name] = item.Row.File!;
    }

    /// <inheritdoc/>
    public RunChecks Finish(IReadOnlyList<LayerReport> rows)
    {
        AdvanceTo(null); // commits the last shard (and writes any shard left without tensors)
        _ct.ThrowIfCancellationRequested(); // a signal during the last chunk still leaves nothing behind
        foreach (var (path, stamp) in _stamps)
        {
            if (Stamp(path) != stamp)
                throw CheckpointQuantizer.InputChanged(path, "its size or modification time changed during the run", null);
        }
        var warnings = new List<string>(_recipeWarnings);
        if (_source.IsFolder) CopySideFiles(warnings);
        var validation = _recipe.Validation;
        return new RunChecks
        {
            Rows = rows, Problems = _reloadProblems, Refused = _unrepresentable, Warnings = warnings,
            OriginalBytes = rows.Sum(r => r.OriginalBytes), StoredBytes = rows.Sum(r => r.StoredBytes),
            ReloadCheck = !validation.Enabled || !validation.ReloadCheck ? CheckStatus.NotRun
                : _reloadProblems.Count > 0 ? CheckStatus.Failed : CheckStatus.Passed,
            Input = _inFull, Output = _outFull, InputFileBytes = _source.TotalFileBytes, WritesFiles = true,
        };
    }

    /// <inheritdoc/>
    public long Commit(bool keep)
    {
        if (!keep) return 0;
        long bytes = Directory.EnumerateFiles(_atomic.TempFolder).Sum(f => new FileInfo(f).Length);
        _atomic.Promote(_source.IsFolder ? null : Path.GetFileName(_outFull));
        return bytes;
    }

    /// <inheritdoc/>
    public QuantizationException Refusal(QuantizationReport report) => new CheckpointValidationException(report);

    /// <summary>Commits the shard being written (then reads it back: the reload test) and opens the next ones up to
    /// <paramref name="shard"/> (null: to the end). Shards are written in input order, each once.</summary>
    private void AdvanceTo(SafetensorsFile? shard)
    {
        if (_writer is not null && ReferenceEquals(_shard, shard)) return;
        while (true)
        {
            CloseShard();
            if (_nextShard == _source.Files.Count) return;
            _shard = _source.Files[_nextShard++];
            _layers = new Dictionary<string, QuantizedLayerInfo>(StringComparer.Ordinal);
            int tensors = _plan.Count(p => ReferenceEquals(p.Shard, _shard));
            _writer = new QuantizedCheckpointWriter(ShardPath(_shard), tensors * 3, _shard.DataStart, _shard.Metadata, _config);
            if (ReferenceEquals(_shard, shard)) return;
        }
    }

    private void CloseShard()
    {
        if (_writer is null) return;
        IReadOnlyDictionary<string, byte[]> hashes;
        using (var writer = _writer)
        {
            _writer = null;
            writer.Commit(promote: true);
            hashes = writer.Raw.Hashes;
        }
        if (_recipe.Validation.Enabled && _recipe.Validation.ReloadCheck)
            _reloadProblems.AddRange(ReloadTest(ShardPath(_shard!), FileName(_shard!), hashes, _layers));
    }

    private string ShardPath(SafetensorsFile shard) => Path.Combine(_atomic.TempFolder, FileName(shard));

    /// <inheritdoc/>
    public void Dispose()
    {
        _tensor.Reset();
        _writer?.Dispose();
        _atomic.Dispose();
    }

    /// <summary>Infinite or NaN values among what would be stored (float16/bfloat16 data, or integer scales).</summary>
    private static long NonFiniteOutputs(QuantizedTensor q)
        => q.Spec.Type.IsInteger() ? (q.Scale is null ? 0 : TensorChecks.NonFiniteCount(q.Scale)) : TensorChecks.NonFiniteCount(q.Data);

    private static IEnumerable<string> OutputNames(string name, QuantSpec spec)
    {
        yield return name;
        if (!spec.Type.IsInteger()) yield break;
        yield return name + QuantizedCheckpoint.ScaleSuffix;
        if (spec.HasZeroPoint) yield return name + QuantizedCheckpoint.ZeroPointSuffix;
    }

    private static (long Length, DateTime Modified) Stamp(string path)
    {
        var f = new FileInfo(path);
        return f.Exists ? (f.Length, f.LastWriteTimeUtc) : (-1, default);
    }

    /// <summary>
    /// The reload test: reads the written file back with the strict reader, checks its quantization metadata and
    /// layouts, and compares every tensor's bytes with what was written (SHA-256).
    /// </summary>
    internal static List<string> ReloadTest(string path, string fileName, IReadOnlyDictionary<string, byte[]> written,
        IReadOnlyDictionary<string, QuantizedLayerInfo> layers)
    {
        var problems = new List<string>();
        try
        {
            using var shard = SafetensorsFile.Open(path);
            var names = shard.Tensors.Select(t => t.Name).ToHashSet(StringComparer.Ordinal);
            foreach (var n in written.Keys.Where(n => !names.Contains(n))) problems.Add($"{fileName}: reload: tensor '{n}' is missing.");
            foreach (var n in names.Where(n => !written.ContainsKey(n))) problems.Add($"{fileName}: reload: unexpected tensor '{n}'.");
            var readLayers = QuantizedCheckpoint.ReadLayers(path, shard.Metadata);
            if (!readLayers.Keys.ToHashSet().SetEquals(layers.Keys))
                problems.Add($"{fileName}: reload: the per-layer metadata lists {readLayers.Count} tensors, {layers.Count} were quantized.");
            foreach (var (name, info) in readLayers)
            {
                var layout = CheckpointLayout.For(info);
                var d = shard.GetInfo(name);
                if (d.DType != layout.DataDType || !d.Shape.SequenceEqual(layout.DataShape))
                    problems.Add($"{fileName}: reload: '{name}' is {d.DType} [{string.Join(", ", d.Shape)}], expected {layout.DataDType} [{string.Join(", ", layout.DataShape)}].");
            }
            var buffer = new byte[8 << 20];
            foreach (var t in shard.Tensors)
            {
                if (!written.TryGetValue(t.Name, out var expected)) continue;
                using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
                for (long off = 0; off < t.ByteLength;)
                {
                    int n = (int)Math.Min(buffer.Length, t.ByteLength - off);
                    shard.ReadRange(t, off, buffer.AsSpan(0, n));
                    h.AppendData(buffer, 0, n);
                    off += n;
                }
                if (!h.GetHashAndReset().AsSpan().SequenceEqual(expected))
                    problems.Add($"{fileName}: reload: the bytes of '{t.Name}' read back differ from those written.");
            }
        }
        catch (Exception ex) when (ex is QuantizationException or IOException)
        {
            problems.Add($"{fileName}: reload: the strict reader refuses the written file: {ex.Message}");
        }
        return problems;
    }

    /// <summary>
    /// Copies the input folder's other files (config.json, tokenizer...): regular files only. Symbolic links are not
    /// followed (a downloaded checkpoint's <c>tokenizer.json -> /etc/shadow</c> would copy a host file into an output
    /// that may be published), devices, FIFOs and sockets are not read, subfolders are not copied; each is named in
    /// <paramref name="warnings"/>. Then writes the index.
    /// </summary>
    private void CopySideFiles(List<string> warnings)
    {
        var source = _source;
        string tempDir = _atomic.TempFolder;
        var own = source.Files.Select(f => f.Path).Append(source.IndexPath).OfType<string>().Select(Path.GetFileName).ToHashSet(StringComparer.Ordinal);
        foreach (string f in Directory.EnumerateFileSystemEntries(source.Path).Order(StringComparer.Ordinal))
        {
            string name = Path.GetFileName(f);
            if (own.Contains(name) || name.StartsWith('.')) continue;
            if (name.EndsWith(".safetensors", StringComparison.Ordinal) || name.EndsWith(ShardedCheckpoint.IndexSuffix, StringComparison.Ordinal))
            {
                // e.g. a consolidated copy beside the shards: float weights that would defeat the quantization.
                warnings.Add($"'{name}' in the input folder is a safetensors file or index that is not part of the checkpoint " +
                    $"({(source.IndexPath is null ? "the folder's checkpoint is another file" : $"'{Path.GetFileName(source.IndexPath)}' does not list it")}); it was not copied. Quantize it separately if you need it.");
                continue;
            }
            switch (PathIdentity.Kind(f))
            {
                case EntryKind.RegularFile:
                    File.Copy(f, Path.Combine(tempDir, name));
                    break;
                case EntryKind.SymbolicLink:
                    warnings.Add($"'{name}' in the input folder is a symbolic link (to '{new FileInfo(f).LinkTarget}'); it was not copied " +
                        "(links are never followed for side files). Copy it yourself if you trust its target.");
                    break;
                case EntryKind.Directory:
                    warnings.Add($"The subfolder '{name}/' of the input folder was not copied (only the folder's own regular files are). Copy it yourself if the model needs it.");
                    break;
                case EntryKind.Other:
                    warnings.Add($"'{name}' in the input folder is a device, FIFO or socket; it was not read or copied.");
                    break;
            }
        }
        if (source.IndexPath is not null)
        {
            long totalSize = Directory.EnumerateFiles(tempDir, "*.safetensors").Sum(f =>
            {
                using var st = SafetensorsFile.Open(f);
                return st.Tensors.Sum(t => t.ByteLength);
            });
            File.WriteAllBytes(Path.Combine(tempDir, Path.GetFileName(source.IndexPath)),
                CheckpointIndex.ToBytes(_weightMap, totalSize, new Dictionary<string, string> { [QuantizedCheckpoint.FormatKey] = QuantizedCheckpoint.FormatName }));
        }
    }

    /// <summary>What the sink gathers for the tensor being written: its scales and zero points chunk by chunk, its stored
    /// bytes, the first value it cannot store.</summary>
    private sealed class TensorParts
    {
        public List<Tensor> Scales { get; } = [];
        public List<Tensor> ZeroPoints { get; } = [];
        public long Stored { get; set; }
        public string? Unrepresentable { get; set; }

        /// <summary>Disposes the gathered parameters; clears the counts too unless <paramref name="keepCounts"/>.</summary>
        public void Reset(bool keepCounts = false)
        {
            foreach (var t in Scales) t.Dispose();
            foreach (var t in ZeroPoints) t.Dispose();
            Scales.Clear();
            ZeroPoints.Clear();
            if (keepCounts) return;
            Stored = 0;
            Unrepresentable = null;
        }
    }
}

/// <summary>How a checkpoint tensor is cut into chunks of whole rows and read as float32: the checkpoint source, the
/// validator and the model path's SQNR (the same chunks give the same <c>sqnr_db</c>) share it.</summary>
internal static class CheckpointChunks
{
    /// <summary>Elements per chunk read and quantized at once (16 MiB of float32).</summary>
    internal const long DefaultChunkElements = 4L << 20;

    /// <summary>Test hook: a smaller chunk size on this thread (results must not depend on it).</summary>
    [ThreadStatic] internal static long? ChunkElementsForTests;

    private static long ChunkElements => ChunkElementsForTests ?? DefaultChunkElements;

    /// <summary>The longest row (slice along dimension 0) a quantized tensor may have: one float32 span under 2 GiB.</summary>
    internal const long MaxRowElements = int.MaxValue / sizeof(float);

    /// <summary>How a tensor is cut into chunks of whole rows (dimension 0); one chunk for tensors of rank 0 or 1.</summary>
    internal static (long Rows, long RowsPerChunk) ChunkPlan(long[] shape)
    {
        if (!IsRowwise(shape)) return (1, 1);
        long rowElems = shape[1..].Aggregate(1L, (a, b) => a * b);
        return (shape[0], Math.Max(1, ChunkElements / Math.Max(1, rowElems)));
    }

    /// <summary>
    /// True when the tensor is processed in chunks of rows. Any spec quantizes rows independently once its parameters
    /// are known: those that span rows (per-tensor, per-channel along another axis, whole-tensor observers) come from a
    /// first pass over the chunks.
    /// </summary>
    internal static bool IsRowwise(long[] shape) => shape.Length >= 2;

    /// <summary>True when each row has scales of its own (per-channel on axis 0, groups); otherwise every chunk uses all of them.</summary>
    internal static bool HasRowScales(QuantSpec spec) => spec.Type.IsInteger() && spec.Granularity is PerAxis { Axis: 0 } or PerGroup;

    /// <summary>Reads rows [r0, r1) of a tensor (or the whole tensor when <paramref name="rowwise"/> is false).</summary>
    internal static Tensor ReadRows(SafetensorsFile shard, SafetensorsTensorInfo info, long r0, long r1, bool rowwise)
    {
        var type = info.DType.ToScalarType() ?? throw new NotSupportedException($"Tensor '{info.Name}' has dtype {info.DType}, which TorchSharp cannot hold.");
        long[] shape = rowwise ? [r1 - r0, .. info.Shape[1..]] : info.Shape;
        long rowBytes = rowwise ? info.ByteLength / Math.Max(1, info.Shape[0]) : 0;
        var t = torch.empty(shape, type);
        if (t.numel() > 0) shard.ReadRange(info, r0 * rowBytes, t.bytes);
        return t;
    }

    /// <summary>Reads rows [r0, r1) (or the whole tensor) as float32: exact for F32, F16 and BF16 inputs.</summary>
    /// <param name="shard">The shard.</param>
    /// <param name="info">The tensor.</param>
    /// <param name="r0">First row.</param>
    /// <param name="r1">End row (exclusive).</param>
    /// <param name="rowwise">False: the whole tensor.</param>
    /// <param name="reuse">A float32 tensor of exactly the chunk's shape to fill instead of allocating (fresh native
    /// allocations are slow on these VMs); the caller owns it.</param>
    internal static Tensor ReadRowsFloat32(SafetensorsFile shard, SafetensorsTensorInfo info, long r0, long r1, bool rowwise, Tensor? reuse = null)
    {
        long[] shape = rowwise ? [r1 - r0, .. info.Shape[1..]] : info.Shape;
        long rowElems = rowwise ? info.Shape[1..].Aggregate(1L, (a, b) => a * b) : 0;
        bool canReuse = reuse is not null && reuse.dtype == ScalarType.Float32 && reuse.shape.SequenceEqual(shape);
        var result = canReuse ? reuse!.alias() : torch.empty(shape, ScalarType.Float32);
        if (result.numel() > 0)
            ReadFloat32(shard, info, r0 * rowElems, MemoryMarshal.Cast<byte, float>(result.bytes));
        return result;
    }

    /// <summary>Reads elements [first, first + destination.Length) of a floating-point tensor as float32 (exact for F32,
    /// F16 and BF16; F64 rounded to nearest, as a cast).</summary>
    internal static void ReadFloat32(SafetensorsFile shard, SafetensorsTensorInfo info, long first, Span<float> destination)
    {
        int size = info.DType.ElementSize();
        if (info.DType == SafetensorsDType.F32)
        {
            shard.ReadRange(info, first * size, MemoryMarshal.AsBytes(destination));
            return;
        }
        if (info.DType is not (SafetensorsDType.F16 or SafetensorsDType.BF16 or SafetensorsDType.F64))
            throw new NotSupportedException($"Tensor '{info.Name}' has dtype {info.DType}; only floating-point tensors are read as float32.");
        int piece = Math.Min(destination.Length, 1 << 20);
        byte[] raw = System.Buffers.ArrayPool<byte>.Shared.Rent(piece * size);
        try
        {
            for (int done = 0; done < destination.Length;)
            {
                int n = Math.Min(piece, destination.Length - done);
                var bytes = raw.AsSpan(0, n * size);
                shard.ReadRange(info, (first + done) * size, bytes);
                var dst = destination.Slice(done, n);
                if (info.DType == SafetensorsDType.BF16) Kernels.HalfKernel.FromBFloat16(MemoryMarshal.Cast<byte, ushort>(bytes), dst);
                else if (info.DType == SafetensorsDType.F16) Kernels.HalfKernel.FromHalf(MemoryMarshal.Cast<byte, ushort>(bytes), dst);
                else
                {
                    var d = MemoryMarshal.Cast<byte, double>(bytes);
                    for (int k = 0; k < n; k++) dst[k] = (float)d[k];
                }
                done += n;
            }
        }
        finally { System.Buffers.ArrayPool<byte>.Shared.Return(raw); }
    }

    /// <summary>A tensor of a checkpoint read as float32 chunks (one reused buffer), for observers' passes.</summary>
    internal sealed class TensorFileChunks(SafetensorsFile shard, SafetensorsTensorInfo info, long[] shape, CancellationToken ct)
        : Observers.FloatChunks(shape)
    {
        public override void ForEach(Observers.FloatChunkAction action)
        {
            float[] buffer = new float[(int)Math.Min(Count, MaxChunkElements)];
            for (long offset = 0; offset < Count; offset += buffer.Length)
            {
                ct.ThrowIfCancellationRequested();
                var chunk = buffer.AsSpan(0, (int)Math.Min(buffer.Length, Count - offset));
                ReadFloat32(shard, info, offset, chunk);
                action(chunk, offset);
            }
        }
    }
}
