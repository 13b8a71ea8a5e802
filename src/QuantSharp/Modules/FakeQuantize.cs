using QuantSharp.Observers;
using QuantSharp.Tensors;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace QuantSharp.Modules;

/// <summary>Options of a <see cref="FakeQuantize"/> module.</summary>
public sealed record FakeQuantizeOptions
{
    /// <summary>
    /// Learn the scale (and, for affine schemes, the zero point) by gradient descent: LSQ, PyTorch's
    /// <c>_LearnableFakeQuantize</c>. <see langword="false"/> (default) keeps the observer's parameters and passes
    /// gradients straight through (PyTorch's <c>FakeQuantize</c>).
    /// </summary>
    public bool Learnable { get; init; }

    /// <summary>The observer that chooses the parameters while it is enabled (default <c>minmax</c>; see <see cref="ObserverFactory.Names"/>).</summary>
    public string Observer { get; init; } = "minmax";

    /// <summary>
    /// Freeze the observer after this many training steps (forward calls in training mode): the parameters then stay
    /// as they are (or, with <see cref="Learnable"/>, change only by gradient). Null: the observer never freezes,
    /// except with <see cref="Learnable"/>, where null means 1 (the first batch initializes the learned parameters).
    /// </summary>
    public int? FreezeObserverAfter { get; init; }

    /// <summary>
    /// LSQ gradient scaling: multiply the scale and zero-point gradients by <c>1 / sqrt(numel * qmax)</c>, as PyTorch's
    /// <c>_LearnableFakeQuantize(use_grad_scaling=True)</c>. Default <see langword="false"/> (factor 1).
    /// </summary>
    public bool GradScaling { get; init; }
}

/// <summary>
/// Fake quantization for quantization-aware training: <c>y = (clamp(round(x * (1/s)) + z, qmin, qmax) - z) * s</c>
/// in float32 (PyTorch's arithmetic, bit for bit), with PyTorch's gradients: the straight-through estimator passes
/// the upstream gradient where the rounded value lies inside [qmin, qmax] and 0 elsewhere; with
/// <see cref="FakeQuantizeOptions.Learnable"/> (LSQ) the scale and zero point receive the gradients of
/// <c>_fake_quantize_learnable_per_tensor_affine</c>.
/// </summary>
/// <remarks>
/// <para>Per-tensor, per-channel (<see cref="PerAxis"/>) and per-group (<see cref="PerGroup"/>, groups along the
/// last dimension) parameters; any integer <see cref="QuantType"/> (2, 4 and 8 bits). In training mode the observer
/// sees every input until it is frozen and sets the parameters; in evaluation mode the parameters are used as they
/// are. The scale and zero point are the module's <c>scale</c> and <c>zero_point</c> (float32; parameters when
/// learnable, buffers otherwise), shaped as <see cref="QuantSpec.ParameterShape"/>.</para>
/// <para>The gradients are built from the exact forward value plus terms of value zero (<c>a - a.detach()</c>)
/// whose derivatives are PyTorch's, so the output is the fake-quantized value bit for bit. One difference from
/// PyTorch's LSQ: PyTorch rounds a learned zero point half to even in the forward pass and half up in the backward
/// pass; here both use half to even (they differ only when the zero point is exactly k + 0.5).</para>
/// </remarks>
public sealed class FakeQuantize : nn.Module<Tensor, Tensor>
{
    private readonly IObserver _observer;
    private readonly long[]? _tensorShape;
    private readonly int _freezeAfter;
    private Tensor scale;
    private Tensor zero_point;
    private int _steps;

    /// <summary>Creates a fake-quantize module.</summary>
    /// <param name="spec">The integer type, scheme and granularity to simulate.</param>
    /// <param name="options">Options; null for the defaults (straight-through, min/max observer).</param>
    /// <param name="tensorShape">The shape of the tensors it will see; required for per-channel and per-group
    /// (the number of parameters follows from it), ignored for per-tensor.</param>
    /// <exception cref="ArgumentException">The spec is a floating-point type, does not fit the shape, or the shape is
    /// missing for per-channel/per-group parameters.</exception>
    public FakeQuantize(QuantSpec spec, FakeQuantizeOptions? options = null, long[]? tensorShape = null) : base(nameof(FakeQuantize))
    {
        ArgumentNullException.ThrowIfNull(spec);
        Options = options ?? new FakeQuantizeOptions();
        if (!spec.Type.IsInteger())
            throw new ArgumentException($"Fake quantization simulates integer types; {spec.Type.ToName()} is a plain cast. Use int8, uint8, int4, uint4, int2 or uint2.", nameof(spec));
        if (spec.Granularity is not PerTensor)
        {
            if (tensorShape is null)
                throw new ArgumentException($"{spec.Granularity} fake quantization needs the tensor shape to size its parameters; pass tensorShape.", nameof(tensorShape));
            spec.Validate(tensorShape);
            _tensorShape = (long[])tensorShape.Clone();
        }
        else spec.Validate();
        if (Options.FreezeObserverAfter is <= 0)
            throw new ArgumentException($"FreezeObserverAfter must be positive, got {Options.FreezeObserverAfter}.", nameof(options));
        Spec = spec;
        _freezeAfter = Options.FreezeObserverAfter ?? (Options.Learnable ? 1 : int.MaxValue);
        int? axis = spec.Granularity is PerAxis a ? a.Axis : null;
        int? group = spec.Granularity is PerGroup g ? g.GroupSize : null;
        _observer = ObserverFactory.Create(Options.Observer,
            new ObserverOptions { Type = spec.Type, Scheme = spec.Scheme, ReduceRange = spec.ReduceRange, Axis = axis, GroupSize = group, Name = "fake-quantize input" });

        long[] pshape = spec.Granularity is PerTensor ? [1] : spec.ParameterShape(_tensorShape);
        var (_, zp0) = Primitives.QParams.Choose(0f, 0f, spec.Range, spec.Scheme);
        var s = ones(pshape, float32);
        using var kept = new KeptScalars();
        var z = full(pshape, kept.Of((float)zp0), float32);
        if (Options.Learnable)
        {
            scale = new Parameter(s, requires_grad: true);
            zero_point = new Parameter(z, requires_grad: spec.HasZeroPoint);
            register_parameter(nameof(scale), (Parameter)scale);
            register_parameter(nameof(zero_point), (Parameter)zero_point);
        }
        else
        {
            scale = s;
            zero_point = z;
            register_buffer(nameof(scale), scale);
            register_buffer(nameof(zero_point), zero_point);
        }
    }

    /// <summary>What is simulated.</summary>
    public QuantSpec Spec { get; }

    /// <summary>The options the module was created with.</summary>
    public FakeQuantizeOptions Options { get; }

    /// <summary>True while the observer updates the parameters in training mode.</summary>
    public bool ObserverEnabled { get; set; } = true;

    /// <summary>True (default) to fake-quantize; false passes inputs through unchanged.</summary>
    public bool FakeQuantEnabled { get; set; } = true;

    /// <summary>Training steps (forward calls in training mode) seen so far.</summary>
    public int Steps => _steps;

    /// <summary>The current scales (float32, <see cref="QuantSpec.ParameterShape"/>; <c>[1]</c> per-tensor). A live
    /// view: do not dispose.</summary>
    public Tensor Scale => scale;

    /// <summary>The current zero points (float32, same shape as <see cref="Scale"/>; integral unless learned). A live
    /// view: do not dispose.</summary>
    public Tensor ZeroPoint => zero_point;

    /// <summary>The zero points as used by the arithmetic: rounded half to even and clamped to the range.</summary>
    public int[] IntegerZeroPoints()
    {
        using var _ = no_grad();
        using var kept = new KeptScalars();
        using var z = zero_point.detach().round().clamp(kept.Of(Spec.Range.QMin), kept.Of(Spec.Range.QMax)).to(int32);
        return z.data<int>().ToArray();
    }

    /// <summary>Sets the parameters (and freezes the observer), e.g. to start from known values.</summary>
    /// <param name="scales">Positive scales, one per parameter.</param>
    /// <param name="zeroPoints">Zero points, same count, within the range.</param>
    /// <exception cref="ArgumentException">Counts or values are invalid.</exception>
    public void SetQParams(ReadOnlySpan<float> scales, ReadOnlySpan<int> zeroPoints)
    {
        if (scales.Length != scale.numel() || zeroPoints.Length != scale.numel())
            throw new ArgumentException($"Expected {scale.numel()} scales and zero points, got {scales.Length} and {zeroPoints.Length}.", nameof(scales));
        foreach (float s in scales)
        {
            if (!(s > 0f) || !float.IsFinite(s)) throw new ArgumentException($"Scales must be positive and finite, got {s}.", nameof(scales));
        }
        foreach (int z in zeroPoints)
        {
            if (z < Spec.Range.QMin || z > Spec.Range.QMax)
                throw new ArgumentException($"Zero point {z} is outside [{Spec.Range.QMin}, {Spec.Range.QMax}].", nameof(zeroPoints));
        }
        float[] zf = new float[zeroPoints.Length];
        for (int i = 0; i < zf.Length; i++) zf[i] = zeroPoints[i];
        Assign(scales.ToArray(), zf);
        ObserverEnabled = false;
    }

    /// <inheritdoc/>
    public override Tensor forward(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (_tensorShape is not null) CheckShape(input);
        if (training && ObserverEnabled)
        {
            using (no_grad()) using (var d = input.detach()) _observer.Observe(d);
            var r = _observer.ComputeQParams();
            float[] zf = new float[r.ZeroPoint.Length];
            for (int i = 0; i < zf.Length; i++) zf[i] = r.ZeroPoint[i];
            Assign(r.Scale, zf);
        }
        if (training && ++_steps >= _freezeAfter) ObserverEnabled = false;
        if (!FakeQuantEnabled) return input.alias();
        if (input.dtype != float32)
            throw new ArgumentException($"Fake quantization takes float32 inputs, got {input.dtype}; convert with .to(float32).", nameof(input));
        if (Options.Learnable)
        {
            using var _ = no_grad();
            using var bounds = new KeptScalars();
            scale.clamp_(bounds.Of(Primitives.QParams.Epsilon), bounds.Of(float.MaxValue)); // keep the learned scale positive, as PyTorch
        }

        using var scope = NewDisposeScope();
        using var kept = new KeptScalars();
        var (x, s, z) = Broadcast(input);
        Scalar qmin = kept.Of(Spec.Range.QMin), qmax = kept.Of(Spec.Range.QMax);
        Tensor fq, mask, sd, zd, inv;
        using (no_grad())
        {
            sd = s.detach();
            zd = z.detach().round().clamp(qmin, qmax);
            inv = sd.reciprocal();
            var qr = KeptScalars.Plus((x.detach() * inv).round(), zd);
            mask = qr.ge(qmin).logical_and(qr.le(qmax));
            fq = (qr.clamp(qmin, qmax) - zd) * sd;
        }
        Tensor dScale = fq, dZero = fq;
        if (Options.Learnable)
        {
            // PyTorch's LSQ backward rounds z + x * (1/s) (the sum first), its forward and STE mask round x * (1/s).
            Scalar gf = kept.Of(Options.GradScaling ? 1f / MathF.Sqrt((float)input.numel() * Spec.Range.QMax) : 1f);
            using (no_grad())
            {
                var qb = KeptScalars.Plus(x.detach() * inv, zd).round();
                mask = qb.ge(qmin).logical_and(qb.le(qmax));
                var outside = where(qb.lt(qmin), KeptScalars.Plus(zd.negative(), qmin), KeptScalars.Plus(zd.negative(), qmax));
                dScale = where(mask, (fq - x.detach()) * inv, outside) * gf;
                dZero = where(mask, zeros_like(sd), -sd * gf);
            }
        }
        var y = fq;
        if (x.requires_grad) y = KeptScalars.Plus(y, ZeroWithGradient(x * mask.to(float32)));
        if (Options.Learnable)
        {
            y = KeptScalars.Plus(y, ZeroWithGradient(s * dScale));
            if (zero_point.requires_grad) y = KeptScalars.Plus(y, ZeroWithGradient(z * dZero));
        }
        return y.reshape(input.shape).MoveToOuterDisposeScope();
    }

    // a - a.detach(): value exactly 0 (for finite a), derivative that of a.
    private static Tensor ZeroWithGradient(Tensor a) => a - a.detach();

    // Views of the input and the parameters that broadcast against each other.
    private (Tensor X, Tensor S, Tensor Z) Broadcast(Tensor input)
    {
        switch (Spec.Granularity)
        {
            case PerAxis a:
                long[] view = new long[input.dim()];
                Array.Fill(view, 1L);
                view[a.Axis] = input.shape[a.Axis];
                return (input, scale.reshape(view), zero_point.reshape(view));
            case PerGroup g:
                long[] grouped = [.. input.shape[..^1], input.shape[^1] / g.GroupSize, g.GroupSize];
                return (input.reshape(grouped), scale.unsqueeze(-1), zero_point.unsqueeze(-1));
            default:
                return (input, scale, zero_point);
        }
    }

    private void CheckShape(Tensor input)
    {
        if (!input.shape.SequenceEqual(_tensorShape!))
            throw new ArgumentException(
                $"This fake-quantize module was sized for shape {QuantSpec.FormatShape(_tensorShape)} ({Spec.Granularity}), got {QuantSpec.FormatShape(input.shape)}.", nameof(input));
    }

    private void Assign(float[] scales, float[] zeroPoints)
    {
        using var _ = no_grad();
        using var s = tensor(scales, scale.shape, float32);
        using var z = tensor(zeroPoints, zero_point.shape, float32);
        scale.copy_(s);
        zero_point.copy_(z);
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (disposing) _observer.Reset();
        base.Dispose(disposing);
    }
}
