using System.Diagnostics;
using System.Globalization;
using QuantSharp.Kernels;
using QuantSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Bench;

/// <summary>
/// Is a quantized convolution ever slower than the float32 one it replaced? Times, in one process and interleaved
/// (so a burst of load on a shared machine hits every side alike), libtorch's float32 convolution and the quantized
/// layer through each route (<see cref="ConvolutionRoute"/>: the measured rule, unfold + packed kernel, the
/// small-convolution kernel where the weight fits it (dequantize + libtorch where not), dequantize + libtorch, libtorch's bfloat16 convolution), over the bundled MNIST CNN's convolutions, ResNet-like 3x3 layers, a 1x1 and a Conv1d k=3.
/// <c>dotnet run -c Release --project bench/QuantSharp.Bench -- conv [RUNS] [REPEATS] [FILTER] [THREADS]</c> (defaults 5, 5, all, all cores):
/// per run and variant the minimum of REPEATS calls (with <c>CONV_STAT=mean</c>, the mean of a block of REPEATS calls: the
/// time a user's repeated calls take, where a call's minimum favours the side whose calls vary more); the table gives the
/// medians over the runs and the min-max of the per-run ratio to float32. Both sides use THREADS threads. FILTER keeps
/// the cases whose name contains it.
/// <c>CONV_PROFILE=ROUTE:KIND</c> (a <see cref="ConvolutionRoute"/> and a qtype, or <c>Float:</c>) times that call alone for
/// 5 seconds per case instead, for a profiler; <c>CONV_PAIR=ROUTE:KIND,ROUTE:KIND,...</c> alternates blocks of calls of
/// each (paired in one process; <c>CONV_BLOCK</c> calls a block, default 20; ROUTE also <c>InPlace</c> or <c>Packed</c>: the kernel route with its strips read in place
/// from the padded images or packed, <see cref="PackedMatMul.ReadsInPlace"/>); <c>CONV_BATCH</c> keeps one batch size;
/// <c>CONV_SHAPE=C,O,H,W,K,STRIDE,PAD[,GROUPS]</c> (H 0: a Conv1d over W steps) times one Conv2d of that shape instead of the list; ROUTE <c>Float32Rule</c> is the
/// layer's forward with <c>UseBFloat16Compute</c> off (the float32 rule's route), <c>FailedCheckRule</c> its forward as where
/// libtorch's bfloat16 convolution failed <see cref="BFloat16Check"/> (<see cref="BFloat16Check.ForcedConvolutions"/>),
/// <c>PackedBFloat16</c> the bfloat16 route on the packed kernels so; ROUTE <c>BFloat16Packed</c> is the
/// bfloat16 route with its strips packed, <c>BFloat16Pairs</c> with its strips read from pair images where the channel
/// count is even (<see cref="PackedMatMul.ReadsPairsInPlace"/>, whatever its rule), and <c>PAIR_BLOCK=N</c> sets
/// <see cref="PackedMatMul.PairBlock"/>; ROUTE <c>DirectBuffer</c> is the small kernel with every image padded into one
/// buffer first (<see cref="DirectConvolution.ForcedPaddingPerItem"/> false), <c>DirectPerItem</c> with each work item
/// padding its own image's planes (true), <c>DirectRowByRow</c> and
/// <c>DepthwiseRowByRow</c> those routes with their strided rows written through <see cref="PhaseGrid.WriteRow"/>
/// (<see cref="DirectConvolution.ForcedPairedRows"/> false), <c>DirectWhole</c> the small kernel on the weight dequantized
/// whole before the call (<see cref="QuantizedConv.DequantizesWholeWeight"/>), <c>DepthwiseWhole</c> the depthwise kernel so, <c>DepthwiseLanes</c> and
/// <c>DepthwisePlanes</c> the depthwise kernel with the channels in lanes or plane by plane
/// (<see cref="DepthwiseConvolution.ForcedLanes"/>); ROUTE <c>Tuned</c> is the layer's
/// forward with <see cref="QuantizedConv.Autotune"/> on, and <c>CONV_TUNE=1</c> makes each layer's first call with it (the
/// tuning) from a cold start and prints its time, the rule's route and the one kept; <c>PROBE_HALF_SINGLE=0</c> turns
/// <see cref="LinearKernels.ManagedHalfToSingle"/> off.
/// </summary>
internal static class ConvBench
{
    private sealed record Case(string Name, int Batch, Func<nn.Module<Tensor, Tensor>> Float, long[] Input);

    private static IEnumerable<Case> Cases()
    {
        // PAIR_BLOCK=N: channel pairs per block of the pair-image route.
        if (Environment.GetEnvironmentVariable("PAIR_BLOCK") is { } pairBlock) PackedMatMul.PairBlock = int.Parse(pairBlock, CultureInfo.InvariantCulture);
        // CONV_BATCHES=2,4: other batch sizes for the layers after MNIST's (and for CONV_SHAPE).
        int[] batches = Environment.GetEnvironmentVariable("CONV_BATCHES") is { } list
            ? list.Split(',').Select(v => int.Parse(v, CultureInfo.InvariantCulture)).ToArray() : [1, 8];
        // CONV_SHAPE=C,O,H,W,K,STRIDE,PAD[,GROUPS]: one Conv2d of that shape instead of the list (H 0: a Conv1d over W).
        if (Environment.GetEnvironmentVariable("CONV_SHAPE") is { } custom)
        {
            int[] v = custom.Split(',').Select(t => int.Parse(t, CultureInfo.InvariantCulture)).ToArray();
            foreach (int b in batches)
            {
                int groups = v.Length > 7 ? v[7] : 1;
                string grouped = groups > 1 ? $" g{groups}" : "";
                // H = 0: a Conv1d over W steps.
                if (v[2] == 0)
                    yield return new($"custom conv1d {v[0]}->{v[1]} k{v[4]} s{v[5]} p{v[6]}{grouped} {v[3]}", b, () => nn.Conv1d(v[0], v[1], v[4], stride: v[5], padding: v[6], groups: groups), [b, v[0], v[3]]);
                else
                    yield return new($"custom {v[0]}->{v[1]} {v[4]}x{v[4]} s{v[5]} p{v[6]}{grouped} {v[2]}x{v[3]}", b, () => nn.Conv2d(v[0], v[1], v[4], stride: v[5], padding: v[6], groups: groups), [b, v[0], v[2], v[3]]);
            }
            yield break;
        }
        foreach (int b in new[] { 1, 64, 500 })
        {
            yield return new("mnist-conv1 1->16 3x3 28x28", b, () => nn.Conv2d(1, 16, 3), [b, 1, 28, 28]);
            yield return new("mnist-conv2 16->32 3x3 13x13", b, () => nn.Conv2d(16, 32, 3), [b, 16, 13, 13]);
        }
        foreach (int b in batches)
        {
            yield return new("stem 3->32 3x3 s2 224x224", b, () => nn.Conv2d(3, 32, 3, stride: 2, padding: 1), [b, 3, 224, 224]);
            yield return new("resnet 64->64 3x3 56x56", b, () => nn.Conv2d(64, 64, 3, padding: 1), [b, 64, 56, 56]);
            yield return new("resnet 128->128 3x3 28x28", b, () => nn.Conv2d(128, 128, 3, padding: 1), [b, 128, 28, 28]);
            yield return new("resnet 256->256 3x3 14x14", b, () => nn.Conv2d(256, 256, 3, padding: 1), [b, 256, 14, 14]);
            yield return new("resnet 128->256 3x3 s2 28x28", b, () => nn.Conv2d(128, 256, 3, stride: 2, padding: 1), [b, 128, 28, 28]);
            // ResNet's other downsampling 3x3 layers (stride 2), for the weight-only stride-2 rule.
            yield return new("resnet 64->128 3x3 s2 56x56", b, () => nn.Conv2d(64, 128, 3, stride: 2, padding: 1), [b, 64, 56, 56]);
            yield return new("resnet 256->512 3x3 s2 14x14", b, () => nn.Conv2d(256, 512, 3, stride: 2, padding: 1), [b, 256, 14, 14]);
            yield return new("resnet 512->512 3x3 7x7", b, () => nn.Conv2d(512, 512, 3, padding: 1), [b, 512, 7, 7]);
            yield return new("resnet50 1x1 s2 256->512 56x56", b, () => nn.Conv2d(256, 512, 1, stride: 2), [b, 256, 56, 56]);
            // Smaller weights on 49 (or 64) positions, for the bound of the few-position weight-only rule.
            yield return new("few 256->256 3x3 7x7", b, () => nn.Conv2d(256, 256, 3, padding: 1), [b, 256, 7, 7]);
            yield return new("few 128->128 3x3 7x7", b, () => nn.Conv2d(128, 128, 3, padding: 1), [b, 128, 7, 7]);
            yield return new("few 32->16 3x3 8x8", b, () => nn.Conv2d(32, 16, 3, padding: 1), [b, 32, 8, 8]);
            yield return new("few 256->256 3x3 8x8", b, () => nn.Conv2d(256, 256, 3, padding: 1), [b, 256, 8, 8]);
            yield return new("few 1x1 512->2048 7x7", b, () => nn.Conv2d(512, 2048, 1), [b, 512, 7, 7]);
            yield return new("few conv1d 512->512 k3 48", b, () => nn.Conv1d(512, 512, 3, padding: 1), [b, 512, 48]);
            yield return new("1x1 256->256 28x28", b, () => nn.Conv2d(256, 256, 1), [b, 256, 28, 28]);
            // ResNet-50's other pointwise shapes (stride 1), for the weight-only pointwise rule.
            yield return new("1x1 64->256 56x56", b, () => nn.Conv2d(64, 256, 1), [b, 64, 56, 56]);
            yield return new("1x1 512->128 28x28", b, () => nn.Conv2d(512, 128, 1), [b, 512, 28, 28]);
            yield return new("1x1 1024->256 14x14", b, () => nn.Conv2d(1024, 256, 1), [b, 1024, 14, 14]);
            yield return new("1x1 128->512 28x28", b, () => nn.Conv2d(128, 512, 1), [b, 128, 28, 28]);
            // VGG-16's 512-channel 3x3 layers (stride 1, many positions), for the weight-only rule of wide layers.
            yield return new("vgg 512->512 3x3 28x28", b, () => nn.Conv2d(512, 512, 3, padding: 1), [b, 512, 28, 28]);
            yield return new("vgg 512->512 3x3 14x14", b, () => nn.Conv2d(512, 512, 3, padding: 1), [b, 512, 14, 14]);
            yield return new("conv1d 512->512 k3 256", b, () => nn.Conv1d(512, 512, 3, padding: 1), [b, 512, 256]);
            // Other Conv1d shapes (audio, sequence models), for the weight-only rule of long Conv1d calls.
            yield return new("conv1d 256->256 k3 1000", b, () => nn.Conv1d(256, 256, 3, padding: 1), [b, 256, 1000]);
            yield return new("conv1d 768->768 k5 128", b, () => nn.Conv1d(768, 768, 5, padding: 2), [b, 768, 128]);
            yield return new("conv1d 128->256 k7 400", b, () => nn.Conv1d(128, 256, 7, padding: 3), [b, 128, 400]);
            // Reductions of 64-255 terms (as MNIST conv2's 144), for the W8A8 rule between few terms and the integer GEMM's.
            yield return new("mid 16->64 3x3 56x56", b, () => nn.Conv2d(16, 64, 3, padding: 1), [b, 16, 56, 56]);
            yield return new("mid 8->32 3x3 112x112", b, () => nn.Conv2d(8, 32, 3, padding: 1), [b, 8, 112, 112]);
        }
    }

    private static readonly string[] Kinds = ["int8", "int4", "fp16", "w8a8-static"];

    public static int Run(string[] args)
    {
        int runs = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 5;
        int repeats = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 5;
        string filter = args.Length > 2 ? args[2] : "";
        int threads = args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : Environment.ProcessorCount;
        torch.set_num_threads(threads);
        QuantSharp.Kernels.KernelThreads.Count = threads;
        Console.WriteLine($"Convolutions, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, {Environment.ProcessorCount} cores, {threads} thread(s) on both sides, {runs} runs x {(s_mean ? "mean" : "min")} of {repeats} calls, load {File.ReadAllText("/proc/loadavg").Split(' ')[0]}");
        Console.WriteLine();
        Console.WriteLine("| convolution | batch | qtype | float32 ms | dequantize+libtorch ms | unfold+kernel ms | direct ms | bfloat16 ms | chosen | chosen / float32 time (median, min-max) |");
        Console.WriteLine("|---|---:|---|---:|---:|---:|---:|---:|---|---:|");
        using var noGrad = no_grad();
        if (Environment.GetEnvironmentVariable("PROBE_HALF_SINGLE") == "0") LinearKernels.ManagedHalfToSingle = false;
        PrimeAllocator();
        string? onlyBatch = Environment.GetEnvironmentVariable("CONV_BATCH");
        foreach (var c in Cases().Where(c => c.Name.Contains(filter, StringComparison.Ordinal) && (onlyBatch is null || c.Batch.ToString(CultureInfo.InvariantCulture) == onlyBatch)))
        {
            torch.manual_seed(1);
            var conv = c.Float();
            using var x = torch.randn(c.Input);
            // int4 needs an even reduction length (MNIST conv1 has 9).
            var w = ((TorchSharp.Modules.Convolution)conv).weight!;
            var kinds = Kinds.Where(k => k != "int4" || w.numel() / w.shape[0] % 2 == 0).ToArray();
            var layers = kinds.Select(k => (QuantizedConv)Quantize(conv, k, x)).ToArray();
            var time = new List<double>[1 + 4 * layers.Length];
            for (int i = 0; i < time.Length; i++) time[i] = [];
            var chosen = new List<double>[layers.Length];
            for (int i = 0; i < chosen.Length; i++) chosen[i] = [];
            // libtorch's convolutions reach their steady speed only after tens of calls (the 224x224 stem at batch 1:
            // 1.8-2.0 ms for the first 60 calls, then 0.23 ms), so every variant is warmed up first.
            Func<Tensor> Call(string profile)
            {
                var parts = profile.Split(':');
                if (parts[0] == "Float") return () => conv.call(x);
                var layer = layers[Array.IndexOf(kinds, parts[1])];
                // InPlace / Packed: the kernel route with its strips read in place from the padded images, or packed.
                // Tuned: the layer's forward with QuantizedConv.Autotune on (its first call, in the warm-up, tunes the shape).
                if (parts[0] == "Tuned") return () => Tuned(() => layer.call(x));
                // Float32Rule: the rule's route with QuantizedModule.UseBFloat16Compute off (the float32 rule).
                if (parts[0] == "Float32Rule") return () => Float32Rule(() => layer.call(x));
                // FailedCheckRule: the rule's route as where libtorch's bfloat16 convolution failed its check (BFloat16Check.ForcedConvolutions false).
                if (parts[0] == "FailedCheckRule") return () => AsIfCheckFailed(() => layer.call(x));
                // LibTorchBFloat16: libtorch's bfloat16 convolution, whatever the rule (grouped layers too).
                if (parts[0] == "LibTorchBFloat16") return () => layer.BFloat16Convolution(x);
                // PackedBFloat16: the bfloat16 route on the packed kernels whatever BFloat16Check found (ForcedConvolutions false).
                if (parts[0] == "PackedBFloat16") return () => AsIfCheckFailed(() => layer.Forward(x, ConvolutionRoute.BFloat16));
                // BFloat16Packed / BFloat16Pairs: the bfloat16 route on the packed kernels (as PackedBFloat16) with its strips
                // packed, or read from pair images (an even channel count).
                if (parts[0] is "BFloat16Packed" or "BFloat16Pairs")
                {
                    bool pairs = parts[0] == "BFloat16Pairs";
                    return () => With(v => PackedMatMul.ForcedPairsInPlace = v ? pairs : null, true, false, () => AsIfCheckFailed(() => layer.Forward(x, ConvolutionRoute.BFloat16)));
                }
                // DirectBuffer / DirectPerItem: the small kernel with every image padded into one buffer first, or per
                // work item (whatever DirectConvolution's rule); ROUTERowByRow (Direct, Depthwise, Auto, BFloat16...): that
                // route with its strided rows written through PhaseGrid.WriteRow (DirectConvolution's rules and the pair
                // planes' permutes, PackedMatMul.ForcedPhaseShuffles, off).
                if (parts[0] is "DirectBuffer" or "DirectPerItem" || parts[0].EndsWith("RowByRow", StringComparison.Ordinal))
                {
                    bool? perItem = parts[0] switch { "DirectBuffer" => false, "DirectPerItem" => true, _ => null };
                    var route = perItem is not null ? ConvolutionRoute.Direct : Enum.Parse<ConvolutionRoute>(parts[0][..^"RowByRow".Length]);
                    return () =>
                    {
                        if (perItem is not null) DirectConvolution.ForcedPaddingPerItem = perItem;
                        else DirectConvolution.ForcedPairedRows = PackedMatMul.ForcedPhaseShuffles = false;
                        try { return layer.Forward(x, route); }
                        finally { DirectConvolution.ForcedPaddingPerItem = DirectConvolution.ForcedPairedRows = PackedMatMul.ForcedPhaseShuffles = null; }
                    };
                }
                // DirectWhole / DepthwiseWhole: the small / depthwise kernel on the weight dequantized whole before the call (QuantizedConv.DequantizesWholeWeight).
                if (parts[0] is "DirectWhole" or "DepthwiseWhole")
                {
                    var whole = parts[0] == "DirectWhole" ? ConvolutionRoute.Direct : ConvolutionRoute.Depthwise;
                    return () => With(v => QuantizedConv.DequantizesWholeWeight = v, true, false, () => layer.Forward(x, whole));
                }
                // DepthwiseLanes / DepthwisePlanes: the depthwise kernel with the channels in lanes, or plane by plane (DepthwiseConvolution.ForcedLanes).
                if (parts[0] is "DepthwiseLanes" or "DepthwisePlanes")
                {
                    bool lanes = parts[0] == "DepthwiseLanes";
                    return () => With(v => DepthwiseConvolution.ForcedLanes = v ? lanes : null, true, false, () => layer.Forward(x, ConvolutionRoute.Depthwise));
                }
                // QuadRows / QuadWide: the Quad route (static W8A8) with its runs within output rows, or over the wide grid (QuadConvolution.ForcedRowRuns).
                if (parts[0] is "QuadRows" or "QuadWide")
                {
                    bool rowRuns = parts[0] == "QuadRows";
                    return () => With(v => QuadConvolution.ForcedRowRuns = v ? rowRuns : null, true, false, () => layer.Forward(x, ConvolutionRoute.Quad));
                }
                // BFloat16Lanes / BFloat16Strips: a grouped layer's bfloat16 route on the packed kernels (as PackedBFloat16) with the
                // output channels in lanes, or 32 positions in lanes (PackedMatMul.ForcedLanes).
                if (parts[0] is "BFloat16Lanes" or "BFloat16Strips")
                {
                    bool lanes = parts[0] == "BFloat16Lanes";
                    return () => With(v => PackedMatMul.ForcedLanes = v ? lanes : null, true, false, () => AsIfCheckFailed(() => layer.Forward(x, ConvolutionRoute.BFloat16)));
                }
                // QuadGroups / QuadShared: the Quad route with its work split by group, or in shared passes (QuadConvolution.ForcedByGroup).
                if (parts[0] is "QuadGroups" or "QuadShared")
                {
                    bool byGroup = parts[0] == "QuadGroups";
                    return () => With(v => QuadConvolution.ForcedByGroup = v ? byGroup : null, true, false, () => layer.Forward(x, ConvolutionRoute.Quad));
                }
                bool? inPlace = parts[0] switch { "InPlace" => true, "Packed" => false, _ => null };
                if (inPlace is null) return () => layer.Forward(x, Enum.Parse<ConvolutionRoute>(parts[0]));
                return () =>
                {
                    PackedMatMul.ForcedReadsInPlace = inPlace;
                    try { return layer.Forward(x, ConvolutionRoute.Kernel); }
                    finally { PackedMatMul.ForcedReadsInPlace = null; }
                };
            }
            if (Environment.GetEnvironmentVariable("CONV_ROUTES") == "1")
            {
                // Each layer's rule route, and the route where libtorch's bfloat16 convolution failed its check: nothing timed.
                for (int i = 0; i < layers.Length; i++)
                {
                    var rule = layers[i].Route(x);
                    BFloat16Check.ForcedConvolutions = false;
                    try { Console.WriteLine($"{c.Name} batch {c.Batch} {kinds[i]}: rule {rule}, failed check {layers[i].Route(x)}"); }
                    finally { BFloat16Check.ForcedConvolutions = null; }
                }
                continue;
            }
            if (Environment.GetEnvironmentVariable("CONV_TUNE") == "1")
            {
                // Each layer's first call with QuantizedConv.Autotune on (the tuning): its time, the rule's route and the kept one.
                for (int i = 0; i < layers.Length; i++) Tune(c, kinds[i], layers[i], x);
                continue;
            }
            if (Environment.GetEnvironmentVariable("CONV_PAIR") is { } pair)
            {
                // ROUTE:KIND,ROUTE:KIND,...: blocks of calls of each in turn, in one process (int4 left out where the
                // layer has none: an odd reduction).
                var variants = pair.Split(',').Where(p => p.StartsWith("Float:", StringComparison.Ordinal) || kinds.Contains(p.Split(':')[1])).ToArray();
                Pair(c, variants, variants.Select(Call).ToArray());
                foreach (var tuned in pair.Split(',').Where(p => p.StartsWith("Tuned:", StringComparison.Ordinal)))
                {
                    var layer = layers[Array.IndexOf(kinds, tuned.Split(':')[1])];
                    Console.WriteLine($"{c.Name} batch {c.Batch} {tuned}: kept {layer.TunedRoute(x)}, rule {layer.Route(x)}");
                }
                continue;
            }
            if (Environment.GetEnvironmentVariable("CONV_PROFILE") is { } profile)
            {
                // ROUTE:KIND (e.g. Direct:int8, or Float:): that call alone for 5 s, for a profiler.
                var call = Call(profile);
                WarmUp(call);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{c.Name} batch {c.Batch} {profile}: {MicrosecondsPerCall(call):F1} us per call"));
                continue;
            }
            WarmUp(() => conv.call(x));
            foreach (var layer in layers)
                foreach (var route in Routes) WarmUp(() => layer.Forward(x, route));
            for (int run = 0; run <= runs; run++)
            {
                // Run 0 is not counted either. Each layer's rule is timed right after a float32 turn of its own: a
                // libtorch convolution after a bfloat16 one ran a few percent slower (the stem at batch 1, CONV_PAIR
                // Float:,BFloat16:int8,Reference:int8: the same float32 call as the first, beaten by it in 30-35 of 40
                // rounds), which had put the weight-only cells on libtorch's route at 1.05-1.09x of themselves.
                for (int i = 0; i < layers.Length; i++)
                {
                    var layer = layers[i];
                    double f = Time(repeats, () => conv.call(x));
                    double a = Time(repeats, () => layer.Forward(x, ConvolutionRoute.Auto));
                    double r = Time(repeats, () => layer.Forward(x, ConvolutionRoute.Reference));
                    double k = Time(repeats, () => layer.Forward(x, ConvolutionRoute.Kernel));
                    double d = Time(repeats, () => layer.Forward(x, ConvolutionRoute.Direct));
                    double h = Time(repeats, () => layer.Forward(x, ConvolutionRoute.BFloat16));
                    if (run == 0) continue;
                    time[0].Add(f);
                    time[1 + 4 * i].Add(r);
                    time[2 + 4 * i].Add(k);
                    time[3 + 4 * i].Add(d);
                    time[4 + 4 * i].Add(h);
                    chosen[i].Add(a / f);
                }
            }
            for (int i = 0; i < layers.Length; i++)
            {
                string route = Chosen(layers[i], x);
                var ratios = chosen[i];
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {c.Name} | {c.Batch} | {kinds[i]} | {Median(time[0]):F3} | {Median(time[1 + 4 * i]):F3} | {Median(time[2 + 4 * i]):F3} | {Median(time[3 + 4 * i]):F3} | {Median(time[4 + 4 * i]):F3} | {route} | **{Median(ratios):F2}** ({ratios.Min():F2}-{ratios.Max():F2}) |"));
            }
            foreach (var l in layers) l.Dispose();
            conv.Dispose();
        }
        return 0;
    }

    /// <summary><paramref name="call"/> with <see cref="QuantizedModule.UseBFloat16Compute"/> off (the float32 rule).</summary>
    private static Tensor Float32Rule(Func<Tensor> call) => With(v => QuantizedModule.UseBFloat16Compute = v, false, true, call);

    /// <summary><paramref name="call"/> as where libtorch's bfloat16 convolution failed <see cref="BFloat16Check"/> (<see cref="BFloat16Check.ForcedConvolutions"/> false).</summary>
    private static Tensor AsIfCheckFailed(Func<Tensor> call) => With(v => BFloat16Check.ForcedConvolutions = v ? false : null, true, false, call);

    /// <summary><paramref name="call"/> with <see cref="QuantizedConv.Autotune"/> on.</summary>
    private static Tensor Tuned(Func<Tensor> call) => With(v => QuantizedConv.Autotune = v, true, false, call);

    /// <summary><paramref name="call"/> with a static option set to <paramref name="during"/>, then set to <paramref name="after"/> (its default).</summary>
    private static Tensor With(Action<bool> set, bool during, bool after, Func<Tensor> call)
    {
        set(during);
        try
        {
            return call();
        }
        finally
        {
            set(after);
        }
    }

    /// <summary><c>CONV_TUNE=1</c>: the first call of <paramref name="layer"/> with <see cref="QuantizedConv.Autotune"/> on (it tunes the shape), its time, the rule's route and the kept one.</summary>
    private static void Tune(Case c, string kind, QuantizedConv layer, Tensor x)
    {
        var sw = Stopwatch.StartNew();
        Tuned(() => layer.call(x)).Dispose();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{c.Name} batch {c.Batch} {kind}: candidates {string.Join(",", layer.Candidates(x))}, rule {layer.Route(x)}, kept {layer.TunedRoute(x)}, first call {sw.Elapsed.TotalMilliseconds:F0} ms"));
    }

    private static string Chosen(QuantizedConv layer, Tensor x) => layer.Route(x) switch { ConvolutionRoute.Kernel => "kernel", ConvolutionRoute.Direct => "direct", ConvolutionRoute.BFloat16 => "bfloat16", _ => "libtorch" };

    private static nn.Module<Tensor, Tensor> Quantize(nn.Module<Tensor, Tensor> conv, string kind, Tensor x)
    {
        var w = ((TorchSharp.Modules.Convolution)conv).weight!;
        long k = w.numel() / w.shape[0];
        var spec = kind switch
        {
            "int4" => new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, k % 32 == 0 ? new PerGroup(32) : new PerAxis(0)),
            "fp16" => new QuantSpec(QuantType.Float16),
            _ => QuantizationRecipe.Int8WeightOnly().BaseWeights,
        };
        ActivationQuantization? input = null;
        if (kind == "w8a8-static")
        {
            // uint8 affine over the input's range, as a calibrated MinMax observer would give.
            float min = Math.Min(0f, x.min().item<float>()), max = Math.Max(0f, x.max().item<float>());
            float scale = (max - min) / 255f;
            input = new ActivationQuantization(QuantType.UInt8, QuantScheme.Affine, false, scale, (int)Math.Round(-min / scale));
        }
        return QuantizedModules.Quantize(conv, spec, input);
    }

    /// <summary>
    /// Allocates and frees one 24 MiB tensor, so that glibc's malloc serves every later allocation below that size from
    /// its heap (freeing a memory-mapped block raises its mmap threshold to that block's size). Without it, whether a
    /// convolution's output is mapped and faulted in afresh on every call depends on the process's allocation history:
    /// the 224x224 stem's float32 convolution took 1.6-2.2 ms a call for as long as a process ran only it, and 0.22 ms
    /// after a single torch.empty of its output's size had been freed; the float32 side of earlier tables was often
    /// the slow one.
    /// </summary>
    internal static void PrimeAllocator() => torch.empty(6L << 20, ScalarType.Float32).Dispose();

    private static readonly ConvolutionRoute[] Routes = [ConvolutionRoute.Reference, ConvolutionRoute.Kernel, ConvolutionRoute.Direct, ConvolutionRoute.BFloat16, ConvolutionRoute.Auto];

    /// <summary>Calls <paramref name="call"/> for 5 seconds (a loop for a profiler); returns the mean time per call in microseconds.</summary>
    internal static double MicrosecondsPerCall(Func<Tensor> call)
    {
        var clock = Stopwatch.StartNew();
        long calls = 0;
        for (; clock.ElapsedMilliseconds < 5000; calls++) call().Dispose();
        return clock.Elapsed.TotalMilliseconds * 1000 / calls;
    }

    /// <summary>
    /// Calls <paramref name="call"/> at least 50 times and for at least 0.2 s, and then until the JIT has compiled nothing
    /// for 250 ms (at most 3 s), as <c>quantsharp bench</c> does: the runtime recompiles a method optimized only after 30
    /// calls counted from 100 ms after the last quick (tier-0) compilation, and a table's routes are called 5 times a run,
    /// so without this wait the managed routes were timed in their first-tier code (the stem's integer W8A8 route: 0.366
    /// ms in a table, 0.200 ms with <c>DOTNET_TC_CallCountingDelayMs=0</c>, 0.163-0.170 ms in a 5 s loop).
    /// </summary>
    private static void WarmUp(Func<Tensor> call)
    {
        var sw = Stopwatch.StartNew();
        var jit = JitQuiet.Start();
        for (int i = 0; ; i++)
        {
            using (var y = call()) { }
            double quiet = jit.Observe() * 1000, now = sw.Elapsed.TotalMilliseconds;
            if (i >= 50 && now >= 200 && (quiet >= 250 || now >= 3000)) break;
        }
    }

    /// <summary>
    /// <c>CONV_PAIR</c>: 41 rounds (the first not counted), each timing a block of 20 calls (<c>CONV_BLOCK</c>) of every variant in turn;
    /// prints each variant's median block time per call and in how many rounds it beat the first variant.
    /// </summary>
    private static void Pair(Case c, string[] names, Func<Tensor>[] calls)
    {
        foreach (var call in calls) WarmUp(call);
        var times = names.Select(_ => new List<double>()).ToArray();
        for (int round = 0; round <= 40; round++)
            for (int v = 0; v < calls.Length; v++)
            {
                var sw = Stopwatch.StartNew();
                for (int i = 0; i < s_block; i++) calls[v]().Dispose();
                if (round > 0) times[v].Add(sw.Elapsed.TotalMilliseconds * 1000 / s_block);
            }
        for (int v = 0; v < calls.Length; v++)
        {
            int wins = times[v].Zip(times[0], (a, b) => a < b ? 1 : 0).Sum();
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{c.Name} batch {c.Batch} {names[v]}: median {Median(times[v]):F1} us per call, faster than {names[0]} in {wins} of {times[v].Count} rounds"));
        }
    }

    /// <summary>Calls per block of <c>CONV_PAIR</c> (<c>CONV_BLOCK</c>, default 20).</summary>
    private static readonly int s_block = int.Parse(Environment.GetEnvironmentVariable("CONV_BLOCK") ?? "20", CultureInfo.InvariantCulture);

    /// <summary>Whether the table times a variant by the mean of a block of calls (<c>CONV_STAT=mean</c>) rather than by its fastest call.</summary>
    private static readonly bool s_mean = Environment.GetEnvironmentVariable("CONV_STAT") == "mean";

    /// <summary>A variant's time in a run, in ms: <see cref="Min"/>, or with <c>CONV_STAT=mean</c> the mean of <paramref name="repeats"/> calls in a row.</summary>
    private static double Time(int repeats, Func<Tensor> call)
    {
        if (!s_mean) return Min(repeats, call);
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < repeats; i++) call().Dispose();
        return sw.Elapsed.TotalMilliseconds / repeats;
    }

    /// <summary>Minimum wall time of <paramref name="repeats"/> calls, in ms.</summary>
    private static double Min(int repeats, Func<Tensor> call)
    {
        double best = double.MaxValue;
        for (int i = 0; i < repeats; i++)
        {
            var sw = Stopwatch.StartNew();
            using (var y = call()) { }
            best = Math.Min(best, sw.Elapsed.TotalMilliseconds);
        }
        return best;
    }

    private static double Median(List<double> v)
    {
        var s = v.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }
}
