namespace QuantSharp.Tests;

public class ReferenceDataTests
{
    [Fact]
    public void ReferenceTensorsAreReadable()
    {
        using var file = Reference.OpenTensors();
        using var input = file.ReadTensor("gauss/input");
        long[] shape = Reference.Json.GetProperty("cases").GetProperty("gauss").GetProperty("shape")
            .EnumerateArray().Select(e => e.GetInt64()).ToArray();
        Assert.Equal(shape, input.shape);
        // The reference's MinMax observer saw the same data: its min/max are our min/max.
        var obs = Reference.Json.GetProperty("cases").GetProperty("gauss").GetProperty("observers").GetProperty("minmax_affine_qint8");
        Assert.Equal(obs.GetProperty("min_val")[0].GetSingle(), input.min().item<float>());
        Assert.Equal(obs.GetProperty("max_val")[0].GetSingle(), input.max().item<float>());
    }
}

public class ReferenceLocationTests
{
    [Fact]
    public void AMissingReferenceFolderIsNamedWithTheFix()
    {
        string root = Directory.CreateTempSubdirectory("qs-no-reference-").FullName;
        try
        {
            string repo = Directory.CreateDirectory(Path.Combine(root, "clone")).FullName;
            var ex = Assert.Throws<DirectoryNotFoundException>(() => Reference.Locate(repo));
            Assert.Contains("../shared/reference", ex.Message);
            Assert.Contains(Path.Combine(root, "shared", "reference"), ex.Message);
            Assert.Contains("Clone the repository next to that folder", ex.Message);
            // Found where it is, which is where the suite reads it from.
            Assert.Equal(Reference.Dir, Reference.Locate(Reference.RepoRoot));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }
}
