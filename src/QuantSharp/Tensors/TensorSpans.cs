using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using QuantSharp.Serialization;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tensors;

/// <summary>
/// A tensor's memory without one span over all of it (a span ends at int.MaxValue elements, so <c>Tensor.bytes</c>
/// throws for 2 GiB or more): its address, and its bytes as consecutive slices within <see cref="TensorCopyLimits"/>.
/// </summary>
internal static class TensorSpans
{
    /// <summary>
    /// The tensor's shape through <c>dim()</c> and <c>size(i)</c>: TorchSharp's <c>shape</c> property fills its array
    /// through a callback from native code, about 0.7 us a call, which a small layer's forward counts several times.
    /// </summary>
    public static long[] Shape(Tensor t)
    {
        var shape = new long[t.dim()];
        for (int i = 0; i < shape.Length; i++) shape[i] = t.size(i);
        return shape;
    }

    /// <summary>The address of the first element of a contiguous CPU tensor with at least one element (libtorch memory never moves).</summary>
    public static unsafe nint Address(Tensor t)
    {
        // Under 2 GiB one span covers it: a tenth of the cost of the two views below, which counts in the calls of a
        // small convolution (about 2 us a call).
        long count = t.numel();
        if (count > 0 && count * t.ElementSize <= int.MaxValue && t.is_contiguous())
            return (nint)Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));
        using var flat = t.reshape(-1); // a view; disposed here so that it does not keep the storage alive
        using var first = flat.narrow(0, 0, 1);
        return (nint)Unsafe.AsPointer(ref MemoryMarshal.GetReference(first.bytes));
    }

    /// <summary>
    /// Calls <paramref name="action"/> with the bytes of a contiguous CPU tensor: the tensor itself when its bytes fit
    /// <see cref="TensorCopyLimits.SingleCopyBytes"/>, otherwise 1-D slices of at most <see cref="TensorCopyLimits.ChunkBytes"/>,
    /// in order, each with the element offset it starts at. Nothing is called for an empty tensor.
    /// </summary>
    public static void ForEachSlice(Tensor t, Action<Tensor, long> action)
    {
        long count = t.numel();
        if (count == 0) return;
        long size = t.element_size();
        if (count * size <= TensorCopyLimits.SingleCopyBytes)
        {
            action(t, 0);
            return;
        }
        long chunk = Math.Max(1, TensorCopyLimits.ChunkBytes / size);
        using var flat = t.reshape(-1);
        for (long start = 0; start < count; start += chunk)
        {
            using var part = flat.narrow(0, start, Math.Min(chunk, count - start));
            action(part, start);
        }
    }

    /// <summary>True when two contiguous CPU tensors have the same dtype, shape and bytes.</summary>
    public static bool BitEqual(Tensor a, Tensor b)
    {
        if (a.dtype != b.dtype || !a.shape.SequenceEqual(b.shape)) return false;
        using var scope = NewDisposeScope();
        var ca = a.contiguous();
        var cb = b.contiguous().reshape(-1);
        bool equal = true;
        ForEachSlice(ca, (part, start) =>
        {
            if (!equal) return;
            using var other = cb.narrow(0, start, part.numel());
            equal = part.bytes.SequenceEqual(other.bytes);
        });
        return equal;
    }
}

/// <summary>
/// Cuts a tensor into chunks of whole rows (slices along dimension 0) whose float32 values fit one span: how the
/// model path quantizes, dequantizes and saves a weight of any size, as the checkpoint path reads its rows from the file.
/// </summary>
internal static class RowChunks
{
    /// <summary>
    /// True when the float32 values of a tensor of <paramref name="shape"/> exceed one span
    /// (<see cref="TensorCopyLimits.SingleCopyBytes"/>; for rank 0 or 1, which is one row, the span's own limit).
    /// </summary>
    public static bool Needed(ReadOnlySpan<long> shape) =>
        QuantSpec.Product(shape) * sizeof(float) > (shape.Length < 2 ? int.MaxValue : TensorCopyLimits.SingleCopyBytes);

    /// <summary>Row ranges covering dimension 0 in order, each at least one row and otherwise within the limits as float32.</summary>
    /// <exception cref="ArgumentException">One row alone is over the limit (a tensor of rank 0 or 1 is one row).</exception>
    public static List<(long Start, long Count)> Ranges(long[] shape)
    {
        long rowElements = shape.Length < 2 ? QuantSpec.Product(shape) : QuantSpec.Product(shape.AsSpan(1));
        long limit = Math.Min(TensorCopyLimits.ChunkBytes, TensorCopyLimits.SingleCopyBytes);
        if (shape.Length < 2 || rowElements * sizeof(float) > int.MaxValue)
            throw new ArgumentException(
                $"A tensor of shape {QuantSpec.FormatShape(shape)} has rows of {rowElements:N0} elements, over 2 GiB as float32: it is processed " +
                "one row (slice along dimension 0) at a time and a row must stay under 536,870,912 elements. Reshape it so that dimension 0 splits it into rows.",
                nameof(shape));
        long perChunk = Math.Max(1, limit / Math.Max(1, rowElements * sizeof(float)));
        var ranges = new List<(long, long)>();
        for (long r = 0; r < shape[0]; r += perChunk) ranges.Add((r, Math.Min(perChunk, shape[0] - r)));
        return ranges;
    }
}
