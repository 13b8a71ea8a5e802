using QuantSharp.Primitives;

namespace QuantSharp.Tests.Primitives;

/// <summary>
/// QParams.Choose from the observers' own min/max (reference.json) reproduces PyTorch's scale bit for bit and its zero
/// point, for every tag whose qparams PyTorch derives from (min, max): MinMax, per-channel and moving-average observers.
/// </summary>
public class QParamsParityTests
{
    public static TheoryData<string, string> Tags()
    {
        var data = new TheoryData<string, string>();
        foreach (var c in Reference.Json.GetProperty("cases").EnumerateObject())
            foreach (var tag in c.Value.GetProperty("observers").EnumerateObject())
                if (!tag.Name.StartsWith("histogram", StringComparison.Ordinal))
                    data.Add(c.Name, tag.Name);
        return data;
    }

    [Theory]
    [MemberData(nameof(Tags))]
    public void ChooseMatchesPyTorch(string caseName, string tag)
    {
        var obs = Reference.Json.GetProperty("cases").GetProperty(caseName).GetProperty("observers").GetProperty(tag);
        // Moving-average tags carry no range field; they are all qint8 with the full range (reference README).
        QuantRange range;
        if (obs.TryGetProperty("qmin_qmax", out var r)) range = new QuantRange(r[0].GetInt32(), r[1].GetInt32());
        else
        {
            Assert.Contains("qint8", tag);
            range = new QuantRange(-128, 127);
        }
        var scheme = tag.Contains("symmetric", StringComparison.Ordinal) ? QuantScheme.Symmetric : QuantScheme.Affine;
        float[] min = obs.GetProperty("min_val").EnumerateArray().Select(e => e.GetSingle()).ToArray();
        float[] max = obs.GetProperty("max_val").EnumerateArray().Select(e => e.GetSingle()).ToArray();
        float[] scale = obs.GetProperty("scale").EnumerateArray().Select(e => e.GetSingle()).ToArray();
        int[] zp = obs.GetProperty("zero_point").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        Assert.Equal(scale.Length, min.Length);
        var s = new float[min.Length];
        var z = new int[min.Length];
        QParams.Choose(min, max, range, scheme, s, z);
        Assert.Equal(scale.Select(BitConverter.SingleToInt32Bits), s.Select(BitConverter.SingleToInt32Bits));
        Assert.Equal(zp, z);
    }
}
