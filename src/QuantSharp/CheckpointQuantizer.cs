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
            throw new CheckpointQuantizationException($"Cannot resolve the paths '{input}' and '{output}': {ExceptionText.Clause(ex)}.", ex);
        }
        ShardedCheckpoint source;
        try { source = ShardedCheckpoint.Open(inFull); }
        catch (Exception ex) when (ex is IOException or SafetensorsFormatException or UnauthorizedAccessException)
        {
            throw new CheckpointQuantizationException($"Cannot read input '{input}': {ExceptionText.Sentence(ex)}", ex);
        }
        using (source)
        {
            try { CheckPaths(source, inFull, outFull, input, output, overwrite); }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                throw new CheckpointQuantizationException($"Cannot check the paths '{input}' and '{output}': {ExceptionText.Sentence(ex)}", ex);
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

        // "out/" names a folder even where none exists yet (it was written as a file named "out").
        if (!source.IsFolder && Path.EndsInDirectorySeparator(output))
            throw new CheckpointQuantizationException($"The output '{output}' names a folder; for a single-file input give an output file name, e.g. '{Path.Combine(output, Path.GetFileName(inFull))}'.");
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
    private static List<string> RecipeWarnings(List<TensorPlan> plan, RecipePlanner s)
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
        if (names.Count > 0 && plan.All(p => p.Spec is null))
            warnings.Add($"nothing was quantized: {NothingReason(plan, s)}; the output is a copy of the input.");
        warnings.AddRange(WeightGeometry.StorageWarnings(plan.Where(p => p.Spec is not null).Select(p => new PlannedWeight(p.Info.Name, p.Info.Shape, p.Spec!, p.Fallback))));
        return warnings;
    }

    private static string NothingReason(List<TensorPlan> plan, RecipePlanner s)
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

    private static List<TensorPlan> MakePlan(ShardedCheckpoint source, RecipePlanner s)
    {
        var plan = new List<TensorPlan>();
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
            if (!quantize) { plan.Add(new TensorPlan(shard, info, null)); continue; }

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
                string message = $"Tensor '{name}' ({info.DType} [{string.Join(", ", info.Shape)}]) cannot be quantized as {spec}: {ExceptionText.Sentence(ex)} " +
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
            if (rowElements > CheckpointChunks.MaxRowElements)
                throw new CheckpointQuantizationException(
                    $"Tensor '{name}' ({info.DType} [{string.Join(", ", info.Shape)}]) has {rowElements:N0} elements per row (slice along dimension 0); " +
                    $"QuantSharp quantizes in chunks of whole rows and a row must stay under 2 GiB as float32 ({CheckpointChunks.MaxRowElements:N0} elements). " +
                    $"Exclude it (--exclude '{name}') to copy it unchanged.");
            plan.Add(new TensorPlan(shard, info, spec, fallback));
        }
        return plan;
    }

    private static string Observer(RecipePlanner s) => QuantizationRecipe.NormalizeObserver(s.Recipe.WeightObserver);

    /// <summary>Runs the one pipeline: the checkpoint's tensors (<see cref="CheckpointSource"/>) into the atomic output folder (<see cref="CheckpointSink"/>).</summary>
    private static QuantizationReport Run(ShardedCheckpoint source, List<TensorPlan> plan, RecipePlanner s, List<string> recipeWarnings,
        string inFull, string outFull, IProgress<CheckpointProgress>? progress, CancellationToken ct, Stopwatch sw)
    {
        CheckpointSink? sink = null;
        try
        {
            var counter = new CheckpointProgressCounter(progress, plan.Sum(p => p.Info.ByteLength));
            var tensors = new CheckpointSource(plan, s, shard => CheckpointSink.FileName(source, outFull, shard), counter, ct);
            sink = new CheckpointSink(source, plan, s.Recipe, tensors.Method, recipeWarnings, inFull, outFull, counter, ct);
            return QuantizationDriver.Run(tensors, sink, s.Recipe.Validation, sw).Report;
        }
        catch (SafetensorsFormatException ex) when (ex.Rule == SafetensorsRule.HeaderTooLarge)
        {
            throw new CheckpointQuantizationException($"Cannot write '{outFull}': {ExceptionText.Clause(ex)}. The input's own metadata is carried over; " +
                "remove most of it from the input (or quantize fewer tensors) and retry. The input is unchanged.", ex);
        }
        catch (SafetensorsFormatException ex) when (ex.Rule == SafetensorsRule.BufferSizeMismatch)
        {
            throw InputChanged(ex.FilePath ?? inFull, "it is now shorter than its header says", ex); // truncated after it was opened
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            bool full = ex is IOException io && IsDiskFull(io);
            bool readOnly = !full && (ex.HResult == 30 || ex.Message.Contains("Read-only file system", StringComparison.OrdinalIgnoreCase)); // EROFS
            throw new CheckpointQuantizationException(
                $"Writing '{outFull}' failed: {ExceptionText.Clause(ex)}{(full ? " (the disk is full)" : readOnly ? " (the file system is read-only)" : "")}. " +
                $"Nothing was written under '{outFull}' and the temporary files were removed; the input is unchanged. " +
                (full ? "Free some space or choose another output folder and retry."
                      : readOnly ? "Choose an output folder on a writable file system (or remount it read-write) and retry."
                      : $"Check that '{Path.GetDirectoryName(outFull)}' is writable (permissions) or choose another output folder."), ex);
        }
        finally
        {
            sink?.Dispose();
        }
    }

    internal static CheckpointQuantizationException InputChanged(string path, string detail, Exception? inner) => new(
        $"The input '{path}' changed while it was being quantized ({detail}); the result would mix old and new data, so nothing was written " +
        "and the temporary files were removed. Make sure no other program writes the input (a download still running, a copy), then retry.", inner);

    private static bool IsDiskFull(IOException ex) => ex.HResult == 28 || (ex.HResult & 0xFFFF) == 28 || ex.HResult == unchecked((int)0x80070070)
        || ex.Message.Contains("No space left", StringComparison.OrdinalIgnoreCase);
}
