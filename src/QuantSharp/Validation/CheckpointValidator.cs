using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using QuantSharp.Pipeline;
using QuantSharp.Serialization;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Validation;

/// <summary>
/// Compares a quantized checkpoint with its original: for each quantized tensor the SQNR of the dequantized weight
/// against the original (chunk by chunk), the range test and the size; every other tensor must be stored bit-exactly.
/// </summary>
/// <remarks>
/// A weight is gated as the quantizer gated it (<see cref="ValidationPolicy.ThresholdFor"/>): on its weight SQNR, or, when
/// its entry records <c>calibration_output_sqnr_db</c> (GPTQ, which moves weights away from their float values on
/// purpose), on that recorded value. The validator has no calibration inputs to measure it again, so it trusts it only
/// when the weight SQNR it measures equals the <c>sqnr_db</c> recorded with it (within 0.01 dB): otherwise the stored
/// weight or the original is not what was quantized, and that is a problem.
/// </remarks>
public static class CheckpointValidator
{
    /// <summary>Compares <paramref name="quantized"/> with <paramref name="original"/> (files or sharded folders).</summary>
    /// <param name="original">The original checkpoint.</param>
    /// <param name="quantized">The quantized checkpoint (docs/FORMAT.md).</param>
    /// <param name="policy">The validation policy whose SQNR thresholds apply (null: <see cref="ValidationPolicy.DefaultSqnrThresholdsDb"/>).</param>
    /// <param name="progress">Receives progress (original bytes).</param>
    /// <exception cref="CheckpointQuantizationException">A file cannot be read or is not a quantized checkpoint.</exception>
    public static QuantizationReport Compare(string original, string quantized, ValidationPolicy? policy = null,
        IProgress<CheckpointProgress>? progress = null)
    {
        var sw = Stopwatch.StartNew();
        var thresholds = policy ?? new ValidationPolicy();
        ShardedCheckpoint? a = null, b = null;
        try
        {
            try { a = ShardedCheckpoint.Open(original); }
            catch (Exception ex) when (ex is IOException or SafetensorsFormatException or UnauthorizedAccessException)
            { throw new CheckpointQuantizationException($"Cannot read original '{original}': {ExceptionText.Sentence(ex)}", ex); }
            try { b = ShardedCheckpoint.Open(quantized); }
            catch (Exception ex) when (ex is IOException or SafetensorsFormatException or UnauthorizedAccessException)
            { throw new CheckpointQuantizationException($"Cannot read quantized '{quantized}': {ExceptionText.Sentence(ex)}", ex); }
            RequirePair(a, b, original, quantized);

            var layers = new Dictionary<string, (SafetensorsFile Shard, QuantizedLayerInfo Info)>(StringComparer.Ordinal);
            foreach (var shard in b.Files)
            {
                try
                {
                    foreach (var (n, info) in QuantizedCheckpoint.ReadLayers(shard.Path, shard.Metadata)) layers[n] = (shard, info);
                }
                catch (QuantizedFileException ex) { throw new CheckpointQuantizationException(ex.Message, ex); }
            }
            var reports = new List<LayerReport>();
            var problems = new List<string>();
            long total = a.All.Sum(t => t.Info.ByteLength), done = 0;
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var (shard, info) in a.All)
            {
                seen.Add(info.Name);
                LayerReport r;
                if (layers.TryGetValue(info.Name, out var layer))
                {
                    seen.Add(info.Name + QuantizedCheckpoint.ScaleSuffix);
                    seen.Add(info.Name + QuantizedCheckpoint.ZeroPointSuffix);
                    r = CompareQuantized(shard, info, layer.Shard, layer.Info, thresholds);
                }
                else r = ComparePlain(shard, info, b);
                reports.Add(r);
                problems.AddRange(r.Problems);
                done += info.ByteLength;
                progress?.Report(new CheckpointProgress(done, total, info.Name));
            }
            foreach (var (_, info) in b.All)
            {
                if (!seen.Contains(info.Name)) problems.Add($"'{info.Name}' is in the quantized checkpoint but not in the original.");
            }
            foreach (var n in layers.Keys.Where(n => !a.Contains(n)))
                problems.Add($"Quantized tensor '{n}' has no original.");
            return new QuantizationReport
            {
                Input = a.Path, Output = b.Path, Layers = reports, Problems = problems, Written = true, Elapsed = sw.Elapsed,
                InputFileBytes = a.TotalFileBytes, OutputFileBytes = b.TotalFileBytes,
                OriginalBytes = reports.Sum(r => r.OriginalBytes), StoredBytes = reports.Sum(r => r.StoredBytes),
            };
        }
        finally
        {
            a?.Dispose();
            b?.Dispose();
        }
    }

    /// <summary>
    /// Refuses, in one line, two files that cannot be a float checkpoint and the file quantized from it (it used to list one
    /// problem per tensor): a QUANTIZED file that is not a QuantSharp quantized checkpoint (or the two given the wrong way
    /// round), an ORIGINAL that is itself quantized, or two files without a tensor name in common.
    /// </summary>
    private static void RequirePair(ShardedCheckpoint a, ShardedCheckpoint b, string original, string quantized)
    {
        static bool IsQuantized(ShardedCheckpoint c) => c.Files.Any(f => f.Metadata.ContainsKey(QuantizedCheckpoint.FormatKey));
        bool originalQuantized = IsQuantized(a);
        if (!IsQuantized(b))
        {
            throw new CheckpointQuantizationException(originalQuantized
                ? $"The two files are given the wrong way round: '{original}' is a QuantSharp quantized checkpoint and '{quantized}' is not. " +
                  $"Give the float checkpoint first: quantsharp validate '{quantized}' '{original}'."
                : $"'{quantized}' is not a QuantSharp quantized checkpoint (no '{QuantizedCheckpoint.FormatKey}' in its metadata), so there is nothing to " +
                  $"validate: validate compares a float checkpoint with the file 'quantsharp quantize' made from it. Quantize it first " +
                  $"(quantsharp quantize '{quantized}' OUT.safetensors), then run quantsharp validate '{quantized}' OUT.safetensors.");
        }
        if (originalQuantized)
            throw new CheckpointQuantizationException($"'{original}' is itself a QuantSharp quantized checkpoint; validate measures the quantized file " +
                $"against the float values it was made from. Give the float checkpoint that '{quantized}' was quantized from as the first file.");
        if (!b.All.Any(t => a.Contains(t.Info.Name)))
            throw new CheckpointQuantizationException($"'{quantized}' was not made from '{original}': they have no tensor name in common " +
                $"('{a.All.FirstOrDefault().Info?.Name}'... against '{b.All.FirstOrDefault().Info?.Name}'...). Give the checkpoint it was quantized from as the first file.");
    }

    private static LayerReport ComparePlain(SafetensorsFile shard, SafetensorsTensorInfo info, ShardedCheckpoint b)
    {
        var problems = new List<string>();
        string file = "";
        if (!b.Contains(info.Name)) problems.Add($"'{info.Name}' is missing from the quantized checkpoint.");
        else
        {
            var qs = b.GetFile(info.Name);
            var qi = qs.GetInfo(info.Name);
            file = Path.GetFileName(qs.Path);
            if (qi.DType != info.DType || !qi.Shape.SequenceEqual(info.Shape))
                problems.Add($"'{info.Name}' is {qi.DType} [{string.Join(", ", qi.Shape)}] in the quantized checkpoint, {info.DType} [{string.Join(", ", info.Shape)}] in the original.");
            else if (!Hash(shard, info).AsSpan().SequenceEqual(Hash(qs, qi)))
                problems.Add($"'{info.Name}' is not quantized but its bytes differ from the original.");
        }
        return LayerReport.Copied(info, file, problems);
    }

    internal static byte[] Hash(SafetensorsFile shard, SafetensorsTensorInfo info)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[(int)Math.Min(Math.Max(info.ByteLength, 1), 8 << 20)];
        for (long off = 0; off < info.ByteLength;)
        {
            int n = (int)Math.Min(buffer.Length, info.ByteLength - off);
            shard.ReadRange(info, off, buffer.AsSpan(0, n));
            h.AppendData(buffer, 0, n);
            off += n;
        }
        return h.GetHashAndReset();
    }

    private static LayerReport CompareQuantized(SafetensorsFile oShard, SafetensorsTensorInfo oInfo,
        SafetensorsFile qShard, QuantizedLayerInfo layer, ValidationPolicy thresholds)
    {
        string qFileName = Path.GetFileName(qShard.Path);
        string name = oInfo.Name;
        var problems = new List<string>();
        var spec = layer.ToSpec();
        double threshold = thresholds.ThresholdFor(layer.Type);
        long stored = 0;
        if (!oInfo.Shape.SequenceEqual(layer.Shape))
        {
            problems.Add($"'{name}': the original is [{string.Join(", ", oInfo.Shape)}], the quantized entry says [{string.Join(", ", layer.Shape)}].");
            return LayerReport.ForTensor(oInfo, qFileName, spec, 0, null, threshold, problems);
        }
        var layout = CheckpointLayout.For(layer);
        var file = qShard;
        SafetensorsTensorInfo? dataInfo = null, scaleInfo = null, zpInfo = null;
        try
        {
            dataInfo = file.GetInfo(name);
            if (layer.Type.IsInteger()) scaleInfo = file.GetInfo(name + QuantizedCheckpoint.ScaleSuffix);
            if (file.Contains(name + QuantizedCheckpoint.ZeroPointSuffix)) zpInfo = file.GetInfo(name + QuantizedCheckpoint.ZeroPointSuffix);
        }
        catch (KeyNotFoundException ex) { problems.Add($"'{name}': {ex.Message}"); }
        if (dataInfo is null || (layer.Type.IsInteger() && scaleInfo is null))
            return LayerReport.ForTensor(oInfo, qFileName, spec, 0, null, threshold, problems);
        if (dataInfo.DType != layout.DataDType || !dataInfo.Shape.SequenceEqual(layout.DataShape)
            || (scaleInfo is not null && (scaleInfo.DType != SafetensorsDType.F32 || !scaleInfo.Shape.SequenceEqual(layout.ScaleShape)))
            || (zpInfo is not null && (zpInfo.DType != SafetensorsDType.I32 || !zpInfo.Shape.SequenceEqual(layout.ScaleShape))))
        {
            problems.Add($"'{name}': stored dtypes or shapes do not match its per-layer entry ({layer.Type.ToName()}, {layer.Granularity}).");
            return LayerReport.ForTensor(oInfo, qFileName, spec, 0, null, threshold, problems);
        }
        stored = dataInfo.ByteLength + (scaleInfo?.ByteLength ?? 0) + (zpInfo?.ByteLength ?? 0);

        bool rowwise = CheckpointChunks.IsRowwise(oInfo.Shape);
        var (rows, rowsPerChunk) = CheckpointChunks.ChunkPlan(oInfo.Shape);
        long chunks = rowwise ? (rows + rowsPerChunk - 1) / rowsPerChunk : 1;
        bool scaleRowwise = rowwise && CheckpointChunks.HasRowScales(spec);
        var sqnr = new SqnrAccumulator();
        for (long c = 0; c < chunks; c++)
        {
            using var scope = NewDisposeScope();
            long r0 = c * rowsPerChunk, r1 = rowwise ? Math.Min(rows, r0 + rowsPerChunk) : 1;
            bool exact = oInfo.DType is SafetensorsDType.F32 or SafetensorsDType.F16 or SafetensorsDType.BF16;
            var x = exact ? CheckpointChunks.ReadRowsFloat32(oShard, oInfo, r0, r1, rowwise) : CheckpointChunks.ReadRows(oShard, oInfo, r0, r1, rowwise);
            var data = CheckpointChunks.ReadRows(qShard, dataInfo, r0, r1, rowwise);
            Tensor? scale = scaleInfo is null ? null : CheckpointChunks.ReadRows(qShard, scaleInfo, r0, r1, scaleRowwise);
            Tensor? zp = zpInfo is null ? null : CheckpointChunks.ReadRows(qShard, zpInfo, r0, r1, scaleRowwise);
            long[] storedShape = layer.StoredShape;
            long[] chunkShape = rowwise ? [r1 - r0, .. storedShape[1..]] : storedShape;
            var partProblems = TensorChecks.CheckParts(name, layer.Type, layer.Range, data, scale, zp);
            foreach (var p in partProblems)
                if (!problems.Contains(p)) problems.Add(p);
            if (partProblems.Count > 0) return LayerReport.ForTensor(oInfo, qFileName, spec, stored, null, threshold, problems, rangeOk: false);
            using var q = QuantizedTensor.FromParts(spec, chunkShape, data.alias(), scale?.alias(), zp?.alias());
            using var deq = q.Dequantize();
            if (exact)
                sqnr.Add(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(x.bytes), System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(deq.bytes));
            else sqnr.Add(x, deq);
        }
        double db = sqnr.Db;
        if (layer.CalibrationOutputSqnrDb is { } recordedOutput && !SameDecibels(layer.SqnrDb, db))
        {
            problems.Add($"'{name}': its weight SQNR against this original is {ValidationPolicy.F(db)} dB but the file recorded " +
                $"{(layer.SqnrDb is { } r ? ValidationPolicy.F(r) + " dB" : "none")} when it was quantized, so the stored weight or the original is not the " +
                $"pair that was quantized and its recorded calibration output SQNR ({ValidationPolicy.F(recordedOutput)} dB, its gate) does not describe it. " +
                "Validate against the original the file was quantized from, or quantize again.");
        }
        else if (thresholds.SqnrProblem(layer.Type, db, layer.CalibrationOutputSqnrDb) is { } sqnrProblem) problems.Add($"'{name}': {sqnrProblem}.");
        return LayerReport.ForTensor(oInfo, qFileName, spec, stored, db, threshold, problems) with { CalibrationOutputSqnrDb = layer.CalibrationOutputSqnrDb };
    }

    /// <summary>A recorded SQNR (rounded to 4 decimals in the file) equals a measured one.</summary>
    private static bool SameDecibels(double? recorded, double measured) =>
        recorded is { } r && (r.Equals(measured) || Math.Abs(r - measured) <= 0.01);
}
