using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using QuantSharp.Pipeline;
using QuantSharp.Primitives;
using QuantSharp.Serialization;
using QuantSharp.Tensors;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp;

/// <summary>
/// Quantizes a safetensors checkpoint (one file or a folder of shards) without its model code, tensor by tensor:
/// read one tensor (in row chunks), quantize, write, dispose, so that memory stays near one chunk plus the small
/// per-tensor scales. What is quantized and how comes from a <see cref="QuantizationRecipe"/> (the same recipe
/// <see cref="Quantizer"/> takes, planned by the same rules, so both write the same file): by default floating
/// tensors named <c>*.weight</c> with at least two dimensions (and <see cref="QuantizationRecipe.MinElements"/>
/// elements) are quantized; norms, biases, 1-D and integer tensors are copied bit-exactly. The output follows docs/FORMAT.md. Afterwards (by default) it validates:
/// per-tensor SQNR against the original, size reduction, a reload test (the written files are read back with the
/// strict reader and compared bit-exactly, through SHA-256, with what was written) and a range test.
/// </summary>
public static class CheckpointQuantizer
{
    /// <summary>Elements per chunk read and quantized at once (16 MiB of float32).</summary>
    internal const long DefaultChunkElements = 4L << 20;

    /// <summary>Test hook: a smaller chunk size on this thread (results must not depend on it).</summary>
    [ThreadStatic] internal static long? ChunkElementsForTests;

    private static long ChunkElements => ChunkElementsForTests ?? DefaultChunkElements;

    private enum Action { Copy, Quantize }

    private sealed record PlanItem(CheckpointSource.Shard Shard, SafetensorsTensorInfo Info, Action Action, QuantSpec? Spec, string? Fallback = null);

    /// <summary>Quantizes <paramref name="input"/> into <paramref name="output"/>.</summary>
    /// <param name="input">A <c>.safetensors</c> file or a folder of shards (never modified).</param>
    /// <param name="output">The output file (for a file input) or folder (for a folder input); written atomically:
    /// it appears only complete and validated (per the failure policy).</param>
    /// <param name="recipe">The recipe (null: <see cref="QuantizationRecipe.Int8WeightOnly"/>). Module-type filters
    /// are refused (a checkpoint has no modules); activation settings are ignored (no activations without a model).</param>
    /// <param name="progress">Receives progress (input bytes).</param>
    /// <param name="cancellationToken">Cancels between chunks (nothing is left behind).</param>
    /// <returns>The report.</returns>
    /// <exception cref="CheckpointQuantizationException">Bad input, settings or paths; an I/O failure (disk full...).</exception>
    /// <exception cref="CheckpointValidationException">Validation failed under <see cref="ValidationFailureMode.Error"/>.</exception>
    public static CheckpointQuantizationReport Quantize(string input, string output, QuantizationRecipe? recipe = null,
        IProgress<CheckpointProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(output);
        var sw = Stopwatch.StartNew();
        RecipePlanner s;
        try { s = new RecipePlanner(recipe ?? new QuantizationRecipe()); }
        catch (ArgumentException ex) { throw new CheckpointQuantizationException(ex.Message, ex); }
        if (s.Recipe.HasModuleTypeFilters)
            throw new CheckpointQuantizationException("The recipe filters by module type (ModuleTypes, ExcludeModuleTypes or an override's module_type), " +
                "but a checkpoint has no modules. Select the tensors by name (include/exclude patterns) instead.");

        string inFull = Path.GetFullPath(input);
        string outFull = Path.GetFullPath(output.TrimEnd('/', '\\').Length == 0 ? output : output.TrimEnd('/', '\\'));
        CheckpointSource source;
        try { source = CheckpointSource.Open(inFull); }
        catch (Exception ex) when (ex is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            throw new CheckpointQuantizationException($"Cannot read input '{input}': {ex.Message}", ex);
        }
        using (source)
        {
            CheckPaths(source, inFull, outFull, input, output);
            var plan = MakePlan(source, s);
            return Run(source, plan, s, inFull, outFull, progress, cancellationToken, sw);
        }
    }

    private static void CheckPaths(CheckpointSource source, string inFull, string outFull, string input, string output)
    {
        static string Real(string p)
        {
            try { return (File.Exists(p) || Directory.Exists(p)) ? (new FileInfo(p).ResolveLinkTarget(true)?.FullName ?? p) : p; }
            catch (IOException) { return p; }
        }
        bool same = string.Equals(inFull, outFull, StringComparison.Ordinal) || string.Equals(Real(inFull), Real(outFull), StringComparison.Ordinal);
        if (same)
            throw new CheckpointQuantizationException($"The output '{output}' is the input; quantizing in place would destroy the original. Choose another output path.");
        foreach (var shard in source.Shards)
        {
            if (string.Equals(Path.GetFullPath(shard.File.Path), outFull, StringComparison.Ordinal))
                throw new CheckpointQuantizationException($"The output '{output}' is a shard of the input. Choose another output path.");
        }
        if (!source.IsFolder)
        {
            if (Directory.Exists(outFull))
                throw new CheckpointQuantizationException($"The output '{output}' is a folder; for a single-file input give an output file name, e.g. '{Path.Combine(output, Path.GetFileName(inFull))}'.");
        }
        else
        {
            if (File.Exists(outFull))
                throw new CheckpointQuantizationException($"The input is a folder of shards, so the output must be a folder, but '{output}' is a file.");
            if (Directory.Exists(outFull) && Directory.EnumerateFileSystemEntries(outFull).Any())
                throw new CheckpointQuantizationException($"The output folder '{output}' exists and is not empty. Choose a new folder or empty it first.");
            if (outFull.StartsWith(inFull + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                throw new CheckpointQuantizationException($"The output folder '{output}' is inside the input folder '{input}'. Choose a folder outside it.");
        }
    }

    private static List<PlanItem> MakePlan(CheckpointSource source, RecipePlanner s)
    {
        var plan = new List<PlanItem>();
        foreach (var shard in source.Shards)
        {
            if (shard.File.Metadata.ContainsKey(QuantizedCheckpoint.FormatKey))
                throw new CheckpointQuantizationException($"'{shard.File.Path}' is already a QuantSharp quantized checkpoint; quantize the original instead.");
        }
        foreach (var (shard, info) in source.All)
        {
            string name = info.Name;
            bool floating = info.DType is SafetensorsDType.F32 or SafetensorsDType.F16 or SafetensorsDType.BF16 or SafetensorsDType.F64;
            bool quantize;
            if (s.ExcludedBy(name) is not null) quantize = false;
            else if (s.HasInclude)
            {
                quantize = s.IsIncluded(name);
                if (quantize && !floating)
                    throw new CheckpointQuantizationException(
                        $"Tensor '{name}' ({info.DType} [{string.Join(", ", info.Shape)}]) matches --include but is not a floating-point tensor " +
                        "(F32, F16, BF16 or F64) and cannot be quantized. Narrow the --include pattern or add --exclude " + $"'{name}'.");
                if (quantize && info.ElementCount == 0) quantize = false;
            }
            else
            {
                quantize = floating && name.EndsWith(".weight", StringComparison.Ordinal) && info.Shape.Length >= 2
                    && info.ElementCount >= Math.Max(1, s.Recipe.MinElements);
            }
            if (!quantize) { plan.Add(new PlanItem(shard, info, Action.Copy, null)); continue; }

            var spec = s.Recipe.WeightSpecFor(name);
            string? fallback;
            try
            {
                var planned = s.Plan(name, null, info.Shape);
                (spec, fallback) = (planned.Spec, planned.Fallback);
                long[] stored = WeightGeometry.StorageShape(spec.Type, info.Shape);
                spec.Validate(stored);
                _ = CheckpointLayout.For(spec.Type, spec.Granularity, stored);
                if (spec.Type.IsInteger() && Observer(s) != "minmax") _ = WeightQuantization.CreateObserver(Observer(s), spec, name);
            }
            catch (Exception ex) when (ex is ArgumentException or NotSupportedException)
            {
                throw new CheckpointQuantizationException(
                    $"Tensor '{name}' ({info.DType} [{string.Join(", ", info.Shape)}]) cannot be quantized as {spec}: {PlainMessage(ex)} " +
                    $"Change the settings for it (an override in --config) or exclude it (--exclude '{name}').", ex);
            }
            foreach (string suffix in new[] { QuantizedCheckpoint.ScaleSuffix, QuantizedCheckpoint.ZeroPointSuffix })
            {
                if (source.Contains(name + suffix))
                    throw new CheckpointQuantizationException(
                        $"Tensor '{name}' cannot be quantized: the checkpoint already has a tensor named '{name + suffix}', the name its quantization parameters need. Exclude '{name}'.");
            }
            plan.Add(new PlanItem(shard, info, Action.Quantize, spec, fallback));
        }
        return plan;
    }

    private static string Observer(RecipePlanner s) => QuantizationRecipe.NormalizeObserver(s.Recipe.WeightObserver);

    private static CheckpointQuantizationReport Run(CheckpointSource source, List<PlanItem> plan, RecipePlanner s,
        string inFull, string outFull, IProgress<CheckpointProgress>? progress, CancellationToken ct, Stopwatch sw)
    {
        string parent = Path.GetDirectoryName(outFull)!;
        string tempDir = Path.Combine(parent, $".{Path.GetFileName(outFull)}.qs-tmp-{Guid.NewGuid():N}");
        var reports = new List<TensorQuantizationReport>();
        var problems = new List<string>();
        long total = plan.Sum(p => p.Info.ByteLength), done = 0;
        JsonObject config = s.Recipe.ToJsonNode();
        var validation = s.Recipe.Validation;
        var weightMap = new JsonObject();
        bool promoted = false;
        try
        {
            Directory.CreateDirectory(parent);
            Directory.CreateDirectory(tempDir);
            foreach (var shard in source.Shards)
            {
                string fileName = source.IsFolder ? shard.FileName : Path.GetFileName(outFull);
                string shardPath = Path.Combine(tempDir, fileName);
                var items = plan.Where(p => p.Shard == shard).ToList();
                IReadOnlyDictionary<string, byte[]> hashes;
                var layers = new Dictionary<string, QuantizedLayerInfo>(StringComparer.Ordinal);
                using (var writer = new QuantizedCheckpointWriter(shardPath, items.Count * 3, shard.HeaderBytes, shard.File.Metadata, config))
                {
                    foreach (var item in items)
                    {
                        ct.ThrowIfCancellationRequested();
                        TensorQuantizationReport r;
                        if (item.Action == Action.Copy)
                        {
                            Copy(writer.Raw, item, ref done, total, progress, ct);
                            r = new TensorQuantizationReport(item.Info.Name, fileName, false, null, item.Info.DType, item.Info.Shape,
                                item.Info.ByteLength, item.Info.ByteLength, null, null, []);
                        }
                        else
                        {
                            var (tr, info) = QuantizeOne(writer, item, s, fileName, ref done, total, progress, ct);
                            layers[item.Info.Name] = info;
                            r = tr;
                        }
                        reports.Add(r);
                        problems.AddRange(r.Problems);
                        foreach (string n in OutputNames(item, r)) weightMap[n] = fileName;
                    }
                    writer.Commit(promote: true);
                    hashes = writer.Raw.Hashes;
                }
                if (validation.Enabled && validation.ReloadCheck) problems.AddRange(ReloadTest(shardPath, fileName, hashes, layers));
            }
            if (source.IsFolder) CopySideFiles(source, tempDir, weightMap, reports);

            bool write = problems.Count == 0 || validation.OnFailure != ValidationFailureMode.Error;
            long outBytes = 0;
            if (write)
            {
                outBytes = Directory.EnumerateFiles(tempDir).Sum(f => new FileInfo(f).Length);
                if (source.IsFolder)
                {
                    if (Directory.Exists(outFull)) Directory.Delete(outFull); // checked empty before starting
                    Directory.Move(tempDir, outFull);
                }
                else
                {
                    File.Move(Path.Combine(tempDir, Path.GetFileName(outFull)), outFull, overwrite: true);
                }
                promoted = true;
            }
            var report = new CheckpointQuantizationReport(inFull, outFull, reports, problems, validation.Enabled, write, source.TotalFileBytes, outBytes, sw.Elapsed);
            if (!write) throw new CheckpointValidationException(report);
            return report;
        }
        catch (IOException ex)
        {
            throw new CheckpointQuantizationException(
                $"Writing '{outFull}' failed: {ex.Message}{(IsDiskFull(ex) ? " (the disk is full)" : "")}. Nothing was written under '{outFull}' " +
                "and the temporary files were removed; the input is unchanged. Free some space or choose another output folder and retry.", ex);
        }
        catch (UnauthorizedAccessException ex)
        {
            throw new CheckpointQuantizationException($"Cannot write '{outFull}': {ex.Message}. The input is unchanged.", ex);
        }
        finally
        {
            if (!promoted || Directory.Exists(tempDir))
            {
                try { if (Directory.Exists(tempDir)) Directory.Delete(tempDir, recursive: true); }
                catch (IOException) { }
                catch (UnauthorizedAccessException) { }
            }
        }
    }

    /// <summary>An exception's message without the " (Parameter 'x')" suffix of argument exceptions.</summary>
    internal static string PlainMessage(Exception ex) => ex is ArgumentException { ParamName: { } p }
        ? ex.Message.Replace($" (Parameter '{p}')", "", StringComparison.Ordinal) : ex.Message;

    private static bool IsDiskFull(IOException ex) => ex.HResult == 28 || (ex.HResult & 0xFFFF) == 28 || ex.HResult == unchecked((int)0x80070070)
        || ex.Message.Contains("No space left", StringComparison.OrdinalIgnoreCase);

    private static IEnumerable<string> OutputNames(PlanItem item, TensorQuantizationReport r)
    {
        yield return item.Info.Name;
        if (item.Action == Action.Quantize && item.Spec!.Type.IsInteger())
        {
            yield return item.Info.Name + QuantizedCheckpoint.ScaleSuffix;
            if (item.Spec.HasZeroPoint) yield return item.Info.Name + QuantizedCheckpoint.ZeroPointSuffix;
        }
    }

    private static void CopySideFiles(CheckpointSource source, string tempDir, JsonObject weightMap, List<TensorQuantizationReport> reports)
    {
        foreach (string f in Directory.EnumerateFiles(source.Path))
        {
            string name = Path.GetFileName(f);
            if (name.EndsWith(".safetensors", StringComparison.Ordinal) || name.EndsWith(".safetensors.index.json", StringComparison.Ordinal)
                || name.StartsWith('.')) continue;
            File.Copy(f, Path.Combine(tempDir, name));
        }
        if (source.IndexPath is not null || source.Shards.Count > 1)
        {
            string indexName = source.IndexPath is not null ? Path.GetFileName(source.IndexPath) : "model.safetensors.index.json";
            long totalSize = Directory.EnumerateFiles(tempDir, "*.safetensors").Sum(f =>
            {
                using var st = SafetensorsFile.Open(f);
                return st.Tensors.Sum(t => t.ByteLength);
            });
            var index = new JsonObject
            {
                ["metadata"] = new JsonObject { ["total_size"] = totalSize, ["quantsharp.format"] = QuantizedCheckpoint.FormatName },
                ["weight_map"] = weightMap,
            };
            string tmp = Path.Combine(tempDir, indexName);
            File.WriteAllText(tmp, index.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        }
        _ = reports;
    }

    private static void Copy(SafetensorsStreamWriter w, PlanItem item, ref long done, long total, IProgress<CheckpointProgress>? progress, CancellationToken ct)
    {
        var info = item.Info;
        w.BeginTensor(info.Name, info.DType, info.Shape);
        var buffer = new byte[(int)Math.Min(Math.Max(info.ByteLength, 1), 8 << 20)];
        for (long off = 0; off < info.ByteLength;)
        {
            ct.ThrowIfCancellationRequested();
            int n = (int)Math.Min(buffer.Length, info.ByteLength - off);
            CheckpointSource.ReadRange(item.Shard, info, off, buffer.AsSpan(0, n));
            w.Append(buffer.AsSpan(0, n));
            off += n;
            done += n;
            progress?.Report(new CheckpointProgress(done, total, info.Name));
        }
        w.EndTensor();
    }

    /// <summary>How a tensor is cut into chunks of whole rows (dimension 0) that quantize independently.</summary>
    internal static (long Rows, long RowsPerChunk) ChunkPlan(long[] shape, QuantSpec spec)
    {
        if (!IsRowwise(shape, spec)) return (1, 1);
        long rowElems = shape[1..].Aggregate(1L, (a, b) => a * b);
        return (shape[0], Math.Max(1, ChunkElements / Math.Max(1, rowElems)));
    }

    /// <summary>Reads rows [r0, r1) (or the whole tensor) as float32: exact for F32, F16 and BF16 inputs.</summary>
    /// <param name="shard">The shard.</param>
    /// <param name="info">The tensor.</param>
    /// <param name="r0">First row.</param>
    /// <param name="r1">End row (exclusive).</param>
    /// <param name="rowwise">False: the whole tensor.</param>
    /// <param name="reuse">A float32 tensor of exactly the chunk's shape to fill instead of allocating (fresh native
    /// allocations are slow on these VMs); the caller owns it.</param>
    internal static Tensor ReadRowsFloat32(CheckpointSource.Shard shard, SafetensorsTensorInfo info, long r0, long r1, bool rowwise, Tensor? reuse = null)
    {
        long[] shape = rowwise ? [r1 - r0, .. info.Shape[1..]] : info.Shape;
        long rowBytes = rowwise ? info.ByteLength / Math.Max(1, info.Shape[0]) : 0;
        if (info.DType is not (SafetensorsDType.F16 or SafetensorsDType.BF16 or SafetensorsDType.F32))
        {
            using var t = ReadRows(shard, info, r0, r1, rowwise);
            return t.to(ScalarType.Float32);
        }
        bool canReuse = reuse is not null && reuse.dtype == ScalarType.Float32 && reuse.shape.SequenceEqual(shape);
        var result = canReuse ? reuse!.alias() : torch.empty(shape, ScalarType.Float32);
        long n = result.numel();
        if (n == 0) return result;
        var dst = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(result.bytes);
        if (info.DType == SafetensorsDType.F32)
        {
            CheckpointSource.ReadRange(shard, info, r0 * rowBytes, result.bytes);
            return result;
        }
        var half = System.Buffers.ArrayPool<ushort>.Shared.Rent((int)n);
        try
        {
            var h = half.AsSpan(0, (int)n);
            CheckpointSource.ReadRange(shard, info, r0 * rowBytes, System.Runtime.InteropServices.MemoryMarshal.AsBytes(h));
            if (info.DType == SafetensorsDType.BF16) Kernels.HalfKernel.FromBFloat16(h, dst);
            else Kernels.HalfKernel.FromHalf(h, dst);
        }
        finally { System.Buffers.ArrayPool<ushort>.Shared.Return(half); }
        return result;
    }

    /// <summary>True when rows (dimension 0) quantize independently given the (global) parameters.</summary>
    internal static bool IsRowwise(long[] shape, QuantSpec spec)
        => shape.Length >= 2 && (!spec.Type.IsInteger() || spec.Granularity is PerTensor or PerAxis { Axis: 0 } or PerGroup);

    /// <summary>Reads rows [r0, r1) of a tensor (or the whole tensor when <paramref name="rowwise"/> is false).</summary>
    internal static Tensor ReadRows(CheckpointSource.Shard shard, SafetensorsTensorInfo info, long r0, long r1, bool rowwise)
    {
        var type = info.DType.ToScalarType() ?? throw new NotSupportedException($"Tensor '{info.Name}' has dtype {info.DType}, which TorchSharp cannot hold.");
        long[] shape = rowwise ? [r1 - r0, .. info.Shape[1..]] : info.Shape;
        long rowBytes = rowwise ? info.ByteLength / Math.Max(1, info.Shape[0]) : 0;
        var t = torch.empty(shape, type);
        if (t.numel() > 0) CheckpointSource.ReadRange(shard, info, r0 * rowBytes, t.bytes);
        return t;
    }

    private static (TensorQuantizationReport, QuantizedLayerInfo) QuantizeOne(QuantizedCheckpointWriter writer, PlanItem item, RecipePlanner s,
        string fileName, ref long done, long total, IProgress<CheckpointProgress>? progress, CancellationToken ct)
    {
        var info = item.Info;
        var spec = item.Spec!;
        string name = info.Name;
        long[] storedShape = WeightGeometry.StorageShape(spec.Type, info.Shape);
        var layout = CheckpointLayout.For(spec.Type, spec.Granularity, storedShape);
        string observer = Observer(s);
        bool validate = s.Recipe.Validation.Enabled;
        var (rows, rowsPerChunk) = ChunkPlan(info.Shape, spec);
        // Observers other than min/max (percentile, histogram...) see the whole tensor at once.
        bool useObserver = spec.Type.IsInteger() && observer != "minmax";
        bool rowwise = IsRowwise(info.Shape, spec) && !useObserver;
        long chunkCount = rowwise ? (rows + rowsPerChunk - 1) / rowsPerChunk : 1;
        long rowBytes = rowwise ? info.ByteLength / Math.Max(1, rows) : info.ByteLength;
        var problems = new List<string>();

        // Per-tensor integer quantization needs the global range first.
        float[]? ptScale = null; int[]? ptZero = null;
        if (spec.Type.IsInteger() && spec.Granularity is PerTensor && !useObserver)
        {
            float min = float.PositiveInfinity, max = float.NegativeInfinity;
            for (long c = 0; c < chunkCount; c++)
            {
                ct.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                long r0 = c * rowsPerChunk, r1 = rowwise ? Math.Min(rows, r0 + rowsPerChunk) : 1;
                var x = ReadRowsFloat32(item.Shard, info, r0, r1, rowwise);
                RequireFinite(x, name);
                var (cmin, cmax) = TensorChecks.MinMax(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(x.bytes));
                min = Math.Min(min, cmin);
                max = Math.Max(max, cmax);
            }
            var (sc, zp) = QParams.Choose(min, max, spec.Range, spec.Scheme);
            ptScale = [sc]; ptZero = [zp];
        }

        var sqnr = new SqnrAccumulator();
        // One float32 chunk buffer reused for every full chunk of this tensor.
        using var buffer = rowwise && chunkCount > 1 ? torch.empty([rowsPerChunk, .. info.Shape[1..]], ScalarType.Float32) : null;
        var scaleParts = new List<Tensor>();
        var zeroParts = new List<Tensor>();
        long stored = 0;
        try
        {
            writer.Raw.BeginTensor(name, layout.DataDType, layout.DataShape);
            for (long c = 0; c < chunkCount; c++)
            {
                ct.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                long r0 = c * rowsPerChunk, r1 = rowwise ? Math.Min(rows, r0 + rowsPerChunk) : 1;
                bool exact = info.DType is SafetensorsDType.F32 or SafetensorsDType.F16 or SafetensorsDType.BF16;
                var xf = ReadRowsFloat32(item.Shard, info, r0, r1, rowwise, buffer);
                if (ptScale is null) RequireFinite(xf, name);
                // The quantizer sees the stored view: rows of the [d0, K] matrix for an integer weight of rank > 2.
                var xs = xf.dim() > 2 && spec.Type.IsInteger() ? xf.reshape(xf.shape[0], -1) : xf;
                using var q = ptScale is not null ? QuantizedTensor.QuantizeWith(xs, spec, ptScale, ptZero!) : WeightQuantization.Quantize(xs, spec, observer, name);
                var data = q.Data.contiguous();
                writer.Raw.Append(data.numel() == 0 ? [] : data.bytes);
                stored += data.numel() * data.element_size();
                if (spec.Type.IsInteger())
                {
                    if (ptScale is null || c == 0)
                    {
                        scaleParts.Add(q.Scale!.detach().clone().DetachFromDisposeScope());
                        if (q.ZeroPoint is not null) zeroParts.Add(q.ZeroPoint.detach().clone().DetachFromDisposeScope());
                    }
                    if (validate)
                    {
                        foreach (var p in TensorChecks.CheckParts(name, spec.Type, spec.Range, q.Data, q.Scale, q.ZeroPoint))
                            if (!problems.Contains(p)) problems.Add(p);
                    }
                }
                if (validate)
                {
                    using var deq = q.Dequantize();
                    if (exact)
                    {
                        sqnr.Add(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(xf.bytes),
                            System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(deq.bytes));
                    }
                    else
                    {
                        using var x64 = ReadRows(item.Shard, info, r0, r1, rowwise); // F64: compare with the original values
                        sqnr.Add(x64, deq);
                    }
                }
                done += (r1 - r0) * rowBytes;
                progress?.Report(new CheckpointProgress(done, total, name));
            }
            writer.Raw.EndTensor();

            if (spec.Type.IsInteger())
            {
                using var scope = NewDisposeScope();
                var scale = (scaleParts.Count == 1 ? scaleParts[0] : cat(scaleParts, 0)).contiguous().reshape(layout.ScaleShape);
                writer.Raw.Add(name + QuantizedCheckpoint.ScaleSuffix, SafetensorsDType.F32, layout.ScaleShape, scale.numel() == 0 ? [] : scale.bytes);
                stored += scale.numel() * 4;
                if (zeroParts.Count > 0)
                {
                    var zero = (zeroParts.Count == 1 ? zeroParts[0] : cat(zeroParts, 0)).to(ScalarType.Int32).contiguous().reshape(layout.ScaleShape);
                    writer.Raw.Add(name + QuantizedCheckpoint.ZeroPointSuffix, SafetensorsDType.I32, layout.ScaleShape, zero.numel() == 0 ? [] : zero.bytes);
                    stored += zero.numel() * 4;
                }
            }
        }
        finally
        {
            foreach (var t in scaleParts) t.Dispose();
            foreach (var t in zeroParts) t.Dispose();
        }

        double? db = validate ? sqnr.Db : null;
        double threshold = s.Recipe.Validation.ThresholdFor(spec.Type);
        if (db is double d && d < threshold)
            problems.Add($"'{name}': SQNR {d:0.00} dB is below the {spec.Type.ToName()} threshold {threshold:0.##} dB.");
        var layer = new QuantizedLayerInfo(info.DType, info.Shape, spec.Type,
            spec.Type.IsInteger() ? spec.Scheme : null, spec.Type.IsInteger() ? spec.Granularity : null,
            spec.ReduceRange, spec.Type.IsInteger() ? observer : null, db);
        writer.RecordLayer(name, layer);
        return (new TensorQuantizationReport(name, fileName, true, spec, info.DType, info.Shape, info.ByteLength, stored, db,
            validate ? threshold : null, problems, item.Fallback), layer);
    }

    private static void RequireFinite(Tensor x, string name)
    {
        long bad = TensorChecks.NonFiniteCount(x);
        if (bad > 0)
            throw new CheckpointQuantizationException(
                $"Tensor '{name}' contains {bad} NaN or infinite value(s); it cannot be quantized. Fix the checkpoint, or exclude the tensor (--exclude '{name}') to copy it unchanged.");
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
            using var source = CheckpointSource.Open(path);
            var shard = source.Shards[0];
            var names = shard.File.Tensors.Select(t => t.Name).ToHashSet(StringComparer.Ordinal);
            foreach (var n in written.Keys.Where(n => !names.Contains(n))) problems.Add($"{fileName}: reload: tensor '{n}' is missing.");
            foreach (var n in names.Where(n => !written.ContainsKey(n))) problems.Add($"{fileName}: reload: unexpected tensor '{n}'.");
            var readLayers = QuantizedCheckpoint.ReadLayers(path, shard.File.Metadata);
            if (!readLayers.Keys.ToHashSet().SetEquals(layers.Keys))
                problems.Add($"{fileName}: reload: the per-layer metadata lists {readLayers.Count} tensors, {layers.Count} were quantized.");
            foreach (var (name, info) in readLayers)
            {
                var layout = CheckpointLayout.For(info);
                var d = shard.File.GetInfo(name);
                if (d.DType != layout.DataDType || !d.Shape.SequenceEqual(layout.DataShape))
                    problems.Add($"{fileName}: reload: '{name}' is {d.DType} [{string.Join(", ", d.Shape)}], expected {layout.DataDType} [{string.Join(", ", layout.DataShape)}].");
            }
            var buffer = new byte[8 << 20];
            foreach (var t in shard.File.Tensors)
            {
                if (!written.TryGetValue(t.Name, out var expected)) continue;
                using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
                for (long off = 0; off < t.ByteLength;)
                {
                    int n = (int)Math.Min(buffer.Length, t.ByteLength - off);
                    CheckpointSource.ReadRange(shard, t, off, buffer.AsSpan(0, n));
                    h.AppendData(buffer, 0, n);
                    off += n;
                }
                if (!h.GetHashAndReset().AsSpan().SequenceEqual(expected))
                    problems.Add($"{fileName}: reload: the bytes of '{t.Name}' read back differ from those written.");
            }
        }
        catch (Exception ex) when (ex is InvalidDataException or IOException)
        {
            problems.Add($"{fileName}: reload: the strict reader refuses the written file: {ex.Message}");
        }
        return problems;
    }
}
