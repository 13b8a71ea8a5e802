using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tensors;

/// <summary>
/// The one way library code hands a .NET number to libtorch: as a <see cref="Scalar"/> that stays alive until the native
/// call has returned.
/// </summary>
/// <remarks>
/// <para>TorchSharp 0.107.0 turns a number operand into a temporary <see cref="Scalar"/> (<c>a + b</c> is
/// <c>a.add(b, 1)</c>; <c>x.pow(2)</c>, <c>x / 2.0</c>, <c>clamp(min, max)</c>, <c>full(shape, v)</c> likewise), passes its
/// native handle to libtorch and keeps no reference to it during the call. A garbage collection started by another thread
/// meanwhile can run the Scalar's finalizer, which frees the value libtorch is about to read: "Expected false to be true"
/// (<c>Scalar::toFloat</c>), "Unknown scalar type" or an internal assert, or silently another number.</para>
/// <para>Create one per method (<c>using var kept = new KeptScalars();</c>) and pass <c>kept.Of(value)</c> where TorchSharp
/// takes a Scalar: every Scalar it made lives until it is disposed. Add tensors with <see cref="Plus(Tensor, Tensor)"/>,
/// whose alpha of 1 lives for the process. <c>ScalarLifetimeTests</c> checks that no library method makes a Scalar
/// another way, or calls a TorchSharp method that makes one.</para>
/// </remarks>
internal sealed class KeptScalars : IDisposable
{
    private static readonly Scalar s_one = 1.ToScalar();
    private readonly List<Scalar> _made = [];

    /// <summary><paramref name="value"/> as an integer Scalar (as TorchSharp converts <see cref="int"/> and
    /// <see cref="long"/>), alive until this object is disposed.</summary>
    public Scalar Of(long value) => Keep(value.ToScalar());

    /// <summary><paramref name="value"/> as a floating-point Scalar (libtorch holds <see cref="float"/> and
    /// <see cref="double"/> alike, as a double), alive until this object is disposed.</summary>
    public Scalar Of(double value) => Keep(value.ToScalar());

    /// <summary><paramref name="a"/> + <paramref name="b"/> with broadcasting: the <c>+</c> operator without its temporary alpha.</summary>
    public static Tensor Plus(Tensor a, Tensor b) => a.add(b, s_one);

    /// <summary><paramref name="a"/> + <paramref name="b"/>: the <c>+</c> operator without its temporary alpha.</summary>
    public static Tensor Plus(Tensor a, Scalar b) => a.add(b, s_one);

    /// <summary>Adds <paramref name="b"/> to <paramref name="a"/> in place (<c>add_</c> without its temporary alpha).</summary>
    public static Tensor PlusInPlace(Tensor a, Tensor b) => a.add_(b, s_one);

    /// <summary>Frees the Scalars this object made.</summary>
    public void Dispose()
    {
        lock (_made)
        {
            foreach (var s in _made) s.Dispose();
            _made.Clear();
        }
    }

    private Scalar Keep(Scalar scalar)
    {
        lock (_made) _made.Add(scalar);
        return scalar;
    }
}
