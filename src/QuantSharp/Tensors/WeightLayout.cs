using QuantSharp.Kernels;
using QuantSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tensors;

/// <summary>Which part of a quantized weight a stored tensor holds.</summary>
public enum WeightPart
{
    /// <summary>The stored values (integers, packed integers, or half-precision floats).</summary>
    Data,

    /// <summary>The float32 scale(s).</summary>
    Scale,

    /// <summary>The int32 zero point(s); absent when always 0.</summary>
    ZeroPoint,
}

/// <summary>
/// How a <see cref="QuantizedWeight"/> keeps its values in memory, and the operations the quantized modules run on
/// them. Today's layouts are the canonical ones (<c>plain</c>: int8/uint8/float16/bfloat16 as stored in the file;
/// <c>packed</c>: int4/uint4 two per byte, int2/uint2 four per byte); a kernel-friendly layout (e.g. int8 rows interleaved for a VNNI kernel)
/// derives from this class, overrides <see cref="Linear"/> (and <see cref="GatherRows"/> if it can), and is chosen
/// when a weight is created through <see cref="WeightLayouts.Register"/>.
/// </summary>
/// <remarks>
/// <para>A layout works on the weight's <em>storage matrix</em> (<see cref="QuantizedWeight.StorageShape"/>): for integer
/// types the original weight viewed as <c>[rows, K]</c> (K = product of the other dimensions, for a convolution the
/// flattened <c>in/groups * kernel</c> reduction axis), for float16/bfloat16 the original shape. Scales and groups
/// run along K.</para>
/// <para>Whatever the layout, <see cref="ToCanonical"/> gives the one documented form (docs/FORMAT.md) that save,
/// validation and inspect see, so files never depend on the layout that ran.</para>
/// <para>The tensors of <see cref="Tensors"/> are registered as the quantized module's buffers (so parameters and
/// buffers measure the real memory); the layout owns them.</para>
/// </remarks>
public abstract class WeightLayout : IDisposable
{
    /// <summary>Creates a layout for a weight quantized as <paramref name="spec"/> with storage matrix <paramref name="storageShape"/>.</summary>
    /// <param name="spec">How the weight is quantized.</param>
    /// <param name="storageShape">The storage matrix shape (see the type remarks).</param>
    protected WeightLayout(QuantSpec spec, long[] storageShape)
    {
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(storageShape);
        Spec = spec;
        StorageShape = (long[])storageShape.Clone();
    }

    /// <summary>A short name for reports and docs, e.g. <c>plain</c>, <c>packed</c>.</summary>
    public abstract string Name { get; }

    /// <summary>How the weight is quantized.</summary>
    public QuantSpec Spec { get; }

    /// <summary>Shape of the storage matrix this layout represents.</summary>
    public IReadOnlyList<long> StorageShape { get; }

    /// <summary>The tensors this layout keeps, by part (registered as module buffers). Owned by the layout.</summary>
    public abstract IReadOnlyList<(WeightPart Part, Tensor Tensor)> Tensors { get; }

    /// <summary>The storage matrix dequantized to a new float32 tensor of <see cref="StorageShape"/>.</summary>
    public abstract Tensor Dequantize();

    /// <summary>
    /// Writes <see cref="Dequantize"/>'s values into <paramref name="destination"/> (contiguous float32 or bfloat16 CPU):
    /// the storage matrix's rows from <paramref name="firstRow"/> on, as many as it holds whole rows (all of them by
    /// default), or returns false when this layout has no such kernel (the caller then uses <see cref="Dequantize"/>).
    /// </summary>
    internal virtual bool DequantizeInto(Tensor destination, long firstRow = 0) => false;

    /// <summary>
    /// Runs <paramref name="kernel"/> on the storage matrix read in place (the formats <see cref="DequantizeInto"/>
    /// reads with managed code), or returns false where this layout has no such view (the caller then dequantizes).
    /// </summary>
    internal virtual bool WithWeightView(WeightViewAction kernel) => false;

    /// <summary>
    /// <c>x W^T + bias</c> for the storage matrix <c>W</c> <c>[out, in]</c>: the quantized linear kernel. The default
    /// dequantizes and runs TorchSharp's float32 linear (the emulated path); kernel layouts override it.
    /// </summary>
    /// <param name="input">float32 input whose last dimension is <c>in</c>.</param>
    /// <param name="bias">float32 bias <c>[out]</c>, or null.</param>
    public virtual Tensor Linear(Tensor input, Tensor? bias)
    {
        using var scope = NewDisposeScope();
        using var w = Dequantize();
        return nn.functional.linear(input, w, bias).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// <c>x W^T + bias</c> with the input quantized to 8 bits in integers (W8A8), or null when this layout has no such
    /// kernel: the module then simulates (quantize and dequantize the input, then <see cref="Linear"/>).
    /// </summary>
    internal virtual Tensor? QuantizedInputLinear(Tensor input, Tensor? bias, InputQuantizer quantizer) => null;

    /// <summary>
    /// A convolution through a kernel: float32 images <c>[n, C, H, W]</c> unfolded as <paramref name="unfold"/>
    /// describes (im2col, rows in the weight's flattening order) times the storage matrix <c>[out, C * kernel]</c>,
    /// giving <c>[n, out, positions]</c>. With <paramref name="quantizer"/> the input is quantized to 8 bits and
    /// multiplied in integers (W8A8); without it and with <paramref name="bfloat16"/>, the product is computed in
    /// bfloat16 where the kernel can (the bfloat16 route where libtorch's cannot run, and grouped layers). With
    /// <paramref name="groups"/> above one (bfloat16 only), the storage matrix is <c>[out, C / groups * kernel]</c>
    /// and each group's outputs read its channels. Null when this layout has no such kernel for the input (the module
    /// then dequantizes and runs the float convolution).
    /// </summary>
    internal virtual Tensor? Convolution(Tensor images, Im2Col unfold, Tensor? bias, InputQuantizer? quantizer, bool bfloat16 = false, int groups = 1, bool quads = false) => null;

    /// <summary>Rows <paramref name="indices"/> (int64, 1-D) of the storage matrix, dequantized to float32 <c>[n, K]</c>.</summary>
    /// <param name="indices">Row indices, all in range.</param>
    public virtual Tensor GatherRows(Tensor indices)
    {
        using var scope = NewDisposeScope();
        return Dequantize().index_select(0, indices).MoveToOuterDisposeScope();
    }

    /// <summary>The canonical parts (new tensors): see docs/FORMAT.md. The caller disposes the result.</summary>
    public abstract QuantizedTensor ToCanonical();

    /// <summary>
    /// The canonical parts for reading only (validation, saving): views of this layout's own tensors where it keeps the
    /// canonical form (no copy of a large weight), otherwise <see cref="ToCanonical"/>. The caller disposes the result
    /// and must not modify it.
    /// </summary>
    internal virtual QuantizedTensor CanonicalView() => ToCanonical();

    /// <summary>Bytes held by <see cref="Tensors"/>.</summary>
    public long StorageBytes => Tensors.Sum(t => t.Tensor.numel() * t.Tensor.element_size());

    /// <summary>Frees the layout's tensors.</summary>
    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    /// <summary>Frees the layout's tensors (override to free more).</summary>
    /// <param name="disposing">True when called from <see cref="Dispose()"/>.</param>
    protected virtual void Dispose(bool disposing)
    {
        if (!disposing) return;
        foreach (var (_, t) in Tensors) t.Dispose();
    }
}

/// <summary>
/// Chooses the in-memory layout of each new <see cref="QuantizedWeight"/>. Kernel libraries register a factory that
/// returns their layout for the weights it serves (e.g. int8 per-channel on a CPU with VNNI) and null otherwise; the
/// canonical layout is the fallback. Factories run newest first.
/// </summary>
public static class WeightLayouts
{
    private static readonly List<Func<QuantizedTensor, WeightLayout?>> s_factories = [];
    private static readonly Lock s_lock = new();

    /// <summary>Adds a layout factory: given the canonical parts (storage matrix), return a new layout or null.</summary>
    /// <param name="factory">Must not keep <c>canonical</c> (it is disposed after the call); copy what it needs.</param>
    public static void Register(Func<QuantizedTensor, WeightLayout?> factory)
    {
        ArgumentNullException.ThrowIfNull(factory);
        lock (s_lock) s_factories.Insert(0, factory);
    }

    /// <summary>Removes a factory added by <see cref="Register"/> (returns false if it was not registered).</summary>
    /// <param name="factory">The factory to remove.</param>
    public static bool Unregister(Func<QuantizedTensor, WeightLayout?> factory)
    {
        lock (s_lock) return s_factories.Remove(factory);
    }

    /// <summary>The layout for <paramref name="canonical"/> (takes ownership of it: canonical layouts keep its tensors).</summary>
    internal static WeightLayout Create(QuantizedTensor canonical)
    {
        Func<QuantizedTensor, WeightLayout?>[] factories;
        lock (s_lock) factories = [.. s_factories];
        foreach (var f in factories)
        {
            if (f(canonical) is { } layout)
            {
                canonical.Dispose();
                return layout;
            }
        }
        return canonical.Spec.Type.Bits() < 8 && canonical.Spec.Type.IsInteger()
            ? new PackedWeightLayout(canonical)
            : new PlainWeightLayout(canonical);
    }
}

/// <summary>The canonical layouts: the parts exactly as the file stores them.</summary>
internal abstract class CanonicalWeightLayout : WeightLayout
{
    private readonly QuantizedTensor _parts;
    private readonly (WeightPart, Tensor)[] _tensors;

    protected CanonicalWeightLayout(QuantizedTensor parts) : base(parts.Spec, parts.Shape)
    {
        _parts = parts;
        var list = new List<(WeightPart, Tensor)> { (WeightPart.Data, parts.Data) };
        if (parts.Scale is { } s) list.Add((WeightPart.Scale, s));
        if (parts.ZeroPoint is { } z) list.Add((WeightPart.ZeroPoint, z));
        _tensors = [.. list];
    }

    public override IReadOnlyList<(WeightPart Part, Tensor Tensor)> Tensors => _tensors;

    /// <summary>The stored integers of <paramref name="data"/> (rows of the storage matrix) as float32 <c>[n, K]</c>.</summary>
    protected abstract Tensor IntegerValues(Tensor data);

    public override Tensor Dequantize()
    {
        if (LinearKernels.TryDequantize(_parts) is { } managed) return managed;
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        if (!Spec.Type.IsInteger()) return _parts.Data.to(ScalarType.Float32).MoveToOuterDisposeScope();
        return WeightQuantizer.DequantizeRows(IntegerValues(_parts.Data), _parts.Scale!, _parts.ZeroPoint, Spec).MoveToOuterDisposeScope();
    }

    internal override bool DequantizeInto(Tensor destination, long firstRow = 0) => LinearKernels.TryDequantizeInto(_parts, destination, firstRow);

    internal override bool WithWeightView(WeightViewAction kernel) => LinearKernels.TryWithWeightView(_parts, kernel);

    /// <summary>The kernels read the canonical parts in place (<see cref="LinearKernels"/>); the reference path where none applies.</summary>
    public override Tensor Linear(Tensor input, Tensor? bias) => LinearKernels.TryLinear(_parts, input, bias) ?? base.Linear(input, bias);

    internal override Tensor? QuantizedInputLinear(Tensor input, Tensor? bias, InputQuantizer quantizer) => LinearKernels.TryLinear(_parts, input, bias, quantizer);

    internal override Tensor? Convolution(Tensor images, Im2Col unfold, Tensor? bias, InputQuantizer? quantizer, bool bfloat16 = false, int groups = 1, bool quads = false) =>
        LinearKernels.TryConvolution(_parts, images, unfold, bias, quantizer, bfloat16, groups, quads);

    public override Tensor GatherRows(Tensor indices)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        if (!Spec.Type.IsInteger()) return _parts.Data.index_select(0, indices).to(ScalarType.Float32).MoveToOuterDisposeScope();
        var q = IntegerValues(_parts.Data.index_select(0, indices));
        var s = _parts.Scale!;
        var z = _parts.ZeroPoint;
        if (Spec.Granularity is not PerTensor)
        {
            s = s.index_select(0, indices);
            z = z?.index_select(0, indices);
        }
        return WeightQuantizer.DequantizeRows(q, s, z, Spec).MoveToOuterDisposeScope();
    }

    public override QuantizedTensor ToCanonical() =>
        QuantizedTensor.FromParts(Spec, _parts.Shape, _parts.Data.clone(), _parts.Scale?.clone(), _parts.ZeroPoint?.clone());

    internal override QuantizedTensor CanonicalView() =>
        QuantizedTensor.FromParts(Spec, _parts.Shape, _parts.Data.alias(), _parts.Scale?.alias(), _parts.ZeroPoint?.alias());

    protected override void Dispose(bool disposing)
    {
        if (disposing) _parts.Dispose();
    }
}

/// <summary>int8, uint8 (one value per byte), float16 and bfloat16: the stored tensor is the storage matrix.</summary>
internal sealed class PlainWeightLayout(QuantizedTensor parts) : CanonicalWeightLayout(parts)
{
    public override string Name => "plain";

    protected override Tensor IntegerValues(Tensor data) => data.to(ScalarType.Float32);
}

/// <summary>int4/uint4: two values per byte along K, low nibble first; int2/uint2: four per byte, lowest bits first (docs/FORMAT.md).</summary>
internal sealed class PackedWeightLayout(QuantizedTensor parts) : CanonicalWeightLayout(parts)
{
    public override string Name => "packed";

    protected override Tensor IntegerValues(Tensor data) => WeightQuantizer.Unpack(data, Spec.Type);
}
