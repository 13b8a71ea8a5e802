using System.Buffers.Binary;

namespace QuantSharp.Cli.Demo;

/// <summary>
/// Reader for the IDX format of the MNIST files (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type byte
/// (only 0x08 = unsigned byte is supported, which is what MNIST uses), a byte giving the number of dimensions,
/// then each dimension as a big-endian int32, then the data in row-major order.
/// </summary>
internal sealed class IdxFile
{
    private IdxFile(int[] shape, byte[] data)
    {
        Shape = shape;
        Data = data;
    }

    /// <summary>The dimensions, e.g. [10000, 28, 28] for the MNIST test images, [10000] for its labels.</summary>
    public int[] Shape { get; }

    /// <summary>The values, row-major.</summary>
    public byte[] Data { get; }

    /// <summary>Number of items (the first dimension).</summary>
    public int Count => Shape[0];

    /// <summary>Reads an IDX file.</summary>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    /// <exception cref="InvalidDataException">The file is not an unsigned-byte IDX file or is truncated.</exception>
    public static IdxFile Read(string path, int maxItems = int.MaxValue)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"IDX file not found: {path}. Run scripts/fetch-mnist.sh to download MNIST.", path);
        using var stream = File.OpenRead(path);
        try
        {
            return Read(stream, maxItems);
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"{path}: {e.Message}", e);
        }
    }

    /// <summary>Reads an IDX file from a stream, keeping at most <paramref name="maxItems"/> items.</summary>
    /// <exception cref="InvalidDataException">The bytes are not an unsigned-byte IDX file or are truncated.</exception>
    public static IdxFile Read(Stream stream, int maxItems = int.MaxValue)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentOutOfRangeException.ThrowIfNegative(maxItems);
        Span<byte> magic = stackalloc byte[4];
        if (stream.ReadAtLeast(magic, 4, throwOnEndOfStream: false) < 4)
            throw new InvalidDataException("not an IDX file: shorter than the 4-byte magic number.");
        if (magic[0] != 0 || magic[1] != 0)
            throw new InvalidDataException($"not an IDX file: the magic number must start with two zero bytes, found 0x{magic[0]:X2} 0x{magic[1]:X2}.");
        if (magic[2] != 0x08)
            throw new InvalidDataException($"IDX element type 0x{magic[2]:X2} is not supported; only 0x08 (unsigned byte, as in MNIST) is.");
        int rank = magic[3];
        if (rank == 0)
            throw new InvalidDataException("IDX file declares 0 dimensions.");

        var shape = new int[rank];
        Span<byte> dim = stackalloc byte[4];
        long itemSize = 1;
        for (int i = 0; i < rank; i++)
        {
            if (stream.ReadAtLeast(dim, 4, throwOnEndOfStream: false) < 4)
                throw new InvalidDataException($"IDX header truncated: expected {rank} dimensions, the file ends in dimension {i}.");
            int size = BinaryPrimitives.ReadInt32BigEndian(dim);
            if (size < 0)
                throw new InvalidDataException($"IDX dimension {i} is negative ({size}).");
            shape[i] = size;
            if (i > 0) itemSize = checked(itemSize * size);
        }

        int count = Math.Min(shape[0], maxItems);
        long length = checked(count * itemSize);
        if (length > Array.MaxLength)
            throw new InvalidDataException($"IDX data of {length} bytes is too large to read into memory.");
        var data = new byte[length];
        int read = stream.ReadAtLeast(data, data.Length, throwOnEndOfStream: false);
        if (read < data.Length)
            throw new InvalidDataException($"IDX data truncated: header promises {length} bytes for {count} items, the file has {read}.");
        shape[0] = count;
        return new IdxFile(shape, data);
    }
}
