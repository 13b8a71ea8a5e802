using System.Text;
using QuantSharp.Serialization;
using static QuantSharp.Tests.Serialization.SafetensorsTestUtil;

namespace QuantSharp.Tests.Serialization;

/// <summary>One hand-crafted file per rule of the format, built byte by byte here.</summary>
public sealed class SafetensorsRuleTests : IDisposable
{
    private readonly string _dir = NewTempDir();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly byte[] Four = Floats(1, 2, 3, 4);

    private const string W4 = """{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""";

    private SafetensorsFormatException Refused(byte[] bytes, SafetensorsRule rule, string? tensor = null)
    {
        string path = Path.Combine(_dir, Guid.NewGuid().ToString("N") + ".safetensors");
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.Equal(rule, e.Rule);
        Assert.Equal(path, e.FilePath);
        Assert.Equal(tensor, e.TensorName);
        Assert.Contains(path, e.Message);
        Assert.Contains(rule.ToString(), e.Message);
        if (tensor is not null) Assert.Contains($"tensor '{tensor}'", e.Message);
        return e;
    }

    private SafetensorsFile Accepted(byte[] bytes)
    {
        string path = Path.Combine(_dir, Guid.NewGuid().ToString("N") + ".safetensors");
        File.WriteAllBytes(path, bytes);
        return SafetensorsFile.Open(path);
    }

    [Fact]
    public void WellFormedFileIsAccepted()
    {
        using var f = Accepted(Build(W4 + " ", Four)); // trailing padding is allowed
        Assert.Equal([1f, 2f, 3f, 4f], System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(f.GetSpan("w")).ToArray());
        Assert.Equal(8 + W4.Length + 1, f.DataStart);
    }

    [Fact]
    public void FileShorterThanTheLengthField()
    {
        Refused([], SafetensorsRule.FileTooShort);
        Refused([8, 0, 0, 0, 0, 0, 0], SafetensorsRule.FileTooShort);
    }

    [Fact]
    public void HeaderLengthAboveTheLimit()
    {
        Refused(Build(W4, Four, declaredLength: 100_000_001), SafetensorsRule.HeaderTooLarge);
        Refused(Build(W4, Four, declaredLength: ulong.MaxValue), SafetensorsRule.HeaderTooLarge); // negative as a signed long
    }

    [Fact]
    public void HeaderLengthBeyondTheFile()
    {
        Refused(Build(W4, Four, declaredLength: (ulong)(W4.Length + Four.Length + 1)), SafetensorsRule.HeaderLengthExceedsFile);
    }

    [Fact]
    public void HeaderNotUtf8()
    {
        var header = Encoding.UTF8.GetBytes(W4);
        header[2] = 0xC3; // start of a two-byte sequence followed by '"': invalid
        Refused(Build(header, Four), SafetensorsRule.InvalidUtf8);
        header = Encoding.UTF8.GetBytes(W4);
        header[2] = 0xFF;
        Refused(Build(header, Four), SafetensorsRule.InvalidUtf8);
    }

    [Fact]
    public void HeaderMustStartWithABrace()
    {
        Refused(Build(" " + W4, Four), SafetensorsRule.HeaderNotObject);      // leading whitespace
        Refused(Build("\n" + W4, Four), SafetensorsRule.HeaderNotObject);
        Refused(Build("[1,2,3]", Four), SafetensorsRule.HeaderNotObject);
        Refused(Build("", []), SafetensorsRule.HeaderNotObject);               // N = 0
    }

    [Fact]
    public void HeaderMustBeWellFormedJson()
    {
        Refused(Build(W4[..^1], Four), SafetensorsRule.InvalidJson);                       // unterminated
        Refused(Build(W4 + "\0", Four), SafetensorsRule.InvalidJson);                      // NUL padding
        Refused(Build(W4 + "{}", Four), SafetensorsRule.InvalidJson);                      // two values
        Refused(Build("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16],}}""", Four), SafetensorsRule.InvalidJson); // trailing comma
        Refused(Build("""{/*c*/"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", Four), SafetensorsRule.InvalidJson);
        Refused(Build("""{"\ud800":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", Four), SafetensorsRule.InvalidJson); // lone surrogate escape
    }

    [Fact]
    public void NamesMustBeUnique()
    {
        const string dup = """{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}""";
        Refused(Build(dup, Four), SafetensorsRule.DuplicateName, "w");
        // The same name written with an escape is the same name.
        const string escaped = """{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"\u0077":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}""";
        Refused(Build(escaped, Four), SafetensorsRule.DuplicateName, "w");
        Refused(Build("""{"__metadata__":{"a":"1","a":"2"}}""", []), SafetensorsRule.DuplicateName);
        Refused(Build("""{"__metadata__":{},"__metadata__":{}}""", []), SafetensorsRule.DuplicateName, "__metadata__");
        Refused(Build("""{"w":{"dtype":"F32","dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", Four), SafetensorsRule.DuplicateName, "w");
    }

    [Fact]
    public void MetadataMustMapStringsToStrings()
    {
        Refused(Build("""{"__metadata__":{"k":5}}""", []), SafetensorsRule.InvalidMetadata);
        Refused(Build("""{"__metadata__":{"k":null}}""", []), SafetensorsRule.InvalidMetadata);
        Refused(Build("""{"__metadata__":{"k":{"x":"y"}}}""", []), SafetensorsRule.InvalidMetadata);
        Refused(Build("""{"__metadata__":["k"]}""", []), SafetensorsRule.InvalidMetadata);
        Refused(Build("""{"__metadata__":"k"}""", []), SafetensorsRule.InvalidMetadata);
        Refused(Build("""{"__metadata__":{"k":[[["deep"]]]}}""", []), SafetensorsRule.InvalidMetadata);
        using var ok = Accepted(Build("""{"__metadata__":{"k":"v","é":"✓"}}""", []));
        Assert.Equal("✓", ok.Metadata["é"]);
        using var none = Accepted(Build("""{"__metadata__":null}""", []));
        Assert.Empty(none.Metadata);
    }

    [Fact]
    public void TensorEntryMustHaveExactlyTheThreeFields()
    {
        Refused(Build("""{"w":{"dtype":"F32","data_offsets":[0,16]}}""", Four), SafetensorsRule.InvalidTensorEntry, "w");
        Refused(Build("""{"w":{"shape":[4],"data_offsets":[0,16]}}""", Four), SafetensorsRule.InvalidTensorEntry, "w");
        Refused(Build("""{"w":{"dtype":"F32","shape":[4]}}""", Four), SafetensorsRule.InvalidTensorEntry, "w");
        Refused(Build("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16],"extra":1}}""", Four), SafetensorsRule.InvalidTensorEntry, "w");
        Refused(Build("""{"w":[1]}""", []), SafetensorsRule.InvalidTensorEntry, "w");
        Refused(Build("""{"w":null}""", []), SafetensorsRule.InvalidTensorEntry, "w");
        Refused(Build("{\"w\":" + new string('[', 100_000) + "}", []), SafetensorsRule.InvalidTensorEntry, "w"); // deep nesting: no recursion
    }

    [Fact]
    public void DTypeMustBeKnown()
    {
        foreach (string dtype in new[] { "\"F7\"", "\"f32\"", "\"C64\"", "\"F8_E8M0\"", "\"\"", "32", "null" })
            Refused(Build($$$"""{"w":{"dtype":{{{dtype}}},"shape":[4],"data_offsets":[0,16]}}""", Four), SafetensorsRule.UnknownDType, "w");
    }

    [Fact]
    public void ShapeMustBeNonNegativeIntegers()
    {
        foreach (string shape in new[] { "[-4]", "[4.0]", "[4e0]", "[\"4\"]", "[null]", "4", "[[4]]", "[9223372036854775808]", "{}" })
        {
            var e = Refused(Build($$$"""{"w":{"dtype":"F32","shape":{{{shape}}},"data_offsets":[0,16]}}""", Four),
                SafetensorsRule.InvalidShape, "w");
            Assert.Contains("shape", e.Detail);
        }
    }

    [Fact]
    public void OffsetsMustBeTwoOrderedNonNegativeIntegers()
    {
        foreach (string offsets in new[] { "[16,0]", "[0]", "[0,8,16]", "[-1,15]", "[0,16.0]", "[]", "\"0,16\"" })
            Refused(Build($$$"""{"w":{"dtype":"F32","shape":[0],"data_offsets":{{{offsets}}}}}""", Four), SafetensorsRule.InvalidOffsets, "w");
    }

    [Fact]
    public void TensorsMustTileTheBufferFromZero()
    {
        // Gap between a and b.
        Refused(Build("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}}""", Four),
            SafetensorsRule.OffsetsNotContiguous, "b");
        // Overlap.
        Refused(Build("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}""", Four),
            SafetensorsRule.OffsetsNotContiguous, "b");
        // Not starting at 0.
        Refused(Build("""{"a":{"dtype":"F32","shape":[3],"data_offsets":[4,16]}}""", Four), SafetensorsRule.OffsetsNotContiguous, "a");
        // Header order does not matter, only offsets: b before a in the header is fine.
        using var ok = Accepted(Build("""{"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""", Four));
        Assert.Equal(["a", "b"], ok.Tensors.Select(t => t.Name));
    }

    [Fact]
    public void ByteSizeMustNotOverflow()
    {
        Refused(Build("""{"w":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,16]}}""", Four), SafetensorsRule.SizeOverflow, "w");
        Refused(Build("""{"w":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,16]}}""", Four), SafetensorsRule.SizeOverflow, "w"); // 2^61 * 8
    }

    [Fact]
    public void ByteSizeMustMatchTheShape()
    {
        Refused(Build("""{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}""", Four), SafetensorsRule.SizeMismatch, "w");
        Refused(Build("""{"w":{"dtype":"F64","shape":[4],"data_offsets":[0,16]}}""", Four), SafetensorsRule.SizeMismatch, "w");
        // A huge declared shape is refused from the header alone, before any allocation (2^40 float32 = 4 TiB).
        Refused(Build("""{"w":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,16]}}""", Four), SafetensorsRule.SizeMismatch, "w");
        Refused(Build("""{"w":{"dtype":"F32","shape":[],"data_offsets":[0,16]}}""", Four), SafetensorsRule.SizeMismatch, "w"); // scalar = 4 bytes
    }

    [Fact]
    public void BufferMustEndAtTheEndOfTheFile()
    {
        Refused(Build(W4, [.. Four, 0]), SafetensorsRule.BufferSizeMismatch);
        Refused(Build(W4, Four[..12]), SafetensorsRule.BufferSizeMismatch);
        Refused(Build("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16000000000]}}""".Replace("[4]", "[4000000000]"), Four), SafetensorsRule.BufferSizeMismatch);
        Refused(Build("{}", [1]), SafetensorsRule.BufferSizeMismatch);
    }

    [Fact]
    public void ScalarsEmptyTensorsAndEmptyFilesAreAccepted()
    {
        const string header = """{"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"e":{"dtype":"I64","shape":[0,3],"data_offsets":[4,4]},"z":{"dtype":"U8","shape":[0],"data_offsets":[4,4]}}""";
        using var f = Accepted(Build(header, Floats(2.5f)));
        Assert.Equal(2.5f, BitConverter.ToSingle(f.GetSpan("s")));
        Assert.Empty(f.GetInfo("s").Shape);
        Assert.True(f.GetSpan("e").IsEmpty);
        Assert.Equal(["s", "e", "z"], f.Tensors.Select(t => t.Name));
        using var empty = Accepted(Build("{}      ", []));
        Assert.Empty(empty.Tensors);
        Assert.Throws<KeyNotFoundException>(() => empty.GetInfo("w"));
    }
}
