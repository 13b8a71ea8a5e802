using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using QuantSharp.Selection;

namespace QuantSharp;

/// <summary>Settings for the tensors whose names match <paramref name="Pattern"/> (a <see cref="Glob"/>); null fields
/// keep the general setting.</summary>
/// <param name="Pattern">Glob over tensor names, e.g. <c>lm_head.weight</c>.</param>
/// <param name="Type">Quantized type.</param>
/// <param name="Scheme">Scheme.</param>
/// <param name="Granularity">Granularity.</param>
/// <param name="ReduceRange">Reduce range.</param>
public sealed record QuantizationOverride(string Pattern, QuantType? Type = null, QuantScheme? Scheme = null,
    Granularity? Granularity = null, bool? ReduceRange = null);

/// <summary>
/// Settings of <see cref="CheckpointQuantizer"/>. Every field is optional: an instance is one layer of precedence
/// (command-line options, a configuration file, the defaults); <see cref="Over"/> stacks them, and
/// <see cref="Resolve"/> fills what is still missing with the defaults. The JSON form (configuration file) is
/// documented in docs/FORMAT.md.
/// </summary>
public sealed record CheckpointQuantizationSettings
{
    /// <summary>Default minimum element count for a tensor to be quantized by the default rule.</summary>
    public const long DefaultMinElements = 1024;

    /// <summary>Quantized type (default int8).</summary>
    public QuantType? Type { get; init; }
    /// <summary>Scheme (default symmetric).</summary>
    public QuantScheme? Scheme { get; init; }
    /// <summary>Granularity (default per-channel for 8-bit, group:128 for 4-bit).</summary>
    public Granularity? Granularity { get; init; }
    /// <summary>Reduce range (default false).</summary>
    public bool? ReduceRange { get; init; }
    /// <summary>Observer choosing the range: <c>minmax</c> (default; streamed in row chunks), or <c>percentile</c>,
    /// <c>histogram</c>, <c>moving-average</c> (each tensor observed whole, once).</summary>
    public string? Observer { get; init; }
    /// <summary>Smallest element count quantized by the default rule (default 1024).</summary>
    public long? MinElements { get; init; }
    /// <summary>Glob patterns of tensors to quantize (replaces the default rule <c>*.weight</c>, 2-D+, large enough).</summary>
    public IReadOnlyList<string>? Include { get; init; }
    /// <summary>Glob patterns of tensors never to quantize (exclude wins over include).</summary>
    public IReadOnlyList<string>? Exclude { get; init; }
    /// <summary>Per-pattern settings; the first matching pattern applies.</summary>
    public IReadOnlyList<QuantizationOverride>? Overrides { get; init; }
    /// <summary>What to do with validation failures (default error).</summary>
    public ValidationFailureMode? OnFailure { get; init; }
    /// <summary>Whether to validate after quantizing (default true).</summary>
    public bool? Validate { get; init; }
    /// <summary>SQNR thresholds in dB per type (missing types keep <see cref="DefaultSqnrThresholdsDb"/>).</summary>
    public IReadOnlyDictionary<QuantType, double>? SqnrThresholdsDb { get; init; }

    /// <summary>
    /// Default SQNR thresholds (dB). A uniform quantizer with step Δ has noise power Δ²/12; for roughly Gaussian
    /// weights with per-channel range ±4.5σ, int8 gives about 40 dB and int4 about 15 dB (group-128: about 20 dB);
    /// float16 keeps 11 significant bits (about 70 dB) and bfloat16 8 (about 53 dB). The thresholds leave about
    /// 10 dB for heavy tails and outliers: int8/uint8 30, int4/uint4 12, float16 60, bfloat16 40.
    /// </summary>
    public static IReadOnlyDictionary<QuantType, double> DefaultSqnrThresholdsDb { get; } = new Dictionary<QuantType, double>
    {
        [QuantType.Int8] = 30, [QuantType.UInt8] = 30, [QuantType.Int4] = 12, [QuantType.UInt4] = 12,
        [QuantType.Int2] = 3, [QuantType.UInt2] = 3, [QuantType.Float16] = 60, [QuantType.BFloat16] = 40,
    };

    /// <summary>This layer over <paramref name="lower"/>: every field set here wins.</summary>
    public CheckpointQuantizationSettings Over(CheckpointQuantizationSettings? lower)
    {
        if (lower is null) return this;
        Dictionary<QuantType, double>? thresholds = null;
        if (SqnrThresholdsDb is not null || lower.SqnrThresholdsDb is not null)
        {
            thresholds = new Dictionary<QuantType, double>(lower.SqnrThresholdsDb ?? new Dictionary<QuantType, double>());
            foreach (var (k, v) in SqnrThresholdsDb ?? new Dictionary<QuantType, double>()) thresholds[k] = v;
        }
        return new CheckpointQuantizationSettings
        {
            Type = Type ?? lower.Type,
            Scheme = Scheme ?? lower.Scheme,
            Granularity = Granularity ?? lower.Granularity,
            ReduceRange = ReduceRange ?? lower.ReduceRange,
            Observer = Observer ?? lower.Observer,
            MinElements = MinElements ?? lower.MinElements,
            Include = Include ?? lower.Include,
            Exclude = Exclude ?? lower.Exclude,
            Overrides = Overrides ?? lower.Overrides,
            OnFailure = OnFailure ?? lower.OnFailure,
            Validate = Validate ?? lower.Validate,
            SqnrThresholdsDb = thresholds,
        };
    }

    /// <summary>Fills every missing field with its default and checks the result.</summary>
    /// <exception cref="ArgumentException">An invalid pattern, observer or type.</exception>
    public ResolvedCheckpointSettings Resolve() => new(this);

    /// <summary>The types a quantized checkpoint can hold (format version 1).</summary>
    public static IReadOnlyList<QuantType> SupportedTypes { get; } =
        [QuantType.Int8, QuantType.UInt8, QuantType.Int4, QuantType.UInt4, QuantType.Float16, QuantType.BFloat16];

    /// <summary>Reads a configuration file (JSON).</summary>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    /// <exception cref="InvalidDataException">Not valid JSON, an unknown key, or a wrong value (the message names it).</exception>
    public static CheckpointQuantizationSettings Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"Configuration file '{path}' does not exist.", path);
        return Parse(File.ReadAllText(path), path);
    }

    /// <summary>Parses the JSON form (see docs/FORMAT.md, "Configuration file").</summary>
    /// <param name="json">The JSON text.</param>
    /// <param name="source">Where it came from (for messages).</param>
    public static CheckpointQuantizationSettings Parse(string json, string source = "configuration")
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true }); }
        catch (JsonException ex) { throw new InvalidDataException($"{source}: not valid JSON ({ex.Message}).", ex); }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{source}: the configuration must be a JSON object.");
            var s = new CheckpointQuantizationSettings();
            foreach (var p in root.EnumerateObject())
            {
                string where = $"{source}: \"{p.Name}\"";
                try
                {
                    s = p.Name switch
                    {
                        "qtype" => s with { Type = QuantTypeInfo.Parse(Str(p.Value)) },
                        "scheme" => s with { Scheme = ParseScheme(Str(p.Value)) },
                        "granularity" => s with { Granularity = QuantSharp.Granularity.Parse(Str(p.Value)) },
                        "reduce_range" => s with { ReduceRange = p.Value.GetBoolean() },
                        "observer" => s with { Observer = Str(p.Value) },
                        "min_elements" => s with { MinElements = p.Value.GetInt64() },
                        "include" => s with { Include = StrList(p.Value) },
                        "exclude" => s with { Exclude = StrList(p.Value) },
                        "on_failure" => s with { OnFailure = ParsePolicy(Str(p.Value)) },
                        "validate" => s with { Validate = p.Value.GetBoolean() },
                        "sqnr_thresholds_db" => s with
                        {
                            SqnrThresholdsDb = p.Value.EnumerateObject().ToDictionary(t => QuantTypeInfo.Parse(t.Name), t => t.Value.GetDouble()),
                        },
                        "overrides" => s with { Overrides = p.Value.EnumerateArray().Select((o, i) => ParseOverride(o, $"{where}[{i}]")).ToList() },
                        _ => throw new InvalidDataException($"{source}: unknown key \"{p.Name}\". Known keys: qtype, scheme, granularity, reduce_range, " +
                            "observer, min_elements, include, exclude, overrides, on_failure, validate, sqnr_thresholds_db."),
                    };
                }
                catch (Exception ex) when (ex is ArgumentException or InvalidOperationException or FormatException or KeyNotFoundException)
                {
                    throw new InvalidDataException($"{where}: {ex.Message}", ex);
                }
            }
            return s;
        }
    }

    private static QuantizationOverride ParseOverride(JsonElement o, string where)
    {
        if (o.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{where}: an override must be an object with a \"pattern\".");
        string? pattern = null; QuantType? type = null; QuantScheme? scheme = null; Granularity? gran = null; bool? reduce = null;
        foreach (var p in o.EnumerateObject())
        {
            switch (p.Name)
            {
                case "pattern": pattern = Str(p.Value); break;
                case "qtype": type = QuantTypeInfo.Parse(Str(p.Value)); break;
                case "scheme": scheme = ParseScheme(Str(p.Value)); break;
                case "granularity": gran = QuantSharp.Granularity.Parse(Str(p.Value)); break;
                case "reduce_range": reduce = p.Value.GetBoolean(); break;
                default: throw new InvalidDataException($"{where}: unknown key \"{p.Name}\" (pattern, qtype, scheme, granularity, reduce_range).");
            }
        }
        if (pattern is null) throw new InvalidDataException($"{where}: an override needs a \"pattern\".");
        return new QuantizationOverride(pattern, type, scheme, gran, reduce);
    }

    private static string Str(JsonElement e) => e.ValueKind == JsonValueKind.String
        ? e.GetString()!
        : throw new InvalidOperationException($"expected a string, got {e.ValueKind.ToString().ToLowerInvariant()}");

    private static List<string> StrList(JsonElement e) => e.ValueKind == JsonValueKind.Array
        ? e.EnumerateArray().Select(Str).ToList()
        : [Str(e)];

    /// <summary>Parses <c>symmetric</c> or <c>affine</c>.</summary>
    public static QuantScheme ParseScheme(string text) => text.Trim().ToLowerInvariant() switch
    {
        "symmetric" or "sym" => QuantScheme.Symmetric,
        "affine" or "asymmetric" or "asym" => QuantScheme.Affine,
        _ => throw new ArgumentException($"Unknown scheme '{text}'. Use symmetric or affine."),
    };

    /// <summary>Parses <c>error</c>, <c>warn</c> or <c>ignore</c>.</summary>
    public static ValidationFailureMode ParsePolicy(string text) => text.Trim().ToLowerInvariant() switch
    {
        "error" => ValidationFailureMode.Error,
        "warn" or "warning" => ValidationFailureMode.Warn,
        "ignore" => ValidationFailureMode.Ignore,
        _ => throw new ArgumentException($"Unknown failure policy '{text}'. Use error, warn or ignore."),
    };
}

/// <summary>Settings with every default filled in, ready to decide each tensor's fate.</summary>
public sealed class ResolvedCheckpointSettings
{
    private readonly CheckpointQuantizationSettings _s;
    private readonly Glob[] _include, _exclude;
    private readonly (Glob Glob, QuantizationOverride Override)[] _overrides;

    internal ResolvedCheckpointSettings(CheckpointQuantizationSettings s)
    {
        _s = s;
        Type = s.Type ?? QuantType.Int8;
        Observer = (s.Observer ?? "minmax").Trim().ToLowerInvariant();
        if (Observer == "min-max") Observer = "minmax";
        if (!Observers.ObserverFactory.Names.Contains(Observer))
            throw new ArgumentException($"Unknown observer '{s.Observer}'. Use one of: {string.Join(", ", Observers.ObserverFactory.Names)}.");
        MinElements = s.MinElements ?? CheckpointQuantizationSettings.DefaultMinElements;
        if (MinElements < 0) throw new ArgumentException($"min_elements must be at least 0 (got {MinElements}).");
        _include = (s.Include ?? []).Select(p => new Glob(p)).ToArray();
        _exclude = (s.Exclude ?? []).Select(p => new Glob(p)).ToArray();
        _overrides = (s.Overrides ?? []).Select(o => (new Glob(o.Pattern), o)).ToArray();
        OnFailure = s.OnFailure ?? ValidationFailureMode.Error;
        Validate = s.Validate ?? true;
        var thresholds = new Dictionary<QuantType, double>(CheckpointQuantizationSettings.DefaultSqnrThresholdsDb);
        foreach (var (k, v) in s.SqnrThresholdsDb ?? new Dictionary<QuantType, double>()) thresholds[k] = v;
        SqnrThresholdsDb = thresholds;
        foreach (var t in new[] { Type }.Concat(_overrides.Select(o => o.Override.Type).OfType<QuantType>()))
        {
            if (!CheckpointQuantizationSettings.SupportedTypes.Contains(t))
                throw new ArgumentException($"{t.ToName()} is not supported by the quantized checkpoint format; use one of: " +
                    string.Join(", ", CheckpointQuantizationSettings.SupportedTypes.Select(x => x.ToName())) + ".");
        }
        // Check the base spec once, so that a bad combination fails before any tensor is read.
        SpecFor("").Validate();
    }

    /// <summary>The general quantized type.</summary>
    public QuantType Type { get; }
    /// <summary>The observer name.</summary>
    public string Observer { get; }
    /// <summary>Minimum element count of the default rule.</summary>
    public long MinElements { get; }
    /// <summary>Failure policy.</summary>
    public ValidationFailureMode OnFailure { get; }
    /// <summary>Whether to validate.</summary>
    public bool Validate { get; }
    /// <summary>SQNR thresholds (dB) per type.</summary>
    public IReadOnlyDictionary<QuantType, double> SqnrThresholdsDb { get; }
    /// <summary>True when include patterns were given (the default rule is off).</summary>
    public bool HasInclude => _include.Length > 0;

    /// <summary>True when an exclude pattern matches.</summary>
    public bool IsExcluded(string name) => Glob.MatchesAny(_exclude, name);

    /// <summary>True when an include pattern matches.</summary>
    public bool IsIncluded(string name) => Glob.MatchesAny(_include, name);

    /// <summary>The spec for a tensor: first matching override, then the general settings, then per-type defaults
    /// (per-channel for 8-bit, group:128 for 4-bit and 2-bit).</summary>
    public QuantSpec SpecFor(string name)
    {
        QuantizationOverride? o = null;
        foreach (var (g, ov) in _overrides)
        {
            if (g.IsMatch(name)) { o = ov; break; }
        }
        var type = o?.Type ?? Type;
        if (!type.IsInteger()) return new QuantSpec(type, QuantScheme.Symmetric, QuantSharp.Granularity.Tensor, false);
        var scheme = o?.Scheme ?? _s.Scheme ?? QuantScheme.Symmetric;
        var gran = o?.Granularity ?? _s.Granularity ?? (type.Bits() == 8 ? new PerAxis(0) : new PerGroup(128));
        bool reduce = o?.ReduceRange ?? _s.ReduceRange ?? false;
        return new QuantSpec(type, scheme, gran, reduce);
    }

    /// <summary>The effective configuration as JSON (recorded in the checkpoint).</summary>
    public JsonObject ToJson()
    {
        var o = new JsonObject
        {
            ["qtype"] = Type.ToName(),
            ["observer"] = Observer,
            ["min_elements"] = MinElements,
            ["include"] = new JsonArray(_include.Select(g => (JsonNode)JsonValue.Create(g.Pattern)!).ToArray()),
            ["exclude"] = new JsonArray(_exclude.Select(g => (JsonNode)JsonValue.Create(g.Pattern)!).ToArray()),
            ["on_failure"] = OnFailure.ToString().ToLowerInvariant(),
            ["validate"] = Validate,
        };
        var baseSpec = SpecFor("\0");
        if (Type.IsInteger())
        {
            o["scheme"] = (_s.Scheme ?? QuantScheme.Symmetric).ToString().ToLowerInvariant();
            o["granularity"] = (_s.Granularity ?? (Type.Bits() == 8 ? new PerAxis(0) : new PerGroup(128))).ToString();
            o["reduce_range"] = baseSpec.ReduceRange;
        }
        var ovs = new JsonArray();
        foreach (var (_, ov) in _overrides)
        {
            var j = new JsonObject { ["pattern"] = ov.Pattern };
            if (ov.Type is { } t) j["qtype"] = t.ToName();
            if (ov.Scheme is { } sc) j["scheme"] = sc.ToString().ToLowerInvariant();
            if (ov.Granularity is { } g) j["granularity"] = g.ToString();
            if (ov.ReduceRange is { } r) j["reduce_range"] = r;
            ovs.Add(j);
        }
        o["overrides"] = ovs;
        var th = new JsonObject();
        foreach (var (k, v) in SqnrThresholdsDb.OrderBy(kv => kv.Key)) th[k.ToName()] = v;
        o["sqnr_thresholds_db"] = th;
        return o;
    }

    internal static string F(double v) => v.ToString("0.##", CultureInfo.InvariantCulture);
}
