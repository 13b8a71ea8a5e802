using System.Runtime.InteropServices;
using QuantSharp.Kernels;
using QuantSharp.Primitives;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tensors;

/// <summary>
/// A quantized tensor: integer (or half-precision) <see cref="Data"/>, <see cref="Scale"/> and optional
/// <see cref="ZeroPoint"/>, described by a <see cref="QuantSpec"/>. <see cref="Dequantize"/> gives back float32.
/// </summary>
/// <remarks>
/// <para>Storage by type: Int8 as an Int8 tensor of <see cref="Shape"/>; UInt8 as Byte; Int4/UInt4 as Byte with two values
/// per byte along the last dimension, low nibble first (shape <c>[..., ceil(last / 2)]</c>); Int2/UInt2 four per byte
/// (<c>[..., ceil(last / 4)]</c>); signed values in two's complement within their field (see <see cref="Packing"/>).
/// Float16/BFloat16 as Float16/BFloat16 tensors of <see cref="Shape"/>, with no scale.</para>
/// <para>Scale is float32 of shape <c>[]</c> per-tensor, <c>[C]</c> per-axis, <c>[rows..., last / G]</c> per-group;
/// ZeroPoint is int32 of the same shape, or <see langword="null"/> when the zero point is always 0 (symmetric signed).</para>
/// <para>Arithmetic follows PyTorch and torchao at every granularity: <c>round_half_even(x * (1f / scale))</c> in float32,
/// the reciprocal first (<c>torch.quantize_per_tensor</c>/<c>_per_channel</c>, fake-quantize, torchao's
/// <c>quantize_affine</c> for per-group; see <see cref="Quantization"/>).</para>
/// <para>The tensors belong to this object (they are not in any dispose scope): dispose it to free them.</para>
/// </remarks>
public sealed class QuantizedTensor : IDisposable
{
    private readonly long[] _shape;
    private float[]? _scales;
    private int[]? _zeroPoints;
    private bool _disposed;

    private QuantizedTensor(QuantSpec spec, long[] shape, Tensor data, Tensor? scale, Tensor? zeroPoint)
    {
        Spec = spec;
        _shape = shape;
        Data = data.DetachFromDisposeScope();
        Scale = scale?.DetachFromDisposeScope();
        ZeroPoint = zeroPoint?.DetachFromDisposeScope();
    }

    /// <summary>How the tensor is quantized.</summary>
    public QuantSpec Spec { get; }

    /// <summary>The shape of the original (and dequantized) float tensor.</summary>
    public long[] Shape => (long[])_shape.Clone();

    /// <summary>The stored values (see the type remarks for the layout). Owned by this object: do not dispose it.</summary>
    public Tensor Data { get; }

    /// <summary>float32 scales (<c>[]</c>, <c>[C]</c> or <c>[rows..., last / G]</c>); <see langword="null"/> for float types. Owned by this object.</summary>
    public Tensor? Scale { get; }

    /// <summary>int32 zero points shaped like <see cref="Scale"/>; <see langword="null"/> when always 0 or for float types. Owned by this object.</summary>
    public Tensor? ZeroPoint { get; }

    /// <summary>Bytes held by <see cref="Data"/>, <see cref="Scale"/> and <see cref="ZeroPoint"/>.</summary>
    public long StorageBytes => Bytes(Data) + (Scale is null ? 0 : Bytes(Scale)) + (ZeroPoint is null ? 0 : Bytes(ZeroPoint));

    /// <summary>Number of elements of the original tensor.</summary>
    public long ElementCount => QuantSpec.Product(_shape);

    /// <summary>The scales as an array (one per channel or group; one for per-tensor).</summary>
    internal float[] ScaleValues => _scales ??= Scale is null ? [] : MemoryMarshal.Cast<byte, float>(Scale.bytes).ToArray();

    /// <summary>The zero points as an array (zeros when <see cref="ZeroPoint"/> is null).</summary>
    internal int[] ZeroPointValues => _zeroPoints ??= ZeroPoint is null
        ? new int[ScaleValues.Length]
        : MemoryMarshal.Cast<byte, int>(ZeroPoint.bytes).ToArray();

    /// <summary>
    /// Quantizes <paramref name="input"/> with min/max qparams per the spec's granularity, chosen exactly as PyTorch's
    /// MinMax observers do (<see cref="QParams.Choose(float, float, QuantRange, QuantScheme)"/>).
    /// </summary>
    /// <param name="input">A floating-point tensor (converted to float32 on the CPU; not modified).</param>
    /// <param name="spec">Type, scheme, granularity.</param>
    /// <exception cref="ArgumentException">The spec does not fit the shape, or the input holds NaN or infinity.</exception>
    public static QuantizedTensor Quantize(Tensor input, QuantSpec spec)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(spec);
        long[] shape = input.shape;
        spec.Validate(shape);
        if (RowChunks.Needed(shape)) return QuantizeInRows(input, spec, shape, null, null);
        using var scope = torch.NewDisposeScope();
        var x = AsFloat32(input);
        if (!spec.Type.IsInteger()) return FromFloat(x, spec, shape);

        var layout = Layout.For(spec, shape);
        if (CanFuse(layout, QuantSpec.Product(shape)))
            return QuantizeCore(x, spec, shape, layout, new float[layout.Channels], new int[layout.Channels], observe: true);
        var (min, max) = ObserveMinMax(Floats(x), layout);
        var (scale, zeroPoint) = Choose(min, max, spec, layout);
        return QuantizeCore(x, spec, shape, layout, scale, zeroPoint, observe: false);
    }

    /// <summary>Min/max qparams of every channel or group, as PyTorch's MinMax observers choose them.</summary>
    private static (float[] Scale, int[] ZeroPoint) Choose(float[] min, float[] max, QuantSpec spec, Layout layout)
    {
        var scale = new float[layout.Channels];
        var zeroPoint = new int[layout.Channels];
        for (int c = 0; c < layout.Channels; c++)
        {
            if (float.IsNaN(min[c]) || float.IsInfinity(min[c]) || float.IsInfinity(max[c]))
                throw NonFinite(layout, c);
            (scale[c], zeroPoint[c]) = QParams.Choose(min[c], max[c], spec.Range, spec.Scheme);
        }
        return (scale, zeroPoint);
    }

    /// <summary>
    /// Quantizes a tensor whose float32 values do not fit one span chunk by chunk of rows (<see cref="RowChunks"/>), with
    /// the results of one pass: parameters of each row (per-channel on axis 0, groups) are chosen chunk by chunk;
    /// parameters that span rows (per-tensor, per-channel on another axis) come from a first min/max pass over the
    /// chunks, unless given. Only one chunk is ever converted to float32.
    /// </summary>
    private static QuantizedTensor QuantizeInRows(Tensor input, QuantSpec spec, long[] shape, float[]? scale, int[]? zeroPoint)
    {
        var ranges = RowChunks.Ranges(shape);
        using var scope = torch.NewDisposeScope();
        var data = torch.empty(DataShape(spec.Type, shape), DataType(spec.Type));
        if (!spec.Type.IsInteger())
        {
            foreach (var (r0, n) in ranges)
            {
                using var chunkScope = torch.NewDisposeScope();
                var x = AsFloat32(input.narrow(0, r0, n));
                ToFloatType(spec.Type, Floats(x), MemoryMarshal.Cast<byte, ushort>(data.narrow(0, r0, n).bytes));
            }
            return new QuantizedTensor(spec, shape, data, null, null);
        }
        var layout = Layout.For(spec, shape);
        bool rowParameters = spec.Granularity is PerGroup or PerAxis { Axis: 0 };
        long perRow = rowParameters ? layout.Channels / shape[0] : 0;
        if (scale is null && !rowParameters)
        {
            var min = new float[layout.Channels];
            var max = new float[layout.Channels];
            Array.Fill(min, float.PositiveInfinity);
            Array.Fill(max, float.NegativeInfinity);
            foreach (var (r0, n) in ranges)
            {
                using var chunkScope = torch.NewDisposeScope();
                var x = AsFloat32(input.narrow(0, r0, n));
                var (mn, mx) = ObserveMinMax(Floats(x), Layout.For(spec, x.shape));
                for (int c = 0; c < layout.Channels; c++) Merge(min, max, c, (mn[c], mx[c]));
            }
            (scale, zeroPoint) = Choose(min, max, spec, layout);
        }
        bool chosenPerChunk = scale is null;
        var allScale = scale ?? new float[layout.Channels];
        var allZero = zeroPoint ?? new int[layout.Channels];
        foreach (var (r0, n) in ranges)
        {
            using var chunkScope = torch.NewDisposeScope();
            var x = AsFloat32(input.narrow(0, r0, n));
            long[] chunkShape = x.shape;
            Range own = rowParameters ? new Range((int)(r0 * perRow), (int)((r0 + n) * perRow)) : Range.All;
            using var part = chosenPerChunk
                ? Quantize(x, spec)
                : QuantizeCore(x, spec, chunkShape, Layout.For(spec, chunkShape), allScale[own], allZero[own], observe: false);
            if (chosenPerChunk)
            {
                part.ScaleValues.CopyTo(allScale, own.Start.Value);
                part.ZeroPointValues.CopyTo(allZero, own.Start.Value);
            }
            part.Data.bytes.CopyTo(data.narrow(0, r0, n).bytes);
        }
        long[] pShape = spec.ParameterShape(shape);
        var scaleTensor = torch.tensor(allScale, pShape);
        var zpTensor = spec.HasZeroPoint ? torch.tensor(allZero, pShape) : null;
        return new QuantizedTensor(spec, shape, data, scaleTensor, zpTensor) { _scales = allScale, _zeroPoints = allZero };
    }

    /// <summary>Quantizes <paramref name="input"/> with given scales and zero points (e.g. from an observer).</summary>
    /// <param name="input">A floating-point tensor (not modified).</param>
    /// <param name="spec">Type, scheme, granularity; an integer type.</param>
    /// <param name="scale">One scale per tensor, channel or group (row-major over the scale shape).</param>
    /// <param name="zeroPoint">Zero points, same length; <see langword="null"/> for zeros.</param>
    /// <exception cref="ArgumentException">The spec does not fit, or the parameter counts or values are wrong.</exception>
    public static QuantizedTensor QuantizeWith(Tensor input, QuantSpec spec, float[] scale, int[]? zeroPoint)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(scale);
        long[] shape = input.shape;
        spec.Validate(shape);
        if (!spec.Type.IsInteger())
            throw new ArgumentException($"{spec.Type.ToName()} is a plain cast and takes no scale; use Quantize(input, spec).", nameof(spec));
        var layout = Layout.For(spec, shape);
        if (scale.Length != layout.Channels)
            throw new ArgumentException($"Expected {layout.Channels} scale(s) for {spec} on shape {QuantSpec.FormatShape(shape)}, got {scale.Length}.", nameof(scale));
        zeroPoint ??= new int[scale.Length];
        if (zeroPoint.Length != scale.Length)
            throw new ArgumentException($"Expected {scale.Length} zero point(s), got {zeroPoint.Length}.", nameof(zeroPoint));
        var range = spec.Range;
        for (int c = 0; c < scale.Length; c++)
        {
            if (!(scale[c] > 0) || !float.IsFinite(scale[c]))
                throw new ArgumentException($"Scale {c} is {scale[c]}; scales must be positive and finite.", nameof(scale));
            if (zeroPoint[c] < range.QMin || zeroPoint[c] > range.QMax)
                throw new ArgumentException($"Zero point {c} is {zeroPoint[c]}, outside the range [{range.QMin}, {range.QMax}] of {spec.Type.ToName()}.", nameof(zeroPoint));
        }
        if (RowChunks.Needed(shape)) return QuantizeInRows(input, spec, shape, (float[])scale.Clone(), (int[])zeroPoint.Clone());
        using var scope = torch.NewDisposeScope();
        var x = AsFloat32(input);
        return QuantizeCore(x, spec, shape, layout, (float[])scale.Clone(), (int[])zeroPoint.Clone(), observe: false);
    }

    /// <summary>
    /// Wraps stored parts (e.g. read from a checkpoint) as a quantized tensor. Takes ownership of the tensors: they are
    /// detached from any dispose scope and disposed with this object.
    /// </summary>
    /// <param name="spec">How the data was quantized.</param>
    /// <param name="shape">Shape of the original float tensor.</param>
    /// <param name="data">Contiguous CPU data in the layout of <see cref="Data"/>.</param>
    /// <param name="scale">float32 scales (required for integer types, null for float types).</param>
    /// <param name="zeroPoint">int32 zero points, or null for zeros.</param>
    /// <exception cref="ArgumentException">A part has the wrong dtype, shape or element count.</exception>
    public static QuantizedTensor FromParts(QuantSpec spec, long[] shape, Tensor data, Tensor? scale, Tensor? zeroPoint)
    {
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(shape);
        ArgumentNullException.ThrowIfNull(data);
        spec.Validate(shape);
        var expectedType = DataType(spec.Type);
        long[] dataShape = DataShape(spec.Type, shape);
        if (data.dtype != expectedType)
            throw new ArgumentException($"Data of {spec} must be {expectedType}, got {data.dtype}.", nameof(data));
        if (!data.shape.SequenceEqual(dataShape))
            throw new ArgumentException($"Data of {spec} for shape {QuantSpec.FormatShape(shape)} must have shape {QuantSpec.FormatShape(dataShape)}, got {QuantSpec.FormatShape(data.shape)}.", nameof(data));
        CheckStorable(data, nameof(data));
        if (!spec.Type.IsInteger())
        {
            if (scale is not null || zeroPoint is not null)
                throw new ArgumentException($"{spec.Type.ToName()} data has no scale or zero point; pass null.", nameof(scale));
            return new QuantizedTensor(spec, (long[])shape.Clone(), data, null, null);
        }
        if (scale is null)
            throw new ArgumentException($"{spec} needs a scale tensor.", nameof(scale));
        long[] pShape = spec.ParameterShape(shape);
        if (scale.dtype != ScalarType.Float32 || scale.numel() != spec.ParameterCount(shape))
            throw new ArgumentException($"Scale of {spec} must be float32 with {spec.ParameterCount(shape)} element(s) (shape {QuantSpec.FormatShape(pShape)}), got {scale.dtype} {QuantSpec.FormatShape(scale.shape)}.", nameof(scale));
        CheckStorable(scale, nameof(scale));
        if (zeroPoint is not null)
        {
            if (zeroPoint.dtype != ScalarType.Int32 || zeroPoint.numel() != scale.numel())
                throw new ArgumentException($"Zero point of {spec} must be int32 with {scale.numel()} element(s), got {zeroPoint.dtype} {QuantSpec.FormatShape(zeroPoint.shape)}.", nameof(zeroPoint));
            CheckStorable(zeroPoint, nameof(zeroPoint));
        }
        // Values: a corrupt scale or zero point would dequantize to garbage silently.
        ReadOnlySpan<float> scales = scale.numel() == 0 ? [] : MemoryMarshal.Cast<byte, float>(scale.bytes);
        for (int i = 0; i < scales.Length; i++)
        {
            if (!(scales[i] > 0) || !float.IsFinite(scales[i]))
                throw new ArgumentException($"Scale {i} of {spec} is {scales[i]}; scales must be positive and finite.", nameof(scale));
        }
        if (zeroPoint is not null && zeroPoint.numel() > 0)
        {
            var range = spec.Range;
            ReadOnlySpan<int> zps = MemoryMarshal.Cast<byte, int>(zeroPoint.bytes);
            for (int i = 0; i < zps.Length; i++)
            {
                if (zps[i] < range.QMin || zps[i] > range.QMax)
                    throw new ArgumentException($"Zero point {i} of {spec} is {zps[i]}, outside [{range.QMin}, {range.QMax}].", nameof(zeroPoint));
            }
        }
        if (!scale.shape.SequenceEqual(pShape))
        {
            var reshaped = scale.reshape(pShape);
            scale.Dispose();
            scale = reshaped;
        }
        if (zeroPoint is not null && !zeroPoint.shape.SequenceEqual(pShape))
        {
            var reshaped = zeroPoint.reshape(pShape);
            zeroPoint.Dispose();
            zeroPoint = reshaped;
        }
        return new QuantizedTensor(spec, (long[])shape.Clone(), data, scale, zeroPoint);
    }

    /// <summary>Dequantizes to a new float32 tensor of <see cref="Shape"/>: <c>(q - zeroPoint) * scale</c>.</summary>
    public Tensor Dequantize()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var result = torch.empty(_shape, ScalarType.Float32);
        if (!RowChunks.Needed(_shape))
        {
            DequantizeInto(Data, _shape, ScaleValues, ZeroPointValues, result);
            return result;
        }
        bool rowParameters = Spec.Granularity is PerGroup or PerAxis { Axis: 0 };
        long perRow = rowParameters ? ScaleValues.Length / _shape[0] : 0;
        foreach (var (r0, n) in RowChunks.Ranges(_shape))
        {
            using var scope = torch.NewDisposeScope();
            var dst = result.narrow(0, r0, n);
            Range own = rowParameters ? new Range((int)(r0 * perRow), (int)((r0 + n) * perRow)) : Range.All;
            DequantizeInto(Data.narrow(0, r0, n), dst.shape, ScaleValues.AsSpan(own), ZeroPointValues.AsSpan(own), dst);
        }
        return result;
    }

    /// <summary>Dequantizes stored <paramref name="data"/> of a tensor (or of whole rows of it) of <paramref name="shape"/> into the float32 <paramref name="result"/>.</summary>
    private void DequantizeInto(Tensor data, long[] shape, ReadOnlySpan<float> scale, ReadOnlySpan<int> zeroPoint, Tensor result)
    {
        if (result.numel() == 0) return;
        Span<float> dst = MemoryMarshal.Cast<byte, float>(result.bytes);
        switch (Spec.Type)
        {
            case QuantType.Float16:
                HalfKernel.FromHalf(MemoryMarshal.Cast<byte, ushort>(data.bytes), dst);
                return;
            case QuantType.BFloat16:
                HalfKernel.FromBFloat16(MemoryMarshal.Cast<byte, ushort>(data.bytes), dst);
                return;
        }
        var layout = Layout.For(Spec, shape);
        if (Spec.Type == QuantType.UInt8)
        {
            Quantization.Dequantize(data.bytes, layout.BlockLength, scale, zeroPoint, dst);
            return;
        }
        if (Spec.Type == QuantType.Int8)
        {
            Quantization.Dequantize(MemoryMarshal.Cast<byte, sbyte>(data.bytes), layout.BlockLength, scale, zeroPoint, dst);
            return;
        }
        var values = new sbyte[dst.Length];
        UnpackRows(data.bytes, Spec.Type, shape, values);
        Quantization.Dequantize(values, layout.BlockLength, scale, zeroPoint, dst);
    }

    /// <summary>The integer values, one per element of <see cref="Shape"/> (unpacked for 4- and 2-bit types), as int32.</summary>
    /// <exception cref="InvalidOperationException">The type is a floating-point type.</exception>
    public Tensor IntegerValues()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!Spec.Type.IsInteger()) throw new InvalidOperationException($"{Spec.Type.ToName()} data has no integer values.");
        if (Spec.Type == QuantType.Int8 || Spec.Type == QuantType.UInt8) return Data.to(ScalarType.Int32);
        var values = new sbyte[ElementCount];
        UnpackRows(Data.bytes, Spec.Type, _shape, values);
        using var t = torch.tensor(values, _shape);
        return t.to(ScalarType.Int32);
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        Data.Dispose();
        Scale?.Dispose();
        ZeroPoint?.Dispose();
    }

    /// <inheritdoc/>
    public override string ToString() => $"QuantizedTensor({Spec}, shape {QuantSpec.FormatShape(_shape)}, {StorageBytes} bytes)";

    // ------------------------------------------------------------------------------------------------

    /// <summary>
    /// The tensor viewed as <c>[Outer, Channels, BlockLength]</c> where parameter <c>c</c> applies to
    /// <c>[:, c, :]</c>: per-tensor (1, 1, N), per-axis (prod before, C, prod after), per-group (1, N / G, G).
    /// </summary>
    internal readonly record struct Layout(long Outer, int Channels, int BlockLength)
    {
        public static Layout For(QuantSpec spec, ReadOnlySpan<long> shape)
        {
            long n = QuantSpec.Product(shape);
            switch (spec.Granularity)
            {
                case PerAxis a:
                {
                    long outer = 1, inner = 1;
                    for (int i = 0; i < a.Axis; i++) outer *= shape[i];
                    for (int i = a.Axis + 1; i < shape.Length; i++) inner *= shape[i];
                    return new Layout(outer, checked((int)shape[a.Axis]), checked((int)inner));
                }
                case PerGroup g:
                    return new Layout(1, checked((int)(n / g.GroupSize)), g.GroupSize);
                default:
                    return new Layout(1, 1, checked((int)Math.Max(n, 1)));
            }
        }
    }

    /// <summary>
    /// Quantizes <paramref name="x"/>; with <paramref name="observe"/>, first fills <paramref name="scale"/> and
    /// <paramref name="zeroPoint"/> from each block's min/max in the same pass (see <see cref="CanFuse"/>).
    /// </summary>
    private static QuantizedTensor QuantizeCore(Tensor x, QuantSpec spec, long[] shape, Layout layout, float[] scale, int[] zeroPoint, bool observe)
    {
        ReadOnlySpan<float> src = Floats(x);
        Tensor data;
        switch (spec.Type)
        {
            case QuantType.Int8:
            case QuantType.UInt8:
                data = torch.empty(shape, DataType(spec.Type));
                QuantizeValues(src, src.IsEmpty ? [] : MemoryMarshal.Cast<byte, sbyte>(data.bytes), spec, layout, scale, zeroPoint, observe);
                break;
            default:
            {
                var values = new sbyte[src.Length];
                QuantizeValues(src, values, spec, layout, scale, zeroPoint, observe);
                data = torch.empty(DataShape(spec.Type, shape), ScalarType.Byte);
                PackRows(values, spec.Type, shape, data.bytes);
                break;
            }
        }
        long[] pShape = spec.ParameterShape(shape);
        var scaleTensor = torch.tensor(scale, pShape);
        var zpTensor = spec.HasZeroPoint ? torch.tensor(zeroPoint, pShape) : null;
        var q = new QuantizedTensor(spec, shape, data, scaleTensor, zpTensor) { _scales = scale, _zeroPoints = zeroPoint };
        return q;
    }

    /// <summary>
    /// One pass per block (min/max, qparams, quantize while the block is in cache) when every parameter covers one
    /// contiguous block of moderate size: per-channel on axis 0, per-group, and small per-tensor inputs.
    /// </summary>
    private static bool CanFuse(Layout layout, long n) => n > 0 && layout.Outer == 1 && layout.BlockLength >= 16 && layout.BlockLength <= (1 << 16);

    private static ArgumentException NonFinite(Layout layout, int c) => new(
        $"Cannot quantize: the input holds NaN or infinity (in {(layout.Channels == 1 ? "the tensor" : $"channel/group {c}")}).", "input");

    private static unsafe void QuantizeValues(ReadOnlySpan<float> src, Span<sbyte> dst, QuantSpec spec, Layout layout, float[] scale, int[] zeroPoint, bool observe)
    {
        var range = spec.Range;
        if (!observe)
        {
            Quantization.QuantizeCore(src, layout.BlockLength, scale, zeroPoint, range, dst);
            return;
        }
        int inner = layout.BlockLength;
        float qmin = range.QMin, qmax = range.QMax;
        var scheme = spec.Scheme;
        int bad = -1;
        fixed (float* ps = src)
        fixed (sbyte* pd = dst)
        {
            nint s = (nint)ps, d = (nint)pd;
            Quantization.For(layout.Channels, inner, c =>
            {
                var block = new ReadOnlySpan<float>((float*)s + c * inner, inner);
                var (mn, mx) = MinMaxKernel.MinMax(block);
                if (!float.IsFinite(mn) || !float.IsFinite(mx))
                {
                    Interlocked.Exchange(ref bad, (int)c);
                    return;
                }
                var (sc, z) = QParams.Choose(mn, mx, range, scheme);
                scale[c] = sc;
                zeroPoint[c] = z;
                var output = new Span<sbyte>((sbyte*)d + c * inner, inner);
                QuantizeKernel.Quantize(block, 1f / sc, z, qmin, qmax, output);
            });
        }
        if (bad >= 0) throw NonFinite(layout, bad);
    }

    private static QuantizedTensor FromFloat(Tensor x, QuantSpec spec, long[] shape)
    {
        var data = torch.empty(shape, DataType(spec.Type));
        ToFloatType(spec.Type, Floats(x), data.numel() == 0 ? [] : MemoryMarshal.Cast<byte, ushort>(data.bytes));
        return new QuantizedTensor(spec, shape, data, null, null);
    }

    private static void ToFloatType(QuantType type, ReadOnlySpan<float> source, Span<ushort> destination)
    {
        if (type == QuantType.Float16) HalfKernel.ToHalf(source, destination);
        else HalfKernel.ToBFloat16(source, destination);
    }

    /// <summary>Per-channel (or per-group, or whole-tensor) min and max; NaN for a channel holding NaN.</summary>
    internal static unsafe (float[] Min, float[] Max) ObserveMinMax(ReadOnlySpan<float> x, Layout layout)
    {
        var min = new float[layout.Channels];
        var max = new float[layout.Channels];
        if (x.IsEmpty) return (min, max); // zeros: the range [0, 0]
        Array.Fill(min, float.PositiveInfinity);
        Array.Fill(max, float.NegativeInfinity);
        int c = layout.Channels, inner = layout.BlockLength;
        if (inner < 64)
        {
            // Short blocks (channel axis last or nearly): plain loops.
            for (long o = 0; o < layout.Outer; o++)
                for (int ch = 0; ch < c; ch++)
                    Merge(min, max, ch, MinMaxKernel.MinMaxScalar(x.Slice((int)((o * c + ch) * inner), inner)));
            return (min, max);
        }
        // Blocks split into chunks, reduced in parallel, then merged per channel.
        const int Chunk = 1 << 16;
        int chunksPerBlock = (inner + Chunk - 1) / Chunk;
        long blocks = layout.Outer * c;
        long items = blocks * chunksPerBlock;
        var pMin = new float[items];
        var pMax = new float[items];
        fixed (float* p = x)
        {
            nint addr = (nint)p;
            Quantization.For(items, Math.Min(inner, Chunk), t =>
            {
                long b = t / chunksPerBlock;
                int k = (int)(t % chunksPerBlock) * Chunk;
                int len = Math.Min(Chunk, inner - k);
                (pMin[t], pMax[t]) = MinMaxKernel.MinMax(new ReadOnlySpan<float>((float*)addr + b * inner + k, len));
            });
        }
        for (long t = 0; t < items; t++)
            Merge(min, max, (int)(t / chunksPerBlock % c), (pMin[t], pMax[t]));
        return (min, max);
    }

    private static void Merge(float[] min, float[] max, int ch, (float Min, float Max) v)
    {
        if (float.IsNaN(v.Min) || float.IsNaN(min[ch])) { min[ch] = max[ch] = float.NaN; return; }
        if (v.Min < min[ch]) min[ch] = v.Min;
        if (v.Max > max[ch]) max[ch] = v.Max;
    }

    internal static ScalarType DataType(QuantType type) => type switch
    {
        QuantType.Int8 => ScalarType.Int8,
        QuantType.Float16 => ScalarType.Float16,
        QuantType.BFloat16 => ScalarType.BFloat16,
        _ => ScalarType.Byte,
    };

    internal static long[] DataShape(QuantType type, ReadOnlySpan<long> shape)
    {
        long[] s = shape.ToArray();
        int bits = type.Bits();
        if (bits < 8 && s.Length > 0) s[^1] = Packing.PackedLength(s[^1], bits);
        else if (bits < 8) s = [Packing.PackedLength(1, bits)]; // a scalar packs into one byte
        return s;
    }

    private static void PackRows(ReadOnlySpan<sbyte> values, QuantType type, ReadOnlySpan<long> shape, Span<byte> packed)
    {
        int bits = type.Bits();
        int last = shape.Length == 0 ? 1 : (int)shape[^1];
        int packedLast = (int)Packing.PackedLength(last, bits);
        long rows = last == 0 ? 0 : values.Length / last;
        for (long r = 0; r < rows; r++)
            Packing.Pack(values.Slice((int)(r * last), last), bits, packed.Slice((int)(r * packedLast), packedLast));
    }

    private static void UnpackRows(ReadOnlySpan<byte> packed, QuantType type, ReadOnlySpan<long> shape, Span<sbyte> values)
    {
        int bits = type.Bits();
        int last = shape.Length == 0 ? 1 : (int)shape[^1];
        int packedLast = (int)Packing.PackedLength(last, bits);
        long rows = last == 0 ? 0 : values.Length / last;
        for (long r = 0; r < rows; r++)
            Packing.Unpack(packed.Slice((int)(r * packedLast), packedLast), bits, type.IsSigned(), values.Slice((int)(r * last), last));
    }

    private static Tensor AsFloat32(Tensor input)
    {
        if (!input.is_floating_point())
            throw new ArgumentException($"Only floating-point tensors can be quantized; got {input.dtype}.", nameof(input));
        var x = input.detach();
        if (x.device_type != DeviceType.CPU) x = x.cpu();
        if (x.dtype != ScalarType.Float32) x = x.to(ScalarType.Float32);
        return x.contiguous();
    }

    private static ReadOnlySpan<float> Floats(Tensor x) => x.numel() == 0 ? [] : MemoryMarshal.Cast<byte, float>(x.bytes);

    private static long Bytes(Tensor t) => t.numel() * t.ElementSize;

    private static void CheckStorable(Tensor t, string name)
    {
        if (t.device_type != DeviceType.CPU || !t.is_contiguous())
            throw new ArgumentException($"{name} must be a contiguous CPU tensor; call .cpu().contiguous() first.", name);
    }
}
