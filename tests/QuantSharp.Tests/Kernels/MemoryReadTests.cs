using QuantSharp.Kernels;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// <see cref="MemoryRead.OnKernelThreads"/> (the read behind <c>quantsharp bench</c>'s bandwidth and <c>--cold</c>):
/// each thread sums a contiguous run of whole 64-float blocks, the runs together the start of the buffer. In the
/// collection that runs alone: the expected length depends on <see cref="KernelThreads.Count"/>, which other tests set.
/// </summary>
[Collection(TorchThreadsCollection.Name)]
public class MemoryReadTests
{
    [Theory]
    [InlineData(1, 1000)]
    [InlineData(2, 1000)]
    [InlineData(3, 1000)]
    [InlineData(2, (1 << 20) + 100)]
    [InlineData(3, (1 << 20) + 100)]
    public unsafe void SumsTheStartOfTheBufferInWholeBlocksPerThread(int threads, int count)
    {
        var values = new float[count];
        for (int i = 0; i < count; i++) values[i] = i % 7;
        int saved = KernelThreads.Count;
        try
        {
            KernelThreads.Count = threads;
            (float sum, long floats) result;
            fixed (float* p = values) result = MemoryRead.OnKernelThreads(p, count);
            long expectedFloats = count / threads / 64 * 64 * threads;
            Assert.Equal(expectedFloats, result.floats);
            double expected = 0;
            for (long i = 0; i < expectedFloats; i++) expected += values[i];
            Assert.Equal(expected, result.sum); // integers below 2^24: exact in float32 whatever the order
        }
        finally
        {
            KernelThreads.Count = saved;
        }
    }
}
