using System.Runtime.InteropServices;
using QuantSharp.Modules;
using TorchSharp;
using static QuantSharp.Modules.Hooks;
using static TorchSharp.torch;

namespace QuantSharp.Calibration;

/// <summary>The observer of one layer and how often its hook fired.</summary>
/// <remarks>Only the input is observed: it is what static activation quantization stores (the layer's input scale and
/// zero point). A layer's output is not observed (nothing reads its range; the first batch's outputs feed validation).</remarks>
internal sealed class LayerObservers(IRangeObserver? input)
{
    /// <summary>Observer of the layer's input (null for embeddings, whose input is indices).</summary>
    public IRangeObserver? Input { get; } = input;

    /// <summary>Forward calls seen.</summary>
    public long Calls { get; set; }
}

/// <summary>
/// Runs data through a model with forward hooks on the selected layers and feeds each layer's input observer. Hooks fire only when a parent runs the layer through <c>Module.call</c>; layers that are never called
/// are reported. The first batch's input, the model's output and each layer's output for it are kept (cloned, outside
/// any dispose scope) for validation; dispose the calibrator to free them.
/// </summary>
internal sealed class Calibrator : IDisposable
{
    private readonly nn.Module _model;
    private Tensor? _firstInput;
    private readonly IReadOnlyList<ModuleEntry> _layers;
    private readonly Dictionary<string, LayerObservers> _observers = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Tensor> _firstOutputs = new(StringComparer.Ordinal);

    /// <summary>Observers for <paramref name="layers"/> from <paramref name="makeObserver"/>(layer name, tensor description).</summary>
    public Calibrator(nn.Module model, IReadOnlyList<ModuleEntry> layers, Func<string, string, IRangeObserver> makeObserver)
    {
        _model = model;
        _layers = layers;
        foreach (var e in layers)
        {
            bool indices = e.Module is TorchSharp.Modules.Embedding;
            _observers[e.Name] = new LayerObservers(indices ? null : makeObserver(e.Name, $"input of layer '{e.Name}'"));
        }
    }

    public IReadOnlyDictionary<string, LayerObservers> Observers => _observers;

    /// <summary>The first batch (over a clone of a single-tensor input), or null before <see cref="Run"/>.</summary>
    public CalibrationBatch? FirstBatch { get; private set; }

    /// <summary>The model's output for the first batch.</summary>
    public Tensor? FirstModelOutput { get; private set; }

    /// <summary>Each layer's output for the first batch (first call of the layer); empty when not kept.</summary>
    public IReadOnlyDictionary<string, Tensor> FirstOutputs => _firstOutputs;

    public long Samples { get; private set; }
    public int Batches { get; private set; }

    /// <summary>Runs batches until at least <paramref name="targetSamples"/> samples have been seen; <paramref name="observe"/>
    /// feeds the input observers, <paramref name="keepFirstOutputs"/> keeps each layer's output on the first batch
    /// (<see cref="FirstOutputs"/>, for validation's per-layer output SQNR).</summary>
    public void Run(IEnumerable<CalibrationBatch> data, long targetSamples, IProgress<CalibrationProgress>? progress, bool observe = true,
        bool keepFirstOutputs = true)
    {
        ArgumentNullException.ThrowIfNull(data);
        var stack = new List<(string Name, nn.Module Module, long[] Shape)>();
        var removers = new List<Action>();
        bool firstBatch = true;
        try
        {
            // Pre/post hooks on every module, to name the layer in which a bad input fails.
            var all = ModuleTree.Walk(_model).Select(e => (e.Name, e.Module)).Prepend(("(model)", _model));
            var selected = _layers.ToDictionary(e => (object)e.Module, e => e.Name, ReferenceEqualityComparer.Instance);
            foreach (var (name, module) in all)
            {
                if (module is not nn.Module<Tensor, Tensor> m) continue;
                string n = name;
                removers.Add(Unhook(m.register_forward_pre_hook((mod, x) =>
                {
                    stack.Add((n, mod, x.shape));
                    return null!;
                })));
                selected.TryGetValue(module, out string? layerName);
                removers.Add(Unhook(m.register_forward_hook((mod, x, y) =>
                {
                    if (stack.Count > 0) stack.RemoveAt(stack.Count - 1);
                    if (layerName is null) return null!;
                    var obs = _observers[layerName];
                    obs.Calls++;
                    if (observe) obs.Input?.Observe(x);
                    if (keepFirstOutputs && firstBatch && !_firstOutputs.ContainsKey(layerName))
                        _firstOutputs[layerName] = y.detach().clone().DetachFromDisposeScope();
                    return null!;
                })));
            }

            using var noGrad = no_grad();
            foreach (var batch in data)
            {
                if (batch is null || batch.Input is { IsInvalid: true })
                    throw new ArgumentException($"Calibration batch {Batches + 1} is null or disposed.");
                long n = batch.Samples;
                using (var scope = NewDisposeScope())
                {
                    stack.Clear();
                    Tensor y;
                    try
                    {
                        y = batch.Run(_model);
                    }
                    catch (Exception e) when (e is ExternalException or ArgumentException or InvalidOperationException or IndexOutOfRangeException)
                    {
                        throw Failure(e, stack, batch);
                    }
                    if (firstBatch)
                    {
                        if (batch.Input is { } input)
                        {
                            // The caller may dispose its tensors after yielding them: validation runs on a copy.
                            _firstInput = input.detach().clone().DetachFromDisposeScope();
                            FirstBatch = CalibrationBatch.Of(_firstInput);
                        }
                        else FirstBatch = batch;
                        FirstModelOutput = y.detach().clone().DetachFromDisposeScope();
                    }
                }
                firstBatch = false;
                Samples += n;
                Batches++;
                // Whole batches: the last one can pass the target (a weight-only run takes one batch for a target of 1).
                // The last report then gives the samples run as the target, so a counter never reads "8/1".
                progress?.Report(new CalibrationProgress(Samples, Math.Max(targetSamples, Samples), Batches));
                if (Samples >= targetSamples) break;
            }
        }
        finally
        {
            foreach (var r in removers) r();
        }
        if (Batches == 0)
            throw new ArgumentException("The calibration data source yielded no tensors. Pass at least one batch of inputs (e.g. 150 samples from the training or validation set).");
        var never = _observers.Where(kv => kv.Value.Calls == 0).Select(kv => kv.Key).ToList();
        if (never.Count > 0)
            throw new ModelQuantizationException(
                $"Layer(s) {string.Join(", ", never.Select(n => $"'{n}'"))} never ran during calibration, so their activations could not be observed. " +
                "Forward hooks only fire when the parent's forward calls the layer as child.call(x), not child.forward(x); " +
                "change the model's forward, or exclude these layers.");
    }

    private static Exception Failure(Exception e, List<(string Name, nn.Module Module, long[] Shape)> stack, CalibrationBatch batch)
    {
        string where = "";
        if (stack.Count > 0)
        {
            var (name, module, shape) = stack[^1];
            where = $" in layer '{name}' ({module.GetType().Name}{Expectation(module)}), whose input had shape [{string.Join(", ", shape)}]";
        }
        return new ModelQuantizationException(
            $"Running calibration data through the model failed{where}; the batch was {batch.Description}. " +
            $"Check that the data matches the model's input. libtorch said: {QuantizedModule.FirstLine(e.Message)}", e);
    }

    private static string Expectation(nn.Module m) => m switch
    {
        TorchSharp.Modules.Linear l => $", expects last dimension {l.in_features}",
        TorchSharp.Modules.Convolution c => $", expects {c.in_channels} input channels",
        _ => "",
    };

    public void Dispose()
    {
        _firstInput?.Dispose();
        FirstModelOutput?.Dispose();
        foreach (var t in _firstOutputs.Values) t.Dispose();
        _firstOutputs.Clear();
    }
}
