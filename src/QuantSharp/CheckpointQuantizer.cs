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

    /// <summary>The longest row (slice along dimension 0) a quantized tensor may have: one float32 span under 2 GiB.</summary>
    internal const long MaxRowElements = int.MaxValue / sizeof(float);

    private enum Action { Copy, Quantize }

    private sealed record PlanItem(SafetensorsFile Shard, SafetensorsTensorInfo Info, Action Action, QuantSpec? Spec, string? Fallback = null);

    /// <summary>Quantizes <paramref name="input"/> into <paramref name="output"/>.</summary>
    /// <param name="input">A <c>.safetensors</c> file or a folder of shards (never modified).</param>
    /// <param name="output">The output file (for a file input) or folder (for a folder input); written atomically:
    /// it appears only complete and validated (per the failure policy).</param>
    /// <param name="recipe">The recipe (null: <see cref="QuantizationRecipe.Int8WeightOnly"/>). Module-type filters
    /// are refused (a checkpoint has no modules); activation settings are ignored (no activations without a model).</param>
    /// <param name="progress">Receives progress (input bytes).</param>
    /// <param name="cancellationToken">Cancels between chunks (nothing is left behind).</param>
    /// <param name="overwrite">Replace an existing output (a regular, writable file, or a folder); without it an
    /// existing output is refused. Symbolic links, devices and other special files are never replaced.</param>
    /// <returns>The report.</returns>
    /// <exception cref="RecipeException">An invalid recipe, or one a tensor cannot take (strict group size...).</exception>
    /// <exception cref="CheckpointQuantizationException">Bad input, settings or paths; an I/O failure (disk full...).</exception>
    /// <exception cref="CheckpointValidationException">Validation failed under <see cref="ValidationFailureMode.Error"/>.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled (the temporary files are removed).</exception>
    public static QuantizationReport Quantize(string input, string output, QuantizationRecipe? recipe = null,
        IProgress<CheckpointProgress>? progress = null, CancellationToken cancellationToken = default, bool overwrite = false)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(output);
        var sw = Stopwatch.StartNew();
        var s = new RecipePlanner(recipe ?? new QuantizationRecipe());
        if (QuantizationPipeline.WeightQuantizerFor(s.Recipe) is { Sequential: true } sequential)
            throw new CheckpointQuantizationException($"The weight quantization method '{sequential.Method}' needs each layer's inputs, which only the model gives; " +
                "a checkpoint has no model. Set \"method\": \"rtn\" (round to nearest) to quantize the checkpoint, or quantize the model with " +
                "Quantizer.Quantize and calibration data, then Quantizer.Save.");
        if (s.Recipe.HasModuleTypeFilters)
            throw new CheckpointQuantizationException("The recipe filters by module type (ModuleTypes, ExcludeModuleTypes or an override's module_type), " +
                "but a checkpoint has no modules. Select the tensors by name (include/exclude patterns) instead.");

        if (string.IsNullOrWhiteSpace(input))
            throw new CheckpointQuantizationException("The input path is empty. Give a .safetensors file or a folder of shards.");
        if (string.IsNullOrWhiteSpace(output))
            throw new CheckpointQuantizationException("The output path is empty. Give an output file (for a file input) or a new folder (for a folder input).");
        // Every component but the last resolved ('..' applied after a link, as the kernel does), so that the output
        // lands where the shell would put it; the last one stays, so that a link there is seen (and never replaced).
        string inFull, outFull;
        try
        {
            inFull = PathIdentity.ResolveParent(input);
            outFull = PathIdentity.ResolveParent(output);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new CheckpointQuantizationException($"Cannot resolve the paths '{input}' and '{output}': {PlainMessage(ex)}", ex);
        }
        ShardedCheckpoint source;
        try { source = ShardedCheckpoint.Open(inFull); }
        catch (Exception ex) when (ex is IOException or SafetensorsFormatException or UnauthorizedAccessException)
        {
            throw new CheckpointQuantizationException($"Cannot read input '{input}': {ex.Message}", ex);
        }
        using (source)
        {
            try { CheckPaths(source, inFull, outFull, input, output, overwrite); }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                throw new CheckpointQuantizationException($"Cannot check the paths '{input}' and '{output}': {ex.Message}", ex);
            }
            var plan = MakePlan(source, s);
            var recipeWarnings = RecipeWarnings(plan, s);
            if (s.StrictRefusal(recipeWarnings) is { } refusal) throw new RecipeException(refusal);
            return Run(source, plan, s, recipeWarnings, inFull, outFull, progress, cancellationToken, sw);
        }
    }

    private static void CheckPaths(ShardedCheckpoint source, string inFull, string outFull, string input, string output, bool overwrite)
    {
        // Identity by real paths (every component's link resolved) or device and inode: any spelling of the input is caught.
        if (source.IsFolder) inFull = source.Path; // an index given: its folder is the input
        if (PathIdentity.Same(inFull, outFull))
            throw new CheckpointQuantizationException($"The output '{output}' is the input '{input}' (the same {(source.IsFolder ? "folder" : "file")}, " +
                $"resolved to '{PathIdentity.RealPath(inFull)}'); quantizing in place would destroy the original. Choose another output path.");
        foreach (string file in source.Files.Select(f => f.Path).Append(source.IndexPath).OfType<string>())
        {
            if (PathIdentity.Same(file, outFull))
                throw new CheckpointQuantizationException($"The output '{output}' is the input {(file == source.IndexPath ? "index" : "shard")} '{file}'. Choose another output path.");
            if (PathIdentity.IsWithin(file, outFull))
                throw new CheckpointQuantizationException($"The output '{output}' contains the input {(file == source.IndexPath ? "index" : "shard")} '{file}'; replacing it would delete the input. Choose another output path.");
        }
        if (PathIdentity.IsWithin(inFull, outFull))
            throw new CheckpointQuantizationException($"The output '{output}' contains the input '{input}'; replacing it would delete the input. Choose another output path.");
        if (source.IsFolder && PathIdentity.IsWithin(outFull, inFull))
            throw new CheckpointQuantizationException($"The output folder '{output}' is inside the input folder '{input}'. Choose a folder outside it.");

        var kind = PathIdentity.Kind(outFull);
        string wanted = source.IsFolder ? "folder" : "file";
        switch (kind)
        {
            case EntryKind.Missing:
                return;
            case EntryKind.SymbolicLink or EntryKind.Other:
                throw new CheckpointQuantizationException($"The output '{output}' exists and is {(kind == EntryKind.SymbolicLink ? "a symbolic link" : "a device, FIFO or socket")}, " +
                    $"not a regular {wanted}; QuantSharp never replaces one. Remove it or choose another output path.");
            case EntryKind.Directory when !source.IsFolder:
                throw new CheckpointQuantizationException($"The output '{output}' is a folder; for a single-file input give an output file name, e.g. '{Path.Combine(output, Path.GetFileName(inFull))}'.");
            case EntryKind.RegularFile when source.IsFolder:
                throw new CheckpointQuantizationException($"The input is a folder of shards, so the output must be a folder, but '{output}' is a file.");
            case EntryKind.Directory when !Directory.EnumerateFileSystemEntries(outFull).Any():
                return; // an empty folder made for the output: nothing to lose
        }
        if (!overwrite)
            throw new CheckpointQuantizationException($"The output {wanted} '{output}' exists{(source.IsFolder ? " and is not empty" : "")}. " +
                "Pass --overwrite (Quantize(..., overwrite: true)) to replace it, or choose another output path.");
        if (kind == EntryKind.RegularFile && new FileInfo(outFull).IsReadOnly)
            throw new CheckpointQuantizationException($"The output file '{output}' exists and is read-only; QuantSharp does not replace it even with --overwrite. " +
                "Make it writable or choose another output path.");
    }

    /// <summary>
    /// What is probably a mistake in the recipe, against this checkpoint: settings that do not apply, include or override
    /// patterns that match no tensor, and a selection that quantizes nothing (with the reason).
    /// </summary>
    private static List<string> RecipeWarnings(List<PlanItem> plan, RecipePlanner s)
    {
        var warnings = s.IneffectiveSettings().ToList();
        var names = plan.Select(p => p.Info.Name).ToList();
        var patterns = s.Recipe.Include.Select(p => (Pattern: p, What: "include")).Concat(s.Recipe.Overrides.Select(o => (o.Pattern, What: "override")));
        foreach (var (pattern, what) in patterns)
        {
            var glob = new Selection.Glob(pattern);
            if (!names.Any(n => QuantizationRecipe.NameMatches(glob, n)))
                warnings.Add($"the {what} pattern '{pattern}' matches no tensor of the checkpoint and has no effect; check its spelling " +
                    "(fnmatch globs on full tensor names or their prefix before the last dot, e.g. 'model.layers.*.mlp.*').");
        }
        if (names.Count > 0 && plan.All(p => p.Action == Action.Copy))
            warnings.Add($"nothing was quantized: {NothingReason(plan, s)}; the output is a copy of the input.");
        return warnings;
    }

    private static string NothingReason(List<PlanItem> plan, RecipePlanner s)
    {
        if (plan.All(p => s.ExcludedBy(p.Info.Name) is not null))
            return $"every tensor is excluded (exclude: {string.Join(", ", s.Recipe.Exclude.Select(e => $"'{e}'"))})";
        if (s.HasInclude)
            return "the include patterns select no floating-point tensor with elements outside the exclude patterns";
        var weights = plan.Where(p => p.Info.DType.IsFloatingPoint() && p.Info.Name.EndsWith(".weight", StringComparison.Ordinal) && p.Info.Shape.Length >= 2
            && s.ExcludedBy(p.Info.Name) is null).ToList();
        if (weights.Count == 0)
            return "the checkpoint has no floating-point '*.weight' tensor of rank 2 or more outside the exclude patterns (what is quantized by default); select tensors with include patterns";
        var largest = weights.MaxBy(p => p.Info.ElementCount)!.Info;
        return $"min_elements {s.Recipe.MinElements:N0} is above every weight's size (the largest, '{largest.Name}', has {largest.ElementCount:N0} elements); lower it";
    }

    private static List<PlanItem> MakePlan(ShardedCheckpoint source, RecipePlanner s)
    {
        var plan = new List<PlanItem>();
        foreach (var shard in source.Files)
        {
            if (shard.Metadata.ContainsKey(QuantizedCheckpoint.FormatKey))
                throw new CheckpointQuantizationException($"'{shard.Path}' is already a QuantSharp quantized checkpoint; quantize the original instead.");
            // The output header carries the input's metadata plus ours (format, versions, settings, per-layer entries:
            // never under 256 bytes): refuse before any work what cannot fit the format's limit (the writer checks again).
            if (shard.DataStart - 8 + 256 > SafetensorsHeader.MaxHeaderLength)
                throw new CheckpointQuantizationException($"'{shard.Path}' has a {shard.DataStart - 8:N0}-byte header (mostly metadata); with the quantization " +
                    $"metadata added the output header would exceed the format's limit of {SafetensorsHeader.MaxHeaderLength:N0} bytes. Remove most of the input's metadata and retry.");
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
            catch (Exception ex) when (ex is ArgumentException or NotSupportedException or RecipeException)
            {
                string message = $"Tensor '{name}' ({info.DType} [{string.Join(", ", info.Shape)}]) cannot be quantized as {spec}: {PlainMessage(ex)} " +
                    $"Change the settings for it (an override in --config) or exclude it (--exclude '{name}').";
                throw ex is RecipeException ? new RecipeException(message, ex) : new CheckpointQuantizationException(message, ex);
            }
            foreach (string suffix in new[] { QuantizedCheckpoint.ScaleSuffix, QuantizedCheckpoint.ZeroPointSuffix })
            {
                if (source.Contains(name + suffix))
                    throw new CheckpointQuantizationException(
                        $"Tensor '{name}' cannot be quantized: the checkpoint already has a tensor named '{name + suffix}', the name its quantization parameters need. Exclude '{name}'.");
            }
            // Tensors are read in chunks of whole rows (slices along dimension 0; a 1-D tensor is one row): a row must fit one span.
            long rowElements = info.Shape.Length >= 2 ? info.Shape[1..].Aggregate(1L, (a, b) => a * b) : info.ElementCount;
            if (rowElements > MaxRowElements)
                throw new CheckpointQuantizationException(
                    $"Tensor '{name}' ({info.DType} [{string.Join(", ", info.Shape)}]) has {rowElements:N0} elements per row (slice along dimension 0); " +
                    $"QuantSharp quantizes in chunks of whole rows and a row must stay under 2 GiB as float32 ({MaxRowElements:N0} elements). " +
                    $"Exclude it (--exclude '{name}') to copy it unchanged.");
            plan.Add(new PlanItem(shard, info, Action.Quantize, spec, fallback));
        }
        return plan;
    }

    private static string Observer(RecipePlanner s) => QuantizationRecipe.NormalizeObserver(s.Recipe.WeightObserver);

    private static QuantizationReport Run(ShardedCheckpoint source, List<PlanItem> plan, RecipePlanner s, List<string> recipeWarnings,
        string inFull, string outFull, IProgress<CheckpointProgress>? progress, CancellationToken ct, Stopwatch sw)
    {
        var reports = new List<LayerReport>();
        var problems = new List<string>();
        var unrepresentable = new List<string>(); // infinite or NaN outputs: refused under every failure mode
        long total = plan.Sum(p => p.Info.ByteLength), done = 0;
        JsonObject config = s.Recipe.ToJsonNode();
        var validation = s.Recipe.Validation;
        var weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
        AtomicOutput? atomic = null;
        var stamps = source.Files.Select(f => (f.Path, Stamp: Stamp(f.Path))).ToList();
        try
        {
            atomic = AtomicOutput.Create(outFull);
            string tempDir = atomic.TempFolder;
            foreach (var shard in source.Files)
            {
                string fileName = Path.GetFileName(source.IsFolder ? shard.Path : outFull);
                string shardPath = Path.Combine(tempDir, fileName);
                var items = plan.Where(p => p.Shard == shard).ToList();
                IReadOnlyDictionary<string, byte[]> hashes;
                var layers = new Dictionary<string, QuantizedLayerInfo>(StringComparer.Ordinal);
                using (var writer = new QuantizedCheckpointWriter(shardPath, items.Count * 3, shard.DataStart, shard.Metadata, config))
                {
                    foreach (var item in items)
                    {
                        ct.ThrowIfCancellationRequested();
                        LayerReport r;
                        if (item.Action == Action.Copy)
                        {
                            Copy(writer.Raw, item, ref done, total, progress, ct);
                            r = LayerReport.Copied(item.Info, fileName, []);
                        }
                        else
                        {
                            var (tr, info) = QuantizeOne(writer, item, s, fileName, unrepresentable, ref done, total, progress, ct);
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
            ct.ThrowIfCancellationRequested(); // a signal during the last chunk still leaves nothing behind
            foreach (var (path, stamp) in stamps)
            {
                if (Stamp(path) != stamp)
                    throw InputChanged(path, "its size or modification time changed during the run", null);
            }
            var warnings = new List<string>(recipeWarnings);
            if (source.IsFolder) CopySideFiles(source, tempDir, weightMap, warnings);

            foreach (var p in unrepresentable)
                if (!problems.Contains(p)) problems.Add(p);
            bool write = problems.Count == 0 || (validation.OnFailure != ValidationFailureMode.Error && unrepresentable.Count == 0);
            long outBytes = 0;
            if (write)
            {
                outBytes = Directory.EnumerateFiles(tempDir).Sum(f => new FileInfo(f).Length);
                atomic.Promote(source.IsFolder ? null : Path.GetFileName(outFull));
            }
            var report = new QuantizationReport
            {
                Input = inFull, Output = outFull, Layers = reports, Problems = problems, Validated = validation.Enabled, Written = write,
                InputFileBytes = source.TotalFileBytes, OutputFileBytes = outBytes, Elapsed = sw.Elapsed, RunWarnings = warnings,
                OriginalBytes = reports.Sum(r => r.OriginalBytes), StoredBytes = reports.Sum(r => r.StoredBytes),
                ReloadCheck = !validation.Enabled || !validation.ReloadCheck ? CheckStatus.NotRun
                    : problems.Any(p => p.Contains(": reload: ", StringComparison.Ordinal)) ? CheckStatus.Failed : CheckStatus.Passed,
            };
            if (!write) throw new CheckpointValidationException(report);
            return report;
        }
        catch (SafetensorsFormatException ex) when (ex.Rule == SafetensorsRule.HeaderTooLarge)
        {
            throw new CheckpointQuantizationException($"Cannot write '{outFull}': {ex.Message}. The input's own metadata is carried over; " +
                "remove most of it from the input (or quantize fewer tensors) and retry. The input is unchanged.", ex);
        }
        catch (SafetensorsFormatException ex) when (ex.Rule == SafetensorsRule.BufferSizeMismatch)
        {
            throw InputChanged(ex.FilePath ?? inFull, "it is now shorter than its header says", ex); // truncated after it was opened
        }
        catch (IOException ex)
        {
            bool full = IsDiskFull(ex);
            bool readOnly = !full && (ex.HResult == 30 || ex.Message.Contains("Read-only file system", StringComparison.OrdinalIgnoreCase)); // EROFS
            throw new CheckpointQuantizationException(
                $"Writing '{outFull}' failed: {ex.Message}{(full ? " (the disk is full)" : readOnly ? " (the file system is read-only)" : "")}. " +
                $"Nothing was written under '{outFull}' and the temporary files were removed; the input is unchanged. " +
                (full ? "Free some space or choose another output folder and retry."
                      : readOnly ? "Choose an output folder on a writable file system (or remount it read-write) and retry."
                      : $"Check that '{Path.GetDirectoryName(outFull)}' is writable (permissions) or choose another output folder."), ex);
        }
        catch (UnauthorizedAccessException ex)
        {
            throw new CheckpointQuantizationException($"Cannot write '{outFull}': {ex.Message}. The input is unchanged.", ex);
        }
        finally
        {
            atomic?.Dispose();
        }
    }

    private static (long Length, DateTime Modified) Stamp(string path)
    {
        var f = new FileInfo(path);
        return f.Exists ? (f.Length, f.LastWriteTimeUtc) : (-1, default);
    }

    private static CheckpointQuantizationException InputChanged(string path, string detail, Exception? inner) => new(
        $"The input '{path}' changed while it was being quantized ({detail}); the result would mix old and new data, so nothing was written " +
        "and the temporary files were removed. Make sure no other program writes the input (a download still running, a copy), then retry.", inner);

    /// <summary>An exception's message without the " (Parameter 'x')" suffix of argument exceptions.</summary>
    internal static string PlainMessage(Exception ex) => ex is ArgumentException { ParamName: { } p }
        ? ex.Message.Replace($" (Parameter '{p}')", "", StringComparison.Ordinal) : ex.Message;

    private static bool IsDiskFull(IOException ex) => ex.HResult == 28 || (ex.HResult & 0xFFFF) == 28 || ex.HResult == unchecked((int)0x80070070)
        || ex.Message.Contains("No space left", StringComparison.OrdinalIgnoreCase);

    private static IEnumerable<string> OutputNames(PlanItem item, LayerReport r)
    {
        yield return item.Info.Name;
        if (item.Action == Action.Quantize && item.Spec!.Type.IsInteger())
        {
            yield return item.Info.Name + QuantizedCheckpoint.ScaleSuffix;
            if (item.Spec.HasZeroPoint) yield return item.Info.Name + QuantizedCheckpoint.ZeroPointSuffix;
        }
    }

    /// <summary>
    /// Copies the input folder's other files (config.json, tokenizer...): regular files only. Symbolic links are not
    /// followed (a downloaded checkpoint's <c>tokenizer.json -> /etc/shadow</c> would copy a host file into an output
    /// that may be published), devices, FIFOs and sockets are not read, subfolders are not copied; each is named in
    /// <paramref name="warnings"/>.
    /// </summary>
    private static void CopySideFiles(ShardedCheckpoint source, string tempDir, Dictionary<string, string> weightMap, List<string> warnings)
    {
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
                CheckpointIndex.ToBytes(weightMap, totalSize, new Dictionary<string, string> { [QuantizedCheckpoint.FormatKey] = QuantizedCheckpoint.FormatName }));
        }
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
            item.Shard.ReadRange(info, off, buffer.AsSpan(0, n));
            w.Append(buffer.AsSpan(0, n));
            off += n;
            done += n;
            progress?.Report(new CheckpointProgress(done, total, info.Name));
        }
        w.EndTensor();
    }

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
    /// first pass over the chunks (<see cref="ObserveInChunks"/>).
    /// </summary>
    internal static bool IsRowwise(long[] shape) => shape.Length >= 2;

    /// <summary>True when each row has scales of its own (per-channel on axis 0, groups); otherwise every chunk uses all of them.</summary>
    internal static bool HasRowScales(QuantSpec spec) => spec.Type.IsInteger() && spec.Granularity is PerAxis { Axis: 0 } or PerGroup;

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
            ReadFloat32(shard, info, r0 * rowElems, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(result.bytes));
        return result;
    }

    /// <summary>Reads elements [first, first + destination.Length) of a floating-point tensor as float32 (exact for F32,
    /// F16 and BF16; F64 rounded to nearest, as a cast).</summary>
    internal static void ReadFloat32(SafetensorsFile shard, SafetensorsTensorInfo info, long first, Span<float> destination)
    {
        int size = info.DType.ElementSize();
        if (info.DType == SafetensorsDType.F32)
        {
            shard.ReadRange(info, first * size, System.Runtime.InteropServices.MemoryMarshal.AsBytes(destination));
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
                if (info.DType == SafetensorsDType.BF16) Kernels.HalfKernel.FromBFloat16(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(bytes), dst);
                else if (info.DType == SafetensorsDType.F16) Kernels.HalfKernel.FromHalf(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(bytes), dst);
                else
                {
                    var d = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, double>(bytes);
                    for (int k = 0; k < n; k++) dst[k] = (float)d[k];
                }
                done += n;
            }
        }
        finally { System.Buffers.ArrayPool<byte>.Shared.Return(raw); }
    }

    /// <summary>A tensor of a checkpoint read as float32 chunks (one reused buffer), for observers' passes.</summary>
    private sealed class TensorFileChunks(SafetensorsFile shard, SafetensorsTensorInfo info, long[] shape, CancellationToken ct)
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

    /// <summary>
    /// The first pass for parameters that span rows: the weight's observer (min/max, moving average, histogram,
    /// percentile) fed the whole tensor in chunks, exactly as if it saw it at once (results do not depend on the chunk size).
    /// </summary>
    private static Observers.ObserverResult ObserveInChunks(PlanItem item, QuantSpec spec, string observer, long[] storedShape, CancellationToken ct)
    {
        string name = item.Info.Name;
        var o = (Observers.ObserverBase)WeightQuantization.CreateObserver(observer, spec, name);
        var values = new TensorFileChunks(item.Shard, item.Info, storedShape, ct);
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
            throw new CheckpointQuantizationException($"Tensor '{name}' cannot be quantized: {PlainMessage(ex)} Change its settings or exclude it (--exclude '{name}').", ex);
        }
    }

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

    private static (LayerReport, QuantizedLayerInfo) QuantizeOne(QuantizedCheckpointWriter writer, PlanItem item, RecipePlanner s,
        string fileName, List<string> unrepresentable, ref long done, long total, IProgress<CheckpointProgress>? progress, CancellationToken ct)
    {
        var info = item.Info;
        var spec = item.Spec!;
        string name = info.Name;
        long[] storedShape = WeightGeometry.StorageShape(spec.Type, info.Shape);
        var layout = CheckpointLayout.For(spec.Type, spec.Granularity, storedShape);
        var quantizer = QuantizationPipeline.WeightQuantizerFor(s.Recipe); // the quantize stage Quantizer uses too
        var planned = new PlannedWeight(name, info.Shape, spec, item.Fallback);
        string observer = quantizer.Method;
        bool validate = s.Recipe.Validation.Enabled;
        var (rows, rowsPerChunk) = ChunkPlan(info.Shape);
        bool rowwise = IsRowwise(info.Shape);
        long chunkCount = rowwise ? (rows + rowsPerChunk - 1) / rowsPerChunk : 1;
        long rowBytes = rowwise ? info.ByteLength / Math.Max(1, rows) : info.ByteLength;
        var problems = new List<string>();
        bool rangeOk = true;

        // Parameters that span rows (per-tensor, per-channel along another axis) or come from a whole-tensor observer
        // need a first pass over all chunks; min/max per row (per-channel on axis 0, groups) is found chunk by chunk.
        var global = spec.Type.IsInteger() && (observer != "minmax" || !HasRowScales(spec))
            ? ObserveInChunks(item, spec, observer, storedShape, ct) : null;
        long paramsPerRow = global is not null && HasRowScales(spec) ? global.Scale.Length / Math.Max(1, rows) : 0;

        var sqnr = new SqnrAccumulator();
        // One float32 chunk buffer reused for every full chunk of this tensor.
        using var buffer = rowwise && chunkCount > 1 ? torch.empty([rowsPerChunk, .. info.Shape[1..]], ScalarType.Float32) : null;
        var scaleParts = new List<Tensor>();
        var zeroParts = new List<Tensor>();
        long stored = 0;
        bool unrepresentableReported = false;
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
                if (global is null) RequireFinite(xf, name); // else checked by the first pass
                // The quantizer sees the stored view: rows of the [d0, K] matrix for an integer weight of rank > 2.
                var xs = xf.dim() > 2 && spec.Type.IsInteger() ? xf.reshape(xf.shape[0], -1) : xf;
                using var q = global is null ? quantizer.Quantize(planned, xs, null)
                    : paramsPerRow > 0 ? QuantizedTensor.QuantizeWith(xs, spec, global.Scale[(int)(r0 * paramsPerRow)..(int)(r1 * paramsPerRow)],
                        global.ZeroPoint[(int)(r0 * paramsPerRow)..(int)(r1 * paramsPerRow)])
                    : QuantizedTensor.QuantizeWith(xs, spec, global.Scale, global.ZeroPoint);
                var data = q.Data.contiguous();
                if (!unrepresentableReported && NonFiniteOutputs(q) is > 0 and var bad)
                {
                    unrepresentableReported = true;
                    string problem = $"'{name}': {bad} stored {(spec.Type.IsInteger() ? "scale(s)" : "value(s)")} would be infinite or NaN: " +
                        $"{spec.Type.ToName()} cannot hold this tensor's range{(spec.Type == QuantType.Float16 ? " (float16 ends at ±65,504)" : "")}. " +
                        $"Quantize it to another type (an override in --config, e.g. bfloat16 or int8) or exclude it (--exclude '{name}').";
                    problems.Add(problem);
                    unrepresentable.Add(problem);
                }
                writer.Raw.Append(data.numel() == 0 ? [] : data.bytes);
                stored += data.numel() * data.element_size();
                if (spec.Type.IsInteger())
                {
                    if (global is null)
                    {
                        scaleParts.Add(q.Scale!.detach().clone().DetachFromDisposeScope());
                        if (q.ZeroPoint is not null) zeroParts.Add(q.ZeroPoint.detach().clone().DetachFromDisposeScope());
                    }
                    if (validate)
                    {
                        foreach (var p in WeightChecks.RangeProblems(name, q))
                        {
                            rangeOk = false;
                            if (!problems.Contains(p)) problems.Add(p);
                        }
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
                if (global is not null)
                {
                    scaleParts.Add(torch.tensor(global.Scale).DetachFromDisposeScope());
                    if (spec.HasZeroPoint) zeroParts.Add(torch.tensor(global.ZeroPoint).DetachFromDisposeScope());
                }
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
        if (s.Recipe.Validation.SqnrProblem(spec.Type, db, null) is { } sqnrProblem) problems.Add($"'{name}': {sqnrProblem}.");
        var layer = new QuantizedLayerInfo(info.DType, info.Shape, spec.Type,
            spec.Type.IsInteger() ? spec.Scheme : null, spec.Type.IsInteger() ? spec.Granularity : null,
            spec.ReduceRange, spec.Type.IsInteger() ? observer : null, db);
        writer.RecordLayer(name, layer);
        return (LayerReport.ForTensor(info, fileName, spec, stored, db, validate ? threshold : null, problems, rangeOk, item.Fallback), layer);
    }

    /// <summary>Infinite or NaN values among what would be stored (float16/bfloat16 data, or integer scales).</summary>
    private static long NonFiniteOutputs(QuantizedTensor q)
        => q.Spec.Type.IsInteger() ? (q.Scale is null ? 0 : TensorChecks.NonFiniteCount(q.Scale)) : TensorChecks.NonFiniteCount(q.Data);

    private static void RequireFinite(Tensor x, string name)
    {
        long bad = TensorChecks.NonFiniteCount(x);
        if (bad > 0) throw NonFinite(name, bad);
    }

    private static CheckpointQuantizationException NonFinite(string name, long count) => new(
        $"Tensor '{name}' contains {count} NaN or infinite value(s); it cannot be quantized. Fix the checkpoint, or exclude the tensor (--exclude '{name}') to copy it unchanged.");

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
}
