using QuantSharp.Cli.Demo;

namespace QuantSharp.Tests.Demo;

public class IdxFileTests
{
    // A hand-made IDX file: magic 00 00 08 03 (unsigned byte, 3 dimensions), dimensions 2, 2, 3 (big-endian),
    // then the 12 data bytes 10, 11, ..., 21.
    private static byte[] ThreeDimensional()
    {
        var bytes = new List<byte> { 0, 0, 0x08, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3 };
        for (int i = 0; i < 12; i++) bytes.Add((byte)(10 + i));
        return bytes.ToArray();
    }

    [Fact]
    public void Reads_shape_and_row_major_data()
    {
        var idx = IdxFile.Read(new MemoryStream(ThreeDimensional()));
        Assert.Equal(new[] { 2, 2, 3 }, idx.Shape);
        Assert.Equal(2, idx.Count);
        Assert.Equal(Enumerable.Range(10, 12).Select(v => (byte)v), idx.Data);
    }

    [Fact]
    public void Dimensions_are_big_endian()
    {
        // 1 dimension of 0x00000102 = 258 items (little-endian would read 0x02010000).
        var bytes = new byte[] { 0, 0, 0x08, 1, 0x00, 0x00, 0x01, 0x02 }.Concat(Enumerable.Range(0, 258).Select(i => (byte)(i % 10))).ToArray();
        var idx = IdxFile.Read(new MemoryStream(bytes));
        Assert.Equal(new[] { 258 }, idx.Shape);
        Assert.Equal(bytes.Skip(8), idx.Data);
    }

    [Fact]
    public void MaxItems_keeps_the_first_items()
    {
        var idx = IdxFile.Read(new MemoryStream(ThreeDimensional()), maxItems: 1);
        Assert.Equal(new[] { 1, 2, 3 }, idx.Shape);
        Assert.Equal(new byte[] { 10, 11, 12, 13, 14, 15 }, idx.Data);
    }

    [Fact]
    public void Refuses_other_element_types()
    {
        var bytes = ThreeDimensional();
        bytes[2] = 0x0D; // float
        var e = Assert.Throws<InvalidDataException>(() => IdxFile.Read(new MemoryStream(bytes)));
        Assert.Contains("0x0D", e.Message);
    }

    [Fact]
    public void Refuses_a_bad_magic_number()
    {
        var bytes = ThreeDimensional();
        bytes[0] = 0x1F;
        var e = Assert.Throws<InvalidDataException>(() => IdxFile.Read(new MemoryStream(bytes)));
        Assert.Contains("two zero bytes", e.Message);
    }

    [Fact]
    public void Refuses_truncated_data_and_headers()
    {
        var bytes = ThreeDimensional();
        var data = Assert.Throws<InvalidDataException>(() => IdxFile.Read(new MemoryStream(bytes[..^1])));
        Assert.Contains("truncated", data.Message);
        Assert.Contains("12 bytes", data.Message);
        var header = Assert.Throws<InvalidDataException>(() => IdxFile.Read(new MemoryStream(bytes[..10])));
        Assert.Contains("header truncated", header.Message);
    }

    [Fact]
    public void Missing_file_names_the_fetch_script()
    {
        var e = Assert.Throws<FileNotFoundException>(() => IdxFile.Read(Path.Combine(Path.GetTempPath(), "no-such-idx-" + Guid.NewGuid())));
        Assert.Contains("fetch-mnist.sh", e.Message);
    }
}
