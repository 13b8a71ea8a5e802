using System.Text;
using System.Text.Json;
using QuantSharp.Serialization;
using QuantSharp.Tensors;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Checkpoints;

public class QuantizedCheckpointFormatTests
{
    [Fact]
    public void PackedNibblesFollowTheFormatDiagram()
    {
        // docs/FORMAT.md: two 4-bit values per byte along the last dimension, element 2k in the low nibble, 2k+1 in
        // the high nibble, two's complement for int4. Bytes 0x21, 0xF8 hold the int4 values 1, 2, -8, -1.
        using var dir = new TempDir();
        var spec = new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, Granularity.Tensor);
        using var q = QuantizedTensor.FromParts(spec, [1, 4], torch.tensor(new byte[] { 0x21, 0xF8 }).reshape(1, 2), torch.tensor(0.5f), null);
        QuantizedCheckpoint.Save(dir["n.safetensors"], [CheckpointEntry.Of("w.weight", q)]);
        using var f = SafetensorsFile.Open(dir["n.safetensors"]);
        Assert.Equal(new byte[] { 0x21, 0xF8 }, f.ReadBytes("w.weight"));
        Assert.Equal(SafetensorsDType.U8, f.GetInfo("w.weight").DType);
        Assert.Equal(new long[] { 1, 2 }, f.GetInfo("w.weight").Shape);
        Assert.Equal(BitConverter.GetBytes(0.5f), f.ReadBytes("w.weight.scale"));
        Assert.Empty(f.GetInfo("w.weight.scale").Shape);
        using var ckpt = QuantizedCheckpoint.Load(dir["n.safetensors"]);
        using var d = ckpt.GetFloat("w.weight");
        Assert.Equal(new[] { 0.5f, 1f, -4f, -0.5f }, d.data<float>().ToArray());
    }

    [Fact]
    public void SaveLoadRoundTripKeepsEveryPartBitExact()
    {
        using var dir = new TempDir();
        using var w = torch.randn(16, 64, generator: new torch.Generator(3));
        using var h = torch.randn(8, 32, generator: new torch.Generator(4));
        using var bias = torch.randn(16, dtype: ScalarType.BFloat16);
        using var ids = torch.arange(10, dtype: ScalarType.Int32);
        using var q4 = QuantizedTensor.Quantize(w, new QuantSpec(QuantType.UInt4, QuantScheme.Affine, new PerGroup(16)));
        using var q16 = QuantizedTensor.Quantize(h, new QuantSpec(QuantType.Float16));
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["quantsharp.layers"] = "ignored: reserved key" };
        QuantizedCheckpoint.Save(dir["m.safetensors"], [
            CheckpointEntry.Plain("b.bias", bias), CheckpointEntry.Of("a.weight", q4), CheckpointEntry.Of("h.weight", q16), CheckpointEntry.Plain("ids", ids)],
            metadata);

        using var f = SafetensorsFile.Open(dir["m.safetensors"]);
        Assert.Equal(new[] { "b.bias", "a.weight", "a.weight.scale", "a.weight.zero_point", "h.weight", "ids" }, f.Tensors.Select(t => t.Name));
        Assert.Equal(SafetensorsDType.I32, f.GetInfo("a.weight.zero_point").DType);
        Assert.Equal(new long[] { 16, 4 }, f.GetInfo("a.weight.zero_point").Shape);
        Assert.Equal(SafetensorsDType.F16, f.GetInfo("h.weight").DType);
        Assert.Equal("pt", f.Metadata["format"]);
        using (var layers = JsonDocument.Parse(f.Metadata[QuantizedCheckpoint.LayersKey]))
        {
            var a = layers.RootElement.GetProperty("a.weight");
            Assert.Equal("uint4", a.GetProperty("qtype").GetString());
            Assert.Equal("affine", a.GetProperty("scheme").GetString());
            Assert.Equal("group:16", a.GetProperty("granularity").GetString());
            Assert.Equal(16, a.GetProperty("group_size").GetInt32());
            Assert.Equal(15, a.GetProperty("qmax").GetInt32());
            Assert.Equal(new long[] { 16, 64 }, a.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()));
        }

        using var ckpt = QuantizedCheckpoint.Load(dir["m.safetensors"]);
        Assert.Equal(new[] { "b.bias", "a.weight", "h.weight", "ids" }, ckpt.Names);
        Assert.Equal(SyntheticCheckpoint.Bytes(bias), SyntheticCheckpoint.Bytes(ckpt.Tensors["b.bias"]));
        Assert.Equal(SyntheticCheckpoint.Bytes(ids), SyntheticCheckpoint.Bytes(ckpt.Tensors["ids"]));
        var back = ckpt.Quantized["a.weight"];
        Assert.Equal(SyntheticCheckpoint.Bytes(q4.Data), SyntheticCheckpoint.Bytes(back.Data));
        Assert.Equal(SyntheticCheckpoint.Bytes(q4.Scale!), SyntheticCheckpoint.Bytes(back.Scale!));
        Assert.Equal(SyntheticCheckpoint.Bytes(q4.ZeroPoint!), SyntheticCheckpoint.Bytes(back.ZeroPoint!));
        using var d1 = q4.Dequantize();
        using var d2 = back.Dequantize();
        Assert.Equal(SyntheticCheckpoint.Bytes(d1), SyntheticCheckpoint.Bytes(d2));
        Assert.Equal(QuantType.Float16, ckpt.Layers["h.weight"].Type);
        Assert.Null(ckpt.Layers["h.weight"].Granularity);
    }

    [Fact]
    public void LoadRefusesForeignNewerAndInconsistentFiles()
    {
        using var dir = new TempDir();
        using var w = torch.randn(8, 8);
        SafetensorsWriter.Save(dir["plain.safetensors"], [("w", w)]);
        var ex = Assert.Throws<QuantizedFileException>(() => QuantizedCheckpoint.Load(dir["plain.safetensors"]));
        Assert.Contains("not a QuantSharp quantized checkpoint", ex.Message);

        SafetensorsWriter.Save(dir["newer.safetensors"], [("w", w)], new Dictionary<string, string>
        {
            [QuantizedCheckpoint.FormatKey] = QuantizedCheckpoint.FormatName, [QuantizedCheckpoint.FormatVersionKey] = "4",
        });
        ex = Assert.Throws<QuantizedFileException>(() => QuantizedCheckpoint.Load(dir["newer.safetensors"]));
        Assert.Contains("format version 4 is newer", ex.Message);

        // A layer entry whose scale is missing.
        using var data = torch.zeros([8, 8], dtype: ScalarType.Int8);
        SafetensorsWriter.Save(dir["noscale.safetensors"], [("w", data)], new Dictionary<string, string>
        {
            [QuantizedCheckpoint.FormatKey] = QuantizedCheckpoint.FormatName, [QuantizedCheckpoint.FormatVersionKey] = "1",
            [QuantizedCheckpoint.LayersKey] = """{"w": {"original_dtype": "F32", "shape": [8, 8], "qtype": "int8", "scheme": "symmetric", "granularity": "per-channel"}}""",
        });
        ex = Assert.Throws<QuantizedFileException>(() => QuantizedCheckpoint.Load(dir["noscale.safetensors"]));
        Assert.Contains("has no 'w.scale'", ex.Message);

        // Data of the wrong shape for its entry.
        SafetensorsWriter.Save(dir["shape.safetensors"], [("w", data), ("w.scale", torch.ones(8))], new Dictionary<string, string>
        {
            [QuantizedCheckpoint.FormatKey] = QuantizedCheckpoint.FormatName, [QuantizedCheckpoint.FormatVersionKey] = "1",
            [QuantizedCheckpoint.LayersKey] = """{"w": {"original_dtype": "F32", "shape": [8, 16], "qtype": "int8", "scheme": "symmetric", "granularity": "per-channel"}}""",
        });
        ex = Assert.Throws<QuantizedFileException>(() => QuantizedCheckpoint.Load(dir["shape.safetensors"]));
        Assert.Contains("expected I8 [8, 16]", ex.Message);

        // A negative scale (a corrupted file) is refused on load, naming the tensor.
        SafetensorsWriter.Save(dir["neg.safetensors"], [("w", data), ("w.scale", -torch.ones(8))], new Dictionary<string, string>
        {
            [QuantizedCheckpoint.FormatKey] = QuantizedCheckpoint.FormatName, [QuantizedCheckpoint.FormatVersionKey] = "1",
            [QuantizedCheckpoint.LayersKey] = """{"w": {"original_dtype": "F32", "shape": [8, 8], "qtype": "int8", "scheme": "symmetric", "granularity": "per-channel"}}""",
        });
        ex = Assert.Throws<QuantizedFileException>(() => QuantizedCheckpoint.Load(dir["neg.safetensors"]));
        Assert.Contains("'w' is invalid", ex.Message);
    }

    [Fact]
    public void StreamWriterHeaderReserveAndCompactPathsGiveValidFiles()
    {
        using var dir = new TempDir();
        var payload = Enumerable.Range(0, 4096).Select(i => (byte)(i * 7)).ToArray();
        foreach (long compactBelow in new long[] { 0, long.MaxValue })
        {
            SafetensorsStreamWriter.CompactBelowBytesForTests = compactBelow;
            string path = dir[$"s{compactBelow}.safetensors"];
            try
            {
                using var w = new SafetensorsStreamWriter(path, 10_000);
                w.BeginTensor("a", SafetensorsDType.U8, [4096]);
                w.Append(payload.AsSpan(0, 1000));
                w.Append(payload.AsSpan(1000));
                w.EndTensor();
                w.Add("b", SafetensorsDType.F32, [2], BitConverter.GetBytes(1.5f).Concat(BitConverter.GetBytes(-2f)).ToArray());
                Assert.False(File.Exists(path));
                w.Commit(new Dictionary<string, string> { ["k"] = "v" });
            }
            finally { SafetensorsStreamWriter.CompactBelowBytesForTests = null; }
            using var f = SafetensorsFile.Open(path);
            Assert.Equal(payload, f.ReadBytes("a"));
            Assert.Equal("v", f.Metadata["k"]);
            long headerLength = f.DataStart - 8;
            // The in-place path keeps the whole reserve (padded with spaces); the compact one pads to a multiple of 8 only.
            if (compactBelow == 0) Assert.Equal(10_000, headerLength);
            else Assert.True(headerLength < 300);
            Assert.Equal(0, headerLength % 8);
            Assert.Single(Directory.GetFiles(dir.Path, $"*s{compactBelow}*"));
        }
    }

    [Fact]
    public void UncommittedWriterLeavesNoFile()
    {
        using var dir = new TempDir();
        using (var w = new SafetensorsStreamWriter(dir["x.safetensors"], 100))
        {
            w.Add("a", SafetensorsDType.U8, [3], [1, 2, 3]);
            var ex = Assert.Throws<InvalidOperationException>(() => w.Add("big", SafetensorsDType.F32, [3], [1, 2, 3]));
            Assert.Contains("3 bytes written, 12 expected", ex.Message);
        }
        Assert.Empty(Directory.GetFileSystemEntries(dir.Path));
    }

    [Fact]
    public void SqnrMatchesTorchAo()
    {
        // reference: torch.ao.ns.fx.utils.compute_sqnr(a, b) = 20 log10(||a|| / ||a - b||).
        using var f = Reference.OpenTensors();
        using var a = f.ReadTensor("sqnr/a");
        using var b = f.ReadTensor("sqnr/b");
        var acc = new SqnrAccumulator();
        acc.Add(a[..20], b[..20]);
        acc.Add(a[20..], b[20..]);
        Assert.Equal(Reference.Json.GetProperty("sqnr").GetProperty("value_db").GetDouble(), acc.Db, 3);
        var exact = new SqnrAccumulator();
        exact.Add(a, a);
        Assert.Equal(double.PositiveInfinity, exact.Db);
    }
}
