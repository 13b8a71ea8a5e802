using System.Numerics;
using System.Runtime.InteropServices;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Validation;

/// <summary>
/// Accumulates the signal-to-quantization-noise ratio over chunks of a tensor, in double precision:
/// SQNR = 10·log10(Σx² / Σ(x − x̂)²) = 20·log10(‖x‖ / ‖x − x̂‖), as <c>torch.ao.ns.fx.utils.compute_sqnr</c>.
/// </summary>
internal sealed class SqnrAccumulator
{
    private double _signal, _noise;

    /// <summary>Adds a chunk: the original values and the dequantized ones (same shape; any float dtype).</summary>
    public void Add(Tensor original, Tensor dequantized)
    {
        using var scope = NewDisposeScope();
        using var kept = new KeptScalars();
        var x = original.to(ScalarType.Float64);
        var d = dequantized.to(ScalarType.Float64);
        // Equal values (also equal infinities) add no noise.
        var e = torch.where(x.eq(d), torch.zeros_like(x), x - d);
        _signal += x.pow(kept.Of(2)).sum().item<double>();
        _noise += e.pow(kept.Of(2)).sum().item<double>();
    }

    /// <summary>
    /// Adds a chunk given as float32 spans. Squares and sums are taken in float64: a float32 square underflows to 0
    /// below about 1e-23 (so weights near 1e-42 that quantize to zeros would look exact) and overflows above 1.8e19.
    /// </summary>
    public void Add(ReadOnlySpan<float> original, ReadOnlySpan<float> dequantized)
    {
        if (dequantized.Length != original.Length) throw new ArgumentException("Lengths differ.", nameof(dequantized));
        int i = 0;
        double signal = 0, noise = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var xv = MemoryMarshal.Cast<float, Vector<float>>(original);
            var dv = MemoryMarshal.Cast<float, Vector<float>>(dequantized);
            Vector<double> vs = Vector<double>.Zero, vn = Vector<double>.Zero;
            for (int k = 0; k < xv.Length; k++)
            {
                Vector.Widen(xv[k], out var x0, out var x1);
                Vector.Widen(dv[k], out var d0, out var d1);
                var e0 = Vector.ConditionalSelect(Vector.Equals(x0, d0), Vector<double>.Zero, x0 - d0);
                var e1 = Vector.ConditionalSelect(Vector.Equals(x1, d1), Vector<double>.Zero, x1 - d1);
                vs += x0 * x0 + x1 * x1;
                vn += e0 * e0 + e1 * e1;
            }
            signal = Vector.Sum(vs);
            noise = Vector.Sum(vn);
            i = xv.Length * Vector<float>.Count;
        }
        for (; i < original.Length; i++)
        {
            double x = original[i], d = dequantized[i];
            double e = x == d ? 0 : x - d;
            signal += x * x;
            noise += e * e;
        }
        _signal += signal;
        _noise += noise;
    }

    /// <summary>Σx².</summary>
    public double Signal => _signal;

    /// <summary>Σ(x − x̂)².</summary>
    public double Noise => _noise;

    /// <summary>The SQNR in dB (see <see cref="ToDb"/>).</summary>
    public double Db => ToDb(_signal, _noise);

    /// <summary>
    /// 10·log10(signal / noise): +∞ only when the round trip is exact (noise 0); −∞ when the noise is infinite
    /// (a value became infinite) or the signal is 0 with noise; NaN when a sum is NaN.
    /// </summary>
    public static double ToDb(double signal, double noise)
    {
        if (double.IsNaN(signal) || double.IsNaN(noise)) return double.NaN;
        if (noise == 0) return double.PositiveInfinity;
        if (double.IsPositiveInfinity(noise)) return double.NegativeInfinity;
        return 10 * Math.Log10(signal / noise);
    }
}

/// <summary>Checks on quantized parts (the range test of validation).</summary>
internal static class TensorChecks
{
    /// <summary>The smallest and largest stored integer of quantized data (4-bit and 2-bit values unpacked, sign-extended).</summary>
    public static (int Min, int Max) IntegerRange(Tensor data, QuantType type)
    {
        using var scope = NewDisposeScope();
        if (data.numel() == 0) return (0, 0);
        var values = type.Bits() < 8 ? Modules.WeightQuantizer.Unpack(data.reshape(1, -1), type) : data;
        return (values.min().to(ScalarType.Int32).item<int>(), values.max().to(ScalarType.Int32).item<int>());
    }

    /// <summary>Problems with a quantized tensor's parts, or an empty list.</summary>
    public static List<string> CheckParts(string name, QuantType type, QuantRange? range, Tensor data, Tensor? scale, Tensor? zeroPoint)
    {
        var problems = new List<string>();
        if (!type.IsInteger() || range is null) return problems;
        var r = range.Value;
        // Every stored value of the full range of its type is in range by construction (an int8 holds -128..127, a
        // nibble 0..15 or -8..7); only a reduced range needs a scan.
        if (r.QMin != type.QMin() || r.QMax != type.QMax())
        {
            var (min, max) = IntegerRange(data, type);
            if (min < r.QMin || max > r.QMax)
                problems.Add($"'{name}': stored integers span [{min}, {max}], outside [{r.QMin}, {r.QMax}].");
        }
        if (scale is null) { problems.Add($"'{name}': no scale."); return problems; }
        using (var scope = NewDisposeScope())
        using (var kept = new KeptScalars())
        {
            long bad = scale.isfinite().logical_not().logical_or(scale.le(kept.Of(0))).sum().item<long>();
            if (bad > 0) problems.Add($"'{name}': {bad} of {scale.numel()} scales are not finite and positive.");
            if (zeroPoint is not null && zeroPoint.numel() > 0)
            {
                int zmin = zeroPoint.min().item<int>(), zmax = zeroPoint.max().item<int>();
                if (zmin < r.QMin || zmax > r.QMax)
                    problems.Add($"'{name}': zero points span [{zmin}, {zmax}], outside [{r.QMin}, {r.QMax}].");
            }
        }
        return problems;
    }

    /// <summary>Number of NaN or infinite values.</summary>
    public static long NonFiniteCount(Tensor x)
    {
        if (x.dtype == ScalarType.Float32 && x.is_contiguous() && x.numel() * sizeof(float) <= int.MaxValue)
            return NonFiniteCount(MemoryMarshal.Cast<byte, float>(x.bytes));
        using var scope = NewDisposeScope();
        return x.isfinite().logical_not().sum().item<long>();
    }

    /// <summary>Number of NaN or infinite values (x - x is 0 exactly for finite x).</summary>
    public static long NonFiniteCount(ReadOnlySpan<float> x)
    {
        int i = 0;
        bool any = false;
        if (Vector.IsHardwareAccelerated)
        {
            var xv = MemoryMarshal.Cast<float, Vector<float>>(x);
            for (int k = 0; k < xv.Length && !any; k++)
                any = !Vector.EqualsAll(xv[k] - xv[k], Vector<float>.Zero);
            i = any ? 0 : xv.Length * Vector<float>.Count;
        }
        long count = 0;
        for (; i < x.Length; i++)
        {
            if (!float.IsFinite(x[i])) count++;
        }
        return count;
    }

    /// <summary>Smallest and largest value of finite data (NaN-free: check <see cref="NonFiniteCount(ReadOnlySpan{float})"/> first).</summary>
    public static (float Min, float Max) MinMax(ReadOnlySpan<float> x)
    {
        float min = float.PositiveInfinity, max = float.NegativeInfinity;
        int i = 0;
        if (Vector.IsHardwareAccelerated && x.Length >= Vector<float>.Count)
        {
            var xv = MemoryMarshal.Cast<float, Vector<float>>(x);
            var vmin = xv[0];
            var vmax = xv[0];
            for (int k = 1; k < xv.Length; k++)
            {
                vmin = Vector.Min(vmin, xv[k]);
                vmax = Vector.Max(vmax, xv[k]);
            }
            for (int l = 0; l < Vector<float>.Count; l++)
            {
                min = MathF.Min(min, vmin[l]);
                max = MathF.Max(max, vmax[l]);
            }
            i = xv.Length * Vector<float>.Count;
        }
        for (; i < x.Length; i++)
        {
            min = MathF.Min(min, x[i]);
            max = MathF.Max(max, x[i]);
        }
        return (min, max);
    }
}
