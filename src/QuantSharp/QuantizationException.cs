namespace QuantSharp;

/// <summary>
/// Base of every error QuantSharp raises for bad input, data or files, so that a caller can catch them all (docs/QUANTIZER.md
/// lists the family): <see cref="RecipeException"/> (a recipe's JSON or values, or a recipe that does not fit the weights),
/// <see cref="QuantizedFileException"/> (a file or checkpoint that cannot be read as a quantized one),
/// <see cref="Serialization.SafetensorsFormatException"/> (a file that breaks the safetensors format),
/// <see cref="ModelQuantizationException"/> (a model that cannot be quantized as asked),
/// <see cref="CheckpointQuantizationException"/> (a checkpoint that cannot be quantized, or bad paths; nothing written),
/// <see cref="CheckpointValidationException"/> and <see cref="Validation.QuantizationValidationException"/> (validation
/// failed). Errors of the calling code stay the .NET argument exceptions (<see cref="ArgumentNullException"/>,
/// <see cref="ArgumentOutOfRangeException"/>, <see cref="ArgumentException"/> for an argument that is unusable whatever
/// the data: a null factory, a span too short, a tensor of the wrong dtype passed to a primitive).
/// </summary>
public abstract class QuantizationException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What failed and how to fix it.</param>
    /// <param name="inner">The underlying exception, if any.</param>
    protected QuantizationException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>
/// A recipe is invalid: its JSON (not valid JSON, an unknown or duplicate key, a wrong value) or its values (an unknown
/// observer, a group size that is not positive, a pattern that matches no weight), or it cannot be applied to a weight
/// (a granularity the weight's shape does not allow, a group size that does not divide with <c>StrictGroupSize</c>).
/// The message names the setting and how to fix it.
/// </summary>
public sealed class RecipeException : QuantizationException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What is wrong, naming the setting, and how to fix it.</param>
    /// <param name="inner">The underlying exception, if any.</param>
    public RecipeException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>
/// A file or checkpoint cannot be read as a QuantSharp quantized one: it is not one (no <c>quantsharp.format</c>), it is
/// of a newer format version, its per-layer entries are malformed, a quantized tensor or one of its parts is missing or
/// has another dtype or shape, or it does not fit the model the factory builds. The message names the file and the
/// layer or tensor. A file that breaks the safetensors format itself is a <see cref="Serialization.SafetensorsFormatException"/>.
/// </summary>
public sealed class QuantizedFileException : QuantizationException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What is wrong, naming the file and the layer or tensor, and how to fix it.</param>
    /// <param name="inner">The underlying exception, if any.</param>
    public QuantizedFileException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>
/// A model cannot be quantized as asked: it has nothing the recipe quantizes, it is already quantized, or one of its
/// layers or its calibration data does not allow the recipe's method. The message names the layer and the fix; the
/// caller's model is unchanged.
/// </summary>
public sealed class ModelQuantizationException : QuantizationException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What is wrong, naming the layer, and how to fix it.</param>
    /// <param name="inner">The underlying exception, if any.</param>
    public ModelQuantizationException(string message, Exception? inner = null) : base(message, inner) { }
}
