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
/// <see cref="MicroBFloat16Strided"/>, the same with two strides as arguments) and the row kernels' dot
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

    /// <summary>Where the strided bfloat16 micro-kernel (<see cref="MicroBFloat16Strided"/>) starts in the code page (set by <see cref="Assemble"/>).</summary>
    private static int s_bfloat16StridedOffset;

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
    /// <see cref="MicroBFloat16"/> with the strip's groups <paramref name="ldbBytes"/> apart instead of 128 bytes and each
    /// weight row's groups <paramref name="stepBytes"/> apart instead of 4: the bfloat16 convolution that reads its strips
    /// in place (<see cref="PackedMatMul"/>'s pair images), where group g of a tap is channel pair g's plane, one plane
    /// after the last, and the weight's pair for it one pair of taps after the last. Only when
    /// <see cref="BFloat16Supported"/>; <see cref="MicroBFloat16Twin"/> with the two strides computes the same in managed code.
    /// </summary>
    public static void MicroBFloat16Strided(uint* a, nint lda, uint* b, int groups, float* c, nint ldcBytes, nint ldbBytes, nint stepBytes) =>
        ((delegate* unmanaged[SuppressGCTransition]<uint*, nint, uint*, nint, float*, nint, nint, nint, void>)(s_code + s_bfloat16StridedOffset))(a, lda, b, groups, c, ldcBytes, ldbBytes, stepBytes);

    /// <summary>
    /// <see cref="MicroBFloat16"/> (the strip's groups 128 bytes apart, a weight row's 4) or <see cref="MicroBFloat16Strided"/>
    /// (<paramref name="ldbBytes"/> and <paramref name="stepBytes"/> apart) in portable vectors (the tests compare them, and
    /// run the GEMM's bfloat16 mode through this on CPUs without AVX512-BF16). Denormals are not flushed (the test values
    /// have none).
    /// </summary>
    public static void MicroBFloat16Twin(uint* a, nint lda, uint* b, int groups, float* c, nint ldcBytes, nint ldbBytes = 128, nint stepBytes = 4)
    {
        var high = Vector512.Create(0xFFFF0000u);
        for (int j = 0; j < 6; j++)
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
        asm.AlignTo(64);
        s_bfloat16StridedOffset = asm.Position;
        AssembleMicro(asm, bfloat16: true, strided: true);
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
    /// The micro-kernel (see the class remarks), or with <paramref name="bfloat16"/> <see cref="MicroBFloat16"/> (the same
    /// loop, <c>vdpbf16ps</c> for <c>vpdpbusd</c>); with <paramref name="strided"/> the strip advances by the seventh
    /// argument (<see cref="MicroBFloat16Strided"/>'s <c>ldbBytes</c>, from the stack into <c>rax</c>) instead of 128 and
    /// the weight rows by the eighth (<c>stepBytes</c>, into <c>rbx</c>, saved and restored) instead of 4.
    /// </summary>
    private static void AssembleMicro(Assembler asm, bool bfloat16, bool strided = false)
    {
        const int Rax = 0, Rbx = 3;
        if (strided)
        {
            asm.Push(Rbx);
            asm.LoadStackArgument(Rax, 16); // the seventh argument, above the return address and rbx
            asm.LoadStackArgument(Rbx, 24); // the eighth
        }
        // Six rows at [r8], [r8 + r9], [r10], [r10 + r9], [r11], [r11 + r9] with r10 = r8 + 2 r9, r11 = r8 + 4 r9.
        (int Base, int Index)[] accRows = [(R8, NoIndex), (R8, R9), (R10, NoIndex), (R10, R9), (R11, NoIndex), (R11, R9)];
        asm.LeaScaled2(R10, R8, R9);
        asm.LeaScaled2(R11, R10, R9);
        for (int j = 0; j < 6; j++)
        {
            asm.Vector(Assembler.LoadOp, 2 * j, accRows[j].Base, accRows[j].Index, 0);
            asm.Vector(Assembler.LoadOp, 2 * j + 1, accRows[j].Base, accRows[j].Index, 64);
        }
        // Weight rows the same way from rdi with the stride rsi.
        (int Base, int Index)[] weightRows = [(Rdi, NoIndex), (Rdi, Rsi), (R10, NoIndex), (R10, Rsi), (R11, NoIndex), (R11, Rsi)];
        asm.LeaScaled2(R10, Rdi, Rsi);
        asm.LeaScaled2(R11, R10, Rsi);
        int skip = asm.JumpIfRcxZero();
        int loop = asm.Position;
        asm.Vector(Assembler.LoadOp, 12, Rdx, NoIndex, 0);
        asm.Vector(Assembler.LoadOp, 13, Rdx, NoIndex, 64);
        for (int j = 0; j < 6; j++)
        {
            asm.Broadcast32(14, weightRows[j].Base, weightRows[j].Index);
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
        if (strided)
        {
            asm.Add(Rdx, Rax);
            asm.Add(Rdi, Rbx);
            asm.Add(R10, Rbx);
            asm.Add(R11, Rbx);
        }
        else
        {
            asm.AddImmediate(Rdx, 128);
            asm.AddImmediate(Rdi, 4);
            asm.AddImmediate(R10, 4);
            asm.AddImmediate(R11, 4);
        }
        asm.DecrementRcxAndLoop(loop);
        asm.PatchJump(skip);
        asm.LeaScaled2(R10, R8, R9);
        asm.LeaScaled2(R11, R10, R9);
        for (int j = 0; j < 6; j++)
        {
            asm.Vector(Assembler.StoreOp, 2 * j, accRows[j].Base, accRows[j].Index, 0);
            asm.Vector(Assembler.StoreOp, 2 * j + 1, accRows[j].Base, accRows[j].Index, 64);
        }
        if (strided) asm.Pop(Rbx);
        asm.Return();
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
        public void Broadcast32(int reg, int baseReg, int index) => Evex(0x58, Map0F38, Prefix66, reg, 0, baseReg, index, 0);

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

        /// <summary><c>push reg</c> (reg &lt; 8).</summary>
        public void Push(int reg) => Emit(0x50 | reg);

        /// <summary><c>pop reg</c> (reg &lt; 8).</summary>
        public void Pop(int reg) => Emit(0x58 | reg);

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
