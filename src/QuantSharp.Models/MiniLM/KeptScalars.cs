using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Models.MiniLM;

/// <summary>
/// Tensor arithmetic whose <see cref="Scalar"/> operands stay alive for the whole native call.
/// </summary>
/// <remarks>
/// TorchSharp 0.107.0 reads a <see cref="Scalar"/>'s native handle and then calls into libtorch without keeping the
/// managed object alive (e.g. <c>a + b</c> is <c>a.add(b, 1)</c> with a temporary Scalar). A garbage collection during
/// that call can run the Scalar's finalizer, which frees the native value libtorch is about to read; libtorch then
/// fails with "Expected false to be true" from <c>Scalar::toFloat</c> (seen once in the MiniLM GPTQ test under a heavily
/// loaded parallel test run). The encoder's per-layer arithmetic goes through these helpers: the alpha of an addition
/// is a Scalar that lives as long as the process, and a divisor is disposed only after the call returns.
/// </remarks>
internal static class KeptScalars
{
    private static readonly Scalar One = 1.ToScalar();

    /// <summary><paramref name="a"/> + <paramref name="b"/> (broadcasting), with no temporary Scalar.</summary>
    public static Tensor Plus(Tensor a, Tensor b) => a.add(b, One);

    /// <summary><paramref name="a"/> / <paramref name="divisor"/>, the divisor's Scalar kept alive until the call returns.</summary>
    public static Tensor Over(Tensor a, double divisor)
    {
        using var d = divisor.ToScalar();
        return a.div(d);
    }
}
