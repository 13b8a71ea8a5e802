using System.Text.Json;
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
    /// <summary>Number of elements.</summary>
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>Size in bytes.</summary>
    public long ByteLength => End - Begin;
}

/// <summary>
/// A safetensors file opened for reading. Opening reads only the header; tensor data is read on request.
/// </summary>
/// <remarks>
/// MINIMAL FIRST VERSION: validation and memory mapping are completed by the checkpoint work
/// (strict reader, typed errors). The public surface below is the contract.
/// </remarks>
public sealed class SafetensorsFile : IDisposable
{
    private readonly FileStream _stream;
    private readonly Dictionary<string, SafetensorsTensorInfo> _byName;

    private SafetensorsFile(string path, FileStream stream, long dataStart, List<SafetensorsTensorInfo> tensors,
        Dictionary<string, string> metadata)
    {
        Path = path;
        _stream = stream;
        DataStart = dataStart;
        Tensors = tensors;
        Metadata = metadata;
        _byName = tensors.ToDictionary(t => t.Name);
    }

    /// <summary>The file's path.</summary>
    public string Path { get; }

    /// <summary>Byte offset of the data buffer within the file (8 + header length).</summary>
    public long DataStart { get; }

    /// <summary>The tensors, in order of their offsets.</summary>
    public IReadOnlyList<SafetensorsTensorInfo> Tensors { get; }

    /// <summary>The <c>__metadata__</c> strings (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Opens a file and reads its header.</summary>
    public static SafetensorsFile Open(string path)
    {
        var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        try
        {
            Span<byte> lenBytes = stackalloc byte[8];
            stream.ReadExactly(lenBytes);
            long headerLength = BitConverter.ToInt64(lenBytes);
            if (headerLength <= 0 || headerLength > 100_000_000 || 8 + headerLength > stream.Length)
                throw new InvalidDataException($"{path}: invalid header length {headerLength}.");
            var header = new byte[headerLength];
            stream.ReadExactly(header);
            using var doc = JsonDocument.Parse(header);
            var tensors = new List<SafetensorsTensorInfo>();
            var metadata = new Dictionary<string, string>();
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    foreach (var m in prop.Value.EnumerateObject()) metadata[m.Name] = m.Value.GetString()!;
                    continue;
                }
                string dtypeText = prop.Value.GetProperty("dtype").GetString()!;
                if (!SafetensorsDTypeInfo.TryParse(dtypeText, out var dtype))
                    throw new InvalidDataException($"{path}: tensor '{prop.Name}' has unknown dtype '{dtypeText}'.");
                long[] shape = prop.Value.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray();
                long[] offsets = prop.Value.GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt64()).ToArray();
                tensors.Add(new SafetensorsTensorInfo(prop.Name, dtype, shape, offsets[0], offsets[1]));
            }
            tensors.Sort((a, b) => a.Begin.CompareTo(b.Begin));
            return new SafetensorsFile(path, stream, 8 + headerLength, tensors, metadata);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>True when the file holds a tensor of that name.</summary>
    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>The entry of a tensor.</summary>
    /// <exception cref="KeyNotFoundException">No tensor of that name.</exception>
    public SafetensorsTensorInfo GetInfo(string name) => _byName.TryGetValue(name, out var info)
        ? info
        : throw new KeyNotFoundException($"{Path}: no tensor named '{name}'.");

    /// <summary>Reads the raw little-endian bytes of a tensor.</summary>
    public byte[] ReadBytes(string name)
    {
        var info = GetInfo(name);
        var bytes = new byte[info.ByteLength];
        RandomAccess.Read(_stream.SafeFileHandle, bytes, DataStart + info.Begin);
        return bytes;
    }

    /// <summary>Reads a tensor into a new CPU TorchSharp tensor of the same dtype and shape.</summary>
    public torch.Tensor ReadTensor(string name)
    {
        var info = GetInfo(name);
        var scalarType = info.DType.ToScalarType()
            ?? throw new NotSupportedException($"{Path}: tensor '{name}' has dtype {info.DType}, which TorchSharp cannot hold.");
        var result = torch.empty(info.Shape, scalarType);
        if (info.ByteLength > 0)
            RandomAccess.Read(_stream.SafeFileHandle, result.bytes, DataStart + info.Begin);
        return result;
    }

    /// <inheritdoc/>
    public void Dispose() => _stream.Dispose();
}
