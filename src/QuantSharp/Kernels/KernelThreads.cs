using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.ExceptionServices;

namespace QuantSharp.Kernels;

/// <summary>
/// How many threads the kernels use (0: one per processor; the bench's <c>--threads</c> sets it), and the workers that
/// run them.
/// </summary>
/// <remarks>
/// A batch-1 layer call lasts 0.1-1 ms, so handing work to another thread must cost microseconds, not the tens of
/// microseconds of waking a sleeping thread-pool thread (an idle vCPU of a VM wakes through the hypervisor). The
/// <c>Count - 1</c> workers are therefore kept: after each job a worker spins for <see cref="SpinMilliseconds"/>
/// waiting for the next one (as libgomp's OpenMP threads do after a libtorch op), then sleeps. Items are handed out
/// in runs of about an eighth of a thread's share by an atomic counter and the calling thread takes runs too, so a
/// worker that starts late, or a core taken by another process, only shifts work to the other threads. (Claiming one
/// item at a time made both threads bounce the counter's cache line once per item: with the thousand 32 KiB items of a
/// 4096x4096 float16 layer that cost a third of the call.) Calls made while the workers are busy (another
/// thread's call, or a call from inside a body) run on <see cref="Parallel.For(int, int, ParallelOptions, Action{int})"/>.
/// <para>Where libtorch runs on libgomp (Linux), the jobs run on libgomp's own team instead (<see cref="UseOpenMP"/>):
/// after each of its operations libtorch's OpenMP workers spin for the next one, and a job of our workers' started
/// meanwhile shared the two cores with them. In the conv bench's interleaved table (each route called right after
/// libtorch's; one build, <c>QUANTSHARP_BENCH_POOL=workers</c> against the default) the 224x224 stem's integer W8A8
/// route took 0.40 ms at batch 1 and 2.15 ms at batch 8 on our workers, 0.23 and 1.50 ms on libgomp's team (float32
/// 0.22 and 1.30-1.45 ms), and the ResNet-like W8A8 layers at batch 1 0.68-0.77x float32's time instead of 0.43-0.48x
/// (docs/BENCHMARKS.md, stop 19). In loops of one route alone the two pools measured alike. Those tables timed the
/// managed routes partly in their first-tier JIT code; re-measured with every route warmed up (stop 20, two processes
/// per pool) the stem's route took 0.33-0.39 ms at batch 1 on our workers and 0.18-0.24 ms on the team, and at batch 8
/// 1.62-2.96 against 1.44-1.74 ms.</para>
/// </remarks>
internal static unsafe class KernelThreads
{
    /// <summary>
    /// Multiply-adds below which a call runs on the calling thread alone, where handing half the work to another thread
    /// costs more than it saves: 2^19. It was 2^17, from the Zen 4 VM of stops 9-16 (two threads lost there on 64x800,
    /// 51K multiply-adds); on the Zen 5 VM of stop 26 a split call cost 9.5-11.5 us beyond half its work (the 384x384
    /// int8 layer at batch 1: 13-15 us on two threads, 6.8-7.2 us on one; float32 10 us), so layers up to 512x512 at batch
    /// 1 (262K) lost on two threads: in the small-layer table weight-only 384x384 at one row 0.85-1.57x float32 with 2^17,
    /// 0.65-0.82x with 2^19, and from 384x1536 (590K) the two thresholds measured alike (docs/BENCHMARKS.md, stop 26).
    /// Settable for the bench and the tests (which pin 2^17, the threshold their shapes were chosen for).
    /// </summary>
    internal static long MinParallelWork { get; set; } = DefaultMinParallelWork;

    /// <summary>The default of <see cref="MinParallelWork"/>.</summary>
    internal const long DefaultMinParallelWork = 1 << 19;

    /// <summary>How long an idle worker spins for the next job before it sleeps.</summary>
    internal const double SpinMilliseconds = 0.5;

    private static volatile int s_count;
    private static readonly object s_gate = new();
    private static readonly List<Thread> s_workers = [];
    private static Job? s_job;
    private static long s_generation;
    private static int s_sleepers;
    private static int s_busy;

    public static int Count
    {
        get => s_count > 0 ? s_count : Environment.ProcessorCount;
        set => s_count = Math.Max(0, value);
    }

    /// <summary>
    /// Whether jobs run on libtorch's OpenMP team (<see cref="OpenMP.IsAvailable"/>; default where it is) rather than
    /// on this class's own workers. Tests turn it off to run both.
    /// </summary>
    internal static bool UseOpenMP { get; set; } = OpenMP.IsAvailable;

    /// <summary>Whether <see cref="For"/> runs a call of <paramref name="totalWork"/> multiply-adds (in two items or more) on several threads.</summary>
    public static bool RunsInParallel(long totalWork) => Count > 1 && totalWork >= MinParallelWork;

    /// <summary>Runs <paramref name="body"/> for items <c>[0, count)</c>, on several threads when there is enough work; returns when every item has run.</summary>
    public static void For(int count, long workPerItem, Action<int> body)
    {
        int threads = Count;
        if (count <= 1 || !RunsInParallel((long)count * workPerItem))
        {
            for (int i = 0; i < count; i++) body(i);
            return;
        }
        if (Interlocked.CompareExchange(ref s_busy, 1, 0) != 0)
        {
            try
            {
                Parallel.For(0, count, new ParallelOptions { MaxDegreeOfParallelism = threads }, body);
            }
            catch (AggregateException e) when (e.InnerExceptions.Count > 0)
            {
                ExceptionDispatchInfo.Capture(e.InnerExceptions[0]).Throw(); // as the workers' path: a body's own exception
            }
            return;
        }
        try
        {
            if (UseOpenMP && OpenMP.IsAvailable)
            {
                var team = new Job(body, count, threads - 1);
                OpenMP.Run(team, threads);
                team.Rethrow();
                return;
            }
            EnsureWorkers(threads - 1);
            var job = new Job(body, count, threads - 1);
            Volatile.Write(ref s_job, job);
            Interlocked.Increment(ref s_generation);
            if (Volatile.Read(ref s_sleepers) > 0)
            {
                lock (s_gate) Monitor.PulseAll(s_gate);
            }
            job.Execute();
            job.WaitForAll();
            Volatile.Write(ref s_job, null);
            job.Rethrow();
        }
        finally
        {
            Volatile.Write(ref s_busy, 0);
        }
    }

    private static void EnsureWorkers(int wanted)
    {
        if (s_workers.Count >= wanted) return;
        lock (s_gate)
        {
            while (s_workers.Count < wanted)
            {
                var worker = new Thread(WorkerLoop) { IsBackground = true, Name = $"QuantSharp kernel worker {s_workers.Count + 1}" };
                s_workers.Add(worker);
                worker.Start(s_workers.Count);
            }
        }
    }

    private static void WorkerLoop(object? state)
    {
        int id = (int)state!; // workers 1..Count-1; a job takes as many as its caller's Count allows
        long seen = Volatile.Read(ref s_generation);
        while (true)
        {
            seen = WaitForNextJob(seen);
            if (Volatile.Read(ref s_job) is { } job && id <= job.Workers) job.Execute();
        }
    }

    /// <summary>Spins for <see cref="SpinMilliseconds"/> until the generation moves past <paramref name="seen"/>, then sleeps until it does.</summary>
    private static long WaitForNextJob(long seen)
    {
        long start = Stopwatch.GetTimestamp();
        long spinTicks = (long)(SpinMilliseconds * Stopwatch.Frequency / 1000);
        long generation;
        var spinner = new SpinWait(); // yields now and then, so a libtorch thread waiting for this core gets it
        while ((generation = Volatile.Read(ref s_generation)) == seen)
        {
            if (Stopwatch.GetTimestamp() - start > spinTicks)
            {
                Interlocked.Increment(ref s_sleepers);
                lock (s_gate)
                {
                    while ((generation = Volatile.Read(ref s_generation)) == seen) Monitor.Wait(s_gate);
                }
                Interlocked.Decrement(ref s_sleepers);
                return generation;
            }
            spinner.SpinOnce(sleep1Threshold: -1);
        }
        return generation;
    }

    /// <summary>
    /// libgomp's <c>GOMP_parallel</c>, the entry of an OpenMP parallel region, from the copy libtorch loaded (TorchSharp's
    /// bundled <c>libgomp-*.so.1</c>, found in <c>/proc/self/maps</c> next to <c>libtorch_cpu.so</c>): the calling thread
    /// and the team's workers (the threads libtorch's own operations run on) each run the job's <see cref="Job.Execute"/>,
    /// and the call returns when all have. A job started from inside a team runs on one thread (libgomp's default of
    /// one active level), and <see cref="For"/> sends calls made while a job runs to <see cref="Parallel.For(int, int, ParallelOptions, Action{int})"/> anyway.
    /// </summary>
    internal static class OpenMP
    {
        private static readonly delegate* unmanaged<delegate* unmanaged<nint, void>, nint, uint, uint, void> s_parallel = Find();

        /// <summary>Whether libtorch's libgomp was found (Linux builds of libtorch).</summary>
        public static bool IsAvailable => s_parallel != null;

        /// <summary>Runs <paramref name="job"/> on a team of <paramref name="threads"/> threads, the caller among them.</summary>
        public static void Run(Job job, int threads)
        {
            var handle = GCHandle.Alloc(job);
            try
            {
                s_parallel(&Execute, GCHandle.ToIntPtr(handle), (uint)threads, 0);
            }
            finally
            {
                handle.Free();
            }
        }

        /// <summary>Each team thread's part (<see cref="Job.Execute"/> catches the bodies' exceptions; nothing else throws).</summary>
        [UnmanagedCallersOnly]
        private static void Execute(nint job) => ((Job)GCHandle.FromIntPtr(job).Target!).Execute();

        private static delegate* unmanaged<delegate* unmanaged<nint, void>, nint, uint, uint, void> Find()
        {
            try
            {
                if (!OperatingSystem.IsLinux()) return null;
                TorchSharp.torch.get_num_threads(); // loads libtorch, and with it its libgomp
                var mapped = File.ReadLines("/proc/self/maps")
                    .Select(line => line.IndexOf('/') is int at and >= 0 ? line[at..] : null)
                    .OfType<string>().Distinct().ToList();
                string? torch = mapped.FirstOrDefault(path => Path.GetFileName(path).StartsWith("libtorch_cpu", StringComparison.Ordinal));
                var gomps = mapped.Where(path => Path.GetFileName(path).StartsWith("libgomp", StringComparison.Ordinal)).ToList();
                string? gomp = gomps.FirstOrDefault(path => torch is not null && Path.GetDirectoryName(path) == Path.GetDirectoryName(torch)) ?? gomps.FirstOrDefault();
                if (gomp is null || !NativeLibrary.TryLoad(gomp, out nint library)) return null;
                return NativeLibrary.TryGetExport(library, "GOMP_parallel", out nint entry)
                    ? (delegate* unmanaged<delegate* unmanaged<nint, void>, nint, uint, uint, void>)entry
                    : null;
            }
            catch (Exception)
            {
                return null; // no libtorch to load, or no /proc: the workers of this class run the jobs
            }
        }
    }

    /// <summary>One <see cref="For"/> call: runs of items claimed by an atomic counter, a count of the finished ones (each counter on its own cache line).</summary>
    internal sealed class Job(Action<int> body, int count, int workers)
    {
        private PaddedInt _next;
        private PaddedInt _done;
        private Exception? _error;

        /// <summary>How many workers may join (the caller's <see cref="Count"/> minus itself).</summary>
        public int Workers { get; } = workers;

        /// <summary>Items claimed at once: about an eighth of each thread's share, so a late thread still evens out.</summary>
        private int Run => Math.Max(1, count / (8 * (Workers + 1)));

        /// <summary>Claims and runs runs of items until none is left.</summary>
        public void Execute()
        {
            int run = Run, start;
            while ((start = Interlocked.Add(ref _next.Value, run) - run) < count)
            {
                int end = Math.Min(count, start + run);
                for (int i = start; i < end; i++)
                {
                    try
                    {
                        body(i);
                    }
                    catch (Exception e)
                    {
                        Interlocked.CompareExchange(ref _error, e, null);
                    }
                }
                Interlocked.Add(ref _done.Value, end - start);
            }
        }

        /// <summary>Waits until every claimed item has finished (all items are claimed once the caller's <see cref="Execute"/> returns).</summary>
        public void WaitForAll()
        {
            var spinner = new SpinWait();
            while (Volatile.Read(ref _done.Value) < count) spinner.SpinOnce(sleep1Threshold: -1);
        }

        /// <summary>Throws the first exception a body threw, with its stack trace.</summary>
        public void Rethrow()
        {
            if (_error is { } e) ExceptionDispatchInfo.Capture(e).Throw();
        }
    }
}

/// <summary>An <see cref="int"/> alone on a 64-byte cache line (and away from its neighbours' lines), for counters two threads update.</summary>
[StructLayout(LayoutKind.Explicit, Size = 128)]
internal struct PaddedInt
{
    /// <summary>The value.</summary>
    [FieldOffset(64)] public int Value;
}
