using QuantSharp.Kernels;
using static QuantSharp.Kernels.QuantizeKernel;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// Re-runs the vector-vs-scalar comparisons with the kernels capped at 128-bit vectors and at scalar only, so that
/// every path runs on this machine (in addition to DOTNET_EnableAVX2=0 / DOTNET_EnableHWIntrinsic=0 runs).
/// </summary>
[Collection(SimdWidthCollection.Name)]
public class KernelWidthTests
{
    [Theory]
    [InlineData(128)]
    [InlineData(0)]
    public void NarrowPathsEqualScalar(int maxBits)
    {
        int saved = Simd.MaxBits;
        Simd.MaxBits = maxBits;
        try
        {
            var vectorTests = new KernelVectorTests();
            for (int n = 0; n <= 256; n++)
            {
                vectorTests.QuantizeVectorEqualsScalar(n);
                vectorTests.PerElementVectorEqualsScalar(n);
                vectorTests.DequantizeVectorEqualsScalar(n);
                vectorTests.MinMaxAndBFloat16VectorEqualScalar(n);
                vectorTests.HalfVectorEqualsScalar(n);
            }
        }
        finally
        {
            Simd.MaxBits = saved;
        }
    }
}

/// <summary>
/// <see cref="KernelWidthTests"/> changes the process-wide <see cref="Simd.MaxBits"/>; a test that asks for an explicit
/// kernel path (V256, V512) while it is capped gets "not supported on this CPU". This collection runs alone, after the
/// parallel tests.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SimdWidthCollection
{
    /// <summary>The collection's name.</summary>
    public const string Name = "Simd width cap (process-wide)";
}
