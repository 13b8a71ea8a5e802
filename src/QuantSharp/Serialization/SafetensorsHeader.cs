using System.Buffers;
using System.Buffers.Binary;
using System.Text.Encodings.Web;
using System.Text;
using System.Text.Json;

namespace QuantSharp.Serialization;

/// <summary>Parses and validates safetensors headers; builds them for the writer.</summary>
internal static class SafetensorsHeader
{
    /// <summary>Largest header the format allows (the reference implementation's limit).</summary>
    public const long MaxHeaderLength = 100_000_000;

    public const string MetadataKey = "__metadata__";

    // Root object (1) > tensor entry or __metadata__ (2) > shape / data_offsets array (3); one more level so that
    // a nested metadata value is reported as InvalidMetadata instead of a depth error.
    private static readonly JsonReaderOptions s_readerOptions = new()
    {
        MaxDepth = 4,
        CommentHandling = JsonCommentHandling.Disallow,
        AllowTrailingCommas = false,
    };

    /// <summary>Reads the 8-byte little-endian header length and checks it against the limits and the file length.</summary>
    public static long ReadHeaderLength(ReadOnlySpan<byte> first8, long fileLength, string path)
    {
        if (fileLength < 8)
            throw new SafetensorsFormatException(SafetensorsRule.FileTooShort, path, null,
                $"the file has {fileLength} bytes, fewer than the 8-byte header length");
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(first8);
        if (n > MaxHeaderLength)
            throw new SafetensorsFormatException(SafetensorsRule.HeaderTooLarge, path, null,
                $"header length {n} exceeds the limit of {MaxHeaderLength} bytes");
        if (8 + (long)n > fileLength)
            throw new SafetensorsFormatException(SafetensorsRule.HeaderLengthExceedsFile, path, null,
                $"header length {n} plus 8 exceeds the file length {fileLength}");
        return (long)n;
    }

    /// <summary>Parses the header JSON and validates every tensor entry against a data buffer of <paramref name="bufferLength"/> bytes.</summary>
    /// <returns>The tensors sorted by offset, and the metadata.</returns>
    public static (List<SafetensorsTensorInfo> Tensors, Dictionary<string, string> Metadata) Parse(
        ReadOnlySpan<byte> header, long bufferLength, string path)
    {
        if (!System.Text.Unicode.Utf8.IsValid(header))
            throw new SafetensorsFormatException(SafetensorsRule.InvalidUtf8, path, null, "the header is not valid UTF-8");
        if (header.IsEmpty || header[0] != (byte)'{')
            throw new SafetensorsFormatException(SafetensorsRule.HeaderNotObject, path, null,
                header.IsEmpty ? "the header is empty" : $"the header starts with byte 0x{header[0]:X2}, not '{{' (no leading whitespace allowed)");

        var tensors = new List<SafetensorsTensorInfo>();
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        var names = new HashSet<string>(StringComparer.Ordinal);
        var reader = new Utf8JsonReader(header, s_readerOptions);
        try
        {
            Expect(ref reader, JsonTokenType.StartObject, path);
            while (true)
            {
                Next(ref reader, path);
                if (reader.TokenType == JsonTokenType.EndObject) break;
                string name = GetString(ref reader, path, null);
                if (!names.Add(name))
                    throw new SafetensorsFormatException(SafetensorsRule.DuplicateName, path, name,
                        name == MetadataKey ? "'__metadata__' appears twice" : "the tensor name appears twice in the header");
                if (name == MetadataKey) ReadMetadata(ref reader, path, metadata);
                else tensors.Add(ReadTensorEntry(ref reader, path, name));
            }
            if (reader.Read())
                throw new SafetensorsFormatException(SafetensorsRule.InvalidJson, path, null, "content after the header object");
        }
        catch (JsonException e)
        {
            throw new SafetensorsFormatException(SafetensorsRule.InvalidJson, path, null,
                $"malformed JSON at byte {e.BytePositionInLine} of line {e.LineNumber}: {e.Message}", e);
        }

        var sorted = tensors.OrderBy(t => t.Begin).ThenBy(t => t.End).ToList();
        long cursor = 0;
        foreach (var t in sorted)
        {
            if (t.Begin != cursor)
                throw new SafetensorsFormatException(SafetensorsRule.OffsetsNotContiguous, path, t.Name,
                    t.Begin > cursor
                        ? $"data starts at {t.Begin} but the previous tensor ends at {cursor} (gap of {t.Begin - cursor} bytes)"
                        : $"data starts at {t.Begin} but the previous tensor ends at {cursor} (overlap of {cursor - t.Begin} bytes)");
            long expected;
            try
            {
                expected = checked(t.Shape.Aggregate(1L, (a, d) => checked(a * d)) * t.DType.ElementSize());
            }
            catch (OverflowException)
            {
                throw new SafetensorsFormatException(SafetensorsRule.SizeOverflow, path, t.Name,
                    $"the byte size of shape [{string.Join(", ", t.Shape)}] of {t.DType} overflows 64 bits");
            }
            if (expected != t.End - t.Begin)
                throw new SafetensorsFormatException(SafetensorsRule.SizeMismatch, path, t.Name,
                    $"shape [{string.Join(", ", t.Shape)}] of {t.DType} needs {expected} bytes but data_offsets [{t.Begin}, {t.End}] span {t.End - t.Begin}");
            cursor = t.End;
        }
        if (cursor != bufferLength)
            throw new SafetensorsFormatException(SafetensorsRule.BufferSizeMismatch, path, null,
                cursor < bufferLength
                    ? $"the tensors end at byte {cursor} of the data buffer but the file has {bufferLength - cursor} more bytes"
                    : $"the tensors need {cursor} bytes of data but the file holds only {bufferLength}");
        return (sorted, metadata);
    }

    /// <summary>
    /// The one header builder of both writers (<see cref="SafetensorsWriter"/>, <see cref="SafetensorsStreamWriter"/>):
    /// <c>__metadata__</c> first (keys sorted), then the tensors in the given order with contiguous offsets from 0, padded
    /// with spaces to a multiple of 8, so that the same content always gives the same bytes. Enforces the format's rules
    /// before anything is written: names unique, not <c>__metadata__</c>, well-formed Unicode; metadata well-formed;
    /// dimensions non-negative; sizes within 64 bits; the header within <see cref="MaxHeaderLength"/>.
    /// </summary>
    /// <returns>The padded header; <paramref name="sizes"/> gets each tensor's byte size.</returns>
    /// <exception cref="ArgumentException">A name, metadata string, dtype or shape breaks a rule.</exception>
    /// <exception cref="SafetensorsFormatException">Rule <see cref="SafetensorsRule.HeaderTooLarge"/>: the header would exceed the limit.</exception>
    public static byte[] Build(IReadOnlyList<SafetensorsTensorSpec> specs, IReadOnlyDictionary<string, string>? metadata, string path, out long[] sizes)
    {
        sizes = new long[specs.Count];
        var names = new HashSet<string>(StringComparer.Ordinal);
        var buffer = new ArrayBufferWriter<byte>();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping, SkipValidation = false }))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WritePropertyName(MetadataKey);
                json.WriteStartObject();
                foreach (var (key, value) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                {
                    CheckText(key, "metadata key");
                    ArgumentNullException.ThrowIfNull(value, $"metadata['{key}']");
                    CheckText(value, $"metadata value of '{key}'");
                    json.WriteString(key, value);
                }
                json.WriteEndObject();
            }
            long offset = 0;
            for (int i = 0; i < specs.Count; i++)
            {
                var spec = specs[i] ?? throw new ArgumentException("A tensor spec is null.", nameof(specs));
                string name = spec.Name ?? throw new ArgumentException("A tensor name is null.", nameof(specs));
                CheckText(name, "tensor name");
                if (name == MetadataKey) throw new ArgumentException("'__metadata__' is reserved and cannot name a tensor.", nameof(specs));
                if (!names.Add(name)) throw new ArgumentException($"Tensor name '{name}' appears twice.", nameof(specs));
                if (!Enum.IsDefined(spec.DType)) throw new ArgumentException($"Tensor '{name}': unknown dtype {spec.DType}.", nameof(specs));
                ArgumentNullException.ThrowIfNull(spec.Shape, $"shape of '{name}'");
                long size;
                try
                {
                    long count = 1;
                    foreach (long d in spec.Shape)
                    {
                        if (d < 0) throw new ArgumentException($"Tensor '{name}': dimension {d} is negative.", nameof(specs));
                        count = checked(count * d);
                    }
                    size = checked(count * spec.DType.ElementSize());
                    sizes[i] = size;
                    json.WritePropertyName(name);
                    json.WriteStartObject();
                    json.WriteString("dtype", spec.DType.ToString());
                    json.WriteStartArray("shape");
                    foreach (long d in spec.Shape) json.WriteNumberValue(d);
                    json.WriteEndArray();
                    json.WriteStartArray("data_offsets");
                    json.WriteNumberValue(offset);
                    offset = checked(offset + size);
                    json.WriteNumberValue(offset);
                    json.WriteEndArray();
                    json.WriteEndObject();
                }
                catch (OverflowException)
                {
                    throw new ArgumentException($"Tensor '{name}': shape [{string.Join(", ", spec.Shape)}] of {spec.DType} (or the file) is too large; sizes overflow 64 bits.", nameof(specs));
                }
            }
            json.WriteEndObject();
        }
        long padded = (buffer.WrittenCount + 7L) / 8 * 8;
        if (padded > MaxHeaderLength)
            throw new SafetensorsFormatException(SafetensorsRule.HeaderTooLarge, path, null,
                $"the header would have {padded:N0} bytes ({(metadata ?? new Dictionary<string, string>()).Sum(kv => (long)kv.Key.Length + kv.Value.Length):N0} of them metadata), " +
                $"more than the format's limit of {MaxHeaderLength:N0}; nothing was written");
        var header = new byte[padded];
        buffer.WrittenSpan.CopyTo(header);
        header.AsSpan(buffer.WrittenCount).Fill((byte)' ');
        return header;
    }

    private static readonly UTF8Encoding s_strictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private static void CheckText(string text, string what)
    {
        ArgumentNullException.ThrowIfNull(text, what);
        try { s_strictUtf8.GetByteCount(text); }
        catch (EncoderFallbackException e) { throw new ArgumentException($"The {what} '{text}' is not well-formed UTF-16 (lone surrogate).", e); }
    }

    private static void ReadMetadata(ref Utf8JsonReader reader, string path, Dictionary<string, string> metadata)
    {
        Next(ref reader, path);
        if (reader.TokenType == JsonTokenType.Null) return; // the reference writer's "no metadata"
        if (reader.TokenType != JsonTokenType.StartObject)
            throw new SafetensorsFormatException(SafetensorsRule.InvalidMetadata, path, null,
                $"'__metadata__' must be an object of strings, found {reader.TokenType}");
        while (true)
        {
            Next(ref reader, path);
            if (reader.TokenType == JsonTokenType.EndObject) return;
            string key = GetString(ref reader, path, null);
            Next(ref reader, path);
            if (reader.TokenType != JsonTokenType.String)
                throw new SafetensorsFormatException(SafetensorsRule.InvalidMetadata, path, null,
                    $"metadata value of '{key}' must be a string, found {reader.TokenType}");
            string value = GetString(ref reader, path, null);
            if (!metadata.TryAdd(key, value))
                throw new SafetensorsFormatException(SafetensorsRule.DuplicateName, path, null, $"metadata key '{key}' appears twice");
        }
    }

    private static SafetensorsTensorInfo ReadTensorEntry(ref Utf8JsonReader reader, string path, string name)
    {
        Next(ref reader, path);
        if (reader.TokenType != JsonTokenType.StartObject)
            throw new SafetensorsFormatException(SafetensorsRule.InvalidTensorEntry, path, name,
                $"the entry must be an object with dtype, shape and data_offsets, found {reader.TokenType}");
        SafetensorsDType? dtype = null;
        long[]? shape = null;
        long[]? offsets = null;
        while (true)
        {
            Next(ref reader, path);
            if (reader.TokenType == JsonTokenType.EndObject) break;
            string field = GetString(ref reader, path, name);
            switch (field)
            {
                case "dtype":
                    if (dtype is not null) throw Duplicate();
                    Next(ref reader, path);
                    if (reader.TokenType != JsonTokenType.String)
                        throw new SafetensorsFormatException(SafetensorsRule.UnknownDType, path, name, $"dtype must be a string, found {reader.TokenType}");
                    string text = GetString(ref reader, path, name);
                    if (!SafetensorsDTypeInfo.TryParse(text, out var d))
                        throw new SafetensorsFormatException(SafetensorsRule.UnknownDType, path, name,
                            $"unknown dtype '{text}' (known: {string.Join(", ", Enum.GetNames<SafetensorsDType>())})");
                    dtype = d;
                    break;
                case "shape":
                    if (shape is not null) throw Duplicate();
                    shape = ReadIntegers(ref reader, path, name, SafetensorsRule.InvalidShape, "shape");
                    break;
                case "data_offsets":
                    if (offsets is not null) throw Duplicate();
                    offsets = ReadIntegers(ref reader, path, name, SafetensorsRule.InvalidOffsets, "data_offsets");
                    if (offsets.Length != 2)
                        throw new SafetensorsFormatException(SafetensorsRule.InvalidOffsets, path, name,
                            $"data_offsets must hold 2 integers [begin, end], found {offsets.Length}");
                    if (offsets[0] > offsets[1])
                        throw new SafetensorsFormatException(SafetensorsRule.InvalidOffsets, path, name,
                            $"data_offsets [{offsets[0]}, {offsets[1]}]: begin is after end");
                    break;
                default:
                    throw new SafetensorsFormatException(SafetensorsRule.InvalidTensorEntry, path, name,
                        $"unknown field '{field}' (allowed: dtype, shape, data_offsets)");
            }

            SafetensorsFormatException Duplicate() =>
                new(SafetensorsRule.DuplicateName, path, name, $"field '{field}' appears twice");
        }
        string? missing = dtype is null ? "dtype" : shape is null ? "shape" : offsets is null ? "data_offsets" : null;
        if (missing is not null)
            throw new SafetensorsFormatException(SafetensorsRule.InvalidTensorEntry, path, name, $"missing field '{missing}'");
        return new SafetensorsTensorInfo(name, dtype!.Value, shape!, offsets![0], offsets[1]);
    }

    private static long[] ReadIntegers(ref Utf8JsonReader reader, string path, string name, SafetensorsRule rule, string field)
    {
        Next(ref reader, path);
        if (reader.TokenType != JsonTokenType.StartArray)
            throw new SafetensorsFormatException(rule, path, name, $"{field} must be an array of non-negative integers, found {reader.TokenType}");
        var values = new List<long>();
        while (true)
        {
            Next(ref reader, path);
            if (reader.TokenType == JsonTokenType.EndArray) return values.ToArray();
            if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt64(out long v) || v < 0)
            {
                string found = reader.TokenType == JsonTokenType.Number
                    ? Encoding.UTF8.GetString(reader.ValueSpan.Length > 40 ? reader.ValueSpan[..40] : reader.ValueSpan)
                    : reader.TokenType.ToString();
                throw new SafetensorsFormatException(rule, path, name,
                    $"{field} must hold integers in [0, {long.MaxValue}], found {found}");
            }
            values.Add(v);
        }
    }

    private static void Expect(ref Utf8JsonReader reader, JsonTokenType type, string path)
    {
        Next(ref reader, path);
        if (reader.TokenType != type)
            throw new SafetensorsFormatException(SafetensorsRule.HeaderNotObject, path, null, $"the header must be a JSON object, found {reader.TokenType}");
    }

    private static void Next(ref Utf8JsonReader reader, string path)
    {
        if (!reader.Read())
            throw new SafetensorsFormatException(SafetensorsRule.InvalidJson, path, null, "the header JSON ends early");
    }

    private static string GetString(ref Utf8JsonReader reader, string path, string? tensor)
    {
        try
        {
            return reader.GetString()!;
        }
        catch (InvalidOperationException e) // e.g. an escaped lone surrogate
        {
            throw new SafetensorsFormatException(SafetensorsRule.InvalidJson, path, tensor, $"a string cannot be decoded: {e.Message}", e);
        }
    }
}
