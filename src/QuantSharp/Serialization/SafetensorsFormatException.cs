namespace QuantSharp.Serialization;

/// <summary>The rule of the safetensors format (or of a sharded-checkpoint index) that a file breaks.</summary>
public enum SafetensorsRule
{
    /// <summary>The file is shorter than the 8-byte header length.</summary>
    FileTooShort,
    /// <summary>The header length N is larger than 100,000,000 bytes.</summary>
    HeaderTooLarge,
    /// <summary>8 + N is larger than the file.</summary>
    HeaderLengthExceedsFile,
    /// <summary>The header is not valid UTF-8.</summary>
    InvalidUtf8,
    /// <summary>The header does not start with <c>{</c> (leading whitespace, an array, an empty header...).</summary>
    HeaderNotObject,
    /// <summary>The header is not well-formed JSON (or nests deeper than the format allows).</summary>
    InvalidJson,
    /// <summary>The same tensor name (or field) appears twice.</summary>
    DuplicateName,
    /// <summary><c>__metadata__</c> is not an object whose values are all strings.</summary>
    InvalidMetadata,
    /// <summary>A tensor entry is not an object with exactly <c>dtype</c>, <c>shape</c> and <c>data_offsets</c>.</summary>
    InvalidTensorEntry,
    /// <summary>The dtype is not one of the format's dtypes.</summary>
    UnknownDType,
    /// <summary>The shape is not an array of non-negative integers.</summary>
    InvalidShape,
    /// <summary><c>data_offsets</c> is not two non-negative integers [begin, end] with begin &lt;= end.</summary>
    InvalidOffsets,
    /// <summary>Sorted by offset, the tensors do not tile the data buffer from 0 without gaps or overlaps.</summary>
    OffsetsNotContiguous,
    /// <summary>Element count times element size overflows 64 bits.</summary>
    SizeOverflow,
    /// <summary>end - begin differs from element count times element size.</summary>
    SizeMismatch,
    /// <summary>The data buffer does not end exactly at the end of the file (trailing bytes or offsets past the end).</summary>
    BufferSizeMismatch,
    /// <summary>A <c>*.safetensors.index.json</c> file is malformed or disagrees with its shards.</summary>
    InvalidIndex,
}

/// <summary>
/// A safetensors file (or sharded-checkpoint index) breaks a rule of the format. <see cref="Rule"/> says which,
/// <see cref="FilePath"/> and <see cref="TensorName"/> say where; the message names all three. Part of the
/// <see cref="QuantizationException"/> family (not an <see cref="IOException"/>: the file was read, its content is wrong;
/// I/O failures such as a missing or unreadable file stay <see cref="IOException"/>s).
/// </summary>
public sealed class SafetensorsFormatException : QuantizationException
{
    /// <summary>Creates the exception; the message is built from the arguments.</summary>
    /// <param name="rule">The broken rule.</param>
    /// <param name="filePath">The file.</param>
    /// <param name="tensorName">The tensor concerned, or null.</param>
    /// <param name="detail">What exactly is wrong.</param>
    /// <param name="inner">The underlying exception, if any.</param>
    public SafetensorsFormatException(SafetensorsRule rule, string filePath, string? tensorName, string detail, Exception? inner = null)
        : base(BuildMessage(rule, filePath, tensorName, detail), inner)
    {
        Rule = rule;
        FilePath = filePath;
        TensorName = tensorName;
        Detail = detail;
    }

    /// <summary>The broken rule.</summary>
    public SafetensorsRule Rule { get; }

    /// <summary>The file that breaks it.</summary>
    public string FilePath { get; }

    /// <summary>The tensor concerned, or null when the problem is not about one tensor.</summary>
    public string? TensorName { get; }

    /// <summary>What exactly is wrong (the message without file, tensor and rule).</summary>
    public string Detail { get; }

    private static string BuildMessage(SafetensorsRule rule, string filePath, string? tensorName, string detail)
    {
        string where = tensorName is null ? $"'{filePath}'" : $"'{filePath}', tensor '{tensorName}'";
        return $"Invalid safetensors file {where}: {detail} (rule {rule}). The file is damaged or was not written by a conforming writer; re-export it.";
    }
}
