namespace QuantSharp.Tests.Packaging;

/// <summary>
/// The program that scripts/check-packaging.sh builds outside the repository against the packed QuantSharp package,
/// compiled and run here against the project: an API change that breaks it fails here, not only in CI's packaging step.
/// </summary>
public class PackagingConsumerTests
{
    [Fact]
    public void ConsumerProgramQuantizesBothLayersAboveThirtyDecibels()
    {
        var output = new StringWriter();
        Assert.Equal(0, PackagingCheck.SmallModelCheck.Run(output));
        Assert.StartsWith("quantized layers: 2, output SQNR: ", output.ToString());
    }
}
