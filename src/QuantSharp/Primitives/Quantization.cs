using System.Runtime.InteropServices;
using QuantSharp.Kernels;

namespace QuantSharp.Primitives;

/// <summary>
/// Quantize, dequantize and fake-quantize float32 spans, with PyTorch's arithmetic (float32, round half to even):
/// <c>q = clamp(round(x * (1f / scale)) + zeroPoint, qmin, qmax)</c>, <c>x' = (q - zeroPoint) * scale</c>.
/// </summary>
/// <remarks>
/// <para>One arithmetic for every granularity: the reciprocal of the scale first, then the product, as
/// <c>torch.quantize_per_tensor</c>/<c>_per_channel</c>, PyTorch's fake-quantize kernels and torchao's
/// <c>quantize_affine</c> (per-group) compute it. <c>round(x / scale)</c> is a different function: at exact ties
/// (<c>x / scale = k + 0.5</c> exactly) the product with the rounded reciprocal can land just beside the tie and round
/// to the other neighbour; the reference data (<c>reference.safetensors</c> per-tensor/per-channel, <c>groups.safetensors</c>
/// per-group) is matched bit for bit by the product only.</para>
/// <para>Per-tensor overloads take one scale and zero point. Blocked overloads cover per-channel and per-group
/// quantization: element <c>k</c> uses parameter <c>(k / blockLength) % scale.Length</c>. For a tensor viewed as
/// <c>[outer, C, inner]</c> with channel axis <c>C</c>, pass <c>blockLength = inner</c> and <c>C</c> scales; for groups
/// of <c>G</c> along the last axis, pass <c>blockLength = G</c> and one scale per group.</para>
/// <para>NaN inputs quantize to <c>qmin</c>. Large inputs are processed on several threads.</para>
/// </remarks>
public static class Quantization
{
    private const int ParallelThreshold = 1 << 18;
    private const int ChunkElements = 1 << 16;

    /// <summary>Quantizes <paramref name="source"/> to signed 8-bit (or narrower signed) integers.</summary>
    /// <param name="source">Input values.</param>
    /// <param name="scale">Positive finite scale.</param>
    /// <param name="zeroPoint">Zero point, within <paramref name="range"/>.</param>
    /// <param name="range">Integer range; must lie within [-128, 127].</param>
    /// <param name="destination">Receives one value per input.</param>
    /// <exception cref="ArgumentException">A parameter is invalid or <paramref name="destination"/> is too short.</exception>
    public static void Quantize(ReadOnlySpan<float> source, float scale, int zeroPoint, QuantRange range, Span<sbyte> destination)
        => Quantize(source, Math.Max(source.Length, 1), [scale], [zeroPoint], range, destination);

    /// <summary>Quantizes <paramref name="source"/> to unsigned 8-bit (or narrower unsigned) integers.</summary>
    /// <param name="source">Input values.</param>
    /// <param name="scale">Positive finite scale.</param>
    /// <param name="zeroPoint">Zero point, within <paramref name="range"/>.</param>
    /// <param name="range">Integer range; must lie within [0, 255].</param>
    /// <param name="destination">Receives one value per input.</param>
    /// <exception cref="ArgumentException">A parameter is invalid or <paramref name="destination"/> is too short.</exception>
    public static void Quantize(ReadOnlySpan<float> source, float scale, int zeroPoint, QuantRange range, Span<byte> destination)
        => Quantize(source, Math.Max(source.Length, 1), [scale], [zeroPoint], range, destination);

    /// <summary>Quantizes with one scale and zero point per block (per-channel / per-group) to signed integers.</summary>
    /// <param name="source">Input values.</param>
    /// <param name="blockLength">Consecutive elements sharing one parameter.</param>
    /// <param name="scale">Scales; element <c>k</c> uses <c>scale[(k / blockLength) % scale.Length]</c>.</param>
    /// <param name="zeroPoint">Zero points, same length as <paramref name="scale"/>, or empty for all zeros.</param>
    /// <param name="range">Integer range; must lie within [-128, 127].</param>
    /// <param name="destination">Receives one value per input.</param>
    /// <exception cref="ArgumentException">A parameter is invalid or <paramref name="destination"/> is too short.</exception>
    public static void Quantize(ReadOnlySpan<float> source, int blockLength, ReadOnlySpan<float> scale, ReadOnlySpan<int> zeroPoint,
        QuantRange range, Span<sbyte> destination)
    {
        CheckRange(range, -128, 127, "sbyte");
        QuantizeCore(source, blockLength, scale, zeroPoint, range, destination);
    }

    /// <summary>Quantizes with one scale and zero point per block (per-channel / per-group) to unsigned integers.</summary>
    /// <param name="source">Input values.</param>
    /// <param name="blockLength">Consecutive elements sharing one parameter.</param>
    /// <param name="scale">Scales; element <c>k</c> uses <c>scale[(k / blockLength) % scale.Length]</c>.</param>
    /// <param name="zeroPoint">Zero points, same length as <paramref name="scale"/>, or empty for all zeros.</param>
    /// <param name="range">Integer range; must lie within [0, 255].</param>
    /// <param name="destination">Receives one value per input.</param>
    /// <exception cref="ArgumentException">A parameter is invalid or <paramref name="destination"/> is too short.</exception>
    public static void Quantize(ReadOnlySpan<float> source, int blockLength, ReadOnlySpan<float> scale, ReadOnlySpan<int> zeroPoint,
        QuantRange range, Span<byte> destination)
    {
        CheckRange(range, 0, 255, "byte");
        QuantizeCore(source, blockLength, scale, zeroPoint, range, MemoryMarshal.Cast<byte, sbyte>(destination));
    }

    /// <summary>Quantizes then dequantizes (PyTorch's fake quantization), per tensor.</summary>
    /// <param name="source">Input values.</param>
    /// <param name="scale">Positive finite scale.</param>
    /// <param name="zeroPoint">Zero point, within <paramref name="range"/>.</param>
    /// <param name="range">Integer range.</param>
    /// <param name="destination">Receives <c>(q - zeroPoint) * scale</c>; may be the same memory as <paramref name="source"/>.</param>
    /// <exception cref="ArgumentException">A parameter is invalid or <paramref name="destination"/> is too short.</exception>
    public static void FakeQuantize(ReadOnlySpan<float> source, float scale, int zeroPoint, QuantRange range, Span<float> destination)
        => FakeQuantize(source, Math.Max(source.Length, 1), [scale], [zeroPoint], range, destination);

    /// <summary>Quantizes then dequantizes with one scale and zero point per block.</summary>
    /// <param name="source">Input values.</param>
    /// <param name="blockLength">Consecutive elements sharing one parameter.</param>
    /// <param name="scale">Scales; element <c>k</c> uses <c>scale[(k / blockLength) % scale.Length]</c>.</param>
    /// <param name="zeroPoint">Zero points, same length as <paramref name="scale"/>, or empty for all zeros.</param>
    /// <param name="range">Integer range.</param>
    /// <param name="destination">Receives <c>(q - zeroPoint) * scale</c>; may be the same memory as <paramref name="source"/>.</param>
    /// <exception cref="ArgumentException">A parameter is invalid or <paramref name="destination"/> is too short.</exception>
    public static void FakeQuantize(ReadOnlySpan<float> source, int blockLength, ReadOnlySpan<float> scale, ReadOnlySpan<int> zeroPoint,
        QuantRange range, Span<float> destination)
    {
        CheckArgs(source.Length, blockLength, scale, zeroPoint, range, destination.Length);
        if (scale.Length == 1 && source.Length > 0) blockLength = source.Length; // one parameter: one block
        var (inv, zp) = Prepare(scale, zeroPoint);
        for (long b = 0, k = 0; k < source.Length; b++, k += blockLength)
        {
            int p = (int)(b % scale.Length);
            int len = (int)Math.Min(blockLength, source.Length - k);
            QuantizeKernel.FakeQuantize(source.Slice((int)k, len), scale[p], inv[p], zp[p], range.QMin, range.QMax, destination.Slice((int)k, len));
        }
    }

    /// <summary>Dequantizes signed integers per tensor: <c>(q - zeroPoint) * scale</c> in float32.</summary>
    /// <param name="source">Quantized values.</param>
    /// <param name="scale">Scale.</param>
    /// <param name="zeroPoint">Zero point.</param>
    /// <param name="destination">Receives one float per value.</param>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is too short.</exception>
    public static void Dequantize(ReadOnlySpan<sbyte> source, float scale, int zeroPoint, Span<float> destination)
        => Dequantize(source, Math.Max(source.Length, 1), [scale], [zeroPoint], destination);

    /// <summary>Dequantizes unsigned integers per tensor: <c>(q - zeroPoint) * scale</c> in float32.</summary>
    /// <param name="source">Quantized values.</param>
    /// <param name="scale">Scale.</param>
    /// <param name="zeroPoint">Zero point.</param>
    /// <param name="destination">Receives one float per value.</param>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is too short.</exception>
    public static void Dequantize(ReadOnlySpan<byte> source, float scale, int zeroPoint, Span<float> destination)
        => Dequantize(source, Math.Max(source.Length, 1), [scale], [zeroPoint], destination);

    /// <summary>Dequantizes signed integers with one scale and zero point per block.</summary>
    /// <param name="source">Quantized values.</param>
    /// <param name="blockLength">Consecutive elements sharing one parameter.</param>
    /// <param name="scale">Scales; element <c>k</c> uses <c>scale[(k / blockLength) % scale.Length]</c>.</param>
    /// <param name="zeroPoint">Zero points, same length as <paramref name="scale"/>, or empty for all zeros.</param>
    /// <param name="destination">Receives one float per value.</param>
    /// <exception cref="ArgumentException">A parameter is invalid or <paramref name="destination"/> is too short.</exception>
    public static void Dequantize(ReadOnlySpan<sbyte> source, int blockLength, ReadOnlySpan<float> scale, ReadOnlySpan<int> zeroPoint, Span<float> destination)
        => DequantizeCore(source, blockLength, scale, zeroPoint, destination);

    /// <summary>Dequantizes unsigned integers with one scale and zero point per block.</summary>
    /// <param name="source">Quantized values.</param>
    /// <param name="blockLength">Consecutive elements sharing one parameter.</param>
    /// <param name="scale">Scales; element <c>k</c> uses <c>scale[(k / blockLength) % scale.Length]</c>.</param>
    /// <param name="zeroPoint">Zero points, same length as <paramref name="scale"/>, or empty for all zeros.</param>
    /// <param name="destination">Receives one float per value.</param>
    /// <exception cref="ArgumentException">A parameter is invalid or <paramref name="destination"/> is too short.</exception>
    public static void Dequantize(ReadOnlySpan<byte> source, int blockLength, ReadOnlySpan<float> scale, ReadOnlySpan<int> zeroPoint, Span<float> destination)
        => DequantizeCore(source, blockLength, scale, zeroPoint, destination);

    private static void DequantizeCore<T>(ReadOnlySpan<T> source, int blockLength, ReadOnlySpan<float> scale, ReadOnlySpan<int> zeroPoint,
        Span<float> destination) where T : unmanaged, System.Numerics.INumberBase<T>
    {
        CheckArgs(source.Length, blockLength, scale, zeroPoint, null, destination.Length);
        if (blockLength == 1 && scale.Length > 1 && source.Length > 0)
        {
            // One parameter per element, cycling (e.g. per-channel on the last axis).
            for (int k = 0, p = 0; k < source.Length; k++, p = p + 1 == scale.Length ? 0 : p + 1)
                destination[k] = (float.CreateTruncating(source[k]) - (zeroPoint.IsEmpty ? 0 : zeroPoint[p])) * scale[p];
            return;
        }
        DequantizeBlocks(source, blockLength, scale, zeroPoint, destination);
    }

    private static unsafe void DequantizeBlocks<T>(ReadOnlySpan<T> source, int blockLength, ReadOnlySpan<float> scale, ReadOnlySpan<int> zeroPoint,
        Span<float> destination) where T : unmanaged
    {
        if (source.IsEmpty) return;
        float[] s = scale.ToArray();
        float[] z = new float[scale.Length];
        for (int i = 0; i < z.Length; i++) z[i] = zeroPoint.IsEmpty ? 0 : zeroPoint[i];
        int n = source.Length, channels = s.Length;
        if (channels == 1) blockLength = n; // one parameter: one block
        long chunk = Math.Min(blockLength, ChunkElements);
        long chunksPerBlock = (blockLength + chunk - 1) / chunk;
        long blocks = (n + (long)blockLength - 1) / blockLength;
        fixed (T* pSrc = source)
        fixed (float* pDst = destination)
        {
            nint src = (nint)pSrc, dst = (nint)pDst;
            For(blocks * chunksPerBlock, chunk, t =>
            {
                long b = t / chunksPerBlock;
                long start = b * blockLength + (t % chunksPerBlock) * chunk;
                long end = Math.Min(Math.Min(start + chunk, (b + 1) * blockLength), n);
                if (start >= end) return;
                int p = (int)(b % channels);
                var d = new Span<float>((float*)dst + start, (int)(end - start));
                if (typeof(T) == typeof(sbyte))
                    QuantizeKernel.Dequantize(new ReadOnlySpan<sbyte>((sbyte*)src + start, (int)(end - start)), s[p], z[p], d);
                else
                    QuantizeKernel.Dequantize(new ReadOnlySpan<byte>((byte*)src + start, (int)(end - start)), s[p], z[p], d);
            });
        }
    }

    /// <summary>Quantizes without checking that the range fits the destination type (the caller did).</summary>
    internal static unsafe void QuantizeCore(ReadOnlySpan<float> source, int blockLength, ReadOnlySpan<float> scale, ReadOnlySpan<int> zeroPoint,
        QuantRange range, Span<sbyte> destination)
    {
        CheckArgs(source.Length, blockLength, scale, zeroPoint, range, destination.Length);
        if (source.IsEmpty) return;
        var (inv, zp) = Prepare(scale, zeroPoint);
        float qmin = range.QMin, qmax = range.QMax;
        int n = source.Length;
        int channels = scale.Length;
        if (channels == 1) blockLength = n; // one parameter: one block

        fixed (float* pSrc = source)
        fixed (sbyte* pDst = destination)
        {
            nint src = (nint)pSrc, dst = (nint)pDst;
            if (blockLength == 1 && channels > 1 && n % channels == 0)
            {
                // Channel axis is the last axis: every row of `channels` elements uses all parameters.
                int rows = n / channels;
                For(rows, (long)channels, r =>
                {
                    long off = r * channels;
                    QuantizeKernel.QuantizePerElement(new ReadOnlySpan<float>((float*)src + off, channels), inv, zp, qmin, qmax,
                        new Span<sbyte>((sbyte*)dst + off, channels));
                });
                return;
            }
            // Split long blocks into chunks so that per-tensor quantization also runs in parallel.
            long chunk = Math.Min(blockLength, ChunkElements);
            long chunksPerBlock = (blockLength + chunk - 1) / chunk;
            long blocks = (n + (long)blockLength - 1) / blockLength;
            For(blocks * chunksPerBlock, chunk, t =>
            {
                long b = t / chunksPerBlock;
                long start = b * blockLength + (t % chunksPerBlock) * chunk;
                long end = Math.Min(Math.Min(start + chunk, (b + 1) * blockLength), n);
                if (start >= end) return;
                int p = (int)(b % channels);
                var s = new ReadOnlySpan<float>((float*)src + start, (int)(end - start));
                var d = new Span<sbyte>((sbyte*)dst + start, (int)(end - start));
                QuantizeKernel.Quantize(s, inv[p], zp[p], qmin, qmax, d);
            });
        }
    }

    /// <summary>Runs <paramref name="body"/> for 0..count-1, in parallel when the work is large.</summary>
    internal static void For(long count, long elementsPerItem, Action<long> body)
    {
        if (count * elementsPerItem < ParallelThreshold || count == 1 || Environment.ProcessorCount == 1)
        {
            for (long i = 0; i < count; i++) body(i);
            return;
        }
        int workers = Environment.ProcessorCount;
        long per = (count + workers - 1) / workers;
        Parallel.For(0, workers, w =>
        {
            long end = Math.Min(count, (w + 1) * per);
            for (long i = w * per; i < end; i++) body(i);
        });
    }

    /// <summary>The reciprocal of each scale (computed once, in float32) and the zero points as floats.</summary>
    private static (float[] InverseScale, float[] ZeroPoint) Prepare(ReadOnlySpan<float> scale, ReadOnlySpan<int> zeroPoint)
    {
        var inv = new float[scale.Length];
        var zp = new float[scale.Length];
        for (int i = 0; i < scale.Length; i++)
        {
            inv[i] = 1f / scale[i];
            zp[i] = zeroPoint.IsEmpty ? 0 : zeroPoint[i];
        }
        return (inv, zp);
    }

    private static void CheckRange(QuantRange range, int lo, int hi, string type)
    {
        if (range.QMin < lo || range.QMax > hi)
            throw new ArgumentException($"Range [{range.QMin}, {range.QMax}] does not fit a {type} destination [{lo}, {hi}].", nameof(range));
    }

    private static void CheckArgs(int length, int blockLength, ReadOnlySpan<float> scale, ReadOnlySpan<int> zeroPoint, QuantRange? range, int destinationLength)
    {
        if (destinationLength < length)
            throw new ArgumentException($"destination has {destinationLength} elements but the source has {length}.", "destination");
        if (blockLength <= 0)
            throw new ArgumentOutOfRangeException(nameof(blockLength), blockLength, "Block length must be positive.");
        if (scale.IsEmpty && length > 0)
            throw new ArgumentException("At least one scale is needed.", nameof(scale));
        if (!zeroPoint.IsEmpty && zeroPoint.Length != scale.Length)
            throw new ArgumentException($"{zeroPoint.Length} zero points for {scale.Length} scales; give one per scale (or none for zeros).", nameof(zeroPoint));
        if (range is { } r && r.QMin > r.QMax)
            throw new ArgumentException($"Empty range [{r.QMin}, {r.QMax}].", nameof(range));
        for (int i = 0; i < scale.Length; i++)
        {
            if (!(scale[i] > 0) || !float.IsFinite(scale[i]))
                throw new ArgumentException($"Scale {i} is {scale[i]}; scales must be positive and finite.", nameof(scale));
        }
    }
}
