using QuantSharp.Observers;
using TorchSharp;

namespace QuantSharp.Tests.Observers;

/// <summary>Per-group min/max observation against PyTorch's per-group scales in groups.safetensors.</summary>
public class GroupObserverTests
{
    public static IEnumerable<object[]> GroupTags()
    {
        foreach (var c in Reference.GroupsJson.GetProperty("cases").EnumerateObject())
            foreach (var tag in c.Value.EnumerateObject())
                if (tag.Name != "shape") yield return [c.Name, tag.Name];
    }

    [Theory]
    [MemberData(nameof(GroupTags))]
    public void PerGroupScalesMatchPyTorch(string caseName, string tag)
    {
        // Tag: g{G}_{type}_{sym|affine}, e.g. g32_uint4_affine.
        string[] parts = tag.Split('_');
        int group = int.Parse(parts[0][1..], System.Globalization.CultureInfo.InvariantCulture);
        var options = new ObserverOptions
        {
            Type = QuantTypeInfo.Parse(parts[1]),
            Scheme = parts[2] == "sym" ? QuantScheme.Symmetric : QuantScheme.Affine,
            GroupSize = group,
            Name = $"{caseName}/input",
        };
        var range = Reference.GroupsJson.GetProperty("cases").GetProperty(caseName).GetProperty(tag).GetProperty("qmin_qmax");
        Assert.Equal(new QuantRange(range[0].GetInt32(), range[1].GetInt32()), options.Range);

        var observer = ObserverFactory.Create("minmax", options);
        using var file = Reference.OpenGroups();
        using (var input = file.ReadTensor($"{caseName}/input")) observer.Observe(input);
        var result = observer.ComputeQParams();

        using var scale = file.ReadTensor($"{caseName}/{tag}/scale");
        using var zeroPoint = file.ReadTensor($"{caseName}/{tag}/zero_point");
        float[] expectedScale = scale.data<float>().ToArray();
        int[] expectedZero = zeroPoint.data<int>().ToArray();
        Assert.Equal(expectedScale.Select(BitConverter.SingleToInt32Bits), result.Scale.Select(BitConverter.SingleToInt32Bits));
        Assert.Equal(expectedZero, result.ZeroPoint);
    }
}
