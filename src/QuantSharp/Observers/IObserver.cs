using TorchSharp;

namespace QuantSharp.Observers;

/// <summary>
/// Watches tensors during calibration and turns what it saw into quantization parameters
/// (the role of PyTorch's <c>torch.ao.quantization</c> observers).
/// </summary>
/// <remarks>
/// Observers copy what they need out of each tensor; the caller keeps ownership of the tensors it passes in.
/// Create them by name with <see cref="ObserverFactory.Create(string, ObserverOptions)"/>. Not thread-safe.
/// </remarks>
public interface IObserver
{
    /// <summary>The options the observer was created with.</summary>
    ObserverOptions Options { get; }

    /// <summary>How many tensors have been observed since creation or the last <see cref="Reset"/>.</summary>
    int Count { get; }

    /// <summary>Records the statistics of one tensor (one calibration batch).</summary>
    /// <param name="input">A floating-point tensor (float32, float64, float16 or bfloat16), on the CPU, with at least one element.</param>
    /// <exception cref="ArgumentException">The tensor is empty, not floating point, has the wrong shape for
    /// the chosen axis or group size, or contains NaN or infinity (the message names the tensor).</exception>
    void Observe(torch.Tensor input);

    /// <summary>Scales and zero points from what has been observed.</summary>
    /// <exception cref="InvalidOperationException">Nothing has been observed yet.</exception>
    ObserverResult ComputeQParams();

    /// <summary>Forgets everything observed.</summary>
    void Reset();
}

/// <summary>Quantization parameters chosen by an observer.</summary>
/// <param name="Scale">One scale per tensor, channel or group (float32); groups in row-major order of the
/// [rows..., last/G] layout.</param>
/// <param name="ZeroPoint">One zero point per entry of <paramref name="Scale"/>.</param>
/// <param name="Min">The observed (or averaged) minimum per entry.</param>
/// <param name="Max">The observed (or averaged) maximum per entry.</param>
/// <param name="Threshold">For histogram and percentile observers, the clipping range [low, high] the scale was
/// computed from; null for the min/max observers, whose range is [<paramref name="Min"/>, <paramref name="Max"/>].</param>
public sealed record ObserverResult(float[] Scale, int[] ZeroPoint, float[] Min, float[] Max, float[]? Threshold = null);
