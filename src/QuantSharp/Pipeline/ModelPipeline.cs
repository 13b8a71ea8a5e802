using QuantSharp.Calibration;
using QuantSharp.Modules;
using QuantSharp.Tensors;
using QuantSharp.Validation;
using TorchSharp;
using static QuantSharp.Modules.Hooks;
using static TorchSharp.torch;

namespace QuantSharp.Pipeline;

/// <summary>One planned layer of a model: what is done to the module, and the planned weight (spec after the group-size fallback).</summary>
internal sealed record PlannedLayer(LayerPlan Layer, PlannedWeight Weight);

/// <summary>A model layer in the pipeline: its weights quantized (<see cref="PreparedLayer"/>), not yet installed.</summary>
internal sealed class ModelItem : PipelineItem
{
    public required PreparedLayer Layer { get; init; }
}

/// <summary>
/// The model's source: the planned layers of the model being quantized, calibrated through forward hooks when data is
/// given. Round to nearest quantizes every layer before the sink installs any (a materialized module empties its
/// parameters, tied twins included); a sequential method (GPTQ) quantizes each layer, in the order the model calls them,
/// when the layers before it are installed (the driver asks for the next item after the sink took the previous one).
/// Tied weights are quantized once (<see cref="TiedWeights"/>) and measured when quantized.
/// </summary>
internal sealed class ModelSource : IWeightSource<ModelItem>, IDisposable
{
    private readonly nn.Module _work;
    private readonly QuantizationRecipe _cfg;
    private readonly List<LayerPlan> _plans;
    private readonly Dictionary<string, PlannedWeight> _weights;
    private readonly IWeightQuantizer _quantizer;
    private readonly List<CalibrationBatch>? _replay;
    private readonly List<string> _warnings = [];

    /// <summary>Plans <paramref name="planned"/> on <paramref name="work"/> and calibrates (a model in eval mode).</summary>
    /// <exception cref="ArgumentException">A sequential method without calibration data.</exception>
    /// <exception cref="ModelQuantizationException">A sequential method and a layer that is not replaced.</exception>
    public ModelSource(nn.Module work, QuantizationRecipe cfg, IReadOnlyList<PlannedLayer> planned, IEnumerable<CalibrationBatch>? data,
        IProgress<CalibrationProgress>? progress, IWeightQuantizer? method)
    {
        _work = work;
        _cfg = cfg;
        var entries = ModuleTree.Walk(work).ToDictionary(e => e.Name, StringComparer.Ordinal);
        _weights = planned.ToDictionary(p => p.Layer.Entry.Name, p => p.Weight, StringComparer.Ordinal);
        // The plans were made on the caller's model; the same layers of the model being quantized.
        _plans = planned.Select(p => ModuleQuantization.Plan(entries[p.Layer.Entry.Name], p.Weight.Spec).Plan!).ToList();
        // Calibration observes the layers that take one tensor; native modules (tuples, several inputs) are only quantized.
        ObservedLayers = _plans.Select(p => p.Entry).Where(e => e.Module is nn.Module<Tensor, Tensor>).ToList();
        _quantizer = method ?? QuantizationPipeline.WeightQuantizerFor(cfg);
        if (_quantizer.Sequential)
        {
            if (data is null)
                throw new ArgumentException($"The weight quantization method '{_quantizer.Method}' needs calibration data (the inputs of each layer): pass calibrationData.", nameof(data));
            if (_plans.FirstOrDefault(p => p.Mechanism != QuantizationMechanism.Replace) is { } kept)
                throw new ModelQuantizationException($"The weight quantization method '{_quantizer.Method}' quantizes layers that are replaced by quantized modules; " +
                    $"'{kept.Entry.Name}' ({kept.Entry.Module.GetType().Name}) keeps its float module ({kept.Note ?? "materialized weights"}). Exclude it, or use round to nearest.");
            _replay = Replayable(data, cfg.CalibrationSamples);
            data = _replay;
        }
        try
        {
            if (data is not null)
            {
                var actSpec = cfg.Activations ?? QuantizationRecipe.DefaultActivations;
                // Each layer's input observer: the recipe's, or its weight's first matching override's.
                var parameters = planned.ToDictionary(p => p.Layer.Entry.Name, p => (p.Weight.Name, ModuleTree.TypeName(p.Layer.Entry.Module.GetType())), StringComparer.Ordinal);
                Calibrator = new Calibrator(work, ObservedLayers, RangeObservers.ForRecipe(cfg, actSpec, parameters));
                // Weight-only: one batch feeds the validation report; W8A8: the configured number of samples.
                long target = cfg.Activations is null ? 1 : cfg.CalibrationSamples;
                Calibrator.Run(data, target, progress, observe: cfg.Activations is not null, keepFirstOutputs: cfg.Validation.Enabled);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <inheritdoc/>
    public RowKind Rows => RowKind.Layer;

    /// <summary>The layers calibration observes (those that take one tensor).</summary>
    public IReadOnlyList<ModuleEntry> ObservedLayers { get; }

    /// <summary>The calibration (ranges, the first batch and its outputs), or null without data.</summary>
    public Calibrator? Calibrator { get; }

    /// <summary>Layers whose input could not be quantized or whose parameters partly stay float (in processing order).</summary>
    public IReadOnlyList<string> Warnings => _warnings;

    /// <inheritdoc/>
    public IEnumerable<ModelItem> Items()
    {
        var tied = new TiedWeights(_quantizer, measure: _cfg.Validation.Enabled);
        var order = _plans.Select((p, i) => (p.Entry.Name, i)).ToDictionary(x => x.Name, x => x.i, StringComparer.Ordinal);
        IEnumerable<PreparedLayer> prepared = _quantizer.Sequential
            ? PrepareSequentially(tied)
            : _plans.Select(p => ModuleQuantization.Prepare(p, _weights[p.Entry.Name].Spec, tied)).ToList();
        foreach (var layer in prepared)
        {
            var e = layer.Plan.Entry;
            ActivationQuantization? input = null;
            if (_cfg.Activations is { } a && layer.Plan.Handler is { QuantizesInput: true })
            {
                if (layer.Plan.Mechanism == QuantizationMechanism.Replace)
                {
                    var (s, z) = Calibrator!.Observers[e.Name].Input!.ComputeQParams();
                    input = new ActivationQuantization(a.Type, a.Scheme, a.ReduceRange, s, z);
                }
                else _warnings.Add($"{e.Name}: its input is not quantized (static activation quantization needs a replaced layer; {layer.Plan.Note}).");
            }
            if (layer.Plan.Note is { } note && layer.Plan.Handler is null) _warnings.Add($"{e.Name}: {note}.");
            yield return new ModelItem
            {
                Order = order[e.Name], Layer = layer, Weight = _weights[e.Name], Input = input,
                Row = new LayerReport { Name = e.Name, ModuleType = e.Module.GetType().Name, OriginalBytes = layer.FloatBytes },
                MeasuredSqnrDb = layer.WeightSqnrDb, CalibrationOutputSqnrDb = layer.CalibrationOutputSqnrDb,
            };
        }
    }

    /// <inheritdoc/>
    public IEnumerable<QuantizedPart> Parts(ModelItem item)
    {
        foreach (var (param, w) in item.Layer.Weights)
        {
            using var canonical = w.Layout.CanonicalView();
            yield return new QuantizedPart(item.Layer.Plan.Entry.Name + "." + param, canonical);
        }
    }

    /// <summary>
    /// The quantize stage of a sequential method: layer by layer, in the order the model calls them (recorded on the first
    /// calibration batch; registration order can differ), the layer input's statistics are collected on the model whose
    /// earlier layers are already quantized and installed (the sink installs each item before the next is asked for),
    /// then the layer is quantized with them.
    /// </summary>
    private IEnumerable<PreparedLayer> PrepareSequentially(TiedWeights tied)
    {
        foreach (var plan in CallOrder.Of(_work, _plans, p => p.Entry, _replay![0]))
        {
            var spec = _weights[plan.Entry.Name].Spec;
            var weight = QuantizedModules.Parameter(plan.Entry.Module, plan.Parameters[0])!;
            using var statistics = _quantizer.CreateStatistics(new PlannedWeight(plan.Entry.Name + "." + plan.Parameters[0], weight.shape, spec, null), plan.Entry.Module);
            if (statistics is not null) InputStatistics.Collect(_work, plan.Entry, _replay, statistics);
            yield return ModuleQuantization.Prepare(plan, spec, tied, statistics);
        }
    }

    /// <summary>The calibration batches (up to <paramref name="samples"/> samples) kept so that they can run several times; input tensors are copied (the caller may dispose its own).</summary>
    private static List<CalibrationBatch> Replayable(IEnumerable<CalibrationBatch> data, long samples)
    {
        var list = new List<CalibrationBatch>();
        long seen = 0;
        foreach (var batch in data)
        {
            if (batch is null || batch.Input is { IsInvalid: true })
                throw new ArgumentException($"Calibration batch {list.Count + 1} is null or disposed.");
            list.Add(batch.Input is { } t ? CalibrationBatch.Of(t.detach().clone().DetachFromDisposeScope()) : batch);
            seen += batch.Samples;
            if (seen >= samples) break;
        }
        return list;
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        Calibrator?.Dispose();
        foreach (var b in _replay ?? []) b.Input?.Dispose();
    }
}

/// <summary>
/// The model's sink: installs each quantized layer (replacement or materialized weights), disposes the replaced float
/// layers of a copy, counts sizes once per storage; at the end, measures the model's and each layer's output SQNR on the
/// first calibration batch and runs the reload check (save, load through the factory, compare).
/// </summary>
internal sealed class ModelSink : IQuantizedSink<ModelItem>
{
    private readonly nn.Module _work;
    private readonly QuantizationRecipe _cfg;
    private readonly Func<nn.Module>? _factory;
    private readonly bool _disposeReplaced;
    private readonly ModelSource _source;
    private readonly IReadOnlyList<SkippedLayer> _skipped;
    private readonly HashSet<object> _shared;
    private readonly HashSet<QuantizedWeight> _stored = new(ReferenceEqualityComparer.Instance);
    private readonly List<(int Order, QuantizedLayer Layer)> _layers = [];
    private readonly long _floatBytes;

    /// <param name="work">The model being quantized (in eval mode), before any layer is installed.</param>
    /// <param name="cfg">The effective recipe.</param>
    /// <param name="factory">Builds the float architecture, for the reload check; null: not run.</param>
    /// <param name="disposeReplaced">Dispose the float layers replaced (a copy: nobody else holds them).</param>
    /// <param name="source">The source (its calibration feeds the output SQNR).</param>
    /// <param name="skipped">Layers left float, for the report.</param>
    public ModelSink(nn.Module work, QuantizationRecipe cfg, Func<nn.Module>? factory, bool disposeReplaced, ModelSource source, IReadOnlyList<SkippedLayer> skipped)
    {
        _work = work;
        _cfg = cfg;
        _factory = factory;
        _disposeReplaced = disposeReplaced;
        _source = source;
        _skipped = skipped;
        // A module registered under two names, or whose parameters are tied to another's, is never disposed after its replacement.
        var entries = ModuleTree.Walk(work);
        _shared = entries.GroupBy(e => (object)e.Module, ReferenceEqualityComparer.Instance)
            .Where(g => g.Count() > 1).Select(g => g.Key).ToHashSet(ReferenceEqualityComparer.Instance);
        var storages = work.parameters().Select(ModuleQuantization.StorageKey).Where(k => k is not null).GroupBy(k => k).Where(g => g.Count() > 1).Select(g => g.Key).ToHashSet();
        foreach (var e in entries)
            if (e.Module.parameters(recurse: false).Any(p => storages.Contains(ModuleQuantization.StorageKey(p)))) _shared.Add(e.Module);
        _floatBytes = ModelMemory.Bytes(work);
    }

    /// <summary>The layers installed, in model order (after <see cref="Finish"/>).</summary>
    public IReadOnlyList<QuantizedLayer> Layers => [.. _layers.OrderBy(l => l.Order).Select(l => l.Layer)];

    /// <inheritdoc/>
    public void Begin(ModelItem item) { }

    /// <inheritdoc/>
    public void Write(ModelItem item, QuantizedPart part) { } // the layer is installed whole, at End

    /// <inheritdoc/>
    public LayerReport End(ModelItem item, LayerReport row)
    {
        var layer = item.Layer;
        var e = layer.Plan.Entry;
        var installed = ModuleQuantization.Install(layer, item.Input);
        if (_cfg.DynamicActivations && installed is QuantizedLinear dynamicLinear) dynamicLinear.DynamicInput = true;
        // The copy's float layer is no longer referenced: free its native memory now rather than at GC time.
        if (!ReferenceEquals(installed, e.Module) && _disposeReplaced && !_shared.Contains(e.Module)) e.Module.Dispose();
        // Tied weights are stored (and counted) once: by the first layer that holds them.
        long stored = installed.parameters(recurse: false).Where(p => p.numel() > 0).Sum(p => p.numel() * p.element_size())
            + layer.Weights.Where(w => _stored.Add(w.Weight)).Sum(w => w.Weight.StorageBytes)
            + (installed is QuantizedModule qm && qm.InputQuantization is not null ? 8 : 0);
        _layers.Add((item.Order, new QuantizedLayer(e.Name, row.ModuleType!, item.Weight!.Spec, item.Input, layer.FloatBytes, stored)
            {
                Fallback = item.Weight.Fallback,
            }));
        return row with { StoredBytes = stored };
    }

    /// <inheritdoc/>
    public void Copy(ModelItem item) => throw new InvalidOperationException("A model source has no tensors to copy.");

    /// <inheritdoc/>
    public RunChecks Finish(IReadOnlyList<LayerReport> rows)
    {
        long quantBytes = ModelMemory.Bytes(_work);
        var calib = _source.Calibrator;
        var checks = new RunChecks
        {
            Rows = rows, Skipped = _skipped, OriginalBytes = _floatBytes, StoredBytes = quantBytes, CalibrationSamples = calib?.Samples ?? 0,
        };
        if (!_cfg.Validation.Enabled) return checks;
        var checkedRows = rows.ToList();
        double? modelSqnr = null;
        if (calib?.FirstBatch is { } batch)
        {
            var outputs = RunCapturing(_work, _source.ObservedLayers.Select(l => l.Name).ToList(), batch, out var modelOut);
            try
            {
                modelSqnr = Metrics.Sqnr(calib.FirstModelOutput!, modelOut);
                for (int i = 0; i < checkedRows.Count; i++)
                {
                    var r = checkedRows[i];
                    if (!outputs.TryGetValue(r.Name, out var qo) || !calib.FirstOutputs.TryGetValue(r.Name, out var fo)) continue;
                    double o = Metrics.Sqnr(fo, qo);
                    var problems = r.Problems.ToList();
                    if (double.IsNaN(o)) problems.Add("output SQNR is NaN");
                    if (_cfg.Validation.MinOutputSqnrDb is { } minO && o < minO)
                        problems.Add($"output SQNR {o:F2} dB is below the bound {minO} dB");
                    checkedRows[i] = r with { OutputSqnrDb = o, Problems = problems };
                }
            }
            finally
            {
                modelOut.Dispose();
                foreach (var t in outputs.Values) t.Dispose();
            }
        }
        var (reload, detail) = _cfg.Validation.ReloadCheck
            ? ReloadCheck(calib?.FirstBatch)
            : (CheckStatus.NotRun, "disabled");
        return checks with
        {
            Rows = checkedRows, ModelOutputSqnrDb = modelSqnr, ReloadCheck = reload, ReloadDetail = detail,
            Problems = reload == CheckStatus.Failed ? [$"reload check: {detail}"] : [],
        };
    }

    /// <inheritdoc/>
    public long Commit(bool keep) => 0; // the model is the result; Quantizer.Save writes it

    /// <inheritdoc/>
    public QuantizationException Refusal(QuantizationReport report) => new QuantizationValidationException(report);

    /// <summary>Runs <paramref name="batch"/> through the model and captures the named layers' outputs (first call each).</summary>
    internal static Dictionary<string, Tensor> RunCapturing(nn.Module model, IReadOnlyCollection<string> names, CalibrationBatch batch, out Tensor output)
    {
        var captured = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var removers = new List<Action>();
        try
        {
            foreach (var e in ModuleTree.Walk(model))
            {
                if (!names.Contains(e.Name) || e.Module is not nn.Module<Tensor, Tensor> m) continue;
                string n = e.Name;
                removers.Add(Unhook(m.register_forward_hook((_, _, y) =>
                {
                    if (!captured.ContainsKey(n)) captured[n] = y.detach().clone().DetachFromDisposeScope();
                    return null!;
                })));
            }
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            output = batch.Run(model).detach().clone().DetachFromDisposeScope();
            return captured;
        }
        catch
        {
            foreach (var t in captured.Values) t.Dispose();
            throw;
        }
        finally
        {
            foreach (var r in removers) r();
        }
    }

    /// <summary>Saves the quantized model, loads it through the factory and compares outputs (or the state without data) bit for bit.</summary>
    private (CheckStatus, string?) ReloadCheck(CalibrationBatch? batch)
    {
        if (_factory is null) return (CheckStatus.NotRun, "no model factory to rebuild the architecture");
        string path = Path.Combine(Path.GetTempPath(), $"quantsharp-reload-{Guid.NewGuid():N}.safetensors");
        try
        {
            Quantizer.Save(_work, path);
            using var reloaded = Quantizer.Load(_factory, path);
            using var scope = NewDisposeScope();
            if (batch is not null)
            {
                using var noGrad = no_grad();
                var ya = batch.Run(_work);
                var yb = batch.Run(reloaded);
                return TensorSpans.BitEqual(ya, yb)
                    ? (CheckStatus.Passed, "save -> load gives bit-identical outputs on the first calibration batch")
                    : (CheckStatus.Failed, "the reloaded model's outputs differ from the quantized model's");
            }
            var sa = _work.state_dict();
            var sb = reloaded.state_dict();
            foreach (var (k, v) in sa)
            {
                if (!sb.TryGetValue(k, out var w) || !TensorSpans.BitEqual(v, w))
                    return (CheckStatus.Failed, $"'{k}' differs after save -> load");
            }
            return (CheckStatus.Passed, "save -> load gives bit-identical state (no data to compare outputs)");
        }
        catch (Exception e) when (e is IOException or QuantizationException or ArgumentException or UnauthorizedAccessException)
        {
            return (CheckStatus.Failed, "save -> load failed: " + e.Message);
        }
        finally
        {
            try { File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }
}
