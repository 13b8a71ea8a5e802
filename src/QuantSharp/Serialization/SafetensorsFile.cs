using System.Collections.Concurrent;
using System.IO.MemoryMappedFiles;
using TorchSharp;

namespace QuantSharp.Serialization;

/// <summary>Where one tensor lies in a safetensors file.</summary>
/// <param name="Name">Tensor name.</param>
/// <param name="DType">Element type.</param>
/// <param name="Shape">Shape (empty for a scalar).</param>
/// <param name="Begin">Start offset within the data buffer.</param>
/// <param name="End">End offset (exclusive) within the data buffer.</param>
public sealed record SafetensorsTensorInfo(string Name, SafetensorsDType DType, long[] Shape, long Begin, long End)
{
    /// <summary>Number of elements (1 for a scalar, 0 for an empty tensor).</summary>
    /// <exception cref="OverflowException">The product overflows (never for an entry read by <see cref="SafetensorsFile"/>).</exception>
    public long ElementCount => Shape.Aggregate(1L, (a, b) => checked(a * b));

    /// <summary>Size in bytes.</summary>
    public long ByteLength => End - Begin;
}

/// <summary>
/// A safetensors file opened for reading. Opening reads and strictly validates only the header (every rule of the
/// format; a violation throws <see cref="SafetensorsFormatException"/>); the file is memory-mapped and tensor data
/// is copied (<see cref="ReadBytes"/>, <see cref="ReadTensor"/>) or viewed (<see cref="GetSpan"/>,
/// <see cref="OpenRead"/>) only on request.
/// </summary>
/// <remarks>
/// Spans returned by <see cref="GetSpan"/> point into the mapping and must not be used after <see cref="Dispose"/>.
/// The file must not be truncated by another process while it is open. Reading from several threads is safe;
/// disposing while other threads read is not.
/// </remarks>
public sealed unsafe class SafetensorsFile : IDisposable
{
    private static readonly ConcurrentDictionary<string, int> s_open = new(StringComparer.Ordinal);

    private readonly Dictionary<string, SafetensorsTensorInfo> _byName;
    private readonly string _key;
    private FileStream? _stream;
    private MemoryMappedFile? _map;
    private MemoryMappedViewAccessor? _view;
    private byte* _data; // start of the data buffer within the mapping; null when the buffer is empty
    private readonly long _dataLength;
    private bool _disposed;
    private bool _registered;

    private SafetensorsFile(string path, string key, FileStream stream, long dataStart, long dataLength,
        List<SafetensorsTensorInfo> tensors, Dictionary<string, string> metadata)
    {
        Path = path;
        _key = key;
        _stream = stream;
        DataStart = dataStart;
        _dataLength = dataLength;
        Tensors = tensors.AsReadOnly();
        Metadata = metadata;
        _byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    /// <summary>The file's path.</summary>
    public string Path { get; }

    /// <summary>Byte offset of the data buffer within the file (8 + header length).</summary>
    public long DataStart { get; }

    /// <summary>The file's length in bytes when it was opened.</summary>
    public long FileLength => DataStart + _dataLength;

    /// <summary>The tensors, in order of their offsets.</summary>
    public IReadOnlyList<SafetensorsTensorInfo> Tensors { get; }

    /// <summary>The <c>__metadata__</c> strings (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Opens a file, reads and validates its header and maps it into memory.</summary>
    /// <exception cref="SafetensorsFormatException">The file breaks a rule of the format.</exception>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    public static SafetensorsFile Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete);
        SafetensorsFile? file = null;
        try
        {
            long fileLength = stream.Length;
            Span<byte> first8 = stackalloc byte[8];
            if (fileLength >= 8) RandomAccess.Read(stream.SafeFileHandle, first8, 0);
            long n = SafetensorsHeader.ReadHeaderLength(first8, fileLength, path);
            var header = new byte[n];
            for (int done = 0; done < header.Length;)
            {
                int read = RandomAccess.Read(stream.SafeFileHandle, header.AsSpan(done), 8 + done);
                if (read == 0) throw new IOException($"'{path}': the file shrank while its header was read.");
                done += read;
            }
            long dataLength = fileLength - 8 - n;
            var (tensors, metadata) = SafetensorsHeader.Parse(header, dataLength, path);
            file = new SafetensorsFile(path, IdentityKey(path), stream, 8 + n, dataLength, tensors, metadata);
            if (dataLength > 0) file.Map(fileLength);
            s_open.AddOrUpdate(file._key, 1, (_, c) => c + 1);
            file._registered = true;
            return file;
        }
        catch
        {
            if (file is not null) file.Dispose();
            else stream.Dispose();
            throw;
        }
    }

    private void Map(long fileLength)
    {
        _map = MemoryMappedFile.CreateFromFile(_stream!, mapName: null, capacity: 0, MemoryMappedFileAccess.Read,
            HandleInheritability.None, leaveOpen: true);
        _view = _map.CreateViewAccessor(0, fileLength, MemoryMappedFileAccess.Read);
        byte* basePtr = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref basePtr);
        _data = basePtr + _view.PointerOffset + DataStart;
    }

    /// <summary>True when the file holds a tensor of that name.</summary>
    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>The entry of a tensor.</summary>
    /// <exception cref="KeyNotFoundException">No tensor of that name.</exception>
    public SafetensorsTensorInfo GetInfo(string name) => _byName.TryGetValue(name, out var info)
        ? info
        : throw new KeyNotFoundException($"'{Path}': no tensor named '{name}'.");

    /// <summary>
    /// A view of a tensor's raw little-endian bytes in the mapped file, without copying. Valid until
    /// <see cref="Dispose"/>. For tensors of 2 GiB or more use <see cref="OpenRead"/>.
    /// </summary>
    /// <exception cref="NotSupportedException">The tensor has 2 GiB or more.</exception>
    public ReadOnlySpan<byte> GetSpan(string name)
    {
        var info = GetInfo(name);
        ThrowIfDisposed();
        if (info.ByteLength > int.MaxValue)
            throw new NotSupportedException($"'{Path}': tensor '{name}' has {info.ByteLength} bytes, too many for a span; use OpenRead.");
        return info.ByteLength == 0 ? ReadOnlySpan<byte>.Empty : new ReadOnlySpan<byte>(_data + info.Begin, (int)info.ByteLength);
    }

    /// <summary>A read-only stream over a tensor's raw bytes in the mapped file (any size). Dispose it before the file.</summary>
    public Stream OpenRead(string name)
    {
        var info = GetInfo(name);
        ThrowIfDisposed();
        if (info.ByteLength == 0) return new MemoryStream(Array.Empty<byte>(), writable: false);
        // Over the SafeBuffer, so that reading after the file is disposed throws instead of touching unmapped memory.
        return new UnmanagedMemoryStream(_view!.SafeMemoryMappedViewHandle, _view.PointerOffset + DataStart + info.Begin,
            info.ByteLength, FileAccess.Read);
    }

    /// <summary>
    /// Reads bytes [<paramref name="offset"/>, offset + destination.Length) of a tensor's data with positioned reads
    /// (not through the mapping), so that a file truncated by another process after opening gives an error instead of
    /// a fault. Any tensor size; several threads may read at once.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The range is not within the tensor.</exception>
    /// <exception cref="SafetensorsFormatException">The file ends inside the range (truncated after it was opened).</exception>
    public void ReadRange(SafetensorsTensorInfo info, long offset, Span<byte> destination)
    {
        ArgumentNullException.ThrowIfNull(info);
        ThrowIfDisposed();
        if (offset < 0 || offset + destination.Length > info.ByteLength) throw new ArgumentOutOfRangeException(nameof(offset));
        long at = DataStart + info.Begin + offset;
        while (destination.Length > 0)
        {
            int n = RandomAccess.Read(_stream!.SafeFileHandle, destination, at);
            if (n <= 0)
                throw new SafetensorsFormatException(SafetensorsRule.BufferSizeMismatch, Path, info.Name,
                    $"the file ends at byte {at} inside the tensor's data: it was truncated after it was opened");
            destination = destination[n..];
            at += n;
        }
    }

    /// <summary>Copies the raw little-endian bytes of a tensor into a new array.</summary>
    public byte[] ReadBytes(string name)
    {
        var info = GetInfo(name);
        ThrowIfDisposed();
        if (info.ByteLength > Array.MaxLength)
            throw new NotSupportedException($"'{Path}': tensor '{name}' has {info.ByteLength} bytes, too many for an array; use OpenRead or ReadTensor.");
        var bytes = new byte[info.ByteLength];
        if (bytes.Length > 0) new ReadOnlySpan<byte>(_data + info.Begin, bytes.Length).CopyTo(bytes);
        return bytes;
    }

    /// <summary>Reads a tensor into a new CPU TorchSharp tensor of the same dtype and shape.</summary>
    /// <exception cref="NotSupportedException">The dtype has no TorchSharp equivalent (U16, U32, U64, F8_*): use <see cref="GetSpan"/> or <see cref="ReadBytes"/>.</exception>
    public torch.Tensor ReadTensor(string name)
    {
        var info = GetInfo(name);
        ThrowIfDisposed();
        var scalarType = info.DType.ToScalarType()
            ?? throw new NotSupportedException($"'{Path}': tensor '{name}' has dtype {info.DType}, which TorchSharp 0.107 cannot hold; read its bytes with GetSpan or ReadBytes.");
        var result = torch.empty(info.Shape, scalarType);
        try
        {
            if (info.ByteLength <= TensorCopyLimits.SingleCopyBytes)
            {
                if (info.ByteLength > 0) new ReadOnlySpan<byte>(_data + info.Begin, (int)info.ByteLength).CopyTo(result.bytes);
            }
            else
            {
                // Copy through contiguous 1-D slices, each small enough for a span.
                int elementSize = info.DType.ElementSize();
                long chunk = Math.Max(1, TensorCopyLimits.ChunkBytes / elementSize), count = info.ElementCount;
                using var flat = result.view(-1);
                for (long start = 0; start < count; start += chunk)
                {
                    long n = Math.Min(chunk, count - start);
                    using var part = flat.narrow(0, start, n);
                    new ReadOnlySpan<byte>(_data + info.Begin + start * elementSize, checked((int)(n * elementSize))).CopyTo(part.bytes);
                }
            }
            return result;
        }
        catch
        {
            result.Dispose();
            throw;
        }
    }

    /// <summary>Unmaps and closes the file.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_data != null)
        {
            _view!.SafeMemoryMappedViewHandle.ReleasePointer();
            _data = null;
        }
        _view?.Dispose();
        _map?.Dispose();
        _stream?.Dispose();
        _stream = null;
        if (_registered)
        {
            while (s_open.TryGetValue(_key, out int c))
            {
                if (c <= 1 ? s_open.TryRemove(new KeyValuePair<string, int>(_key, c)) : s_open.TryUpdate(_key, c - 1, c)) break;
            }
        }
    }

    /// <summary>True when some <see cref="SafetensorsFile"/> of this process has this file open.</summary>
    internal static bool IsOpen(string path) => s_open.ContainsKey(IdentityKey(path));

    /// <summary>A key naming the file itself: full path with symbolic links resolved.</summary>
    internal static string IdentityKey(string path)
    {
        string full = System.IO.Path.GetFullPath(path);
        try
        {
            var target = new FileInfo(full).ResolveLinkTarget(returnFinalTarget: true);
            if (target is not null) full = target.FullName;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return full;
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);
}

/// <summary>
/// Above <see cref="SingleCopyBytes"/> a tensor is copied through 1-D slices of <see cref="ChunkBytes"/> (a span
/// holds at most 2 GiB). Tests lower both, on their own thread, to exercise the sliced path with small tensors.
/// </summary>
internal static class TensorCopyLimits
{
    [ThreadStatic] private static long t_singleCopyBytes, t_chunkBytes;

    public static long SingleCopyBytes => t_singleCopyBytes > 0 ? t_singleCopyBytes : int.MaxValue;

    public static long ChunkBytes => t_chunkBytes > 0 ? t_chunkBytes : 1L << 30;

    /// <summary>For tests: sets both limits on the current thread (0 restores the defaults).</summary>
    public static void SetForCurrentThread(long singleCopyBytes, long chunkBytes)
    {
        t_singleCopyBytes = singleCopyBytes;
        t_chunkBytes = chunkBytes;
    }
}
