using System.Numerics;
using System.Runtime.InteropServices;
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
        var x = original.to(ScalarType.Float64);
        var d = dequantized.to(ScalarType.Float64);
        _signal += x.square().sum().item<double>();
        _noise += (x - d).square().sum().item<double>();
    }

    /// <summary>Adds a chunk given as float32 spans (vectorized; float32 partial sums over blocks of 4096, then double).</summary>
    public void Add(ReadOnlySpan<float> original, ReadOnlySpan<float> dequantized)
    {
        if (dequantized.Length != original.Length) throw new ArgumentException("Lengths differ.", nameof(dequantized));
        const int Block = 4096;
        for (int start = 0; start < original.Length; start += Block)
        {
            var x = original.Slice(start, Math.Min(Block, original.Length - start));
            var d = dequantized.Slice(start, x.Length);
            var vs = Vector<float>.Zero;
            var vn = Vector<float>.Zero;
            int i = 0;
            if (Vector.IsHardwareAccelerated)
            {
                var xv = MemoryMarshal.Cast<float, Vector<float>>(x);
                var dv = MemoryMarshal.Cast<float, Vector<float>>(d);
                for (int k = 0; k < xv.Length; k++)
                {
                    var e = xv[k] - dv[k];
                    vs += xv[k] * xv[k];
                    vn += e * e;
                }
                i = xv.Length * Vector<float>.Count;
            }
            double signal = Vector.Sum(vs), noise = Vector.Sum(vn);
            for (; i < x.Length; i++)
            {
                double e = x[i] - d[i];
                signal += (double)x[i] * x[i];
                noise += e * e;
            }
            _signal += signal;
            _noise += noise;
        }
    }

    /// <summary>Σx².</summary>
    public double Signal => _signal;

    /// <summary>Σ(x − x̂)².</summary>
    public double Noise => _noise;

    /// <summary>The SQNR in dB; +∞ when the round trip is exact.</summary>
    public double Db => _noise == 0 ? double.PositiveInfinity : 10 * Math.Log10(_signal / _noise);
}

/// <summary>Checks on quantized parts (the range test of validation).</summary>
internal static class TensorChecks
{
    /// <summary>The smallest and largest stored integer of quantized data (4-bit values unpacked, sign-extended).</summary>
    public static (int Min, int Max) IntegerRange(Tensor data, QuantType type)
    {
        using var scope = NewDisposeScope();
        if (data.numel() == 0) return (0, 0);
        Tensor values;
        if (type.Bits() == 4)
        {
            var lo = data.bitwise_and(0xF).to(ScalarType.Int16);
            var hi = data.bitwise_right_shift(4).to(ScalarType.Int16);
            values = cat([lo.flatten(), hi.flatten()]);
            if (type.IsSigned()) values = values - values.ge(8).to(ScalarType.Int16) * 16;
        }
        else values = data;
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
        {
            long bad = scale.isfinite().logical_not().logical_or(scale.le(0)).sum().item<long>();
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
        if (x.dtype == ScalarType.Float32 && x.is_contiguous()) return NonFiniteCount(MemoryMarshal.Cast<byte, float>(x.bytes));
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
