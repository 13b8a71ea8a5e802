using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Calibration;

/// <summary>
/// One calibration batch for a model of any forward signature: how to run a model on it, and how many samples it
/// holds. The quantizer runs the batch on the float model (calibration) and again on the quantized and reloaded
/// models (validation), so the callback must work on any model of the architecture and the batch's tensors must stay
/// valid until <see cref="Quantizer.Quantize{T}(T, QuantizationRecipe, IEnumerable{CalibrationBatch}, Func{T}?, bool, QuantSpec?, int?, ValidationFailureMode?, IProgress{CalibrationProgress}?)"/> returns.
/// </summary>
/// <example>
/// <code>
/// // A model taking a sequence and its attention mask:
/// var batches = data.Select(b =&gt; new CalibrationBatch(m =&gt; ((MyModel)m).call(b.Ids, b.Mask), b.Ids.shape[0]));
/// var result = Quantizer.Quantize(model, QuantizationRecipe.Int8Static(), batches, factory: () =&gt; new MyModel());
/// </code>
/// </example>
public sealed class CalibrationBatch
{
    private readonly Func<nn.Module, Tensor> _run;

    /// <summary>A batch run by a callback.</summary>
    /// <param name="run">Runs the given model (float, quantized or reloaded) on this batch and returns its output (call layers with <c>call</c> so hooks fire).</param>
    /// <param name="samples">Samples in the batch (counted towards the calibration target).</param>
    /// <param name="description">How to describe the batch in error messages (e.g. its shapes).</param>
    public CalibrationBatch(Func<nn.Module, Tensor> run, long samples, string? description = null)
    {
        ArgumentNullException.ThrowIfNull(run);
        ArgumentOutOfRangeException.ThrowIfNegative(samples);
        _run = run;
        Samples = samples;
        Description = description ?? $"a batch of {samples} sample(s)";
    }

    /// <summary>Samples in the batch.</summary>
    public long Samples { get; }

    /// <summary>How the batch is named in error messages.</summary>
    public string Description { get; }

    /// <summary>A single-tensor batch for a <c>Module&lt;Tensor, Tensor&gt;</c> (samples along dimension 0).</summary>
    /// <param name="input">The input (not disposed by the quantizer).</param>
    /// <exception cref="ArgumentException">The tensor is null or disposed.</exception>
    public static CalibrationBatch Of(Tensor input)
    {
        if (input is null || input.IsInvalid) throw new ArgumentException("A calibration batch is null or disposed.", nameof(input));
        return new CalibrationBatch(m => m is nn.Module<Tensor, Tensor> single
                ? single.call(input)
                : throw new ArgumentException($"Calibration with tensors runs the model as Module<Tensor, Tensor>; {m.GetType().Name} is not. Pass CalibrationBatch callbacks that call it with all its inputs."),
            input.dim() == 0 ? 1 : input.shape[0],
            $"a batch of shape [{string.Join(", ", input.shape)}] and dtype {input.dtype}") { Input = input };
    }

    /// <summary>The input of a single-tensor batch (<see cref="Of"/>), else null.</summary>
    internal Tensor? Input { get; private init; }

    /// <summary>Runs <paramref name="model"/> on the batch.</summary>
    internal Tensor Run(nn.Module model) => _run(model);
}
