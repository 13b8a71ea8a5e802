using System.Diagnostics;
using System.Runtime.InteropServices;
using QuantSharp.Modules;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Threads;

/// <summary>Tests that force garbage collections on a thread of their own: they run alone, after the parallel tests.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class GarbageCollectionStressCollection
{
    /// <summary>The collection's name.</summary>
    public const string Name = "Garbage collections on another thread";
}

/// <summary>
/// The regression test of the TorchSharp 0.107.0 Scalar lifetime defect (docs/QUANTIZER.md, "Threads"): library
/// arithmetic runs in a loop on one thread while another thread collects garbage and runs finalizers without pause.
/// On Linux the three threads involved (the worker, the collector and the finalizer thread) share one CPU, so the
/// worker is often preempted inside a native call, exactly when a collection can free a Scalar it passed. Before
/// <see cref="QuantSharp.Tensors.KeptScalars"/> this failed in 3 of 3 runs on the 2-core development VM, with 3 to 7
/// libtorch errors in 3 s ("Expected false to be true" from <c>Scalar::toFloat</c>; also seen: "Unknown scalar type",
/// an internal assert in Scalar.h). Busier paths (a module, attention) in the same loop made fewer native calls with a
/// Scalar per second and hid the defect; the other library paths are covered by <see cref="ScalarCallSiteTests"/>.
/// </summary>
[Collection(GarbageCollectionStressCollection.Name)]
public sealed class ScalarLifetimeStressTests
{
    private static readonly TimeSpan Duration = TimeSpan.FromSeconds(4);

    [Fact]
    public void LibraryArithmeticSurvivesGarbageCollectionsOnAnotherThread()
    {
        using var scope = NewDisposeScope();
        using var paths = new LibraryPaths();
        var expected = paths.Run();

        var pinning = CpuPinning.TryCreate();
        pinning?.PinFinalizerThread();
        long iterations = 0, collections = 0, mismatches = 0;
        var errors = new List<string>();
        bool done = false;
        var collector = new Thread(() =>
        {
            pinning?.PinCurrentThread();
            while (!Volatile.Read(ref done))
            {
                GC.Collect(0);
                GC.WaitForPendingFinalizers();
                collections++;
            }
        });
        var worker = new Thread(() =>
        {
            pinning?.PinCurrentThread();
            var clock = Stopwatch.StartNew();
            while (clock.Elapsed < Duration)
            {
                try
                {
                    using var iterationScope = NewDisposeScope();
                    if (!LibraryPaths.Same(paths.Run(), expected)) mismatches++;
                }
                catch (Exception e) // libtorch's errors, and any other: an exception escaping this thread would end the test run
                {
                    errors.Add(e.Message);
                }
                iterations++;
            }
        });
        try
        {
            collector.Start();
            worker.Start();
            worker.Join();
        }
        finally
        {
            Volatile.Write(ref done, true);
            collector.Join();
            pinning?.RestoreFinalizerThread();
        }

        Assert.True(iterations > 100 && collections > 100, $"too little stress: {iterations} iterations, {collections} collections");
        Assert.True(errors.Count == 0 && mismatches == 0,
            $"{errors.Count} libtorch errors and {mismatches} wrong results in {iterations} iterations with {collections} collections " +
            $"(pinned to one CPU: {pinning is not null}); first error: {errors.FirstOrDefault()}");
    }

    /// <summary>Library paths that hand libtorch numbers in most of their calls (fake quantization, which adds with an
    /// alpha and clamps to the integer range; SQNR, which squares), on tensors small enough that the loop makes many
    /// native calls per second.</summary>
    private sealed class LibraryPaths : IDisposable
    {
        private readonly Tensor _x = randn([8, 8], generator: new Generator(7));
        private readonly Tensor _scale = tensor(0.02f);
        private readonly Tensor _zeroPoint = tensor(3f);

        /// <summary>The outputs (in the caller's dispose scope): a fake-quantized tensor and its SQNR.</summary>
        public (Tensor FakeQuantized, double Sqnr) Run()
        {
            var fakeQuantized = WeightQuantizer.FakeQuantize(_x, _scale, _zeroPoint, new QuantRange(-128, 127));
            var sqnr = new SqnrAccumulator();
            sqnr.Add(_x, fakeQuantized);
            return (fakeQuantized, sqnr.Db);
        }

        /// <summary>True when <paramref name="actual"/> equals <paramref name="expected"/> bit for bit (values are finite).</summary>
        public static bool Same((Tensor FakeQuantized, double Sqnr) actual, (Tensor FakeQuantized, double Sqnr) expected) =>
            actual.Sqnr == expected.Sqnr && actual.FakeQuantized.equal(expected.FakeQuantized).all().item<bool>();

        public void Dispose()
        {
            _x.Dispose();
            _scale.Dispose();
            _zeroPoint.Dispose();
        }
    }

    /// <summary>Linux thread affinity: pins threads to the first CPU the process may use (sched_setaffinity with pid 0
    /// applies to the calling thread only), and the finalizer thread through a finalizer that runs there.</summary>
    private sealed class CpuPinning
    {
        private const int MaskWords = 16; // 1024 CPUs
        private readonly ulong[] _original = new ulong[MaskWords];
        private readonly ulong[] _single = new ulong[MaskWords];

        private CpuPinning() { }

        public static CpuPinning? TryCreate()
        {
            if (!OperatingSystem.IsLinux()) return null;
            var p = new CpuPinning();
            if (sched_getaffinity(0, MaskWords * sizeof(ulong), p._original) != 0) return null;
            int word = Array.FindIndex(p._original, w => w != 0);
            if (word < 0) return null;
            p._single[word] = p._original[word] & (~p._original[word] + 1); // the lowest CPU set
            return p;
        }

        public void PinCurrentThread() => Set(_single);

        public void PinFinalizerThread() => OnFinalizerThread(_single);

        public void RestoreFinalizerThread() => OnFinalizerThread(_original);

        // Never throws: it also runs in a finalizer, where an exception would end the process. Without pinning the
        // test still stresses, with fewer preemptions inside native calls.
        private static void Set(ulong[] mask) => _ = sched_setaffinity(0, MaskWords * sizeof(ulong), mask);

        private static void OnFinalizerThread(ulong[] mask)
        {
            Queue(mask);
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }

        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
        private static void Queue(ulong[] mask) => _ = new AffinitySetter(mask);

        private sealed class AffinitySetter(ulong[] mask)
        {
            ~AffinitySetter() => Set(mask);
        }

        [DllImport("libc")]
        private static extern int sched_setaffinity(int pid, nint size, ulong[] mask);

        [DllImport("libc")]
        private static extern int sched_getaffinity(int pid, nint size, ulong[] mask);
    }
}
