namespace QuantSharp.Modules;

/// <summary>
/// Chooses, per call, how a weight-only <see cref="QuantizedLinear"/> runs: the weight's kernels, or over many rows on a
/// CPU with native bfloat16 (<see cref="QuantizedModule.UseBFloat16Compute"/>) libtorch's bfloat16 GEMM on the weight
/// dequantized to bfloat16 in one managed pass into the thread's buffer. Integer W8A8 keeps its integer kernels.
/// Measured on the development machine (AMD EPYC, 2 vCPUs, AVX-512 with BF16; docs/BENCHMARKS.md "Linear layers over
/// many rows"), two threads, against the float32 layer: at 512 rows the kernels took 1.4-1.9x float32's time on
/// weights the caches hold (384x384, 512x512, 64x800; from ~1M elements they win, 1024x1024 0.79-0.91x), the bfloat16
/// route 0.55-0.92x (oneDNN's bfloat16 GEMM runs at about twice its float32 rate); below a number of rows that falls with
/// the weight's size (256 rows, 96 from 2^19 elements, 64 from 2^22, 32 for bfloat16 weights from 2^19) the
/// dequantization pass costs what the bfloat16 GEMM saves, so the kernels stay. Tiny weights (10x64) stay on the kernels (libtorch's bfloat16 GEMM
/// has ~30 us of fixed cost). Weights beyond the thread's buffer (<see cref="QuantizedModule.BufferMaxElements"/>) run in
/// blocks of rows that fill it (since stop 22; before, they stayed on the kernels: 4096x4096 and 11008x4096 at 128-512
/// rows 1.06-1.2x faster than float32 there, about 2x with bfloat16; docs/BENCHMARKS.md).
/// </summary>
internal static class LinearCost
{
    /// <summary>Rows (batch x sequence) from which the bfloat16 route pays for its dequantization pass.</summary>
    internal static long BFloat16MinRows = 256;

    /// <summary>
    /// Rows from which the bfloat16 route pays on weights of at least <see cref="LargeElements"/>. At 128 and 192 rows
    /// the kernels took 0.73-1.10x float32's time on 1536x384, 384x1536 and 1024x1024 (int8 and int4 group 32), the
    /// bfloat16 route 0.58-1.17x, most cells 0.6-0.8x (docs/BENCHMARKS.md, stop 14); at 96 rows the route took
    /// 0.56-0.81x on 1536x384 and 1024x1024 against the kernels' 0.73-0.94x (int8), at 64 rows it lost on 1536x384 (0.97-0.98x
    /// against 0.84-0.85x) and was a toss-up on 1024x1024 (stop 23). On 512x512 it was a toss-up at 128 rows
    /// (0.81-1.47x against 0.93-1.22x) and on 64x800 it lost (1.23-1.53x against 0.96-1.06x), so smaller weights keep
    /// <see cref="BFloat16MinRows"/>.
    /// </summary>
    internal static long BFloat16MinRowsLarge = 96;

    /// <summary>
    /// Rows from which the bfloat16 route pays on weights of at least <see cref="HugeElements"/>: at 64 rows it took
    /// 0.46-0.53x float32's time (int8) on 2048x2048, 4096x4096 and 11008x4096 against the kernels' 0.49-0.57x, and
    /// tied on 4096x11008; at 32 rows the kernels won (stop 23).
    /// </summary>
    internal static long BFloat16MinRowsHuge = 64;

    /// <summary>
    /// Rows from which bfloat16 weights (a copy into the buffer, no arithmetic) take the bfloat16 route on weights of at
    /// least <see cref="LargeElements"/>: from 32 rows it took 0.30-0.76x float32's time against the kernels' 0.47-0.80x
    /// on every shape measured, 1536x384 to 11008x4096 (stop 23).
    /// </summary>
    internal static long BFloat16WeightsMinRows = 32;

    /// <summary>Weights from this many elements take the bfloat16 route from <see cref="BFloat16MinRowsLarge"/> rows.</summary>
    internal const long LargeElements = 1 << 19;

    /// <summary>Weights from this many elements take the bfloat16 route from <see cref="BFloat16MinRowsHuge"/> rows.</summary>
    internal const long HugeElements = 1 << 22;

    /// <summary>Weights below this many elements are tiny: libtorch's bfloat16 GEMM costs more than it computes.</summary>
    internal const long TinyElements = 1 << 14;

    /// <summary>The route for <paramref name="rows"/> input rows of a <c>[outputs, inputs]</c> weight stored as <paramref name="type"/>.</summary>
    /// <param name="rows">Input rows (all dimensions but the last).</param>
    /// <param name="outputs">Output features.</param>
    /// <param name="inputs">Input features.</param>
    /// <param name="type">The weight's stored type.</param>
    /// <param name="bfloat16">Whether the bfloat16 route may be taken (<see cref="QuantizedModule.BFloat16MatMuls"/>).</param>
    public static LinearRoute Choose(long rows, long outputs, long inputs, QuantType type, bool bfloat16)
    {
        long elements = outputs * inputs;
        long minRows = elements < LargeElements ? BFloat16MinRows
            : type == QuantType.BFloat16 ? BFloat16WeightsMinRows
            : elements >= HugeElements ? BFloat16MinRowsHuge
            : BFloat16MinRowsLarge;
        return bfloat16 && rows >= minRows && elements >= TinyElements
            ? LinearRoute.BFloat16
            : LinearRoute.Kernel;
    }
}

/// <summary>How a weight-only <see cref="QuantizedLinear"/> call runs.</summary>
internal enum LinearRoute
{
    /// <summary>The weight's layout (<see cref="Tensors.WeightLayout.Linear"/>): the managed kernels where they apply, else dequantize + float32.</summary>
    Kernel,

    /// <summary>The weight dequantized to bfloat16 (the thread's buffer) and libtorch's bfloat16 linear on the input rounded to bfloat16.</summary>
    BFloat16,
}
