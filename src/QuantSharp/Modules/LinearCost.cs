namespace QuantSharp.Modules;

/// <summary>
/// Chooses, per call, how a weight-only <see cref="QuantizedLinear"/> over many rows runs (integer W8A8 keeps its
/// integer kernels; fewer rows than <see cref="ManyRows"/> keep the weight-only kernels, which are 2-18x faster than
/// float32 there). Measured on the development machine (AMD EPYC, 2 vCPUs, AVX-512 with BF16; probe of stop 11,
/// docs/BENCHMARKS.md "Linear layers over many rows"), int8 weights, two threads, against the float32 layer:
/// <list type="bullet">
/// <item>The packed kernels read a weight of up to ~512K elements from cache, where the weight's size saves nothing,
/// and lose to libtorch's float32 GEMM at 64-512 rows: 384x384 1.35x (64 rows) and 1.74x (512), 64x800 1.7-1.9x,
/// 512x512 1.2-1.4x. From ~1M elements they win (1024x1024 0.79-0.91x, 4096x4096 0.60-0.79x).</item>
/// <item>libtorch's bfloat16 GEMM (oneDNN, native bfloat16) runs at 2-3x its float32 rate on everything but tiny
/// weights (10x64: 33 against 13 us, fixed cost), so with <see cref="QuantizedModule.UseBFloat16Compute"/> the weight
/// dequantized to bfloat16 (one managed pass into the thread's buffer) and a bfloat16 GEMM win from 64 rows up to the
/// buffer's size (<see cref="QuantizedModule.BufferMaxElements"/>); larger weights keep the kernels (a bfloat16 copy of
/// them per thread would outweigh the quantized weight).</item>
/// <item>Without native bfloat16, dequantize + float32 libtorch for the weights the kernels lose on: 1.0-1.15x (the
/// dequantization pass), against up to 1.9x.</item>
/// </list>
/// </summary>
internal static class LinearCost
{
    /// <summary>Rows (batch x sequence) from which the routes other than the kernels are considered.</summary>
    internal const long ManyRows = 64;

    /// <summary>Rows from which even tiny weights leave the kernels (10x64 at 512 rows: kernel 41-51 us, float32 25).</summary>
    internal const long VeryManyRows = 256;

    /// <summary>Weights below this many elements are tiny: libtorch's bfloat16 GEMM costs more than it computes.</summary>
    internal const long TinyElements = 1 << 14;

    /// <summary>Weights up to this many elements are read from cache by the kernels, which then lose to float32 over many rows.</summary>
    internal const long CachedElements = 1 << 19;

    /// <summary>The route for <paramref name="rows"/> input rows of a <c>[outputs, inputs]</c> weight.</summary>
    /// <param name="rows">Input rows (all dimensions but the last).</param>
    /// <param name="outputs">Output features.</param>
    /// <param name="inputs">Input features.</param>
    /// <param name="bfloat16">Whether the bfloat16 route may be taken (<see cref="QuantizedModule.BFloat16Routes"/>).</param>
    public static LinearRoute Choose(long rows, long outputs, long inputs, bool bfloat16)
    {
        long elements = outputs * inputs;
        bool tiny = elements < TinyElements;
        if (rows < ManyRows) return LinearRoute.Kernel;
        if (bfloat16 && !tiny && elements <= QuantizedModule.BufferMaxElements) return LinearRoute.BFloat16;
        if (elements <= CachedElements && (!tiny || rows >= VeryManyRows)) return LinearRoute.Reference;
        return LinearRoute.Kernel;
    }
}

/// <summary>How a weight-only <see cref="QuantizedLinear"/> call runs.</summary>
internal enum LinearRoute
{
    /// <summary>The weight's layout (<see cref="Tensors.WeightLayout.Linear"/>): the managed kernels where they apply.</summary>
    Kernel,

    /// <summary>The weight dequantized to float32 (the thread's buffer) and libtorch's float32 linear.</summary>
    Reference,

    /// <summary>The weight dequantized to bfloat16 (the thread's buffer) and libtorch's bfloat16 linear on the input rounded to bfloat16.</summary>
    BFloat16,
}
