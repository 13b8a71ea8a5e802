using QuantSharp.Kernels;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// <see cref="KernelThreads.For"/>, on this class's workers and on libtorch's OpenMP team (found on Linux, where CI
/// runs): every item runs exactly once whatever the thread count, calls back to back (the workers' spin) and after a
/// pause (the workers sleep), from several threads at once and from inside a body; a body's exception reaches the
/// caller; and the row kernels give the same bits on 1, 2 and 3 threads.
/// </summary>
/// <remarks>The tests set the global <see cref="KernelThreads.Count"/> and restore it; kernels running meanwhile in other
/// test classes only change how many threads they use, never their results (the last test checks that).</remarks>
public class KernelThreadsTests
{
    private const long Heavy = 1 << 20; // work per item above the threshold below which For runs inline

    /// <summary>
    /// <see cref="KernelThreads.RunsInParallel"/> follows <see cref="KernelThreads.MinParallelWork"/> (pinned to 2^17 for
    /// the test run, 2^19 by default) and never splits on one thread.
    /// </summary>
    [Fact]
    public void CallsSplitFromTheThresholdOn()
    {
        int saved = KernelThreads.Count;
        long pinned = KernelThreads.MinParallelWork;
        Assert.Equal(KernelThresholdPin.Threshold, pinned); // for the whole test run
        Assert.Equal(1L << 19, KernelThreads.DefaultMinParallelWork);
        try
        {
            KernelThreads.Count = 2;
            Assert.False(KernelThreads.RunsInParallel(pinned - 1));
            Assert.True(KernelThreads.RunsInParallel(pinned));
            KernelThreads.MinParallelWork = KernelThreads.DefaultMinParallelWork;
            Assert.False(KernelThreads.RunsInParallel((1 << 19) - 1));
            Assert.True(KernelThreads.RunsInParallel(1 << 19));
            KernelThreads.Count = 1;
            Assert.False(KernelThreads.RunsInParallel(1L << 30));
        }
        finally
        {
            KernelThreads.Count = saved;
            KernelThreads.MinParallelWork = pinned;
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void EveryItemRunsExactlyOnceOnEveryThreadCount(bool openMP)
    {
        int saved = KernelThreads.Count;
        using var pool = new Pool(openMP);
        try
        {
            foreach (int threads in new[] { 1, 2, 3, 5 })
            {
                KernelThreads.Count = threads;
                for (int call = 0; call < 300; call++)
                {
                    int count = 1 + call % 97;
                    var runs = new int[count];
                    KernelThreads.For(count, Heavy, i => Interlocked.Increment(ref runs[i]));
                    Assert.All(runs, r => Assert.Equal(1, r));
                    if (call % 100 == 99) Thread.Sleep(5); // past the workers' spin: they must wake from sleep
                }
            }
        }
        finally
        {
            KernelThreads.Count = saved;
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void UsesMoreThanOneThreadWhenAsked(bool openMP)
    {
        int saved = KernelThreads.Count;
        using var pool = new Pool(openMP);
        try
        {
            KernelThreads.Count = 2;
            var seen = new HashSet<int>();
            // Items that wait for each other can only finish when two threads run them at once.
            for (int attempt = 0; attempt < 20 && seen.Count < 2; attempt++)
            {
                using var both = new CountdownEvent(2);
                KernelThreads.For(2, Heavy, i =>
                {
                    lock (seen) seen.Add(Environment.CurrentManagedThreadId);
                    both.Signal();
                    both.Wait(TimeSpan.FromSeconds(2));
                });
            }
            Assert.Equal(2, seen.Count);
        }
        finally
        {
            KernelThreads.Count = saved;
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task ConcurrentAndNestedCallsEachRunEveryItemOnce(bool openMP)
    {
        int saved = KernelThreads.Count;
        using var pool = new Pool(openMP);
        try
        {
            KernelThreads.Count = 2;
            var callers = Enumerable.Range(0, 4).Select(t => Task.Run(() =>
            {
                for (int call = 0; call < 100; call++)
                {
                    var outer = new int[8];
                    var inner = new int[8 * 5];
                    KernelThreads.For(8, Heavy, i =>
                    {
                        Interlocked.Increment(ref outer[i]);
                        KernelThreads.For(5, Heavy, j => Interlocked.Increment(ref inner[i * 5 + j]));
                    });
                    Assert.All(outer, r => Assert.Equal(1, r));
                    Assert.All(inner, r => Assert.Equal(1, r));
                }
            })).ToArray();
            await Task.WhenAll(callers);
        }
        finally
        {
            KernelThreads.Count = saved;
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ABodysExceptionReachesTheCallerAndTheWorkersStayUsable(bool openMP)
    {
        int saved = KernelThreads.Count;
        using var pool = new Pool(openMP);
        try
        {
            KernelThreads.Count = 2;
            var e = Assert.Throws<InvalidOperationException>(() => KernelThreads.For(16, Heavy, i =>
            {
                if (i == 11) throw new InvalidOperationException("item 11");
            }));
            Assert.Equal("item 11", e.Message);
            var runs = new int[16];
            KernelThreads.For(16, Heavy, i => Interlocked.Increment(ref runs[i]));
            Assert.All(runs, r => Assert.Equal(1, r));
            // The same exception when the workers are busy (a call from inside a body takes Parallel.For).
            var nested = Assert.Throws<InvalidOperationException>(() => KernelThreads.For(2, Heavy, i =>
                KernelThreads.For(4, Heavy, j =>
                {
                    if (j == 3) throw new InvalidOperationException("nested item 3");
                })));
            Assert.Equal("nested item 3", nested.Message);
        }
        finally
        {
            KernelThreads.Count = saved;
        }
    }

    [Theory]
    [MemberData(nameof(QuantizedMatMulTests.Formats), MemberType = typeof(QuantizedMatMulTests))]
    public void RowKernelsGiveTheSameBitsOnOneTwoAndThreeThreads(string formatName)
    {
        // Large enough for the kernels to split the rows into items over the threads; batch 1 (the batch-1 kernels,
        // nibble words for int4/uint4) and 8 (reduction blocks).
        var format = Enum.Parse<WeightFormat>(formatName);
        using var w = new PinnedWeight(format, 301, 1024, WeightView.IsFloat(format) ? 0 : 128, zeroPoints: true, seed: 4);
        var view = w.View;
        int saved = KernelThreads.Count;
        try
        {
            foreach (int batch in new[] { 1, 8 })
            {
                float[] x = KernelTestData.Activations(batch * view.Cols, batch);
                float[]? first = null;
                foreach (int threads in new[] { 1, 2, 3 })
                {
                    KernelThreads.Count = threads;
                    var y = RunRows(view, x, batch);
                    first ??= y;
                    Assert.Equal(first, y);
                }
            }
        }
        finally
        {
            KernelThreads.Count = saved;
        }
    }

    [Fact]
    public void LibtorchsOpenMPTeamIsFoundOnLinux()
    {
        // CI runs on Linux with TorchSharp-cpu, whose libtorch runs on its bundled libgomp: the team must be found there.
        if (OperatingSystem.IsLinux()) Assert.True(KernelThreads.OpenMP.IsAvailable, "libtorch's libgomp (GOMP_parallel) was not found");
    }

    /// <summary>Runs the test's calls on the OpenMP team or on the workers; restores the setting.</summary>
    private sealed class Pool : IDisposable
    {
        private readonly bool _saved = KernelThreads.UseOpenMP;

        public Pool(bool openMP)
        {
            if (openMP && !KernelThreads.OpenMP.IsAvailable) Assert.False(OperatingSystem.IsLinux(), "no OpenMP team on Linux");
            KernelThreads.UseOpenMP = openMP;
        }

        public void Dispose() => KernelThreads.UseOpenMP = _saved;
    }

    private static unsafe float[] RunRows(in WeightView view, float[] x, int batch)
    {
        var y = new float[batch * view.Rows];
        fixed (float* px = x) fixed (float* py = y)
            QuantizedMatMul.Run(view, px, batch, view.Cols, null, py, view.Rows, method: MatMulMethod.Rows);
        return y;
    }
}
