using QuantSharp.Kernels;

namespace QuantSharp.Tests.Kernels;

/// <summary>
/// Integer W8A8: every path (AVX-VNNI where the CPU has it, vpmaddwd at 512/256/128 bits, scalar) gives exactly the
/// specification's outputs (same integers, same epilogue), on tails of every length; the activation integers are
/// those of the simulated path; and the result agrees with the simulated path (fake-quantized input times the
/// dequantized weight in float64) within float rounding.
/// </summary>
public unsafe class IntegerMatMulTests
{
    private static IEnumerable<KernelPath> Paths() =>
        new[] { KernelPath.Scalar, KernelPath.V128, KernelPath.V256, KernelPath.V512, KernelPath.Vnni256, KernelPath.Vnni512, KernelPath.Auto }.Where(IntegerMatMul.IsSupported);

    [Fact]
    public void VnniPathRunsWhereTheCpuHasIt()
    {
        Assert.Equal(System.Runtime.Intrinsics.X86.AvxVnni.IsSupported && Simd.Use256, IntegerMatMul.IsSupported(KernelPath.Vnni256));
        // The generated 512-bit kernel: Linux x64, AVX-512 in use by .NET, AVX512-VNNI (CPUID 7: ECX bit 11).
        bool vnni512 = OperatingSystem.IsLinux() && System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture == System.Runtime.InteropServices.Architecture.X64
            && System.Runtime.Intrinsics.X86.Avx512BW.IsSupported && (System.Runtime.Intrinsics.X86.X86Base.CpuId(7, 0).Ecx & (1 << 11)) != 0
            && Environment.GetEnvironmentVariable("QUANTSHARP_NATIVE_VNNI") != "0" && Simd.Use512;
        Assert.Equal(vnni512, IntegerMatMul.IsSupported(KernelPath.Vnni512));
    }

    [Fact]
    public void AutoTakesThePackedGemmFromEachPathsMeasuredRowCount()
    {
        // 16-row strips at 256 bits (vpmaddwd): packed from 12 rows; the generated 512-bit VNNI kernel from 12; the
        // 512-bit vpmaddwd path and the unmeasured ones (AVX-VNNI at 256 bits, 128 bits, scalar) from 32.
        foreach (var (path, from) in new[] { (KernelPath.V256, 12), (KernelPath.Vnni512, 12), (KernelPath.V512, 32), (KernelPath.Vnni256, 32), (KernelPath.V128, 32), (KernelPath.Scalar, 32) })
        {
            Assert.False(IntegerMatMul.TakesPacked(path, from - 1), $"{path} at {from - 1} rows");
            Assert.True(IntegerMatMul.TakesPacked(path, from), $"{path} at {from} rows");
        }
    }

    [Fact]
    public void GeneratedVnni512KernelEqualsItsManagedTwin()
    {
        // The machine code against GemmVnni512.MultiplyAccumulate (portable Vector512 arithmetic) on random codes, including the
        // extremes, several group counts (0 runs no iteration), and strides that are not multiples of the vector size.
        if (!Vnni512Kernel.IsSupported) return;
        var random = new Random(5);
        const int groups = 37, lda = 4 * groups + 12, ldc = 40;
        byte[] a = new byte[6 * lda], b = new byte[groups * 128];
        random.NextBytes(a);
        random.NextBytes(b);
        a[0] = 0x80; b[0] = 255; a[lda + 4] = 0x7F; b[129] = 0;
        foreach (int g in new[] { 0, 1, 2, groups })
        {
            int[] native = new int[6 * ldc], managed = new int[6 * ldc];
            for (int i = 0; i < native.Length; i++) native[i] = managed[i] = random.Next(-1 << 20, 1 << 20);
            fixed (byte* pa = a) fixed (byte* pb = b) fixed (int* pn = native) fixed (int* pm = managed)
            {
                Vnni512Kernel.Micro(pa, lda, pb, g, pn, ldc * 4);
                MicroKernel.Run<GemmVnni512, System.Runtime.Intrinsics.Vector512<int>, int, Six>((int*)pa, lda / 4, (int*)pb, g, pm, ldc);
            }
            Assert.Equal(managed, native);
        }
    }

    [Fact]
    public void GeneratedRowDotsEqualPlainSums()
    {
        // The row kernels' machine code (Vnni512Kernel.RowDots) against plain integer sums: 1, 2 and 4 code rows, whole
        // 64-byte steps with and without a masked tail, several weight rows per call, the extreme codes; each lane's
        // sum is its four bytes' products over the steps, so the 16 lanes of a row add up to the dot product.
        if (!Vnni512Kernel.IsSupported) return;
        var random = new Random(11);
        foreach (int k in new[] { 64, 65, 100, 127, 128, 191, 256, 800 })
            foreach (int rows in new[] { 1, 2, 4 })
            {
                const int count = 5;
                nint ldu = k + 3;
                byte[] q = new byte[count * k], u = new byte[rows * ldu];
                random.NextBytes(q);
                random.NextBytes(u);
                q[0] = 0x80; u[0] = 255; q[k - 1] = 0x7F; u[k - 1] = 255;
                int[] lanes = new int[count * rows * 16];
                fixed (byte* pq = q) fixed (byte* pu = u) fixed (int* pl = lanes)
                    Vnni512Kernel.RowDots(pq, k, pu, ldu, pl, count, rows);
                for (int n = 0; n < count; n++)
                    for (int r = 0; r < rows; r++)
                    {
                        for (int l = 0; l < 16; l++)
                        {
                            int expected = 0;
                            for (int j = 4 * l; j < k; j += 64)
                                for (int b = j; b < Math.Min(j + 4, k); b++) expected += u[r * ldu + b] * (sbyte)q[n * k + b];
                            Assert.True(expected == lanes[(n * rows + r) * 16 + l], $"k {k}, {rows} rows: weight row {n}, code row {r}, lane {l}: {lanes[(n * rows + r) * 16 + l]} against {expected}");
                        }
                    }
            }
    }

    [Fact]
    public void GeneratedRowDotsReadNothingPastTheRows()
    {
        // A weight row and a code row of 100 bytes (one step and a 36-byte tail) that end where an inaccessible page
        // begins: the tail's masked loads must not touch it (an unmasked 64-byte load there would fault).
        if (!Vnni512Kernel.IsSupported) return;
        const int k = 100, page = 4096, ProtNone = 0, ProtRead = 1, ProtWrite = 2, MapPrivate = 2, MapAnonymous = 0x20;
        nint memory = MemoryMap(0, 2 * page, ProtRead | ProtWrite, MapPrivate | MapAnonymous, -1, 0);
        Assert.NotEqual(-1, memory);
        try
        {
            Assert.Equal(0, MemoryProtect(memory + page, page, ProtNone));
            byte* q = (byte*)memory + page - k, u = (byte*)memory + page - 2 * k;
            for (int j = 0; j < k; j++) { q[j] = (byte)(j % 7 - 3); u[j] = (byte)(j % 5); }
            int* lanes = stackalloc int[16];
            Vnni512Kernel.RowDots(q, k, u, 0, lanes, 1, 1);
            int expected = 0, actual = 0;
            for (int j = 0; j < k; j++) expected += u[j] * (sbyte)q[j];
            for (int l = 0; l < 16; l++) actual += lanes[l];
            Assert.Equal(expected, actual);
        }
        finally
        {
            MemoryUnmap(memory, 2 * page);
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "mmap")]
    private static extern nint MemoryMap(nint address, nuint length, int protection, int flags, int fd, nint offset);

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "mprotect")]
    private static extern int MemoryProtect(nint address, nuint length, int protection);

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "munmap")]
    private static extern int MemoryUnmap(nint address, nuint length);

    [Fact]
    public void ManagedVnni512TwinEqualsTheSpecification()
    {
        // The portable twin of the generated kernel runs everywhere (emulated where the CPU lacks 512-bit vectors):
        // 32-row strips, 4-code groups, every tail, against the specification exactly.
        bool saved = PackedIntegerMatMul.UseNative;
        PackedIntegerMatMul.UseNative = false;
        try
        {
            for (int k = 1; k <= 70; k++)
                CheckWidth<GemmVnni512, System.Runtime.Intrinsics.Vector512<int>>(rows: 1 + k * 7 % 59, cols: k, batch: 1 + k * 13 % 65, zeroPoints: k % 3 == 0, seed: 1300 + k);
            foreach (int k in new[] { 511, 512, 513, 1030 })
                CheckWidth<GemmVnni512, System.Runtime.Intrinsics.Vector512<int>>(rows: 53, cols: k, batch: 33, zeroPoints: k % 2 == 1, seed: 1400 + k);
        }
        finally
        {
            PackedIntegerMatMul.UseNative = saved;
        }
    }

    private static void CheckWidth<TW, TVec>(int rows, int cols, int batch, bool zeroPoints, int seed)
        where TW : IIntGemmWidth<TVec> where TVec : struct
    {
        using var w = new PinnedWeight(WeightFormat.Int8, rows, cols, 0, zeroPoints, seed);
        float[] x = KernelTestData.Activations(batch * cols, seed);
        float[] bias = KernelTestData.Activations(rows, seed + 1);
        using var q = new QuantizedActivations(batch, cols);
        fixed (float* px = x) IntegerMatMul.QuantizeDynamic(px, cols, q);
        var expected = new float[batch * rows];
        var actual = new float[batch * rows];
        fixed (float* pb = bias) fixed (float* pe = expected) fixed (float* pa = actual)
        {
            IntegerMatMul.Reference(w.View, q, pb, pe, rows);
            PackedIntegerMatMul.Run<TW, TVec>(w.View, q, null, null, pb, pa, rows);
        }
        Assert.True(expected.AsSpan().SequenceEqual(actual), $"{typeof(TW).Name} [{rows}x{cols}] batch {batch} differs from the specification");
    }

    [Fact]
    public void EveryPathEqualsTheSpecificationExactly()
    {
        for (int k = 1; k <= 257; k += k < 80 ? 1 : 11)
        {
            foreach (bool zp in new[] { false, true })
            {
                Check(rows: 1 + k % 9, cols: k, batch: 1 + k % 7, zeroPoints: zp, dynamic: k % 2 == 0, seed: k);
            }
        }
        foreach (int m in new[] { 1, 2, 3, 4, 5, 8, 17, 65 })
            Check(rows: 37, cols: 100, batch: m, zeroPoints: true, dynamic: m % 2 == 1, seed: 100 + m);
    }

    [Fact]
    public void PackedGemmEqualsTheSpecificationOnEveryTail()
    {
        // Every reduction length 1..257 (partial 32-bit groups of 4 codes or 2 int16), odd output counts (partial
        // 6-row tiles and 48-row items), batches that leave partial strips of 2, 8, 16 and 32 rows.
        for (int k = 1; k <= 257; k++)
            Check(rows: 1 + k * 7 % 59, cols: k, batch: 1 + k * 13 % 65, zeroPoints: k % 3 == 0, dynamic: k % 2 == 0, seed: 300 + k);
        for (int m = 1; m <= 65; m++)
            Check(rows: 49 + m % 6, cols: 37 + m % 5, batch: m, zeroPoints: m % 2 == 0, dynamic: m % 3 != 0, seed: 600 + m);
    }

    [Fact]
    public void PackedGemmCrossesReductionBlocks()
    {
        // Blocks of 128 groups: 512 codes (VNNI) or 256 int16 (vpmaddwd); lengths around one and two blocks.
        foreach (int k in new[] { 255, 256, 257, 511, 512, 513, 1025, 1030 })
            Check(rows: 53, cols: k, batch: 33, zeroPoints: k % 2 == 1, dynamic: k % 3 != 0, seed: 900 + k);
        Check(rows: 97, cols: 600, batch: 64, zeroPoints: true, dynamic: true, seed: 991, perTensor: true);
    }

    [Fact]
    public void PackedGemmSplitsTheBatchIntoBlocks()
    {
        // One strip per activation block: work items cover several blocks, the last one partial. The setting only
        // changes the blocking (results are identical whatever it is), so tests running beside this one are unaffected.
        int saved = PackedIntegerMatMul.ActivationBlockBytes;
        PackedIntegerMatMul.ActivationBlockBytes = 1;
        try
        {
            Check(rows: 50, cols: 70, batch: 65, zeroPoints: true, dynamic: true, seed: 992);
            Check(rows: 7, cols: 300, batch: 40, zeroPoints: false, dynamic: false, seed: 993);
        }
        finally
        {
            PackedIntegerMatMul.ActivationBlockBytes = saved;
        }
    }

    [Fact]
    public void ExtremeCodesDoNotSaturate()
    {
        // u = 255 against q = -128 everywhere: vpmaddubsw would saturate the pair sums; the exact sum is K * 255 * -128.
        const int k = 4096;
        using var w = new PinnedWeight(WeightFormat.Int8, 2, k, 0, zeroPoints: false, seed: 1);
        Array.Fill(w.Data, (byte)0x80);
        using var x = new QuantizedActivations(1, k);
        new Span<byte>(x.Codes, k).Fill(255);
        x.Scales[0] = 1f;
        x.Sums[0] = 255 * k;
        foreach (var path in Paths())
        {
            foreach (var method in new[] { MatMulMethod.Rows, MatMulMethod.Packed })
            {
                var y = new float[2];
                fixed (float* py = y) IntegerMatMul.Run(w.View, x, null, py, 2, path, method);
                Assert.Equal((float)((double)w.Scales![0] * (255L * -128 * k)), y[0]);
            }
        }
    }

    [Fact]
    public void DynamicIntegersEqualTheSimulatedQuantization()
    {
        float[] x = KernelTestData.Activations(3 * 50, 7);
        x[5] = 0; x[60] = 3.5f; // a row maximum
        using var q = new QuantizedActivations(3, 50);
        fixed (float* px = x) IntegerMatMul.QuantizeDynamic(px, 50, q);
        for (int i = 0; i < 3; i++)
        {
            float amax = 0;
            for (int k = 0; k < 50; k++) amax = MathF.Max(amax, MathF.Abs(x[i * 50 + k]));
            float scale = amax / 127f;
            Assert.Equal(scale, q.Scales[i]);
            Assert.Equal(128, q.ZeroPoints[i]);
            float inv = 1f / scale;
            for (int k = 0; k < 50; k++)
            {
                float expected = Math.Clamp(MathF.Round(x[i * 50 + k] * inv), -127, 127);
                Assert.Equal(expected, q.Codes[i * 50 + k] - 128);
            }
        }
    }

    [Fact]
    public void StaticIntegersEqualTheSimulatedQuantization()
    {
        float[] x = KernelTestData.Activations(2 * 33, 8);
        foreach (var (zp, qmin, qmax) in new[] { (7, 0, 255), (-3, -128, 127), (0, 0, 127) })
        {
            using var q = new QuantizedActivations(2, 33);
            const float scale = 0.0123f;
            fixed (float* px = x) IntegerMatMul.QuantizeStatic(px, 33, scale, zp, qmin, qmax, q);
            int shift = qmin < 0 ? 128 : 0;
            float inv = 1f / scale;
            for (int i = 0; i < x.Length; i++)
            {
                float expected = Math.Clamp(MathF.Round(x[i] * inv) + zp, qmin, qmax);
                Assert.Equal(expected, q.Codes[i] - shift);
            }
        }
    }

    [Fact]
    public void AgreesWithTheSimulatedPath()
    {
        const int n = 23, k = 96, m = 5;
        using var w = new PinnedWeight(WeightFormat.Int8, n, k, 0, zeroPoints: true, seed: 4);
        float[] x = KernelTestData.Activations(m * k, 4);
        using var q = new QuantizedActivations(m, k);
        var y = new float[m * n];
        fixed (float* px = x) fixed (float* py = y)
        {
            IntegerMatMul.QuantizeDynamic(px, k, q);
            IntegerMatMul.Run(w.View, q, null, py, n);
        }
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double sum = 0, magnitude = 0;
                for (int kk = 0; kk < k; kk++)
                {
                    float xf = (q.Codes[i * k + kk] - q.ZeroPoints[i]) * q.Scales[i]; // fake-quantized input
                    double p = (double)xf * w.View.Dequantized(j, kk);
                    sum += p;
                    magnitude += Math.Abs(p);
                }
                Assert.True(Math.Abs(y[i * n + j] - sum) <= 1e-6 * magnitude + 1e-30, $"row {i} out {j}: {y[i * n + j]} vs {sum}");
            }
        }
    }

    [Theory]
    [InlineData(16, 128, 224, true)]  // one item of weight rows: items are strips anyway
    [InlineData(17, 33, 65, false)]   // partial strips and groups
    [InlineData(100, 96, 128, true)]  // several items of weight rows, each item runs all of them
    [InlineData(100, 96, 96, false)]  // three 32-row strips on two threads: cut by weight rows, quantized first
    [InlineData(600, 520, 64, true)]  // more than FusedWeightBytes: quantized first
    [InlineData(5, 40, 7, false)]     // few rows: the row kernels, quantized first
    public void QuantizingInsideTheGemmGivesTheCodesAndOutputsOfQuantizingFirst(int rows, int cols, int batch, bool dynamic)
    {
        using var w = new PinnedWeight(WeightFormat.Int8, rows, cols, 0, zeroPoints: !dynamic, seed: rows + cols);
        float[] x = KernelTestData.Activations(batch * cols, batch);
        float[] bias = KernelTestData.Activations(rows, 3);
        int saved = KernelThreads.Count;
        try
        {
            foreach (int threads in new[] { 1, 2, 4 })
            {
                KernelThreads.Count = threads;
                foreach (var path in Paths())
                {
                    foreach (var method in new[] { MatMulMethod.Packed, MatMulMethod.Auto })
                    {
                        using var first = new QuantizedActivations(batch, cols);
                        using var inside = new QuantizedActivations(batch, cols);
                        var expected = new float[batch * rows];
                        var actual = new float[batch * rows];
                        Array.Fill(actual, float.NaN);
                        fixed (float* px = x) fixed (float* pb = bias) fixed (float* pe = expected) fixed (float* pa = actual)
                        {
                            var source = dynamic ? FloatActivations.Dynamic(px, cols) : FloatActivations.Static(px, cols, 0.011f, 3, -128, 127);
                            IntegerMatMul.Quantize(source, first);
                            IntegerMatMul.Reference(w.View, first, pb, pe, rows);
                            IntegerMatMul.Run(w.View, source, inside, pb, pa, rows, path, method);
                        }
                        string where = $"{path} {method} {threads} thread(s) [{rows}x{cols}] batch {batch}";
                        Assert.True(new ReadOnlySpan<byte>(first.Codes, batch * cols).SequenceEqual(new ReadOnlySpan<byte>(inside.Codes, batch * cols)), $"{where}: codes differ");
                        Assert.Equal(first.Sums, inside.Sums);
                        Assert.Equal(first.Scales, inside.Scales);
                        Assert.Equal(first.ZeroPoints, inside.ZeroPoints);
                        Assert.True(expected.AsSpan().SequenceEqual(actual), $"{where}: outputs differ from the specification");
                    }
                }
            }
        }
        finally
        {
            KernelThreads.Count = saved;
        }
    }

    [Theory]
    [InlineData(16, 128, 3, 2, true)]       // one item of weight rows: fused whatever the strips
    [InlineData(16, 128, 1, 2, true)]
    [InlineData(384, 384, 4, 2, true)]      // 144 KiB, strips even
    [InlineData(384, 384, 7, 2, true)]      // 4 of 7 strips on the busiest thread: 8/7 of an even share
    [InlineData(384, 384, 3, 2, false)]     // 2 of 3: the cut by weight rows evens it out
    [InlineData(384, 384, 5, 2, false)]
    [InlineData(384, 384, 9, 4, false)]     // 3 of 9 on four threads: 4/3 of a share
    [InlineData(384, 384, 8, 4, true)]
    [InlineData(1024, 1024, 8, 2, false)]   // 1 MiB: above FusedWeightBytes
    public void QuantizesInsideTheGemmWhereTheStripsShareOutEvenly(int rows, int cols, int strips, int threads, bool fused)
    {
        var split = PackedMatMul.WorkSplit.For(rows, strips, threads);
        Assert.Equal(fused, PackedIntegerMatMul.FusesQuantization((long)rows * cols, split, strips, threads));
    }

    private static void Check(int rows, int cols, int batch, bool zeroPoints, bool dynamic, int seed, bool perTensor = false)
    {
        using var w = new PinnedWeight(WeightFormat.Int8, rows, cols, 0, zeroPoints, seed, perTensor);
        float[] x = KernelTestData.Activations(batch * cols, seed);
        float[] bias = KernelTestData.Activations(rows, seed + 1);
        using var q = new QuantizedActivations(batch, cols);
        fixed (float* px = x)
        {
            if (dynamic) IntegerMatMul.QuantizeDynamic(px, cols, q);
            else IntegerMatMul.QuantizeStatic(px, cols, 0.008f, 131, 0, 255, q);
        }
        var expected = new float[batch * rows];
        var actual = new float[batch * rows];
        fixed (float* pb = bias) fixed (float* pe = expected) fixed (float* pa = actual)
        {
            IntegerMatMul.Reference(w.View, q, pb, pe, rows);
            foreach (var path in Paths())
            {
                foreach (var method in new[] { MatMulMethod.Rows, MatMulMethod.Packed, MatMulMethod.Auto })
                {
                    Array.Fill(actual, float.NaN);
                    IntegerMatMul.Run(w.View, q, pb, pa, rows, path, method);
                    Assert.True(expected.AsSpan().SequenceEqual(actual), $"{path} {method} [{rows}x{cols}] batch {batch} differs from the specification");
                }
            }
        }
    }
}
