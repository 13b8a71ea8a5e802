using System.Runtime.Intrinsics;
using QuantSharp.Kernels;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// Every path of <see cref="QuantizedMatMul"/> (scalar, 128, 256, 512 bits, whichever this CPU runs; CI re-runs with
/// AVX-512, AVX2 and all intrinsics turned off), each with both loop structures (the row kernels and the packed GEMM of
/// <see cref="PackedMatMul"/>), against the float64 specification <see cref="QuantizedMatMul.Reference"/>,
/// for every weight format, on shapes that exercise every tail: reduction lengths 1..70 and around 128/256, groups
/// with remainders and odd group counts, 1..65 activation rows, strided (non-contiguous) inputs and outputs.
/// </summary>
/// <remarks>
/// Tolerance: the kernels dequantize with one multiply-add and sum in float32 in a different order, so each output may
/// differ from the float64 sum by at most <c>RelativeTolerance * sum_k |x_k * w_k|</c> (float32 epsilon times the
/// longest run of additions in these shapes, with margin).
/// </remarks>
public unsafe class QuantizedMatMulTests
{
    private const double RelativeTolerance = 2e-5;

    public static IEnumerable<object[]> Formats() =>
        Enum.GetNames<WeightFormat>().Select(f => new object[] { f });

    private static IEnumerable<int> ReductionLengths(WeightFormat format) =>
        Enumerable.Range(1, 70).Concat([127, 128, 129, 255, 256, 257])
            .Where(k => !WeightView.IsPacked(format) || k % 2 == 0);

    /// <summary>
    /// The three ways the packed GEMM packs and splits a call (<see cref="PackedMatMul.ChooseLayout"/>: shared packing,
    /// per-item packing, position-major) give the same bits, each within the specification's tolerance, on shapes where
    /// the rule picks each of them: few and many weight rows (beyond the per-item limit), one and several strips.
    /// </summary>
    [Theory]
    [InlineData("Int8", 64, 70, 65)]
    [InlineData("Int4", 61, 64, 40)]
    [InlineData("Float16", 100, 36, 24)]
    [InlineData("UInt8", 1250, 20, 40)]
    [InlineData("Int4", 1250, 32, 70)]
    public void EveryPackedLayoutGivesTheSameBits(string formatName, int rows, int cols, int batch)
    {
        var format = Enum.Parse<WeightFormat>(formatName);
        using var w = new PinnedWeight(format, rows, cols, format is WeightFormat.Int4 ? 16 : cols, zeroPoints: format == WeightFormat.UInt8, seed: rows + cols);
        var view = w.View;
        float[] x = KernelTestData.Activations(batch * cols, 5);
        float[] b = KernelTestData.Activations(rows, 6);
        float[]? first = null;
        try
        {
            foreach (var layout in Enum.GetValues<PackedLayout>())
            {
                PackedMatMul.ForcedLayout = layout;
                var y = new float[batch * rows];
                fixed (float* px = x) fixed (float* pb = b) fixed (float* py = y)
                    QuantizedMatMul.Run(view, px, batch, cols, pb, py, rows, KernelPath.Auto, MatMulMethod.Packed);
                if (first is null) first = y;
                else Assert.True(first.AsSpan().SequenceEqual(y), $"{layout} differs from {PackedLayout.Shared} ({format} [{rows}x{cols}] batch {batch})");
                CheckAllPaths(w, batch, seed: 7, xPad: 3, yPad: 2, bias: true);
            }
        }
        finally
        {
            PackedMatMul.ForcedLayout = null;
        }
    }

    /// <summary>
    /// The packed GEMM from 24 activation rows, and from 12 for weights below 2^20 elements of more than 16 rows (of at
    /// most 16 rows: from 24, or 64 for rows of 512 elements or more); below, the dot tiles from 5
    /// rows for small 4-bit weights in groups of at most 64, from 6 rows for other small float16 weights, from 3 rows for
    /// small 4-bit and half-precision weights of at most 64 rows, else the row kernels (int8 always); small 4-bit weights
    /// in groups of at most 64 and small float16 weights keep the dot tiles up to 23 rows at 512 bits.
    /// </summary>
    [Theory]
    [InlineData(1, 64, 800, "Int8", 800, "Rows")]
    [InlineData(11, 64, 800, "Int8", 800, "Rows")]
    [InlineData(12, 64, 800, "Int8", 800, "Packed")]
    [InlineData(12, 1024, 1024, "Int8", 1024, "Rows")]
    [InlineData(23, 1024, 1024, "Int8", 1024, "Rows")]
    [InlineData(24, 1024, 1024, "Int8", 1024, "Packed")]
    [InlineData(16, 1023, 1024, "Int8", 1024, "Packed")]
    [InlineData(24, 4096, 4096, "Int8", 4096, "Packed")]
    [InlineData(2, 64, 800, "Int4", 32, "Rows")]
    [InlineData(3, 64, 800, "Int4", 32, "DotTiles")]
    [InlineData(4, 384, 384, "Int4", 32, "Rows")]
    [InlineData(3, 64, 800, "BFloat16", 800, "DotTiles")]
    [InlineData(5, 64, 800, "Int4", 32, "DotTiles")]
    [InlineData(11, 384, 1536, "UInt4", 64, "DotTiles")]
    [InlineData(12, 384, 1536, "Int4", 32, "DotTiles")]
    [InlineData(23, 384, 1536, "Int4", 32, "DotTiles")]
    [InlineData(24, 384, 1536, "Int4", 32, "Packed")]
    [InlineData(12, 384, 1536, "Int4", 128, "Packed")]
    [InlineData(16, 64, 800, "Float16", 800, "DotTiles")]
    [InlineData(16, 64, 800, "BFloat16", 800, "Packed")]
    [InlineData(23, 384, 384, "Float16", 384, "DotTiles")]
    [InlineData(12, 384, 384, "BFloat16", 384, "Packed")]
    [InlineData(8, 384, 1536, "Int4", 128, "Rows")]
    [InlineData(8, 64, 768, "Int4", 128, "DotTiles")]
    [InlineData(8, 1024, 1024, "Int4", 32, "Rows")]
    [InlineData(5, 384, 384, "Float16", 384, "Rows")]
    [InlineData(6, 384, 384, "Float16", 384, "DotTiles")]
    [InlineData(11, 1536, 384, "Float16", 384, "DotTiles")]
    [InlineData(8, 384, 384, "BFloat16", 384, "Rows")]
    [InlineData(5, 64, 800, "BFloat16", 800, "DotTiles")]
    [InlineData(5, 64, 800, "Float16", 800, "DotTiles")]
    [InlineData(8, 64, 800, "UInt8", 800, "Rows")]
    [InlineData(8, 2048, 2048, "Float16", 2048, "Rows")]
    [InlineData(12, 17, 512, "Int8", 512, "Packed")]
    [InlineData(12, 16, 128, "Int8", 128, "Rows")]
    [InlineData(23, 16, 128, "Int4", 32, "DotTiles")]
    [InlineData(24, 16, 128, "Int8", 128, "Packed")]
    [InlineData(24, 16, 512, "Int8", 512, "Rows")]
    [InlineData(63, 8, 1024, "Float16", 1024, "DotTiles")]
    [InlineData(64, 16, 512, "Int4", 32, "Packed")]
    public void MethodByRowsAndWeight(int m, int rows, int cols, string format, int groupSize, string expected)
    {
        Assert.Equal(Enum.Parse<MatMulMethod>(expected), QuantizedMatMul.ChooseMethod(m, rows, cols, Enum.Parse<WeightFormat>(format), groupSize));
    }

    /// <summary>
    /// On the 256-bit path (no AVX-512) weights of more than 64 rows take the packed GEMM from 8 activation rows, large
    /// weights (2^20 elements or more) from 12; weights of at most 64 rows and the other widths keep their rules.
    /// </summary>
    [Theory]
    [InlineData(7, 1024, 1024, "Int4", 32, "V256", "Rows")]
    [InlineData(8, 1024, 1024, "Int4", 32, "V256", "Rows")]
    [InlineData(12, 1024, 1024, "Int4", 32, "V256", "Packed")]
    [InlineData(8, 1024, 1000, "Int4", 40, "V256", "Packed")]
    [InlineData(8, 1024, 1024, "Int4", 32, "V512", "Rows")]
    [InlineData(8, 4096, 4096, "Int8", 4096, "V256", "Rows")]
    [InlineData(11, 4096, 4096, "BFloat16", 4096, "V256", "Rows")]
    [InlineData(12, 4096, 4096, "Int8", 4096, "V256", "Packed")]
    [InlineData(11, 1024, 1024, "Float16", 1024, "V256", "Rows")]
    [InlineData(12, 1024, 1024, "UInt8", 1024, "V256", "Packed")]
    [InlineData(8, 4096, 4096, "Int4", 128, "V256", "Rows")]
    [InlineData(12, 4096, 4096, "UInt4", 128, "V256", "Packed")]
    [InlineData(8, 1536, 384, "Int8", 384, "V256", "Packed")]
    [InlineData(8, 4096, 4096, "Int8", 4096, "V128", "Rows")]
    [InlineData(8, 384, 1536, "Float16", 1536, "V256", "Packed")]
    [InlineData(7, 384, 1536, "Float16", 1536, "V256", "DotTiles")]
    [InlineData(8, 65, 512, "Int8", 512, "V256", "Packed")]
    [InlineData(8, 64, 512, "Int8", 512, "V256", "Rows")]
    [InlineData(8, 64, 800, "Float16", 800, "V256", "DotTiles")]
    [InlineData(12, 16, 128, "Int8", 128, "V256", "Rows")]
    [InlineData(23, 16, 128, "Int4", 32, "V256", "DotTiles")]
    [InlineData(12, 64, 800, "Int4", 32, "V256", "Packed")]
    [InlineData(12, 64, 800, "Int4", 32, "V512", "DotTiles")]
    public void MethodByRowsWeightAndWidth(int m, int rows, int cols, string format, int groupSize, string path, string expected)
    {
        Assert.Equal(Enum.Parse<MatMulMethod>(expected), QuantizedMatMul.ChooseMethod(m, rows, cols, Enum.Parse<WeightFormat>(format), groupSize, Enum.Parse<KernelPath>(path)));
    }

    /// <summary>Dot-tile items: multiples of four weight rows, at most 32, two items per thread where the weight has the rows.</summary>
    [Theory]
    [InlineData(64, 2, 16)]
    [InlineData(64, 1, 32)]
    [InlineData(10, 2, 4)]
    [InlineData(3, 2, 4)]
    [InlineData(1000, 2, 32)]
    [InlineData(36, 2, 12)]
    public void DotTileItemRows(int weightRows, int threads, int expected)
    {
        Assert.Equal(expected, DotTileMatMul.ItemRows(weightRows, threads));
    }

    /// <summary>
    /// The automatic path narrows the vectors until a chunk (two vectors) fits in a group, so that groups shorter than
    /// a 512-bit chunk are not decoded element by element; one group per row keeps the widest path.
    /// </summary>
    [Theory]
    [InlineData(32, 160, "V512")]
    [InlineData(16, 144, "V256")]
    [InlineData(8, 144, "V128")]
    [InlineData(4, 144, "Scalar")]
    [InlineData(144, 144, "V512")]
    [InlineData(12, 12, "V512")]
    public void NarrowerVectorsForGroupsShorterThanAChunk(int groupSize, int cols, string expected)
    {
        using var w = new PinnedWeight(WeightFormat.Int4, 8, cols, groupSize, zeroPoints: false, seed: 1);
        Assert.Equal(Enum.Parse<KernelPath>(expected), QuantizedMatMul.WidthForGroups(KernelPath.V512, w.View));
        // Never wider than the widest the CPU (or the caller) allows.
        Assert.Equal(groupSize < 8 && groupSize < cols ? KernelPath.Scalar : KernelPath.V128, QuantizedMatMul.WidthForGroups(KernelPath.V128, w.View));
    }

    /// <summary>
    /// Batch 1 on 4-bit weights takes a nibble-step kernel (eight nibbles per lane) where the groups hold whole steps or
    /// a step holds whole groups of whole lanes and the reduction is whole steps; then it does not narrow for groups
    /// of 16 at 512 bits (it runs there with two lanes per group). 8-bit and half weights never take one.
    /// </summary>
    [Theory]
    [InlineData("Int4", 16, 256, 16, true, true)]    // 512 bits: 2 lanes per group, 2 steps
    [InlineData("Int4", 16, 192, 16, false, false)]  // 192 is not whole 128-element steps
    [InlineData("UInt4", 16, 192, 8, true, true)]    // at 256 bits it is (3 steps of 64)
    [InlineData("Int4", 32, 4096, 16, true, true)]
    [InlineData("Int4", 64, 4096, 16, true, true)]
    [InlineData("Int4", 128, 4096, 16, true, false)] // whole steps: the lookup kernel
    [InlineData("Int4", 24, 96, 4, false, false)]    // 24 elements are not whole lanes of a 32-element step
    [InlineData("Int4", 4, 256, 16, false, false)]   // half a lane
    [InlineData("Int8", 32, 4096, 16, false, false)]
    public void BatchOneNibbleStepKernels(string formatName, int groupSize, int cols, int lanes, bool takes, bool shortGroups)
    {
        using var w = new PinnedWeight(Enum.Parse<WeightFormat>(formatName), 4, cols, groupSize, zeroPoints: false, seed: 1);
        Assert.Equal(takes, QuantizedMatMul.TakesNibbleSteps(lanes, w.View, out bool isShort));
        Assert.Equal(shortGroups, isShort);
    }

    /// <summary>
    /// The row kernels' width: the widest where a nibble-step kernel runs there (batch 1; groups shorter than a step at
    /// more rows too), else narrowed for short groups.
    /// </summary>
    [Theory]
    [InlineData(16, 256, 1, "V512")]  // two lanes per group at 512 bits
    [InlineData(16, 256, 2, "V512")]  // two rows: the short-group fraction kernel, at 512 bits too
    [InlineData(16, 192, 1, "V256")]  // not whole 512-bit steps: narrowed, where 256-bit steps fit
    [InlineData(16, 192, 5, "V256")]
    [InlineData(8, 256, 1, "V512")]
    [InlineData(8, 256, 3, "V512")]
    [InlineData(8, 264, 3, "V128")]   // not whole steps at 512 or 256 bits: the generic kernels, narrowed to a chunk of 8
    [InlineData(32, 4096, 1, "V512")]
    public void BatchOneKeepsTheWidestWidthForNibbleSteps(int groupSize, int cols, int m, string expected)
    {
        using var w = new PinnedWeight(WeightFormat.Int4, 4, cols, groupSize, zeroPoints: true, seed: 1);
        Assert.Equal(Enum.Parse<KernelPath>(expected), QuantizedMatMul.RowKernelWidth(KernelPath.V512, w.View, m));
    }

    /// <summary>
    /// The weight-strip layout is chosen below 128 rows where it keeps at least as many lanes busy as strips of
    /// activation rows: 24 rows fill 24 of 32 lanes in a strip but every lane of 4 tiles of 6; 96 rows fill both ways;
    /// 64 rows fill whole strips but 64 of 66 tile rows; a weight of 10 rows fills 10 of 32 lanes; 40 rows at 256 bits
    /// (strips of 16) fill 40 of 48 lanes, against 40 of 42.
    /// </summary>
    [Theory]
    [InlineData(64, 24, 32, true)]
    [InlineData(64, 40, 32, true)]
    [InlineData(384, 96, 32, true)]
    [InlineData(384, 100, 32, true)]
    [InlineData(64, 64, 32, false)]
    [InlineData(384, 128, 32, false)]
    [InlineData(10, 24, 32, false)]
    [InlineData(384, 40, 16, true)]
    [InlineData(384, 48, 16, true)]
    [InlineData(384, 64, 16, false)]
    public void WeightStripsWhereTheyFillAtLeastAsManyLanes(int weightRows, int m, int stripWidth, bool expected)
    {
        var layout = PackedMatMul.ChooseLayout(weightRows, 800, m, stripWidth, threads: 2);
        Assert.Equal(expected, layout == PackedLayout.ByWeightStrips);
    }

    /// <summary>
    /// The micro-kernel's tiles cover any count of rows with heights of 4, 6 and (at 512 bits only) 8, padding only the
    /// last tile: an even count of four or more exactly, an odd count with one row of padding, fewer than four rows to
    /// four; a multiple of eight at 512 bits in tiles of eight. <see cref="MicroKernel.TileStarts"/> lists the same tiles.
    /// </summary>
    [Fact]
    public void MicroKernelTilesCoverEveryRowOnce()
    {
        foreach (bool wide in new[] { false, true })
            for (int rows = 1; rows <= 200; rows++)
            {
                int covered = 0, tiles = 0;
                int[] starts = MicroKernel.TileStarts(rows, wide);
                while (covered < rows)
                {
                    int h = MicroKernel.NextTile(rows - covered, wide);
                    Assert.Contains(h, wide ? new[] { 4, 6, 8 } : new[] { 4, 6 });
                    Assert.Equal(covered, starts[tiles]);
                    covered += h;
                    tiles++;
                }
                Assert.Equal(Math.Max(4, (rows + 1) / 2 * 2), covered);
                Assert.Equal(covered, MicroKernel.PaddedRows(rows, wide));
                Assert.Equal(tiles + 1, starts.Length);
                Assert.Equal(covered, starts[^1]);
                if (wide && rows % 8 == 0) Assert.Equal(rows / 8, tiles);
            }
    }

    /// <summary>
    /// The packed GEMM's work split covers every (weight row, strip) pair exactly once, with items of whole tiles no
    /// larger than <see cref="PackedMatMul.ItemRows"/>, and gives each thread two items where the call has that many
    /// (a 64-row weight over two strips was one item of 48 rows and one of 16: one thread did three quarters).
    /// </summary>
    [Theory]
    [InlineData(1, 1, 2)]
    [InlineData(64, 2, 2)]
    [InlineData(64, 1, 2)]
    [InlineData(10, 7, 4)]
    [InlineData(384, 2, 2)]
    [InlineData(4096, 16, 8)]
    [InlineData(97, 5, 3)]
    [InlineData(64, 9, 2, 2)]
    [InlineData(500, 40, 2, 3)]
    public void WorkSplitCoversEveryRowAndStripOnce(int rows, int strips, int threads, int maxGroupStrips = int.MaxValue)
    {
        var split = PackedMatMul.WorkSplit.For(rows, strips, threads, maxGroupStrips);
        Assert.InRange(split.GroupStrips, 1, maxGroupStrips);
        Assert.Equal(0, split.Rows % PackedMatMul.TileRows);
        Assert.InRange(split.Rows, PackedMatMul.TileRows, PackedMatMul.ItemRows);
        var seen = new int[rows, strips];
        for (int item = 0; item < split.Items; item++)
        {
            int n0 = split.RowStart(item), s0 = split.StripStart(item);
            Assert.True(n0 < rows && s0 < strips, $"item {item} is empty");
            for (int r = n0; r < Math.Min(rows, n0 + split.Rows); r++)
                for (int s = s0; s < Math.Min(strips, s0 + split.GroupStrips); s++) seen[r, s]++;
        }
        foreach (int count in seen) Assert.Equal(1, count);
        int possible = split.RowItems * strips;
        Assert.True(split.Items >= Math.Min(2 * threads, possible), $"{split.Items} items for {threads} threads ({possible} possible)");
    }

    /// <summary>
    /// Position-major calls with few strips per thread (<see cref="PackedMatMul.PositionSplit"/>): four strips on two
    /// threads run as two blocks of two (each item decodes its rows of the weight once); three, five and six as blocks
    /// of two with the weight in halves (one thread had two strips' work of three, three of five, or decoded the weight
    /// three times); a weight of one run of rows is not cut; many strips or images keep the largest blocks that fit
    /// with two items per thread. Every cut covers each (strip, weight row) pair once, in runs of whole 16-row steps
    /// but the last, and its busiest thread has no more work than the first rule's.
    /// </summary>
    [Theory]
    [InlineData(4, 1, 512, 2, 1, 2)]
    [InlineData(5, 1, 512, 2, 2, 2)]
    [InlineData(3, 1, 512, 2, 2, 2)]
    [InlineData(6, 1, 512, 2, 2, 2)]
    [InlineData(8, 1, 512, 2, 1, 2)]
    [InlineData(4, 1, 16, 2, 1, 2)]
    [InlineData(3, 1, 16, 2, 1, 2)]
    [InlineData(5, 1, 64, 2, 2, 2)]
    [InlineData(22, 64, 16, 8, 1, 2)]
    [InlineData(7, 1, 1250, 2, 4, 4)]
    public void PositionSplitEvensOutTheThreads(int strips, int images, int weightRows, int blockStrips, int parts, int threads)
    {
        var split = PackedMatMul.PositionSplit.For(strips, images, fits: 8, weightRows, threads);
        Assert.Equal((blockStrips, parts), (split.BlockStrips, split.Parts));
        Assert.True(split.Parts == 1 || split.PartRows % PackedMatMul.PositionSplit.PartStep == 0, $"runs of {split.PartRows} rows");
        var seen = new int[strips, weightRows];
        for (int block = 0; block < split.Blocks; block++)
            for (int part = 0; part < split.Parts; part++)
                for (int s = block * split.BlockStrips; s < Math.Min(strips, (block + 1) * split.BlockStrips); s++)
                    for (int r = part * split.PartRows; r < Math.Min(weightRows, (part + 1) * split.PartRows); r++) seen[s, r]++;
        foreach (int count in seen) Assert.Equal(1, count);
        int first = Math.Max(1, Math.Min(8, strips * images / (2 * threads)));
        var firstRule = new PackedMatMul.PositionSplit(strips, first, weightRows, weightRows);
        Assert.True(split.BusiestLoad(images, threads) <= firstRule.BusiestLoad(images, threads));
    }

    /// <summary>
    /// Blocks of a position-major call (<see cref="PackedMatMul.BlockFits"/>): as many strips as fit in
    /// <see cref="PackedMatMul.PositionBlockBytes"/>, at least one, except a convolution of one or two images, whose
    /// blocks may hold all of an image's strips (512->512 3x3 on 7x7: 4,608 terms, a strip of 32 is 590 KB by itself).
    /// </summary>
    [Theory]
    [InlineData(4608, 1, 2)] // 512->512 3x3 on 7x7, one image: both strips
    [InlineData(4608, 2, 2)]
    [InlineData(4608, 3, 1)] // three images: one strip (the bytes rule)
    [InlineData(4608, 0, 1)] // activation rows (a Linear layer): the bytes rule
    [InlineData(576, 1, 25)] // 64->128 3x3 stride 2 on 56x56 (784 positions): all 25 strips
    [InlineData(576, 8, 3)] // 256 KiB / (576 x 32 x 4 B) = 3.6
    [InlineData(576, 0, 3)]
    public void BlockFitsHoldsAnImagesStripsForOneOrTwoImages(int k, int images, int expected)
    {
        int strips = k == 4608 ? 2 : 25;
        Im2Col? unfold = images == 0 ? null
            : k == 4608 ? new Im2Col(512, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1, images) : new Im2Col(64, 56, 56, 3, 3, 2, 2, 1, 1, 1, 1, images);
        Assert.Equal(expected, PackedMatMul.BlockFits(k, stripWidth: 32, strips, unfold));
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void PerChannelEveryReductionLength(string formatName)
    {
        var format = Enum.Parse<WeightFormat>(formatName);
        foreach (int k in ReductionLengths(format))
            foreach (bool zp in new[] { false, true })
                Check(format, rows: 3 + k % 5, cols: k, groupSize: 0, zp, batch: 1 + k % 6, seed: k);
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void PerGroupWithRemaindersAndOddGroupCounts(string formatName)
    {
        var format = Enum.Parse<WeightFormat>(formatName);
        if (WeightView.IsFloat(format)) return;
        // (K, G): 3, 5 groups; groups that are not a multiple of any vector chunk (18, 86); 16..256.
        var shapes = new[] { (48, 16), (80, 16), (96, 32), (160, 32), (36, 18), (258, 86), (72, 24), (384, 128), (256, 128), (768, 256), (512, 256), (64, 64), (6, 2) };
        foreach (var (k, g) in shapes)
            foreach (bool zp in new[] { false, true })
                Check(format, rows: 7, cols: k, groupSize: g, zp, batch: 5, seed: k + g);
    }

    [Theory]
    [InlineData("Int4")]
    [InlineData("UInt4")]
    public void BatchOneNibbleStepsOnEveryWidth(string formatName)
    {
        var format = Enum.Parse<WeightFormat>(formatName);
        // Batch 1 with groups of whole steps (eight nibbles per lane: 8, 32, 64 or 128 elements on the scalar, 128-,
        // 256- and 512-bit paths) takes the nibble-word kernels, steps of whole groups of whole lanes (8..64 elements
        // dividing the step, the reduction a whole number of steps) the short-group kernel: 1, 2, 4 and 8 lanes per
        // group at 512 bits (256/8, 128/16, 256/32, 384/64), 1, 2 and 4 at 256 (also 192/32) and 1 and 2 at 128 (also
        // 96/16); other groups the generic one. Row counts give the 4-row passes with 0..3 rows left; 384/128 and
        // 1152/384 odd group counts; 0 is per channel.
        var shapes = new[] { (128, 128), (384, 128), (1152, 384), (1024, 256), (512, 0), (1024, 0), (96, 32), (192, 64), (40, 8), (48, 16), (120, 24), (200, 40),
            (256, 8), (128, 16), (256, 32), (384, 64), (192, 32), (96, 16) };
        foreach (var (k, g) in shapes)
            foreach (bool zp in new[] { false, true })
                foreach (int rows in new[] { 1, 6, 11, 16 })
                    Check(format, rows, cols: k, groupSize: g, zp, batch: 1, seed: k + g + rows, xPad: rows % 3, yPad: rows % 2);
    }

    [Theory]
    [InlineData("Int4")]
    [InlineData("UInt4")]
    public void ShortNibbleGroupsOverSeveralActivationRowsOnEveryWidth(string formatName)
    {
        var format = Enum.Parse<WeightFormat>(formatName);
        // 2 to 23 activation rows on the row kernels, groups shorter than a nibble step that divide it (1, 2, 4 and 8
        // lanes per group at 512 bits: 256/8, 128/16, 256/32, 384/64; 1, 2 and 4 at 256, 1 and 2 at 128) take
        // NibbleFractionRows; the batches give passes of 4, 2 and 1 activation rows and two 32-row blocks (37), the
        // weight rows one item or several (70).
        var shapes = new[] { (256, 8), (128, 16), (256, 32), (384, 64), (192, 32), (96, 16), (40, 8) };
        foreach (var (k, g) in shapes)
            foreach (bool zp in new[] { false, true })
                foreach (int batch in new[] { 2, 3, 7, 37 })
                    Check(format, rows: batch == 7 ? 70 : 5, cols: k, groupSize: g, zp, batch, seed: k + g + batch, xPad: batch % 3, yPad: batch % 2);
    }

    [Fact]
    public void ShortNibbleGroupsOverSeveralActivationRowsTakeTheFractionKernel()
    {
        // The kernel is reached: with it off, the generic row kernels give other bits for the same call on every vector
        // width (groups of 8 are one lane, shorter than a step at 128 bits and wider); in scalars a group of 8 is a
        // whole step, so the generic kernels run either way and the bits are the same.
        using var w = new PinnedWeight(WeightFormat.Int4, 8, 256, 8, zeroPoints: true, seed: 3);
        var view = w.View;
        float[] x = KernelTestData.Activations(4 * 256, 9);
        foreach (var path in KernelTestData.FloatPaths().Where(p => p != KernelPath.Auto))
        {
            float[] with = RunRows(view, x, 4, path);
            QuantizedMatMul.ShortGroupFractions = false;
            try
            {
                float[] without = RunRows(view, x, 4, path);
                if (path == KernelPath.Scalar) Assert.Equal(with, without);
                else Assert.NotEqual(with, without);
            }
            finally
            {
                QuantizedMatMul.ShortGroupFractions = true;
            }
        }
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void EveryBatchSizeAndBlock(string formatName)
    {
        var format = Enum.Parse<WeightFormat>(formatName);
        // Batches 1..65 cover the 4/2/1-row passes and the 32-row activation blocks; 257 output rows span several items.
        for (int m = 1; m <= 65; m += m < 10 ? 1 : 7)
            Check(format, rows: m == 65 ? 257 : 33, cols: 64, groupSize: WeightView.IsFloat(format) ? 0 : 32, zeroPoints: true, batch: m, seed: m);
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void StridedInputAndOutput(string formatName)
    {
        var format = Enum.Parse<WeightFormat>(formatName);
        Check(format, rows: 9, cols: 96, groupSize: 0, zeroPoints: true, batch: 6, seed: 5, xPad: 13, yPad: 3);
        Check(format, rows: 9, cols: 96, groupSize: WeightView.IsFloat(format) ? 0 : 32, zeroPoints: false, batch: 3, seed: 6, xPad: 1, yPad: 7);
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void PackedBlocksInsideLongGroups(string formatName)
    {
        // Groups longer than the packed kernel's reduction block (256): blocks end inside a group at a chunk boundary,
        // and a group's last block holds a partial chunk and scalar elements.
        var format = Enum.Parse<WeightFormat>(formatName);
        var shapes = WeightView.IsFloat(format) ? new[] { (600, 0), (1030, 0) } : new[] { (600, 0), (600, 300), (1028, 514), (1030, 0) };
        foreach (var (k, g) in shapes)
        {
            if (WeightView.IsPacked(format) && k % 2 != 0) continue;
            Check(format, rows: 13, cols: k, groupSize: g, zeroPoints: true, batch: 37, seed: k + g);
        }
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void ReductionBlocksLeaveEveryBitUnchanged(string formatName)
    {
        // The row kernels at batch 2..23 walk the reduction in blocks, carrying each row's sums from block to block:
        // every block size must give the bits of one unblocked pass (the same operations in the same order). Blocks of
        // 32..96 elements end inside groups (at chunk boundaries of every width), at group ends, and hold several groups.
        var format = Enum.Parse<WeightFormat>(formatName);
        var shapes = WeightView.IsFloat(format) ? new[] { (600, 0), (1030, 0) } : new[] { (600, 0), (600, 24), (1028, 514), (1030, 0), (768, 256), (640, 160) };
        int saved = QuantizedMatMul.ReductionBlock;
        try
        {
            foreach (var (k, g) in shapes)
            {
                if (WeightView.IsPacked(format) && k % 2 != 0) continue;
                using var w = new PinnedWeight(format, 9, k, g, zeroPoints: true, seed: k + g);
                var view = w.View;
                foreach (int batch in new[] { 2, 7, 13 }) // passes of 2; 4 + 2 + 1; 4 + 4 + 4 + 1 rows
                {
                    float[] x = KernelTestData.Activations(batch * k, k + batch);
                    foreach (var path in KernelTestData.FloatPaths())
                    {
                        QuantizedMatMul.ReductionBlock = 1 << 30;
                        float[] whole = RunRows(view, x, batch, path);
                        foreach (int block in new[] { 32, 64, 96, 512 })
                        {
                            QuantizedMatMul.ReductionBlock = block;
                            Assert.Equal(whole, RunRows(view, x, batch, path));
                        }
                    }
                }
            }
        }
        finally
        {
            QuantizedMatMul.ReductionBlock = saved;
        }
    }

    private static float[] RunRows(in WeightView view, float[] x, int batch, KernelPath path)
    {
        var y = new float[batch * view.Rows];
        fixed (float* px = x) fixed (float* py = y)
            QuantizedMatMul.Run(view, px, batch, view.Cols, null, py, view.Rows, path, MatMulMethod.Rows);
        return y;
    }

    [Theory]
    [InlineData("Int8")]
    [InlineData("UInt4")]
    public void PerTensorScale(string formatName)
    {
        var format = Enum.Parse<WeightFormat>(formatName);
        using var w = new PinnedWeight(format, 11, 40, 0, zeroPoints: true, seed: 3, perTensor: true);
        CheckAllPaths(w, batch: 3, seed: 3, xPad: 0, yPad: 0, bias: true);
    }

    /// <summary>
    /// <see cref="IFloatWidth{TVec}.Sum4"/> (the dot tiles' fold) at every width this CPU runs: integers (every order of
    /// additions is exact) give each vector's sum in its own lane, distinct per vector so a swapped lane fails; fractions
    /// agree with the one-by-one <see cref="IFloatWidth{TVec}.Sum"/> within float32 rounding.
    /// </summary>
    [Fact]
    public void SumOfFourVectorsAtEveryWidth()
    {
        var rng = new Random(7);
        for (int trial = 0; trial < 50; trial++)
        {
            var values = new float[64];
            bool whole = trial % 2 == 0;
            for (int i = 0; i < values.Length; i++)
                values[i] = whole ? rng.Next(-1000, 1000) : (float)(rng.NextDouble() * 2 - 1) * MathF.Pow(2, rng.Next(-8, 8));
            fixed (float* v = values)
            {
                CheckSum4<Float1, float>(v, whole);
                if (Float128.IsSupported) CheckSum4<Float128, Vector128<float>>(v, whole);
                if (Float256.IsSupported) CheckSum4<Float256, Vector256<float>>(v, whole);
                if (Float512.IsSupported) CheckSum4<Float512, Vector512<float>>(v, whole);
            }
        }
    }

    private static void CheckSum4<TW, TVec>(float* v, bool whole) where TW : IFloatWidth<TVec> where TVec : struct
    {
        int c = TW.Count;
        var total = TW.Sum4(TW.Load(v), TW.Load(v + 16), TW.Load(v + 32), TW.Load(v + 48));
        for (int j = 0; j < 4; j++)
        {
            double expected = 0, magnitude = 0;
            for (int l = 0; l < c; l++) { expected += v[16 * j + l]; magnitude += Math.Abs(v[16 * j + l]); }
            if (whole) Assert.Equal(expected, total[j]);
            else Assert.True(Math.Abs(total[j] - expected) <= 1e-6 * magnitude, $"{typeof(TW).Name} lane {j}: {total[j]} against {expected}");
        }
    }

    [Fact]
    public void DotTilesFoldOneSumAtATimeToo()
    {
        // The fold's other order (DotTileMatMul.FourSums off, as the probe measures it) on every path and method,
        // against the specification: 4-bit, half and int8 weights, a reduction with a scalar tail, 1-9 activation rows.
        DotTileMatMul.FourSums = false;
        try
        {
            foreach (var format in new[] { WeightFormat.Int4, WeightFormat.Float16, WeightFormat.BFloat16, WeightFormat.Int8 })
                foreach (int batch in new[] { 1, 3, 9 })
                    Check(format, rows: 13, cols: 302, groupSize: 0, zeroPoints: true, batch, seed: 40 + batch, xPad: 1, yPad: 2);
        }
        finally
        {
            DotTileMatMul.FourSums = true;
        }
    }

    [Fact]
    public void HalfLanesConvertEveryHalfValueExactly()
    {
        var bits = new ushort[65536];
        for (int i = 0; i < bits.Length; i++) bits[i] = (ushort)i;
        var expected = new uint[65536];
        for (int i = 0; i < bits.Length; i++) expected[i] = BitConverter.SingleToUInt32Bits(HalfKernel.FromHalfBits(bits[i]));
        fixed (ushort* p = bits)
        {
            for (int i = 0; i < bits.Length; i += 16)
            {
                var lanes128 = HalfLanes.FromHalf(Vector128.Create(Widen(p + i, 4))).AsUInt32();
                var lanes256 = HalfLanes.FromHalf(Vector256.Create(Widen(p + i, 8))).AsUInt32();
                var lanes512 = HalfLanes.FromHalf(Vector512.Create(Widen(p + i, 16))).AsUInt32();
                var scalar = new float[16];
                for (int j = 0; j < 16; j += 2) (scalar[j], scalar[j + 1]) = Float1.LoadHalfPairs(p + i + j);
                bool finite = (bits[i] & 0x7C00) != 0x7C00; // 16 consecutive values share an exponent
                var finite128 = HalfLanes.FromFiniteHalf(Vector128.Create(Widen(p + i, 4)).AsInt32()).AsUInt32();
                var finite256 = HalfLanes.FromFiniteHalf(Vector256.Create(Widen(p + i, 8)).AsInt32()).AsUInt32();
                var finite512 = HalfLanes.FromFiniteHalf(Vector512.Create(Widen(p + i, 16)).AsInt32()).AsUInt32();
                // The finite decode without its multiply: the value times 2^-112, exactly, at every width and in scalars.
                var scaled128 = HalfLanes.FiniteHalfBits(Vector128.Create(Widen(p + i, 4)).AsInt32()).AsUInt32();
                var scaled256 = HalfLanes.FiniteHalfBits(Vector256.Create(Widen(p + i, 8)).AsInt32()).AsUInt32();
                var scaled512 = HalfLanes.FiniteHalfBits(Vector512.Create(Widen(p + i, 16)).AsInt32()).AsUInt32();
                var scaledScalar = new float[16];
                for (int j = 0; j < 16; j += 2) (scaledScalar[j], scaledScalar[j + 1]) = Float1.LoadHalfPairsOver2Pow112(p + i + j);
                for (int j = 0; j < 16; j++)
                {
                    if (finite)
                    {
                        if (j < 4) Assert.Equal(expected[i + j], finite128[j]);
                        if (j < 8) Assert.Equal(expected[i + j], finite256[j]);
                        Assert.Equal(expected[i + j], finite512[j]);
                        double value = BitConverter.UInt32BitsToSingle(expected[i + j]);
                        Assert.Equal(value, BitConverter.UInt32BitsToSingle(scaled512[j]) * Math.Pow(2, 112));
                        uint scaledBits = BitConverter.SingleToUInt32Bits(scaledScalar[j]);
                        Assert.Equal(scaled512[j], scaledBits);
                        if (j < 4) Assert.Equal(scaled512[j], scaled128[j]);
                        if (j < 8) Assert.Equal(scaled512[j], scaled256[j]);
                    }
                    if (j < 4) Assert.Equal(expected[i + j], lanes128[j]);
                    if (j < 8) Assert.Equal(expected[i + j], lanes256[j]);
                    Assert.Equal(expected[i + j], lanes512[j]);
                    Assert.Equal(expected[i + j], BitConverter.SingleToUInt32Bits(scalar[j]));
                }
            }
        }
    }

    /// <summary>
    /// float16 weights with infinities and NaNs: the work items (row kernels, dot tiles, each packed layout) that hold
    /// one decode with the exact decoder (the one for finite weights would read an infinity as a number from 65536 on),
    /// so their rows give the specification's infinities and NaNs on every path and loop, and the other items' rows stay
    /// within tolerance.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(6)]
    [InlineData(40)]
    public void HalfWeightsWithInfinitiesAndNaNs(int batch)
    {
        const int rows = 130, cols = 70; // 64 rows per work item of the row kernels: items 0-63, 64-127, 128-129
        using var w = new PinnedWeight(WeightFormat.Float16, rows, cols, 0, zeroPoints: false, seed: 21);
        var halves = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(w.Data.AsSpan());
        halves[70 * cols + 5] = 0x7C00;   // +inf in a vector chunk
        halves[100 * cols + 69] = 0x7E01; // NaN in the scalar tail
        halves[127 * cols + 33] = 0xFC00; // -inf
        int[] special = [70, 100, 127];
        var view = w.View;
        float[] x = KernelTestData.Activations(batch * cols, 22);
        var expected = new float[batch * rows];
        var actual = new float[batch * rows];
        fixed (float* px = x) fixed (float* pe = expected) fixed (float* pa = actual)
        {
            QuantizedMatMul.Reference(view, px, batch, cols, null, pe, rows);
            // The packed GEMM once per layout (each decodes per item: a strip of weight rows, or an item's rows).
            var runs = new[] { MatMulMethod.Rows, MatMulMethod.DotTiles }.Select(m => (Method: m, Layout: (PackedLayout?)null))
                .Concat(Enum.GetValues<PackedLayout>().Select(l => (Method: MatMulMethod.Packed, Layout: (PackedLayout?)l)));
            foreach (var path in KernelTestData.FloatPaths())
            foreach (var (method, layout) in runs)
            {
                PackedMatMul.ForcedLayout = layout;
                try
                {
                    QuantizedMatMul.Run(view, px, batch, cols, null, pa, rows, path, method);
                }
                finally
                {
                    PackedMatMul.ForcedLayout = null;
                }
                for (int i = 0; i < batch; i++)
                    for (int j = 0; j < rows; j++)
                    {
                        float e = expected[i * rows + j], a = actual[i * rows + j];
                        if (special.Contains(j))
                        {
                            Assert.False(float.IsFinite(e));
                            Assert.True(float.IsNaN(e) ? float.IsNaN(a) : a == e, $"{path} {method} {layout} batch {batch} row {i} out {j}: {a}, expected {e}");
                            continue;
                        }
                        double magnitude = 0;
                        for (int kk = 0; kk < cols; kk++) magnitude += Math.Abs((double)x[i * cols + kk] * view.Dequantized(j, kk));
                        Assert.True(Math.Abs(a - e) <= RelativeTolerance * magnitude, $"{path} {method} {layout} batch {batch} row {i} out {j}: {a} vs {e}");
                    }
            }
        }
    }

    /// <summary>
    /// Batch 1 tests float16 rows for infinities and NaNs as it decodes them, four rows at a time, and decodes a block
    /// that holds one again with the exact decoder (<see cref="QuantizedMatMul.FusedFiniteTest"/>), and the row kernels
    /// decode on activations scaled by 2^112 where that is exact (<see cref="QuantizedMatMul.ScaledHalves"/>): the same
    /// bits as the test pass of its own before each work item and the plain decode, on every width, for an infinity or a
    /// NaN in each row (the two blocks of four and the three rows after them) at the first, a middle and the last vector
    /// column and in the scalar tail; and the special row's outputs are the specification's infinity or NaN.
    /// Activations: ordinary ones; one of 70,000 (above 2^16, so not scaled); subnormal ones against subnormal halves.
    /// Batch 1, passes of two and four rows (3, 6 and 2 rows), and 33 rows, whose last block is one row (the row
    /// kernels' blocks are 32 rows) on the four-row kernel.
    /// </summary>
    [Theory]
    [InlineData(1, "ordinary")]
    [InlineData(1, "large")]
    [InlineData(1, "subnormal")]
    [InlineData(3, "ordinary")]
    [InlineData(6, "subnormal")]
    [InlineData(2, "large")]
    [InlineData(33, "ordinary")]
    public void BatchOneHalvesTestedAsTheyAreDecoded(int batch, string activations)
    {
        const int rows = 11, cols = 97;
        using var w = new PinnedWeight(WeightFormat.Float16, rows, cols, 0, zeroPoints: false, seed: 23);
        var halves = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(w.Data.AsSpan());
        float[] x = KernelTestData.Activations(batch * cols, 24);
        if (activations == "large") x[50] = 70000f;
        if (activations == "subnormal")
        {
            for (int i = 0; i < x.Length; i++) x[i] *= 1e-39f;
            for (int i = 3; i < halves.Length; i += 7) halves[i] = (ushort)(i % 2 == 0 ? 0x0001 : 0x83FF); // the smallest and a large subnormal
        }
        var expected = new float[batch * rows];
        var fused = new float[batch * rows];
        var separate = new float[batch * rows];
        bool savedFused = QuantizedMatMul.FusedFiniteTest, savedScaled = QuantizedMatMul.ScaledHalves;
        try
        {
            // Every setting against the test pass of its own and the plain decode, bit for bit; the rows of
            // special (if any) against the specification.
            void Compare(string what, int row)
            {
                fixed (float* px = x, pe = expected, pf = fused, ps = separate)
                {
                    QuantizedMatMul.Reference(w.View, px, batch, cols, null, pe, rows);
                    foreach (var path in KernelTestData.FloatPaths())
                    {
                        QuantizedMatMul.FusedFiniteTest = false;
                        QuantizedMatMul.ScaledHalves = false;
                        QuantizedMatMul.Run(w.View, px, batch, cols, null, ps, rows, path, MatMulMethod.Rows);
                        foreach (var (fusedTest, scaledHalves) in new[] { (true, true), (true, false), (false, true) })
                        {
                            QuantizedMatMul.FusedFiniteTest = fusedTest;
                            QuantizedMatMul.ScaledHalves = scaledHalves;
                            QuantizedMatMul.Run(w.View, px, batch, cols, null, pf, rows, path, MatMulMethod.Rows);
                            string setting = $"{path}, {activations}, fused test {fusedTest}, scaled {scaledHalves}, {what}";
                            for (int j = 0; j < batch * rows; j++)
                                Assert.True(BitConverter.SingleToUInt32Bits(separate[j]) == BitConverter.SingleToUInt32Bits(fused[j]),
                                    $"{setting}, output {j}: {fused[j]}, {separate[j]} with neither");
                            if (row < 0) continue;
                            for (int i = 0; i < batch; i++)
                            {
                                float e = expected[i * rows + row], a = fused[i * rows + row];
                                Assert.False(float.IsFinite(e));
                                Assert.True(float.IsNaN(e) ? float.IsNaN(a) : a == e, $"{setting}, activation row {i}: {a}, expected {e}");
                            }
                        }
                    }
                }
            }
            Compare("no special", -1);
            foreach (ushort special in new ushort[] { 0x7C00, 0xFE01 })
                for (int row = 0; row < rows; row++)
                    foreach (int col in new[] { 0, 40, 63, 96 })
                    {
                        ushort kept = halves[row * cols + col];
                        halves[row * cols + col] = special;
                        Compare($"0x{special:X4} at ({row}, {col})", row);
                        halves[row * cols + col] = kept;
                    }
        }
        finally
        {
            QuantizedMatMul.FusedFiniteTest = savedFused;
            QuantizedMatMul.ScaledHalves = savedScaled;
        }
    }

    /// <summary>
    /// The measured rule for the scaled float16 decode: 512-bit vectors up to 2^24 weight elements (4096x4096
    /// gained, 11008x4096 lost), 256- and 128-bit vectors at every size, never in scalars.
    /// </summary>
    [Fact]
    public void ScaledHalvesByWidthAndWeightSize()
    {
        Assert.True(QuantizedMatMul.TakesScaledHalves(16, 64 * 800));
        Assert.True(QuantizedMatMul.TakesScaledHalves(16, 4096 * 4096));
        Assert.False(QuantizedMatMul.TakesScaledHalves(16, 4096 * 4096 + 1));
        Assert.False(QuantizedMatMul.TakesScaledHalves(16, 11008L * 4096));
        Assert.True(QuantizedMatMul.TakesScaledHalves(8, 11008L * 4096));
        Assert.True(QuantizedMatMul.TakesScaledHalves(4, 11008L * 4096));
        Assert.False(QuantizedMatMul.TakesScaledHalves(1, 64 * 800));
    }

    /// <summary>Half bits in the upper 16 bits of each lane, as the vector loads leave them, with other bits below.</summary>
    private static uint[] Widen(ushort* p, int n)
    {
        var r = new uint[n];
        for (int i = 0; i < n; i++) r[i] = (uint)p[i] << 16 | (uint)(p[i] * 40503 & 0xFFFF);
        return r;
    }

    [Fact]
    public void AutoPathRunsOnTheWidestSupportedWidth()
    {
        // The widest path this CPU reports must be what Auto resolves to: identical bits.
        using var w = new PinnedWeight(WeightFormat.Int4, 13, 256, 64, zeroPoints: true, seed: 9);
        var widest = new[] { KernelPath.V512, KernelPath.V256, KernelPath.V128, KernelPath.Scalar }.First(QuantizedMatMul.IsSupported);
        float[] x = KernelTestData.Activations(2 * 256, 9);
        var auto = new float[2 * 13];
        var wide = new float[2 * 13];
        var view = w.View;
        fixed (float* px = x) fixed (float* pa = auto) fixed (float* pw = wide)
        {
            QuantizedMatMul.Run(view, px, 2, 256, null, pa, 13, KernelPath.Auto);
            QuantizedMatMul.Run(view, px, 2, 256, null, pw, 13, widest);
        }
        Assert.Equal(wide, auto);
    }

    /// <summary>
    /// A weight of few rows over enough activation rows for two threads, which the row kernels' blocks made one work
    /// item: its rows are split between the threads in runs of four (10 rows: 8 and 2), and every output matches.
    /// </summary>
    [Theory]
    [MemberData(nameof(Formats))]
    public void FewWeightRowsSplitBetweenThreads(string formatName)
    {
        var format = Enum.Parse<WeightFormat>(formatName);
        int saved = KernelThreads.Count;
        try
        {
            KernelThreads.Count = 2;
            foreach (int rows in new[] { 10, 16 })
                foreach (int batch in new[] { 24, 33 })
                    Check(format, rows, cols: 1030, groupSize: 0, zeroPoints: batch % 2 == 1, batch, seed: rows + batch, xPad: 1, yPad: 2);
        }
        finally
        {
            KernelThreads.Count = saved;
        }
    }

    private static void Check(WeightFormat format, int rows, int cols, int groupSize, bool zeroPoints, int batch, int seed, int xPad = 0, int yPad = 0)
    {
        using var w = new PinnedWeight(format, rows, cols, groupSize, zeroPoints, seed);
        CheckAllPaths(w, batch, seed, xPad, yPad, bias: seed % 2 == 0);
    }

    private static void CheckAllPaths(PinnedWeight w, int batch, int seed, int xPad, int yPad, bool bias)
    {
        var view = w.View;
        int n = view.Rows, k = view.Cols, ldx = k + xPad, ldy = n + yPad;
        float[] x = KernelTestData.Activations(batch * ldx, seed + 1);
        float[] b = bias ? KernelTestData.Activations(n, seed + 2) : [];
        var expected = new float[batch * ldy];
        var actual = new float[batch * ldy];
        fixed (float* px = x) fixed (float* pb = b) fixed (float* pe = expected) fixed (float* pa = actual)
        {
            float* biasPtr = bias ? pb : null;
            QuantizedMatMul.Reference(view, px, batch, ldx, biasPtr, pe, ldy);
            foreach (var path in KernelTestData.FloatPaths())
            foreach (var method in new[] { MatMulMethod.Rows, MatMulMethod.Packed, MatMulMethod.DotTiles })
            {
                Array.Fill(actual, float.NaN);
                QuantizedMatMul.Run(view, px, batch, ldx, biasPtr, pa, ldy, path, method);
                for (int i = 0; i < batch; i++)
                {
                    for (int j = 0; j < n; j++)
                    {
                        double magnitude = bias ? Math.Abs(b[j]) : 0;
                        for (int kk = 0; kk < k; kk++) magnitude += Math.Abs((double)x[i * ldx + kk] * view.Dequantized(j, kk));
                        double err = Math.Abs(actual[i * ldy + j] - expected[i * ldy + j]);
                        Assert.True(err <= RelativeTolerance * magnitude + 1e-30,
                            $"{view.Format} {path} {method} [{n}x{k}] G={view.GroupSize} batch {batch} row {i} out {j}: {actual[i * ldy + j]} vs {expected[i * ldy + j]} (|err| {err:G3}, bound {RelativeTolerance * magnitude:G3})");
                    }
                    for (int j = n; j < ldy; j++) Assert.True(float.IsNaN(actual[i * ldy + j]), $"{path} {method} wrote past the output row");
                }
                if (method == MatMulMethod.Packed) CheckTransposed(view, x, batch, ldx, biasPtr, actual, ldy, path);
            }
        }
    }

    /// <summary>
    /// <see cref="MatMulMethod.Transposed"/> (x^T in, y^T out, rows padded by 3) gives exactly the packed GEMM's bits:
    /// the same decoding, micro-kernel and sums, only the packing and the final writes differ.
    /// </summary>
    private static void CheckTransposed(in WeightView view, float[] x, int batch, int ldx, float* bias, float[] packed, int ldy, KernelPath path)
    {
        int n = view.Rows, k = view.Cols, ld = batch + 3;
        var xt = new float[k * ld];
        var yt = new float[n * ld];
        Array.Fill(yt, float.NaN);
        for (int i = 0; i < batch; i++)
            for (int kk = 0; kk < k; kk++) xt[kk * ld + i] = x[i * ldx + kk];
        fixed (float* pxt = xt) fixed (float* pyt = yt)
            QuantizedMatMul.Run(view, pxt, batch, ld, bias, pyt, ld, path, MatMulMethod.Transposed);
        for (int j = 0; j < n; j++)
        {
            for (int i = 0; i < batch; i++)
                Assert.True(yt[j * ld + i].Equals(packed[i * ldy + j]), $"{view.Format} {path} transposed [{n}x{k}] batch {batch} row {i} out {j}: {yt[j * ld + i]} vs {packed[i * ldy + j]}");
            for (int i = batch; i < ld; i++) Assert.True(float.IsNaN(yt[j * ld + i]), $"{path} transposed wrote past the output row");
        }
    }
}
