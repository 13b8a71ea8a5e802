using System.Diagnostics;
using QuantSharp.Modules;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Bench;

/// <summary>
/// Small and medium Linear layers (the MNIST and MiniLM sizes) against float32, in one process:
/// <c>dotnet run -c Release --project bench/QuantSharp.Bench -- small-linear [rounds]</c>. For each shape and row count
/// the variants are timed in interleaved rounds (default 5): each round runs every variant for at least 20 ms of
/// warm-up (so the other side's threads settle: libgomp's workers spin after a libtorch op) and then takes the median
/// of 40 calls; the figure is the best round's median. One process keeps the allocator state the same for every side
/// (it is primed as <c>quantsharp bench</c> does). Ratios are quantized time / float32 time: below 1 is faster.
/// Environment: <c>PROBE_SHAPES</c> (e.g. <c>64x800,512x512</c>), <c>PROBE_ROWS</c> (e.g. <c>1,64</c>), <c>PROBE_PROFILE</c>
/// (a variant's index: call only it, for a profiler), <c>PROBE_PACKED_MIN</c> (activation rows from which the float-output
/// kernels take the packed GEMM for every weight size, <see cref="Kernels.QuantizedMatMul.PackedMinRows"/> and
/// <see cref="Kernels.QuantizedMatMul.PackedMinRowsSmallWeight"/> and <see cref="Kernels.QuantizedMatMul.PackedMinRows256"/> and <see cref="Kernels.QuantizedMatMul.PackedMinRows256LargeWeight"/>, to measure the crossover),
/// <c>PROBE_NARROW=0</c> (<see cref="Kernels.QuantizedMatMul.NarrowForGroups"/> off), <c>PROBE_DYNAMIC_PASS=0</c> (<see cref="QuantizedModule.DynamicInputInOnePass"/> off), <c>PROBE_INT_PACKED_MIN</c> (<see cref="Kernels.IntegerMatMul.PackedMinRows"/>, <see cref="Kernels.IntegerMatMul.PackedMinRowsVnni512"/> and <see cref="Kernels.IntegerMatMul.PackedMinRowsMadd256"/>), <c>PROBE_BYTES_BY_GROUP=0</c>
/// (<see cref="Kernels.QuantizedMatMul.BytesByGroup"/> off), <c>PROBE_SHORT_NIBBLES=0</c> (<see cref="Kernels.QuantizedMatMul.ShortNibbleGroups"/> off), <c>PROBE_SHORT_FRACTIONS=0</c> (<see cref="Kernels.QuantizedMatMul.ShortGroupFractions"/> off), <c>PROBE_HALF_BF16=0</c> (<see cref="Modules.LinearKernels.ManagedHalfToBFloat16"/> off), <c>PROBE_FUSED_FINITE=0</c> (<see cref="Kernels.QuantizedMatMul.FusedFiniteTest"/> off), <c>PROBE_SCALED_HALVES=0</c> (<see cref="Kernels.QuantizedMatMul.ScaledHalves"/> off), <c>PROBE_FOUR_SUMS=0</c> (<see cref="Kernels.DotTileMatMul.FourSums"/> off), <c>PROBE_NATIVE_ROW_DOTS=0</c> (<see cref="Kernels.IntegerMatMul.NativeRowDots"/> off), <c>PROBE_NATIVE_OVER_AVXVNNI=1</c> (<see cref="Kernels.IntegerMatMul.NativeRowDotsOverAvxVnni"/> on), <c>PROBE_MIN_PARALLEL</c> (<see cref="Kernels.KernelThreads.MinParallelWork"/> pinned; 131072 is the threshold before stop 26, and the tests'), <c>PROBE_DOT_PACKED_MIN</c> (<see cref="Kernels.QuantizedMatMul.PackedMinRowsDotTiles"/>; 12 restores the rule before it), <c>PROBE_BF16_MIN</c> (every row threshold of <see cref="Modules.LinearCost"/>), <c>PROBE_DOT_MIN</c> (<see cref="Kernels.QuantizedMatMul.DotTilesMinRows"/> and <see cref="Kernels.QuantizedMatMul.DotTilesMinRowsFewWeightRows"/>; 12 or more turns the dot tiles off), <c>PROBE_GROUP</c> (the int4 column's group size, 32 by default),
/// <c>PROBE_MAXBITS</c> (<see cref="Kernels.Simd.MaxBits"/>), <c>PROBE_WS_MAX</c> (<see cref="Kernels.PackedMatMul.WeightStripsMaxRows"/>; 0 turns the weight-strip layout off),
/// <c>PROBE_LAYOUT</c> (a <see cref="Kernels.PackedLayout"/> forced on the float-output packed GEMM; the integer GEMM ignores it),
/// <c>PROBE_FUSED_BYTES</c> (<see cref="Kernels.PackedIntegerMatMul.FusedWeightBytes"/>; 0 leaves only the weights of one work item fused).
/// Before the table every variant runs on every row count for 0.3 s so the JIT's tiers have settled (without it the
/// first shape's quantized sides measured up to 2x slower: tier-0 code and background compilation on 2 cores).
/// </summary>
internal static class SmallLinearProbe
{
    public static int Run(string[] args)
    {
        int rounds = args.Length > 0 ? int.Parse(args[0], System.Globalization.CultureInfo.InvariantCulture) : 5;
        ConvBench.PrimeAllocator(); // glibc's allocator in its steady state, as quantsharp bench does
        var shapes = (Environment.GetEnvironmentVariable("PROBE_SHAPES") ?? "64x800,384x384,512x512,1536x384,384x1536,1024x1024").Split(',')
            .Select(t => t.Split('x')).Select(p => (int.Parse(p[0]), int.Parse(p[1]))).ToArray();
        var rowsList = (Environment.GetEnvironmentVariable("PROBE_ROWS") ?? "1,24,64,128,256").Split(',').Select(int.Parse).ToArray();
        using var noGrad = no_grad();
        if (Environment.GetEnvironmentVariable("PROBE_PACKED_MIN") is { } packedMin)
            Kernels.QuantizedMatMul.PackedMinRows = Kernels.QuantizedMatMul.PackedMinRowsSmallWeight = Kernels.QuantizedMatMul.PackedMinRows256 = Kernels.QuantizedMatMul.PackedMinRows256LargeWeight = int.Parse(packedMin, System.Globalization.CultureInfo.InvariantCulture);
        int group = int.Parse(Environment.GetEnvironmentVariable("PROBE_GROUP") ?? "32", System.Globalization.CultureInfo.InvariantCulture);
        if (Environment.GetEnvironmentVariable("PROBE_BF16_MIN") is { } bf16Min)
            Modules.LinearCost.BFloat16MinRows = Modules.LinearCost.BFloat16MinRowsLarge = Modules.LinearCost.BFloat16MinRowsHuge = Modules.LinearCost.BFloat16WeightsMinRows = long.Parse(bf16Min, System.Globalization.CultureInfo.InvariantCulture);
        if (Environment.GetEnvironmentVariable("PROBE_HALF_BF16") == "0") Modules.LinearKernels.ManagedHalfToBFloat16 = false;
        if (Environment.GetEnvironmentVariable("PROBE_NATIVE_OVER_AVXVNNI") == "1") Kernels.IntegerMatMul.NativeRowDotsOverAvxVnni = true;
        if (Environment.GetEnvironmentVariable("PROBE_MIN_PARALLEL") is { } minParallel) Kernels.KernelThreads.MinParallelWork = long.Parse(minParallel, System.Globalization.CultureInfo.InvariantCulture);
        Console.WriteLine($"Kernels on several threads from {Kernels.KernelThreads.MinParallelWork} multiply-adds a call");
        if (Environment.GetEnvironmentVariable("PROBE_FUSED_FINITE") == "0") Kernels.QuantizedMatMul.FusedFiniteTest = false;
        if (Environment.GetEnvironmentVariable("PROBE_SCALED_HALVES") == "0") Kernels.QuantizedMatMul.ScaledHalves = false;
        if (Environment.GetEnvironmentVariable("PROBE_FOUR_SUMS") == "0") Kernels.DotTileMatMul.FourSums = false;
        if (Environment.GetEnvironmentVariable("PROBE_NATIVE_ROW_DOTS") == "0") Kernels.IntegerMatMul.NativeRowDots = false;
        if (Environment.GetEnvironmentVariable("PROBE_DOT_PACKED_MIN") is { } dotPackedMin)
            Kernels.QuantizedMatMul.PackedMinRowsDotTiles = int.Parse(dotPackedMin, System.Globalization.CultureInfo.InvariantCulture);
        if (Environment.GetEnvironmentVariable("PROBE_SHORT_FRACTIONS") == "0") Kernels.QuantizedMatMul.ShortGroupFractions = false;
        if (Environment.GetEnvironmentVariable("PROBE_NARROW") == "0") Kernels.QuantizedMatMul.NarrowForGroups = false;
        if (Environment.GetEnvironmentVariable("PROBE_DYNAMIC_PASS") == "0") QuantizedModule.DynamicInputInOnePass = false;
        if (Environment.GetEnvironmentVariable("PROBE_BYTES_BY_GROUP") == "0") Kernels.QuantizedMatMul.BytesByGroup = false;
        if (Environment.GetEnvironmentVariable("PROBE_SHORT_NIBBLES") == "0") Kernels.QuantizedMatMul.ShortNibbleGroups = false;
        if (Environment.GetEnvironmentVariable("PROBE_INT_PACKED_MIN") is { } intPackedMin)
            Kernels.IntegerMatMul.PackedMinRows = Kernels.IntegerMatMul.PackedMinRowsVnni512 = Kernels.IntegerMatMul.PackedMinRowsMadd256 = int.Parse(intPackedMin, System.Globalization.CultureInfo.InvariantCulture);
        if (Environment.GetEnvironmentVariable("PROBE_DOT_MIN") is { } dotMin)
            Kernels.QuantizedMatMul.DotTilesMinRows = Kernels.QuantizedMatMul.DotTilesMinRowsFewWeightRows = int.Parse(dotMin, System.Globalization.CultureInfo.InvariantCulture);
        if (Environment.GetEnvironmentVariable("PROBE_MAXBITS") is { } bits) Kernels.Simd.MaxBits = int.Parse(bits, System.Globalization.CultureInfo.InvariantCulture);
        if (Environment.GetEnvironmentVariable("PROBE_WS_MAX") is { } wsMax) Kernels.PackedMatMul.WeightStripsMaxRows = int.Parse(wsMax, System.Globalization.CultureInfo.InvariantCulture);
        if (Environment.GetEnvironmentVariable("PROBE_FUSED_BYTES") is { } fused) Kernels.PackedIntegerMatMul.FusedWeightBytes = int.Parse(fused, System.Globalization.CultureInfo.InvariantCulture);
        if (Environment.GetEnvironmentVariable("PROBE_LAYOUT") is { } layout) Kernels.PackedMatMul.ForcedLayout = Enum.Parse<Kernels.PackedLayout>(layout);
        bool warmed = false;
        Console.WriteLine($"load {File.ReadAllText("/proc/loadavg").Trim()}, {Environment.ProcessorCount} cores, best of {rounds} rounds");
        Console.WriteLine("| shape | rows | float32 ms | int8 / float32 | int4 gG / float32 | w8a8-dynamic / float32 | float16 / float32 | bfloat16 / float32 | w8a8-dynamic simulated | w8a8-static integer | w8a8-static simulated |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var (n, k) in shapes)
            foreach (int m in rowsList)
            {
                using var scope = NewDisposeScope();
                torch.manual_seed(0);
                var linear = nn.Linear(k, n);
                var x = torch.randn(m, k);
                var perChannel = new QuantSpec(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0));
                var int8 = new QuantizedLinear(QuantizedWeight.Quantize(linear.weight!, perChannel), linear.bias);
                var int4 = new QuantizedLinear(QuantizedWeight.Quantize(linear.weight!, new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(Math.Min(group, k)))), linear.bias);
                var dynamic = new QuantizedLinear(QuantizedWeight.Quantize(linear.weight!, perChannel), linear.bias) { DynamicInput = true };
                var half = new QuantizedLinear(QuantizedWeight.Quantize(linear.weight!, new QuantSpec(QuantType.Float16)), linear.bias);
                var brain = new QuantizedLinear(QuantizedWeight.Quantize(linear.weight!, new QuantSpec(QuantType.BFloat16)), linear.bias);
                // Static W8A8 with the range of a standard normal input (uint8 affine, as PyTorch's default observer).
                var statik = new QuantizedLinear(QuantizedWeight.Quantize(linear.weight!, perChannel), linear.bias,
                    new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, 8f / 255f, 128));
                var layers = new Func<Tensor, Tensor>[]
                {
                    linear.call, int8.call, int4.call, dynamic.call, half.call, brain.call,
                    t => dynamic.Forward(t, null, integer: false), t => statik.Forward(t, null, integer: true), t => statik.Forward(t, null, integer: false),
                };
                var variants = layers.Select(layer => (Func<Tensor>)(() => layer(x))).ToArray();
                if (Environment.GetEnvironmentVariable("PROBE_PROFILE") is { } only)
                {
                    // For a profiler: one variant (0 float32, 1 int8, 2 int4, 3 w8a8 dynamic by the rule, 4 float16, 5 bfloat16, 6 w8a8 dynamic simulated, 7 w8a8 static in integers, 8 simulated) called for 5 seconds.
                    var forward = variants[int.Parse(only, System.Globalization.CultureInfo.InvariantCulture)];
                    Console.WriteLine($"| {n}x{k} | {m} | variant {only}: {ConvBench.MicrosecondsPerCall(forward):0.0} us per call");
                    continue;
                }
                if (!warmed)
                {
                    foreach (int rows in rowsList)
                    {
                        var xw = torch.randn(rows, k);
                        foreach (var layer in layers)
                            for (var clock = Stopwatch.StartNew(); clock.ElapsedMilliseconds < 300;) layer(xw).Dispose();
                    }
                    warmed = true;
                }
                var best = new double[variants.Length];
                Array.Fill(best, double.MaxValue);
                for (int round = 0; round < rounds; round++)
                    for (int v = 0; v < variants.Length; v++) best[v] = Math.Min(best[v], Median(variants[v], 40));
                Console.WriteLine($"| {n}x{k} | {m} | {best[0]:0.000} | " + string.Join(" | ", best.Skip(1).Select(b => $"{b / best[0]:0.00}")) + " |");
            }
        return 0;
    }

    private static double Median(Func<Tensor> forward, int calls)
    {
        var warmUp = Stopwatch.StartNew();
        for (int i = 0; i < 5 || warmUp.ElapsedMilliseconds < 20; i++) forward().Dispose();
        var times = new double[calls];
        for (int i = 0; i < calls; i++)
        {
            long start = Stopwatch.GetTimestamp();
            forward().Dispose();
            times[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }
        Array.Sort(times);
        return times[calls / 2];
    }
}
