using QuantSharp.Observers;
using static QuantSharp.Tests.Observers.ReferenceObserverSpecs;

namespace QuantSharp.Tests.Observers;

/// <summary>Our observers against PyTorch 2.11's and ONNX Runtime 1.30's numbers in ../shared/reference.</summary>
public class ObserverParityTests
{
    [Theory]
    [MemberData(nameof(ReferenceObserverSpecs.CaseTags), MemberType = typeof(ReferenceObserverSpecs))]
    public void MatchesPyTorchBitForBit(string caseName, string tag)
    {
        var expected = Reference.Json.GetProperty("cases").GetProperty(caseName).GetProperty("observers").GetProperty(tag);
        var (name, options, feeding) = For(tag);
        var observer = ObserverFactory.Create(name, options with { Name = $"{caseName}/input" });
        using (var file = Reference.OpenTensors())
        using (var input = file.ReadTensor($"{caseName}/input"))
            Feed(observer, input, feeding);

        var result = observer.ComputeQParams();
        float[] expScale = Floats(expected.GetProperty("scale"));
        int[] expZero = Ints(expected.GetProperty("zero_point"));
        float[] expMin = Floats(expected.GetProperty("min_val"));
        float[] expMax = Floats(expected.GetProperty("max_val"));
        Assert.Equal(expMin, result.Min);
        Assert.Equal(expMax, result.Max);
        // Bit-equal float32 scales: compare the bits, so that e.g. 0 and -0 or a 1-ulp drift both fail.
        Assert.True(expScale.Select(BitConverter.SingleToInt32Bits).SequenceEqual(result.Scale.Select(BitConverter.SingleToInt32Bits)),
            $"{caseName}/{tag}: scale [{Show(result.Scale)}] != PyTorch [{Show(expScale)}]");
        Assert.Equal(expZero, result.ZeroPoint);
    }

    [Theory]
    [MemberData(nameof(ReferenceObserverSpecs.OrtCaseTags), MemberType = typeof(ReferenceObserverSpecs))]
    public void MatchesOnnxRuntimeThresholdsWithinOneBin(string caseName, string tag)
    {
        var entry = Reference.Json.GetProperty("cases").GetProperty(caseName).GetProperty("ort_calibration").GetProperty(tag);
        var args = entry.GetProperty("args");
        string method = args.GetProperty("method").GetString()!;
        bool symmetric = args.GetProperty("symmetric").GetBoolean();
        int bins = args.GetProperty("num_bins").GetInt32();
        var options = new ObserverOptions
        {
            Type = QuantType.Int8,
            Scheme = symmetric ? QuantScheme.Symmetric : QuantScheme.Affine,
            Bins = bins,
            QuantizedBins = args.GetProperty("num_quantized_bins").GetInt32(),
            Percentile = args.GetProperty("percentile").GetDouble(),
            Method = HistogramMethod.Entropy,
            Name = $"{caseName}/input",
        };
        var observer = ObserverFactory.Create(method == "entropy" ? "histogram" : "percentile", options);
        float[] values;
        using (var file = Reference.OpenTensors())
        using (var input = file.ReadTensor($"{caseName}/input"))
        {
            values = input.flatten().data<float>().ToArray();
            observer.Observe(input.flatten());
        }
        float[] expected = Floats(entry.GetProperty("thresholds"));
        float[] actual = observer.ComputeQParams().Threshold!;

        // The brief asks for agreement within one histogram bin; our NumPy-faithful float32 arithmetic gives
        // ONNX Runtime's thresholds bit for bit, so hold it to that, and report the distance in bins if not.
        float maxAbs = values.Max(MathF.Abs), minAbs = values.Min(MathF.Abs);
        bool absolute = method == "percentile" && symmetric;
        double bin = absolute ? (maxAbs - minAbs) / (double)bins : 2.0 * maxAbs / bins;
        Assert.True(expected.SequenceEqual(actual),
            $"{caseName}/{tag}: thresholds [{Show(actual)}] vs ONNX Runtime [{Show(expected)}]: " +
            $"{Math.Abs(actual[0] - expected[0]) / bin:F2} and {Math.Abs(actual[1] - expected[1]) / bin:F2} bins apart");
    }
}
