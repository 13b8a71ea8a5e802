using System.Runtime.InteropServices;
using QuantSharp.Modules;
using QuantSharp.Primitives;
using QuantSharp.Tensors;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Pipeline;

// The one driver of both quantizers (docs/QUANTIZER.md, "The pipeline"):
//
//   source.Items()          plan order; each item prepared (observed, quantized) when the driver asks for it
//     sink.Begin(item)
//     source.Parts(item)    the item's quantized form: a layer's weights (model), a tensor's row chunks (checkpoint)
//       validate part       one range check; weight SQNR accumulated in float64 (unless the source measured it)
//       sink.Write(part)    keep for install (model), stream into the file (checkpoint)
//     gate                  SQNR threshold per type (calibration output SQNR replaces it for GPTQ), NaN rule, input qparams
//     sink.End(item, row)   install the quantized module / record the tensor; completes the row (stored bytes...)
//   sink.Finish(rows)       run-level checks (model: output SQNR, reload; checkpoint: reload test, input stamps, side files)
//   report + OnFailure      one QuantizationReport; Error refuses (sink.Refusal), Warn and Ignore keep the result
//
// Model: ModelSource/ModelSink (Pipeline/ModelPipeline.cs). Checkpoint: CheckpointSource/CheckpointSink
// (Pipeline/CheckpointPipeline.cs).

/// <summary>How a source's report rows are named and their problems phrased.</summary>
internal enum RowKind
{
    /// <summary>A row is a model layer (one or more weights): its problems are phrased relative to the layer, and the
    /// run's problem list prefixes them with the layer name (<c>fc1: weight SQNR 9.80 dB is below ...</c>).</summary>
    Layer,

    /// <summary>A row is a checkpoint tensor: each problem is a sentence that names the tensor.</summary>
    Tensor,
}

/// <summary>One row of the pipeline: a planned weight (or a layer's weights) the source quantizes, or a tensor it copies.</summary>
internal class PipelineItem
{
    /// <summary>Position in plan order (rows are reported in it, whatever order a sequential method processed them in).</summary>
    public required int Order { get; init; }

    /// <summary>The row's descriptive fields (name, module type or file, dtype, shape, original bytes); the driver adds
    /// the spec and the validation, the sink the stored bytes.</summary>
    public required LayerReport Row { get; init; }

    /// <summary>The planned weight (its spec and group-size fallback); null for a tensor copied unchanged.</summary>
    public PlannedWeight? Weight { get; init; }

    /// <summary>The calibrated input quantization (static activation quantization), or null.</summary>
    public ActivationQuantization? Input { get; init; }

    /// <summary>The weight SQNR the source measured when it quantized the whole weight (model: tied weights measured
    /// once), or null: the driver accumulates it over the parts' <see cref="QuantizedPart.Original"/> values.</summary>
    public double? MeasuredSqnrDb { get; init; }

    /// <summary>The method's own validation measure (<see cref="IWeightQuantizer.CalibrationOutputSqnrDb"/>), or null.</summary>
    public double? CalibrationOutputSqnrDb { get; init; }
}

/// <summary>One piece of an item's quantized form: a whole weight (model) or a chunk of a tensor's rows (checkpoint).</summary>
/// <param name="Weight">The weight's name (e.g. <c>fc1.weight</c>), for the range check's messages.</param>
/// <param name="Quantized">The canonical quantized values of the piece (storage view).</param>
/// <param name="Original">The float values of the same elements (float32, or float64 for a float64 input) to measure
/// the weight SQNR against; null when the source measured it (<see cref="PipelineItem.MeasuredSqnrDb"/>).</param>
internal sealed record QuantizedPart(string Weight, QuantizedTensor Quantized, Tensor? Original = null);

/// <summary>Where the weights come from and how they are quantized (the plan, calibrate/observe and quantize stages).</summary>
/// <typeparam name="TItem">The source's item type.</typeparam>
internal interface IWeightSource<TItem> where TItem : PipelineItem
{
    /// <summary>How rows are named and problems phrased.</summary>
    RowKind Rows { get; }

    /// <summary>The items, prepared one at a time when the driver asks for the next, i.e. after the sink took the
    /// previous one (a sequential method sees the layers before it installed).</summary>
    IEnumerable<TItem> Items();

    /// <summary>The quantized parts of an item with a <see cref="PipelineItem.Weight"/>; each part is disposed of by the
    /// source when the driver asks for the next.</summary>
    IEnumerable<QuantizedPart> Parts(TItem item);
}

/// <summary>Where the quantized weights go (the write stage) and the run-level checks of the destination.</summary>
/// <typeparam name="TItem">The source's item type.</typeparam>
internal interface IQuantizedSink<TItem> where TItem : PipelineItem
{
    /// <summary>An item begins (before its parts).</summary>
    void Begin(TItem item);

    /// <summary>Takes one part of the item's quantized form (after it was validated).</summary>
    void Write(TItem item, QuantizedPart part);

    /// <summary>The item is complete: installs or records it and returns <paramref name="row"/> completed (stored bytes,
    /// problems the destination found).</summary>
    LayerReport End(TItem item, LayerReport row);

    /// <summary>Takes an item without a weight unchanged (a checkpoint tensor that is not quantized).</summary>
    void Copy(TItem item);

    /// <summary>Run-level checks after every item, with the rows in plan order.</summary>
    RunChecks Finish(IReadOnlyList<LayerReport> rows);

    /// <summary>Keeps the result (<paramref name="keep"/>: promote the files) or drops it; returns the bytes written.</summary>
    long Commit(bool keep);

    /// <summary>The exception that refuses a result whose validation failed under <see cref="ValidationFailureMode.Error"/>.</summary>
    QuantizationException Refusal(QuantizationReport report);
}

/// <summary>What the sink's run-level checks found and the report fields only it knows.</summary>
internal sealed record RunChecks
{
    /// <summary>The rows, with what the run-level checks added (model: output SQNR).</summary>
    public required IReadOnlyList<LayerReport> Rows { get; init; }

    /// <summary>Problems of the run (a failed reload check...), after the rows' problems in the report.</summary>
    public IReadOnlyList<string> Problems { get; init; } = [];

    /// <summary>Problems refused under every failure mode (checkpoint: values the file type cannot hold).</summary>
    public IReadOnlyList<string> Refused { get; init; } = [];

    /// <summary>Warnings of the run (report's <see cref="QuantizationReport.RunWarnings"/>).</summary>
    public IReadOnlyList<string> Warnings { get; init; } = [];

    public CheckStatus ReloadCheck { get; init; } = CheckStatus.NotRun;
    public string? ReloadDetail { get; init; }
    public required long OriginalBytes { get; init; }
    public required long StoredBytes { get; init; }
    public double? ModelOutputSqnrDb { get; init; }
    public long CalibrationSamples { get; init; }
    public IReadOnlyList<SkippedLayer> Skipped { get; init; } = [];
    public string? Input { get; init; }
    public string? Output { get; init; }
    public long InputFileBytes { get; init; }

    /// <summary>True when a kept result is written under its final name (a checkpoint).</summary>
    public bool WritesFiles { get; init; }
}

/// <summary>The driver's result: the report, and the problems a <see cref="ValidationFailureMode.Warn"/> policy turns into warnings.</summary>
internal sealed record PipelineResult(QuantizationReport Report, IReadOnlyList<string> Warnings);

/// <summary>The one pipeline driver: runs a source into a sink, validates every item the same way, builds the one
/// report and applies the <see cref="ValidationPolicy"/>.</summary>
internal static class QuantizationDriver
{
    /// <summary>Runs <paramref name="source"/> into <paramref name="sink"/>.</summary>
    /// <exception cref="QuantizationException">The sink's refusal (<see cref="IQuantizedSink{TItem}.Refusal"/>) when
    /// validation failed under <see cref="ValidationFailureMode.Error"/>, or a problem refused under every mode.</exception>
    public static PipelineResult Run<TItem>(IWeightSource<TItem> source, IQuantizedSink<TItem> sink, ValidationPolicy policy,
        System.Diagnostics.Stopwatch clock) where TItem : PipelineItem
    {
        var rows = new List<(int Order, LayerReport Row)>();
        foreach (var item in source.Items())
        {
            if (item.Weight is null)
            {
                sink.Copy(item);
                rows.Add((item.Order, item.Row));
                continue;
            }
            var check = new ItemCheck(policy.Enabled);
            sink.Begin(item);
            foreach (var part in source.Parts(item))
            {
                check.Add(part);
                sink.Write(item, part);
            }
            rows.Add((item.Order, sink.End(item, Validate(item, check, policy, source.Rows))));
        }
        var run = sink.Finish([.. rows.OrderBy(r => r.Order).Select(r => r.Row)]);

        var problems = run.Rows.SelectMany(r => r.Problems.Select(p => source.Rows == RowKind.Layer ? $"{r.Name}: {p}" : p)).Concat(run.Problems).ToList();
        bool keep = problems.Count == 0 || (policy.OnFailure != ValidationFailureMode.Error && run.Refused.Count == 0);
        long written = sink.Commit(keep);
        var report = new QuantizationReport
        {
            Layers = run.Rows, Skipped = run.Skipped, Problems = problems, RunWarnings = run.Warnings, Validated = policy.Enabled,
            OriginalBytes = run.OriginalBytes, StoredBytes = run.StoredBytes, ModelOutputSqnrDb = run.ModelOutputSqnrDb,
            CalibrationSamples = run.CalibrationSamples, ReloadCheck = run.ReloadCheck, ReloadDetail = run.ReloadDetail,
            Input = run.Input, Output = run.Output, Written = keep && run.WritesFiles, InputFileBytes = run.InputFileBytes,
            OutputFileBytes = written, Elapsed = clock.Elapsed,
        };
        if (!keep) throw sink.Refusal(report);
        return new PipelineResult(report, policy.OnFailure == ValidationFailureMode.Warn ? problems : []);
    }

    /// <summary>
    /// The validate stage's gate for one item, the same for every source: the range check's problems (from
    /// <see cref="ItemCheck"/>), valid input qparams, and the one SQNR gate (<see cref="ValidationPolicy.SqnrProblem"/>):
    /// the weight SQNR against the type's threshold, or, for a method that minimizes the layer's output error (GPTQ moves
    /// weights away from their float values on purpose), its calibration output SQNR with the same threshold; a NaN SQNR fails.
    /// </summary>
    internal static LayerReport Validate(PipelineItem item, ItemCheck check, ValidationPolicy policy, RowKind kind)
    {
        var spec = item.Weight!.Spec;
        var row = item.Row with
        {
            Spec = spec, Fallback = item.Weight.Fallback,
            Activations = item.Input is { } a ? $"{a.Type.ToName()} {a.Scheme.ToString().ToLowerInvariant()} scale={a.Scale:G6} zp={a.ZeroPoint}" : null,
        };
        if (!policy.Enabled) return row;
        var problems = new List<string>(check.RangeProblems);
        bool rangeOk = problems.Count == 0;
        if (item.Input is { } input) rangeOk &= InputCheck(input, problems);
        double weightSqnr = item.MeasuredSqnrDb ?? check.SqnrDb;
        double threshold = policy.ThresholdFor(spec.Type);
        if (policy.SqnrProblem(spec.Type, weightSqnr, item.CalibrationOutputSqnrDb) is { } sqnrProblem)
            problems.Add(kind == RowKind.Layer ? sqnrProblem : $"'{item.Row.Name}': {sqnrProblem}.");
        return row with
        {
            WeightSqnrDb = weightSqnr, CalibrationOutputSqnrDb = item.CalibrationOutputSqnrDb,
            ThresholdDb = double.IsFinite(threshold) ? threshold : null, RangeOk = rangeOk, Problems = problems,
        };
    }

    /// <summary>Input qparams a kernel can use: a finite positive scale, a zero point in the type's range.</summary>
    private static bool InputCheck(ActivationQuantization a, List<string> problems)
    {
        var r = QuantRange.For(a.Type, a.ReduceRange);
        if (float.IsFinite(a.Scale) && a.Scale > 0 && a.ZeroPoint >= r.QMin && a.ZeroPoint <= r.QMax) return true;
        problems.Add($"input qparams scale={a.Scale} zero point={a.ZeroPoint} are invalid");
        return false;
    }
}

/// <summary>The per-part validation of one item: the one range check and the weight SQNR accumulated in float64.</summary>
/// <param name="enabled">Validation runs (otherwise parts are not checked).</param>
internal sealed class ItemCheck(bool enabled)
{
    private readonly SqnrAccumulator _sqnr = new();
    private readonly List<string> _rangeProblems = [];

    /// <summary>The range check's problems of every part so far (each once).</summary>
    public IReadOnlyList<string> RangeProblems => _rangeProblems;

    /// <summary>The weight SQNR over the parts' original values (dB).</summary>
    public double SqnrDb => _sqnr.Db;

    /// <summary>Checks one part.</summary>
    public void Add(QuantizedPart part)
    {
        if (!enabled) return;
        foreach (var p in WeightChecks.RangeProblems(part.Weight, part.Quantized))
            if (!_rangeProblems.Contains(p)) _rangeProblems.Add(p);
        if (part.Original is not { } original) return;
        using var deq = part.Quantized.Dequantize();
        if (original.dtype == ScalarType.Float32 && deq.dtype == ScalarType.Float32)
            _sqnr.Add(MemoryMarshal.Cast<byte, float>(original.bytes), MemoryMarshal.Cast<byte, float>(deq.bytes));
        else
            _sqnr.Add(original, deq);
    }
}
