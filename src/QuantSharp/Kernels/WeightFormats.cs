using System.Runtime.CompilerServices;

namespace QuantSharp.Kernels;

/// <summary>How a weight matrix is stored, row by row (row <c>n</c> holds the reduction axis <c>k</c>).</summary>
internal enum WeightFormat
{
    /// <summary>int8, one byte per element.</summary>
    Int8,
    /// <summary>uint8, one byte per element.</summary>
    UInt8,
    /// <summary>int4, two per byte: element 2j in the low nibble, 2j+1 in the high nibble, two's complement.</summary>
    Int4,
    /// <summary>uint4, packed as <see cref="Int4"/>.</summary>
    UInt4,
    /// <summary>IEEE half, two bytes per element, no scale.</summary>
    Float16,
    /// <summary>bfloat16, two bytes per element, no scale.</summary>
    BFloat16,
}

/// <summary>
/// A weight matrix <c>[Rows, Cols]</c> read straight from its buffers (tensor memory; nothing is copied):
/// <c>w[n, k] = (q[n, k] - zeroPoint[n, g]) * scale[n, g]</c> with <c>g = k / GroupSize</c> for integer formats,
/// the stored value for float formats. Per-channel is one group per row (<c>GroupSize = Cols</c>), per-tensor one
/// group with <see cref="ScaleRowStride"/> 0.
/// </summary>
/// <remarks>The memory behind the pointers must stay alive and unmoved while kernels run (tensor memory does).</remarks>
internal readonly unsafe struct WeightView
{
    /// <summary>Wraps the buffers; validates the geometry (not the values).</summary>
    public WeightView(WeightFormat format, int rows, int cols, byte* data, int groupSize = 0, float* scale = null, int* zeroPoint = null, int scaleRowStride = -1)
    {
        if (rows < 0 || cols < 0) throw new ArgumentException($"Weight shape [{rows}, {cols}] is negative.");
        Format = format;
        Rows = rows;
        Cols = cols;
        Data = data;
        if (IsFloat(format))
        {
            GroupSize = Math.Max(cols, 1);
            Scale = null;
            ZeroPoint = null;
            ScaleRowStride = 0;
            return;
        }
        if (scale == null) throw new ArgumentException($"{format} weights need scales.");
        GroupSize = groupSize <= 0 ? Math.Max(cols, 1) : groupSize;
        if (cols % GroupSize != 0) throw new ArgumentException($"Group size {GroupSize} does not divide the reduction length {cols}.");
        if (IsPacked(format) && (cols % 2 != 0 || GroupSize % 2 != 0))
            throw new ArgumentException($"Packed 4-bit weights need an even reduction length and group size, got {cols} and {GroupSize}.");
        Scale = scale;
        ZeroPoint = zeroPoint;
        ScaleRowStride = scaleRowStride < 0 ? GroupsPerRow : scaleRowStride;
    }

    public WeightFormat Format { get; }
    public int Rows { get; }
    public int Cols { get; }
    public byte* Data { get; }
    public int GroupSize { get; }
    public float* Scale { get; }
    public int* ZeroPoint { get; }

    /// <summary>Scales between consecutive rows: <see cref="GroupsPerRow"/>, or 0 when one scale serves every row (per-tensor).</summary>
    public int ScaleRowStride { get; }

    public int GroupsPerRow
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Cols / GroupSize;
    }

    /// <summary>Bytes of one stored row.</summary>
    public nint RowBytes
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Format switch
        {
            WeightFormat.Int4 or WeightFormat.UInt4 => Cols / 2,
            WeightFormat.Float16 or WeightFormat.BFloat16 => (nint)Cols * 2,
            _ => Cols,
        };
    }

    public static bool IsFloat(WeightFormat f) => f is WeightFormat.Float16 or WeightFormat.BFloat16;

    public static bool IsPacked(WeightFormat f) => f is WeightFormat.Int4 or WeightFormat.UInt4;

    public static bool IsInteger8(WeightFormat f) => f is WeightFormat.Int8 or WeightFormat.UInt8;

    /// <summary>Rows <c>first..first + count - 1</c> as a weight of their own (the same buffers, from that row on).</summary>
    public WeightView RowRange(int first, int count)
    {
        if (first < 0 || count < 0 || first + count > Rows) throw new ArgumentOutOfRangeException(nameof(first), $"Rows {first}..{first + count - 1} are outside the weight's {Rows} rows.");
        nint scaleOffset = (nint)first * ScaleRowStride;
        return new WeightView(Format, count, Cols, Data + first * RowBytes, GroupSize, Scale == null ? null : Scale + scaleOffset,
            ZeroPoint == null ? null : ZeroPoint + scaleOffset, ScaleRowStride);
    }

    /// <summary>Scale and zero point of row <paramref name="n"/>, group <paramref name="g"/> (1 and 0 for float formats).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public (float Scale, int ZeroPoint) Params(int n, int g)
    {
        if (Scale == null) return (1f, 0);
        nint i = (nint)n * ScaleRowStride + g;
        return (Scale[i], ZeroPoint == null ? 0 : ZeroPoint[i]);
    }

    /// <summary>Stored integer (or float) value of element <paramref name="k"/> of row <paramref name="n"/>, unscaled.</summary>
    public float Stored(int n, int k)
    {
        byte* row = Data + n * RowBytes;
        switch (Format)
        {
            case WeightFormat.Int8: return (sbyte)row[k];
            case WeightFormat.UInt8: return row[k];
            case WeightFormat.Float16: return HalfKernel.FromHalfBits(((ushort*)row)[k]);
            case WeightFormat.BFloat16: return HalfKernel.FromBFloat16Bits(((ushort*)row)[k]);
        }
        int nibble = (row[k >> 1] >> ((k & 1) * 4)) & 15;
        return Format == WeightFormat.Int4 && nibble >= 8 ? nibble - 16 : nibble;
    }

    /// <summary>
    /// The specification of dequantization: <c>(q - zeroPoint) * scale</c> in float32 (as <see cref="QuantizeKernel.DequantizeScalar(ReadOnlySpan{sbyte}, float, float, Span{float})"/>).
    /// </summary>
    public float Dequantized(int n, int k)
    {
        var (s, z) = Params(n, k / GroupSize);
        float q = Stored(n, k);
        return IsFloat(Format) ? q : (q - z) * s;
    }
}

/// <summary>A kernel run on a weight read in place (<see cref="Tensors.WeightLayout"/>'s <c>WithWeightView</c>).</summary>
internal unsafe delegate void WeightViewAction(in WeightView weight);

/// <summary>
/// A weight format as seen by the generic kernels: decodes a chunk of <c>2 * Count</c> elements into two vectors of
/// dequantized weights <c>q * scale + offset</c> (<c>offset = -zeroPoint * scale</c>, adjusted by <see cref="OffsetBias"/>).
/// </summary>
internal interface IWeightDecoder
{
    /// <summary>
    /// True when a chunk's two vectors hold the even and the odd elements (packed nibbles, half pairs) rather than the
    /// first and second half: the activations are then laid out the same way within each chunk.
    /// </summary>
    static abstract bool Deinterleaved { get; }

    /// <summary>Added to the zero point before the offset is formed (8 for int4: nibbles are read as <c>q + 8</c>; by default 0).</summary>
    static virtual int OffsetBias
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => 0;
    }

    /// <summary>
    /// True when <see cref="Decode"/> and <see cref="One"/> give the stored integers themselves and the kernel applies
    /// each row's scale and zero point to the row's sums (<see cref="ByteIntegers{TB}"/>); by default false.
    /// </summary>
    static virtual bool Unscaled
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => false;
    }

    /// <summary>
    /// True for the decoders that read float16 without the select for infinities and NaNs (<see cref="FiniteHalfDecoder"/>,
    /// <see cref="ScaledHalfDecoder"/>): a kernel that runs them on rows not tested first tests the halves as it decodes
    /// them (<see cref="IFloatWidth{TVec}.FoldHalfExponents"/>); by default false.
    /// </summary>
    static virtual bool AssumesFiniteHalves
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => false;
    }

    /// <summary>The constants <see cref="Decode"/> needs for one group with this scale and offset (by default both broadcast).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static virtual (TVec P, TVec Q) Prepare<TW, TVec>(float scale, float offset)
        where TW : IFloatWidth<TVec> where TVec : struct => (TW.Create(scale), TW.Create(offset));

    /// <summary>Decodes elements <c>[k, k + 2 * TW.Count)</c> of <paramref name="row"/> with the group constants of <see cref="Prepare"/>.</summary>
    static abstract unsafe (TVec A, TVec B) Decode<TW, TVec>(byte* row, int k, TVec groupP, TVec groupQ)
        where TW : IFloatWidth<TVec> where TVec : struct;

    /// <summary>The value <c>q + OffsetBias</c> of element <paramref name="k"/> (scalar remainders).</summary>
    static abstract unsafe float One(byte* row, int k);
}

internal readonly struct Int8Decoder : IWeightDecoder
{
    public static bool Deinterleaved => false;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (TVec A, TVec B) Decode<TW, TVec>(byte* row, int k, TVec groupP, TVec groupQ)
        where TW : IFloatWidth<TVec> where TVec : struct
        => (TW.MultiplyAdd(TW.LoadSBytes(row + k), groupP, groupQ), TW.MultiplyAdd(TW.LoadSBytes(row + k + TW.Count), groupP, groupQ));

    public static unsafe float One(byte* row, int k) => (sbyte)row[k];
}

/// <summary>
/// The stored integers of int8 (<typeparamref name="TB"/> = <see cref="Int8Decoder"/>) or uint8 weights, each vector
/// by one widening load: for one scale per row the scale is applied to the row's sums instead, once per output, which
/// saves a multiply-add per weight vector (<c>QuantizedMatMul.Pass</c>).
/// </summary>
internal readonly struct ByteIntegers<TB> : IWeightDecoder where TB : IWeightDecoder
{
    public static bool Deinterleaved => false;
    public static bool Unscaled => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (TVec A, TVec B) Decode<TW, TVec>(byte* row, int k, TVec groupP, TVec groupQ)
        where TW : IFloatWidth<TVec> where TVec : struct
        => typeof(TB) == typeof(Int8Decoder)
            ? (TW.LoadSBytes(row + k), TW.LoadSBytes(row + k + TW.Count))
            : (TW.LoadBytes(row + k), TW.LoadBytes(row + k + TW.Count));

    public static unsafe float One(byte* row, int k) => TB.One(row, k);
}

internal readonly struct UInt8Decoder : IWeightDecoder
{
    public static bool Deinterleaved => false;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (TVec A, TVec B) Decode<TW, TVec>(byte* row, int k, TVec groupP, TVec groupQ)
        where TW : IFloatWidth<TVec> where TVec : struct
        => (TW.MultiplyAdd(TW.LoadBytes(row + k), groupP, groupQ), TW.MultiplyAdd(TW.LoadBytes(row + k + TW.Count), groupP, groupQ));

    public static unsafe float One(byte* row, int k) => row[k];
}

/// <summary>
/// Packed nibbles, uint4 (<see cref="ISignedness.Signed"/> false) or int4 in two's complement: a signed nibble <c>u</c> holds
/// <c>q = (u ^ 8) - 8</c>, so it is read as <c>u ^ 8 = q + 8</c> and the 8 goes into the offset.
/// </summary>
internal readonly struct NibbleDecoder<TSign> : IWeightDecoder where TSign : struct, ISignedness
{
    public static bool Deinterleaved => true;
    public static int OffsetBias
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => TSign.Signed ? 8 : 0;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (TVec P, TVec Q) Prepare<TW, TVec>(float scale, float offset)
        where TW : IFloatWidth<TVec> where TVec : struct => TW.NibbleGroup(scale, offset, TSign.Signed);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (TVec A, TVec B) Decode<TW, TVec>(byte* row, int k, TVec groupP, TVec groupQ)
        where TW : IFloatWidth<TVec> where TVec : struct
        => TW.DecodeNibbles(row + (k >> 1), TSign.Signed, groupP, groupQ);

    public static unsafe float One(byte* row, int k) => ((row[k >> 1] >> ((k & 1) * 4)) & 15) ^ OffsetBias;
}

/// <summary>Compile-time signedness of packed nibbles.</summary>
internal interface ISignedness
{
    static abstract bool Signed { get; }
}

internal readonly struct SignedNibbles : ISignedness
{
    public static bool Signed
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => true;
    }
}

internal readonly struct UnsignedNibbles : ISignedness
{
    public static bool Signed
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => false;
    }
}

internal readonly struct HalfDecoder : IWeightDecoder
{
    public static bool Deinterleaved => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (TVec A, TVec B) Decode<TW, TVec>(byte* row, int k, TVec groupP, TVec groupQ)
        where TW : IFloatWidth<TVec> where TVec : struct
        => TW.LoadHalfPairs((ushort*)row + k);

    public static unsafe float One(byte* row, int k) => HalfKernel.FromHalfBits(((ushort*)row)[k]);
}

/// <summary><see cref="HalfDecoder"/> for weights without infinities or NaNs (<see cref="HalfKernel.AllFinite"/>), the same values.</summary>
internal readonly struct FiniteHalfDecoder : IWeightDecoder
{
    public static bool Deinterleaved => true;
    public static bool AssumesFiniteHalves => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (TVec A, TVec B) Decode<TW, TVec>(byte* row, int k, TVec groupP, TVec groupQ)
        where TW : IFloatWidth<TVec> where TVec : struct
        => TW.LoadFiniteHalfPairs((ushort*)row + k);

    public static unsafe float One(byte* row, int k) => HalfDecoder.One(row, k);
}

/// <summary>
/// <see cref="FiniteHalfDecoder"/>'s values times 2^-112 (<see cref="IFloatWidth{TVec}.LoadHalfPairsOver2Pow112"/>),
/// for activations scaled by 2^112 (<see cref="HalfLanes.ScaleUp"/>): the same products, one multiply fewer per vector.
/// </summary>
internal readonly struct ScaledHalfDecoder : IWeightDecoder
{
    public static bool Deinterleaved => true;
    public static bool AssumesFiniteHalves => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (TVec A, TVec B) Decode<TW, TVec>(byte* row, int k, TVec groupP, TVec groupQ)
        where TW : IFloatWidth<TVec> where TVec : struct
        => TW.LoadHalfPairsOver2Pow112((ushort*)row + k);

    public static unsafe float One(byte* row, int k) => HalfDecoder.One(row, k) * HalfLanes.Over2Pow112;
}

internal readonly struct BFloat16Decoder : IWeightDecoder
{
    public static bool Deinterleaved => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe (TVec A, TVec B) Decode<TW, TVec>(byte* row, int k, TVec groupP, TVec groupQ)
        where TW : IFloatWidth<TVec> where TVec : struct
        => TW.LoadBFloat16Pairs((ushort*)row + k);

    public static unsafe float One(byte* row, int k) => HalfKernel.FromBFloat16Bits(((ushort*)row)[k]);
}
