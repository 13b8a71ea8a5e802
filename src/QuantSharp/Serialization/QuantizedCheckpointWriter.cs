using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Serialization;

/// <summary>
/// Writes one file of a quantized checkpoint tensor by tensor (see <see cref="QuantizedCheckpoint"/>): plain tensors
/// are copied bit-exactly, quantized ones become data + <c>.scale</c> + <c>.zero_point</c>; the metadata (format keys,
/// versions, configuration, per-layer JSON) is written on <see cref="Commit"/>.
/// </summary>
internal sealed class QuantizedCheckpointWriter : IDisposable
{
    private readonly SafetensorsStreamWriter _writer;
    private readonly Dictionary<string, string> _metadata;
    private readonly JsonObject _layers = new();
    private readonly HashSet<QuantType> _types = [];
    private readonly JsonNode? _config;

    /// <param name="path">Final file path.</param>
    /// <param name="tensorCount">How many tensors (for the header reserve).</param>
    /// <param name="inputHeaderBytes">Header size of the input file, if any (for the header reserve).</param>
    /// <param name="metadata">Extra metadata (e.g. the input file's); <c>quantsharp.*</c> keys are replaced.</param>
    /// <param name="config">The configuration to record.</param>
    public QuantizedCheckpointWriter(string path, int tensorCount, long inputHeaderBytes, IReadOnlyDictionary<string, string>? metadata, JsonNode? config)
    {
        _metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        if (metadata is not null)
        {
            foreach (var (k, v) in metadata)
            {
                if (!k.StartsWith("quantsharp.", StringComparison.Ordinal)) _metadata[k] = v;
            }
        }
        _config = config;
        long extra = _metadata.Sum(kv => (long)kv.Key.Length + kv.Value.Length + 8) + (config?.ToJsonString().Length ?? 0);
        _writer = new SafetensorsStreamWriter(path, SafetensorsStreamWriter.EstimateReserve(tensorCount, inputHeaderBytes, extra));
    }

    /// <summary>The underlying writer (for streamed tensors).</summary>
    public SafetensorsStreamWriter Raw => _writer;

    /// <summary>Bytes of tensor data written.</summary>
    public long DataLength => _writer.DataLength;

    /// <summary>Names of the quantized tensors recorded.</summary>
    public IEnumerable<string> LayerNames => _layers.Select(kv => kv.Key);

    /// <summary>Writes a plain tensor bit-exactly.</summary>
    public void AddPlain(string name, Tensor tensor)
    {
        using var scope = NewDisposeScope();
        var t = tensor.device_type == DeviceType.CPU && tensor.is_contiguous() ? tensor : tensor.cpu().contiguous();
        _writer.Add(name, SafetensorsDTypeInfo.FromScalarType(t.dtype), t.shape, t);
    }

    /// <summary>Writes a quantized tensor (data, scale, zero point) and records its settings.</summary>
    public void AddQuantized(string name, QuantizedTensor q, QuantizedLayerInfo info)
    {
        if (!q.Shape.SequenceEqual(info.StoredShape))
            throw new ArgumentException($"Quantized tensor '{name}' has shape [{string.Join(", ", q.Shape)}] but its info says it is stored as [{string.Join(", ", info.StoredShape)}].");
        var layout = CheckpointLayout.For(info);
        WriteExact(name, q.Data, layout.DataDType, layout.DataShape);
        if (info.Type.IsInteger())
        {
            WriteExact(name + QuantizedCheckpoint.ScaleSuffix, q.Scale ?? throw new ArgumentException($"Quantized tensor '{name}' has no scale."),
                SafetensorsDType.F32, layout.ScaleShape);
            if (q.ZeroPoint is not null)
                WriteExact(name + QuantizedCheckpoint.ZeroPointSuffix, q.ZeroPoint, SafetensorsDType.I32, layout.ScaleShape);
        }
        RecordLayer(name, info);
    }

    private void WriteExact(string name, Tensor t, SafetensorsDType dtype, long[] shape)
    {
        using var scope = NewDisposeScope();
        var c = t.cpu().contiguous();
        if (SafetensorsDTypeInfo.FromScalarType(c.dtype) != dtype || !c.shape.SequenceEqual(shape))
            throw new ArgumentException($"Tensor '{name}' is {c.dtype} [{string.Join(", ", c.shape)}], the format needs {dtype} [{string.Join(", ", shape)}].");
        _writer.Add(name, dtype, shape, c);
    }

    /// <summary>Records the settings of a quantized tensor written through <see cref="Raw"/>.</summary>
    public void RecordLayer(string name, QuantizedLayerInfo info)
    {
        _layers[name] = info.ToJson();
        _types.Add(info.Type);
    }

    /// <summary>Writes the header and renames into place (or leaves the file at its temporary path when
    /// <paramref name="promote"/> is false; call <see cref="Promote"/> later).</summary>
    public void Commit(bool promote = true)
    {
        var md = new Dictionary<string, string>(_metadata)
        {
            [QuantizedCheckpoint.FormatKey] = QuantizedCheckpoint.FormatName,
            // Version 3 only when the file holds 2-bit weights: every other file stays readable by version-2 readers.
            [QuantizedCheckpoint.FormatVersionKey] = QuantizedCheckpoint.VersionFor(_types).ToString(System.Globalization.CultureInfo.InvariantCulture),
            [QuantizedCheckpoint.QuantSharpVersionKey] = VersionOf(typeof(QuantizedCheckpoint).Assembly),
            [QuantizedCheckpoint.TorchSharpVersionKey] = VersionOf(typeof(torch).Assembly),
            [QuantizedCheckpoint.LayersKey] = _layers.ToJsonString(),
        };
        if (_config is not null) md[QuantizedCheckpoint.ConfigKey] = _config.ToJsonString();
        _writer.Commit(md, promote);
    }

    /// <summary>Renames a file committed with <c>promote: false</c> into place.</summary>
    public void Promote() => _writer.Promote();

    internal static string VersionOf(Assembly a)
    {
        string? v = a.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion;
        if (v is not null)
        {
            int plus = v.IndexOf('+');
            return plus > 0 ? v[..plus] : v;
        }
        return a.GetName().Version?.ToString(3) ?? "unknown";
    }

    /// <inheritdoc/>
    public void Dispose() => _writer.Dispose();
}
