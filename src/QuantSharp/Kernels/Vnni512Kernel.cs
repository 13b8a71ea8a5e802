using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QuantSharp.Kernels;

/// <summary>
/// The packed integer GEMM's micro-kernel at 512 bits: <c>vpdpbusd zmm</c> (AVX512-VNNI), 64 multiply-adds per
/// instruction, twice the 256-bit AVX-VNNI peak (measured on the development machine's AMD EPYC: 415-424 GMAC/s per
/// core against 202-206 for the 256-bit kernel). .NET 10 exposes 512-bit <c>vpdpbusd</c> only through
/// <c>Avx10v1.V512</c>, which CPUs with AVX-512 VNNI but without AVX10 (AMD Zen 4/5, Intel Ice Lake to Sapphire
/// Rapids) do not report, so the 22 instructions of this loop are written here as machine code, once per process, into
/// a page that is made executable (and no longer writable) before it is called; the same loop with <c>vdpbf16ps</c>
/// (<see cref="MicroBFloat16"/>, AVX512-BF16, which .NET 10 exposes through no intrinsic either; and
/// <see cref="MicroBFloat16Taps"/>, the same with two strides as arguments over a convolution's taps) and the row kernels' dot
/// products (<see cref="RowDots"/>, for CPUs without AVX-VNNI) are written into the same page after it.
/// </summary>
/// <remarks>
/// <para>It computes exactly what <see cref="MicroKernel.Run{TM, TVec, T, TH}"/> computes (six rows) for
/// <see cref="GemmVnni512"/> (the managed twin, which the tests compare it against):
/// <c>c[j, :] += sum_g a[j, g] . b[g, :]</c> for <see cref="PackedIntegerMatMul.TileRows"/> weight rows j (32-bit
/// groups of 4 int8 weights, rows <c>lda</c> bytes apart) and one strip of 32 activation rows (2 x 16 lanes of 4 uint8
/// codes per group, groups 128 bytes apart); <c>c</c> rows are <c>ldcBytes</c> apart.</para>
/// <para>Used on Linux x64 when the CPU reports AVX512-VNNI and .NET uses AVX-512 (so <c>DOTNET_EnableAVX512=0</c>
/// turns it off, as for the other 512-bit paths); <c>QUANTSHARP_NATIVE_VNNI=0</c> turns it off alone. If the page
/// cannot be made executable (a hardened kernel that forbids it), the managed kernels run instead.</para>
/// <para>System V calling convention: <c>rdi = a, rsi = lda, rdx = b, rcx = groups, r8 = c, r9 = ldcBytes</c>. The
/// twelve accumulators are <c>zmm0-zmm11</c> (row j in <c>zmm(2j)</c> and <c>zmm(2j+1)</c>), the strip's two vectors
/// <c>zmm12-13</c>, the broadcast weight group <c>zmm14</c>; no callee-saved register is touched.</para>
/// </remarks>
internal static unsafe partial class Vnni512Kernel
{
    /// <summary>Where the row-dot kernels for 1, 2 and 4 activation rows start in the code page (<see cref="Assemble"/>), plus 4 for those with a tail step.</summary>
    private static readonly int[] s_rowDotOffsets = new int[9];

    /// <summary>Where the bfloat16 micro-kernel (<see cref="MicroBFloat16"/>) starts in the code page (set by <see cref="Assemble"/>).</summary>
    private static int s_bfloat16Offset;

    /// <summary>Where the bfloat16 micro-kernels over all taps (<see cref="MicroBFloat16Taps"/>) for 1 to 6 rows start in the code page (set by <see cref="Assemble"/>).</summary>
    private static readonly int[] s_bfloat16TapsOffsets = new int[7];

    /// <summary>Where <see cref="QuadDots"/> for P positions and V vectors starts in the code page, at <c>[V - 1, P]</c> (set by <see cref="Assemble"/>).</summary>
    private static readonly int[,] s_quadOffsets = new int[2, QuadMaxAccumulators + 1];

    /// <summary>Where <see cref="PairDots"/> for P positions and V vectors starts in the code page, at <c>[V - 1, P]</c> (set by <see cref="Assemble"/>).</summary>
    private static readonly int[,] s_pairOffsets = new int[2, QuadMaxAccumulators + 1];

    /// <summary>Accumulators of <see cref="QuadDots"/> and <see cref="PairDots"/> (positions x vectors): <c>zmm0-27</c>.</summary>
    public const int QuadMaxAccumulators = 28;

    private static readonly nint s_code = Build();

    /// <summary>Whether the 512-bit kernel runs here (and <see cref="Simd.MaxBits"/> allows 512 bits).</summary>
    public static bool IsSupported => s_code != 0 && Simd.Use512;

    /// <summary>
    /// Whether <see cref="MicroBFloat16"/> runs here: <see cref="IsSupported"/> and the CPU reports AVX512-BF16 (CPUID leaf
    /// 7 subleaf 1, EAX bit 5), which .NET 10 exposes through no intrinsic.
    /// </summary>
    public static bool BFloat16Supported => IsSupported && Simd.Avx512BFloat16;

    /// <summary>Runs the micro-kernel (see the class remarks); only when <see cref="IsSupported"/>.</summary>
    public static void Micro(byte* a, nint lda, byte* b, int groups, int* c, nint ldcBytes) =>
        ((delegate* unmanaged[SuppressGCTransition]<byte*, nint, byte*, nint, int*, nint, void>)s_code)(a, lda, b, groups, c, ldcBytes);

    /// <summary>
    /// The micro-kernel of the packed float GEMM's bfloat16 mode (<see cref="PackedMatMul.BFloat16Fits"/>): the loop of
    /// <see cref="Micro"/> with <c>vdpbf16ps zmm</c> (AVX512-BF16) in place of <c>vpdpbusd</c>, so each 32-bit group holds
    /// two bfloat16 values (element 0 in the low half) and the accumulators are float32: <c>c[j, l] +=
    /// a[j, g].hi * b[g, l].hi</c>, then <c>+= a[j, g].lo * b[g, l].lo</c>, each product exact and each addition
    /// rounded to nearest even (the instruction's definition flushes denormal inputs and results to zero), for six weight rows j, <c>lda</c> bytes
    /// apart, and a strip of 32 lanes (groups 128 bytes apart); <c>c</c> rows <c>ldcBytes</c> apart. Only when
    /// <see cref="BFloat16Supported"/>; <see cref="MicroBFloat16Twin"/> computes the same in managed code.
    /// </summary>
    public static void MicroBFloat16(uint* a, nint lda, uint* b, int groups, float* c, nint ldcBytes) =>
        ((delegate* unmanaged[SuppressGCTransition]<uint*, nint, uint*, nint, float*, nint, void>)(s_code + s_bfloat16Offset))(a, lda, b, groups, c, ldcBytes);

    /// <summary>
    /// The bfloat16 convolution that reads its strips in place (<see cref="PackedMatMul"/>'s pair images): for each of
    /// <paramref name="taps"/> taps in turn, <see cref="MicroBFloat16"/>'s loop with the strip's groups
    /// <paramref name="ldbBytes"/> apart instead of 128 bytes (group g is channel pair g's plane, one plane after the
    /// last) from <c>b + tapBytes[t]</c> (bytes), and each weight row's groups <paramref name="stepBytes"/> apart instead
    /// of 4 from <c>a + t</c> (a row's pairs in <c>[C / 2, taps]</c> order: the pair for the next plane one pair of taps
    /// further); <paramref name="rows"/> (1 to 6) weight rows and rows of <c>c</c>. The accumulators stay in registers
    /// from the first tap to the last (a call per tap loaded and stored them each time, and the pair images' grouped
    /// calls multiply as few as 16 channel pairs a tap); the additions are in the order of those calls, tap by tap. Only
    /// when <see cref="BFloat16Supported"/>, with <paramref name="taps"/> at least 1; <see cref="MicroBFloat16TapsTwin"/>
    /// computes the same in managed code.
    /// </summary>
    public static void MicroBFloat16Taps(uint* a, nint lda, uint* b, int groups, float* c, nint ldcBytes, nint ldbBytes, nint stepBytes, int taps, nint* tapBytes, int rows = 6) =>
        ((delegate* unmanaged[SuppressGCTransition]<uint*, nint, uint*, nint, float*, nint, nint, nint, nint, nint*, void>)(s_code + s_bfloat16TapsOffsets[rows]))(a, lda, b, groups, c, ldcBytes, ldbBytes, stepBytes, taps, tapBytes);

    /// <summary><see cref="MicroBFloat16Taps"/> in portable vectors: <see cref="MicroBFloat16Twin"/> tap by tap.</summary>
    public static void MicroBFloat16TapsTwin(uint* a, nint lda, uint* b, int groups, float* c, nint ldcBytes, nint ldbBytes, nint stepBytes, int taps, nint* tapBytes, int rows = 6)
    {
        for (int t = 0; t < taps; t++) MicroBFloat16Twin(a + t, lda, (uint*)((byte*)b + tapBytes[t]), groups, c, ldcBytes, ldbBytes, stepBytes, rows);
    }

    /// <summary>
    /// <see cref="MicroBFloat16"/> (the strip's groups 128 bytes apart, a weight row's 4), or one tap of
    /// <see cref="MicroBFloat16Taps"/> (<paramref name="ldbBytes"/> and <paramref name="stepBytes"/> apart), for
    /// <paramref name="rows"/> rows, in portable vectors (the tests compare them, and
    /// run the GEMM's bfloat16 mode through this on CPUs without AVX512-BF16). Denormals are not flushed (the test values
    /// have none).
    /// </summary>
    public static void MicroBFloat16Twin(uint* a, nint lda, uint* b, int groups, float* c, nint ldcBytes, nint ldbBytes = 128, nint stepBytes = 4, int rows = 6)
    {
        var high = Vector512.Create(0xFFFF0000u);
        for (int j = 0; j < rows; j++)
        {
            float* row = (float*)((byte*)c + j * ldcBytes);
            var acc0 = Vector512.Load(row);
            var acc1 = Vector512.Load(row + 16);
            uint* wj = (uint*)((byte*)a + j * lda);
            for (int g = 0; g < groups; g++)
            {
                var w = Vector512.Create(*(uint*)((byte*)wj + g * stepBytes));
                var (wHigh, wLow) = ((w & high).AsSingle(), (w << 16).AsSingle());
                uint* bg = (uint*)((byte*)b + g * ldbBytes);
                var b0 = Vector512.Load(bg);
                var b1 = Vector512.Load(bg + 16);
                acc0 += (b0 & high).AsSingle() * wHigh;
                acc0 += (b0 << 16).AsSingle() * wLow;
                acc1 += (b1 & high).AsSingle() * wHigh;
                acc1 += (b1 << 16).AsSingle() * wLow;
            }
            acc0.Store(row);
            acc1.Store(row + 16);
        }
    }

    /// <summary>
    /// The row kernels' dot products at 512 bits (<see cref="IntegerMatMul"/> at few activation rows): <paramref name="count"/>
    /// int8 weight rows of <paramref name="k"/> bytes from <paramref name="q"/> against <paramref name="rows"/> (1, 2 or
    /// 4) uint8 code rows, row r at <c>u + r * ldu</c>: <c>lanes[16 (rows n + r) + l]</c> = the sum of lane l's products
    /// (four per 64-byte step, <c>vpdpbusd zmm</c>, exact int32 sums) for weight row n, the last partial step read
    /// through a byte mask (nothing read past the row). Only when <see cref="IsSupported"/>, with <paramref name="k"/>
    /// at least 64 and <paramref name="count"/> at least 1.
    /// </summary>
    public static void RowDots(byte* q, int k, byte* u, nint ldu, int* lanes, int count, int rows)
    {
        int steps = k / 64, tail = k - 64 * steps;
        nint code = s_code + s_rowDotOffsets[rows + (tail > 0 ? 4 : 0)];
        ulong mask = tail > 0 ? (1UL << tail) - 1 : 0;
        ((delegate* unmanaged[SuppressGCTransition]<byte*, nint, byte*, nint, int*, nint, nint, ulong, void>)code)(q, tail, u, ldu, lanes, steps, count, mask);
    }

    /// <summary>
    /// The direct W8A8 convolution's dot products with the output channels in lanes (<see cref="QuadConvolution"/>):
    /// for <paramref name="positions"/> positions j (1 to <see cref="QuadMaxAccumulators"/> / <paramref name="vectors"/>)
    /// and <paramref name="vectors"/> (1 or 2) vectors of 16 output channels, <c>c[j, 16 v + l]</c> = the sum over
    /// <paramref name="steps"/> steps s (at least 1) of <c>dot(x[j, s], w[s, v, l])</c>: four uint8 codes at
    /// <c>x + stepBytes[s] + 4 j</c> (one 32-bit value, broadcast) times lane l's four int8 weights of step s
    /// (<c>w + 64 (s V + v) + 4 l</c>), <c>vpdpbusd zmm</c>, exact int32 sums (no saturation); c is
    /// <c>[positions, 16 vectors]</c> int32, written whole. Only when <see cref="IsSupported"/>;
    /// <see cref="QuadDotsTwin"/> computes the same in portable vectors.
    /// </summary>
    public static void QuadDots(sbyte* w, nint steps, byte* x, nint* stepBytes, int* c, int positions, int vectors) =>
        ((delegate* unmanaged[SuppressGCTransition]<sbyte*, nint, byte*, nint*, int*, void>)(s_code + s_quadOffsets[vectors - 1, positions]))(w, steps, x, stepBytes, c);

    /// <summary><see cref="QuadDots"/> in portable vectors (the tests compare them).</summary>
    public static void QuadDotsTwin(sbyte* w, nint steps, byte* x, nint* stepBytes, int* c, int positions, int vectors)
    {
        for (int j = 0; j < positions; j++)
            for (int v = 0; v < vectors; v++)
            {
                var acc = Vector512<int>.Zero;
                for (nint s = 0; s < steps; s++)
                {
                    byte* quad = x + stepBytes[s] + 4 * j;
                    var weights = Vector512.Load((int*)(w + 64 * (s * vectors + v)));
                    for (int i = 0; i < 4; i++)
                        acc += (weights << (24 - 8 * i) >> 24) * quad[i]; // an arithmetic shift: byte i sign-extended
                }
                acc.Store(c + 16 * (j * vectors + v));
            }
    }

    /// <summary>
    /// <see cref="QuadDots"/> in bfloat16 (<see cref="PairLanesConvolution"/>): the same loop with <c>vdpbf16ps zmm</c>
    /// (AVX512-BF16) for <c>vpdpbusd</c>. Each position's 32-bit value at <c>x + stepBytes[s] + 4 j</c> (bytes) is a pair of
    /// bfloat16 (element 0 in the low half), broadcast against lane l's pair of step s (<c>w + 16 (s V + v) + l</c>);
    /// <c>c[j, 16 v + l]</c> are float32 sums from zero, each step adding the high halves' product, then the low
    /// halves' (each product exact, each addition rounded to nearest even; the instruction flushes denormal inputs and
    /// results to zero); c is <c>[positions, 16 vectors]</c>, written whole. Only when <see cref="BFloat16Supported"/>;
    /// <see cref="PairDotsTwin"/> computes the same in portable vectors.
    /// </summary>
    public static void PairDots(uint* w, nint steps, uint* x, nint* stepBytes, float* c, int positions, int vectors) =>
        ((delegate* unmanaged[SuppressGCTransition]<uint*, nint, uint*, nint*, float*, void>)(s_code + s_pairOffsets[vectors - 1, positions]))(w, steps, x, stepBytes, c);

    /// <summary><see cref="PairDots"/> in portable vectors (the tests compare them; denormals are not flushed).</summary>
    public static void PairDotsTwin(uint* w, nint steps, uint* x, nint* stepBytes, float* c, int positions, int vectors)
    {
        var high = Vector512.Create(0xFFFF0000u);
        for (int j = 0; j < positions; j++)
            for (int v = 0; v < vectors; v++)
            {
                var acc = Vector512<float>.Zero;
                for (nint s = 0; s < steps; s++)
                {
                    uint pair = *(uint*)((byte*)x + stepBytes[s] + 4 * j);
                    var weights = Vector512.Load(w + 16 * (s * vectors + v));
                    acc += (weights & high).AsSingle() * BitConverter.UInt32BitsToSingle(pair & 0xFFFF0000u);
                    acc += (weights << 16).AsSingle() * BitConverter.UInt32BitsToSingle(pair << 16);
                }
                acc.Store(c + 16 * (j * vectors + v));
            }
    }

    private static nint Build()
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64) return 0;
        if (Environment.GetEnvironmentVariable("QUANTSHARP_NATIVE_VNNI") == "0") return 0;
        // AVX-512 in use by .NET (the OS saves zmm state) and AVX512-VNNI: CPUID leaf 7, ECX bit 11.
        if (!Avx512BW.IsSupported || (X86Base.CpuId(7, 0).Ecx & (1 << 11)) == 0) return 0;
        byte[] code = Assemble();
        const int ProtRead = 1, ProtWrite = 2, ProtExec = 4, MapPrivate = 2, MapAnonymous = 0x20;
        nuint size = (nuint)((code.Length + 4095) & ~4095);
        try
        {
            nint page = MemoryMap(0, size, ProtRead | ProtWrite, MapPrivate | MapAnonymous, -1, 0);
            if (page == -1) return 0;
            code.CopyTo(new Span<byte>((void*)page, code.Length));
            return MemoryProtect(page, size, ProtRead | ProtExec) == 0 ? page : 0;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return 0; // a C library without mmap/mprotect under these names: the managed kernels run instead
        }
    }

    [LibraryImport("libc", EntryPoint = "mmap")]
    private static partial nint MemoryMap(nint address, nuint length, int protection, int flags, int fd, nint offset);

    [LibraryImport("libc", EntryPoint = "mprotect")]
    private static partial int MemoryProtect(nint address, nuint length, int protection);

    private const int Rdx = 2, Rsi = 6, Rdi = 7, R8 = 8, R9 = 9, R10 = 10, R11 = 11, NoIndex = -1;

    /// <summary>The micro-kernel's machine code at offset 0, then the row-dot kernels (<see cref="RowDots"/>), each at a 64-byte boundary.</summary>
    internal static byte[] Assemble()
    {
        var asm = new Assembler();
        AssembleMicro(asm, bfloat16: false);
        asm.AlignTo(64);
        s_bfloat16Offset = asm.Position;
        AssembleMicro(asm, bfloat16: true);
        for (int rows = 1; rows <= 6; rows++)
        {
            asm.AlignTo(64);
            s_bfloat16TapsOffsets[rows] = asm.Position;
            AssembleTaps(asm, rows);
        }
        for (int vectors = 1; vectors <= 2; vectors++)
            for (int positions = 1; positions * vectors <= QuadMaxAccumulators; positions++)
            {
                asm.AlignTo(64);
                s_quadOffsets[vectors - 1, positions] = asm.Position;
                AssembleQuad(asm, positions, vectors, bfloat16: false);
                asm.AlignTo(64);
                s_pairOffsets[vectors - 1, positions] = asm.Position;
                AssembleQuad(asm, positions, vectors, bfloat16: true);
            }
        foreach (bool tail in new[] { false, true })
            foreach (int rows in new[] { 1, 2, 4 })
            {
                asm.AlignTo(64);
                s_rowDotOffsets[rows + (tail ? 4 : 0)] = asm.Position;
                AssembleRowDots(asm, rows, tail);
            }
        return asm.ToArray();
    }

    /// <summary>
    /// <see cref="RowDots"/>: System V <c>rdi = q, rsi = tail bytes, rdx = u, rcx = ldu, r8 = lanes, r9 = whole
    /// steps</c>, then on the stack the count (into <c>r11</c>) and the tail's byte mask (into <c>k1</c>). Per weight row:
    /// accumulators <c>zmm0-3</c> zeroed, then per step the weight vector into <c>zmm8</c>, the code rows (<c>[r10]</c>,
    /// <c>[r10 + rcx]</c>, <c>[rbx]</c>, <c>[rbx + rcx]</c> with <c>r10 = u</c> and <c>rbx = u + 2 ldu</c>, advancing)
    /// into <c>zmm4-7</c> and one <c>vpdpbusd</c> per code row; with <paramref name="tail"/>, one more step of masked
    /// loads (<c>vmovdqu8 {k1}{z}</c>: masked-off bytes are zero and never read); the accumulators stored to
    /// <c>lanes</c>, <c>rdi</c> moved past the tail to the next weight row. <c>rax</c> counts the steps; <c>rbx</c> is
    /// saved and restored.
    /// </summary>
    private static void AssembleRowDots(Assembler asm, int rows, bool tail)
    {
        const int Rax = 0, Rcx = 1, Rbx = 3;
        (int Base, int Index)[] codeRows = [(R10, NoIndex), (R10, Rcx), (Rbx, NoIndex), (Rbx, Rcx)];
        asm.Push(Rbx);
        asm.LoadStackArgument(R11, 16); // the seventh argument, above the return address and rbx
        if (tail)
        {
            asm.LoadStackArgument(Rax, 24); // the eighth
            asm.MoveToMask1(Rax);
        }
        int row = asm.Position;
        for (int r = 0; r < rows; r++) asm.ZeroVector(r);
        asm.Move(R10, Rdx);
        if (rows > 2) asm.LeaScaled2(Rbx, R10, Rcx);
        asm.Move(Rax, R9);
        int step = asm.Position;
        asm.Vector(Assembler.LoadOp, 8, Rdi, NoIndex, 0);
        for (int r = 0; r < rows; r++) asm.Vector(Assembler.LoadOp, 4 + r, codeRows[r].Base, codeRows[r].Index, 0);
        for (int r = 0; r < rows; r++) asm.DotBytes(r, 4 + r, 8);
        asm.AddImmediate(Rdi, 64);
        asm.AddImmediate(R10, 64);
        if (rows > 2) asm.AddImmediate(Rbx, 64);
        asm.DecrementAndLoop(Rax, step);
        if (tail)
        {
            asm.MaskedByteLoad(8, Rdi, NoIndex);
            for (int r = 0; r < rows; r++) asm.MaskedByteLoad(4 + r, codeRows[r].Base, codeRows[r].Index);
            for (int r = 0; r < rows; r++) asm.DotBytes(r, 4 + r, 8);
            asm.Add(Rdi, Rsi);
        }
        for (int r = 0; r < rows; r++) asm.Vector(Assembler.StoreOp, r, R8, NoIndex, 64 * r);
        asm.AddImmediate(R8, 64 * rows);
        asm.DecrementAndLoop(R11, row);
        asm.Pop(Rbx);
        asm.Return();
    }

    /// <summary>
    /// <see cref="QuadDots"/>: System V <c>rdi = w, rsi = steps, rdx = x, rcx = stepBytes, r8 = c</c>. Accumulator
    /// <c>(j, v)</c> is <c>zmm(j V + v)</c>, zeroed; per step the step's offset into <c>rax</c> (plus x), the weight's
    /// vectors into <c>zmm30-31</c>, then per position its four codes broadcast into <c>zmm28</c> or <c>zmm29</c> (in
    /// turn, so consecutive positions do not wait on one register) and one <c>vpdpbusd</c> per vector; then
    /// <c>w += 64 V</c>, the table 8 bytes on. The accumulators are stored to c in order. With <paramref name="bfloat16"/>
    /// <see cref="PairDots"/>: <c>vdpbf16ps</c> for <c>vpdpbusd</c>.
    /// </summary>
    private static void AssembleQuad(Assembler asm, int positions, int vectors, bool bfloat16)
    {
        const int Rax = 0, Rcx = 1;
        int accumulators = positions * vectors;
        for (int a = 0; a < accumulators; a++) asm.ZeroVector(a);
        int step = asm.Position;
        asm.LoadQword(Rax, Rcx);
        asm.Add(Rax, Rdx);
        for (int v = 0; v < vectors; v++) asm.Vector(Assembler.LoadOp, 30 + v, Rdi, NoIndex, 64 * v);
        for (int j = 0; j < positions; j++)
        {
            int codes = 28 + j % 2;
            asm.Broadcast32(codes, Rax, NoIndex, 4 * j);
            for (int v = 0; v < vectors; v++)
            {
                if (bfloat16) asm.DotBFloat16(j * vectors + v, codes, 30 + v);
                else asm.DotBytes(j * vectors + v, codes, 30 + v);
            }
        }
        asm.AddImmediate(Rdi, 64 * vectors);
        asm.AddImmediate(Rcx, 8);
        asm.DecrementAndLoop(Rsi, step);
        for (int a = 0; a < accumulators; a++) asm.Vector(Assembler.StoreOp, a, R8, NoIndex, 64 * a);
        asm.Return();
    }

    /// <summary>
    /// The micro-kernel (see the class remarks), or with <paramref name="bfloat16"/> <see cref="MicroBFloat16"/> (the same
    /// loop, <c>vdpbf16ps</c> for <c>vpdpbusd</c>).
    /// </summary>
    private static void AssembleMicro(Assembler asm, bool bfloat16)
    {
        LoadAccumulators(asm, 6);
        PointWeightRows(asm);
        int skip = asm.JumpIfRcxZero();
        int loop = asm.Position;
        PairStep(asm, 6, bfloat16);
        asm.AddImmediate(Rdx, 128);
        asm.AddImmediate(Rdi, 4);
        asm.AddImmediate(R10, 4);
        asm.AddImmediate(R11, 4);
        asm.DecrementRcxAndLoop(loop);
        asm.PatchJump(skip);
        StoreAccumulators(asm, 6);
        asm.Return();
    }

    /// <summary>
    /// <see cref="MicroBFloat16Taps"/>: <see cref="AssembleMicro"/>'s loop with the strides from arguments, inside a loop
    /// over taps. System V: <c>rdi = a, rsi = lda, rdx = b, rcx = groups, r8 = c, r9 = ldcBytes</c>, then on the stack
    /// <c>ldbBytes</c> (into <c>rax</c>), <c>stepBytes</c> (<c>rbx</c>), the taps (<c>r15</c>) and the table of the taps'
    /// byte offsets (<c>r14</c>, advancing 8 a tap). Per tap the weight rows restart at <c>r12</c> (a, 4 bytes further
    /// each tap), the strip at <c>r13</c> (b) plus the tap's offset, the pair count at <c>rbp</c> (groups). The
    /// accumulators (two a row, <paramref name="rows"/> rows) are loaded before the first tap and stored after the last;
    /// <c>rbx, rbp, r12-r15</c> are saved and restored.
    /// </summary>
    private static void AssembleTaps(Assembler asm, int rows)
    {
        const int Rax = 0, Rcx = 1, Rbx = 3, Rbp = 5, R12 = 12, R13 = 13, R14 = 14, R15 = 15;
        int[] saved = [Rbx, Rbp, R12, R13, R14, R15];
        foreach (int r in saved) asm.Push(r);
        // Above the six saved registers and the return address: the seventh to tenth arguments.
        asm.LoadStackArgument(Rax, 56);
        asm.LoadStackArgument(Rbx, 64);
        asm.LoadStackArgument(R15, 72);
        asm.LoadStackArgument(R14, 80);
        asm.Move(Rbp, Rcx);
        asm.Move(R12, Rdi);
        asm.Move(R13, Rdx);
        LoadAccumulators(asm, rows);
        int skip = asm.JumpIfRcxZero();
        int tap = asm.Position;
        asm.Move(Rdi, R12);
        PointWeightRows(asm);
        asm.LoadQword(Rdx, R14);
        asm.Add(Rdx, R13);
        asm.Move(Rcx, Rbp);
        int loop = asm.Position;
        PairStep(asm, rows, bfloat16: true);
        asm.Add(Rdx, Rax);
        asm.Add(Rdi, Rbx);
        asm.Add(R10, Rbx);
        asm.Add(R11, Rbx);
        asm.DecrementRcxAndLoop(loop);
        asm.AddImmediate(R12, 4);
        asm.AddImmediate(R14, 8);
        asm.DecrementAndLoop(R15, tap);
        asm.PatchJump(skip);
        StoreAccumulators(asm, rows);
        for (int i = saved.Length - 1; i >= 0; i--) asm.Pop(saved[i]);
        asm.Return();
    }

    /// <summary>
    /// Accumulator row <paramref name="j"/>'s address: <c>[r8]</c>, <c>[r8 + r9]</c>, <c>[r10]</c>, <c>[r10 + r9]</c>,
    /// <c>[r11]</c>, <c>[r11 + r9]</c> with <c>r10 = r8 + 2 r9</c>, <c>r11 = r8 + 4 r9</c> (a method, not a table: the
    /// code is assembled while the class's static fields are still being initialized).
    /// </summary>
    private static (int Base, int Index) AccumulatorRow(int j) => ((j / 2) switch { 0 => R8, 1 => R10, _ => R11 }, j % 2 == 0 ? NoIndex : R9);

    /// <summary>Weight row <paramref name="j"/>'s the same way from <c>rdi</c> with the stride <c>rsi</c> (<see cref="PointWeightRows"/>).</summary>
    private static (int Base, int Index) WeightRow(int j) => ((j / 2) switch { 0 => Rdi, 1 => R10, _ => R11 }, j % 2 == 0 ? NoIndex : Rsi);

    /// <summary>Row j's two accumulators (<c>zmm(2j)</c>, <c>zmm(2j+1)</c>) from <c>c</c>'s row j (<see cref="AccumulatorRow"/>).</summary>
    private static void LoadAccumulators(Assembler asm, int rows) => MoveAccumulators(asm, rows, Assembler.LoadOp);

    /// <summary>Row j's two accumulators back to <c>c</c>'s row j.</summary>
    private static void StoreAccumulators(Assembler asm, int rows) => MoveAccumulators(asm, rows, Assembler.StoreOp);

    /// <summary><paramref name="rows"/> rows of accumulators loaded or stored (<paramref name="op"/>) at <see cref="AccumulatorRow"/>'s addresses.</summary>
    private static void MoveAccumulators(Assembler asm, int rows, int op)
    {
        asm.LeaScaled2(R10, R8, R9);
        asm.LeaScaled2(R11, R10, R9);
        for (int j = 0; j < rows; j++)
        {
            asm.Vector(op, 2 * j, AccumulatorRow(j).Base, AccumulatorRow(j).Index, 0);
            asm.Vector(op, 2 * j + 1, AccumulatorRow(j).Base, AccumulatorRow(j).Index, 64);
        }
    }

    /// <summary><c>r10 = rdi + 2 rsi</c>, <c>r11 = rdi + 4 rsi</c>: the weight rows of <see cref="WeightRow"/>.</summary>
    private static void PointWeightRows(Assembler asm)
    {
        asm.LeaScaled2(R10, Rdi, Rsi);
        asm.LeaScaled2(R11, R10, Rsi);
    }

    /// <summary>
    /// One group: the strip's two vectors at <c>[rdx]</c> into <c>zmm12-13</c>, then per weight row j its group broadcast
    /// into <c>zmm14</c> and multiplied into row j's accumulators (<c>vdpbf16ps</c> with <paramref name="bfloat16"/>, else
    /// <c>vpdpbusd</c>).
    /// </summary>
    private static void PairStep(Assembler asm, int rows, bool bfloat16)
    {
        asm.Vector(Assembler.LoadOp, 12, Rdx, NoIndex, 0);
        asm.Vector(Assembler.LoadOp, 13, Rdx, NoIndex, 64);
        for (int j = 0; j < rows; j++)
        {
            asm.Broadcast32(14, WeightRow(j).Base, WeightRow(j).Index);
            if (bfloat16)
            {
                asm.DotBFloat16(2 * j, 12, 14);
                asm.DotBFloat16(2 * j + 1, 13, 14);
            }
            else
            {
                asm.DotBytes(2 * j, 12, 14);
                asm.DotBytes(2 * j + 1, 13, 14);
            }
        }
    }

    /// <summary>
    /// The few x86-64 encodings the kernel needs (Intel SDM vol. 2, "EVEX encoding"). Memory operands are always
    /// <c>[base + index + disp32]</c> with a SIB byte, so no special cases (no compressed disp8, no rsp/r12/rbp/r13 rules).
    /// </summary>
    private sealed class Assembler
    {
        public const int LoadOp = 0x6F, StoreOp = 0x7F; // vmovdqu32 zmm, m512 / m512, zmm (EVEX.512.F3.0F.W0)
        private const int Map0F = 1, Map0F38 = 2, Prefix66 = 1, PrefixF3 = 2, PrefixF2 = 3;
        private readonly List<byte> _bytes = [];

        public int Position => _bytes.Count;

        public byte[] ToArray() => [.. _bytes];

        /// <summary><c>vmovdqu32</c> load or store of <c>zmm(reg)</c> at <c>[base + index + disp]</c>.</summary>
        public void Vector(int op, int reg, int baseReg, int index, int disp) => Evex(op, Map0F, PrefixF3, reg, 0, baseReg, index, disp);

        /// <summary><c>vpbroadcastd zmm(reg), dword [base + index]</c> (EVEX.512.66.0F38.W0 58).</summary>
        public void Broadcast32(int reg, int baseReg, int index, int disp = 0) => Evex(0x58, Map0F38, Prefix66, reg, 0, baseReg, index, disp);

        /// <summary><c>vpdpbusd zmm(acc), zmm(unsigned), zmm(signed)</c> (EVEX.512.66.0F38.W0 50): acc += 4 u8 x s8 products per lane.</summary>
        public void DotBytes(int acc, int unsignedBytes, int signedBytes)
        {
            EvexPrefix(Map0F38, Prefix66, acc, unsignedBytes, signedBytes, xBit: signedBytes >> 4);
            Emit(0x50, 0xC0 | (acc & 7) << 3 | (signedBytes & 7));
        }

        /// <summary><c>vdpbf16ps zmm(acc), zmm(left), zmm(right)</c> (EVEX.512.F3.0F38.W0 52): acc += 2 bfloat16 products per lane, in float32.</summary>
        public void DotBFloat16(int acc, int left, int right)
        {
            EvexPrefix(Map0F38, PrefixF3, acc, left, right, xBit: right >> 4);
            Emit(0x52, 0xC0 | (acc & 7) << 3 | (right & 7));
        }

        /// <summary><c>lea dst, [base + 2 * index]</c>.</summary>
        public void LeaScaled2(int dst, int baseReg, int index)
        {
            Rex(dst, index, baseReg);
            Emit(0x8D, 0x80 | (dst & 7) << 3 | 4, 1 << 6 | (index & 7) << 3 | (baseReg & 7));
            Disp32(0);
        }

        /// <summary><c>add reg, imm32</c>.</summary>
        public void AddImmediate(int reg, int value)
        {
            Rex(0, 0, reg);
            Emit(0x81, 0xC0 | (reg & 7));
            Disp32(value);
        }

        /// <summary><c>test rcx, rcx; jz</c> to a label patched later; returns the patch position.</summary>
        public int JumpIfRcxZero()
        {
            Emit(0x48, 0x85, 0xC9, 0x0F, 0x84);
            Disp32(0);
            return Position;
        }

        /// <summary>Points the jump ending at <paramref name="patch"/> here.</summary>
        public void PatchJump(int patch) => BitConverter.GetBytes(Position - patch).CopyTo(CollectionsMarshal.AsSpan(_bytes)[(patch - 4)..]);

        /// <summary><c>dec rcx; jnz target</c>.</summary>
        public void DecrementRcxAndLoop(int target)
        {
            Emit(0x48, 0xFF, 0xC9, 0x0F, 0x85);
            Disp32(target - (Position + 4));
        }

        /// <summary><c>kmovq k1, reg</c> (VEX.L0.F2.0F.W1 92; reg &lt; 8).</summary>
        public void MoveToMask1(int reg) => Emit(0xC4, 0xE1, 0xFB, 0x92, 0xC8 | (reg & 7));

        /// <summary><c>vmovdqu8 zmm(reg) {k1}{z}, [base + index]</c> (EVEX.512.F2.0F.W0 6F): bytes whose mask bit is clear are zero and not read.</summary>
        public void MaskedByteLoad(int reg, int baseReg, int index)
        {
            EvexPrefix(Map0F, PrefixF2, reg, 0, baseReg, xBit: index < 0 ? 0 : index >> 3, zeroMask1: true);
            Emit(LoadOp, 0x80 | (reg & 7) << 3 | 4, (index < 0 ? 4 : index & 7) << 3 | (baseReg & 7));
            Disp32(0);
        }

        /// <summary><c>push reg</c> (r8-r15 with REX.B).</summary>
        public void Push(int reg)
        {
            if (reg >= 8) Emit(0x41);
            Emit(0x50 | (reg & 7));
        }

        /// <summary><c>pop reg</c> (r8-r15 with REX.B).</summary>
        public void Pop(int reg)
        {
            if (reg >= 8) Emit(0x41);
            Emit(0x58 | (reg & 7));
        }

        /// <summary><c>mov dst, [base]</c> (64-bit; a SIB byte and a zero disp32, so any base).</summary>
        public void LoadQword(int dst, int baseReg)
        {
            Rex(dst, 0, baseReg);
            Emit(0x8B, 0x84 | (dst & 7) << 3, 4 << 3 | (baseReg & 7));
            Disp32(0);
        }

        /// <summary><c>mov dst, src</c> (64-bit).</summary>
        public void Move(int dst, int src)
        {
            Rex(src, 0, dst);
            Emit(0x89, 0xC0 | (src & 7) << 3 | (dst & 7));
        }

        /// <summary><c>add dst, src</c> (64-bit).</summary>
        public void Add(int dst, int src)
        {
            Rex(src, 0, dst);
            Emit(0x01, 0xC0 | (src & 7) << 3 | (dst & 7));
        }

        /// <summary><c>mov dst, [rsp + offset]</c> (64-bit, offset below 128).</summary>
        public void LoadStackArgument(int dst, int offset)
        {
            Rex(dst, 0, 0);
            Emit(0x8B, 0x44 | (dst & 7) << 3, 0x24, offset);
        }

        /// <summary><c>dec reg; jnz target</c> (64-bit).</summary>
        public void DecrementAndLoop(int reg, int target)
        {
            Rex(0, 0, reg);
            Emit(0xFF, 0xC8 | (reg & 7), 0x0F, 0x85);
            Disp32(target - (Position + 4));
        }

        /// <summary><c>vpxord zmm(reg), zmm(reg), zmm(reg)</c> (EVEX.512.66.0F.W0 EF).</summary>
        public void ZeroVector(int reg)
        {
            EvexPrefix(Map0F, Prefix66, reg, reg, reg, xBit: reg >> 4);
            Emit(0xEF, 0xC0 | (reg & 7) << 3 | (reg & 7));
        }

        /// <summary>Pads with <c>int3</c> to a multiple of <paramref name="bytes"/>.</summary>
        public void AlignTo(int bytes)
        {
            while (_bytes.Count % bytes != 0) _bytes.Add(0xCC);
        }

        /// <summary><c>vzeroupper; ret</c>.</summary>
        public void Return() => Emit(0xC5, 0xF8, 0x77, 0xC3);

        /// <summary>A 512-bit EVEX instruction whose r/m operand is <c>[base + index + disp32]</c>.</summary>
        private void Evex(int op, int map, int prefix, int reg, int vreg, int baseReg, int index, int disp)
        {
            EvexPrefix(map, prefix, reg, vreg, baseReg, xBit: index < 0 ? 0 : index >> 3);
            Emit(op, 0x80 | (reg & 7) << 3 | 4, (index < 0 ? 4 : index & 7) << 3 | (baseReg & 7));
            Disp32(disp);
        }

        /// <summary>EVEX: 62, then R X B R' 0 0 m m, W vvvv 1 p p, z L'L b V' aaa (R, X, B, R', vvvv, V' inverted).</summary>
        private void EvexPrefix(int map, int prefix, int reg, int vreg, int rm, int xBit, bool zeroMask1 = false)
        {
            int r = ~reg >> 3 & 1, x = ~xBit & 1, b = ~rm >> 3 & 1, rHigh = ~reg >> 4 & 1;
            Emit(0x62, r << 7 | x << 6 | b << 5 | rHigh << 4 | map, (~vreg & 15) << 3 | 1 << 2 | prefix,
                (zeroMask1 ? 0x81 : 0) | 2 << 5 | (~vreg >> 4 & 1) << 3);
        }

        /// <summary>REX.W with the high bits of the ModRM reg, SIB index and base/rm registers.</summary>
        private void Rex(int reg, int index, int rm) => Emit(0x48 | (reg >> 3 & 1) << 2 | (index >> 3 & 1) << 1 | (rm >> 3 & 1));

        private void Disp32(int value)
        {
            for (int i = 0; i < 4; i++) _bytes.Add((byte)(value >> (8 * i)));
        }

        private void Emit(params ReadOnlySpan<int> values)
        {
            foreach (int v in values) _bytes.Add((byte)v);
        }
    }
}
