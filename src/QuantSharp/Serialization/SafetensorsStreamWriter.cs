using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using TorchSharp;

namespace QuantSharp.Serialization;

/// <summary>
/// Writes one safetensors file tensor by tensor without holding the tensors in memory, atomically: data goes
/// to a temporary file in the destination folder (<c>.NAME.tmp-XXXX</c>) after a reserved header area; on
/// <see cref="Commit"/> the header is written into the reserve (padded with spaces, which the format allows) or,
/// when it does not fit or the file is small, the file is rewritten compactly; then the temporary file is renamed
/// to the final name. Disposing without committing deletes the temporary file. Tensors are laid out in the order
/// they are added. Each tensor's bytes are hashed (SHA-256) as they are written so that a reload test can compare
/// what was read back with what was written.
/// </summary>
internal sealed class SafetensorsStreamWriter : IDisposable
{
    /// <summary>Files with less data than this are always rewritten with an exact header.</summary>
    internal const long DefaultCompactBelowBytes = 32L << 20;

    /// <summary>Test hook: the compaction threshold on this thread.</summary>
    [ThreadStatic] internal static long? CompactBelowBytesForTests;

    /// <summary>Test hook: creates the stream the temporary file is written through (on this thread).</summary>
    [ThreadStatic] internal static Func<string, Stream>? StreamFactoryForTests;

    private readonly string _finalPath;
    private readonly string _tempPath;
    private readonly long _reserve;
    private Stream? _stream;
    private readonly List<Entry> _entries = [];
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private Entry? _open;
    private IncrementalHash? _hash;
    private long _dataLength;
    private bool _committed, _written;
    private readonly bool _hashTensors;

    private sealed record Entry(string Name, SafetensorsDType DType, long[] Shape, long Begin)
    {
        public long End { get; set; }
        public byte[] Sha256 { get; set; } = [];
    }

    /// <summary>Starts a file.</summary>
    /// <param name="path">Final path; it is not touched until <see cref="Commit"/>.</param>
    /// <param name="reservedHeaderBytes">Space kept for the header (rounded up to a multiple of 8).</param>
    /// <param name="hashTensors">Hash each tensor's bytes (SHA-256, <see cref="Hashes"/>) for a reload test.</param>
    public SafetensorsStreamWriter(string path, long reservedHeaderBytes, bool hashTensors = true)
    {
        _hashTensors = hashTensors;
        _finalPath = System.IO.Path.GetFullPath(path);
        CheckNotFolder(path);
        string dir = System.IO.Path.GetDirectoryName(_finalPath)!;
        Directory.CreateDirectory(dir);
        _tempPath = System.IO.Path.Combine(dir, $".{System.IO.Path.GetFileName(_finalPath)}.tmp-{Guid.NewGuid():N}");
        _reserve = (Math.Max(reservedHeaderBytes, 8) + 7) / 8 * 8;
        try
        {
            _stream = StreamFactoryForTests?.Invoke(_tempPath)
                ?? new FileStream(_tempPath, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1 << 20);
            _stream.Position = 8 + _reserve;
        }
        catch
        {
            TryDelete(_tempPath);
            throw;
        }
    }

    /// <summary>
    /// Refuses a destination that names a folder (an existing one, or a path ending in a separator) before any byte is
    /// written: the rename at the end would fail on it after the whole file was written.
    /// </summary>
    /// <exception cref="IOException">The path names a folder; the message gives a file name to use instead.</exception>
    internal static void CheckNotFolder(string path)
    {
        string full = System.IO.Path.GetFullPath(path);
        bool folder = Directory.Exists(full);
        if (folder || System.IO.Path.GetFileName(full).Length == 0)
            throw new IOException($"Cannot write '{path}': it {(folder ? "is a folder" : "ends in a folder separator")}; give a file name, e.g. '{System.IO.Path.Combine(path, "model.safetensors")}'.");
    }

    /// <summary>The temporary file being written.</summary>
    public string TempPath => _tempPath;

    /// <summary>The final path.</summary>
    public string FinalPath => _finalPath;

    /// <summary>Bytes of tensor data written so far.</summary>
    public long DataLength => _dataLength;

    /// <summary>Starts a tensor; its bytes follow through <see cref="Append"/>; finish with <see cref="EndTensor"/>.</summary>
    public void BeginTensor(string name, SafetensorsDType dtype, long[] shape)
    {
        if (_open is not null) throw new InvalidOperationException($"Tensor '{_open.Name}' is still open.");
        // The format's name rules: unique, not the metadata key, well-formed Unicode (an empty name is allowed, as the
        // reference library and our reader allow it).
        if (name == SafetensorsHeader.MetadataKey) throw new ArgumentException($"'{name}' is reserved and cannot name a tensor.", nameof(name));
        if (!IsWellFormed(name)) throw new ArgumentException($"The tensor name '{name}' is not well-formed UTF-16 (lone surrogate).", nameof(name));
        if (!_names.Add(name)) throw new ArgumentException($"Tensor '{name}' was already written.", nameof(name));
        _open = new Entry(name, dtype, (long[])shape.Clone(), _dataLength);
        _hash = _hashTensors ? IncrementalHash.CreateHash(HashAlgorithmName.SHA256) : null;
    }

    /// <summary>Appends bytes of the open tensor.</summary>
    public void Append(ReadOnlySpan<byte> bytes)
    {
        if (_open is null) throw new InvalidOperationException("No tensor is open.");
        _stream!.Write(bytes);
        _hash?.AppendData(bytes);
        _dataLength += bytes.Length;
    }

    /// <summary>Finishes the open tensor, checking that its size matches dtype and shape.</summary>
    /// <returns>The SHA-256 of its bytes.</returns>
    public byte[] EndTensor()
    {
        var e = _open ?? throw new InvalidOperationException("No tensor is open.");
        long expected = checked(e.Shape.Aggregate(1L, (a, b) => checked(a * b)) * e.DType.ElementSize());
        long written = _dataLength - e.Begin;
        if (written != expected)
            throw new InvalidOperationException($"Tensor '{e.Name}': {written} bytes written, {expected} expected for {e.DType} [{string.Join(", ", e.Shape)}].");
        e.End = _dataLength;
        e.Sha256 = _hash?.GetHashAndReset() ?? [];
        _hash?.Dispose();
        _hash = null;
        _entries.Add(e);
        _open = null;
        return e.Sha256;
    }

    /// <summary>Writes a whole tensor.</summary>
    public byte[] Add(string name, SafetensorsDType dtype, long[] shape, ReadOnlySpan<byte> bytes)
    {
        BeginTensor(name, dtype, shape);
        Append(bytes);
        return EndTensor();
    }

    /// <summary>Writes a whole tensor from the bytes of a contiguous CPU tensor of any size (appended in slices when over 2 GiB).</summary>
    /// <returns>The SHA-256 of its bytes.</returns>
    public byte[] Add(string name, SafetensorsDType dtype, long[] shape, torch.Tensor tensor)
    {
        BeginTensor(name, dtype, shape);
        Tensors.TensorSpans.ForEachSlice(tensor, (part, _) => Append(part.bytes));
        return EndTensor();
    }

    /// <summary>The SHA-256 of every tensor written, by name.</summary>
    public IReadOnlyDictionary<string, byte[]> Hashes => _entries.ToDictionary(e => e.Name, e => e.Sha256);

    /// <summary>
    /// Writes the header and, when <paramref name="promote"/> is true, renames the file into place (replacing an
    /// existing file); otherwise the finished file stays at <see cref="TempPath"/> until <see cref="Promote"/>.
    /// </summary>
    public void Commit(IReadOnlyDictionary<string, string>? metadata, bool promote = true)
    {
        if (_open is not null) throw new InvalidOperationException($"Tensor '{_open.Name}' is still open.");
        if (_written) throw new InvalidOperationException("Already committed.");
        // The one header builder: the format's rules and limit are checked before the header is written (a larger file
        // would be unreadable everywhere). The header comes padded to a multiple of 8.
        byte[] header = SafetensorsHeader.Build(_entries.Select(e => new SafetensorsTensorSpec(e.Name, e.DType, e.Shape)).ToList(), metadata, _finalPath, out _);
        var stream = _stream!;
        if (header.Length <= _reserve && _dataLength >= (CompactBelowBytesForTests ?? DefaultCompactBelowBytes))
        {
            stream.Position = 0;
            Span<byte> len = stackalloc byte[8];
            BitConverter.TryWriteBytes(len, _reserve);
            stream.Write(len);
            stream.Write(header);
            var pad = new byte[_reserve - header.Length];
            pad.AsSpan().Fill((byte)' ');
            stream.Write(pad);
            Flush(stream);
            stream.Dispose();
            _stream = null;
        }
        else
        {
            // Rewrite compactly: the header (padded to a multiple of 8), then the data.
            long padded = header.Length;
            string compactPath = _tempPath + ".c";
            try
            {
                using (var output = StreamFactoryForTests?.Invoke(compactPath)
                    ?? new FileStream(compactPath, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
                {
                    Span<byte> len = stackalloc byte[8];
                    BitConverter.TryWriteBytes(len, padded);
                    output.Write(len);
                    output.Write(header);
                    for (long i = header.Length; i < padded; i++) output.WriteByte((byte)' ');
                    stream.Position = 8 + _reserve;
                    stream.CopyTo(output, 1 << 20);
                    Flush(output);
                }
                stream.Dispose();
                _stream = null;
                File.Move(compactPath, _tempPath, overwrite: true);
            }
            catch
            {
                TryDelete(compactPath);
                throw;
            }
        }
        _written = true;
        if (promote) Promote();
    }

    /// <summary>Renames the finished temporary file to the final path.</summary>
    public void Promote()
    {
        if (!_written) throw new InvalidOperationException("Commit first.");
        if (_committed) return;
        File.Move(_tempPath, _finalPath, overwrite: true);
        _committed = true;
    }

    private static void Flush(Stream s)
    {
        if (s is FileStream fs) fs.Flush(flushToDisk: true);
        else s.Flush();
    }

    private static bool IsWellFormed(string text)
    {
        for (int i = 0; i < text.Length; i++)
        {
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])) i++;
            else if (char.IsSurrogate(text[i])) return false;
        }
        return true;
    }

    /// <summary>A header reserve that fits typical metadata for a file of <paramref name="tensorCount"/> tensors.</summary>
    public static long EstimateReserve(int tensorCount, long inputHeaderBytes, long metadataBytes)
        => 4096 + 2 * inputHeaderBytes + 400L * tensorCount + 2 * metadataBytes;

    /// <inheritdoc/>
    public void Dispose()
    {
        _hash?.Dispose();
        _stream?.Dispose();
        _stream = null;
        if (!_committed) TryDelete(_tempPath);
    }

    internal static void TryDelete(string path)
    {
        try { if (File.Exists(path)) File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
