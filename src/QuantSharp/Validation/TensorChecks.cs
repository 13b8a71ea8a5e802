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
        var (min, max) = IntegerRange(data, type);
        if (min < r.QMin || max > r.QMax)
            problems.Add($"'{name}': stored integers span [{min}, {max}], outside [{r.QMin}, {r.QMax}].");
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
        using var scope = NewDisposeScope();
        return x.isfinite().logical_not().sum().item<long>();
    }
}
