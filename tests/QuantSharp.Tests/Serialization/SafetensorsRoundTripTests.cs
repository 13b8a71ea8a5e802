using System.Buffers.Binary;
using CsCheck;
using QuantSharp.Serialization;
using TorchSharp;

namespace QuantSharp.Tests.Serialization;

/// <summary>Write-then-read property tests over every dtype and shape, plus byte identity with the reference writer.</summary>
public sealed class SafetensorsRoundTripTests : IDisposable
{
    private readonly string _dir = SafetensorsTestUtil.NewTempDir();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly string[] s_names = ["w", "layers.0.attn/q_proj.weight", "ünïcode.名前", "a\"quote", "x\\y", "", "tab\tname", "e😀"];

    private sealed record Entry(string Name, SafetensorsDType DType, long[] Shape, byte[] Bytes);

    private static readonly Gen<Entry[]> s_gen =
        Gen.Int[0, 6].SelectMany(count =>
            Gen.Select(Gen.Enum<SafetensorsDType>(), Gen.Int[0, 4].SelectMany(rank => Gen.Long[0, 5].Array[rank]))
                .SelectMany((dtype, shape) =>
                    Gen.Byte.Array[(int)(shape.Aggregate(1L, (a, b) => a * b) * dtype.ElementSize())]
                        .Select(bytes => (dtype, shape, bytes)))
                .Array[count]
                .Select(items => items.Select((it, i) => new Entry(i < s_names.Length ? s_names[i] : $"t{i}", it.dtype, it.shape, it.bytes)).ToArray()));

    private static readonly Gen<Dictionary<string, string>?> s_metadataGen =
        Gen.Int[0, 3].SelectMany(n => Gen.String[Gen.Char.AlphaNumeric, 0, 6].Array[n].Select(values =>
            n == 0 ? null : values.Select((v, i) => (k: $"k{i}✓", v)).ToDictionary(p => p.k, p => p.v)));

    private string WriteStreaming(string fileName, Entry[] entries, IReadOnlyDictionary<string, string>? metadata)
    {
        string path = Path.Combine(_dir, fileName);
        using var w = SafetensorsWriter.Create(path, entries.Select(e => new SafetensorsTensorSpec(e.Name, e.DType, e.Shape)), metadata);
        foreach (var e in entries) w.Write(e.Name, e.Bytes);
        w.Commit();
        return path;
    }

    [Fact]
    public void WriteThenReadGivesIdenticalBytesForEveryDTypeAndShape()
    {
        Gen.Select(s_gen, s_metadataGen).Sample((entries, metadata) =>
        {
            string id = Guid.NewGuid().ToString("N");
            string a = WriteStreaming(id + "a.safetensors", entries, metadata);
            string b = WriteStreaming(id + "b.safetensors", entries, metadata);
            var bytesA = File.ReadAllBytes(a);
            Assert.Equal(bytesA, File.ReadAllBytes(b)); // deterministic

            // Collecting mode gives the same file.
            string c = Path.Combine(_dir, id + "c.safetensors");
            using (var w = new SafetensorsWriter(c, metadata))
            {
                foreach (var e in entries) w.Add(e.Name, e.DType, e.Shape, e.Bytes);
                w.Commit();
            }
            Assert.Equal(bytesA, File.ReadAllBytes(c));

            // Layout: header length a multiple of 8, JSON object first, space padding.
            long n = BinaryPrimitives.ReadInt64LittleEndian(bytesA);
            Assert.Equal(0, (8 + n) % 8);
            Assert.Equal((byte)'{', bytesA[8]);

            using var f = SafetensorsFile.Open(a);
            Assert.Equal(entries.Select(e => e.Name), f.Tensors.Select(t => t.Name));
            foreach (var e in entries)
            {
                var info = f.GetInfo(e.Name);
                Assert.Equal(e.DType, info.DType);
                Assert.Equal(e.Shape, info.Shape);
                Assert.Equal(e.Bytes, f.GetSpan(e.Name).ToArray());
                Assert.Equal(e.Bytes, f.ReadBytes(e.Name));
            }
            Assert.Equal(metadata ?? [], f.Metadata.ToDictionary(kv => kv.Key, kv => kv.Value));
            File.Delete(a); File.Delete(b); File.Delete(c);
        }, iter: 150, threads: 1);
    }

    [Fact]
    public void TorchSharpTensorsRoundTripThroughSave()
    {
        var torchTypes = Enum.GetValues<SafetensorsDType>().Where(d => d.ToScalarType() is not null).ToArray();
        Gen.Select(s_gen, s_metadataGen).Sample((entries, metadata) =>
        {
            entries = entries.Where(e => torchTypes.Contains(e.DType)).ToArray();
            using var scope = torch.NewDisposeScope();
            var tensors = entries.Select(e =>
            {
                var t = torch.empty(e.Shape, e.DType.ToScalarType()!.Value);
                if (e.Bytes.Length > 0) e.Bytes.CopyTo(t.bytes);
                return (e.Name, t);
            }).ToList();
            string id = Guid.NewGuid().ToString("N");
            string viaSave = Path.Combine(_dir, id + "save.safetensors");
            SafetensorsWriter.Save(viaSave, tensors, metadata);
            string viaBytes = WriteStreaming(id + "bytes.safetensors", entries, metadata);
            Assert.Equal(File.ReadAllBytes(viaBytes), File.ReadAllBytes(viaSave));

            using var f = SafetensorsFile.Open(viaSave);
            foreach (var (name, t) in tensors)
            {
                using var back = f.ReadTensor(name);
                Assert.Equal(t.dtype, back.dtype);
                Assert.Equal(t.shape, back.shape);
                Assert.Equal(t.bytes.ToArray(), back.bytes.ToArray());
            }
            File.Delete(viaSave); File.Delete(viaBytes);
        }, iter: 60, threads: 1);
    }

    [Fact]
    public void NonContiguousTensorsAreWrittenInLogicalOrder()
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.arange(12, dtype: torch.ScalarType.Float32).reshape(3, 4);
        var xt = x.t(); // [4, 3], not contiguous
        Assert.False(xt.is_contiguous());
        string path = Path.Combine(_dir, "t.safetensors");
        SafetensorsWriter.Save(path, [("xt", xt)]);
        using var f = SafetensorsFile.Open(path);
        Assert.Equal([4L, 3L], f.GetInfo("xt").Shape);
        var values = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(f.GetSpan("xt")).ToArray();
        Assert.Equal(new float[] { 0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11 }, values); // transpose, by hand
    }

    /// <summary>
    /// Re-writing the reference library's own file (same tensors in its order, same metadata) gives the same bytes:
    /// our header layout is the reference writer's.
    /// </summary>
    [Fact]
    public void RewritingTheReferenceWrittenFileReproducesItByteForByte()
    {
        foreach (string name in new[] { "valid_all_dtypes.safetensors", "valid_no_metadata.safetensors", "valid_empty_file.safetensors" })
        {
            string original = Path.Combine(Reference.CorpusDir, name);
            string copy = Path.Combine(_dir, name);
            using (var f = SafetensorsFile.Open(original))
            {
                using var w = SafetensorsWriter.Create(copy, f.Tensors.Select(t => new SafetensorsTensorSpec(t.Name, t.DType, t.Shape)),
                    f.Metadata.Count > 0 ? f.Metadata : null);
                foreach (var t in f.Tensors) w.Write(t.Name, f.GetSpan(t.Name));
                w.Commit();
            }
            using (var back = SafetensorsFile.Open(copy))
            using (var f = SafetensorsFile.Open(original))
            {
                Assert.Equal(f.Tensors, back.Tensors, (p, q) => p.Name == q.Name && p.DType == q.DType && p.Shape.SequenceEqual(q.Shape) && p.Begin == q.Begin && p.End == q.End);
            }
            Assert.Equal(File.ReadAllBytes(original), File.ReadAllBytes(copy));
        }
    }
}
