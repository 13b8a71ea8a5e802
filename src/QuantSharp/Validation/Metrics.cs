using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Validation;

/// <summary>Accuracy metrics for comparing a quantized result with its float reference.</summary>
public static class Metrics
{
    /// <summary>
    /// Signal-to-quantization-noise ratio in decibels, as <c>torch.ao.ns.fx.utils.compute_sqnr</c>:
    /// <c>20 * log10(||reference|| / ||reference - actual||)</c> (Frobenius norms, computed in float64).
    /// </summary>
    /// <param name="reference">The float tensor (the signal).</param>
    /// <param name="actual">The approximation, same shape (e.g. the dequantized tensor).</param>
    /// <returns>The SQNR in dB; <see cref="double.PositiveInfinity"/> when the tensors are equal.</returns>
    /// <exception cref="ArgumentException">The shapes differ.</exception>
    public static double Sqnr(Tensor reference, Tensor actual)
    {
        ArgumentNullException.ThrowIfNull(reference);
        ArgumentNullException.ThrowIfNull(actual);
        if (!reference.shape.SequenceEqual(actual.shape))
            throw new ArgumentException(
                $"SQNR needs tensors of the same shape; got {QuantSpec.FormatShape(reference.shape)} and {QuantSpec.FormatShape(actual.shape)}.", nameof(actual));
        using var scope = torch.NewDisposeScope();
        var a = reference.detach().to(ScalarType.Float64, torch.CPU);
        var b = actual.detach().to(ScalarType.Float64, torch.CPU);
        double signal = a.norm().item<double>();
        double noise = (a - b).norm().item<double>();
        if (noise == 0) return double.PositiveInfinity;
        return 20 * Math.Log10(signal / noise);
    }
}
