namespace QuantSharp;

/// <summary>
/// Base of the quantizers' domain failures, so that a caller can catch them all:
/// <see cref="CheckpointQuantizationException"/> (bad input, recipe or paths; nothing written),
/// <see cref="CheckpointValidationException"/> (a checkpoint failed validation; nothing written) and
/// <see cref="Validation.QuantizationValidationException"/> (a model failed validation). Argument errors of the API stay
/// <see cref="ArgumentException"/>s, and a malformed safetensors file is a <see cref="Serialization.SafetensorsFormatException"/>.
/// </summary>
public abstract class QuantizationException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What failed and how to fix it.</param>
    /// <param name="inner">The underlying exception, if any.</param>
    protected QuantizationException(string message, Exception? inner = null) : base(message, inner) { }
}
