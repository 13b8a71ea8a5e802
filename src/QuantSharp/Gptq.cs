using QuantSharp.Calibration;
using QuantSharp.Modules;
using QuantSharp.Primitives;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp;

/// <summary>Settings of <see cref="Gptq"/> (the names and defaults of the GPTQ paper's reference implementation).</summary>
public sealed record GptqOptions
{
    /// <summary>Damping added to the Hessian's diagonal, as a fraction of its mean diagonal (default 0.01).</summary>
    public double DampingFraction { get; init; } = 0.01;

    /// <summary>Columns processed together before the error is propagated to the rest of the matrix (default 128; with
    /// per-group weights rounded up to a multiple of the group size, so a group never spans two blocks).</summary>
    public int BlockSize { get; init; } = 128;

    /// <summary>Quantize columns in order of decreasing Hessian diagonal (activation order, <c>act_order</c>). The
    /// permutation is undone for storage; per-group scales then come from each group's original columns before any
    /// update ("static groups"), so every group keeps one scale over the columns it stores.</summary>
    public bool ActOrder { get; init; }

    internal void Validate()
    {
        if (!(DampingFraction > 0) || DampingFraction > 1)
            throw new ArgumentException($"\"gptq.damping\" (GptqOptions.DampingFraction) must be in (0, 1] (typically 0.01), got {DampingFraction}.");
        if (BlockSize < 1)
            throw new ArgumentException($"\"gptq.block_size\" (GptqOptions.BlockSize) must be at least 1 (typically 128), got {BlockSize}.");
    }
}

/// <summary>
/// GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers"):
/// post-training weight quantization that rounds one input column at a time and spreads each column's rounding error
/// over the columns not yet quantized, weighted by the inverse Hessian <c>H = 2 X Xᵀ / n</c> of the layer's calibration
/// inputs, which lowers the layer's output error <c>‖W X - Q X‖</c> compared with round-to-nearest.
/// </summary>
/// <remarks>
/// <para>Layers: <c>Linear</c>, and <c>Conv2d</c> (one group, zero padding) through its <c>[out, in*kh*kw]</c> matrix
/// with unfolded inputs. Other selected layers (embeddings, Conv1d, grouped convolutions, float16 targets) are
/// quantized by round-to-nearest as <see cref="Quantizer.Quantize{T}(T, QuantizationRecipe, Func{T}?, IEnumerable{Tensor}?, bool, QuantSpec?, int?, ValidationFailureMode?, IProgress{CalibrationProgress}?)"/> does.</para>
/// <para>Layers are processed one after another (the pipeline's sequential quantize stage, in the model's layer order);
/// each sees the inputs produced by the layers before it already quantized and installed (sequential GPTQ).</para>
/// <para>Scales and zero points come from the min/max of each row, group or tensor as in round-to-nearest (for a group,
/// of its columns after the updates from the columns before it, as the reference implementation does; with
/// <see cref="GptqOptions.ActOrder"/>, of its original columns). The stored integers are
/// <c>clamp(round_half_even(x * (1/s)) + z)</c> of the updated weights, the same arithmetic as round-to-nearest, so with
/// an identity-like Hessian (no correlation between inputs) GPTQ gives exactly round-to-nearest's file.</para>
/// <para>The result is an ordinary quantized model (the quantized modules, <see cref="Quantizer.Save"/>, the same
/// checkpoint format); the per-layer entries record <c>"observer": "gptq"</c> for the layers GPTQ quantized and the
/// recipe's weight observer for the layers it rounded to nearest.</para>
/// <para>Validation: a layer GPTQ quantized is judged by its output error, the quantity GPTQ minimizes, not by its weight
/// SQNR: the SQNR of <c>X·Wqᵀ</c> against <c>X·Wᵀ</c> over its calibration inputs (<see cref="Validation.LayerReport.CalibrationOutputSqnrDb"/>,
/// computed from the second moment GPTQ already has) must reach the weight type's threshold
/// (<see cref="ValidationPolicy.ThresholdFor"/>; for uncorrelated inputs of equal variance the two SQNRs coincide, so the
/// same number keeps its meaning). Layers rounded to nearest keep the weight SQNR gate.</para>
/// </remarks>
public static class Gptq
{
    /// <summary>The observer name recorded in the file for weights GPTQ quantized.</summary>
    public const string ObserverName = "gptq";

    /// <summary>
    /// Quantizes <paramref name="model"/> (a copy, or the model itself with <paramref name="inPlace"/>) with
    /// <paramref name="recipe"/>'s weight settings, rounding the weights of its <c>Linear</c>/<c>Conv2d</c> layers by GPTQ.
    /// </summary>
    /// <typeparam name="T">The model type.</typeparam>
    /// <param name="model">The float model (not modified unless <paramref name="inPlace"/>).</param>
    /// <param name="recipe">A weight-only recipe (integer types for the GPTQ layers: int8/uint8/int4/uint4/int2/uint2,
    /// per-tensor, per-channel or group:G).</param>
    /// <param name="calibrationBatches">Calibration inputs (the model is run on each once per GPTQ layer). 128 to 1024
    /// samples are typical.</param>
    /// <param name="factory">Builds a fresh float model of the same architecture (needed unless <paramref name="inPlace"/>).</param>
    /// <param name="inPlace">Quantize <paramref name="model"/> itself.</param>
    /// <param name="options">GPTQ settings (null: defaults).</param>
    /// <returns>The quantized model with the same report as <see cref="Quantizer"/>'s (validation included).</returns>
    /// <exception cref="RecipeException">An invalid recipe, or a recipe with activations.</exception>
    /// <exception cref="ModelQuantizationException">A layer's inputs give no usable Hessian, or a layer GPTQ cannot quantize.</exception>
    /// <exception cref="ArgumentException">Invalid options, no calibration data, or no factory without <paramref name="inPlace"/>.</exception>
    public static QuantizationResult<T> Quantize<T>(T model, QuantizationRecipe recipe, IEnumerable<Tensor> calibrationBatches,
        Func<T>? factory = null, bool inPlace = false, GptqOptions? options = null) where T : nn.Module
    {
        ArgumentNullException.ThrowIfNull(calibrationBatches);
        return Quantize(model, recipe, calibrationBatches.Select(CalibrationBatch.Of).ToList(), factory, inPlace, options);
    }

    /// <summary>As <see cref="Quantize{T}(T, QuantizationRecipe, IEnumerable{Tensor}, Func{T}?, bool, GptqOptions?)"/>, for a model
    /// of any forward signature calibrated by <see cref="CalibrationBatch"/> callbacks.</summary>
    /// <typeparam name="T">The model type.</typeparam>
    /// <param name="model">The float model.</param>
    /// <param name="recipe">A weight-only recipe.</param>
    /// <param name="calibration">The calibration batches.</param>
    /// <param name="factory">Builds a fresh float model of the same architecture (needed unless <paramref name="inPlace"/>).</param>
    /// <param name="inPlace">Quantize <paramref name="model"/> itself.</param>
    /// <param name="options">GPTQ settings.</param>
    /// <returns>The quantized model and its report.</returns>
    public static QuantizationResult<T> Quantize<T>(T model, QuantizationRecipe recipe, IReadOnlyList<CalibrationBatch> calibration,
        Func<T>? factory = null, bool inPlace = false, GptqOptions? options = null) where T : nn.Module
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(recipe);
        ArgumentNullException.ThrowIfNull(calibration);
        options ??= new GptqOptions();
        options.Validate();
        if (recipe.Activations is not null || recipe.DynamicActivations)
            throw new RecipeException("GPTQ quantizes weights only: set recipe.Activations = null and DynamicActivations = false.");
        if (calibration.Count == 0)
            throw new ArgumentException("GPTQ needs calibration inputs (the Hessian of each layer's inputs): pass a few batches of real inputs, e.g. 256 training images.", nameof(calibration));
        // The pipeline's sequential quantize stage: layer by layer, each on the inputs of the layers already quantized,
        // with every given batch (not only the recipe's CalibrationSamples).
        long samples = calibration.Sum(b => b.Samples);
        return Quantizer.QuantizeCore(model, recipe with { Method = QuantizationMethod.Gptq, GptqOptions = options }, factory, calibration, inPlace,
            null, (int)Math.Min(samples, int.MaxValue), null, null);
    }

    /// <summary>Whether GPTQ can quantize this layer's weight (a Linear, or a single-group zero-padded Conv2d, with an
    /// integer spec per tensor, per row or per group), else round-to-nearest does.</summary>
    internal static bool Solvable(nn.Module layer, QuantSpec spec) =>
        spec.Type.IsInteger() && spec.Granularity is not PerAxis { Axis: not 0 }
        && layer switch
        {
            TorchSharp.Modules.Linear => true,
            TorchSharp.Modules.Conv2d c => c.groups == 1 && QuantizedConv.Unsupported(c) is null,
            _ => false,
        };

    /// <summary>The layer's inputs as rows <c>[n, K]</c> over the reduction axis of its weight matrix: a Linear's last
    /// dimension, a Conv2d's unfolded <c>in*kh*kw</c> patches (zero padding, stride and dilation as the layer's).</summary>
    internal static Tensor Columns(nn.Module module, Tensor input)
    {
        if (module is TorchSharp.Modules.Conv2d conv)
        {
            QuantizedConv.ResolvePadding(conv, out long[] padding);
            var stride = QuantizedConv.Expand(conv.stride, 2);
            var dilation = QuantizedConv.Expand(conv.dilation, 2);
            var x = input.dim() == 3 ? input.unsqueeze(0) : input;
            var patches = nn.functional.unfold(x, (conv.kernel_size[0], conv.kernel_size[1]), (dilation[0], dilation[1]), (padding[0], padding[1]), (stride[0], stride[1]));
            return patches.transpose(1, 2).reshape(-1, patches.shape[1]);
        }
        return input.reshape(-1, input.shape[^1]);
    }

    /// <summary>
    /// GPTQ on one weight matrix <paramref name="w"/> <c>[rows, K]</c> with Hessian <paramref name="hessian"/> <c>[K, K]</c>:
    /// the quantized parts (canonical, over <c>[rows, K]</c>) and their dequantized values.
    /// </summary>
    internal static (QuantizedTensor Parts, Tensor Dequantized) Solve(Tensor w, Tensor hessian, QuantSpec spec, GptqOptions options)
    {
        options.Validate();
        using var scope = NewDisposeScope();
        long rows = w.shape[0], cols = w.shape[1];
        int groupSize = spec.Granularity is PerGroup g ? g.GroupSize : 0;
        if (groupSize > 0 && cols % groupSize != 0)
            throw new ArgumentException($"Group size {groupSize} does not divide the {cols} columns of the weight matrix.", nameof(spec));
        var range = spec.Range;
        var W = w.to(ScalarType.Float32).clone();
        var H = hessian.to(ScalarType.Float64).clone();

        // Inputs that are always zero: their columns do not affect the output; give them a unit diagonal (no error spread).
        using var kept = new KeptScalars();
        var dead = H.diagonal().eq(kept.Of(0));
        KeptScalars.PlusInPlace(H, torch.diag(dead.to(ScalarType.Float64)));

        long[] perm = options.ActOrder
            ? H.diagonal().argsort(descending: true).data<long>().ToArray()
            : Enumerable.Range(0, (int)cols).Select(i => (long)i).ToArray();
        if (options.ActOrder)
        {
            var p = torch.tensor(perm);
            W = W.index_select(1, p);
            H = H.index_select(0, p).index_select(1, p);
        }

        var U = InverseCholesky(H, options.DampingFraction).to(ScalarType.Float32);

        // Scales: per tensor or row from the original matrix; per group when the group starts (or all at once with act_order).
        int channels = spec.Granularity switch { PerTensor => 1, PerAxis => (int)rows, _ => (int)(rows * (cols / groupSize)) };
        var scale = new float[channels];
        var zeroPoint = new int[channels];
        int groups = groupSize > 0 ? (int)(cols / groupSize) : 1;
        var original = w.to(ScalarType.Float32);
        switch (spec.Granularity)
        {
            case PerTensor:
                ChooseRows(original.reshape(1, -1), range, spec.Scheme, scale, zeroPoint, 0, 1);
                break;
            case PerAxis:
                ChooseRows(original, range, spec.Scheme, scale, zeroPoint, 0, 1);
                break;
            default:
                if (options.ActOrder)
                    for (int gi = 0; gi < groups; gi++)
                        ChooseRows(original.narrow(1, gi * groupSize, groupSize), range, spec.Scheme, scale, zeroPoint, gi, groups);
                break;
        }
        var scaleT = torch.tensor(scale).reshape(spec.Granularity is PerTensor ? 1 : rows, -1).expand(rows, -1).contiguous();
        var zeroT = torch.tensor(zeroPoint).to(ScalarType.Float32).reshape(spec.Granularity is PerTensor ? 1 : rows, -1).expand(rows, -1).contiguous();

        var rounded = torch.zeros(rows, cols); // the values that were rounded, in original column order
        int block = groupSize > 0 && !options.ActOrder ? Math.Max(groupSize, options.BlockSize / groupSize * groupSize) : options.BlockSize;
        for (long i1 = 0; i1 < cols; i1 += block)
        {
            using var blockScope = NewDisposeScope();
            long count = Math.Min(block, cols - i1);
            var W1 = W.narrow(1, i1, count); // a view: updates go into W
            var U1 = U.narrow(0, i1, count).narrow(1, i1, count);
            var d = U1.diagonal();
            var err1 = torch.zeros(rows, count);
            for (long i = 0; i < count; i++)
            {
                using var columnScope = NewDisposeScope();
                long orig = perm[i1 + i];
                int gi = groupSize > 0 ? (int)(orig / groupSize) : 0;
                if (groupSize > 0 && !options.ActOrder && orig % groupSize == 0)
                {
                    // The group's columns are all in this block (the block is a multiple of the group) and up to date.
                    ChooseRows(W.narrow(1, orig, groupSize), range, spec.Scheme, scale, zeroPoint, gi, groups);
                    var rowsOf = Enumerable.Range(0, (int)rows).Select(r => r * groups + gi).ToArray();
                    scaleT.select(1, gi).copy_(torch.tensor(rowsOf.Select(k => scale[k]).ToArray()));
                    zeroT.select(1, gi).copy_(torch.tensor(rowsOf.Select(k => (float)zeroPoint[k]).ToArray()));
                }
                var col = W1.select(1, i);
                rounded.select(1, orig).copy_(col);
                var s = spec.Granularity is PerTensor ? scaleT.select(1, 0) : scaleT.select(1, gi);
                var z = spec.Granularity is PerTensor ? zeroT.select(1, 0) : zeroT.select(1, gi);
                // Round-to-nearest's arithmetic: clamp(round_half_even(x * (1/s)) + z), then (q - z) * s.
                var deq = WeightQuantizer.FakeQuantize(col, s, z, range);
                var err = (col - deq) / d[i];
                if (i + 1 < count)
                    W1.narrow(1, i + 1, count - i - 1).sub_(err.unsqueeze(1).mm(U1.narrow(0, i, 1).narrow(1, i + 1, count - i - 1)));
                err1.select(1, i).copy_(err);
            }
            if (i1 + count < cols)
                W.narrow(1, i1 + count, cols - i1 - count).sub_(err1.mm(U.narrow(0, i1, count).narrow(1, i1 + count, cols - i1 - count)));
        }

        var parts = QuantizedTensor.QuantizeWith(rounded, spec, scale, spec.HasZeroPoint ? zeroPoint : null);
        try
        {
            return (parts, parts.Dequantize().MoveToOuterDisposeScope());
        }
        catch
        {
            parts.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The SQNR (dB) of a layer's output <c>X·Qᵀ</c> against <c>X·Wᵀ</c> over the inputs whose second moment is
    /// <paramref name="hessian"/> (<c>H ∝ Σ xᵀx</c>, the statistic GPTQ minimizes with): <c>10 log10(tr(W H Wᵀ) / tr(E H Eᵀ))</c>
    /// with <c>E = W - Q</c>, in float64; the scale of H cancels. +∞ when the output is exact.
    /// </summary>
    /// <param name="w">The float weight matrix <c>[rows, K]</c>.</param>
    /// <param name="dequantized">The quantized weight dequantized, <c>[rows, K]</c>.</param>
    /// <param name="hessian">The second moment of the layer's inputs <c>[K, K]</c>.</param>
    internal static double OutputSqnrDb(Tensor w, Tensor dequantized, Tensor hessian)
    {
        using var scope = NewDisposeScope();
        var h = hessian.to(ScalarType.Float64);
        var w64 = w.to(ScalarType.Float64);
        var e = w64 - dequantized.to(ScalarType.Float64);
        double signal = w64.mm(h).mul(w64).sum().item<double>();
        double noise = e.mm(h).mul(e).sum().item<double>();
        return noise <= 0 ? double.PositiveInfinity : 10 * Math.Log10(signal / noise);
    }

    /// <summary>The upper Cholesky factor of <c>(H + λI)⁻¹</c> with <c>λ = fraction * mean(diag H)</c> (float64), raising
    /// the damping tenfold (up to three times) when H is not positive definite.</summary>
    private static Tensor InverseCholesky(Tensor h, double fraction)
    {
        double mean = h.diagonal().mean().item<double>();
        long k = h.shape[0];
        for (int attempt = 0; attempt < 4; attempt++, fraction *= 10)
        {
            using var scope = NewDisposeScope();
            using var kept = new KeptScalars();
            var damped = KeptScalars.Plus(h, eye(k, dtype: ScalarType.Float64).mul(kept.Of(fraction * mean)));
            var (lower, info) = linalg.cholesky_ex(damped);
            if (info.item<int>() != 0) continue;
            var inverse = lower.cholesky_inverse();
            var (upperT, info2) = linalg.cholesky_ex(inverse);
            if (info2.item<int>() != 0) continue;
            return upperT.t().contiguous().MoveToOuterDisposeScope();
        }
        throw new ModelQuantizationException("GPTQ: the Hessian of a layer's calibration inputs is not positive definite even with 1000x the damping; " +
            "use more calibration samples or a larger GptqOptions.DampingFraction.");
    }

    /// <summary>Scales and zero points from the min/max of each row of <paramref name="x"/> (<c>[rows, m]</c>, float32),
    /// written at <c>row * stride + offset</c>: QParams.Choose, as round-to-nearest's min/max observer.</summary>
    private static void ChooseRows(Tensor x, QuantRange range, QuantScheme scheme, float[] scale, int[] zeroPoint, int offset, int stride)
    {
        using var scope = NewDisposeScope();
        var min = x.amin(1).contiguous().data<float>().ToArray();
        var max = x.amax(1).contiguous().data<float>().ToArray();
        for (int r = 0; r < min.Length; r++)
            (scale[r * stride + offset], zeroPoint[r * stride + offset]) = QParams.Choose(min[r], max[r], range, scheme);
    }
}

/// <summary>GPTQ as the pipeline's quantize stage (<see cref="Pipeline.IWeightQuantizer"/>): sequential, with the second
/// moment of each layer's (unfolded) input; layers it cannot solve are rounded to nearest with the recipe's observer (and
/// recorded with that observer). A solved layer is validated by its calibration output SQNR, the quantity GPTQ lowers,
/// instead of its weight SQNR (GPTQ moves weights away from their float values on purpose).</summary>
internal sealed class GptqWeightQuantizer(GptqOptions options, string observer) : Pipeline.IWeightQuantizer
{
    private readonly Pipeline.RoundToNearest _fallback = new(observer);

    /// <inheritdoc/>
    public string Method => Gptq.ObserverName;

    /// <inheritdoc/>
    public bool Sequential => true;

    /// <inheritdoc/>
    public Pipeline.IInputStatistics? CreateStatistics(Pipeline.PlannedWeight weight, nn.Module layer) =>
        Gptq.Solvable(layer, weight.Spec) ? new LayerInputMoment(layer, QuantSpec.Product(weight.Shape.AsSpan(1))) : null;

    /// <inheritdoc/>
    public string MethodFor(Pipeline.IInputStatistics? statistics) => statistics is LayerInputMoment ? Method : _fallback.Method;

    /// <inheritdoc/>
    public double? CalibrationOutputSqnrDb(Tensor values, QuantizedWeight quantized, Pipeline.IInputStatistics? statistics)
    {
        if (statistics is not LayerInputMoment moment) return null; // rounded to nearest: the weight SQNR gate
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        using var h = moment.Hessian();
        return Gptq.OutputSqnrDb(values.detach().reshape(values.shape[0], -1), quantized.Dequantize().reshape(values.shape[0], -1), h);
    }

    /// <inheritdoc/>
    public QuantizedTensor Quantize(Pipeline.PlannedWeight weight, Tensor values, Pipeline.IInputStatistics? statistics)
    {
        if (statistics is not LayerInputMoment moment) return _fallback.Quantize(weight, values, statistics);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var matrix = values.detach().reshape(values.shape[0], -1).to(ScalarType.Float32);
        using var h = moment.Hessian();
        var (parts, dequantized) = Gptq.Solve(matrix, h, weight.Spec, options);
        dequantized.Dispose();
        return parts;
    }

    /// <summary>The second moment of a Linear's input, or of a Conv2d's unfolded input patches.</summary>
    private sealed class LayerInputMoment(nn.Module layer, long features) : Pipeline.IInputStatistics
    {
        private readonly Pipeline.SecondMomentStatistics _moment = new(features);

        public long Rows => _moment.Rows;

        public void Observe(Tensor input)
        {
            using var scope = NewDisposeScope();
            _moment.Observe(Gptq.Columns(layer, input));
        }

        public Tensor Hessian() => _moment.Hessian();

        public void Dispose() => _moment.Dispose();
    }
}
