using QuantSharp.Primitives;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tensors;

// PLACEHOLDER until branch `prim` lands (the contract of the team brief); replaced by prim's file on merge.

/// <summary>A quantized tensor: integer data, scale, optional zero point.</summary>
public sealed class QuantizedTensor : IDisposable
{
    private QuantizedTensor(QuantSpec spec, long[] shape, Tensor data, Tensor? scale, Tensor? zeroPoint)
    {
        Spec = spec; Shape = shape; Data = data; Scale = scale; ZeroPoint = zeroPoint;
    }

    /// <summary>The spec.</summary>
    public QuantSpec Spec { get; }
    /// <summary>Logical shape.</summary>
    public long[] Shape { get; }
    /// <summary>Stored data.</summary>
    public Tensor Data { get; }
    /// <summary>Scales.</summary>
    public Tensor? Scale { get; }
    /// <summary>Zero points.</summary>
    public Tensor? ZeroPoint { get; }
    /// <summary>Bytes of data, scale and zero point.</summary>
    public long StorageBytes => Bytes(Data) + (Scale is null ? 0 : Bytes(Scale)) + (ZeroPoint is null ? 0 : Bytes(ZeroPoint));
    private static long Bytes(Tensor t) => t.numel() * t.element_size();

    /// <summary>Assembles from parts.</summary>
    public static QuantizedTensor FromParts(QuantSpec spec, long[] shape, Tensor data, Tensor? scale, Tensor? zeroPoint)
        => new(spec, shape, data, scale, zeroPoint);

    /// <summary>Quantizes with min/max qparams.</summary>
    public static QuantizedTensor Quantize(Tensor input, QuantSpec spec)
    {
        spec.Validate(input.shape);
        float[] s; int[] z;
        using (var scope = NewDisposeScope())
        {
            var x = input.to(ScalarType.Float32);
            if (!spec.Type.IsInteger())
            {
                var d = x.to(spec.Type == QuantType.Float16 ? ScalarType.Float16 : ScalarType.BFloat16);
                return new QuantizedTensor(spec, input.shape, d.MoveToOuterDisposeScope(), null, null);
            }
            Tensor rows;
            switch (spec.Granularity)
            {
                case PerAxis a: rows = x.movedim([a.Axis], [0]).reshape(x.shape[a.Axis], -1); break;
                case PerGroup g: rows = x.reshape(-1, g.GroupSize); break;
                default: rows = x.reshape(1, -1); break;
            }
            float[] mins = rows.amin([1]).data<float>().ToArray(), maxs = rows.amax([1]).data<float>().ToArray();
            var range = QuantRange.For(spec.Type, spec.ReduceRange);
            s = new float[mins.Length]; z = new int[mins.Length];
            QParams.Choose(mins, maxs, range, spec.Scheme, s, z);
        }
        return QuantizeWith(input, spec, s, z);
    }

    /// <summary>Quantizes with given qparams.</summary>
    public static QuantizedTensor QuantizeWith(Tensor input, QuantSpec spec, float[] scale, int[] zeroPoint)
    {
        using var scope = NewDisposeScope();
        var x = input.to(ScalarType.Float32);
        long[] sshape = spec.Granularity switch
        {
            PerAxis a => [x.shape[a.Axis]],
            PerGroup g => [.. x.shape[..^1], x.shape[^1] / g.GroupSize],
            _ => [],
        };
        var st = tensor(scale).reshape(sshape); var zt = tensor(zeroPoint).reshape(sshape);
        var (sb, zb) = Broadcastable(spec, x.shape, st, zt);
        var range = QuantRange.For(spec.Type, spec.ReduceRange);
        var q = (x / sb).round().add(zb).clamp(range.QMin, range.QMax).to(ScalarType.Int32);
        Tensor data = spec.Type switch
        {
            QuantType.Int8 => q.to(ScalarType.Int8),
            QuantType.UInt8 => q.to(ScalarType.Byte),
            _ => Pack4(q),
        };
        bool hasZp = spec.Scheme == QuantScheme.Affine || !spec.Type.IsSigned();
        return new QuantizedTensor(spec, x.shape, data.MoveToOuterDisposeScope(), st.MoveToOuterDisposeScope(),
            hasZp ? zt.MoveToOuterDisposeScope() : null);
    }

    private static (Tensor, Tensor) Broadcastable(QuantSpec spec, long[] shape, Tensor s, Tensor z)
    {
        switch (spec.Granularity)
        {
            case PerAxis a:
                var view = Enumerable.Repeat(1L, shape.Length).ToArray(); view[a.Axis] = shape[a.Axis];
                return (s.reshape(view), z.reshape(view));
            case PerGroup g:
                long[] gs = [.. shape[..^1], shape[^1] / g.GroupSize, 1];
                long[] full = [.. shape[..^1], shape[^1] / g.GroupSize, g.GroupSize];
                return (s.reshape(gs).expand(full).reshape(shape), z.reshape(gs).expand(full).reshape(shape));
            default: return (s, z);
        }
    }

    private static Tensor Pack4(Tensor q)
    {
        var b = q.bitwise_and(0xF).to(ScalarType.Byte);
        var pairs = b.reshape([.. b.shape[..^1], b.shape[^1] / 2, 2]);
        return pairs.select(-1, 0).bitwise_or(pairs.select(-1, 1).bitwise_left_shift(4)).contiguous();
    }

    /// <summary>Float32 values.</summary>
    public Tensor Dequantize()
    {
        using var scope = NewDisposeScope();
        if (!Spec.Type.IsInteger()) return Data.to(ScalarType.Float32).MoveToOuterDisposeScope();
        Tensor q;
        if (Spec.Type.Bits() == 4)
        {
            var lo = Data.bitwise_and(0xF).to(ScalarType.Int32);
            var hi = Data.bitwise_right_shift(4).to(ScalarType.Int32);
            if (Spec.Type.IsSigned()) { lo = lo - (lo >= 8).to(ScalarType.Int32) * 16; hi = hi - (hi >= 8).to(ScalarType.Int32) * 16; }
            q = stack([lo, hi], -1).reshape(Shape);
        }
        else q = Data.to(ScalarType.Int32);
        var z = ZeroPoint ?? zeros_like(Scale!, dtype: ScalarType.Int32);
        var (sb, zb) = Broadcastable(Spec, Shape, Scale!, z);
        return ((q - zb).to(ScalarType.Float32) * sb).MoveToOuterDisposeScope();
    }

    /// <inheritdoc/>
    public void Dispose() { Data.Dispose(); Scale?.Dispose(); ZeroPoint?.Dispose(); }
}
