using System.Runtime.InteropServices;
using QuantSharp.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Modules;

/// <summary>
/// A known-answer check, once per process and before the bfloat16 routes first use them, of libtorch's bfloat16
/// convolution and matrix product on this CPU. On an AMD EPYC VM (family 26, Zen 5; 2026-12-05) libtorch's oneDNN
/// bfloat16 convolution returned wrong values (errors of 0.17-1.0 of the largest output) for layers of 10 output
/// channels with kernels larger than 1x1 and for 1x1 convolutions of one input channel, through both its
/// <c>avx512_core_bf16</c> kernel and the <c>avx512_core</c> one that emulates bfloat16, while its float32 convolution
/// and bfloat16 matrix product were right (<c>bf16-probe</c> of the bench, docs/ACCURACY.md); on the Zen 4 VM of
/// earlier stops it had been right, and on a VM of the same Zen 5 model on 2026-12-07 it was right too (all 165 cases
/// of the probe). A route that computes in bfloat16 is taken only where this check
/// found libtorch's operation right; otherwise the layers keep their float32 routes (as with
/// <see cref="QuantizedModule.UseBFloat16Compute"/> off).
/// </summary>
/// <remarks>
/// The inputs are multiples of 1/128 in [-1, 1), exact in bfloat16, built without libtorch's random generator (the
/// caller's seed is untouched); each output is compared with the float32 result within 2^-6 of
/// <c>sum |w| |x| + |b|</c> over its terms: float32 accumulation and the bfloat16 output's rounding stay under
/// 2^-7 of it, while the faults seen were errors of 0.17-1.0 of the largest output.
/// </remarks>
internal static class BFloat16Check
{
    private static readonly Lazy<bool> s_convolutions = new(() => Passes(ConvolutionsAgree));
    private static readonly Lazy<bool> s_matMuls = new(() => Passes(MatMulsAgree));

    /// <summary>
    /// For the bench and tests: replaces the check's verdict on convolutions in this process (false: as on a CPU where
    /// libtorch's bfloat16 convolution failed it); null, the default, keeps the check's.
    /// </summary>
    internal static bool? ForcedConvolutions { get; set; }

    /// <summary>Whether libtorch's bfloat16 convolutions (Conv1d and Conv2d) gave the known answers in this process (or <see cref="ForcedConvolutions"/>).</summary>
    internal static bool Convolutions => ForcedConvolutions ?? s_convolutions.Value;

    /// <summary>Whether libtorch's bfloat16 linear (matrix product) gave the known answers in this process.</summary>
    internal static bool MatMuls => s_matMuls.Value;

    private static bool Passes(Func<bool> check)
    {
        try
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            return check();
        }
        catch (Exception e) when (e is ExternalException or InvalidOperationException or ArgumentException)
        {
            return false;
        }
    }

    /// <summary>
    /// Conv2d with 10 output channels (a tail of 16), a 1x1 convolution of one input channel, a Conv2d of whole blocks
    /// with stride 2, a Conv1d of 9 output channels with stride and dilation, and a Conv2d of 12 input channels (wrong,
    /// NaN too, where oneDNN was capped at AVX2 and libtorch ran its own bfloat16 convolution).
    /// </summary>
    internal static bool ConvolutionsAgree() =>
        Agrees(Values([2, 6, 9, 11], 1), Values([10, 6, 3, 3], 2), Values([10], 3), (x, w, b) => nn.functional.conv2d(x, w, b, [1, 1], [1, 1]))
        && Agrees(Values([2, 1, 8, 8], 4), Values([16, 1, 1, 1], 5), null, (x, w, b) => nn.functional.conv2d(x, w, b))
        && Agrees(Values([2, 16, 7, 7], 6), Values([32, 16, 3, 3], 7), Values([32], 8), (x, w, b) => nn.functional.conv2d(x, w, b, [2, 2]))
        && Agrees(Values([2, 4, 21], 9), Values([9, 4, 4], 10), null, (x, w, b) => nn.functional.conv1d(x, w, b, 2, 0, 2))
        && Agrees(Values([2, 12, 9, 11], 19), Values([16, 12, 3, 4], 20), null, (x, w, b) => nn.functional.conv2d(x, w, b));

    /// <summary>Linear layers of one row by 10 outputs, 8 rows by 33 and 37 rows by 100, over 64-300 terms.</summary>
    internal static bool MatMulsAgree() =>
        Agrees(Values([1, 64], 11), Values([10, 64], 12), Values([10], 13), (x, w, b) => nn.functional.linear(x, w, b))
        && Agrees(Values([8, 72], 14), Values([33, 72], 15), null, (x, w, b) => nn.functional.linear(x, w, b))
        && Agrees(Values([37, 300], 16), Values([100, 300], 17), Values([100], 18), (x, w, b) => nn.functional.linear(x, w, b));

    /// <summary>
    /// Whether <paramref name="op"/> on bfloat16 tensors agrees, output by output, with <paramref name="reference"/>
    /// (by default <paramref name="op"/> itself) on the same values in float32 (the same values: they are bfloat16's).
    /// The reference is float32, not float64: libtorch's float64 convolution asks for NNPACK, whose initialization
    /// prints a warning on CPUs it does not support (this Zen 5), and float32 accumulation over these few hundred terms
    /// is within 2^-15 of the bound's sum.
    /// </summary>
    internal static bool Agrees(Tensor x, Tensor w, Tensor? b, Func<Tensor, Tensor, Tensor?, Tensor> op, Func<Tensor, Tensor, Tensor?, Tensor>? reference = null)
    {
        using var kept = new KeptScalars();
        reference ??= op;
        var actual = op(x.to(ScalarType.BFloat16), w.to(ScalarType.BFloat16), b?.to(ScalarType.BFloat16)).to(ScalarType.Float64);
        var exact = reference(x, w, b).to(ScalarType.Float64);
        var magnitude = reference(x.abs(), w.abs(), b?.abs()).to(ScalarType.Float64);
        return actual.shape.SequenceEqual(exact.shape)
            && (actual - exact).abs().le(magnitude.mul(kept.Of(1.0 / 64))).all().item<bool>();
    }

    /// <summary>A float32 tensor of <paramref name="shape"/> holding multiples of 1/128 in [-1, 1) (exact in bfloat16), from <paramref name="seed"/>.</summary>
    internal static Tensor Values(long[] shape, uint seed)
    {
        long count = shape.Aggregate(1L, (a, n) => a * n);
        var values = new float[count];
        uint state = seed * 2654435761u + 1;
        for (long i = 0; i < count; i++)
        {
            state = state * 1664525u + 1013904223u;
            values[i] = ((int)(state >> 24) - 128) / 128f;
        }
        return torch.tensor(values, ScalarType.Float32).reshape(shape);
    }
}
