using System.Text.Json;
using System.Text.Json.Nodes;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Serialization;

/// <summary>One entry of a quantized checkpoint: a plain tensor, or a quantized tensor with its settings.</summary>
/// <param name="Name">Tensor name (the original name, e.g. <c>model.layers.0.mlp.up_proj.weight</c>).</param>
/// <param name="Tensor">The plain tensor (stored bit-exactly), or null.</param>
/// <param name="Quantized">The quantized tensor, or null.</param>
/// <param name="Info">Settings recorded for a quantized tensor (derived from its spec when null).</param>
public sealed record CheckpointEntry(string Name, Tensor? Tensor, QuantizedTensor? Quantized, QuantizedLayerInfo? Info = null)
{
    /// <summary>A plain tensor, stored bit-exactly.</summary>
    public static CheckpointEntry Plain(string name, Tensor tensor) => new(name, tensor, null);

    /// <summary>A quantized tensor.</summary>
    public static CheckpointEntry Of(string name, QuantizedTensor quantized, QuantizedLayerInfo? info = null) => new(name, null, quantized, info);
}

/// <summary>
/// The QuantSharp quantized checkpoint: a plain safetensors file (or folder of shards) that any safetensors
/// library reads. A quantized tensor <c>x.weight</c> is stored as its integer data under the original name, its
/// scale(s) as <c>x.weight.scale</c> (F32) and, unless it is identically zero, its zero point(s) as
/// <c>x.weight.zero_point</c> (I32); <c>__metadata__</c> carries the format version and one JSON entry per quantized
/// tensor (<see cref="QuantizedLayerInfo"/>). Specified in docs/FORMAT.md.
/// </summary>
public sealed class QuantizedCheckpoint : IDisposable
{
    /// <summary>Value of <see cref="FormatKey"/>.</summary>
    public const string FormatName = "quantsharp.quantized";
    /// <summary>The newest format version this library reads (readers refuse larger versions). Version 2 stores integer
    /// weights of rank &gt; 2 as the <c>[d0, d1*...*dn-1]</c> matrix (groups and packing along the flattened reduction
    /// axis); version 3 is version 2 plus int2/uint2 weights (four values per byte) and is written only for files that
    /// hold 2-bit weights (<see cref="VersionFor"/>), so every other file stays readable by version-2 readers; version 1
    /// files (original shape, groups along the last dimension) are still read.</summary>
    public const int FormatVersion = 3;

    /// <summary>The version written for files without 2-bit weights.</summary>
    internal const int BaseFormatVersion = 2;

    /// <summary>The first format version that can hold int2/uint2 weights.</summary>
    internal const int TwoBitFormatVersion = 3;

    /// <summary>The format version a file holding weights of <paramref name="types"/> is written with: 3 when one of them
    /// is 2-bit, else 2 (the oldest version that describes the file, so older readers keep reading it).</summary>
    internal static int VersionFor(IEnumerable<QuantType> types) => types.Any(t => t is QuantType.Int2 or QuantType.UInt2) ? TwoBitFormatVersion : BaseFormatVersion;
    /// <summary>Metadata key naming the format.</summary>
    public const string FormatKey = "quantsharp.format";
    /// <summary>Metadata key holding the format version.</summary>
    public const string FormatVersionKey = "quantsharp.format_version";
    /// <summary>Metadata key holding the QuantSharp version that wrote the file.</summary>
    public const string QuantSharpVersionKey = "quantsharp.version";
    /// <summary>Metadata key holding the TorchSharp version used.</summary>
    public const string TorchSharpVersionKey = "quantsharp.torchsharp_version";
    /// <summary>Metadata key holding the effective configuration (JSON).</summary>
    public const string ConfigKey = "quantsharp.config";
    /// <summary>Metadata key holding the per-layer JSON object (name to settings).</summary>
    public const string LayersKey = "quantsharp.layers";
    /// <summary>Suffix of scale tensors.</summary>
    public const string ScaleSuffix = ".scale";
    /// <summary>Suffix of zero-point tensors.</summary>
    public const string ZeroPointSuffix = ".zero_point";

    private readonly List<string> _order;

    private QuantizedCheckpoint(List<string> order, Dictionary<string, Tensor> tensors, Dictionary<string, QuantizedTensor> quantized,
        Dictionary<string, QuantizedLayerInfo> layers, Dictionary<string, string> metadata)
    {
        _order = order; Tensors = tensors; Quantized = quantized; Layers = layers; Metadata = metadata;
    }

    /// <summary>Names of all logical tensors (quantized ones under their original name), in file order.</summary>
    public IReadOnlyList<string> Names => _order;

    /// <summary>The tensors stored as they were (not quantized).</summary>
    public IReadOnlyDictionary<string, Tensor> Tensors { get; }

    /// <summary>The quantized tensors, by original name, in their stored form: an integer weight of rank &gt; 2 is the
    /// <c>[d0, d1*...*dn-1]</c> matrix (<see cref="QuantizedLayerInfo.StoredShape"/>); <see cref="GetFloat"/> gives the original shape.</summary>
    public IReadOnlyDictionary<string, QuantizedTensor> Quantized { get; }

    /// <summary>The recorded settings of each quantized tensor.</summary>
    public IReadOnlyDictionary<string, QuantizedLayerInfo> Layers { get; }

    /// <summary>The <c>__metadata__</c> of the (first) file.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>
    /// The weight as a float tensor: the dequantized float32 weight for a quantized entry (exactly what validation
    /// measured), the stored tensor otherwise (caller disposes the result).
    /// </summary>
    public Tensor GetFloat(string name)
    {
        if (Quantized.TryGetValue(name, out var q))
        {
            using var d = q.Dequantize();
            return d.reshape(Layers[name].Shape).contiguous().clone();
        }
        if (Tensors.TryGetValue(name, out var t)) return t.alias();
        throw new KeyNotFoundException($"The checkpoint has no tensor named '{name}'.");
    }

    /// <summary>Saves entries as a quantized checkpoint file, atomically (temporary file, then rename).</summary>
    /// <param name="path">Output <c>.safetensors</c> file.</param>
    /// <param name="entries">Tensors in the order to store them.</param>
    /// <param name="metadata">Extra <c>__metadata__</c> strings (keys starting with <c>quantsharp.</c> are reserved).</param>
    /// <param name="config">The configuration to record under <see cref="ConfigKey"/> (JSON), if any.</param>
    public static void Save(string path, IEnumerable<CheckpointEntry> entries, IReadOnlyDictionary<string, string>? metadata = null,
        JsonNode? config = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(entries);
        var list = entries.ToList();
        var writer = new QuantizedCheckpointWriter(path, list.Count * 3, 0, metadata, config);
        try
        {
            foreach (var e in list)
            {
                if ((e.Tensor is null) == (e.Quantized is null))
                    throw new ArgumentException($"Entry '{e.Name}' must hold exactly one of Tensor and Quantized.", nameof(entries));
                if (e.Tensor is not null) writer.AddPlain(e.Name, e.Tensor);
                else writer.AddQuantized(e.Name, e.Quantized!, e.Info ?? DefaultInfo(e.Quantized!));
            }
            writer.Commit();
        }
        finally
        {
            writer.Dispose();
        }
    }

    /// <summary>Saves plain and quantized tensors (plain ones first, each map in its enumeration order).</summary>
    public static void Save(string path, IReadOnlyDictionary<string, Tensor>? tensors, IReadOnlyDictionary<string, QuantizedTensor>? quantized,
        IReadOnlyDictionary<string, QuantizedLayerInfo>? layers = null, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var entries = new List<CheckpointEntry>();
        foreach (var (n, t) in tensors ?? new Dictionary<string, Tensor>()) entries.Add(CheckpointEntry.Plain(n, t));
        foreach (var (n, q) in quantized ?? new Dictionary<string, QuantizedTensor>())
            entries.Add(CheckpointEntry.Of(n, q, layers is not null && layers.TryGetValue(n, out var i) ? i : null));
        Save(path, entries, metadata);
    }

    private static QuantizedLayerInfo DefaultInfo(QuantizedTensor q) => new(
        SafetensorsDType.F32, q.Shape, q.Spec.Type,
        q.Spec.Type.IsInteger() ? q.Spec.Scheme : null,
        q.Spec.Type.IsInteger() ? q.Spec.Granularity : null,
        q.Spec.ReduceRange, q.Spec.Type.IsInteger() ? "minmax" : null, null);

    /// <summary>
    /// Loads a quantized checkpoint (file or sharded folder) into memory; every quantized tensor is checked against
    /// its recorded settings (dtypes, shapes, presence of the scale).
    /// </summary>
    /// <exception cref="QuantizedFileException">Not a QuantSharp quantized checkpoint, a newer format version, or
    /// tensors that do not match their per-layer entry.</exception>
    public static QuantizedCheckpoint Load(string path)
    {
        using var source = ShardedCheckpoint.Open(path);
        var order = new List<string>();
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var quantized = new Dictionary<string, QuantizedTensor>(StringComparer.Ordinal);
        var layers = new Dictionary<string, QuantizedLayerInfo>(StringComparer.Ordinal);
        var firstMetadata = new Dictionary<string, string>(source.Files[0].Metadata);
        try
        {
            foreach (var shard in source.Files)
            {
                var shardLayers = ReadLayers(shard.Path, shard.Metadata);
                var consumed = new HashSet<string>(StringComparer.Ordinal);
                foreach (var (name, info) in shardLayers)
                {
                    var parts = ReadParts(shard, name, info);
                    try
                    {
                        quantized[name] = QuantizedTensor.FromParts(info.ToSpec(), info.StoredShape, parts.Data, parts.Scale, parts.ZeroPoint);
                    }
                    catch (ArgumentException ex)
                    {
                        parts.Data.Dispose(); parts.Scale?.Dispose(); parts.ZeroPoint?.Dispose();
                        throw new QuantizedFileException($"{shard.Path}: quantized tensor '{name}' is invalid: {ExceptionText.Sentence(ex)}", ex);
                    }
                    layers[name] = info;
                    consumed.Add(name); consumed.Add(name + ScaleSuffix); consumed.Add(name + ZeroPointSuffix);
                }
                foreach (var t in shard.Tensors)
                {
                    if (shardLayers.ContainsKey(t.Name)) order.Add(t.Name);
                    else if (!consumed.Contains(t.Name))
                    {
                        tensors[t.Name] = shard.ReadTensor(t.Name);
                        order.Add(t.Name);
                    }
                }
            }
            return new QuantizedCheckpoint(order, tensors, quantized, layers, firstMetadata);
        }
        catch
        {
            foreach (var t in tensors.Values) t.Dispose();
            foreach (var q in quantized.Values) q.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The per-layer entries of one file of a quantized checkpoint (a file of <see cref="ShardedCheckpoint.Files"/>),
    /// read from its header only, checked as <see cref="Load"/> checks them.
    /// </summary>
    /// <exception cref="QuantizedFileException">The file is not a QuantSharp quantized checkpoint (no <see cref="FormatKey"/>),
    /// a newer format version, or malformed per-layer metadata.</exception>
    public static IReadOnlyDictionary<string, QuantizedLayerInfo> ReadLayers(SafetensorsFile file)
    {
        ArgumentNullException.ThrowIfNull(file);
        return ReadLayers(file.Path, file.Metadata);
    }

    /// <summary>Parses and checks the format keys and the per-layer JSON of one file's metadata (empty when the file
    /// has no quantized tensors and no QuantSharp format key).</summary>
    internal static Dictionary<string, QuantizedLayerInfo> ReadLayers(string file, IReadOnlyDictionary<string, string> metadata)
    {
        var result = new Dictionary<string, QuantizedLayerInfo>(StringComparer.Ordinal);
        if (!metadata.TryGetValue(FormatKey, out string? format))
            throw new QuantizedFileException($"{file}: not a QuantSharp quantized checkpoint (no '{FormatKey}' in __metadata__). " +
                "Use 'quantsharp quantize' to make one, or open it as a plain safetensors file.");
        if (format != FormatName)
            throw new QuantizedFileException($"{file}: '{FormatKey}' is '{format}', expected '{FormatName}'.");
        if (!metadata.TryGetValue(FormatVersionKey, out string? v) || !int.TryParse(v, out int version) || version < 1)
            throw new QuantizedFileException($"{file}: missing or invalid '{FormatVersionKey}'.");
        if (version > FormatVersion)
            throw new QuantizedFileException($"{file}: format version {version} is newer than this QuantSharp reads (up to {FormatVersion}); " +
                "it was written by a newer QuantSharp, possibly with a storage type this version does not know. Update QuantSharp to read it.");
        if (!metadata.TryGetValue(LayersKey, out string? layersJson)) return result;
        try
        {
            using var doc = JsonDocument.Parse(layersJson);
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new QuantizedFileException($"{file}: '{LayersKey}' must be a JSON object of per-layer entries, found {doc.RootElement.ValueKind}.");
            if (StrictJson.FirstDuplicateKeyAnywhere(doc.RootElement) is { } dup)
                throw new QuantizedFileException($"{file}: '{LayersKey}' has the key '{dup}' twice; each layer and each of its fields is given once. Re-create the file with 'quantsharp quantize'.");
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                var info = QuantizedLayerInfo.FromJson(p.Name, p.Value) with { FormatVersion = version };
                if (info.Type is QuantType.Int2 or QuantType.UInt2 && version < TwoBitFormatVersion)
                    throw new QuantizedFileException($"{file}: layer '{p.Name}' is {info.Type.ToName()}, but the file says format version {version}; " +
                        $"2-bit weights need format version {TwoBitFormatVersion}. The file is damaged or was edited: re-create it with 'quantsharp quantize'.");
                // The settings must describe a layout for the shape (an axis in range, a group size that divides...).
                try { _ = CheckpointLayout.For(info); }
                catch (Exception ex) when (ex is ArgumentException or IndexOutOfRangeException or NotSupportedException or DivideByZeroException or OverflowException)
                {
                    // Our own words for what the runtime reports in its own (an index out of range, a division by zero).
                    string why = ex is ArgumentException ? ExceptionText.Clause(ex)
                        : info.Granularity is PerAxis a ? $"axis {a.Axis} is not an axis of a tensor of rank {info.Shape.Length}"
                        : "they describe no stored layout";
                    throw new QuantizedFileException($"{file}: layer '{p.Name}': its settings ({info.Type.ToName()}, {info.Granularity?.ToString() ?? "-"}) do not fit its shape " +
                        $"[{string.Join(", ", info.Shape)}] ({why}). Re-create the file with 'quantsharp quantize'.", ex);
                }
                if (!result.TryAdd(p.Name, info))
                    throw new QuantizedFileException($"{file}: '{LayersKey}' lists layer '{p.Name}' twice.");
            }
        }
        catch (JsonException ex)
        {
            throw new QuantizedFileException($"{file}: '{LayersKey}' is not valid JSON ({ExceptionText.Clause(ex)}).", ex);
        }
        return result;
    }

    /// <summary>Reads and checks the stored parts of one quantized tensor.</summary>
    internal static (Tensor Data, Tensor? Scale, Tensor? ZeroPoint) ReadParts(SafetensorsFile file, string name, QuantizedLayerInfo info)
    {
        var expect = CheckpointLayout.For(info);
        Check(file, name, expect.DataDType, expect.DataShape, "data");
        Tensor? data = null, scale = null, zp = null;
        try
        {
            data = file.ReadTensor(name);
            if (info.Type.IsInteger())
            {
                if (!file.Contains(name + ScaleSuffix))
                    throw new QuantizedFileException($"{file.Path}: quantized tensor '{name}' has no '{name}{ScaleSuffix}'.");
                Check(file, name + ScaleSuffix, SafetensorsDType.F32, expect.ScaleShape, "scale");
                scale = file.ReadTensor(name + ScaleSuffix);
                if (file.Contains(name + ZeroPointSuffix))
                {
                    Check(file, name + ZeroPointSuffix, SafetensorsDType.I32, expect.ScaleShape, "zero point");
                    zp = file.ReadTensor(name + ZeroPointSuffix);
                }
            }
            return (data, scale, zp);
        }
        catch
        {
            data?.Dispose(); scale?.Dispose(); zp?.Dispose();
            throw;
        }
    }

    private static void Check(SafetensorsFile file, string name, SafetensorsDType dtype, long[] shape, string what)
    {
        if (!file.Contains(name))
            throw new QuantizedFileException($"{file.Path}: quantized tensor '{name}' is listed in '{LayersKey}' but not stored.");
        var info = file.GetInfo(name);
        if (info.DType != dtype || !info.Shape.SequenceEqual(shape))
            throw new QuantizedFileException($"{file.Path}: {what} tensor '{name}' is {info.DType} [{string.Join(", ", info.Shape)}], " +
                $"expected {dtype} [{string.Join(", ", shape)}] from its per-layer entry.");
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        foreach (var t in Tensors.Values) t.Dispose();
        foreach (var q in Quantized.Values) q.Dispose();
    }
}

/// <summary>The stored dtypes and shapes of a quantized tensor, from its settings (docs/FORMAT.md).</summary>
internal readonly record struct CheckpointLayout(SafetensorsDType DataDType, long[] DataShape, long[] ScaleShape)
{
    /// <summary>The layout of a stored entry: version 2 stores integer weights of rank &gt; 2 as a matrix (<see cref="Pipeline.WeightGeometry"/>).</summary>
    public static CheckpointLayout For(QuantizedLayerInfo info) =>
        For(info.Type, info.Granularity, info.FormatVersion >= 2 ? Pipeline.WeightGeometry.StorageShape(info.Type, info.Shape) : info.Shape);

    public static CheckpointLayout For(QuantType type, Granularity? granularity, long[] shape)
    {
        switch (type)
        {
            case QuantType.Float16: return new(SafetensorsDType.F16, shape, []);
            case QuantType.BFloat16: return new(SafetensorsDType.BF16, shape, []);
            case QuantType.Int8: return new(SafetensorsDType.I8, shape, ScaleShapeOf(granularity!, shape));
            case QuantType.UInt8: return new(SafetensorsDType.U8, shape, ScaleShapeOf(granularity!, shape));
            case QuantType.Int4:
            case QuantType.UInt4:
            case QuantType.Int2:
            case QuantType.UInt2:
            {
                int perByte = Modules.WeightQuantizer.ValuesPerByte(type);
                if (shape.Length == 0 || shape[^1] % perByte != 0)
                    throw new ArgumentException($"{type.Bits()}-bit packing needs a last dimension divisible by {perByte}; shape is [{string.Join(", ", shape)}].");
                return new(SafetensorsDType.U8, [.. shape[..^1], shape[^1] / perByte], ScaleShapeOf(granularity!, shape));
            }
            default:
                throw new NotSupportedException($"{type.ToName()} is not a storage type of the quantized checkpoint format " +
                    "(int8, uint8, int4, uint4, int2, uint2, float16, bfloat16 are).");
        }
    }

    public static long[] ScaleShapeOf(Granularity granularity, long[] shape) => granularity switch
    {
        PerTensor => [],
        PerAxis a => [shape[a.Axis]],
        PerGroup g => [.. shape[..^1], shape[^1] / g.GroupSize],
        _ => throw new NotSupportedException(granularity.ToString()),
    };
}
