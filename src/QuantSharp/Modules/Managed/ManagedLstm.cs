using QuantSharp.Tensors;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace QuantSharp.Modules.Managed;

/// <summary>
/// An LSTM written with ordinary TorchSharp operations, with the same forward signature and the same arithmetic as
/// TorchSharp's native <see cref="LSTM"/> (libtorch's CPU cell: gates <c>i, f, g, o</c> from
/// <c>hh(h) + ih(x)</c>, <c>c' = f * c + i * g</c>, <c>h' = o * tanh(c')</c>), whose projections are replaceable
/// children (see <see cref="ManagedRecurrent{TState, TResult}"/>).
/// </summary>
public sealed class ManagedLstm : ManagedRecurrent<(Tensor, Tensor)?, (Tensor, Tensor, Tensor)>
{
    /// <summary>Creates an LSTM initialized as TorchSharp's native one (same parameters and defaults).</summary>
    /// <param name="inputSize">Input features.</param>
    /// <param name="hiddenSize">Hidden features per direction.</param>
    /// <param name="numLayers">Stacked layers.</param>
    /// <param name="bias">Whether the projections have biases.</param>
    /// <param name="batchFirst">Input and output are <c>[N, T, features]</c>.</param>
    /// <param name="dropout">Dropout between layers (training mode).</param>
    /// <param name="bidirectional">Run each layer in both directions.</param>
    /// <param name="device">Device of the parameters.</param>
    /// <param name="dtype">Element type of the parameters.</param>
    public ManagedLstm(long inputSize, long hiddenSize, long numLayers = 1, bool bias = true, bool batchFirst = false, double dropout = 0.0,
        bool bidirectional = false, Device? device = null, ScalarType? dtype = null)
        : base(nameof(ManagedLstm), 4, inputSize, hiddenSize, numLayers, bias, batchFirst, dropout, bidirectional, device, dtype)
    {
    }

    private protected override int StateCount => 2;

    /// <summary>Runs the LSTM over <paramref name="input"/>.</summary>
    /// <param name="input">Input <c>[T, N, input]</c> (<c>[N, T, input]</c> batch-first) or unbatched <c>[T, input]</c>.</param>
    /// <param name="h0_c0">Initial hidden and cell states <c>[layers * directions, N, hidden]</c>, or null for zeros.</param>
    /// <returns>The output of the last layer <c>[T, N, directions * hidden]</c>, and the final hidden and cell states.</returns>
    public override (Tensor, Tensor, Tensor) forward(Tensor input, (Tensor, Tensor)? h0_c0 = null)
    {
        using var scope = NewDisposeScope();
        var (output, final) = Run(input, h0_c0 is var (h0, c0) ? [h0, c0] : null);
        return (output.MoveToOuterDisposeScope(), final[0].MoveToOuterDisposeScope(), final[1].MoveToOuterDisposeScope());
    }

    /// <summary>Runs the LSTM through its hooks.</summary>
    /// <inheritdoc cref="forward"/>
    public new (Tensor, Tensor, Tensor) call(Tensor input, (Tensor, Tensor)? h0_c0 = null) => base.call(input, h0_c0);

    private protected override Tensor[] Step(Tensor projectedInput, Tensor[] states, nn.Module<Tensor, Tensor> hiddenProjection)
    {
        var gates = KeptScalars.Plus(hiddenProjection.call(states[0]), projectedInput).chunk(4, 1);
        var (input, forget, cell, output) = (gates[0].sigmoid(), gates[1].sigmoid(), gates[2].tanh(), gates[3].sigmoid());
        var c = KeptScalars.Plus(forget * states[1], input * cell);
        return [output * c.tanh(), c];
    }
}

/// <summary>
/// A GRU written with ordinary TorchSharp operations, with the same forward signature and the same arithmetic as
/// TorchSharp's native <see cref="GRU"/> (libtorch's CPU cell: <c>r = σ(hh_r + ih_r)</c>, <c>z = σ(hh_z + ih_z)</c>,
/// <c>n = tanh(ih_n + r * hh_n)</c>, <c>h' = (h - n) * z + n</c>), whose projections are replaceable children (see
/// <see cref="ManagedRecurrent{TState, TResult}"/>).
/// </summary>
public sealed class ManagedGru : ManagedRecurrent<Tensor?, (Tensor, Tensor)>
{
    /// <summary>Creates a GRU initialized as TorchSharp's native one (same parameters and defaults).</summary>
    /// <inheritdoc cref="ManagedLstm(long, long, long, bool, bool, double, bool, Device?, ScalarType?)"/>
    public ManagedGru(long inputSize, long hiddenSize, long numLayers = 1, bool bias = true, bool batchFirst = false, double dropout = 0.0,
        bool bidirectional = false, Device? device = null, ScalarType? dtype = null)
        : base(nameof(ManagedGru), 3, inputSize, hiddenSize, numLayers, bias, batchFirst, dropout, bidirectional, device, dtype)
    {
    }

    private protected override int StateCount => 1;

    /// <summary>Runs the GRU over <paramref name="input"/>.</summary>
    /// <param name="input">Input <c>[T, N, input]</c> (<c>[N, T, input]</c> batch-first) or unbatched <c>[T, input]</c>.</param>
    /// <param name="h0">Initial hidden state <c>[layers * directions, N, hidden]</c>, or null for zeros.</param>
    /// <returns>The output of the last layer <c>[T, N, directions * hidden]</c> and the final hidden state.</returns>
    public override (Tensor, Tensor) forward(Tensor input, Tensor? h0 = null)
    {
        using var scope = NewDisposeScope();
        var (output, final) = Run(input, h0 is null ? null : [h0]);
        return (output.MoveToOuterDisposeScope(), final[0].MoveToOuterDisposeScope());
    }

    /// <summary>Runs the GRU through its hooks.</summary>
    /// <inheritdoc cref="forward"/>
    public new (Tensor, Tensor) call(Tensor input, Tensor? h0 = null) => base.call(input, h0);

    private protected override Tensor[] Step(Tensor projectedInput, Tensor[] states, nn.Module<Tensor, Tensor> hiddenProjection)
    {
        var i = projectedInput.chunk(3, 1);
        var h = hiddenProjection.call(states[0]).chunk(3, 1);
        var reset = KeptScalars.Plus(h[0], i[0]).sigmoid();
        var update = KeptScalars.Plus(h[1], i[1]).sigmoid();
        var candidate = KeptScalars.Plus(i[2], h[2] * reset).tanh();
        return [KeptScalars.Plus((states[0] - candidate) * update, candidate)];
    }
}
