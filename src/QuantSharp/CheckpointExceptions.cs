using System.Globalization;
using System.Text.Json.Nodes;
using QuantSharp.Serialization;

namespace QuantSharp;

/// <summary>A checkpoint could not be quantized (bad input, bad settings, or the output could not be written).
/// Nothing was written under the output name.</summary>
public sealed class CheckpointQuantizationException : QuantizationException
{
    /// <summary>Creates the exception.</summary>
    public CheckpointQuantizationException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>Validation found problems and the policy was <see cref="ValidationFailureMode.Error"/>: nothing was written
/// under the output name. <see cref="Report"/> lists every tensor.</summary>
public sealed class CheckpointValidationException : QuantizationException
{
    /// <summary>Creates the exception.</summary>
    public CheckpointValidationException(Validation.QuantizationReport report)
        : base($"Validation failed for {report.Problems.Count} problem(s); nothing was written to '{report.Output}'. " +
            "First: " + (report.Problems.Count > 0 ? report.Problems[0] : "?") +
            " Use --on-failure warn to write anyway, or lower the threshold / change the settings for that tensor.")
    {
        Report = report;
    }

    /// <summary>The full report.</summary>
    public Validation.QuantizationReport Report { get; }
}

/// <summary>Progress of a long checkpoint operation.</summary>
/// <param name="BytesDone">Input bytes processed.</param>
/// <param name="BytesTotal">Input bytes in all.</param>
/// <param name="Tensor">The tensor being processed.</param>
public readonly record struct CheckpointProgress(long BytesDone, long BytesTotal, string Tensor);
