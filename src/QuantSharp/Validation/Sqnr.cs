using static TorchSharp.torch;

namespace QuantSharp.Validation;

/// <summary>Signal-to-quantization-noise ratio (as <c>torch.ao.ns.fx.utils.compute_sqnr</c>).</summary>
internal static class SqnrDb
{
    /// <summary><c>20 * log10(||reference|| / ||reference - other||)</c> in dB; +infinity when equal.</summary>
    public static double Compute(Tensor reference, Tensor other)
    {
        using var scope = NewDisposeScope();
        var a = reference.detach().to(ScalarType.Float64);
        var b = other.detach().to(ScalarType.Float64);
        if (!a.shape.SequenceEqual(b.shape))
            throw new ArgumentException($"SQNR needs tensors of the same shape, got [{string.Join(", ", a.shape)}] and [{string.Join(", ", b.shape)}].");
        double signal = a.norm().item<double>();
        double noise = (a - b).norm().item<double>();
        if (noise == 0) return double.PositiveInfinity;
        return 20 * Math.Log10(signal / noise);
    }
}
