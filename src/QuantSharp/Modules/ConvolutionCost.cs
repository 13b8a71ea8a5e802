using QuantSharp.Kernels;

namespace QuantSharp.Modules;

/// <summary>
/// Chooses, per call, how a <see cref="QuantizedConv"/> runs. Measured on the development machine (AMD EPYC, 2 vCPUs,
/// AVX-512 with VNNI and BF16, AVX-VNNI; <c>bench/QuantSharp.Bench conv</c>, docs/BENCHMARKS.md "Convolutions"), two
/// threads on both sides, ratios to the float32 layer's time:
/// <list type="bullet">
/// <item>Small calls (up to <see cref="DirectMaxWork"/> multiply-adds, reduction up to
/// <see cref="DirectConvolution.MaxReduction"/>): the small-convolution kernel (<see cref="DirectConvolution"/>: it reads
/// the padded image, split into stride phases, without unfolding it) on the weight dequantized by the threads that read it, a static
/// W8A8 input quantized as the image is copied. libtorch's convolution is mostly fixed cost there: 0.56-0.76x for the MNIST CNN's
/// layers at batch 1, W8A8 included. Where the float kernels' widest path is 256 bits, only calls of fewer than
/// <see cref="BFloat16MinReduction"/> terms: longer reductions take the packed kernels (<see cref="SmallKernelMaxReduction256"/>).</item>
/// <item>Static W8A8 with fewer than <see cref="BFloat16MinReduction"/> terms, up to <see cref="FewTermW8A8MaxWork"/>
/// multiply-adds, not pointwise (a 1x1 convolution keeps the rules below; none was measured here): a route that
/// quantizes the input inside its own copy of the images, where libtorch's route needs a pass of its own; the integer
/// GEMM from <see cref="FewTermIntegerMinReduction"/> terms (with the 512-bit VNNI kernel only), the small kernel below (docs/BENCHMARKS.md, stop 20;
/// interleaved tables, 13-14 processes): the stem (3 channels, 3x3, stride 2) at batch 1
/// 0.14-0.25 ms against 0.20-0.35 for dequantize + libtorch (faster in every process), MNIST conv1 at batch 64
/// 0.16-0.30 against 0.17-0.28 (faster in 12 of 14). At 49-87M multiply-adds (MNIST conv1 at batch 500, the stem at
/// batch 8) libtorch's route was faster in about half the processes, so larger calls stay there; since stop 27 the
/// small kernel's few-term calls go up to <see cref="FewTermDirectMaxWork"/> (MNIST conv1 at batch 500 on the Zen 5 VM:
/// 0.94-1.25x float32's time against 1.10-1.27x, faster in five of seven comparisons), and since stop 45, with the
/// 512-bit VNNI kernel, those of <see cref="FewTermIntegerMinReduction"/> or more terms above <see cref="FewTermW8A8MaxWork"/> at any size.</item>
/// <item>CPUs with native bfloat16 (<see cref="QuantizedModule.NativeBFloat16"/>) and <see cref="QuantizedModule.UseBFloat16Compute"/>,
/// where libtorch's bfloat16 convolution passed <see cref="BFloat16Check"/> (<see cref="QuantizedModule.BFloat16Convolutions"/>):
/// libtorch's bfloat16 convolution (oneDNN) on the weight dequantized to bfloat16, 0.51-0.94x for every other
/// convolution with a reduction of <see cref="BFloat16MinReduction"/> or more (ResNet 3x3 and 1x1 layers, stride 2,
/// Conv1d, MNIST conv2 at batch 64 and 500; every weight format and W8A8). Below it (3 input channels x 3x3, MNIST
/// conv1) oneDNN's float32 convolution is already efficient (9 multiply-adds per output for MNIST conv1: mostly memory
/// traffic) and its bfloat16 one is slower, so dequantize + float32 libtorch runs: 0.90-1.21x weight-only, 1.06-1.38x
/// W8A8 (the dequantization of a weight of a few hundred elements, and the input's quantization pass; W8A8 now only
/// above <see cref="FewTermW8A8MaxWork"/>). Where the CPU has AVX512-BF16 too (<see cref="QuantizedModule.BothBFloat16Convolutions"/>:
/// the Zen 4 VM of stop 44, where libtorch's route was slower than float32 on few positions and short pointwise
/// calls), the rule below's small kernel, integer kernels, and packed kernels on few positions or small calls come first, and the
/// packed kernels' bfloat16 route runs where <see cref="PackedBFloat16BeatsLibTorch"/>; weight-only calls of fewer than
/// <see cref="LibTorchBFloat16MinReduction"/> terms never take libtorch's (the rule below's route).</item>
/// <item>Where libtorch's bfloat16 convolution failed <see cref="BFloat16Check"/> but the CPU has AVX512-BF16
/// (<see cref="QuantizedModule.PackedBFloat16Convolutions"/>), the bfloat16 route runs on the packed kernels (their
/// micro-kernel with <c>vdpbf16ps</c>, 1.8x the float32 one's multiply-adds per second), taken only where
/// <see cref="PackedBFloat16Pays"/> (weight-only; 128 or more terms into 256 or more channels, or 256 or more into 128 or
/// more on more than <see cref="FewPositionsMaxPositions"/> positions, or 64 or more channels in and out where it reads
/// pair images in place: <see cref="PairImagesPay"/>); the float32 rule elsewhere.</item>
/// <item>Static W8A8 with a reduction of <see cref="IntegerMinReduction"/> or more runs the integer GEMM, under both
/// rules and at any stride. The images are quantized once into a padded buffer split into stride phases, where each
/// strip of the GEMM reads its reduction rows in place (<see cref="Kernels.ImageCodes"/>). Against the bfloat16 route
/// (docs/BENCHMARKS.md, stop 18; three processes): ResNet 3x3 64->64, 128->128 and 256->256 at batch 1 and 8 0.52-1.06x
/// its time (two cells of 18 above 1.0x), 1x1 256->256 0.52-0.92x, Conv1d 512->512 k3 0.56-0.83x; MNIST conv2 (144
/// terms) lost (1.11-2.54x). ResNet 128->256 stride 2 stayed on bfloat16 until stop 20, whose tables (the bench
/// warming every route up until the JIT is quiet; ten processes) gave 0.29-0.61 against 0.43-0.77 ms at batch 1 (faster
/// in every process) and 2.10-3.70 against 2.43-3.63 ms at batch 8 (faster in 8 of 10). Against dequantize + float32
/// libtorch (the float32 rule): 0.41-0.76x on the stride-1 ResNet layers, 0.58-0.68x at stride 2 with the phases
/// (0.65-1.07x unfolded); MNIST conv2 at batch 64 and 500 0.74-1.80x, which kept reductions below 256 terms on
/// libtorch until stop 27: under the float32 rule, with the 512-bit VNNI kernel, W8A8 of 64-255 terms takes the
/// integer GEMM too where it pays (<see cref="MidTermIntegerPays"/>: 0.46-1.01x float32's time on layers of 72 and 144
/// terms, against 1.05-1.14x on libtorch's route; MNIST conv2 at batch 500 too since stop 33, 0.88-0.99x).</item>
/// <item>Elsewhere the float32 rule: W8A8 and small 1x1 convolutions (a plain matrix product) run unfold + the packed
/// kernels (weight-only 1x1 beyond the small kernel lost on them, 1.30-1.48x against 1.00-1.18x for libtorch's route,
/// stops 11 and 26, but since stop 30 those of one or two images and long reductions take them:
/// <see cref="PointwiseWeightOnlyMaxImages"/>, up to eight images on one thread
/// (<see cref="PointwiseWeightOnlyMaxImagesOneThread"/>), as do long Conv1d calls of one image:
/// <see cref="Conv1dWeightOnlyMaxImages"/>); weight-only calls of fewer than <see cref="FewTermIntegerMinReduction"/>
/// terms take the small kernel up to <see cref="FewTermDirectMaxWork"/> (MNIST conv1 at batch 64 and 500), those of
/// <see cref="FewTermIntegerMinReduction"/> to <see cref="BFloat16MinReduction"/> - 1 terms up to
/// <see cref="FewTermWeightOnlyMaxWork"/> from <see cref="FewTermWeightOnlyMinImages"/> images (RGB stems at batch 2,
/// short Conv1d layers); weight-only
/// calls of at most <see cref="FewPositionsMaxPositions"/> output positions (batch 1 and 2 on 7x7), small ones whose
/// reduction is too long for the small kernel (<see cref="SmallWeightOnlyMaxWork"/>), and strided ones of long reductions
/// up to <see cref="StridedWeightOnlyMaxWork"/> (ResNet's downsampling layers at batch 1 and 2), the packed kernels, as
/// do stride-1 3x3 layers onto 28x28 in 2-8 images, whose strips they read in place (<see cref="InPlaceWeightOnlyMinImages"/>); the
/// rest dequantize + float32 libtorch, whose cost over float32 is one managed dequantization pass
/// (<see cref="Kernels.WeightDequantizer"/>) into the thread's buffer (<see cref="QuantizedConv"/>), 1.0-1.3x.</item>
/// <item>Grouped layers: depthwise ones take their own kernel where <see cref="DepthwisePays"/>; weight-only ones on CPUs
/// with AVX512-BF16 (bfloat16 compute on) the bfloat16 route with the output channels in lanes where
/// <see cref="Kernels.PackedMatMul.LanesPay"/> (onto rows narrower than 16 at stride 1 or 2, 16 or more
/// outputs a group), before libtorch's bfloat16
/// convolution up to <see cref="GroupedLanesOverLibTorchMaxWeight"/> weight elements; others libtorch's bfloat16
/// convolution where it passed <see cref="BFloat16Check"/> and <see cref="GroupedLibTorchBFloat16Pays"/> (4 or more images onto 14x14 or
/// less); else, weight-only on
/// CPUs with AVX512-BF16 and <see cref="QuantizedModule.UseBFloat16Compute"/>, the bfloat16 route from pair images
/// where <see cref="GroupedBFloat16Pays"/>, static W8A8 on CPUs with AVX512-BF16 (bfloat16 compute on or off: the sums
/// are exact) pair images of codes where their sums stay exact and <see cref="GroupedCodesPay"/>, else the small kernel
/// group by group where <see cref="GroupedPays"/>; libtorch's route elsewhere.</item>
/// <item>Ungrouped weight-only layers onto rows narrower than 16 on the same CPUs take that bfloat16 route as one group
/// where <see cref="Kernels.PackedMatMul.UngroupedLanesPay"/>, before the rules above (<see cref="QuantizedConv"/>).</item>
/// <item>Before all of these, static W8A8 layers with int8 symmetric weights, grouped or not, on CPUs with the 512-bit
/// VNNI kernel, take the output channels in lanes (<see cref="QuantizedConv"/>'s <see cref="ConvolutionRoute.Quad"/>,
/// <see cref="QuadConvolution"/>) where <see cref="QuadPays"/>.</item>
/// </list>
/// </summary>
internal static class ConvolutionCost
{
    /// <summary>Reduction length (input channels x kernel taps) from which static W8A8 takes the integer kernel, unless the call is small.</summary>
    internal const int IntegerMinReduction = 256;

    /// <summary>
    /// Reduction length (input channels x kernel taps) from which the bfloat16 route is taken: below it oneDNN's float32
    /// convolution is already efficient and its bfloat16 one is not (3 input channels, 3x3: bfloat16 1.3-1.5x float32's
    /// time; MNIST conv1, 9 terms, at batch 64: 1.5-2.3x), so dequantize + float32 libtorch runs (1.00-1.10x). On CPUs
    /// with AVX512-BF16, pointwise calls take the packed kernels' bfloat16 route below it too
    /// (<see cref="PackedPointwiseMinReduction"/>).
    /// </summary>
    internal const int BFloat16MinReduction = 64;

    /// <summary>Multiply-adds per call (images x positions x outputs x reduction) up to which the small-convolution kernel is taken.</summary>
    internal const long DirectMaxWork = 1 << 22;

    /// <summary>
    /// Multiply-adds per call up to which static W8A8 with a reduction below <see cref="BFloat16MinReduction"/> runs a
    /// route that quantizes the input inside its own copy of the images: the integer GEMM from
    /// <see cref="FewTermIntegerMinReduction"/> terms, the small kernel below (the 3-channel stride-2 stem at batch 1,
    /// 10.8M multiply-adds; MNIST conv1 at batch 64, 6.2M). Above it (the stem at batch 8, 87M; MNIST conv1 at batch 500,
    /// 49M) libtorch's route was faster in about half the processes. Since stop 45, where the CPU has the 512-bit VNNI
    /// kernel, calls of <see cref="FewTermIntegerMinReduction"/> terms or more above it take the small kernel at any size
    /// (its padded-image path quantizes the input as it copies it): on the Zen 4 VM (docs/BENCHMARKS.md, stop 45; the
    /// routes paired with float32 in two processes, one of each order) the stem at batch 2, 4 and 8 took 0.91-1.31x
    /// float32's time on it where libtorch's route took 1.06-1.85x and the integer GEMM 1.00-1.88x; through the rule
    /// after, 0.87-1.27x against 1.01-1.45x on libtorch's route, below it in 11 of 12 paired processes.
    /// </summary>
    internal const long FewTermW8A8MaxWork = 1 << 24;

    /// <summary>
    /// Multiply-adds per call up to which convolutions of fewer than <see cref="FewTermIntegerMinReduction"/> terms take
    /// the small kernel (<see cref="DirectMaxWork"/> elsewhere; for static W8A8 under both rules, weight-only under the
    /// float32 rule; only calls whose phase rows fit its padded-image path,
    /// <see cref="DirectConvolution.FusesInputQuantization"/>, the path measured). Static W8A8: MNIST conv1 (9 terms) at
    /// batch 500, 48.7M, took 0.94-1.25x float32's time on it against 1.10-1.27x on libtorch's route on the Zen 5 VM,
    /// faster in five of seven comparisons, alike in one, slower in one (three tables, four paired processes;
    /// docs/BENCHMARKS.md stop 27), where the Zen 4 had found the two routes alike (stop 20). Weight-only: at batch 64,
    /// 6.2M, 0.79-0.94x against 0.99-1.04x (stop 27); at batch 500, where stop 27 had found the two alike (the small
    /// kernel faster in two of four comparisons), faster than libtorch's route in all eight paired processes of stop 32,
    /// four before and four after the kernel copied its output rows in whole vectors (after: 0.61-0.96x its time, and
    /// 0.27x in one process where libtorch's route ran at four times its usual time). The stem (27 terms) at batch 1
    /// lost on it here and on the Zen 4 (stop 20). The integer GEMM's few-term calls keep the lower bound
    /// (<see cref="FewTermW8A8MaxWork"/>): the stem at batch 8 (86.7M) took 1.68-1.93x float32's time on it, 1.39-1.46x
    /// on libtorch's route.
    /// </summary>
    internal const long FewTermDirectMaxWork = 1 << 26;

    /// <summary>
    /// Multiply-adds per call up to which weight-only calls of <see cref="FewTermIntegerMinReduction"/> to
    /// <see cref="BFloat16MinReduction"/> - 1 terms, of <see cref="FewTermWeightOnlyMinImages"/> or more images, take the
    /// small kernel, on phase rows its padded-image path takes (<see cref="DirectConvolution.FusesInputQuantization"/>),
    /// rather than libtorch's float32 convolution on the dequantized weight (the float32 layer's own call plus a
    /// dequantization). Measured on the Zen 4 VM (docs/BENCHMARKS.md, stop 46; int8, the two routes paired with float32
    /// in six processes a cell, three of each order, then six more after the change): from two images the small kernel
    /// took 0.53-0.77x float32's time for 3->24 stride 2 on 160x160 at batch 2 (8.3M) where libtorch's route took
    /// 0.83-1.29x, 0.71-0.84x for 3->16 stride 2 on 224x224 at batch 2 and 4 (10.8M, 21.7M) against 0.97-1.06x, 0.47-0.89x
    /// for a Conv1d 16->64 k3 over 1,000 steps at batch 2-8 (6.1-24.6M) against 0.84-1.28x, and 0.85-0.95x for the
    /// ImageNet stem (3->32 stride 2 on 224x224) at batch 2 (21.7M) against 0.91-1.12x. At batch 3 (32.5M) the stem lost
    /// on it in six of six processes (three images on two threads) and at batch 4 (43.4M) the two were mixed, so the bound
    /// is 24 Mi (25.2M): the stem up to batch 2, that Conv1d up to batch 8.
    /// </summary>
    internal const long FewTermWeightOnlyMaxWork = 24L << 20;

    /// <summary>
    /// Images from which <see cref="FewTermWeightOnlyMaxWork"/>'s calls take the small kernel. With one image the kernel
    /// pads it in a parallel pass of its own before the threads split its rows: the stem at batch 1 (10.8M) took 0.76-1.01x
    /// float32's time on it where libtorch's route took 0.93-1.06x in six processes, but in 6 of 18 later ones, as this VM
    /// slowed, 1.46-2.21x where libtorch's route stayed at or below 1.33x (3->16 on 224x224 at batch 1: 3 of 6, 1.45-1.66x).
    /// From two images, on two threads a work item pads and computes an image of its own (one parallel pass), and it held
    /// (docs/BENCHMARKS.md, stop 46). With more threads than images a call of two images takes the one-buffer path too;
    /// not measured.
    /// </summary>
    internal const int FewTermWeightOnlyMinImages = 2;

    /// <summary>
    /// Reduction length from which few-term static W8A8 (<see cref="FewTermW8A8MaxWork"/>) takes the integer GEMM rather
    /// than the small kernel: between the two layers measured, MNIST conv1 (9 terms: the small kernel 0.16-0.30 ms at
    /// batch 64, the integer GEMM 0.28-0.54) and the stem (27 terms: the integer GEMM 0.14-0.25 ms at batch 1, the small
    /// kernel 0.17-0.36, two clusters); docs/BENCHMARKS.md, stop 20. Only with the 512-bit VNNI kernel: on an AVX2
    /// machine emulated on the development machine (the integer GEMM's 256-bit <c>vpmaddwd</c> path; stop 21) the stem's
    /// integer GEMM took 0.24-0.42 ms in 5 s loops and libtorch's route 0.21-0.59 (two clusters), libtorch's faster in 8
    /// of 12 processes and in both tables, so there the stem stays on libtorch's route.
    /// </summary>
    internal const int FewTermIntegerMinReduction = 24;

    /// <summary>
    /// Reduction length up to which small calls keep the small-convolution kernel where the float kernels' widest path is
    /// 256 bits (<see cref="Widest256"/>; no AVX-512, so the float32 rule): above it the packed kernels (unfold + GEMM, or the integer GEMM for W8A8). On
    /// an AVX2 machine emulated on the development machine (docs/BENCHMARKS.md, stop 21; 5 s loops, processes
    /// alternated) MNIST conv2 at batch 1 (144 terms) took 26-38 us on the packed kernels against 32-68 on the small
    /// kernel for int8 (faster in 5 of 6 processes) and 23-44 against 33-72 for static W8A8 (6 of 6), while MNIST conv1
    /// (9 terms) kept the small kernel (9-10 against 16-22 us, 3 of 3). The threshold between them is
    /// <see cref="BFloat16MinReduction"/>'s, not measured in between.
    /// </summary>
    internal const int SmallKernelMaxReduction256 = BFloat16MinReduction - 1;

    /// <summary>Whether the float kernels' widest path here is 256 bits (AVX2 without AVX-512, or AVX-512 turned off): the machines <see cref="SmallKernelMaxReduction256"/> was measured for (128-bit ones were not).</summary>
    internal static bool Widest256 => !Float512.IsSupported && Float256.IsSupported;

    /// <summary>
    /// Multiply-adds per call up to which static W8A8 of <see cref="BFloat16MinReduction"/> to
    /// <see cref="IntegerMinReduction"/> terms takes the integer GEMM under the float32 rule even where its wide grid of
    /// positions is much larger than the output (more rows per image than 4/3 of the positions,
    /// <see cref="MidTermIntegerPays"/>). Set in stop 27 for MNIST conv2 (160 rows per image for 121 positions), whose
    /// batch 500 (279M) then took 1.14-1.44x float32's time on the integer GEMM against 1.06-1.10x on libtorch's route;
    /// since stop 33 that layer is inside the ratio's bound, and no layer beyond it was measured.
    /// </summary>
    internal const long MidTermW8A8MaxWork = 1 << 26;

    /// <summary>
    /// Whether the integer GEMM pays for static W8A8 of <see cref="BFloat16MinReduction"/> to <see cref="IntegerMinReduction"/>
    /// terms (only measured with the 512-bit VNNI kernel): where the rows it multiplies per image
    /// (<see cref="PhaseGrid.RowsPerImage"/>: output rows as long as the padded input's, rounded up to whole strips) are
    /// at most 4/3 of the output positions, at any size (16->64 3x3 on 56x56 0.46x float32's time at batch 1 and 0.67x at
    /// batch 8, 8->32 on 112x112 0.66x and 0.89-1.01x, against 1.05-1.14x on libtorch's route, which quantizes the input
    /// in a pass of its own; docs/BENCHMARKS.md, stop 27), and elsewhere up to <see cref="MidTermW8A8MaxWork"/>. The
    /// ratio is MNIST conv2's 160/121 (11x11 outputs on a grid of 13-value rows in strips of 32), the widest grid
    /// measured, rounded up: since the integer epilogue stores each weight row's outputs in chunks of 16 rows and the
    /// images are packed pass by pass (stop 33), that layer took 0.88-0.99x float32's time on the integer GEMM at batch
    /// 500 (279M) and 0.89-1.00x at batch 1000 (558M), against 1.06-1.14x on libtorch's route, six and three paired
    /// processes (docs/BENCHMARKS.md, stop 33: `run3.sh` and `run7.sh`). Until then the ratio was 8/7 (stop 27).
    /// </summary>
    internal static bool MidTermIntegerPays(Im2Col unfold, long work)
    {
        int rows = new PhaseGrid(unfold).RowsPerImage;
        return rows > 0 && (work <= MidTermW8A8MaxWork || 3L * rows <= 4L * unfold.Positions);
    }

    /// <summary>
    /// Multiply-adds per call up to which a weight-only convolution whose reduction is too long for the small kernel
    /// (more than <see cref="DirectConvolution.MaxReduction"/> terms), not pointwise, takes the packed kernels under the
    /// float32 rule with 512-bit float kernels, at any number of positions. libtorch's convolution is mostly fixed cost
    /// there and its route adds a pass over the whole weight. Paired with float32 (docs/BENCHMARKS.md, stop 32; int8,
    /// int4, float16, two processes): 3x3 32->16 on 8x8 at batch 3, 4 and 8 (0.9-2.4M), 32->32 on 16x16, 64->32 on 14x14
    /// and 128->16 on 12x12 at batch 1 and 2 (2.4-7.2M), 0.30-0.97x float32's time against 0.95-1.09x on libtorch's
    /// route, faster than it in all 54 pairs.
    /// </summary>
    internal const long SmallWeightOnlyMaxWork = 1 << 23;

    /// <summary>
    /// Output positions (over all the call's images) up to which a weight-only convolution beyond the small kernel takes
    /// the packed kernels under the float32 rule with 512-bit float kernels: four strips of 32 (batch 1 and 2 on 7x7 and
    /// 8x8). libtorch's convolution is inefficient there (256->256 3x3 on 7x7 took 0.58-0.60 ms at batch 1 and 0.44-0.47
    /// ms at batch 2) and its route adds a dequantization pass over the whole weight, while the packed GEMM's work is the
    /// weight times a few strips (each item decoding its weight rows once, <see cref="Kernels.PackedMatMul.BlockFits"/>).
    /// Paired with float32 (docs/BENCHMARKS.md, stops 28 and 29; int8, int4, float16, two processes): 3x3 on 7x7
    /// (128->128, 256->256, 512->512), 256->512 at stride 2 on 14x14, 1x1 512->2048 on 7x7, Conv1d 512->512 k3 on 48 and
    /// 32->16 3x3 on 8x8, at batch 1, 0.21-1.23x float32's time against 1.04-1.58x on libtorch's route (all 42 pairs
    /// faster); at batch 2 (96-128 positions: the 7x7 layers, the Conv1d, 32->16 and 256->256 on 8x8) 0.29-1.14x against
    /// 1.04-1.37x (all 42 pairs faster). At 144-147 positions (batch 3) the packed kernels lost on the larger weights
    /// (256->256 on 7x7 1.19-1.52x against 1.14-1.19x); at 196 (256->256 on 14x14 at batch 1) they lost in every pair.
    /// Where the float kernels' widest path is 256 bits (<see cref="Widest256"/>: AVX2 without AVX-512) this is the only
    /// weight-only clause of the packed kernels, up to <see cref="FewPositionsOneImage256"/> positions, or up to 128 with
    /// a weight below <see cref="FewPositionsMaxWeight256"/> elements. On an AVX2-only Zen 3 (docs/BENCHMARKS.md, stop
    /// 53; eight layers, int8, float16, int4, each paired with float32 in two processes a side) the packed kernels took
    /// 0.48-1.24x float32's time at batch 1 where libtorch's route took 1.07-1.51x (faster in 47 of 48 pairs, alike in
    /// one); at batch 2 0.32-1.16x against 1.04-1.28x on the six smaller weights (faster in 34 of 36; 256->256 on 7x7
    /// alike or slower in two), while 512->2048 1x1 and 512->512 3x3 on 7x7 took up to 1.56x against 1.17x (int4,
    /// float16). The strided and long pointwise clauses were mixed in that machine's table (0.76-1.16x and 0.96-1.14x of
    /// libtorch's route's time) and stay off at 256 bits, as do the Conv1d, in-place and small-long ones (not measured).
    /// </summary>
    internal const int FewPositionsMaxPositions = 128;

    /// <summary>Output positions over a call's images up to which weight-only calls take the packed kernels at 256 bits whatever the weight (<see cref="FewPositionsMaxPositions"/>): one image on 8x8.</summary>
    internal const int FewPositionsOneImage256 = 64;

    /// <summary>Weight elements (outputs x reduction) below which weight-only calls of 65-128 positions take the packed kernels at 256 bits (<see cref="FewPositionsMaxPositions"/>; 512->2048 1x1 has 2^20 and lost).</summary>
    internal const long FewPositionsMaxWeight256 = 1 << 20;

    /// <summary>
    /// Multiply-adds up to which a weight-only convolution at a stride above 1, with a reduction of at least
    /// <see cref="IntegerMinReduction"/> terms, takes the packed kernels under the float32 rule with 512-bit float
    /// kernels: ResNet's downsampling layers (57.8M multiply-adds per image for each 3x3 one) at batch 1 and 2. libtorch's
    /// convolution is less efficient at stride 2 than at stride 1, and the packed kernels gather their strips alike at
    /// any stride (<see cref="Im2Col.PackStrip"/>). Paired with float32 (docs/BENCHMARKS.md, stop 28; int8, int4, float16,
    /// two processes): 3x3 64->128 on 56x56 and 128->256 on 28x28 at batch 1 1.00-1.22x float32's time against
    /// 1.08-1.38x on libtorch's route (faster in 11 of 12 pairs, alike in one: 647.6 against 647.8 us), ResNet-50's 1x1
    /// 256->512 stride 2 on 56x56 0.80-0.90x against 1.05-1.07x; at batch 2 (the two 3x3 layers and 256->512 on 14x14)
    /// 0.93-1.20x against 1.06-1.31x (faster in 17 of 18). At batch 4 and 8 (231M, 462M) libtorch's route was faster
    /// for 128->256, 256->512 and the 1x1 (packed 1.11-1.35x against 1.01-1.10x); 64->128 was alike on both (0.98-1.00x
    /// against 1.01-1.04x). The 3-channel stem (27 terms) took 3.6x float32's time on the packed kernels.
    /// </summary>
    internal const long StridedWeightOnlyMaxWork = 1L << 27;

    /// <summary>
    /// Images up to which a weight-only pointwise convolution (1x1, stride 1, no padding) of at least
    /// <see cref="IntegerMinReduction"/> terms takes the packed kernels under the float32 rule with 512-bit float
    /// kernels: those of one or two images, whose blocks hold all of an image's strips
    /// (<see cref="Kernels.PackedMatMul.WholeImageBlocksMaxImages"/>); a pointwise strip is a copy of the image's rows.
    /// Paired with float32 (docs/BENCHMARKS.md, stop 30; int8, int4, float16, two processes): 1x1 256->256 on 28x28,
    /// 512->128 on 28x28 and 1024->256 on 14x14 at batch 1 0.79-0.90x float32's time against 1.07-1.27x on libtorch's
    /// route (18 of 18 pairs faster), at batch 2 0.91-1.11x against 1.05-1.19x (15 of 18 faster; 256->256 slower in the
    /// second process's three, 1.10-1.11 against 1.05-1.06). At batch 4 libtorch's route was faster (packed 1.11-1.25x
    /// against 1.04-1.11x), and with fewer terms: 64->256 on 56x56 (64 terms) 1.17-1.22x against 1.03-1.04x at batch
    /// 1; 128->512 on 28x28 (128 terms) 0.91-1.08x against 1.07-1.12x at batch 1 but 1.19-1.31x against 1.06-1.09x at
    /// batch 2.
    /// </summary>
    internal const int PointwiseWeightOnlyMaxImages = Kernels.PackedMatMul.WholeImageBlocksMaxImages;

    /// <summary>
    /// As <see cref="PointwiseWeightOnlyMaxImages"/> where the kernels run on one thread (<see cref="KernelThreads.Count"/>
    /// 1), where libtorch's float32 pointwise convolution of a few images is slow: paired at one thread (docs/BENCHMARKS.md,
    /// stop 34; int8 and float16), 1x1 256->256 and 512->128 on 28x28, 1024->256 on 14x14 and 512->2048 on 7x7 at batch
    /// 4 took 0.49-0.64x float32's time on the packed kernels against 1.00-1.02x on libtorch's route, at batch 8
    /// 0.48-0.65x (int8, three of them) against 1.00-1.01x; at batch 16 1.12-1.25x against 1.00-1.04x (float32's time
    /// for 16 images was only about twice its time for 4).
    /// </summary>
    internal const int PointwiseWeightOnlyMaxImagesOneThread = 8;

    /// <summary>
    /// Images up to which a weight-only Conv1d (an image and a kernel of height 1) of at least
    /// <see cref="IntegerMinReduction"/> terms takes the packed kernels under the float32 rule with 512-bit float kernels:
    /// a strip of a Conv1d lies in one output row, so each 8-lane chunk of it is packed by one masked load
    /// (<see cref="Kernels.Im2Col.PackStrip"/>). Paired with float32 (docs/BENCHMARKS.md, stop 30; int8, int4, float16, two
    /// processes): Conv1d 512->512 k3 on 256 steps, 256->256 k3 on 1000, 768->768 k5 on 128 and 128->256 k7 on 400 at
    /// batch 1 0.81-1.10x float32's time against 1.08-1.19x on libtorch's route (24 of 24 pairs faster). At batch 2 the
    /// packed kernels were faster in 17 of 24 pairs, but 256->256 on 1000 steps lost in all six (1.14-1.33x against
    /// 1.05-1.06x); at batch 4 libtorch's route was faster in 22 of 24 (packed 0.97-1.38x against 1.02-1.05x).
    /// </summary>
    internal const int Conv1dWeightOnlyMaxImages = 1;

    /// <summary>
    /// Images from which (up to <see cref="InPlaceWeightOnlyMaxImages"/>) a weight-only convolution whose strips the
    /// packed kernels read in place (<see cref="Kernels.PackedMatMul.InPlacePays"/>: stride-1 3x3 layers of 128+
    /// channels onto 28x28, ResNet's second stage and VGG's fourth block) takes them under the float32 rule with 512-bit
    /// float kernels. libtorch's float32 convolution reaches about 62% of the micro-kernel's rate there, against 77-80%
    /// on 14x14 and 56x56 (docs/BENCHMARKS.md, stop 31). Paired with float32 (int8, int4, float16, two processes):
    /// 128->128 at batch 2, 4 and 8 took 0.79-0.98x float32's time and VGG's 512->512 at batch 2 and 4 0.85-0.95x (30 of
    /// 30 pairs faster), against 1.00-1.02x on libtorch's route. At batch 1 128->128 lost (861 against 776 us for
    /// float32, 826 on libtorch's route).
    /// </summary>
    internal const int InPlaceWeightOnlyMinImages = 2;

    /// <summary>Images up to which <see cref="InPlaceWeightOnlyMinImages"/>' rule holds (8 measured; the padded copy holds every image).</summary>
    internal const int InPlaceWeightOnlyMaxImages = 8;

    /// <summary>
    /// Reduction length from which the bfloat16 route on the packed kernels (<see cref="QuantizedModule.PackedBFloat16Convolutions"/>)
    /// pays into <see cref="PackedBFloat16MinOutputs"/> channels or more.
    /// </summary>
    internal const int PackedBFloat16MinReduction = 128;

    /// <summary>Output channels from which the bfloat16 route on the packed kernels pays at any number of positions.</summary>
    internal const int PackedBFloat16MinOutputs = 256;

    /// <summary>Output channels from which it pays on more than <see cref="FewPositionsMaxPositions"/> positions, with <see cref="PackedBFloat16MinReductionFewerOutputs"/> terms or more.</summary>
    internal const int PackedBFloat16MinOutputsManyPositions = 128;

    /// <summary>Reduction length from which the route pays into fewer than <see cref="PackedBFloat16MinOutputs"/> channels.</summary>
    internal const int PackedBFloat16MinReductionFewerOutputs = 256;

    /// <summary>
    /// Whether a weight-only call that is not small takes the bfloat16 route on the packed kernels (where libtorch's
    /// bfloat16 convolution failed its check): an even reduction of at least <see cref="PackedBFloat16MinReduction"/>
    /// terms into at least <see cref="PackedBFloat16MinOutputs"/> channels, or of at least
    /// <see cref="PackedBFloat16MinReductionFewerOutputs"/> into <see cref="PackedBFloat16MinOutputsManyPositions"/> or
    /// more on more than <see cref="FewPositionsMaxPositions"/> positions, where it reads pair images in place
    /// (<see cref="PairImagesPay"/>), or for a pointwise call of 16 or more terms (<see cref="PackedPointwisePays"/>). On packed strips the kernels unfold and pack every position's K activations and round the weight to bfloat16 once per call, then multiply at 1.8x their float32 rate, so the
    /// channels per position decide whether the multiply-adds outweigh the packing that libtorch's float32 convolution
    /// does not pay. Measured on the Zen 5 VM (docs/BENCHMARKS.md, stop 35; the route forced on every cell of the conv
    /// table, over float32's time, paired in one process, batch 1 and 8): from 256 channels on 256 or more terms
    /// 0.40-0.94x (1.03x once); 128 channels on 392-784 positions 0.72-1.06x (the float32 rule's routes there took
    /// 0.70-1.15x in the final table); on packed strips it lost with 64 channels (ResNet 64->64 on 56x56, 1.07x and
    /// 1.49x) and with 128 channels on 49 positions (0.50x against the packed float32 kernels' 0.39x). With 128-192 terms into 256-1024
    /// channels (1x1 layers, and 3x3 16->256) at batch 1-8 it took 0.60-1.08x where the float32 rule's route took
    /// 1.04-1.28x, never slower than it by more than 0.01 (1x1 128->512 and 128->256 at batch 4 and 8, three processes).
    /// </summary>
    internal static bool PackedBFloat16Pays(Im2Col unfold, long outputs) =>
        unfold.Rows % 2 == 0
        && ((unfold.Rows >= PackedBFloat16MinReduction && outputs >= PackedBFloat16MinOutputs)
            || (unfold.Rows >= PackedBFloat16MinReductionFewerOutputs && outputs >= PackedBFloat16MinOutputsManyPositions
                && (long)unfold.Images * unfold.Positions > FewPositionsMaxPositions)
            || PairImagesPay(unfold, outputs)
            || PackedPointwisePays(unfold));

    /// <summary>
    /// Whether a weight-only pointwise call (1x1, stride 1, no padding) that is not small takes the bfloat16 route on the
    /// packed kernels where libtorch's bfloat16 convolution failed its check (<see cref="PackedBFloat16Pays"/>): an even
    /// reduction of <see cref="PackedPointwiseMinReduction"/> or more terms onto more than
    /// <see cref="FewPositionsMaxPositions"/> output positions in all (on fewer the float32 packed kernels keep it). The
    /// rule there had given most of them libtorch's float32 convolution on the dequantized weight (the float32 layer's own
    /// call plus a dequantization). Measured on the Zen 5 VM (docs/BENCHMARKS.md, stop 52; the two routes paired with
    /// float32 in a process of each order, int8, batch 1, 2, 3 and 8): MobileNet's expansions (16->96 onto 112x112,
    /// 24->144 onto 56x56, 32->192 onto 28x28, 64->384 onto 14x14) and projections (144->24, 192->32, 384->64, 576->96),
    /// ResNet's 1x1 layers onto 56x56 (64->64, 64->256, 256->64) and 128->128 onto 28x28 took 0.43-0.97x float32's time
    /// on the packed kernels against 0.45-1.22x on the rule's routes before (libtorch's float32 convolution, the float32
    /// packed kernels, or, from pair images, the packed kernels' bfloat16 route already), faster or alike in all 50
    /// cells (alike: 64->64 and 128->128 at batch 8, where the rule already read pair images); 960->160 onto
    /// 7x7 at one and two images (49 and 98 positions) was faster on the float32 packed kernels (0.53-0.58x against
    /// 0.57-0.68x).
    /// </summary>
    internal static bool PackedPointwisePays(Im2Col unfold) =>
        unfold.IsPointwise && unfold.Rows % 2 == 0 && unfold.Rows >= PackedPointwiseMinReduction
        && (long)unfold.Images * unfold.Positions > FewPositionsMaxPositions;

    /// <summary>
    /// Output positions (images x positions) up to which <see cref="PackedBFloat16BeatsLibTorch"/> for convolutions of
    /// more than one tap.
    /// </summary>
    internal const int PackedOverLibTorchMaxPositions = 64;

    /// <summary>
    /// Whether, where both bfloat16 convolutions run (<see cref="QuantizedModule.BothBFloat16Convolutions"/>: libtorch's
    /// passed <see cref="BFloat16Check"/> and the CPU has AVX512-BF16), a weight-only call takes the packed kernels'
    /// bfloat16 route rather than libtorch's: an even reduction of <see cref="BFloat16MinReduction"/> or more terms onto
    /// at most <see cref="PackedOverLibTorchMaxPositions"/> output positions in all (batch 1 on 7x7 and 8x8, a Conv1d of
    /// 48 steps), a pointwise call of <see cref="PackedPointwiseMinReduction"/> to <see cref="BFloat16MinReduction"/> - 1
    /// terms, a 1x1 call (any stride) of one image or, with fewer than <see cref="LibTorchBFloat16MinReduction"/>
    /// terms, of any count, a pointwise call (1x1, stride 1, no padding) of up to
    /// <see cref="PackedOverLibTorchPointwiseMaxImages"/> images, or, with those few terms, where the packed kernels read
    /// pair images in place (<see cref="Kernels.PackedMatMul.PairsInPlacePays"/>). Elsewhere libtorch's oneDNN kernel, which keeps every output
    /// position of a block busy, was the faster. Measured on the Zen 4 VM (docs/BENCHMARKS.md, stop 44; the conv table's
    /// layers, each rule paired with float32 in two processes, one of each order): onto 49-64 positions 0.45-0.75x
    /// float32's time against 0.63-1.10x on libtorch's, pointwise at batch 1 0.67-0.88x against 0.81-1.19x (1x1 64->256
    /// on 56x56 a tie); at batch 1 onto more positions (3x3 layers, Conv1d over 128-1000 steps) 0.61-1.43x against
    /// 0.53-0.99x on libtorch's (alike on four layers), at batch 8 0.55-1.03x against 0.47-0.86x.
    /// </summary>
    internal static bool PackedBFloat16BeatsLibTorch(Im2Col unfold, long outputs)
    {
        if (unfold.Rows % 2 != 0) return false;
        bool oneTap = unfold.KernelH * unfold.KernelW == 1, shortReduction = ShortForLibTorchBFloat16(unfold);
        bool pointwise = unfold.IsPointwise;
        if (unfold.Rows < BFloat16MinReduction) return pointwise && unfold.Rows >= PackedPointwiseMinReduction;
        return (long)unfold.Images * unfold.Positions <= PackedOverLibTorchMaxPositions || (oneTap && (unfold.Images == 1 || shortReduction))
            || (pointwise && unfold.Images <= PackedOverLibTorchPointwiseMaxImages)
            || (shortReduction && Kernels.PackedMatMul.PairsInPlacePays(unfold, outputs));
    }

    /// <summary>
    /// Images up to which a pointwise call (1x1, stride 1, no padding) takes the packed kernels' bfloat16 route rather
    /// than libtorch's where both run (<see cref="PackedBFloat16BeatsLibTorch"/>; with fewer than
    /// <see cref="LibTorchBFloat16MinReduction"/> terms at any count). Measured on the Zen 4 VM once the packed kernels'
    /// writers added the bias a vector at a time (docs/BENCHMARKS.md, stop 51; each route paired with float32 in two
    /// processes, one of each order, int8, the packed route on pair images or packed strips as
    /// <see cref="Kernels.PackedMatMul.PairsInPlacePays"/> now picks): at 2-3 images it took 0.56-0.87x float32's time on
    /// the long ResNet 1x1 layers (128->512 and 512->128 onto 28x28, 256->64 and 256->128 onto 56x56, 256->256 and
    /// 1024->256 onto 14x14, 512->2048 and 2048->512 onto 7x7) where libtorch's took 0.65-1.04x (faster or alike on all but
    /// 256->128 at 3 images, 0.81-0.87x against 0.75-0.79x); from 4 images they were alike. With 64-80 terms at 2-3
    /// images it took 0.55-1.22x where the float32 rule's route (libtorch's float32 convolution on the dequantized weight)
    /// took 0.87-1.15x: faster on 64->128 and 80->320 onto 28x28, 64->384 onto 14x14 and 64->256 onto 56x56, on 64->64
    /// onto 56x56 in one process of two (0.66-0.67x; 1.19-1.22x in the other, where the float32 rule's took 1.10-1.15x);
    /// 64->128 at stride 2 from 56x56 0.60-0.84x against 0.97-1.14x at 2-8 images. With long reductions at stride 2
    /// libtorch's was alike or faster from 2 images (256->512 from 56x56 0.73-0.92x against 0.65-0.84x, 512->1024 from
    /// 28x28 0.59-0.74x against 0.60-0.67x).
    /// </summary>
    internal const int PackedOverLibTorchPointwiseMaxImages = 3;

    /// <summary>
    /// Reduction length (input channels) from which a pointwise call (1x1, stride 1, no padding) of fewer than
    /// <see cref="BFloat16MinReduction"/> terms takes the packed kernels' bfloat16 route where both bfloat16 convolutions
    /// run (<see cref="PackedBFloat16BeatsLibTorch"/>) rather than libtorch's float32 convolution on the dequantized
    /// weight: MobileNet's expansions (and, where libtorch's failed its check, a pointwise call of any longer reduction
    /// too, <see cref="PackedPointwisePays"/>). Measured on the Zen 4 VM (docs/BENCHMARKS.md, stop 51; the routes paired with
    /// float32 in a process of each order, int8, batch 1-8): 16->96 onto 112x112, 24->144 onto 56x56 and 32->192 onto
    /// 28x28 took 0.43-0.83x float32's time on the packed kernels in 24 of 28 cells (1.02-1.25x in four: 32->192 at batch
    /// 2 and 8 in a process where the float32 packed kernels took 1.68-2.07x there too, 24->144 at batch 2 and 3
    /// in the pair images' slow state) against 0.83-1.33x on libtorch's float32 route.
    /// </summary>
    internal const int PackedPointwiseMinReduction = 16;

    /// <summary>
    /// Whether a call's reduction is one libtorch's bfloat16 convolution lost on where both bfloat16 convolutions run:
    /// from <see cref="BFloat16MinReduction"/> terms (below it the bfloat16 route is taken only by pointwise calls, on the
    /// packed kernels: <see cref="PackedPointwiseMinReduction"/>) to fewer than
    /// <see cref="LibTorchBFloat16MinReduction"/>.
    /// </summary>
    internal static bool ShortForLibTorchBFloat16(Im2Col unfold) =>
        unfold.Rows >= BFloat16MinReduction && unfold.Rows < LibTorchBFloat16MinReduction;

    /// <summary>
    /// Reduction length (input channels x taps) from which, where both bfloat16 convolutions run, a weight-only call
    /// takes libtorch's bfloat16 convolution; below it (and from <see cref="BFloat16MinReduction"/>) the packed kernels'
    /// bfloat16 route from pair images where they apply (<see cref="PackedBFloat16BeatsLibTorch"/>), else the rule
    /// without libtorch's bfloat16 convolution. Measured on the Zen 4 VM (docs/BENCHMARKS.md, stop 45; each route paired
    /// with float32 in processes of both orders, batch 1, 2, 4 and 8): with 64 and 72 terms libtorch's bfloat16 route
    /// took 1.20-2.04x float32's time for 1x1 64->64 on 56x56 at batch 2 and 4 (int8; int4 0.99-1.76x) where the float32
    /// rule's route (libtorch's float32 convolution on the dequantized weight) took 0.86-1.16x, at batch 8 0.78-1.93x
    /// against 0.89-1.15x; for 3x3 8->32 on 112x112 0.69-1.77x (seven runs), where the pair images took 0.72-1.21x
    /// (below it in 30 of 32 comparisons in one process, one tie). With 108 terms and more it was at or below float32's
    /// time from batch 2 (int8: 3x3 12->48 on 56x56 0.79-0.93x, 16->64 0.68-0.78x, 1x1 128->512 on 28x28 0.66-0.98x).
    /// </summary>
    internal const int LibTorchBFloat16MinReduction = 96;

    /// <summary>
    /// Where the bfloat16 route reads pair images in place (<see cref="Kernels.PackedMatMul.PairsInPlacePays"/>: an even
    /// channel count, more than one tap onto output rows of 14 or more and 196 or more positions per image, or pointwise
    /// calls of four or more images from up to 256 channels into 256 or more), it pays from
    /// <see cref="PairImagesMinChannels"/> input and output channels: there is no unfolding and no pairing pass, which
    /// made 64 channels lose on packed strips. Measured on the Zen 5 VM
    /// (docs/BENCHMARKS.md, stop 36): ResNet 64->64 on 56x56 0.68-0.77x float32's time at batch 1 and 8 (the float32
    /// rule's libtorch route 0.97-1.03x), 1x1 64->256 on 56x56 0.82-0.95x at batch 4-16 (0.92-0.99x); with 16 input
    /// channels (3x3 16->64 on 56x56: 8 pairs, a micro-kernel call of 8 groups per tap) it lost at batch 8 (0.99x against
    /// 0.92x for libtorch's route).
    /// </summary>
    internal static bool PairImagesPay(Im2Col unfold, long outputs) =>
        Kernels.PackedMatMul.PairsInPlacePays(unfold, outputs) && unfold.Channels >= PairImagesMinChannels && outputs >= PairImagesMinChannels;

    /// <summary>Input and output channels from which <see cref="PairImagesPay"/>.</summary>
    internal const int PairImagesMinChannels = 64;

    /// <summary>
    /// Whether a depthwise layer's call takes <see cref="Kernels.DepthwiseConvolution"/> rather than libtorch's depthwise
    /// convolution on the dequantized weight: every Conv1d; for a Conv2d, one image at stride 1, onto
    /// <see cref="DepthwiseMinPositionsOneImage"/> or more output positions, or where its strided rows are split by
    /// AVX-512 masked loads (<see cref="Kernels.DirectConvolution.WritesPairedRows(Im2Col)"/>: MobileNet's and
    /// EfficientNet's last stride-2 layers onto 7x7 at batch 1, 0.65-1.06x float32's time weight-only where libtorch's
    /// route took 1.04-1.09x, static W8A8 0.99-1.20x against 1.59-1.81x, docs/BENCHMARKS.md stop 39), or more images, up to
    /// <see cref="DepthwiseMaxTaps"/> taps, onto <see cref="DepthwiseMinPositions"/> or more (at stride 1, and for static
    /// W8A8 (<paramref name="quantizedInput"/>, whose libtorch route adds a pass over the input) at any stride, onto
    /// <see cref="DepthwiseMinPositionsOneImage"/> or more). The kernel's cost is per
    /// plane (its padded copy, split into phases row by row), libtorch's per call, so many small planes lose; a Conv1d's
    /// plane is one row, and libtorch's depthwise Conv1d was slow (Conformer's 31 taps over 400 steps: 0.49 ms at batch 1,
    /// 3.6 ms at batch 8, the kernel 0.05 and 0.27 ms). Measured on the Zen 5 VM: docs/BENCHMARKS.md, stop 37. And
    /// every call that computes the channels in lanes (<paramref name="oneOutputPerChannel"/> and
    /// <see cref="Kernels.DepthwiseConvolution.TakesLanes(Im2Col)"/>) of one image, of up to 3x3 taps, or at 256 bits
    /// and more (<see cref="LanesManyTapsMinWidth"/>): at batch 8 with up to 3x3 taps or at stride 2, 0.40-0.88x
    /// float32's time weight-only where libtorch's route took 0.76-1.06x, static W8A8 0.47-0.96x against 1.17-1.67x;
    /// with 5x5 and 7x7 taps at stride 1, 0.89-1.14x against 0.97-1.10x (a tie: a call right after one of libtorch's ran
    /// about 10% slower), static W8A8 0.84-1.14x against 1.22-1.59x (docs/BENCHMARKS.md, stop 41).
    /// </summary>
    internal static bool DepthwisePays(Im2Col unfold, bool quantizedInput, bool oneOutputPerChannel)
    {
        if (unfold.Height == 1 && unfold.KernelH == 1) return true;
        if (oneOutputPerChannel && Kernels.DepthwiseConvolution.TakesLanes(unfold)
            && (unfold.Images == 1 || unfold.KernelH * unfold.KernelW <= DepthwiseMaxTaps || Kernels.DepthwiseConvolution.LaneWidth >= LanesManyTapsMinWidth))
            return true;
        long positions = unfold.Positions;
        bool stride1 = unfold.StrideH == 1 && unfold.StrideW == 1;
        if (unfold.Images == 1) return positions >= DepthwiseMinPositionsOneImage || stride1 || Kernels.DirectConvolution.WritesPairedRows(unfold);
        return unfold.KernelH * unfold.KernelW <= DepthwiseMaxTaps
            && (positions >= DepthwiseMinPositions || ((quantizedInput || stride1) && positions >= DepthwiseMinPositionsOneImage));
    }

    /// <summary>
    /// Lanes (floats a vector holds) from which <see cref="DepthwisePays"/> takes more than 3x3 taps in lanes for several
    /// images: 256 bits. On an AVX2 machine emulated (AVX-512 off on both sides, docs/BENCHMARKS.md stop 43), 5x5 and
    /// 7x7 taps at stride 1 onto 7x7 to 56x56 at 2-8 images took 0.54-1.05x float32's time in lanes (int8) where
    /// libtorch's route took 0.88-1.18x, at or below it in 31 of 32 processes (the other a tie: 0.96x against 0.95x),
    /// static W8A8 1.03-1.20x against 1.21-1.60x. 128-bit vectors were not measured: they stay with the rule plane by
    /// plane.
    /// </summary>
    internal const int LanesManyTapsMinWidth = 8;

    /// <summary>Output positions of one image from which <see cref="DepthwisePays"/> (14x14).</summary>
    internal const int DepthwiseMinPositionsOneImage = 196;

    /// <summary>Output positions per image from which <see cref="DepthwisePays"/> for more than one image (28x28).</summary>
    internal const int DepthwiseMinPositions = 784;

    /// <summary>Taps up to which <see cref="DepthwisePays"/> for more than one image (3x3).</summary>
    internal const int DepthwiseMaxTaps = 9;

    /// <summary>The route expected to be fastest for this call.</summary>
    /// <param name="unfold">The call's geometry.</param>
    /// <param name="outputs">Output channels.</param>
    /// <param name="quantizedInput">True for W8A8 layers (static input quantization).</param>
    /// <param name="bfloat16">True where the bfloat16 route may be taken (<see cref="QuantizedModule.BFloat16Convolutions"/>).</param>
    /// <param name="float256">True where the float kernels' widest path is 256 bits (<see cref="Widest256"/>): small calls of more than <see cref="SmallKernelMaxReduction256"/> terms then take the packed kernels.</param>
    /// <param name="vnni512">True where the integer GEMM runs the 512-bit VNNI kernel (<see cref="Vnni512Kernel.IsSupported"/>), the only path on which few-term W8A8 through it was measured to pay (<see cref="FewTermIntegerMinReduction"/>).</param>
    /// <param name="oneThread">True where the kernels run on one thread (<see cref="KernelThreads.Count"/> 1): weight-only pointwise calls take the packed kernels up to <see cref="PointwiseWeightOnlyMaxImagesOneThread"/> images.</param>
    /// <param name="packedBFloat16">True where the bfloat16 route runs on the packed kernels (<see cref="QuantizedModule.PackedBFloat16Convolutions"/>): it is taken only where <see cref="PackedBFloat16Pays"/>, the float32 rule elsewhere.</param>
    /// <param name="bothBFloat16">True where both bfloat16 convolutions run (<see cref="QuantizedModule.BothBFloat16Convolutions"/>): the routes of the rule with <paramref name="packedBFloat16"/> that were measured faster there (the small kernel, the integer kernels, the packed kernels in float32 on calls of up to <see cref="FewPositionsMaxPositions"/> positions or <see cref="SmallWeightOnlyMaxWork"/> multiply-adds), and the packed kernels' bfloat16 route where <see cref="PackedBFloat16BeatsLibTorch"/>, are taken before libtorch's bfloat16 route, which weight-only calls of fewer than <see cref="LibTorchBFloat16MinReduction"/> terms never take (that rule's route).</param>
    public static ConvolutionRoute Choose(Im2Col unfold, long outputs, bool quantizedInput, bool bfloat16, bool float256 = false, bool vnni512 = true, bool oneThread = false, bool packedBFloat16 = false, bool bothBFloat16 = false)
    {
        long positions = (long)unfold.Images * unfold.Positions, work = positions * outputs * unfold.Rows;
        if (bfloat16 && bothBFloat16)
        {
            // Both bfloat16 convolutions run here: where the rule without libtorch's takes the small kernel, the integer
            // kernels, or the packed kernels in float32 for a call of few positions or a small one, that route; the packed
            // kernels in bfloat16 where they beat libtorch's.
            var managed = Choose(unfold, outputs, quantizedInput, bfloat16: true, float256, vnni512, oneThread, packedBFloat16: true);
            bool fewOrSmall = positions <= FewPositionsMaxPositions || work <= SmallWeightOnlyMaxWork;
            if (managed == ConvolutionRoute.Direct || (managed == ConvolutionRoute.Kernel && (quantizedInput || fewOrSmall))) return managed;
            if (!quantizedInput && PackedBFloat16BeatsLibTorch(unfold, outputs)) return ConvolutionRoute.BFloat16;
            // A short reduction: the rule without libtorch's bfloat16 convolution, which lost there.
            if (!quantizedInput && ShortForLibTorchBFloat16(unfold)) return managed;
        }
        bool fits = DirectConvolution.Fits(unfold, outputs), small = work <= DirectMaxWork && fits;
        bool pointwise = unfold.IsPointwise;
        // Few terms (below the bfloat16 route's), beyond a small call, on phase rows the small kernel's padded-image path
        // takes: the calls the few-term rules below may give the small kernel.
        bool fewTermPadded = !small && !pointwise && unfold.Rows < BFloat16MinReduction && fits && DirectConvolution.FusesInputQuantization(unfold);
        // Fewer terms than the integer GEMM's few-term calls, up to FewTermDirectMaxWork: the small kernel (static W8A8
        // under both rules, weight-only under the float32 rule).
        bool fewTermDirect = fewTermPadded && unfold.Rows < FewTermIntegerMinReduction && work <= FewTermDirectMaxWork;
        // Weight-only calls of 24-63 terms (RGB 3x3 stems, Conv1d over 8-21 channels) of two or more images up to
        // FewTermWeightOnlyMaxWork: the small kernel too (where the float32 rule applies, and where both bfloat16
        // convolutions run).
        bool fewTermWeightOnlyDirect = fewTermPadded && !quantizedInput && unfold.Rows >= FewTermIntegerMinReduction
            && unfold.Images >= FewTermWeightOnlyMinImages && work <= FewTermWeightOnlyMaxWork;
        if (quantizedInput && !small && !pointwise && unfold.Rows < BFloat16MinReduction)
        {
            // Static W8A8 with few terms per output, up to a few images: the routes that quantize the input inside their
            // own copy of it (libtorch's needs a pass of its own).
            if (unfold.Rows >= FewTermIntegerMinReduction && vnni512 && work <= FewTermW8A8MaxWork) return ConvolutionRoute.Kernel;
            if (fewTermDirect) return ConvolutionRoute.Direct;
            // Larger calls of those terms: the small kernel too, at any size (with the 512-bit VNNI kernel, where measured).
            if (unfold.Rows >= FewTermIntegerMinReduction && vnni512 && fewTermPadded) return ConvolutionRoute.Direct;
        }
        // Static W8A8 with a long reduction: the integer GEMM.
        bool integer = quantizedInput && !small && unfold.Rows >= IntegerMinReduction;
        if (bfloat16 && packedBFloat16)
        {
            // Weight-only: static W8A8 keeps its integer kernels (the same integers as the simulated path).
            if (!small && !quantizedInput && PackedBFloat16Pays(unfold, outputs)) return ConvolutionRoute.BFloat16;
            bfloat16 = false; // the float32 rule
        }
        if (bfloat16)
        {
            if (small) return ConvolutionRoute.Direct;
            if (integer) return ConvolutionRoute.Kernel;
            return unfold.Rows < BFloat16MinReduction ? ConvolutionRoute.Reference : ConvolutionRoute.BFloat16;
        }
        // Weight-only with few terms: the small kernel, as static W8A8 above.
        if (!quantizedInput && (fewTermDirect || fewTermWeightOnlyDirect)) return ConvolutionRoute.Direct;
        // Static W8A8 of 64-255 terms on the 512-bit VNNI kernel: the integer GEMM too, where it pays.
        if (quantizedInput && !small && vnni512 && unfold.Rows >= BFloat16MinReduction && MidTermIntegerPays(unfold, work)) return ConvolutionRoute.Kernel;
        // Weight-only calls of a few positions (batch 1 and 2 on 7x7), strided ones of long reductions in one or two
        // images, pointwise ones of long reductions in one or two images, Conv1d ones of long reductions in one image,
        // 3x3 ones onto 28x28 in 2-8 images (their strips read in place) and small ones too long for the small kernel:
        // the packed kernels.
        // At 256 bits (AVX2 without AVX-512) only the calls of few positions were measured (stop 53): up to 64, or up to 128
        // with a weight below FewPositionsMaxWeight256 elements.
        bool fewPositions = positions <= FewPositionsMaxPositions;
        if (!quantizedInput && !small && float256 && fewPositions
            && (positions <= FewPositionsOneImage256 || outputs * unfold.Rows < FewPositionsMaxWeight256)) return ConvolutionRoute.Kernel;
        if (!quantizedInput && !small && !float256)
        {
            bool strided = unfold.StrideH * unfold.StrideW > 1 && unfold.Rows >= IntegerMinReduction && work <= StridedWeightOnlyMaxWork;
            bool longPointwise = pointwise && unfold.Rows >= IntegerMinReduction
                && unfold.Images <= (oneThread ? PointwiseWeightOnlyMaxImagesOneThread : PointwiseWeightOnlyMaxImages);
            bool longConv1d = unfold.Height == 1 && unfold.KernelH == 1 && unfold.Rows >= IntegerMinReduction && unfold.Images <= Conv1dWeightOnlyMaxImages;
            bool inPlace = Kernels.PackedMatMul.InPlacePays(unfold) && unfold.Images >= InPlaceWeightOnlyMinImages && unfold.Images <= InPlaceWeightOnlyMaxImages;
            bool smallLong = !pointwise && !fits && work <= SmallWeightOnlyMaxWork;
            if (strided || longPointwise || longConv1d || inPlace || smallLong || fewPositions) return ConvolutionRoute.Kernel;
        }
        // 1x1 convolutions take the packed kernels for W8A8 and small calls; weight-only beyond the small kernel and the
        // long pointwise calls above they fall through to libtorch on the dequantized weight, which the packed kernel
        // lost to on both VMs: 1x1 256->256 at 28x28 1.40-1.48x float32 at batch 8 against 1.00-1.18x (Zen 4, stop 11),
        // 1.30-1.40x at batch 1 and 8 against 1.03-1.04x (Zen 5, stop 26); at batch 4 and with fewer terms still (stop 30).
        if (integer || (pointwise && (quantizedInput || small))) return ConvolutionRoute.Kernel;
        if (small) return float256 && unfold.Rows > SmallKernelMaxReduction256 ? ConvolutionRoute.Kernel : ConvolutionRoute.Direct;
        return ConvolutionRoute.Reference;
    }

    /// <summary>
    /// Reduction length of a group (its input channels x taps) up to which a grouped Conv2d that is not depthwise takes
    /// the small kernel (<see cref="GroupedPays"/>): 3x3 taps over up to 64 channels a group.
    /// </summary>
    internal const int GroupedMaxReduction = 576;

    /// <summary>Output positions per image up to which <see cref="GroupedPays"/> for several images only with short group reductions (14x14).</summary>
    internal const int GroupedFewPositions = 196;

    /// <summary>Images up to which <see cref="GroupedPays"/> onto up to <see cref="GroupedFewPositions"/> positions whatever the group reduction (up to <see cref="GroupedMaxReduction"/>).</summary>
    internal const int GroupedFewPositionsMaxImages = 2;

    /// <summary>Group reduction up to which <see cref="GroupedPays"/> for more than <see cref="GroupedFewPositionsMaxImages"/> images onto up to <see cref="GroupedFewPositions"/> positions (3x3 over 16 channels).</summary>
    internal const int GroupedFewPositionsMaxReduction = 144;

    /// <summary>Output positions per image up to which <see cref="GroupedPays"/> for several images with longer group reductions, up to <see cref="GroupedSmallPlanesMaxTerms"/> (7x7).</summary>
    internal const int GroupedSmallPlanePositions = 49;

    /// <summary>
    /// Images x group reduction up to which <see cref="GroupedPays"/> for several images onto up to
    /// <see cref="GroupedSmallPlanePositions"/> positions (4 images of 288 terms, 2 of 576).
    /// </summary>
    internal const int GroupedSmallPlanesMaxTerms = 1152;

    /// <summary>
    /// Whether a grouped convolution that is not depthwise takes the small kernel group by group
    /// (<see cref="DirectConvolution"/>: each work item pads an image's group of planes, a static W8A8 input quantized as
    /// it is laid out, and computes that group's output channels four at a time over runs of its planes) rather than
    /// dequantize + libtorch's grouped convolution (which quantizes a static W8A8 input in a pass of its own): with two
    /// groups or more, every Conv1d at stride 1, and Conv2d layers of group reductions up to
    /// <see cref="GroupedMaxReduction"/> terms, except more than <see cref="GroupedFewPositionsMaxImages"/> images onto up
    /// to <see cref="GroupedFewPositions"/> positions with group reductions over <see cref="GroupedFewPositionsMaxReduction"/>
    /// terms (there libtorch's grouped convolution reads each group's weights once for all images, the kernel once per
    /// image), unless onto up to 7x7 positions in at most <see cref="GroupedSmallPlanesMaxTerms"/> images x terms. Two
    /// images onto 14x14 since stop 42 (five layers of 288-576 terms a group, one at stride 2, the routes paired in a
    /// process of each order: 0.78-1.06x float32's time against 1.07-1.20x on libtorch's route, faster in all 10; three
    /// and four images mixed). Measured on the Zen 5 VM
    /// (docs/BENCHMARKS.md, stop 39: two surveys and a table; int8 and static W8A8 paired with float32 in one process,
    /// batch 1 and 8; stop 40, with each thread dequantizing the groups it reads: batch 2-8 onto 7x7 and 14x14, the kernel
    /// paired with libtorch's route in one process: onto 7x7 0.73-1.02x float32's time against 1.12-1.37x up to 1,152
    /// images x terms, onto 14x14 alike or slower from 2 images of 576 terms and 4 of 288).
    /// </summary>
    internal static bool GroupedPays(Im2Col unfold, long groups)
    {
        if (groups < 2) return false;
        bool stride1 = unfold.StrideH == 1 && unfold.StrideW == 1;
        if (unfold.Height == 1 && unfold.KernelH == 1 && stride1) return true; // a Conv1d
        int reduction = unfold.Rows / (int)groups;
        if (reduction > GroupedMaxReduction) return false;
        return unfold.Images <= GroupedFewPositionsMaxImages || unfold.Positions > GroupedFewPositions || reduction <= GroupedFewPositionsMaxReduction
            || (unfold.Positions <= GroupedSmallPlanePositions && (long)unfold.Images * reduction <= GroupedSmallPlanesMaxTerms);
    }

    /// <summary>
    /// Whether a grouped convolution that is not depthwise, weight-only, on a CPU with AVX512-BF16, multiplies in
    /// bfloat16 from pair images (<see cref="Kernels.PackedMatMul.GroupedBFloat16"/>, the bfloat16 route) rather than
    /// taking <see cref="GroupedPays"/>'s route: a layer over more than one row, of at least
    /// <see cref="GroupedPairsMinChannels"/> channels a group; for fewer than <see cref="GroupedPairsManyImages"/>
    /// images onto rows of at least <see cref="GroupedPairsMinWidthFewImages"/> with at least
    /// <see cref="GroupedPairsMinChannelsFewImages"/> channels a group, for more onto rows of at least
    /// <see cref="GroupedPairsMinWidth"/>; and onto rows of at least <see cref="Kernels.PackedMatMul.PairsInPlaceMinWidth"/>
    /// from two images over at least <see cref="GroupedPairsMinChannelsTwoImages"/> channels a group, from
    /// <see cref="GroupedPairsNarrowImages"/> over at least <see cref="GroupedPairsMinChannelsNarrow"/>. Measured on the
    /// Zen 5 VM (docs/BENCHMARKS.md, stop 43, after narrow planes were paired in one run: int8 onto 14x14, each route
    /// paired with float32 in one process, both orders): 48 channels a group at 3-8 images 0.83-1.02x float32's time
    /// against 1.00-1.13x on libtorch's route, 64 at 2-3 images 0.77-1.02x against 0.94-1.11x; 32 a group at 4-8
    /// images 1.08-1.17x against 1.00-1.13x (with the taps in one micro-kernel call, a tie: 1.04-1.09x against
    /// 1.03-1.08x for main's build in separate processes), 48 at 2 images 1.10-1.21x against 1.03-1.14x. Before that (stop 42;
    /// the routes paired with float32 in one process, batch 1, 4 and 8, and 2 onto 14x14): 3x3 over 56-64
    /// channels a group onto 28x28 at batch 1 0.48-0.90x float32's time against 0.57-1.11x for the small kernel,
    /// AlexNet's 5x5 over two groups of 48 channels 0.88-0.89x against 1.02-1.18x for either route; at batch 4 and 8
    /// onto 20x20 to 56x56 from 32 channels 0.40-0.80x against 0.53-1.01x for the rule's route before, onto 14x14 over
    /// 64 channels 0.91-0.95x against 1.01-1.07x on libtorch's route (the small kernel 1.03-1.14x). Slower: fewer
    /// channels a group (1.35-2.8x the small kernel's time at batch 1, alike at best at batch 8), anything onto 7x7 (its
    /// 9-wide padded rows; 1024 channels in 32 groups at batch 4 and 8 1.24-1.43x float32's time after stop 43's
    /// changes, libtorch's route 0.96-1.20x) and Conv1d layers;
    /// at batch 1 onto 14x14 and 20x20 alike or slower. Onto 14x14 at stride 2 the rule was not measured again.
    /// </summary>
    internal static bool GroupedBFloat16Pays(Im2Col unfold, long groups)
    {
        if (groups < 2 || unfold.Height == 1) return false;
        long channels = unfold.Channels / groups;
        if (channels < GroupedPairsMinChannels) return false;
        // Rows of 14 or more from two images: over many channels a group, fewer from three images.
        if (unfold.OutW >= Kernels.PackedMatMul.PairsInPlaceMinWidth && unfold.Images >= 2
            && channels >= (unfold.Images >= GroupedPairsNarrowImages ? GroupedPairsMinChannelsNarrow : GroupedPairsMinChannelsTwoImages))
            return true;
        if (unfold.Images < GroupedPairsManyImages) return unfold.OutW >= GroupedPairsMinWidthFewImages && channels >= GroupedPairsMinChannelsFewImages;
        return unfold.OutW >= GroupedPairsMinWidth;
    }

    /// <summary>
    /// Whether a grouped static W8A8 convolution that is not depthwise runs exactly from pair images of codes
    /// (<see cref="Kernels.PackedMatMul.GroupedCodes"/>, where its sums stay exact and the CPU has AVX512-BF16) rather
    /// than the small kernel group by group or libtorch's route: a Conv2d of more than one tap at stride 1, onto rows of
    /// at least <see cref="GroupedCodesWideRows"/> (28x28) with at least <see cref="GroupedCodesMinChannels"/> channels a
    /// group at any batch, or at least <see cref="GroupedCodesFewChannels"/> from <see cref="GroupedCodesMinImages"/>
    /// images; onto rows of 14 to 27 (14x14) with <see cref="GroupedCodesMinChannels"/> to
    /// <see cref="GroupedCodesMaxChannelsNarrow"/> channels a group, from <see cref="GroupedCodesMinImages"/> images up to
    /// <see cref="GroupedFewPositionsMaxReduction"/> terms a group, below that with more (from there libtorch's bfloat16
    /// convolution, <see cref="GroupedLibTorchBFloat16Pays"/>). Measured on the Zen 4 VM (docs/BENCHMARKS.md, stop 47;
    /// the rule's route and the small kernel each paired with float32 in one process, both orders, batch 1-8; 3x3
    /// layers in 32 groups and two in 8): onto 28x28 over 16 channels a group 0.55-0.81x float32's time against
    /// 0.84-1.09x on the small kernel (lower in 23 of 24 processes, the other 1.32x against 1.09x), over 48 (8 groups)
    /// 0.57-0.67x against 0.99-1.10x, over 8 from 4 images 0.57-0.78x against 0.83-0.93x (at 1 and 2 images slower,
    /// 0.77-0.96x against 0.61-0.79x); onto 14x14 over 16 channels a group at 4 and 8 images 0.73-1.32x against
    /// 0.92-1.23x (lower in 20 of 28), over 32 at 1-3 images 0.68-0.89x against 0.96-1.10x (18 of 18). Slower or
    /// alike: 4 channels a group onto 56x56 (0.46-1.01x against 0.36-0.53x), 16 a group onto 14x14 at 1 and 2 images,
    /// 48 a group onto 14x14 at 1-3 images (0.70-1.60x against 0.69-1.10x; one call 331-873 us between processes),
    /// anything onto 7x7 (1.05-2.41x, the pair images' 9-wide rows), stride 2 (256 in 32 groups from 56x56, 512 in 32
    /// from 28x28: 0.82-1.88x against 0.49-1.14x, lower in 2 of 32). Not measured: 1x1 and Conv1d layers.
    /// </summary>
    internal static bool GroupedCodesPay(Im2Col unfold, long groups)
    {
        if (groups < 2 || unfold.Height == 1 || unfold.KernelH * unfold.KernelW == 1 || unfold.StrideH != 1 || unfold.StrideW != 1
            || unfold.OutW < Kernels.PackedMatMul.PairsInPlaceMinWidth) return false;
        long channels = unfold.Channels / groups;
        if (unfold.OutW >= GroupedCodesWideRows)
            return channels >= GroupedCodesMinChannels || (channels >= GroupedCodesFewChannels && unfold.Images >= GroupedCodesMinImages);
        if (channels < GroupedCodesMinChannels || channels > GroupedCodesMaxChannelsNarrow) return false;
        return unfold.Rows / groups <= GroupedFewPositionsMaxReduction ? unfold.Images >= GroupedCodesMinImages : unfold.Images < GroupedLibTorchMinImages;
    }

    /// <summary>
    /// Whether a static W8A8 call (<paramref name="outputs"/> channels in <paramref name="groups"/> groups) runs with the
    /// output channels in lanes (<see cref="QuadConvolution"/>) rather than the rest of the rule: not pointwise (1x1 at
    /// stride 1 keeps the integer GEMM), at least <see cref="QuadMinChannels"/> input channels a group (an RGB stem
    /// keeps its routes), a group's weight (its outputs x terms, in bytes, which every run of up to 28 positions reads
    /// again) up to <see cref="QuadMaxGroupWeight"/>, and from <see cref="QuadWidePositions"/> output positions over all
    /// images, or, at fewer, a grouped layer of <see cref="QuadLanes"/> outputs a group or more (whole vectors).
    /// Measured on the Zen 4 VM (docs/BENCHMARKS.md, stops 48 and 49; two processes a shape, each route's median over
    /// float32's in the same process): grouped 3x3 layers of 16-48 channels a group (512 and 1024 channels in 32 groups,
    /// 384 in 8) onto 14x14 and 28x28, at stride 2 and onto 7x7 from 4 images, 0.42-1.03x float32's time against
    /// 0.61-1.55x for the rule's route before stop 48; ungrouped 3x3 layers of 8-128 channels onto 28x28 to 112x112
    /// 0.29-0.59x against 0.39-0.71x. Below 392 positions, with each thread's work whole groups (stop 49), grouped layers
    /// of 2 to 32 groups and 16 to 256 outputs a group onto 7x7 (and at stride 2 onto it) at 1 to 4 images took 0.27-0.59x
    /// against 0.36-1.21x for the rule's route before (above float32's time in 8 of those 35 cells, all where it took
    /// another route), 64 channels in 4 groups onto 14x14 the same (0.31-0.42x against 0.29-0.43x); ungrouped layers
    /// there keep the integer GEMM or the small kernel:
    /// 128->128 onto 7x7 at batch 1 0.56-0.61x against 0.40-0.43x, 32->64 onto 14x14 at batch 1 0.34-0.38x against
    /// 0.24-0.35x, 256->256 onto 14x14 at batch 1 (stop 48) 0.75-0.77x against 0.60-0.63x. Lost on 512->512 onto 7x7
    /// (2.25 MiB, 0.45-1.17x against 0.37-0.46x) and on 1x1 64->256 onto 56x56 (0.53-0.57x against 0.49-0.52x). Where a
    /// group has fewer than <see cref="QuadLanes"/> outputs (lanes left empty) and the pair images of codes pay
    /// (<paramref name="pairCodesPay"/>: a grouped layer where <see cref="GroupedCodesPay"/> on a CPU that runs them),
    /// those: 256 channels in 32 groups onto 28x28 at batch 4 took 633-656 us with the output channels in lanes, 558-565
    /// us from pair images of codes.
    /// </summary>
    internal static bool QuadPays(Im2Col unfold, long outputs, long groups, bool pairCodesPay = false)
    {
        if (unfold.IsPointwise || groups < 1 || unfold.Channels / groups < QuadMinChannels) return false;
        if (pairCodesPay && outputs / groups < QuadLanes) return false;
        long positions = (long)unfold.Images * unfold.Positions, groupWeight = outputs / groups * (unfold.Rows / groups);
        if (groupWeight > QuadMaxGroupWeight) return false;
        return positions >= QuadWidePositions || (groups > 1 && outputs / groups >= QuadLanes);
    }

    /// <summary>Output channels a vector of <see cref="QuadConvolution"/> holds: a group of fewer leaves lanes empty (<see cref="QuadPays"/>).</summary>
    internal const int QuadLanes = 16;

    /// <summary>Input channels a group from which <see cref="QuadPays"/> (one quad of codes a pixel: the RGB stem's three waste a quarter of it).</summary>
    internal const int QuadMinChannels = 4;

    /// <summary>Output positions (over all images) from which <see cref="QuadPays"/> for ungrouped layers (and grouped ones of fewer than <see cref="QuadLanes"/> outputs a group).</summary>
    internal const long QuadWidePositions = 392;

    /// <summary>A group's weight in bytes (outputs x terms) up to which <see cref="QuadPays"/> (256->256 3x3: 576 KiB; 512->512 3x3, 2.25 MiB, lost).</summary>
    internal const long QuadMaxGroupWeight = 1 << 20;

    /// <summary>Output row length from which <see cref="GroupedCodesPay"/> at any batch with <see cref="GroupedCodesMinChannels"/> channels a group (28x28).</summary>
    internal const int GroupedCodesWideRows = 28;

    /// <summary>Input channels a group from which <see cref="GroupedCodesPay"/> at any batch onto wide rows, and onto 14x14 at all.</summary>
    internal const int GroupedCodesMinChannels = 16;

    /// <summary>Input channels a group up to which <see cref="GroupedCodesPay"/> onto 14x14.</summary>
    internal const int GroupedCodesMaxChannelsNarrow = 32;

    /// <summary>Input channels a group from which <see cref="GroupedCodesPay"/> onto wide rows from <see cref="GroupedCodesMinImages"/> images.</summary>
    internal const int GroupedCodesFewChannels = 8;

    /// <summary>Images from which <see cref="GroupedCodesPay"/> with fewer channels a group onto wide rows, and onto 14x14 with up to <see cref="GroupedFewPositionsMaxReduction"/> terms a group.</summary>
    internal const int GroupedCodesMinImages = 4;

    /// <summary>Input channels a group from which <see cref="GroupedBFloat16Pays"/>.</summary>
    internal const int GroupedPairsMinChannels = 32;

    /// <summary>Images from which <see cref="GroupedBFloat16Pays"/> onto narrower rows and with fewer channels a group.</summary>
    internal const int GroupedPairsManyImages = 4;

    /// <summary>Output row length from which <see cref="GroupedBFloat16Pays"/> for fewer than <see cref="GroupedPairsManyImages"/> images (AlexNet's 27).</summary>
    internal const int GroupedPairsMinWidthFewImages = 24;

    /// <summary>Input channels a group from which <see cref="GroupedBFloat16Pays"/> for fewer than <see cref="GroupedPairsManyImages"/> images.</summary>
    internal const int GroupedPairsMinChannelsFewImages = 48;

    /// <summary>Output row length from which <see cref="GroupedBFloat16Pays"/> for <see cref="GroupedPairsManyImages"/> images or more.</summary>
    internal const int GroupedPairsMinWidth = 20;

    /// <summary>Images from which <see cref="GroupedBFloat16Pays"/> onto rows of 14 or more with <see cref="GroupedPairsMinChannelsNarrow"/> channels a group.</summary>
    internal const int GroupedPairsNarrowImages = 3;

    /// <summary>Input channels a group from which <see cref="GroupedBFloat16Pays"/> for <see cref="GroupedPairsNarrowImages"/> images or more onto rows of 14 or more.</summary>
    internal const int GroupedPairsMinChannelsNarrow = 48;

    /// <summary>Input channels a group from which <see cref="GroupedBFloat16Pays"/> for two images onto rows of 14 or more.</summary>
    internal const int GroupedPairsMinChannelsTwoImages = 64;

    /// <summary>
    /// Weight elements (outputs x terms a group) up to which a grouped weight-only layer whose bfloat16 route puts the
    /// output channels in lanes (<see cref="Kernels.PackedMatMul.LanesPay"/>) takes it before libtorch's bfloat16
    /// convolution where that pays too (<see cref="GroupedLibTorchBFloat16Pays"/>: 4 images or more): 512K. Measured on
    /// the Zen 4 VM (docs/BENCHMARKS.md, stop 49; the rule before and with the lanes first, alternating builds, int8 and
    /// int4 weights, batch 4 and 8): weights of 9K-295K elements (512 and 1024 channels in 32 groups onto 7x7 and 14x14,
    /// 512 and 128 in 8 onto 7x7, 64 in 4 onto 14x14) 0.45-0.84x float32's time against 0.60-1.17x on libtorch's; 166K
    /// (384 in 8 onto 14x14) 0.52-0.62x against 0.56-0.71x; 1.18M (2048 channels in 32 groups and 512 in 2 onto 7x7)
    /// 0.55-0.74x against 0.56-0.64x.
    /// </summary>
    internal const long GroupedLanesOverLibTorchMaxWeight = 512 << 10;

    /// <summary>Images from which <see cref="GroupedLibTorchBFloat16Pays"/>.</summary>
    internal const int GroupedLibTorchMinImages = 4;

    /// <summary>
    /// Whether a grouped convolution that is not depthwise takes libtorch's bfloat16 convolution, where that passed
    /// <see cref="BFloat16Check"/> on a CPU with native bfloat16 (and <see cref="QuantizedModule.UseBFloat16Compute"/>), rather than the small
    /// kernel group by group, the pair images or libtorch's float32 route: a Conv2d of <see cref="GroupedLibTorchMinImages"/>
    /// or more images onto up to <see cref="GroupedFewPositions"/> positions an image (14x14), with group reductions
    /// of at least <see cref="GroupedFewPositionsMaxReduction"/> terms weight-only (3x3 over 16 channels a group), of
    /// more for static W8A8 (<paramref name="quantizedInput"/>). There oneDNN reads each group's weights once for all
    /// images at twice its float32 rate. Measured on the Zen 4 VM (docs/BENCHMARKS.md, stop 44; each route paired with
    /// float32 in one process, both orders, batch 1-8): weight-only onto 14x14 and 7x7 at batch 4 and 8, over 16-64
    /// channels a group, 0.57-0.94x float32's time against 0.66-1.24x on the rule's route before; static W8A8 over 64
    /// channels a group onto 14x14 0.65-0.74x against 1.05-1.16x, over 32 onto 7x7 at batch 8 0.99-1.09x against
    /// 1.28-1.58x (at batch 4 mixed: 1.12-1.16x against 0.89-1.13x). Slower: one or two images onto 7x7 (1.15-1.25x
    /// against 0.52-0.99x), 28x28 and larger planes (0.74-1.07x against 0.35-0.70x), static W8A8 over 16 channels a
    /// group (0.97-2.13x against 0.45-0.94x).
    /// </summary>
    internal static bool GroupedLibTorchBFloat16Pays(Im2Col unfold, long groups, bool quantizedInput)
    {
        if (groups < 2 || unfold.Height == 1 || unfold.Images < GroupedLibTorchMinImages || unfold.Positions > GroupedFewPositions) return false;
        int reduction = unfold.Rows / (int)groups;
        return quantizedInput ? reduction > GroupedFewPositionsMaxReduction : reduction >= GroupedFewPositionsMaxReduction;
    }
}
