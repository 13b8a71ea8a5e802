using System.Text.Json;
using QuantSharp.Serialization;
using TorchSharp;

namespace QuantSharp.Tests.Serialization;

/// <summary>
/// Every file of <c>../shared/reference/safetensors-corpus</c> gets the verdict of the reference safetensors 0.8.0
/// library (verdicts.json), except the two files it accepts although the format forbids them, which we refuse.
/// </summary>
public class SafetensorsCorpusTests
{
    private static readonly JsonElement s_verdicts =
        JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Reference.CorpusDir, "verdicts.json"))).RootElement;

    /// <summary>Our rule for each file the reference refuses (and for the two we refuse on purpose).</summary>
    private static readonly Dictionary<string, SafetensorsRule> s_expectedRule = new()
    {
        ["bad_begin_gt_end.safetensors"] = SafetensorsRule.InvalidOffsets,
        ["bad_duplicate_key.safetensors"] = SafetensorsRule.DuplicateName,        // reference accepts: stricter on purpose
        ["bad_gap.safetensors"] = SafetensorsRule.OffsetsNotContiguous,
        ["bad_header_is_array.safetensors"] = SafetensorsRule.HeaderNotObject,
        ["bad_header_len_exceeds_file.safetensors"] = SafetensorsRule.HeaderLengthExceedsFile,
        ["bad_header_not_brace.safetensors"] = SafetensorsRule.HeaderNotObject,   // reference accepts: stricter on purpose
        ["bad_header_too_large.safetensors"] = SafetensorsRule.HeaderTooLarge,
        ["bad_invalid_json.safetensors"] = SafetensorsRule.InvalidJson,
        ["bad_invalid_utf8.safetensors"] = SafetensorsRule.InvalidUtf8,
        ["bad_metadata_not_string.safetensors"] = SafetensorsRule.InvalidMetadata,
        ["bad_missing_field.safetensors"] = SafetensorsRule.InvalidTensorEntry,
        ["bad_negative_shape.safetensors"] = SafetensorsRule.InvalidShape,
        ["bad_offset_out_of_bounds.safetensors"] = SafetensorsRule.SizeMismatch,
        ["bad_overlapping.safetensors"] = SafetensorsRule.OffsetsNotContiguous,
        ["bad_shape_overflow.safetensors"] = SafetensorsRule.SizeOverflow,
        ["bad_size_mismatch.safetensors"] = SafetensorsRule.SizeMismatch,
        ["bad_too_short.safetensors"] = SafetensorsRule.FileTooShort,
        ["bad_trailing_bytes.safetensors"] = SafetensorsRule.BufferSizeMismatch,
        ["bad_unknown_dtype.safetensors"] = SafetensorsRule.UnknownDType,
    };

    private static readonly HashSet<string> s_refusedOnPurpose = ["bad_duplicate_key.safetensors", "bad_header_not_brace.safetensors"];

    public static TheoryData<string> CorpusFiles()
    {
        var data = new TheoryData<string>();
        foreach (string f in Directory.GetFiles(Reference.CorpusDir, "*.safetensors").Order(StringComparer.Ordinal)) data.Add(Path.GetFileName(f));
        return data;
    }

    [Fact]
    public void EveryCorpusFileHasAVerdictAndEveryVerdictAFile()
    {
        var files = Directory.GetFiles(Reference.CorpusDir, "*.safetensors").Select(f => Path.GetFileName(f)).ToHashSet();
        var verdicts = s_verdicts.EnumerateObject().Select(p => p.Name).ToHashSet();
        Assert.Equal(verdicts.Order(), files.Order());
        Assert.True(files.Count >= 20, $"only {files.Count} corpus files");
    }

    [Theory]
    [MemberData(nameof(CorpusFiles))]
    public void CorpusFileGetsTheReferenceVerdict(string fileName)
    {
        string path = Path.Combine(Reference.CorpusDir, fileName);
        var verdict = s_verdicts.GetProperty(fileName);
        bool referenceAccepts = verdict.GetProperty("accepted").GetBoolean();

        if (!referenceAccepts || s_refusedOnPurpose.Contains(fileName))
        {
            Assert.Equal(!s_refusedOnPurpose.Contains(fileName), !referenceAccepts);
            var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path).Dispose());
            Assert.Equal(s_expectedRule[fileName], e.Rule);
            Assert.Equal(path, e.FilePath);
            Assert.Contains(path, e.Message);
            Assert.Contains(e.Rule.ToString(), e.Message);
            if (e.TensorName is not null) Assert.Contains($"'{e.TensorName}'", e.Message);
            return;
        }

        Assert.False(s_expectedRule.ContainsKey(fileName));
        using var file = SafetensorsFile.Open(path);
        var expectedTensors = verdict.GetProperty("tensors");
        Assert.Equal(expectedTensors.EnumerateObject().Select(p => p.Name).Order(StringComparer.Ordinal),
            file.Tensors.Select(t => t.Name).Order(StringComparer.Ordinal));
        foreach (var expected in expectedTensors.EnumerateObject())
        {
            var info = file.GetInfo(expected.Name);
            Assert.Equal(TorchName(info.DType), expected.Value.GetProperty("dtype").GetString());
            Assert.Equal(expected.Value.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()), info.Shape);
            double expectedSum = expected.Value.GetProperty("sum_f64").GetDouble();
            // Our own decoding of the raw bytes (no TorchSharp), through the view and through the copy.
            Assert.Equal(expectedSum, SafetensorsTestUtil.Sum(file.GetSpan(expected.Name), info.DType), 12);
            Assert.Equal(file.GetSpan(expected.Name).ToArray(), file.ReadBytes(expected.Name));
            using (var stream = file.OpenRead(expected.Name))
            {
                var viaStream = new byte[info.ByteLength];
                stream.ReadExactly(viaStream);
                Assert.Equal(file.ReadBytes(expected.Name), viaStream);
                Assert.Equal(-1, stream.ReadByte());
            }
            // And through TorchSharp where it has the dtype.
            if (info.DType.ToScalarType() is not null)
            {
                using var t = file.ReadTensor(expected.Name);
                Assert.Equal(info.Shape, t.shape);
                Assert.Equal(info.DType.ToScalarType(), t.dtype);
                using var sum = t.to(torch.ScalarType.Float64).sum();
                Assert.Equal(expectedSum, sum.item<double>(), 12);
            }
            else
            {
                Assert.Throws<NotSupportedException>(() => file.ReadTensor(expected.Name).Dispose());
            }
        }

        var expectedMetadata = verdict.GetProperty("metadata");
        if (expectedMetadata.ValueKind == JsonValueKind.Null) Assert.Empty(file.Metadata);
        else
        {
            Assert.Equal(expectedMetadata.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!),
                file.Metadata.ToDictionary(kv => kv.Key, kv => kv.Value));
        }
    }

    [Fact]
    public void AllDTypesFileCoversEveryDType()
    {
        using var file = SafetensorsFile.Open(Path.Combine(Reference.CorpusDir, "valid_all_dtypes.safetensors"));
        Assert.Equal(Enum.GetValues<SafetensorsDType>().Order(), file.Tensors.Select(t => t.DType).Distinct().Order());
        Assert.Empty(file.GetInfo("scalar").Shape);
        Assert.Equal(1, file.GetInfo("scalar").ElementCount);
        Assert.Equal(0, file.GetInfo("empty2d").ByteLength);
        Assert.True(file.GetSpan("empty2d").IsEmpty);
        // Sorted by offset, contiguous from 0 to the end of the file.
        long cursor = 0;
        foreach (var t in file.Tensors) { Assert.Equal(cursor, t.Begin); cursor = t.End; }
        Assert.Equal(new FileInfo(file.Path).Length, file.DataStart + cursor);
    }

    [Fact]
    public void ReadsThePyTorchReferenceFiles()
    {
        foreach (string path in Directory.GetFiles(Reference.PyTorchDir, "*.safetensors"))
        {
            using var file = SafetensorsFile.Open(path);
            Assert.NotEmpty(file.Tensors);
            foreach (var info in file.Tensors)
            {
                using var t = file.ReadTensor(info.Name);
                Assert.Equal(info.Shape, t.shape);
                Assert.Equal(file.GetSpan(info.Name).ToArray(), t.bytes.ToArray());
            }
        }

        // Values against PyTorch's own observers: the min/max it saw on each input case.
        using var reference = Reference.OpenTensors();
        int checkedCases = 0;
        foreach (var c in Reference.Json.GetProperty("cases").EnumerateObject())
        {
            if (!c.Value.TryGetProperty("observers", out var observers) || !observers.TryGetProperty("minmax_affine_qint8", out var obs)) continue;
            if (!reference.Contains($"{c.Name}/input")) continue;
            var info = reference.GetInfo($"{c.Name}/input");
            Assert.Equal(SafetensorsDType.F32, info.DType);
            var span = reference.GetSpan(info.Name);
            double min = double.PositiveInfinity, max = double.NegativeInfinity;
            for (int i = 0; i < info.ElementCount; i++)
            {
                double v = SafetensorsTestUtil.Element(span, SafetensorsDType.F32, i);
                min = Math.Min(min, v); max = Math.Max(max, v);
            }
            Assert.Equal(FirstValue(obs.GetProperty("min_val")), (float)min, 0f);
            Assert.Equal(FirstValue(obs.GetProperty("max_val")), (float)max, 0f);
            checkedCases++;
        }
        Assert.True(checkedCases >= 5, $"only {checkedCases} cases checked");
    }

    private static float FirstValue(JsonElement e) => e.ValueKind == JsonValueKind.Array ? e[0].GetSingleValue() : e.GetSingleValue();

    private static string TorchName(SafetensorsDType d) => d switch
    {
        SafetensorsDType.BOOL => "bool",
        SafetensorsDType.U8 => "uint8",
        SafetensorsDType.I8 => "int8",
        SafetensorsDType.F8_E4M3 => "float8_e4m3fn",
        SafetensorsDType.F8_E5M2 => "float8_e5m2",
        SafetensorsDType.I16 => "int16",
        SafetensorsDType.U16 => "uint16",
        SafetensorsDType.F16 => "float16",
        SafetensorsDType.BF16 => "bfloat16",
        SafetensorsDType.I32 => "int32",
        SafetensorsDType.U32 => "uint32",
        SafetensorsDType.F32 => "float32",
        SafetensorsDType.I64 => "int64",
        SafetensorsDType.U64 => "uint64",
        SafetensorsDType.F64 => "float64",
        _ => throw new ArgumentOutOfRangeException(nameof(d)),
    };
}
