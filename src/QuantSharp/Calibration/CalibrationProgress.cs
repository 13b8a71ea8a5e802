using static TorchSharp.torch;

namespace QuantSharp.Calibration;

/// <summary>Progress of a calibration run, reported after each batch.</summary>
/// <param name="Samples">Samples run so far (counted along dimension 0 of each input).</param>
/// <param name="TargetSamples">Samples the run stops after: the requested count, or the samples run when the last (whole)
/// batch went past it, so <paramref name="Samples"/> never exceeds it and the last report has both equal.</param>
/// <param name="Batches">Batches run so far.</param>
public readonly record struct CalibrationProgress(long Samples, long TargetSamples, int Batches);

/// <summary>Helpers for calibration data sources.</summary>
public static class CalibrationData
{
    /// <summary>The inputs of <c>(input, target)</c> pairs, as a data loader yields them.</summary>
    /// <param name="pairs">Pairs of input and target; targets are ignored.</param>
    public static IEnumerable<Tensor> FromPairs(IEnumerable<(Tensor Input, Tensor Target)> pairs)
    {
        ArgumentNullException.ThrowIfNull(pairs);
        return pairs.Select(p => p.Input);
    }
}
