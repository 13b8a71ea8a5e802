using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QuantSharp.Kernels;

/// <summary>Stores of several vectors of one <see cref="IFloatWidth{TVec}"/>, shared by the float kernels' register tiles.</summary>
internal static unsafe class FloatStores
{
    /// <summary><paramref name="a"/>, <paramref name="b"/>, <paramref name="c"/>, <paramref name="d"/> into four consecutive vectors from <paramref name="p"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void StoreFour<TW, TVec>(TVec a, TVec b, TVec c, TVec d, float* p)
        where TW : IFloatWidth<TVec> where TVec : struct
    {
        int n = TW.Count;
        TW.Store(a, p);
        TW.Store(b, p + n);
        TW.Store(c, p + 2 * n);
        TW.Store(d, p + 3 * n);
    }
}

/// <summary>
/// One vector width for the float kernels: <typeparamref name="TVec"/> holds <see cref="Count"/> float32 lanes, and
/// the loads widen stored weights (int8, uint8, packed nibbles, IEEE half, bfloat16) into such lanes exactly.
/// Kernels are generic over the width, so one kernel body serves 512, 256 and 128 bits and the one-lane scalar width.
/// </summary>
/// <typeparam name="TVec">The vector type (<see cref="float"/> for the scalar width).</typeparam>
internal interface IFloatWidth<TVec> where TVec : struct
{
    /// <summary>Float lanes per vector.</summary>
    static abstract int Count { get; }

    /// <summary>All lanes 0.</summary>
    static abstract TVec Zero { get; }

    /// <summary>All lanes <paramref name="value"/>.</summary>
    static abstract TVec Create(float value);

    /// <summary><see cref="Count"/> floats.</summary>
    static abstract unsafe TVec Load(float* p);

    /// <summary>Stores <see cref="Count"/> floats.</summary>
    static abstract unsafe void Store(TVec v, float* p);

    /// <summary><c>a * b + c</c>, fused (one rounding) where the hardware has it.</summary>
    static abstract TVec MultiplyAdd(TVec a, TVec b, TVec c);

    /// <summary><c>a + b</c>, lane by lane.</summary>
    static abstract TVec Add(TVec a, TVec b);

    /// <summary>Sum of the lanes.</summary>
    static abstract float Sum(TVec v);

    /// <summary>
    /// The lane sums of four vectors at once, <c>(Sum(a), Sum(b), Sum(c), Sum(d))</c> each in its own order of
    /// additions (pairwise horizontal adds): about a third of the shuffles and adds of four <see cref="Sum"/>s.
    /// </summary>
    static abstract Vector128<float> Sum4(TVec a, TVec b, TVec c, TVec d);

    /// <summary><see cref="Count"/> int8 values as floats.</summary>
    static abstract unsafe TVec LoadSBytes(byte* p);

    /// <summary><see cref="Count"/> uint8 values as floats.</summary>
    static abstract unsafe TVec LoadBytes(byte* p);

    /// <summary>
    /// <see cref="Count"/> bytes of packed nibbles: low nibbles (elements 2j) and high nibbles (2j+1) as floats 0..15;
    /// with <paramref name="flip"/> each nibble is first XORed with 8 (two's complement <c>q</c> becomes <c>q + 8</c>).
    /// </summary>
    static abstract unsafe (TVec Low, TVec High) LoadNibbles(byte* p, bool flip);

    /// <summary>
    /// The per-group constants of <see cref="DecodeNibbles"/>: the scale and offset broadcast, or, where the width can
    /// look up 16 lanes at once, the group's 16 dequantized values <c>(u ^ flip) * scale + offset</c> indexed by the raw
    /// nibble <c>u</c> (with the same multiply-add, so both give the same bits).
    /// </summary>
    static abstract (TVec P, TVec Q) NibbleGroup(float scale, float offset, bool flip);

    /// <summary>
    /// <see cref="Count"/> bytes of packed nibbles, dequantized with the constants of <see cref="NibbleGroup"/>: the
    /// low nibbles (elements 2j) and the high nibbles (2j+1), each <c>(u ^ flip) * scale + offset</c>.
    /// </summary>
    static abstract unsafe (TVec Low, TVec High) DecodeNibbles(byte* p, bool flip, TVec groupP, TVec groupQ);

    /// <summary>
    /// <c>4 * Count</c> bytes of packed nibbles as 32-bit lanes for <see cref="NibbleFraction"/>: lane <c>j</c> holds
    /// elements <c>8j..8j+7</c>, element <c>8j+i</c> at bits <c>4i..4i+3</c>; int4 (<paramref name="signed"/>) nibbles
    /// XORed with 8 (once per eight nibbles), so that each code is <c>u = q + 8</c>.
    /// </summary>
    static abstract unsafe TVec LoadNibbleCodes(byte* p, bool signed);

    /// <summary>
    /// The nibble at bit <paramref name="shift"/> of each lane of <see cref="LoadNibbleCodes"/> as <c>1 + u / 16</c>, exact:
    /// the code placed in the top of the mantissa of 1.0 (a shift and an and-or, no conversion).
    /// </summary>
    static abstract TVec NibbleFraction(TVec words, [ConstantExpected(Min = 0, Max = 28)] int shift);

    /// <summary>
    /// <c>Count / lanesPerGroup</c> consecutive values from <paramref name="v"/> (exactly those are read), each on
    /// <paramref name="lanesPerGroup"/> neighbouring lanes (1, 2, 4 or 8; <c>Count</c> or more: <c>v[0]</c> everywhere): the
    /// scales of the groups of a nibble step, on the lanes that hold their elements.
    /// </summary>
    static abstract unsafe TVec GroupLanes(float* v, int lanesPerGroup);

    /// <summary><see cref="GroupLanes"/> of integers (zero points), converted to float.</summary>
    static abstract unsafe TVec GroupLaneIntegers(int* v, int lanesPerGroup);

    /// <summary>
    /// <c>2 * Count</c> IEEE half values as floats (exact): the even elements and the odd ones. One plain load; each
    /// 32-bit lane holds an even element in its low and an odd one in its high 16 bits, so no widening shuffle.
    /// </summary>
    static abstract unsafe (TVec Even, TVec Odd) LoadHalfPairs(ushort* p);

    /// <summary>
    /// <see cref="LoadHalfPairs"/> for halves known to be finite (no exponent of 31, <see cref="HalfKernel.AllFinite"/>):
    /// exact for them, without the infinity and NaN select (three or four vector operations per vector instead of seven or eight).
    /// </summary>
    static abstract unsafe (TVec Even, TVec Odd) LoadFiniteHalfPairs(ushort* p);

    /// <summary>
    /// <see cref="LoadFiniteHalfPairs"/> times 2^-112: the halves' bits moved into float position without the multiply
    /// that re-biases the exponent (<see cref="HalfLanes"/>), exact for finite halves (normal ones become normal floats,
    /// subnormal ones subnormal floats). Multiplied with activations scaled by 2^112 (<see cref="HalfLanes.ScaleUp"/>)
    /// the products are exactly those of the plain decode. The scalar width converts exactly and scales.
    /// </summary>
    static abstract unsafe (TVec Even, TVec Odd) LoadHalfPairsOver2Pow112(ushort* p);

    /// <summary>
    /// Folds the <c>2 * Count</c> halves at <paramref name="p"/> into <paramref name="seen"/> (which starts at
    /// <see cref="Zero"/>) so that <see cref="AnyNonFiniteHalf"/> tells whether any of them was an infinity or a NaN:
    /// <see cref="HalfKernel.AllFinite"/>'s test (every bit but the exponent's set, an unsigned 16-bit maximum), for a
    /// kernel that decodes the same halves with <see cref="LoadFiniteHalfPairs"/> or <see cref="LoadHalfPairsOver2Pow112"/>
    /// and tests them as it goes. The scalar width folds nothing: its decodes are the exact conversion.
    /// </summary>
    static abstract unsafe TVec FoldHalfExponents(TVec seen, ushort* p);

    /// <summary>Whether the halves folded into <paramref name="seen"/> by <see cref="FoldHalfExponents"/> held an infinity or a NaN.</summary>
    static abstract bool AnyNonFiniteHalf(TVec seen);

    /// <summary><c>2 * Count</c> bfloat16 values as floats (exact): the even elements and the odd ones, as <see cref="LoadHalfPairs"/>.</summary>
    static abstract unsafe (TVec Even, TVec Odd) LoadBFloat16Pairs(ushort* p);

    /// <summary>
    /// The even and odd elements of <c>2 * Count</c> consecutive values (as the nibble and half-pair loads give them)
    /// back in order: <c>Low = even[0], odd[0], even[1], odd[1], ...</c>, <c>High</c> the second half. Moves only.
    /// </summary>
    static abstract (TVec Low, TVec High) Interleave(TVec even, TVec odd);
}

/// <summary>512-bit lanes (AVX-512F/BW; the dispatcher checks <see cref="IsSupported"/>).</summary>
internal readonly struct Float512 : IFloatWidth<Vector512<float>>
{
    public static bool IsSupported => Simd.Use512 && Avx512F.IsSupported && Avx512BW.IsSupported;
    public static int Count => 16;

    /// <summary><c>vpermt2ps</c> picks lane j of the pair (even, odd) from index <c>j / 2 + 16 * (j % 2)</c>, plus 8 for the high half.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (Vector512<float> Low, Vector512<float> High) Interleave(Vector512<float> even, Vector512<float> odd)
    {
        var j = Vector512<int>.Indices;
        var index = (j >>> 1) + ((j & Vector512.Create(1)) << 4);
        return (Avx512F.PermuteVar16x32x2(even, index, odd), Avx512F.PermuteVar16x32x2(even, index + Vector512.Create(8), odd));
    }
    public static Vector512<float> Zero => Vector512<float>.Zero;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Create(float value) => Vector512.Create(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe Vector512<float> Load(float* p) => Vector512.Load(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe void Store(Vector512<float> v, float* p) => v.Store(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> MultiplyAdd(Vector512<float> a, Vector512<float> b, Vector512<float> c) => Avx512F.FusedMultiplyAdd(a, b, c);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Add(Vector512<float> a, Vector512<float> b) => a + b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Sum(Vector512<float> v) => Vector512.Sum(v);

    /// <summary>Each vector's halves added, then <see cref="Float256.Sum4"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Sum4(Vector512<float> a, Vector512<float> b, Vector512<float> c, Vector512<float> d) =>
        Float256.Sum4(a.GetLower() + a.GetUpper(), b.GetLower() + b.GetUpper(), c.GetLower() + c.GetUpper(), d.GetLower() + d.GetUpper());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector512<float> LoadSBytes(byte* p) => Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)p)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector512<float> LoadBytes(byte* p) => Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(p)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (Vector512<float> Low, Vector512<float> High) LoadNibbles(byte* p, bool flip)
    {
        var b = Vector128.Load(p);
        if (flip) b ^= Vector128.Create((byte)0x88);
        var v = Avx512F.ConvertToVector512Int32(b);
        return (Avx512F.ConvertToVector512Single(v & Vector512.Create(15)), Avx512F.ConvertToVector512Single(v >>> 4));
    }

    /// <summary>The 16 dequantized values of a group, indexed by the raw nibble (<c>vpermps</c> then decodes with one lookup).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (Vector512<float> P, Vector512<float> Q) NibbleGroup(float scale, float offset, bool flip)
    {
        var u = Vector512<int>.Indices;
        if (flip) u ^= Vector512.Create(8);
        return (Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(u), Vector512.Create(scale), Vector512.Create(offset)), default);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (Vector512<float> Low, Vector512<float> High) DecodeNibbles(byte* p, bool flip, Vector512<float> groupP, Vector512<float> groupQ)
    {
        // vpermps reads the low 4 bits of each index: the byte itself selects its low nibble's value.
        var v = Avx512F.ConvertToVector512Int32(Vector128.Load(p));
        return (Avx512F.PermuteVar16x32(groupP, v), Avx512F.PermuteVar16x32(groupP, v >>> 4));
    }

    /// <summary>
    /// The 16 dequantized values <c>(q - zeroPoint) * scale</c> of a group of int4 (<paramref name="signed"/>) or uint4,
    /// indexed by the raw nibble (int4: 0..7 then -8..-1 for nibbles 0..15), exactly as the specification
    /// (<see cref="WeightView.Dequantized"/>): one multiply per group.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> NibbleLookup(float scale, int zeroPoint, bool signed)
    {
        var q = signed
            ? Vector512.Create(0f, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1)
            : Vector512.Create(0f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        if (zeroPoint != 0) q -= Vector512.Create((float)zeroPoint); // exact: small integers
        return q * Vector512.Create(scale);
    }

    /// <summary><see cref="LoadNibbleCodes"/> with the nibbles raw, for the lookup (<see cref="NibbleAt"/>, <see cref="NibbleLookup"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector512<float> LoadNibbleWords(byte* p) => Vector512.Load((float*)p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector512<float> LoadNibbleCodes(byte* p, bool signed)
        => signed ? (Vector512.Load((uint*)p) ^ Vector512.Create(0x8888_8888u)).AsSingle() : Vector512.Load((float*)p);

    /// <summary>A shift and one <c>vpternlogd</c> (<c>(a &amp; mask) | one</c>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> NibbleFraction(Vector512<float> words, [ConstantExpected(Min = 0, Max = 28)] int shift)
    {
        var w = words.AsUInt32();
        var placed = shift <= 19 ? w << (19 - shift) : w >>> (shift - 19);
        return Avx512F.TernaryLogic(placed, Vector512.Create(0x0078_0000u), Vector512.Create(0x3F80_0000u), 0xEA).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector512<float> GroupLanes(float* v, int lanesPerGroup) => lanesPerGroup switch
    {
        1 => Vector512.Load(v),
        2 => Avx512F.PermuteVar16x32(Vector256.Load(v).ToVector512Unsafe(), Vector512<int>.Indices >>> 1),
        4 => Avx512F.PermuteVar16x32(Vector128.Load(v).ToVector256Unsafe().ToVector512Unsafe(), Vector512<int>.Indices >>> 2),
        8 => Avx512F.PermuteVar16x32(Vector128.CreateScalarUnsafe(*(double*)v).AsSingle().ToVector256Unsafe().ToVector512Unsafe(), Vector512<int>.Indices >>> 3),
        _ => Vector512.Create(*v),
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector512<float> GroupLaneIntegers(int* v, int lanesPerGroup) => Avx512F.ConvertToVector512Single(GroupLanes((float*)v, lanesPerGroup).AsInt32());

    /// <summary>
    /// The nibble at bit <paramref name="shift"/> of each lane of <see cref="LoadNibbleWords"/>, looked up in the group's
    /// <see cref="NibbleLookup"/>: one <c>vpermps</c> (plus a shift), which reads bits 3:0 of each index, so no mask.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> NibbleAt(Vector512<float> words, [ConstantExpected(Min = 0, Max = 28)] int shift, Vector512<float> lookup)
        => Avx512F.PermuteVar16x32(lookup, shift == 0 ? words.AsInt32() : words.AsInt32() >>> shift);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (Vector512<float> Even, Vector512<float> Odd) LoadHalfPairs(ushort* p)
    {
        var w = Vector512.Load((uint*)p);
        return (HalfLanes.FromHalf(w << 16), HalfLanes.FromHalf(w));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (Vector512<float> Even, Vector512<float> Odd) LoadFiniteHalfPairs(ushort* p)
    {
        var w = Vector512.Load((uint*)p).AsInt32();
        return (HalfLanes.FromFiniteHalf(w << 16), HalfLanes.FromFiniteHalf(w));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (Vector512<float> Even, Vector512<float> Odd) LoadHalfPairsOver2Pow112(ushort* p)
    {
        var w = Vector512.Load((uint*)p).AsInt32();
        return (HalfLanes.FiniteHalfBits(w << 16), HalfLanes.FiniteHalfBits(w));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector512<float> FoldHalfExponents(Vector512<float> seen, ushort* p)
        => Vector512.Max(seen.AsUInt16(), Vector512.Load(p) | Vector512.Create(HalfKernel.NotExponent)).AsSingle();

    public static bool AnyNonFiniteHalf(Vector512<float> seen) => Vector512.EqualsAny(seen.AsUInt16(), Vector512<ushort>.AllBitsSet);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (Vector512<float> Even, Vector512<float> Odd) LoadBFloat16Pairs(ushort* p)
    {
        var w = Vector512.Load((uint*)p);
        return ((w << 16).AsSingle(), (w & Vector512.Create(0xFFFF_0000u)).AsSingle());
    }
}

/// <summary>256-bit lanes (AVX2 + FMA; the dispatcher checks <see cref="IsSupported"/>).</summary>
internal readonly struct Float256 : IFloatWidth<Vector256<float>>
{
    public static bool IsSupported => Simd.Use256 && Avx2.IsSupported && Fma.IsSupported;
    public static int Count => 8;

    /// <summary>In-lane unpacks give pairs 0-1 | 4-5 and 2-3 | 6-7; two 128-bit permutes put the halves in order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (Vector256<float> Low, Vector256<float> High) Interleave(Vector256<float> even, Vector256<float> odd)
    {
        var low = Avx.UnpackLow(even, odd);
        var high = Avx.UnpackHigh(even, odd);
        return (Avx.Permute2x128(low, high, 0x20), Avx.Permute2x128(low, high, 0x31));
    }
    public static Vector256<float> Zero => Vector256<float>.Zero;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Create(float value) => Vector256.Create(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe Vector256<float> Load(float* p) => Vector256.Load(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe void Store(Vector256<float> v, float* p) => v.Store(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> MultiplyAdd(Vector256<float> a, Vector256<float> b, Vector256<float> c) => Fma.MultiplyAdd(a, b, c);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Add(Vector256<float> a, Vector256<float> b) => a + b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Sum(Vector256<float> v) => Vector256.Sum(v);

    /// <summary>Three in-lane horizontal adds (<c>vhaddps</c>) leave each 128-bit half holding the four partial sums; the halves are added.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Sum4(Vector256<float> a, Vector256<float> b, Vector256<float> c, Vector256<float> d)
    {
        var h = Avx.HorizontalAdd(Avx.HorizontalAdd(a, b), Avx.HorizontalAdd(c, d));
        return h.GetLower() + h.GetUpper();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector256<float> LoadSBytes(byte* p) => Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32((sbyte*)p));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector256<float> LoadBytes(byte* p) => Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(p));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (Vector256<float> Low, Vector256<float> High) LoadNibbles(byte* p, bool flip)
    {
        var b = Vector128.CreateScalarUnsafe(*(ulong*)p).AsByte();
        if (flip) b ^= Vector128.Create((byte)0x88);
        var v = Avx2.ConvertToVector256Int32(b);
        return (Avx.ConvertToVector256Single(v & Vector256.Create(15)), Avx.ConvertToVector256Single(v >>> 4));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (Vector256<float> P, Vector256<float> Q) NibbleGroup(float scale, float offset, bool flip) => (Create(scale), Create(offset));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (Vector256<float> Low, Vector256<float> High) DecodeNibbles(byte* p, bool flip, Vector256<float> groupP, Vector256<float> groupQ)
    {
        var (lo, hi) = LoadNibbles(p, flip);
        return (MultiplyAdd(lo, groupP, groupQ), MultiplyAdd(hi, groupP, groupQ));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector256<float> LoadNibbleCodes(byte* p, bool signed)
        => signed ? (Vector256.Load((uint*)p) ^ Vector256.Create(0x8888_8888u)).AsSingle() : Vector256.Load((float*)p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> NibbleFraction(Vector256<float> words, [ConstantExpected(Min = 0, Max = 28)] int shift)
    {
        var w = words.AsUInt32();
        var placed = shift <= 19 ? w << (19 - shift) : w >>> (shift - 19);
        return ((placed & Vector256.Create(0x0078_0000u)) | Vector256.Create(0x3F80_0000u)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector256<float> GroupLanes(float* v, int lanesPerGroup) => lanesPerGroup switch
    {
        1 => Vector256.Load(v),
        2 => Avx2.PermuteVar8x32(Vector128.Load(v).ToVector256Unsafe(), Vector256<int>.Indices >>> 1),
        4 => Avx2.PermuteVar8x32(Vector128.CreateScalarUnsafe(*(double*)v).AsSingle().ToVector256Unsafe(), Vector256<int>.Indices >>> 2),
        _ => Vector256.Create(*v),
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector256<float> GroupLaneIntegers(int* v, int lanesPerGroup) => Avx.ConvertToVector256Single(GroupLanes((float*)v, lanesPerGroup).AsInt32());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (Vector256<float> Even, Vector256<float> Odd) LoadHalfPairs(ushort* p)
    {
        var w = Vector256.Load((uint*)p);
        return (HalfLanes.FromHalf(w << 16), HalfLanes.FromHalf(w));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (Vector256<float> Even, Vector256<float> Odd) LoadFiniteHalfPairs(ushort* p)
    {
        var w = Vector256.Load((uint*)p).AsInt32();
        return (HalfLanes.FromFiniteHalf(w << 16), HalfLanes.FromFiniteHalf(w));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (Vector256<float> Even, Vector256<float> Odd) LoadHalfPairsOver2Pow112(ushort* p)
    {
        var w = Vector256.Load((uint*)p).AsInt32();
        return (HalfLanes.FiniteHalfBits(w << 16), HalfLanes.FiniteHalfBits(w));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector256<float> FoldHalfExponents(Vector256<float> seen, ushort* p)
        => Vector256.Max(seen.AsUInt16(), Vector256.Load(p) | Vector256.Create(HalfKernel.NotExponent)).AsSingle();

    public static bool AnyNonFiniteHalf(Vector256<float> seen) => Vector256.EqualsAny(seen.AsUInt16(), Vector256<ushort>.AllBitsSet);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (Vector256<float> Even, Vector256<float> Odd) LoadBFloat16Pairs(ushort* p)
    {
        var w = Vector256.Load((uint*)p);
        return ((w << 16).AsSingle(), (w & Vector256.Create(0xFFFF_0000u)).AsSingle());
    }
}

/// <summary>128-bit lanes (SSE4.1; the dispatcher checks <see cref="IsSupported"/>). Multiply-add is two roundings without FMA.</summary>
internal readonly struct Float128 : IFloatWidth<Vector128<float>>
{
    public static bool IsSupported => Simd.Use128 && Sse41.IsSupported;
    public static int Count => 4;

    /// <summary><c>unpcklps</c> and <c>unpckhps</c>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (Vector128<float> Low, Vector128<float> High) Interleave(Vector128<float> even, Vector128<float> odd) =>
        (Sse.UnpackLow(even, odd), Sse.UnpackHigh(even, odd));
    public static Vector128<float> Zero => Vector128<float>.Zero;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> Create(float value) => Vector128.Create(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe Vector128<float> Load(float* p) => Vector128.Load(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe void Store(Vector128<float> v, float* p) => v.Store(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> MultiplyAdd(Vector128<float> a, Vector128<float> b, Vector128<float> c) => a * b + c;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> Add(Vector128<float> a, Vector128<float> b) => a + b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Sum(Vector128<float> v) => Vector128.Sum(v);

    /// <summary>Three horizontal adds (<c>haddps</c>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Sum4(Vector128<float> a, Vector128<float> b, Vector128<float> c, Vector128<float> d) =>
        Sse3.HorizontalAdd(Sse3.HorizontalAdd(a, b), Sse3.HorizontalAdd(c, d));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector128<float> LoadSBytes(byte* p) => Sse2.ConvertToVector128Single(Sse41.ConvertToVector128Int32((sbyte*)p));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector128<float> LoadBytes(byte* p) => Sse2.ConvertToVector128Single(Sse41.ConvertToVector128Int32(p));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (Vector128<float> Low, Vector128<float> High) LoadNibbles(byte* p, bool flip)
    {
        var b = Vector128.CreateScalarUnsafe(*(uint*)p).AsByte();
        if (flip) b ^= Vector128.Create((byte)0x88);
        var v = Sse41.ConvertToVector128Int32(b);
        return (Sse2.ConvertToVector128Single(v & Vector128.Create(15)), Sse2.ConvertToVector128Single(v >>> 4));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (Vector128<float> P, Vector128<float> Q) NibbleGroup(float scale, float offset, bool flip) => (Create(scale), Create(offset));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (Vector128<float> Low, Vector128<float> High) DecodeNibbles(byte* p, bool flip, Vector128<float> groupP, Vector128<float> groupQ)
    {
        var (lo, hi) = LoadNibbles(p, flip);
        return (MultiplyAdd(lo, groupP, groupQ), MultiplyAdd(hi, groupP, groupQ));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector128<float> LoadNibbleCodes(byte* p, bool signed)
        => signed ? (Vector128.Load((uint*)p) ^ Vector128.Create(0x8888_8888u)).AsSingle() : Vector128.Load((float*)p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> NibbleFraction(Vector128<float> words, [ConstantExpected(Min = 0, Max = 28)] int shift)
    {
        var w = words.AsUInt32();
        var placed = shift <= 19 ? w << (19 - shift) : w >>> (shift - 19);
        return ((placed & Vector128.Create(0x0078_0000u)) | Vector128.Create(0x3F80_0000u)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector128<float> GroupLanes(float* v, int lanesPerGroup) => lanesPerGroup switch
    {
        1 => Vector128.Load(v),
        2 => Vector128.Create(v[0], v[0], v[1], v[1]),
        _ => Vector128.Create(*v),
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector128<float> GroupLaneIntegers(int* v, int lanesPerGroup) => Sse2.ConvertToVector128Single(GroupLanes((float*)v, lanesPerGroup).AsInt32());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (Vector128<float> Even, Vector128<float> Odd) LoadHalfPairs(ushort* p)
    {
        var w = Vector128.Load((uint*)p);
        return (HalfLanes.FromHalf(w << 16), HalfLanes.FromHalf(w));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (Vector128<float> Even, Vector128<float> Odd) LoadFiniteHalfPairs(ushort* p)
    {
        var w = Vector128.Load((uint*)p).AsInt32();
        return (HalfLanes.FromFiniteHalf(w << 16), HalfLanes.FromFiniteHalf(w));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (Vector128<float> Even, Vector128<float> Odd) LoadHalfPairsOver2Pow112(ushort* p)
    {
        var w = Vector128.Load((uint*)p).AsInt32();
        return (HalfLanes.FiniteHalfBits(w << 16), HalfLanes.FiniteHalfBits(w));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector128<float> FoldHalfExponents(Vector128<float> seen, ushort* p)
        => Vector128.Max(seen.AsUInt16(), Vector128.Load(p) | Vector128.Create(HalfKernel.NotExponent)).AsSingle();

    public static bool AnyNonFiniteHalf(Vector128<float> seen) => Vector128.EqualsAny(seen.AsUInt16(), Vector128<ushort>.AllBitsSet);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (Vector128<float> Even, Vector128<float> Odd) LoadBFloat16Pairs(ushort* p)
    {
        var w = Vector128.Load((uint*)p);
        return ((w << 16).AsSingle(), (w & Vector128.Create(0xFFFF_0000u)).AsSingle());
    }
}

/// <summary>One lane: plain scalar code, the path when no vector width may be used.</summary>
internal readonly struct Float1 : IFloatWidth<float>
{
    public static int Count => 1;
    public static (float Low, float High) Interleave(float even, float odd) => (even, odd);
    public static float Zero => 0f;
    public static float Create(float value) => value;
    public static unsafe float Load(float* p) => *p;
    public static unsafe void Store(float v, float* p) => *p = v;
    public static float MultiplyAdd(float a, float b, float c) => a * b + c;
    public static float Add(float a, float b) => a + b;
    public static float Sum(float v) => v;
    public static Vector128<float> Sum4(float a, float b, float c, float d) => Vector128.Create(a, b, c, d);
    public static unsafe float LoadSBytes(byte* p) => *(sbyte*)p;
    public static unsafe float LoadBytes(byte* p) => *p;
    public static unsafe (float Low, float High) LoadNibbles(byte* p, bool flip)
    {
        int b = flip ? *p ^ 0x88 : *p;
        return (b & 15, b >> 4);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (float P, float Q) NibbleGroup(float scale, float offset, bool flip) => (Create(scale), Create(offset));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (float Low, float High) DecodeNibbles(byte* p, bool flip, float groupP, float groupQ)
    {
        var (lo, hi) = LoadNibbles(p, flip);
        return (MultiplyAdd(lo, groupP, groupQ), MultiplyAdd(hi, groupP, groupQ));
    }
    public static unsafe float LoadNibbleCodes(byte* p, bool signed) => BitConverter.UInt32BitsToSingle(signed ? *(uint*)p ^ 0x8888_8888u : *(uint*)p);
    public static float NibbleFraction(float words, [ConstantExpected(Min = 0, Max = 28)] int shift)
        => BitConverter.UInt32BitsToSingle((((BitConverter.SingleToUInt32Bits(words) >> shift) & 15) << 19) | 0x3F80_0000u);
    public static unsafe float GroupLanes(float* v, int lanesPerGroup) => *v;
    public static unsafe float GroupLaneIntegers(int* v, int lanesPerGroup) => *v;

    public static unsafe (float Even, float Odd) LoadHalfPairs(ushort* p) => (HalfKernel.FromHalfBits(p[0]), HalfKernel.FromHalfBits(p[1]));
    public static unsafe (float Even, float Odd) LoadFiniteHalfPairs(ushort* p) => LoadHalfPairs(p);
    public static unsafe (float Even, float Odd) LoadHalfPairsOver2Pow112(ushort* p) => (HalfKernel.FromHalfBits(p[0]) * HalfLanes.Over2Pow112, HalfKernel.FromHalfBits(p[1]) * HalfLanes.Over2Pow112);
    public static unsafe float FoldHalfExponents(float seen, ushort* p) => seen;
    public static bool AnyNonFiniteHalf(float seen) => false;
    public static unsafe (float Even, float Odd) LoadBFloat16Pairs(ushort* p) => (HalfKernel.FromBFloat16Bits(p[0]), HalfKernel.FromBFloat16Bits(p[1]));
}

/// <summary>
/// IEEE half bits held in the upper 16 bits of each 32-bit lane (the lower 16 bits are ignored) to float32, exactly as
/// <see cref="HalfKernel.FromHalfBits"/>: seven vector operations per lane vector.
/// </summary>
internal static class HalfLanes
{
    // Magnitude bits (bits 30:16) shifted into float position and scaled by 2^112 re-bias the exponent (and normalize subnormals,
    // exactly); infinities and NaNs (exponent 31) get the float exponent 255 with their mantissa.
    private const float Rebias = 5.192296858534828e33f; // 2^112

    /// <summary>2^-112 (a normal float): <see cref="IFloatWidth{TVec}.LoadHalfPairsOver2Pow112"/>'s factor.</summary>
    internal const float Over2Pow112 = 1.9259299443872359e-34f;

    /// <summary>
    /// <paramref name="count"/> floats times 2^112 into <paramref name="destination"/>; true when every one has a magnitude
    /// below 2^16, so that every product is exact (none overflows; subnormal ones become normal), false when one is larger,
    /// infinite or NaN (the products are then not to be used).
    /// </summary>
    public static unsafe bool ScaleUp(float* x, float* destination, int count)
    {
        var limit = new System.Numerics.Vector<float>(65536f);
        var inRange = System.Numerics.Vector<int>.AllBitsSet;
        int i = 0;
        for (; i + System.Numerics.Vector<float>.Count <= count; i += System.Numerics.Vector<float>.Count)
        {
            var v = System.Numerics.Vector.Load(x + i);
            inRange &= System.Numerics.Vector.LessThan(System.Numerics.Vector.Abs(v), limit);
            System.Numerics.Vector.Store(v * Rebias, destination + i);
        }
        bool exact = inRange == System.Numerics.Vector<int>.AllBitsSet;
        for (; i < count; i++)
        {
            exact &= Math.Abs(x[i]) < 65536f;
            destination[i] = x[i] * Rebias;
        }
        return exact;
    }

    /// <summary>The finite half in the high 16 bits of each lane times 2^-112: <see cref="FromFiniteHalf(Vector512{int})"/> without its multiply.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> FiniteHalfBits(Vector512<int> h) => ((h >> 3) & Vector512.Create(unchecked((int)0x8FFF_E000))).AsSingle();

    /// <summary><see cref="FiniteHalfBits(Vector512{int})"/> on 8 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> FiniteHalfBits(Vector256<int> h) => ((h >> 3) & Vector256.Create(unchecked((int)0x8FFF_E000))).AsSingle();

    /// <summary><see cref="FiniteHalfBits(Vector512{int})"/> on 4 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> FiniteHalfBits(Vector128<int> h) => ((h >> 3) & Vector128.Create(unchecked((int)0x8FFF_E000))).AsSingle();

    /// <summary>
    /// The half in the high 16 bits of each lane, which must be finite: an arithmetic shift by 3 puts its sign at bit 31
    /// and its magnitude at bits 27:13 (the mask drops the sign's copies and the low half), and 2^112 re-biases.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> FromFiniteHalf(Vector512<int> h) =>
        ((h >> 3) & Vector512.Create(unchecked((int)0x8FFF_E000))).AsSingle() * Vector512.Create(Rebias);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> FromHalf(Vector512<uint> h)
    {
        var mag = (h >>> 3) & Vector512.Create(0x0FFF_E000u);
        var finite = mag.AsSingle() * Vector512.Create(Rebias);
        var special = (mag | Vector512.Create(0x7F80_0000u)).AsSingle();
        var r = Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(mag, Vector512.Create(0x0F80_0000u)).AsSingle(), special, finite);
        return Vector512.ConditionalSelect(Vector512.Create(0x8000_0000u), h, r.AsUInt32()).AsSingle();
    }

    /// <summary><see cref="FromFiniteHalf(Vector512{int})"/> on 8 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> FromFiniteHalf(Vector256<int> h) =>
        ((h >> 3) & Vector256.Create(unchecked((int)0x8FFF_E000))).AsSingle() * Vector256.Create(Rebias);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> FromHalf(Vector256<uint> h)
    {
        var mag = (h >>> 3) & Vector256.Create(0x0FFF_E000u);
        var finite = mag.AsSingle() * Vector256.Create(Rebias);
        var special = (mag | Vector256.Create(0x7F80_0000u)).AsSingle();
        var r = Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(mag, Vector256.Create(0x0F80_0000u)).AsSingle(), special, finite);
        return Vector256.ConditionalSelect(Vector256.Create(0x8000_0000u), h, r.AsUInt32()).AsSingle();
    }

    /// <summary><see cref="FromFiniteHalf(Vector512{int})"/> on 4 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> FromFiniteHalf(Vector128<int> h) =>
        ((h >> 3) & Vector128.Create(unchecked((int)0x8FFF_E000))).AsSingle() * Vector128.Create(Rebias);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> FromHalf(Vector128<uint> h)
    {
        var mag = (h >>> 3) & Vector128.Create(0x0FFF_E000u);
        var finite = mag.AsSingle() * Vector128.Create(Rebias);
        var special = (mag | Vector128.Create(0x7F80_0000u)).AsSingle();
        var r = Vector128.ConditionalSelect(Vector128.GreaterThanOrEqual(mag, Vector128.Create(0x0F80_0000u)).AsSingle(), special, finite);
        return Vector128.ConditionalSelect(Vector128.Create(0x8000_0000u), h, r.AsUInt32()).AsSingle();
    }
}
