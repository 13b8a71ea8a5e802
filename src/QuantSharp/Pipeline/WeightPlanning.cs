using QuantSharp.Selection;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Pipeline;

/// <summary>
/// One decision of a quantization plan: the weight <paramref name="Name"/> (original shape <paramref name="Shape"/>)
/// is quantized with <paramref name="Spec"/>; <paramref name="Fallback"/> says why the spec differs from what the
/// recipe asked for (group size that does not divide), or is null.
/// </summary>
internal sealed record PlannedWeight(string Name, long[] Shape, QuantSpec Spec, string? Fallback);

/// <summary>
/// The planning stage shared by <see cref="Quantizer"/> and <see cref="CheckpointQuantizer"/>: which weights a
/// <see cref="QuantizationRecipe"/> selects, with which spec, and how a spec that does not fit a weight falls back.
/// Both paths ask the same questions with the same names, so the same recipe gives the same plan.
/// </summary>
internal sealed class RecipePlanner
{
    private readonly Glob[] _include, _exclude;

    public RecipePlanner(QuantizationRecipe recipe)
    {
        recipe.Validate();
        Recipe = recipe;
        _include = recipe.Include.Select(p => new Glob(p)).ToArray();
        _exclude = recipe.Exclude.Select(p => new Glob(p)).ToArray();
    }

    public QuantizationRecipe Recipe { get; }

    /// <summary>True when include patterns were given (the default selection is off).</summary>
    public bool HasInclude => _include.Length > 0;

    /// <summary>The exclude pattern matching <paramref name="name"/>, or null.</summary>
    public string? ExcludedBy(string name) => _exclude.FirstOrDefault(g => QuantizationRecipe.NameMatches(g, name))?.Pattern;

    /// <summary>True when an include pattern matches <paramref name="name"/>.</summary>
    public bool IsIncluded(string name) => _include.Any(g => QuantizationRecipe.NameMatches(g, name));

    /// <summary>
    /// Why the weight <paramref name="name"/> (of a module of type <paramref name="moduleType"/>, null in a checkpoint)
    /// is not selected (kind and message), or null when it is. <paramref name="elements"/> feeds the default rule's size bound.
    /// </summary>
    public (Validation.SkipKind Kind, string Reason)? NotSelected(string name, string? moduleType, long elements)
    {
        if (moduleType is not null)
        {
            if (Recipe.ModuleTypes.Count > 0 && !Recipe.ModuleTypes.Contains(moduleType))
                return (Validation.SkipKind.ModuleTypeFilter, $"module type {moduleType} is not in ModuleTypes");
            if (Recipe.ExcludeModuleTypes.Contains(moduleType)) return (Validation.SkipKind.ModuleTypeFilter, $"module type {moduleType} is in ExcludeModuleTypes");
        }
        if (ExcludedBy(name) is { } ex) return (Validation.SkipKind.Excluded, $"excluded by pattern '{ex}'");
        if (HasInclude) return IsIncluded(name) ? null : (Validation.SkipKind.NotSelected, "not matched by any Include pattern");
        if (elements < Recipe.MinElements) return (Validation.SkipKind.NotSelected, $"{elements} elements, fewer than MinElements {Recipe.MinElements}");
        return null;
    }

    /// <summary>
    /// Settings of the recipe that have no effect: a granularity (group size, axis) for a float16/bfloat16 weight type,
    /// which is a plain cast without scales. Warnings, or errors under <see cref="QuantizationRecipe.Strict"/>.
    /// </summary>
    public IEnumerable<string> IneffectiveSettings()
    {
        if (!Recipe.Type.IsInteger() && Recipe.Granularity is { } g)
            yield return $"granularity {g} does not apply to {Recipe.Type.ToName()} weights (a plain cast, no scales) and is ignored; remove it or choose an integer type (int8, int4...).";
        foreach (var o in Recipe.Overrides)
        {
            var type = o.Type ?? Recipe.Type;
            if (!type.IsInteger() && o.Granularity is { } og)
                yield return $"the override '{o.Pattern}' gives granularity {og} to {type.ToName()} weights (a plain cast, no scales); it is ignored. Remove it or choose an integer type for the override.";
        }
    }

    /// <summary>Under <see cref="QuantizationRecipe.Strict"/>, the warnings about the recipe as one error.</summary>
    public string? StrictRefusal(IReadOnlyList<string> recipeWarnings) => Recipe.Strict && recipeWarnings.Count > 0
        ? "Strict mode (--strict, recipe \"strict\": true) refuses this recipe: " + string.Join(" ", recipeWarnings.Select(w => char.ToUpperInvariant(w[0]) + w[1..])) +
          " Fix the recipe, or drop strict mode to accept it with warnings."
        : null;

    /// <summary>
    /// The planned quantization of <paramref name="name"/>: the recipe's spec for it, fitted to its shape
    /// (<see cref="WeightGeometry.Fit"/>).
    /// </summary>
    /// <exception cref="RecipeException">The spec cannot quantize the weight (strict group size, bad axis...).</exception>
    public PlannedWeight Plan(string name, string? moduleType, long[] shape)
    {
        var (spec, fallback) = WeightGeometry.Fit(name, Recipe.WeightSpecFor(name, moduleType), shape, Recipe.StrictGroupSize);
        return new PlannedWeight(name, shape, spec, fallback);
    }
}

/// <summary>
/// How a weight is laid out for quantization and storage, in one place for every path: an integer-quantized weight of
/// rank &gt; 2 (a convolution <c>[out, in/groups, kh, kw]</c>) is the matrix <c>[d0, d1*...*dn-1]</c>, whose last axis
/// (the flattened reduction axis) the groups and the 4-bit packing run along; weights of rank &lt;= 2 and
/// float16/bfloat16 weights keep their shape.
/// </summary>
internal static class WeightGeometry
{
    /// <summary>The shape the quantizer and the file see for a weight of <paramref name="shape"/> (the one place this is decided;
    /// <see cref="QuantizedWeight.StorageShape"/> asks here).</summary>
    public static long[] StorageShape(QuantType type, long[] shape) =>
        type.IsInteger() && shape.Length > 2 ? [shape[0], QuantSpec.Product(shape.AsSpan(1))] : (long[])shape.Clone();

    /// <summary>
    /// <paramref name="spec"/> fitted to a weight of <paramref name="shape"/>, with the fallback of
    /// <see cref="QuantizationRecipe.StrictGroupSize"/>: a group size that does not divide the reduction length K
    /// becomes the largest even divisor of K in [16, G] (a multiple of 4 for 2-bit types); if there is none, or a 4-bit type meets an odd K
    /// (a 2-bit type a K not divisible by 4), the weight
    /// is quantized to 8-bit per-channel (per-tensor for rank-1 tensors) of the same signedness and scheme.
    /// </summary>
    /// <returns>The spec to use and the reason for a fallback (null when the spec fits as asked).</returns>
    /// <exception cref="RecipeException">Strict mode and a fallback is needed, or the spec cannot fit at all.</exception>
    public static (QuantSpec Spec, string? Fallback) Fit(string name, QuantSpec spec, long[] shape, bool strict)
    {
        if (spec.Type.IsInteger() && shape.Length > 2 && spec.Granularity is PerAxis { Axis: not 0 } a)
            throw new RecipeException($"Weight '{name}' {QuantSpec.FormatShape(shape)}: per-channel axis {a.Axis} is not supported for weights of rank " +
                $"{shape.Length}, which are quantized as the [{shape[0]}, {QuantSpec.Product(shape.AsSpan(1))}] matrix; use per-channel (axis 0) or group:G.");
        if (!spec.Type.IsInteger() || shape.Length == 0) return (spec, null);
        long k = StorageShape(spec.Type, shape)[^1];
        int perByte = Modules.WeightQuantizer.ValuesPerByte(spec.Type);
        string? problem = null;
        if (spec.Granularity is PerGroup g && k % g.GroupSize != 0)
            problem = $"group size {g.GroupSize} does not divide the reduction length {k}";
        else
            problem = Modules.WeightQuantizer.PackingProblem(spec.Type, k);
        if (problem is null) return (spec, null);
        if (strict)
            throw new RecipeException($"Weight '{name}' {QuantSpec.FormatShape(shape)}: {problem}, and StrictGroupSize refuses a fallback. " +
                $"Override it with a group size that divides {k} or with per-channel, exclude it, or turn StrictGroupSize off.");
        QuantSpec fitted;
        if (spec.Granularity is PerGroup pg && k % perByte == 0 && LargestDivisor(k, pg.GroupSize, perByte) is int d)
        {
            fitted = spec with { Granularity = new PerGroup(d) };
        }
        else
        {
            var type = spec.Type.IsSigned() ? QuantType.Int8 : QuantType.UInt8;
            fitted = new QuantSpec(type, spec.Scheme, shape.Length >= 2 ? new PerAxis(0) : Granularity.Tensor);
        }
        return (fitted, $"'{name}' {QuantSpec.FormatShape(shape)}: {problem}; quantized as {fitted} instead");
    }

    /// <summary>Bytes a weight quantized with <paramref name="spec"/> takes in the file (docs/FORMAT.md): the data (packed
    /// rows), float32 scales and, when the scheme is affine or the type unsigned, int32 zero points; null when the spec does
    /// not describe a layout for the shape (planning reports that elsewhere).</summary>
    public static long? StoredBytes(QuantSpec spec, long[] shape)
    {
        long elements = QuantSpec.Product(shape);
        if (!spec.Type.IsInteger()) return elements * 2;
        long[] stored = StorageShape(spec.Type, shape);
        long k = stored.Length == 0 ? 1 : Math.Max(1, stored[^1]), rows = elements / k;
        long? scales = spec.Granularity switch
        {
            PerTensor => 1,
            PerAxis a when a.Axis >= 0 && a.Axis < stored.Length => stored[a.Axis],
            PerGroup g when g.GroupSize > 0 => rows * ((k + g.GroupSize - 1) / g.GroupSize),
            _ => null,
        };
        bool zeroPoints = spec.Scheme == QuantScheme.Affine || !spec.Type.IsSigned();
        return rows * ((k * spec.Type.Bits() + 7) / 8) + scales * (zeroPoints ? 8 : 4);
    }

    /// <summary>
    /// One warning per spec whose quantized storage of the <paramref name="weights"/> exceeds their float32 storage (e.g.
    /// int4 <c>group:1</c>: a 4-byte scale per half-byte value), naming the weights, the sizes and a better choice.
    /// </summary>
    public static IEnumerable<string> StorageWarnings(IEnumerable<PlannedWeight> weights)
    {
        var larger = weights.Where(w => w.Spec.Type.IsInteger())
            .Select(w => (w.Name, w.Spec, Stored: StoredBytes(w.Spec, w.Shape), Float32: QuantSpec.Product(w.Shape) * 4))
            .Where(w => w.Stored is { } stored && stored > w.Float32);
        foreach (var group in larger.GroupBy(w => w.Spec))
        {
            var spec = group.Key;
            var names = group.Select(w => w.Name).ToList();
            string list = string.Join(", ", names.Take(3)) + (names.Count > 3 ? $" and {names.Count - 3} more" : "");
            string per = spec.Granularity is PerGroup g ? $"every group of {g.GroupSize} value{(g.GroupSize == 1 ? "" : "s")}" : "every row of these small weights";
            string better = spec.Granularity is PerGroup
                ? $"Use a larger group size, e.g. group:32 ({spec.Type.ToName()}'s default is {QuantizationRecipe.DefaultGranularity(spec.Type)})."
                : "They are too small to gain from quantization: exclude them (--exclude, recipe \"exclude\") or raise --min-elements.";
            yield return $"{spec} makes {names.Count} weight(s) larger than float32 ({list}): {group.Sum(w => w.Stored!.Value):N0} bytes stored against " +
                $"{group.Sum(w => w.Float32):N0} bytes as float32, because {per} carries its own 4-byte scale" +
                $"{(spec.Scheme == QuantScheme.Affine || !spec.Type.IsSigned() ? " and zero point" : "")}. {better}";
        }
    }

    /// <summary>The largest divisor of <paramref name="k"/> in [16, max] that is even and a multiple of <paramref name="multiple"/>.</summary>
    private static int? LargestDivisor(long k, int max, int multiple)
    {
        for (int d = (int)Math.Min(max, k); d >= QuantizationRecipe.MinFallbackGroupSize; d--)
            if (d % 2 == 0 && d % multiple == 0 && k % d == 0) return d;
        return null;
    }
}

/// <summary>
/// The quantize stage for one weight (or one chunk of rows of it), shared by both paths: the recipe's weight observer
/// chooses the range (min/max: <see cref="QuantizedTensor.Quantize"/>; other observers see the whole weight), on the
/// <see cref="WeightGeometry.StorageShape"/> view.
/// </summary>
internal static class WeightQuantization
{
    /// <summary>Quantizes <paramref name="weight"/> (any float dtype, original shape or a chunk of its rows).</summary>
    public static QuantizedTensor Quantize(Tensor weight, QuantSpec spec, string observer, string name)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = weight.detach();
        if (spec.Type.IsInteger() && x.dim() > 2) x = x.reshape(x.shape[0], -1);
        if (!spec.Type.IsInteger() || QuantizationRecipe.NormalizeObserver(observer) == "minmax")
            return QuantizedTensor.Quantize(x, spec);
        // Both passes read the weight in float32 chunks (a weight of any size, never a float32 copy of all of it).
        var o = CreateObserver(observer, spec, name);
        o.Observe(x);
        var qp = o.ComputeQParams();
        return QuantizedTensor.QuantizeWith(x, spec, qp.Scale, qp.ZeroPoint);
    }

    /// <summary>
    /// The SQNR (dB) of a quantized weight against its float values, accumulated in double precision over the same
    /// chunks of rows as the checkpoint path (<see cref="CheckpointChunks.ChunkPlan"/>), so both write the same
    /// <c>sqnr_db</c>, and only one chunk is dequantized at a time.
    /// </summary>
    public static double Sqnr(Tensor original, QuantizedWeight weight)
    {
        var acc = new Validation.SqnrAccumulator();
        long[] shape = original.shape;
        var (rows, perChunk) = CheckpointChunks.ChunkPlan(shape);
        for (long r0 = 0; r0 < rows; r0 += perChunk)
        {
            using var scope = NewDisposeScope();
            using var kept = new KeptScalars();
            long n = Math.Min(perChunk, rows - r0);
            var x = (CheckpointChunks.IsRowwise(shape) ? original.detach().narrow(0, r0, n) : original.detach()).to(ScalarType.Float32).contiguous();
            var d = (CheckpointChunks.IsRowwise(shape) ? weight.GatherRows(torch.arange(kept.Of(r0), kept.Of(r0 + n), kept.Of(1), ScalarType.Int64)) : weight.Dequantize()).contiguous();
            if (x.numel() == 0) continue;
            acc.Add(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(x.bytes), System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(d.bytes));
        }
        return acc.Db;
    }

    /// <summary>An observer of the given name for one weight's spec.</summary>
    public static Observers.IObserver CreateObserver(string observer, QuantSpec spec, string name) => Observers.ObserverFactory.Create(
        QuantizationRecipe.NormalizeObserver(observer),
        new Observers.ObserverOptions
        {
            Type = spec.Type,
            Scheme = spec.Scheme,
            Axis = spec.Granularity is PerAxis a ? a.Axis : null,
            GroupSize = spec.Granularity is PerGroup g ? g.GroupSize : null,
            ReduceRange = spec.ReduceRange,
            // One weight is one collection: merging at once gives the same histogram without keeping a copy.
            MergeBatches = true,
            Name = name,
        });
}
