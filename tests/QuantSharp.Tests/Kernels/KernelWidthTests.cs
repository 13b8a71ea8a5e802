using QuantSharp.Kernels;
using static QuantSharp.Kernels.QuantizeKernel;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// Re-runs the vector-vs-scalar comparisons with the kernels capped at 128-bit vectors and at scalar only, so that
/// every path runs on this machine (in addition to DOTNET_EnableAVX2=0 / DOTNET_EnableHWIntrinsic=0 runs).
/// </summary>
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
