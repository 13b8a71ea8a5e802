using System.Buffers.Binary;
using System.Text;
using QuantSharp.Serialization;
using TorchSharp;
using static QuantSharp.Tests.Serialization.SafetensorsTestUtil;

namespace QuantSharp.Tests.Serialization;

/// <summary>Atomic writing: the destination is the previous file or the complete new one, never a partial file.</summary>
public sealed class SafetensorsWriterTests : IDisposable
{
    private readonly string _dir = NewTempDir();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly SafetensorsTensorSpec[] s_specs =
    [
        new("a", SafetensorsDType.F32, [2]),
        new("b", SafetensorsDType.I8, [3]),
    ];

    private string[] FolderFiles() => Directory.GetFiles(_dir).Select(Path.GetFileName).Order().ToArray()!;

    private void WriteGood(string path)
    {
        using var w = SafetensorsWriter.Create(path, s_specs);
        w.Write("a", Floats(1, 2));
        w.Write("b", [1, 2, 3]);
        w.Commit();
    }

    [Fact]
    public void DisposeWithoutCommitLeavesNoFile()
    {
        string path = Path.Combine(_dir, "out.safetensors");
        using (var w = SafetensorsWriter.Create(path, s_specs))
        {
            w.Write("a", Floats(1, 2));
            w.Write("b", [1, 2, 3]);
            Assert.False(File.Exists(path)); // nothing under the final name before Commit
            Assert.Single(FolderFiles());     // only the temporary file, in the same folder
            Assert.StartsWith(".out.safetensors.", FolderFiles()[0]);
        }
        Assert.Empty(FolderFiles());
    }

    [Fact]
    public void CommitPublishesTheFileAndLeavesNoTemporaryFile()
    {
        string path = Path.Combine(_dir, "out.safetensors");
        WriteGood(path);
        Assert.Equal(["out.safetensors"], FolderFiles());
        using var f = SafetensorsFile.Open(path);
        Assert.Equal(Floats(1, 2), f.ReadBytes("a"));
        Assert.Equal(new byte[] { 1, 2, 3 }, f.ReadBytes("b"));
    }

    [Fact]
    public void FailureMidwayLeavesThePreviousFileIntact()
    {
        string path = Path.Combine(_dir, "out.safetensors");
        WriteGood(path);
        byte[] before = File.ReadAllBytes(path);

        using (var w = SafetensorsWriter.Create(path, s_specs))
        {
            w.Write("a", Floats(7, 8));
            var e = Assert.Throws<ArgumentException>(() => w.Write("b", [1, 2])); // fewer bytes than declared
            Assert.Contains("'b'", e.Message);
            Assert.Contains("needs 3 bytes, got 2", e.Message);
            var c = Assert.Throws<InvalidOperationException>(w.Commit);
            Assert.Contains("'b'", c.Message);
            Assert.Contains("not written", c.Message);
            Assert.Equal(before, File.ReadAllBytes(path));
        }
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Equal(["out.safetensors"], FolderFiles());
    }

    [Fact]
    public void TensorsMustComeInDeclaredOrderWithDeclaredDTypeAndShape()
    {
        string path = Path.Combine(_dir, "out.safetensors");
        using var w = SafetensorsWriter.Create(path, s_specs);
        var e = Assert.Throws<InvalidOperationException>(() => w.Write("b", [1, 2, 3]));
        Assert.Contains("expected 'a' next", e.Message);
        using var wrongType = torch.zeros(2, dtype: torch.ScalarType.Float64);
        Assert.Throws<ArgumentException>(() => w.Write("a", wrongType));
        using var wrongShape = torch.zeros(3, dtype: torch.ScalarType.Float32);
        Assert.Throws<ArgumentException>(() => w.Write("a", wrongShape));
        using var right = torch.tensor(new float[] { 5, 6 });
        w.Write("a", right);
        w.Write("b", [9, 9, 9]);
        Assert.Throws<InvalidOperationException>(() => w.Write("c", [1]));
        w.Commit();
        Assert.Throws<InvalidOperationException>(w.Commit);
        using var f = SafetensorsFile.Open(path);
        Assert.Equal(Floats(5, 6), f.ReadBytes("a"));
    }

    [Fact]
    public void OutputPathEqualToAnOpenInputIsRefused()
    {
        string path = Path.Combine(_dir, "in.safetensors");
        WriteGood(path);
        byte[] before = File.ReadAllBytes(path);
        using (var input = SafetensorsFile.Open(path))
        {
            var e = Assert.Throws<IOException>(() => SafetensorsWriter.Create(path, s_specs).Dispose());
            Assert.Contains("open for reading", e.Message);
            // Through another spelling of the path and through a symbolic link.
            Assert.Throws<IOException>(() => SafetensorsWriter.Create(Path.Combine(_dir, ".", "in.safetensors"), s_specs).Dispose());
            string link = Path.Combine(_dir, "link.safetensors");
            File.CreateSymbolicLink(link, path);
            Assert.Throws<IOException>(() => SafetensorsWriter.Create(link, s_specs).Dispose());
            Assert.Throws<IOException>(() => SafetensorsWriter.Save(path, []));
            Assert.Throws<IOException>(() => new SafetensorsWriter(path));
            File.Delete(link);
        }
        Assert.Equal(before, File.ReadAllBytes(path));

        // Opened after the writer started: refused at Commit, nothing replaced.
        using (var w = SafetensorsWriter.Create(path, s_specs))
        {
            w.Write("a", Floats(3, 3));
            w.Write("b", [3, 3, 3]);
            using var input = SafetensorsFile.Open(path);
            Assert.Throws<IOException>(w.Commit);
        }
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Equal(["in.safetensors"], FolderFiles());

        // Closed again: allowed.
        using (var w = SafetensorsWriter.Create(path, s_specs))
        {
            w.Write("a", Floats(3, 3));
            w.Write("b", [3, 3, 3]);
            w.Commit();
        }
        Assert.NotEqual(before, File.ReadAllBytes(path));
    }

    [Fact]
    public void InvalidDeclarationsAreRefusedBeforeAnythingIsWritten()
    {
        string path = Path.Combine(_dir, "out.safetensors");
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Create(path, [new("a", SafetensorsDType.F32, [1]), new("a", SafetensorsDType.F32, [1])]));
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Create(path, [new("__metadata__", SafetensorsDType.F32, [1])]));
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Create(path, [new("a", SafetensorsDType.F32, [-1])]));
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Create(path, [new("\ud800", SafetensorsDType.F32, [1])]));
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Create(path, [new("a", SafetensorsDType.F32, [1L << 40, 1L << 40])]));
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Create(path, [], new Dictionary<string, string> { ["k"] = "\udc00" }));
        Assert.Throws<DirectoryNotFoundException>(() => SafetensorsWriter.Create(Path.Combine(_dir, "missing", "x.safetensors"), []));
        Assert.Empty(FolderFiles());
    }

    [Fact]
    public void CollectingModeWritesTheTensorsAddedAndKeepsThemUnchanged()
    {
        string path = Path.Combine(_dir, "out.safetensors");
        using var scope = torch.NewDisposeScope();
        var x = torch.arange(6, dtype: torch.ScalarType.Int16).reshape(2, 3);
        var before = x.bytes.ToArray();
        using (var w = new SafetensorsWriter(path, new Dictionary<string, string> { ["format"] = "pt" }))
        {
            w.Add("x", x);
            w.Add("raw", SafetensorsDType.U16, [2], new byte[] { 1, 0, 2, 0 });
            Assert.Throws<InvalidOperationException>(() => w.Write("x", x));
            Assert.False(File.Exists(path));
            w.Commit();
            Assert.Throws<InvalidOperationException>(() => w.Add("y", x));
        }
        Assert.Equal(before, x.bytes.ToArray());
        using var f = SafetensorsFile.Open(path);
        Assert.Equal("pt", f.Metadata["format"]);
        Assert.Equal(before, f.ReadBytes("x"));
        Assert.Equal([2L, 3L], f.GetInfo("x").Shape);
        Assert.Equal(3.0, Sum(f.GetSpan("raw"), SafetensorsDType.U16));

        using var streaming = SafetensorsWriter.Create(Path.Combine(_dir, "s.safetensors"), []);
        Assert.Throws<InvalidOperationException>(() => streaming.Add("x", x));
    }

    /// <summary>
    /// A 20 GB file (sparse on disk) opens from its header alone; its tensor is viewed through a stream over the
    /// mapping; spans and arrays, limited to 2 GB, refuse with a clear message.
    /// </summary>
    [Fact]
    public void TwentyGigabyteFileOpensLazily()
    {
        string path = Path.Combine(_dir, "big.safetensors");
        const long count = 5_000_000_000; // float32: 20 GB
        string header = $$$"""{"big":{"dtype":"F32","shape":[{{{count}}}],"data_offsets":[0,{{{count * 4}}}]},"tail":{"dtype":"U8","shape":[4],"data_offsets":[{{{count * 4}}},{{{count * 4 + 4}}}]}}""";
        header += new string(' ', (8 - header.Length % 8) % 8);
        using (var fs = new FileStream(path, FileMode.CreateNew, FileAccess.Write))
        {
            fs.Write(Build(header, []));
            fs.SetLength(8 + header.Length + count * 4 + 4); // sparse: no data written
            fs.Seek(-4, SeekOrigin.End);
            fs.Write([9, 8, 7, 6]);
        }
        using var f = SafetensorsFile.Open(path);
        Assert.Equal(count * 4, f.GetInfo("big").ByteLength);
        Assert.Equal(new byte[] { 9, 8, 7, 6 }, f.GetSpan("tail").ToArray());
        Assert.Throws<NotSupportedException>(() => f.GetSpan("big"));
        Assert.Throws<NotSupportedException>(() => f.ReadBytes("big"));
        using var s = f.OpenRead("big");
        Assert.Equal(count * 4, s.Length);
        s.Seek(-8, SeekOrigin.End);
        var last = new byte[8];
        s.ReadExactly(last);
        Assert.Equal(new byte[8], last);
        Assert.Equal(-1, s.ReadByte());
    }

    [Fact]
    public void ViewsAreRefusedAfterDispose()
    {
        string path = Path.Combine(_dir, "out.safetensors");
        WriteGood(path);
        var f = SafetensorsFile.Open(path);
        var s = f.OpenRead("a");
        f.Dispose();
        Assert.Throws<ObjectDisposedException>(() => f.ReadBytes("a"));
        Assert.Throws<ObjectDisposedException>(() => f.GetSpan("a").ToArray());
        Assert.ThrowsAny<ObjectDisposedException>(() => s.ReadByte());
        s.Dispose();
        // The file is no longer registered as open: it can be replaced.
        WriteGood(path);
    }

    /// <summary>The sliced copy used above 2 GiB, exercised with small limits on this thread.</summary>
    [Fact]
    public void SlicedCopiesOfLargeTensorsGiveTheSameBytes()
    {
        using var scope = torch.NewDisposeScope();
        (string, torch.Tensor)[] tensors =
        [
            ("f32", torch.rand(5, 7)),
            ("f64", torch.rand(3, 3, 3, dtype: torch.ScalarType.Float64)),
            ("i8", torch.randint(-128, 127, [37], dtype: torch.ScalarType.Int8)),
            ("bf16", torch.rand(2, 9).to(torch.ScalarType.BFloat16)),
            ("scalar", torch.tensor(3.5)),
            ("nc", torch.rand(6, 4).t()),
        ];
        string plain = Path.Combine(_dir, "plain.safetensors"), sliced = Path.Combine(_dir, "sliced.safetensors");
        SafetensorsWriter.Save(plain, tensors);
        try
        {
            TensorCopyLimits.SetForCurrentThread(singleCopyBytes: 7, chunkBytes: 12);
            SafetensorsWriter.Save(sliced, tensors);
            Assert.Equal(File.ReadAllBytes(plain), File.ReadAllBytes(sliced));
            using var f = SafetensorsFile.Open(sliced);
            foreach (var (name, t) in tensors)
            {
                using var back = f.ReadTensor(name);
                Assert.Equal(t.shape, back.shape);
                using var c = t.contiguous();
                Assert.Equal(c.bytes.ToArray(), back.bytes.ToArray());
                Assert.Equal(f.ReadBytes(name), back.bytes.ToArray());
            }
        }
        finally
        {
            TensorCopyLimits.SetForCurrentThread(0, 0);
        }
    }

    /// <summary>A tensor that fails while its bytes are fetched (a meta tensor has a shape but no data).</summary>
    [Fact]
    public void TensorFailingMidwayLeavesThePreviousFileIntact()
    {
        string path = Path.Combine(_dir, "out.safetensors");
        WriteGood(path);
        byte[] before = File.ReadAllBytes(path);
        using var scope = torch.NewDisposeScope();
        var good = torch.ones(2);
        var meta = torch.empty([3], torch.ScalarType.Int8, device: torch.META);
        using (var w = SafetensorsWriter.Create(path, [SafetensorsTensorSpec.FromTensor("a", good), SafetensorsTensorSpec.FromTensor("b", meta)]))
        {
            w.Write("a", good);
            var e = Assert.ThrowsAny<Exception>(() => w.Write("b", meta));
            Assert.Contains("meta", e.Message, StringComparison.OrdinalIgnoreCase);
            Assert.Throws<InvalidOperationException>(w.Commit);
            Assert.Equal(before, File.ReadAllBytes(path));
        }
        Assert.ThrowsAny<Exception>(() => SafetensorsWriter.Save(path, [("a", good), ("b", meta)]));
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Equal(["out.safetensors"], FolderFiles());
    }

    [Fact]
    public void HeaderIsPaddedWithSpacesToAMultipleOfEight()
    {
        string path = Path.Combine(_dir, "out.safetensors");
        for (int len = 1; len <= 9; len++)
        {
            using (var w = SafetensorsWriter.Create(path, [new SafetensorsTensorSpec(new string('n', len), SafetensorsDType.U8, [1])]))
            {
                w.Write(new string('n', len), [42]);
                w.Commit();
            }
            var bytes = File.ReadAllBytes(path);
            long n = BinaryPrimitives.ReadInt64LittleEndian(bytes);
            Assert.Equal(0, n % 8);
            string header = Encoding.UTF8.GetString(bytes, 8, (int)n);
            Assert.Equal($$$"""{"{{{new string('n', len)}}}":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}""", header.TrimEnd(' '));
            Assert.Equal(42, bytes[^1]);
            Assert.Equal(8 + n + 1, bytes.Length);
        }
    }
}
