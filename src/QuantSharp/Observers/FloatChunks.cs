using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Observers;

/// <summary>Receives one chunk of values: <paramref name="values"/> are elements [offset, offset + length) of the tensor, in row-major order.</summary>
internal delegate void FloatChunkAction(ReadOnlySpan<float> values, long offset);

/// <summary>
/// The float32 values of one tensor, delivered as consecutive chunks (each at most <see cref="MaxChunkElements"/>
/// long) and readable more than once. Observers make their passes (range, then histogram) over it, so that no
/// span over the whole tensor is needed: a tensor of any size, in memory or in a file, is observed with memory
/// bounded by one chunk. A source is only valid during the call it is passed to; whoever keeps values beyond
/// that copies them (<see cref="Copy"/>).
/// </summary>
internal abstract class FloatChunks
{
    /// <summary>Elements per chunk by default (16 MiB of float32).</summary>
    internal const int DefaultChunkElements = 4 << 20;

    /// <summary>Test hook: a smaller chunk size on this thread (results must not depend on it).</summary>
    [ThreadStatic] internal static int? ChunkElementsForTests;

    /// <summary>The chunk size in use on this thread.</summary>
    internal static int MaxChunkElements => ChunkElementsForTests ?? DefaultChunkElements;

    protected FloatChunks(long[] shape)
    {
        Shape = shape;
        Count = shape.Aggregate(1L, (a, b) => checked(a * b));
    }

    /// <summary>The tensor's shape.</summary>
    public long[] Shape { get; }

    /// <summary>The number of values (the product of <see cref="Shape"/>).</summary>
    public long Count { get; }

    /// <summary>Calls <paramref name="action"/> for each chunk, in order of offset, covering all <see cref="Count"/> values once.</summary>
    public abstract void ForEach(FloatChunkAction action);

    /// <summary>Values over unmanaged memory that stays put during the call (a pinned span, a tensor's storage).</summary>
    public static unsafe FloatChunks Over(float* start, long count, long[] shape) => new PointerChunks(start, count, shape);

    /// <summary>
    /// The values of a CPU tensor of any floating-point dtype, converted to float32 one chunk at a time (no copy for a
    /// contiguous float32 tensor). Valid while the tensor is.
    /// </summary>
    public static FloatChunks Of(Tensor tensor) => new TensorChunks(tensor);

    /// <summary>A copy held in managed arrays (one per chunk), valid until dropped.</summary>
    public FloatChunks Copy()
    {
        var parts = new List<float[]>();
        ForEach((values, _) => parts.Add(values.ToArray()));
        return new ArrayChunks(parts, Shape);
    }

    private sealed unsafe class PointerChunks(float* start, long count, long[] shape) : FloatChunks(shape)
    {
        private readonly float* _start = start;

        public override void ForEach(FloatChunkAction action)
        {
            if (count != Count) throw new ArgumentException($"{count} values do not fill shape [{string.Join(", ", Shape)}].");
            int chunk = MaxChunkElements;
            for (long offset = 0; offset < count; offset += chunk)
                action(new ReadOnlySpan<float>(_start + offset, (int)Math.Min(chunk, count - offset)), offset);
        }
    }

    private sealed class TensorChunks(Tensor tensor) : FloatChunks(tensor.shape)
    {
        public override void ForEach(FloatChunkAction action)
        {
            using var flat = tensor.reshape(-1);
            int chunk = MaxChunkElements;
            for (long offset = 0; offset < Count; offset += chunk)
            {
                using var scope = torch.NewDisposeScope();
                var part = flat.narrow(0, offset, Math.Min(chunk, Count - offset)).to(ScalarType.Float32).contiguous();
                action(MemoryMarshal.Cast<byte, float>(part.bytes), offset);
            }
        }
    }

    private sealed class ArrayChunks(List<float[]> parts, long[] shape) : FloatChunks(shape)
    {
        public override void ForEach(FloatChunkAction action)
        {
            long offset = 0;
            foreach (float[] part in parts)
            {
                action(part, offset);
                offset += part.Length;
            }
        }
    }
}
