using System.Buffers;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QuantSharp.Kernels;

/// <summary>
/// One width of the packed integer GEMM's step: <c>acc[lane] += sum_d act[lane, d] * w[d]</c> over one 32-bit group
/// of <see cref="Depth"/> reduction elements, <c>w</c> broadcast to every lane. AVX-VNNI groups four uint8 codes
/// (<c>vpdpbusd</c>); the portable twins group two int16 values (<c>vpmaddwd</c>, exact: no saturation is possible
/// with codes in [0, 255] and weights in [-128, 127]). Every width gives the same int32 sums.
/// </summary>
internal interface IIntGemmWidth<TVec> : IMicroWidth<TVec, int> where TVec : struct
{
    /// <summary>Reduction elements per 32-bit group: 4 (uint8 codes, int8 weights) or 2 (both widened to int16).</summary>
    static abstract int Depth { get; }
}

internal readonly struct GemmVnni256 : IIntGemmWidth<Vector256<int>>
{
    public static int Lanes => 8;
    public static int Depth => 4;
    public static unsafe Vector256<int> Load(int* p) => Vector256.Load(p);
    public static unsafe void Store(Vector256<int> v, int* p) => v.Store(p);
    public static Vector256<int> Broadcast(int w) => Vector256.Create(w);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> MultiplyAccumulate(Vector256<int> acc, Vector256<int> act, Vector256<int> w) => AvxVnni.MultiplyWideningAndAdd(acc, act.AsByte(), w.AsSByte());
}

/// <summary>
/// 512-bit <c>vpdpbusd</c> strips (16 lanes of 4 uint8 codes). The packed GEMM runs <see cref="Vnni512Kernel"/> for
/// it; this managed <see cref="MultiplyAccumulate"/> is its portable twin (exact, slow: four byte products per lane with portable
/// <see cref="Vector512{T}"/> operations), which the tests compare the generated kernel against on any CPU.
/// </summary>
internal readonly struct GemmVnni512 : IIntGemmWidth<Vector512<int>>
{
    public static int Lanes => 16;
    public static int Depth => 4;
    public static unsafe Vector512<int> Load(int* p) => Vector512.Load(p);
    public static unsafe void Store(Vector512<int> v, int* p) => v.Store(p);
    public static Vector512<int> Broadcast(int w) => Vector512.Create(w);

    /// <summary><c>acc + sum_d u_d * s_d</c> per lane: byte d of <paramref name="act"/> unsigned, of <paramref name="w"/> signed.</summary>
    public static Vector512<int> MultiplyAccumulate(Vector512<int> acc, Vector512<int> act, Vector512<int> w)
    {
        for (int shift = 0; shift < 32; shift += 8)
            acc += (act >>> shift & Vector512.Create(0xFF)) * (w << (24 - shift) >> 24);
        return acc;
    }
}

internal readonly struct GemmMadd512 : IIntGemmWidth<Vector512<int>>
{
    public static int Lanes => 16;
    public static int Depth => 2;
    public static unsafe Vector512<int> Load(int* p) => Vector512.Load(p);
    public static unsafe void Store(Vector512<int> v, int* p) => v.Store(p);
    public static Vector512<int> Broadcast(int w) => Vector512.Create(w);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<int> MultiplyAccumulate(Vector512<int> acc, Vector512<int> act, Vector512<int> w) => acc + Avx512BW.MultiplyAddAdjacent(act.AsInt16(), w.AsInt16());
}

internal readonly struct GemmMadd256 : IIntGemmWidth<Vector256<int>>
{
    public static int Lanes => 8;
    public static int Depth => 2;
    public static unsafe Vector256<int> Load(int* p) => Vector256.Load(p);
    public static unsafe void Store(Vector256<int> v, int* p) => v.Store(p);
    public static Vector256<int> Broadcast(int w) => Vector256.Create(w);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> MultiplyAccumulate(Vector256<int> acc, Vector256<int> act, Vector256<int> w) => acc + Avx2.MultiplyAddAdjacent(act.AsInt16(), w.AsInt16());
}

internal readonly struct GemmMadd128 : IIntGemmWidth<Vector128<int>>
{
    public static int Lanes => 4;
    public static int Depth => 2;
    public static unsafe Vector128<int> Load(int* p) => Vector128.Load(p);
    public static unsafe void Store(Vector128<int> v, int* p) => v.Store(p);
    public static Vector128<int> Broadcast(int w) => Vector128.Create(w);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<int> MultiplyAccumulate(Vector128<int> acc, Vector128<int> act, Vector128<int> w) => acc + Sse2.MultiplyAddAdjacent(act.AsInt16(), w.AsInt16());
}

internal readonly struct GemmScalar : IIntGemmWidth<int>
{
    public static int Lanes => 1;
    public static int Depth => 2;
    public static unsafe int Load(int* p) => *p;
    public static unsafe void Store(int v, int* p) => *p = v;
    public static int Broadcast(int w) => w;

    /// <summary>Two int16 halves (element 0 low, element 1 high) multiplied and added, as <c>pmaddwd</c>.</summary>
    public static int MultiplyAccumulate(int acc, int act, int w) => acc + (short)act * (short)w + (act >> 16) * (w >> 16);
}

/// <summary>
/// One width of the packed integer GEMM's epilogue (<see cref="PackedIntegerMatMul"/>): <see cref="Count"/> float64
/// lanes, exact for the integers involved, rounded to float32 once on the way out.
/// </summary>
internal interface IEpilogueWidth<TVec> where TVec : struct
{
    /// <summary>Float64 lanes per vector.</summary>
    static abstract int Count { get; }

    /// <summary>All lanes <paramref name="value"/>.</summary>
    static abstract TVec Create(double value);

    /// <summary><see cref="Count"/> int32 values as doubles (exact).</summary>
    static abstract unsafe TVec LoadInt32(int* p);

    /// <summary><see cref="Count"/> float32 values as doubles (exact).</summary>
    static abstract unsafe TVec LoadSingle(float* p);

    /// <summary><c>a * b</c>, lane by lane.</summary>
    static abstract TVec Multiply(TVec a, TVec b);

    /// <summary><c>a - b</c>, lane by lane.</summary>
    static abstract TVec Subtract(TVec a, TVec b);

    /// <summary><c>dst[l] = (float)v[l]</c> (round to nearest even).</summary>
    static abstract unsafe void StoreSingle(TVec v, float* dst);

    /// <summary><c>dst[l] = (float)v[l] + add</c> (rounded to float32, then added in float32).</summary>
    static abstract unsafe void StoreSingle(TVec v, float add, float* dst);

    /// <summary>
    /// <see cref="StoreSingle(TVec, float, float*)"/> for the first <paramref name="count"/> lanes only (fewer than
    /// <see cref="Count"/>), under a mask, where the CPU has masked stores of this width (AVX-512VL); false otherwise,
    /// nothing written.
    /// </summary>
    static abstract unsafe bool StoreSingle(TVec v, float add, float* dst, int count);
}

/// <summary>Eight float64 lanes (AVX-512F).</summary>
internal readonly struct Epilogue512 : IEpilogueWidth<Vector512<double>>
{
    public static bool IsSupported => Simd.Use512 && Avx512F.IsSupported;
    public static int Count => 8;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<double> Create(double value) => Vector512.Create(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe Vector512<double> LoadInt32(int* p) => Avx512F.ConvertToVector512Double(Vector256.Load(p));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe Vector512<double> LoadSingle(float* p) => Avx512F.ConvertToVector512Double(Vector256.Load(p));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<double> Multiply(Vector512<double> a, Vector512<double> b) => a * b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<double> Subtract(Vector512<double> a, Vector512<double> b) => a - b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe void StoreSingle(Vector512<double> v, float* dst) => Avx512F.ConvertToVector256Single(v).Store(dst);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe void StoreSingle(Vector512<double> v, float add, float* dst) => (Avx512F.ConvertToVector256Single(v) + Vector256.Create(add)).Store(dst);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe bool StoreSingle(Vector512<double> v, float add, float* dst, int count)
    {
        if (!Avx512F.VL.IsSupported) return false;
        var mask = Vector256.LessThan(Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7), Vector256.Create(count)).AsSingle();
        Avx512F.VL.MaskStore(dst, mask, Avx512F.ConvertToVector256Single(v) + Vector256.Create(add));
        return true;
    }
}

/// <summary>Four float64 lanes (AVX).</summary>
internal readonly struct Epilogue256 : IEpilogueWidth<Vector256<double>>
{
    public static bool IsSupported => Simd.Use256 && Avx.IsSupported;
    public static int Count => 4;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<double> Create(double value) => Vector256.Create(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe Vector256<double> LoadInt32(int* p) => Avx.ConvertToVector256Double(Vector128.Load(p));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe Vector256<double> LoadSingle(float* p) => Avx.ConvertToVector256Double(Vector128.Load(p));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<double> Multiply(Vector256<double> a, Vector256<double> b) => a * b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<double> Subtract(Vector256<double> a, Vector256<double> b) => a - b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe void StoreSingle(Vector256<double> v, float* dst) => Avx.ConvertToVector128Single(v).Store(dst);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe void StoreSingle(Vector256<double> v, float add, float* dst) => (Avx.ConvertToVector128Single(v) + Vector128.Create(add)).Store(dst);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe bool StoreSingle(Vector256<double> v, float add, float* dst, int count) => false;
}

/// <summary>
/// Quantized images (unsigned codes: int8 codes shifted by 128) laid out so that the reduction rows of a convolution's
/// activation rows are runs of memory: activation row <c>q</c> of an image reads reduction row kk at
/// <c>image + Offsets[kk] + q</c> (the layout of <c>IntegerMatMul.RunConvolution</c>: padded, split into stride
/// phases; <see cref="Grid"/> maps activation rows to output positions). Every row shares one static quantization,
/// <see cref="Scale"/> and <see cref="ZeroPoint"/>. The default (no grid) stands for a plain product's rows.
/// </summary>
internal readonly unsafe struct ImageCodes(byte* codes, int* offsets, long imageBytes, OutputGrid grid, float scale, int zeroPoint)
{
    private readonly nint _codes = (nint)codes, _offsets = (nint)offsets;

    /// <summary>The first image's first code.</summary>
    public byte* Codes => (byte*)_codes;

    /// <summary>Reduction row kk's offset in an image.</summary>
    public int* Offsets => (int*)_offsets;

    /// <summary>Codes per image.</summary>
    public long ImageBytes { get; } = imageBytes;

    /// <summary>Where activation rows go in the channel-major output.</summary>
    public OutputGrid Grid { get; } = grid;

    /// <summary>The activations' scale.</summary>
    public float Scale { get; } = scale;

    /// <summary>The activations' zero point, in the unsigned code domain.</summary>
    public int ZeroPoint { get; } = zeroPoint;
}

/// <summary>
/// A convolution's activation rows as a grid: <see cref="RowsPerImage"/> rows per image (whole strips),
/// <see cref="RowLength"/> per output row, of which the first <see cref="OutW"/> of the first <see cref="OutH"/> rows are
/// output positions. The default (no rows per image) is a plain product's row-major output.
/// </summary>
internal readonly record struct OutputGrid(int RowsPerImage, int RowLength, int OutH, int OutW)
{
    /// <summary>True for a convolution's channel-major output.</summary>
    public bool ChannelMajor => RowsPerImage > 0;

    /// <summary>Output positions per image.</summary>
    public int Positions => OutH * OutW;
}

/// <summary>
/// The large-batch path of <see cref="IntegerMatMul"/>: a cache-blocked, register-blocked integer GEMM. Same integers,
/// same epilogue as the row kernels (and as <see cref="IntegerMatMul.Reference"/>), so the outputs are bit for bit equal.
/// </summary>
/// <remarks>
/// <para>It computes <c>y^T = W x^T</c> in int32, like <see cref="PackedMatMul"/> does in float:</para>
/// <list type="bullet">
/// <item>The activation codes are packed once per call in strips of <c>2 * Lanes</c> rows. Each 32-bit lane holds
/// <c>Depth</c> consecutive reduction elements of one row (4 uint8 codes for VNNI, 2 int16 for <c>vpmaddwd</c>):
/// <c>packed[strip][group][lane]</c>, zero-padded to whole strips and whole groups.</item>
/// <item>Each work item owns up to <see cref="ItemRows"/> weight rows and a group of strips (<see cref="PackedMatMul.WorkSplit"/>). For each block of <see cref="BlockGroups"/> groups of
/// the reduction axis it copies (VNNI) or widens to int16 its rows' slices into a tile, zero-padded, and adds the
/// slices' weight sums (for the activation zero points); then runs the micro-kernel over every strip.</item>
/// <item>Micro-kernel (<see cref="MicroKernel"/>, shared by both packed GEMMs): <see cref="TileRows"/> weight rows x 2 vectors of activation rows, 12 int32 accumulators.
/// Per group: two vector loads of the strip, one 32-bit broadcast per weight row, twelve <c>vpdpbusd</c> (or
/// <c>vpmaddwd</c> + add).</item>
/// <item>The int32 sums of the item live in a <c>y^T</c> buffer; the epilogue applies the zero-point corrections
/// (exact, int64), both scales and the bias, with <see cref="IntegerMatMul"/>'s arithmetic.</item>
/// </list>
/// </remarks>
internal static unsafe class PackedIntegerMatMul
{
    /// <summary>Weight rows per micro-kernel call (broadcast operands).</summary>
    internal const int TileRows = MicroKernel.Rows;

    /// <summary>Weight rows per work item (a multiple of <see cref="TileRows"/>).</summary>
    internal const int ItemRows = 8 * TileRows;

    /// <summary>32-bit groups per reduction block: a tile row is 512 bytes (512 codes for VNNI, 256 int16 otherwise).</summary>
    internal const int BlockGroups = 128;

    private const int Align = 64;

    /// <summary>
    /// Whether <see cref="GemmVnni512"/> runs the generated <see cref="Vnni512Kernel"/> (tests turn it off to run the
    /// managed twin; both give the same integers, so tests running beside them are unaffected).
    /// </summary>
    internal static volatile bool UseNative = true;

    /// <summary>
    /// Bytes of packed activations per work item (whole strips, all of K; tests lower it). Smaller blocks would stay
    /// in L2 but make every block re-read the weights; measured at batch 512, 4096x4096, one thread: 128 KiB 113 ms,
    /// 512 KiB 71 ms, all 2 MiB in one block 60 ms. So blocks only cap the L3 footprint of very large batches.
    /// </summary>
    internal static int ActivationBlockBytes = 4 << 20;

    /// <summary>
    /// Weight bytes up to which a call whose activations arrive as floats (<see cref="FloatActivations"/>) or as quantized
    /// images (<see cref="ImageCodes"/>) is cut by activation strips only, each work item quantizing (or unfolding) and
    /// packing its own rows and then multiplying them by the whole weight (<see cref="FusesQuantization"/>).
    /// </summary>
    internal static int FusedWeightBytes = 256 << 10;

    /// <summary>
    /// Whether a call over <paramref name="strips"/> strips, cut as <paramref name="split"/>, quantizes (or, for images,
    /// unfolds) and packs its activations inside the work items: when the split has one item of weight rows (its items are cut by strips anyway), or when
    /// the weight has at most <see cref="FusedWeightBytes"/> bytes (<paramref name="weightBytes"/>) and whole strips share out evenly enough over
    /// <paramref name="threads"/> threads (the busiest at most 8/7 of an even share: 3 or 5 strips on two threads are
    /// left to the cut by weight rows, which shares them out by rows; a choice by reasoning: fused with three strips,
    /// 384x384 at 96 rows read 77-80 us against 54-84 us unfused, two processes each, <c>PROBE_PROFILE=3</c>, no signal).
    /// </summary>
    internal static bool FusesQuantization(long weightBytes, in PackedMatMul.WorkSplit split, int strips, int threads) =>
        split.RowItems == 1
        || (weightBytes <= FusedWeightBytes && 7L * ((strips + threads - 1) / threads) * threads <= 8L * strips);

    /// <summary>
    /// Computes <c>y = dequant(x) dequant(w)^T + bias</c>; arguments as <see cref="IntegerMatMul.Run(in WeightView, QuantizedActivations, float*, float*, nint, KernelPath, MatMulMethod)"/>
    /// (checked there). With <paramref name="floats"/> the codes of <paramref name="x"/> are made here: in the work items
    /// where <see cref="FusesQuantization"/>, otherwise in one pass first. With <paramref name="images"/> (a convolution)
    /// the activation rows are the column matrix of the quantized images, packed straight from them
    /// (<see cref="PackImages"/>; in the work items, or in one pass first, by the same rule), their code sums written into <paramref name="x"/> where a
    /// weight row has a zero point (<paramref name="x"/> then holds only the sums, which nothing else reads; the scale and zero point travel in <paramref name="images"/>), and the output is channel-major
    /// (<see cref="OutputGrid"/>, <paramref name="ldy"/> the weight's rows).
    /// </summary>
    public static void Run<TW, TVec>(in WeightView w, QuantizedActivations x, FloatActivations? floats, ImageCodes? images, float* bias, float* y, nint ldy)
        where TW : IIntGemmWidth<TVec> where TVec : struct
    {
        int k = w.Cols, m = x.Rows, stripWidth = 2 * TW.Lanes;
        int groups = (k + TW.Depth - 1) / TW.Depth;
        int strips = (m + stripWidth - 1) / stripWidth;
        long stripBytes = (long)groups * stripWidth * 4;
        // Work items (PackedMatMul.WorkSplit): weight rows x groups of strips, whose packed activations stay in cache.
        int blockStrips = (int)Math.Clamp(ActivationBlockBytes / stripBytes, 1, strips);
        var split = PackedMatMul.WorkSplit.For(w.Rows, strips, KernelThreads.Count, blockStrips);
        bool fused = (floats is not null || images is not null) && FusesQuantization((long)w.Rows * w.Cols, split, strips, KernelThreads.Count);
        if (fused)
        {
            // Items of strips only, each over all weight rows in blocks of at most ItemRows.
            split = PackedMatMul.WorkSplit.For(Math.Min(w.Rows, ItemRows), strips, KernelThreads.Count, blockStrips);
        }
        else if (floats is { } rows)
        {
            IntegerMatMul.Quantize(rows, x);
        }
        // Images whose reduction is one block, multiplied by one block of weight rows, are packed pass by pass inside
        // Item, into its scratch, where the micro-kernel reads them from L1, when an item's strips are many (PackedPerPass).
        bool perPass = fused && images is not null && PackedPerPass(groups, w.Rows, split.GroupStrips * stripBytes);
        byte[]? packedArray = perPass ? null : ArrayPool<byte>.Shared.Rent(checked((int)(strips * stripBytes) + Align));
        try
        {
            fixed (byte* pinned = packedArray)
            {
                byte* packed = perPass ? null : AlignUp(pinned);
                nint packedAddress = (nint)packed;
                var imageCodes = images.GetValueOrDefault();
                bool packsImages = images is not null, imageSums = packsImages && HasZeroPoints(w);
                if (packsImages && !fused)
                {
                    // Runs of strips of about 64 KiB of packed codes.
                    int runStrips = (int)Math.Clamp((1 << 16) / stripBytes, 1, 8);
                    int runs = (strips + runStrips - 1) / runStrips;
                    KernelThreads.For(runs, runStrips * stripBytes, r => PackImages<TW, TVec>(imageCodes, x, imageSums, (byte*)packedAddress, r * runStrips, Math.Min(strips, (r + 1) * runStrips)));
                }
                else if (!fused)
                {
                    KernelThreads.For(strips, stripBytes, s => PackStrip<TW, TVec>(x, (byte*)packedAddress + s * stripBytes, s * stripWidth));
                }

                var view = w;
                var source = floats.GetValueOrDefault();
                nint yAddress = (nint)y, biasAddress = (nint)bias;
                int blockRows = split.GroupStrips * stripWidth;
                // Tile, y^T, weight sums, alignment, and 32 bytes the channel-major epilogue's last partial vector may read.
                int scratchBytes = split.Rows * BlockGroups * 4 + split.Rows * blockRows * 4 + split.Rows * 4 + Align + 32;
                int passOffset = (scratchBytes + Align - 1) / Align * Align;
                if (perPass) scratchBytes = passOffset + (int)(PassStrips * stripBytes) + Align;
                int weightRows = fused ? view.Rows : split.Rows;
                KernelThreads.For(split.Items, (long)weightRows * blockRows * k, item =>
                {
                    int s0 = split.StripStart(item), s1 = Math.Min(strips, s0 + split.GroupStrips), n0 = split.RowStart(item);
                    if (fused && packsImages)
                    {
                        if (!perPass) PackImages<TW, TVec>(imageCodes, x, imageSums, (byte*)packedAddress, s0, s1);
                    }
                    else if (fused)
                    {
                        source.Quantize(x, s0 * stripWidth, Math.Min(m, s1 * stripWidth));
                        for (int s = s0; s < s1; s++) PackStrip<TW, TVec>(x, (byte*)packedAddress + s * stripBytes, s * stripWidth);
                    }
                    byte[] scratch = ArrayPool<byte>.Shared.Rent(scratchBytes);
                    try
                    {
                        fixed (byte* sp = scratch)
                        {
                            var block = perPass
                                ? new Block(null, s1 - s0, s0 * stripWidth, groups, AlignUp(sp) + passOffset, imageSums)
                                : new Block((byte*)packedAddress + s0 * stripBytes, s1 - s0, s0 * stripWidth, groups);
                            // A fused item multiplies its strips by every block of weight rows, the others by theirs.
                            for (int r0 = n0, r1 = fused ? view.Rows : n0 + 1; r0 < r1; r0 += split.Rows)
                                Item<TW, TVec>(view, x, block, AlignUp(sp), (float*)biasAddress, (float*)yAddress, ldy, imageCodes, r0, Math.Min(split.Rows, view.Rows - r0));
                        }
                    }
                    finally
                    {
                        ArrayPool<byte>.Shared.Return(scratch);
                    }
                });
            }
        }
        finally
        {
            if (packedArray is not null) ArrayPool<byte>.Shared.Return(packedArray);
        }
    }

    /// <summary>
    /// A run of packed strips: <paramref name="strips"/> strips of <paramref name="groups"/> groups from <paramref name="data"/>, the first holding activation row <paramref name="row0"/>;
    /// or, with a <paramref name="passBuffer"/> (<paramref name="data"/> null), strips of a convolution's images that
    /// <see cref="Item"/> packs there pass by pass (<see cref="PackedPerPass"/>), their code sums written
    /// <paramref name="withSums"/>.
    /// </summary>
    private readonly struct Block(byte* data, int strips, int row0, int groups, byte* passBuffer = null, bool withSums = false)
    {
        public byte* Data { get; } = data;
        public int Strips { get; } = strips;
        public int Row0 { get; } = row0;
        public int Groups { get; } = groups;
        public byte* PassBuffer { get; } = passBuffer;
        public bool WithSums { get; } = withSums;
    }

    /// <summary>
    /// Bytes of an item's packed strips above which <see cref="PackedPerPass"/> packs them pass by pass (tests lower it):
    /// a core's L2 on the development VM (1 MiB, <c>getconf LEVEL2_CACHE_SIZE</c>), which holds an item's strips packed
    /// first. Measured (docs/BENCHMARKS.md,
    /// stop 33; static W8A8, the integer GEMM over float32's time, paired processes): MNIST conv2 at batch 500 (2.9 MB per
    /// item) 0.89-0.93x pass by pass against 0.94-1.22x packed first; the stem at batch 8 (0.7 MB) 1.44-1.59x against
    /// 1.31-1.49x; alike at 0.37 MB (MNIST conv2 at batch 64), 1.8 MB (3x3 8->32 on 112x112 at batch 8) and 2.8 MB (the
    /// stem at batch 32).
    /// </summary>
    internal static int PassPackMinBytes = 1 << 20;

    /// <summary>
    /// Whether a convolution's images, cut into work items by strips (<see cref="FusesQuantization"/>), are packed pass by
    /// pass inside <see cref="Item"/> (<see cref="PassStrips"/> strips, 18 KiB for MNIST conv2's 144 terms) rather than
    /// all of an item's strips first: where the reduction is one block (<paramref name="groups"/> at most
    /// <see cref="BlockGroups"/>), so every strip is multiplied in one pass, the weight (<paramref name="rows"/>) is one
    /// item's block of rows, so every pass is packed once, and an item's packed strips (<paramref name="itemBytes"/>)
    /// exceed <see cref="PassPackMinBytes"/>: packed first, MNIST conv2's took 2.9 MB per item at batch 500, written and
    /// read back through L3.
    /// </summary>
    internal static bool PackedPerPass(int groups, int rows, long itemBytes) => groups <= BlockGroups && rows <= ItemRows && itemBytes > PassPackMinBytes;

    /// <summary>Whether any row of <paramref name="w"/> (one scale and zero point per row) has a zero point.</summary>
    private static bool HasZeroPoints(in WeightView w)
    {
        for (int n = 0; n < w.Rows; n++)
            if (w.Params(n, 0).ZeroPoint != 0) return true;
        return false;
    }

    private static byte* AlignUp(byte* p) => (byte*)(((nint)p + (Align - 1)) & ~(nint)(Align - 1));

    /// <summary>Writes the strip whose first activation row is <paramref name="row0"/>: <c>dst[(g * width + lane) * 4 ..]</c> = group g of row <c>row0 + lane</c>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackStrip<TW, TVec>(QuantizedActivations x, byte* dst, int row0)
        where TW : IIntGemmWidth<TVec> where TVec : struct
    {
        int k = x.Cols, depth = TW.Depth, width = 2 * TW.Lanes;
        int groups = (k + depth - 1) / depth, full = k / depth;
        int lane = 0, valid = Math.Clamp(x.Rows - row0, 0, width);
        if (depth == 4 && k % 4 == 0 && Avx.IsSupported)
        {
            // Rows of int32 groups, eight at a time through 8 x 8 transposes (the scalar loop below, one strided store
            // per group, cost a tenth of a 64 x 800 layer's W8A8 call).
            for (; lane + 8 <= valid; lane += 8)
            {
                float* src = (float*)(x.Codes + (nint)(row0 + lane) * k), d = (float*)dst + lane;
                int g = 0;
                for (; g + 8 <= full; g += 8) Transposes.Transpose8x8(src + g, k / 4, d + (nint)g * width, width);
                for (; g < full; g++)
                    for (int r = 0; r < 8; r++) ((int*)d)[(nint)g * width + r] = ((int*)src)[r * (k / 4) + g];
            }
        }
        for (; lane < width; lane++)
        {
            int row = row0 + lane;
            int* d = (int*)dst + lane;
            if (row >= x.Rows)
            {
                for (int g = 0; g < groups; g++) d[(nint)g * width] = 0;
                continue;
            }
            byte* src = x.Codes + (nint)row * k;
            int g0 = 0;
            if (depth == 4)
                for (; g0 < full; g0++) d[(nint)g0 * width] = ((int*)src)[g0];
            else
                for (; g0 < full; g0++) d[(nint)g0 * width] = src[2 * g0] | src[2 * g0 + 1] << 16;
            if (g0 < groups) d[(nint)g0 * width] = LastGroup(src, g0 * depth, k, depth);
        }
    }

    /// <summary>
    /// Writes strips <c>[s0, s1)</c> of a convolution's activations (<see cref="ImageCodes"/>): group g of lane l of a
    /// strip holds reduction rows <c>g * Depth ..</c> of the strip's activation row, each read at its offset from the
    /// image, so each group is one <see cref="Interleave"/> of rows read in place (rows past K read a zero row). Every
    /// image has whole strips, so a strip never crosses images; <paramref name="withSums"/>, the code sums of all its
    /// rows are written into <paramref name="x"/> (only a weight zero point needs them: a quarter of the interleaving's
    /// vector operations).
    /// </summary>
    private static void PackImages<TW, TVec>(in ImageCodes images, QuantizedActivations x, bool withSums, byte* packed, int s0, int s1, int firstStrip = 0)
        where TW : IIntGemmWidth<TVec> where TVec : struct
    {
        int k = x.Cols, depth = TW.Depth, width = 2 * TW.Lanes, groups = (k + depth - 1) / depth;
        int rowsPerImage = images.Grid.RowsPerImage;
        byte* zeros = stackalloc byte[width];
        new Span<byte>(zeros, width).Clear();
        int* sums = stackalloc int[width];
        byte** rows = stackalloc byte*[depth];
        for (int s = s0; s < s1; s++)
        {
            int row0 = s * width, image = row0 / rowsPerImage;
            byte* origin = images.Codes + image * images.ImageBytes + (row0 - image * rowsPerImage);
            int* lanes = (int*)(packed + (nint)(s - firstStrip) * groups * width * 4);
            new Span<int>(sums, width).Clear();
            for (int g = 0; g < groups; g++)
            {
                for (int d = 0, kk = g * depth; d < depth; d++, kk++) rows[d] = kk < k ? origin + images.Offsets[kk] : zeros;
                Interleave(rows, depth, width, lanes + (nint)g * width, withSums ? sums : null);
            }
            if (withSums) new ReadOnlySpan<int>(sums, width).CopyTo(x.Sums.AsSpan(row0, width));
        }
    }

    /// <summary>
    /// <c>lanes[l] = rows[0][l] | rows[1][l] &lt;&lt; 8 | rows[2][l] &lt;&lt; 16 | rows[3][l] &lt;&lt; 24</c> for depth 4
    /// (<c>rows[0][l] | rows[1][l] &lt;&lt; 16</c> for depth 2) over <paramref name="width"/> lanes; adds each lane's
    /// codes to <paramref name="sums"/> unless it is null.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Interleave(byte** rows, int depth, int width, int* lanes, int* sums)
    {
        int shift = 32 / depth, l = 0;
        if (Simd.Use512 && Avx512F.IsSupported)
        {
            for (; l + 16 <= width; l += 16)
            {
                var value = Vector512<uint>.Zero;
                var sum = Vector512<uint>.Zero;
                for (int d = 0; d < depth; d++)
                {
                    var codes = Avx512F.ConvertToVector512UInt32(Vector128.Load(rows[d] + l));
                    value |= codes << (d * shift);
                    if (sums != null) sum += codes;
                }
                value.Store((uint*)lanes + l);
                if (sums != null) (sum + Vector512.Load((uint*)sums + l)).Store((uint*)sums + l);
            }
        }
        else if (Simd.Use256 && Avx2.IsSupported)
        {
            for (; l + 8 <= width; l += 8)
            {
                var value = Vector256<int>.Zero;
                var sum = Vector256<int>.Zero;
                for (int d = 0; d < depth; d++)
                {
                    var codes = Avx2.ConvertToVector256Int32(rows[d] + l);
                    value |= codes << (d * shift);
                    if (sums != null) sum += codes;
                }
                value.Store(lanes + l);
                if (sums != null) (sum + Vector256.Load(sums + l)).Store(sums + l);
            }
        }
        for (; l < width; l++)
        {
            int value = 0, sum = 0;
            for (int d = 0; d < depth; d++)
            {
                int code = rows[d][l];
                value |= code << (d * shift);
                sum += code;
            }
            lanes[l] = value;
            if (sums != null) sums[l] += sum;
        }
    }

    /// <summary>The last, partial group of a row of codes: elements <c>[start, k)</c>, zero-padded (bytes, or int16 when the depth is 2).</summary>
    private static int LastGroup(byte* src, int start, int k, int depth)
    {
        int v = 0, bits = 32 / depth;
        for (int d = 0; start + d < k; d++) v |= src[start + d] << (bits * d);
        return v;
    }

    /// <summary>
    /// Strips per pass of a work item whose reduction is one block (<see cref="BlockGroups"/>): their int32 sums (4 x 32
    /// lanes x 36 weight rows, 18 KiB) are cleared, accumulated and read by the epilogue while in L1. Over the item's
    /// whole run of strips they were cleared, accumulated and read from L2 or memory: the clearing alone took a tenth of
    /// the stride-2 stem's W8A8 samples at batch 1 (docs/BENCHMARKS.md, stop 19).
    /// </summary>
    private const int PassStrips = 4;

    /// <summary>
    /// One work item: weight rows <c>[n0, n0 + rows)</c> (at most <see cref="ItemRows"/>) against the activation rows of
    /// <paramref name="block"/>; <paramref name="scratch"/> holds <c>rows</c> rounded up to whole tiles x (tile stride + the
    /// block's lanes + 1) int32 values. A reduction of one block runs in passes of <see cref="PassStrips"/> strips, its
    /// weights copied once; a longer one in one pass over all strips per block of the reduction.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Item<TW, TVec>(in WeightView w, QuantizedActivations x, Block block, byte* scratch, float* bias, float* y, nint ldy, in ImageCodes images, int n0, int rows)
        where TW : IIntGemmWidth<TVec> where TVec : struct
    {
        int k = w.Cols, depth = TW.Depth, width = 2 * TW.Lanes, groups = block.Groups;
        int tiles = (rows + TileRows - 1) / TileRows, tileRows = tiles * TileRows;
        const int TileStride = BlockGroups * 4;            // bytes per tile row
        byte* tile = scratch;                              // [tileRows][TileStride] weights, copied or widened
        int* yt = (int*)(tile + tileRows * TileStride);    // [tileRows][ldt] int32 sums, ldt = the pass's lanes
        int* rowSums = yt + tileRows * block.Strips * width; // [tileRows] weight sums
        new Span<int>(rowSums, tileRows).Clear();
        // Rows past the last weight row stay zero: the micro-kernel always runs whole tiles.
        new Span<byte>(tile + rows * TileStride, (tiles * TileRows - rows) * TileStride).Clear();
        double* scales = stackalloc double[ItemRows], zeroPoints = stackalloc double[ItemRows], sums = stackalloc double[ItemRows];
        float* biases = stackalloc float[ItemRows];
        int passStrips = groups <= BlockGroups ? Math.Min(PassStrips, block.Strips) : block.Strips;
        for (int p0 = 0; p0 < block.Strips; p0 += passStrips)
        {
            int p1 = Math.Min(block.Strips, p0 + passStrips), ldt = (p1 - p0) * width;
            // Strips packed for this pass (from its first: s - p0), or the block's (from the block's first: s).
            byte* strips = block.Data;
            if (block.PassBuffer != null)
            {
                int first = block.Row0 / width + p0;
                PackImages<TW, TVec>(images, x, block.WithSums, block.PassBuffer, first, first + p1 - p0, first);
                strips = block.PassBuffer - (nint)p0 * groups * width * 4;
            }
            new Span<int>(yt, tileRows * ldt).Clear();
            for (int g0 = 0; g0 < groups; g0 += BlockGroups)
            {
                int g1 = Math.Min(groups, g0 + BlockGroups);
                if (p0 == 0)
                {
                    for (int r = 0; r < rows; r++)
                        rowSums[r] += CopySlice(w.Data + (nint)(n0 + r) * k, g0 * depth, Math.Min(k, g1 * depth), tile + r * TileStride, depth == 2);
                }
                // The next block's weights are fetched a few lines per strip, while this block computes.
                int nextBytes = Math.Min(k, (g1 + BlockGroups) * depth) - g1 * depth;
                int linesPerRow = (nextBytes + 63) / 64, lines = rows * linesPerRow;
                for (int s = p0; s < p1; s++)
                {
                    if (Sse.IsSupported)
                    {
                        for (int l = s * lines / block.Strips, l1 = (s + 1) * lines / block.Strips; l < l1; l++)
                            Sse.Prefetch0(w.Data + (nint)(n0 + l / linesPerRow) * k + g1 * depth + l % linesPerRow * 64);
                    }
                    byte* b = strips + ((nint)s * groups + g0) * width * 4;
                    for (int t = 0; t < tiles; t++)
                    {
                        byte* a = tile + t * TileRows * TileStride;
                        int* c = yt + t * TileRows * ldt + (s - p0) * width;
                        if (typeof(TW) == typeof(GemmVnni512) && UseNative)
                            Vnni512Kernel.Micro(a, TileStride, b, g1 - g0, c, ldt * 4);
                        else
                            MicroKernel.Run<TW, TVec, int, Six>((int*)a, TileStride / 4, (int*)b, g1 - g0, c, ldt);
                    }
                }
            }
            if (p0 == 0)
            {
                // The weight rows' epilogue operands, once their sums are known.
                for (int r = 0; r < rows; r++)
                {
                    (float scale, int zeroPoint) = w.Params(n0 + r, 0);
                    (scales[r], zeroPoints[r], sums[r]) = (scale, zeroPoint, rowSums[r]);
                    biases[r] = bias == null ? 0f : bias[n0 + r];
                }
            }
            int m0 = block.Row0 + p0 * width, m1 = Math.Min(x.Rows, block.Row0 + p1 * width);
            if (m0 < m1) Epilogue(x, new EpilogueRows(n0, rows, k, scales, zeroPoints, sums, biases), yt, ldt, m0, m1, y, ldy, images);
        }
    }

    /// <summary>
    /// <c>y[i, n] = (float)(xScale[i] * wScale[n] * exact) + bias[n]</c> for activation rows <c>[m0, m1)</c> and the
    /// weight rows of <paramref name="w"/> (from <c>n0</c>), with <c>exact = dot - xZero * rowSum - wZero * xSum + K * xZero * wZero</c>: the
    /// arithmetic of <see cref="IntegerMatMul.Reference"/>. The vector widths compute the same value in float64 (every
    /// term is an integer below 2^53, so exact) and round the same way (<see cref="EpilogueBlocks"/>).
    /// </summary>
    /// <remarks>
    /// For a convolution (<paramref name="images"/>) the output is channel-major, <c>[image, ldy, P]</c> with
    /// <paramref name="ldy"/> the weight's rows: <see cref="ChannelMajorEpilogue"/>.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Epilogue(QuantizedActivations x, in EpilogueRows w, int* yt, int ldt, int m0, int m1, float* y, nint ldy, in ImageCodes images)
    {
        // A convolution's output is channel-major, [image, N, P]; other products' row-major, [M, ldy].
        if (images.Grid.ChannelMajor)
        {
            ChannelMajorEpilogue(x, w, yt, ldt, m0, m1, y + w.N0 * (nint)images.Grid.Positions, ldy, images);
            return;
        }
        int k = w.K, rows = w.Count;
        fixed (float* xScales = x.Scales)
        fixed (int* xZeros = x.ZeroPoints, xSums = x.Sums)
        {
            var activations = new EpilogueActivations(k, xScales, xZeros, xSums);
            int i = m0;
            if (Epilogue512.IsSupported) i = EpilogueBlocks<Epilogue512, Vector512<double>>(activations, w, yt, ldt, m0, m1, y + w.N0, ldy);
            else if (Epilogue256.IsSupported) i = EpilogueBlocks<Epilogue256, Vector256<double>>(activations, w, yt, ldt, m0, m1, y + w.N0, ldy);
            // The activation rows left (fewer than a block, or all without AVX): output by output, y^T read across.
            for (; i < m1; i++)
            {
                int xz = xZeros[i], xSum = xSums[i];
                float xs = xScales[i];
                float* dst = y + i * ldy + w.N0;
                int* column = yt + (i - m0);
                for (int r = 0; r < rows; r++, column += ldt)
                {
                    long wz = (long)w.ZeroPoints[r];
                    long exact = *column - (long)xz * (long)w.Sums[r] - wz * xSum + (long)k * xz * wz;
                    dst[r] = (float)((double)xs * w.Scales[r] * exact) + w.Biases[r];
                }
            }
        }
    }

    /// <summary>
    /// The epilogue of a convolution (<paramref name="images"/>): its activation rows share one static quantization
    /// (<see cref="ImageCodes.Scale"/>, <see cref="ImageCodes.ZeroPoint"/>; <paramref name="x"/> holds their code sums), and <c>y^T</c>'s rows are already runs of output
    /// positions, so each value is computed along them with <see cref="Epilogue"/>'s arithmetic and stored with the bias
    /// straight into the channel-major output, <c>y[image * ldy + r, p]</c> (<paramref name="ldy"/> the weight's rows,
    /// <paramref name="y"/> at the item's first weight row). Activation rows that are no output position (the wide
    /// grid's dropped columns, the rows that round an image up to whole strips) are skipped.
    /// </summary>
    private static void ChannelMajorEpilogue(QuantizedActivations x, in EpilogueRows w, int* yt, int ldt, int m0, int m1, float* y, nint ldy, in ImageCodes images)
    {
        var grid = images.Grid;
        int k = w.K, positions = grid.Positions, xz = images.ZeroPoint, rows = w.Count;
        double xs = images.Scale;
        // Per weight row, once per call: exact = dot - offset - wz * xSum, offset = xz * rowSum - K * xz * wz (integers
        // below 2^53: exact in float64), and the product of the scales.
        double* products = stackalloc double[rows], offsets = stackalloc double[rows];
        for (int r = 0; r < rows; r++)
        {
            products[r] = xs * w.Scales[r];
            offsets[r] = xz * w.Sums[r] - (double)k * xz * w.ZeroPoints[r];
        }
        fixed (int* xSums = x.Sums)
        {
            if (Epilogue512.IsSupported && m0 % 16 == 0 && (m1 - m0) % 16 == 0)
            {
                ChannelMajorChunks(grid, xSums, w, products, offsets, yt, ldt, m0, m1, y, ldy);
                return;
            }
            float* tail = stackalloc float[8];
            for (int i = m0; i < m1;)
            {
                int image = i / grid.RowsPerImage, q = i - image * grid.RowsPerImage, oh = q / grid.RowLength, ow = q - oh * grid.RowLength;
                // The next output row, or the next image (the rows that round an image up to whole strips are no output row).
                int next = Math.Min(Math.Min(m1, (image + 1) * grid.RowsPerImage), i + grid.RowLength - ow);
                if (oh >= grid.OutH || ow >= grid.OutW)
                {
                    i = next;
                    continue;
                }
                int run = Math.Min(grid.OutW - ow, m1 - i), p = oh * grid.OutW + ow;
                int* dots = yt + (i - m0);
                float* dst = y + (nint)image * ldy * positions + p;
                // The last partial vector reads past the run: in y^T's scratch (the next row, or the weight sums after
                // the last), and, with a weight zero point, in the code sums while they last.
                bool sumsAhead = i + run + 8 <= x.Rows;
                for (int r = 0; r < rows; r++, dots += ldt, dst += positions)
                {
                    double product = products[r], offset = offsets[r], wz = w.ZeroPoints[r];
                    float b = w.Biases[r];
                    float* readAhead = wz == 0 || sumsAhead ? tail : null;
                    int j = 0;
                    if (Epilogue512.IsSupported)
                        j = ChannelMajorRun<Epilogue512, Vector512<double>>(dots, xSums + i, run, product, offset, wz, b, dst, readAhead);
                    else if (Epilogue256.IsSupported)
                        j = ChannelMajorRun<Epilogue256, Vector256<double>>(dots, xSums + i, run, product, offset, wz, b, dst, readAhead);
                    for (; j < run; j++) dst[j] = (float)(product * (dots[j] - offset - wz * xSums[i + j])) + b;
                }
                i = next;
            }
        }
    }

    /// <summary>
    /// <see cref="ChannelMajorEpilogue"/> at 512 bits, in chunks of 16 activation rows (<paramref name="m1"/> -
    /// <paramref name="m0"/> a multiple of 16; an image's rows are whole strips, so a chunk never crosses images): each
    /// chunk's output positions (its lanes that are no dropped column or rounding row) are consecutive positions of one
    /// image, so for every weight row the chunk's 16 values are computed in two float64 vectors, rounded to float32,
    /// compressed to the valid lanes (<c>vcompressps</c>) and stored as one run under a mask. Per output row and weight
    /// row, the run by run loop spent a vector and a masked partial one on MNIST conv2's 11-value rows, plus the run's
    /// set-up (docs/BENCHMARKS.md, stop 33).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ChannelMajorChunks(OutputGrid grid, int* xSums, in EpilogueRows w, double* products, double* offsets, int* yt, int ldt, int m0, int m1, float* y, nint ldy)
    {
        int rows = w.Count, positions = grid.Positions;
        bool weightZeros = false;
        for (int r = 0; r < rows; r++) weightZeros |= w.ZeroPoints[r] != 0;
        var lanes = Vector512.Create(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768);
        var iota = Vector512.Create(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (int c = m0; c < m1; c += 16)
        {
            // The chunk's valid lanes and its first output position.
            int image = c / grid.RowsPerImage, q = c - image * grid.RowsPerImage, oh = q / grid.RowLength, ow = q - oh * grid.RowLength;
            int bits = 0, first = -1;
            for (int l = 0; l < 16; l++)
            {
                if (oh < grid.OutH && ow < grid.OutW)
                {
                    bits |= 1 << l;
                    if (first < 0) first = oh * grid.OutW + ow;
                }
                if (++ow == grid.RowLength) (ow, oh) = (0, oh + 1);
            }
            if (bits == 0) continue;
            var valid = Vector512.Equals(Vector512.Create(bits) & lanes, lanes).AsSingle();
            var run = Vector512.LessThan(iota, Vector512.Create(BitOperations.PopCount((uint)bits))).AsSingle();
            float* dst = y + (nint)image * ldy * positions + first;
            int* dots = yt + (c - m0);
            Vector512<double> sumsLow = default, sumsHigh = default;
            if (weightZeros)
            {
                sumsLow = Epilogue512.LoadInt32(xSums + c);
                sumsHigh = Epilogue512.LoadInt32(xSums + c + 8);
            }
            for (int r = 0; r < rows; r++, dots += ldt, dst += positions)
            {
                var offset = Vector512.Create(offsets[r]);
                var low = Epilogue512.LoadInt32(dots) - offset;
                var high = Epilogue512.LoadInt32(dots + 8) - offset;
                if (weightZeros)
                {
                    var zero = Vector512.Create(w.ZeroPoints[r]);
                    low -= zero * sumsLow;
                    high -= zero * sumsHigh;
                }
                var product = Vector512.Create(products[r]);
                var values = Vector512.Create(Avx512F.ConvertToVector256Single(product * low), Avx512F.ConvertToVector256Single(product * high)) + Vector512.Create(w.Biases[r]);
                Avx512F.MaskStore(dst, run, Avx512F.Compress(Vector512<float>.Zero, valid, values));
            }
        }
    }

    /// <summary>
    /// <c>dst[j] = (float)(product * (dots[j] - offset - weightZero * sums[j])) + bias</c> for whole vectors of
    /// <paramref name="run"/> (every term an integer below 2^53, so exact in float64), and, given a
    /// <paramref name="tail"/> buffer (the operands readable a vector past the run), the last partial one: stored under a
    /// mask with AVX-512, else through the buffer; returns the first j not done. (Copied out of the buffer, the tails
    /// of the stem's runs, about 58 values long between output rows and passes, were a call to a copy routine each.)
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int ChannelMajorRun<TE, TVec>(int* dots, int* sums, int run, double product, double offset, double weightZero, float bias, float* dst, float* tail)
        where TE : IEpilogueWidth<TVec> where TVec : struct
    {
        TVec vProduct = TE.Create(product), vOffset = TE.Create(offset), vZero = TE.Create(weightZero);
        int j = 0;
        for (; j + TE.Count <= run; j += TE.Count)
        {
            TVec exact = TE.Subtract(TE.LoadInt32(dots + j), vOffset);
            if (weightZero != 0) exact = TE.Subtract(exact, TE.Multiply(vZero, TE.LoadInt32(sums + j)));
            TE.StoreSingle(TE.Multiply(vProduct, exact), bias, dst + j);
        }
        if (j == run || tail == null) return j;
        // The last partial vector, as above: under a mask where the width has one, else through the buffer.
        TVec rest = TE.Subtract(TE.LoadInt32(dots + j), vOffset);
        if (weightZero != 0) rest = TE.Subtract(rest, TE.Multiply(vZero, TE.LoadInt32(sums + j)));
        var last = TE.Multiply(vProduct, rest);
        if (TE.StoreSingle(last, bias, dst + j, run - j)) return run;
        TE.StoreSingle(last, bias, tail);
        new ReadOnlySpan<float>(tail, run - j).CopyTo(new Span<float>(dst + j, run - j));
        return run;
    }

    /// <summary>
    /// Activation rows from <paramref name="m0"/> in blocks of eight, while whole blocks remain; returns the first row
    /// not done. For each block, every weight row's eight outputs are computed along its row of <c>y^T</c> (contiguous
    /// sums, the activation terms in vectors) and written back over their sums as floats; then 8 x 8 transposes move
    /// them into the output rows, adding the bias (weight rows past the last multiple of eight one by one). Computing
    /// down a column of <c>y^T</c> instead (one gather per output, rows <paramref name="ldt"/> apart) took a third of a
    /// 384x384 dynamic W8A8 call at 256 rows. <c>exact = dot - xZero * rowSum - wZero * (xSum - K * xZero)</c> in
    /// float64 is the reference's int64 value (every term is an integer below 2^53); then <c>(xScale * wScale) * exact</c>
    /// and the float32 rounding, as the reference.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int EpilogueBlocks<TE, TVec>(in EpilogueActivations a, in EpilogueRows w, int* yt, int ldt, int m0, int m1, float* y, nint ldy)
        where TE : IEpilogueWidth<TVec> where TVec : struct
    {
        int i0 = m0;
        for (; i0 + 8 <= m1; i0 += 8)
        {
            for (int h = 0; h < 8; h += TE.Count)
            {
                TVec xs = TE.LoadSingle(a.Scales + i0 + h), xz = TE.LoadInt32(a.ZeroPoints + i0 + h);
                TVec correction = TE.Subtract(TE.LoadInt32(a.Sums + i0 + h), TE.Multiply(TE.Create(a.K), xz));
                int* dots = yt + (i0 - m0) + h;
                for (int r = 0; r < w.Count; r++, dots += ldt)
                {
                    TVec exact = TE.Subtract(TE.Subtract(TE.LoadInt32(dots), TE.Multiply(xz, TE.Create(w.Sums[r]))), TE.Multiply(TE.Create(w.ZeroPoints[r]), correction));
                    TE.StoreSingle(TE.Multiply(TE.Multiply(xs, TE.Create(w.Scales[r])), exact), (float*)dots);
                }
            }
            float* t = (float*)yt + (i0 - m0), dst = y + i0 * ldy;
            int r0 = 0;
            for (; r0 + 8 <= w.Count; r0 += 8) Transposes.Transpose8x8(t + r0 * ldt, ldt, dst + r0, ldy, add: true, Vector256.Load(w.Biases + r0));
            for (; r0 < w.Count; r0++)
                for (int c = 0; c < 8; c++) dst[c * ldy + r0] = t[r0 * ldt + c] + w.Biases[r0];
        }
        return i0;
    }

    /// <summary>
    /// The epilogue's operands per weight row of an item (weight rows <c>[N0, N0 + Count)</c> of a weight of
    /// <see cref="K"/> columns): scale, zero point and row sum in float64, the bias in float32 (zero without a bias).
    /// </summary>
    private readonly struct EpilogueRows(int n0, int count, int k, double* scales, double* zeroPoints, double* sums, float* biases)
    {
        public int N0 { get; } = n0;
        public int Count { get; } = count;
        public int K { get; } = k;
        public double* Scales { get; } = scales;
        public double* ZeroPoints { get; } = zeroPoints;
        public double* Sums { get; } = sums;
        public float* Biases { get; } = biases;
    }

    /// <summary>The epilogue's operands per activation row (scale, zero point, code sum) and the reduction length.</summary>
    private readonly struct EpilogueActivations(int k, float* scales, int* zeroPoints, int* sums)
    {
        public int K { get; } = k;
        public float* Scales { get; } = scales;
        public int* ZeroPoints { get; } = zeroPoints;
        public int* Sums { get; } = sums;
    }

    /// <summary>
    /// Copies int8 weights <c>[k0, k1)</c> of one row to <paramref name="dst"/> (as bytes, or as int16 when
    /// <paramref name="wide"/>), zero-padded to a whole group; returns their sum.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int CopySlice(byte* row, int k0, int k1, byte* dst, bool wide)
    {
        var src = (sbyte*)row + k0;
        int n = k1 - k0, i = 0, sum = 0;
        if (Simd.Use256)
        {
            var acc = Vector256<int>.Zero;
            for (; i + 32 <= n; i += 32)
            {
                var v = Vector256.Load(src + i);
                var (lo, hi) = Vector256.Widen(v);
                if (wide)
                {
                    lo.Store((short*)dst + i);
                    hi.Store((short*)dst + i + 16);
                }
                else
                {
                    v.Store((sbyte*)dst + i);
                }
                var (a, b) = Vector256.Widen(lo + hi);
                acc += a + b;
            }
            sum = Vector256.Sum(acc);
        }
        for (; i < n; i++)
        {
            if (wide) ((short*)dst)[i] = src[i];
            else ((sbyte*)dst)[i] = src[i];
            sum += src[i];
        }
        for (int group = wide ? 2 : 4; i % group != 0; i++)
        {
            if (wide) ((short*)dst)[i] = 0;
            else dst[i] = 0;
        }
        return sum;
    }
}
