using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using TorchSharp;

namespace QuantSharp.Serialization;

/// <summary>One tensor declared to a <see cref="SafetensorsWriter"/> before its bytes are written.</summary>
/// <param name="Name">Tensor name (any well-formed string except <c>__metadata__</c>).</param>
/// <param name="DType">Element type.</param>
/// <param name="Shape">Shape (empty for a scalar; zeros allowed).</param>
public sealed record SafetensorsTensorSpec(string Name, SafetensorsDType DType, long[] Shape)
{
    /// <summary>The spec of a TorchSharp tensor (its dtype and shape).</summary>
    public static SafetensorsTensorSpec FromTensor(string name, torch.Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        return new SafetensorsTensorSpec(name, SafetensorsDTypeInfo.FromScalarType(tensor.dtype), tensor.shape);
    }
}

/// <summary>
/// Writes a safetensors file atomically: the data goes to a temporary file in the same folder, which
/// <see cref="Commit"/> renames into place; disposing without committing deletes it, so the destination is either
/// the previous file or the complete new one.
/// </summary>
/// <remarks>
/// Two ways to use it:
/// <list type="bullet">
/// <item>Streaming: <see cref="Create"/> with every tensor's name, dtype and shape (the header needs the offsets),
/// then <see cref="Write(string, torch.Tensor)"/> or <see cref="Write(string, ReadOnlySpan{byte})"/> each tensor in
/// the declared order (one tensor in memory at a time), then <see cref="Commit"/>.</item>
/// <item>Collecting: <c>new SafetensorsWriter(path, metadata)</c>, <see cref="Add(string, torch.Tensor)"/> each tensor
/// (the writer keeps a reference: keep the tensors alive until Commit), then <see cref="Commit"/>.</item>
/// </list>
/// The header lists <c>__metadata__</c> first (keys sorted), then the tensors in declared order, and is padded with
/// spaces to a multiple of 8 bytes; the same content therefore always gives the same bytes.
/// </remarks>
public sealed class SafetensorsWriter : IDisposable
{
    private readonly IReadOnlyDictionary<string, string>? _metadata;
    private readonly List<(SafetensorsTensorSpec Spec, torch.Tensor? Tensor, ReadOnlyMemory<byte> Bytes)>? _collected;
    private SafetensorsTensorSpec[] _specs = [];
    private long[] _sizes = [];
    private SafetensorsStreamWriter? _out; // the one low-level writer (temporary file, header, rename)
    private int _next;
    private bool _committed, _failed, _disposed;

    /// <summary>Starts a writer in collecting mode: <see cref="Add(string, torch.Tensor)"/> tensors, then <see cref="Commit"/>.</summary>
    /// <param name="path">Destination file. It may exist (it is replaced on Commit) but must not be open in a <see cref="SafetensorsFile"/>.</param>
    /// <param name="metadata">The <c>__metadata__</c> strings, or null.</param>
    public SafetensorsWriter(string path, IReadOnlyDictionary<string, string>? metadata = null)
    {
        Path = CheckDestination(path);
        _metadata = metadata is null ? null : new Dictionary<string, string>(metadata);
        _collected = [];
    }

    // Streaming mode (Create): no collection list.
    private SafetensorsWriter(string path, IReadOnlyDictionary<string, string>? metadata, bool streaming)
    {
        Path = CheckDestination(path);
        _metadata = metadata is null ? null : new Dictionary<string, string>(metadata);
        _collected = streaming ? null : [];
    }

    /// <summary>The destination path.</summary>
    public string Path { get; }

    /// <summary>
    /// Starts a streaming writer: writes the header for <paramref name="tensors"/> to a temporary file; then
    /// <see cref="Write(string, ReadOnlySpan{byte})"/> each tensor in this order and <see cref="Commit"/>.
    /// </summary>
    /// <param name="path">Destination file. It may exist (it is replaced on Commit) but must not be open in a <see cref="SafetensorsFile"/>.</param>
    /// <param name="tensors">Every tensor of the file, in the order their bytes will be written.</param>
    /// <param name="metadata">The <c>__metadata__</c> strings, or null.</param>
    /// <exception cref="ArgumentException">A name is duplicated, reserved or not well-formed; a dimension is negative; sizes overflow.</exception>
    /// <exception cref="IOException">The destination is open for reading in this process.</exception>
    public static SafetensorsWriter Create(string path, IEnumerable<SafetensorsTensorSpec> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        var writer = new SafetensorsWriter(path, metadata, streaming: true);
        try
        {
            writer.Start(tensors.ToArray());
            return writer;
        }
        catch
        {
            writer.Dispose();
            throw;
        }
    }

    /// <summary>Writes tensors to <paramref name="path"/> atomically (one at a time, in the given order).</summary>
    /// <param name="path">Destination file.</param>
    /// <param name="tensors">Names and tensors (any device or layout; non-contiguous or non-CPU tensors are copied one at a time).</param>
    /// <param name="metadata">The <c>__metadata__</c> strings, or null.</param>
    public static void Save(string path, IEnumerable<(string Name, torch.Tensor Tensor)> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        var list = tensors.ToList();
        using var writer = Create(path, list.Select(t => SafetensorsTensorSpec.FromTensor(t.Name, t.Tensor)), metadata);
        foreach (var (name, tensor) in list) writer.Write(name, tensor);
        writer.Commit();
    }

    /// <summary>Collecting mode: adds a tensor, written on <see cref="Commit"/>. The tensor must stay alive until then.</summary>
    public void Add(string name, torch.Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        var collected = Collecting();
        collected.Add((SafetensorsTensorSpec.FromTensor(name, tensor), tensor, default));
    }

    /// <summary>Collecting mode: adds a tensor given as raw little-endian bytes, written on <see cref="Commit"/>. The memory must stay unchanged until then.</summary>
    public void Add(string name, SafetensorsDType dtype, long[] shape, ReadOnlyMemory<byte> bytes)
    {
        ArgumentNullException.ThrowIfNull(shape);
        var collected = Collecting();
        collected.Add((new SafetensorsTensorSpec(name, dtype, (long[])shape.Clone()), null, bytes));
    }

    private List<(SafetensorsTensorSpec, torch.Tensor?, ReadOnlyMemory<byte>)> Collecting()
    {
        ThrowIfDisposed();
        if (_collected is null) throw new InvalidOperationException("This writer was created with SafetensorsWriter.Create (streaming): use Write, not Add.");
        if (_out is not null || _committed) throw new InvalidOperationException("Add after Commit.");
        return _collected;
    }

    /// <summary>Writes the next declared tensor from a TorchSharp tensor of the declared dtype and shape.</summary>
    /// <exception cref="ArgumentException">Wrong name, dtype or shape.</exception>
    public void Write(string name, torch.Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        var spec = ExpectNext(name);
        var dtype = SafetensorsDTypeInfo.FromScalarType(tensor.dtype);
        if (dtype != spec.DType || !tensor.shape.AsSpan().SequenceEqual(spec.Shape))
            throw new ArgumentException($"Tensor '{name}' was declared {spec.DType} [{string.Join(", ", spec.Shape)}] but is {dtype} [{string.Join(", ", tensor.shape)}].", nameof(tensor));
        _out!.BeginTensor(spec.Name, spec.DType, spec.Shape);
        if (_sizes[_next] == 0) { _out.EndTensor(); _next++; return; }
        // Temporaries (CPU/contiguous copy, slices) die with this scope; the caller's tensor is untouched.
        using var scope = torch.NewDisposeScope();
        var source = tensor.device_type != DeviceType.CPU || !tensor.is_contiguous() ? tensor.cpu().contiguous() : tensor;
        try
        {
            Tensors.TensorSpans.ForEachSlice(source, (part, _) => WriteData(part.bytes));
            _out.EndTensor();
            _next++;
        }
        catch
        {
            // The tensor is open in the file: it cannot be completed.
            _failed = true;
            throw;
        }
    }

    /// <summary>Writes the next declared tensor from its raw little-endian bytes (exactly element count times element size).</summary>
    /// <exception cref="ArgumentException">Wrong name or byte count.</exception>
    public void Write(string name, ReadOnlySpan<byte> bytes)
    {
        var spec = ExpectNext(name);
        if (bytes.Length != _sizes[_next])
            throw new ArgumentException($"Tensor '{name}' ({spec.DType} [{string.Join(", ", spec.Shape)}]) needs {_sizes[_next]} bytes, got {bytes.Length}.", nameof(bytes));
        _out!.BeginTensor(spec.Name, spec.DType, spec.Shape);
        WriteData(bytes);
        _out.EndTensor();
        _next++;
    }

    /// <summary>
    /// Finishes the file (flushed to disk) and renames it into place, replacing any previous file.
    /// </summary>
    /// <exception cref="InvalidOperationException">A declared tensor was not written, or an earlier write failed.</exception>
    public void Commit()
    {
        ThrowIfDisposed();
        if (_committed) throw new InvalidOperationException($"'{Path}' was already committed.");
        if (_collected is not null && _out is null)
        {
            Start(_collected.Select(c => c.Spec).ToArray());
            foreach (var (spec, tensor, bytes) in _collected)
            {
                if (tensor is not null) Write(spec.Name, tensor);
                else Write(spec.Name, bytes.Span);
            }
        }
        Finish();
        Publish();
    }

    /// <summary>Writes the header and flushes the temporary file after checking that every tensor was written.</summary>
    internal void Finish()
    {
        ThrowIfDisposed();
        if (_failed) throw new InvalidOperationException($"Cannot commit '{Path}': an earlier write failed; nothing was written under that name.");
        if (_out is null) throw new InvalidOperationException($"Cannot commit '{Path}': the writer holds no data.");
        if (_next < _specs.Length)
            throw new InvalidOperationException($"Cannot commit '{Path}': tensor '{_specs[_next].Name}'" +
                (_specs.Length - _next > 1 ? $" and {_specs.Length - _next - 1} more" : "") + " declared but not written; nothing was written under that name.");
        try
        {
            _out.Commit(_metadata, promote: false);
        }
        catch
        {
            _failed = true;
            throw;
        }
    }

    /// <summary>Renames the finished temporary file into place.</summary>
    internal void Publish()
    {
        if (SafetensorsFile.IsOpen(Path))
            throw new IOException($"Cannot replace '{Path}': it is open for reading in this process. Write to another path.");
        _out!.Promote();
        _committed = true;
    }

    /// <summary>Deletes the temporary file unless <see cref="Commit"/> succeeded.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _out?.Dispose(); // deletes the temporary file unless it was renamed into place
    }

    private void Start(SafetensorsTensorSpec[] specs)
    {
        // Validates names, shapes and the format's limits before anything is written; the header is then known exactly.
        byte[] header = SafetensorsHeader.Build(specs, _metadata, Path, out _sizes);
        _specs = specs;
        _out = new SafetensorsStreamWriter(Path, header.Length, hashTensors: false);
    }

    private SafetensorsTensorSpec ExpectNext(string name)
    {
        ThrowIfDisposed();
        if (_collected is not null && _out is null)
            throw new InvalidOperationException("This writer collects tensors (constructor): use Add, then Commit; or create a streaming writer with SafetensorsWriter.Create.");
        if (_committed) throw new InvalidOperationException($"'{Path}' was already committed.");
        if (_failed) throw new InvalidOperationException($"An earlier write to '{Path}' failed; dispose this writer and start again.");
        if (_next >= _specs.Length)
            throw new InvalidOperationException($"Tensor '{name}' was not declared: all {_specs.Length} declared tensors are written.");
        var spec = _specs[_next];
        if (spec.Name != name)
            throw new InvalidOperationException($"Tensors must be written in declared order: expected '{spec.Name}' next, got '{name}'.");
        return spec;
    }

    private void WriteData(ReadOnlySpan<byte> bytes)
    {
        try
        {
            _out!.Append(bytes);
        }
        catch
        {
            _failed = true;
            throw;
        }
    }

    private static string CheckDestination(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        SafetensorsStreamWriter.CheckNotFolder(path);
        string dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!;
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"Cannot write '{path}': folder '{dir}' does not exist.");
        if (SafetensorsFile.IsOpen(path))
            throw new IOException($"Cannot write '{path}': it is open for reading in this process (an input file); write to another path.");
        return path;
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);
}
