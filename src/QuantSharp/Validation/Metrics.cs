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
    /// <returns>The SQNR in dB; <see cref="double.PositiveInfinity"/> only when the tensors are equal (also all zeros),
    /// <see cref="double.NegativeInfinity"/> when <paramref name="actual"/> has an infinity the reference lacks,
    /// <see cref="double.NaN"/> when either holds NaN.</returns>
    /// <exception cref="ArgumentException">The shapes differ.</exception>
    public static double Sqnr(Tensor reference, Tensor actual)
    {
        ArgumentNullException.ThrowIfNull(reference);
        ArgumentNullException.ThrowIfNull(actual);
        if (!reference.shape.SequenceEqual(actual.shape))
            throw new ArgumentException(
                $"SQNR needs tensors of the same shape; got {QuantSpec.FormatShape(reference.shape)} and {QuantSpec.FormatShape(actual.shape)}.", nameof(actual));
        var sqnr = new SqnrAccumulator();
        sqnr.Add(reference.detach().cpu(), actual.detach().cpu());
        return sqnr.Db;
    }
}
