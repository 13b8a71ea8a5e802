using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace QuantSharp.Modules.Managed;

/// <summary>
/// The common part of <see cref="ManagedLstm"/> and <see cref="ManagedGru"/>: a stack of recurrent layers (optionally
/// bidirectional) whose input-hidden and hidden-hidden projections are replaceable children, and the layer/direction/step
/// loop of libtorch's CPU implementation.
/// </summary>
/// <remarks>
/// <para>Children: <c>ih.l{k}</c> and <c>hh.l{k}</c> (and <c>ih.l{k}_reverse</c>, <c>hh.l{k}_reverse</c> for the backward
/// direction) in two <c>ModuleDict&lt;Module&lt;Tensor, Tensor&gt;&gt;</c>, each a <see cref="Linear"/> until replaced: the
/// native <c>weight_ih_l0</c>/<c>bias_ih_l0</c> become <c>ih.l0.weight</c>/<c>ih.l0.bias</c>. The input projection runs
/// once over the whole sequence of a layer, the hidden projection once per time step.</para>
/// <para>Input <c>[T, N, input]</c> (<c>[N, T, input]</c> with batch-first) or unbatched <c>[T, input]</c>; states
/// <c>[layers * directions, N, hidden]</c> (<c>[layers * directions, hidden]</c> unbatched), index
/// <c>layer * directions + direction</c>, never batch-first. Dropout between layers acts in training mode only.</para>
/// </remarks>
/// <typeparam name="TState">The initial-state argument of the forward pass.</typeparam>
/// <typeparam name="TResult">The forward result (output and final states).</typeparam>
public abstract class ManagedRecurrent<TState, TResult> : nn.Module<Tensor, TState, TResult>
{
#pragma warning disable IDE1006 // TorchSharp registers components under their field names
    private readonly ModuleDict<nn.Module<Tensor, Tensor>> ih = new();
    private readonly ModuleDict<nn.Module<Tensor, Tensor>> hh = new();
#pragma warning restore IDE1006
    private readonly int _gates;

    private protected ManagedRecurrent(string name, int gates, long inputSize, long hiddenSize, long numLayers, bool bias, bool batchFirst,
        double dropout, bool bidirectional, Device? device, ScalarType? dtype) : base(name)
    {
        if (inputSize <= 0 || hiddenSize <= 0 || numLayers <= 0)
            throw new ArgumentException($"inputSize, hiddenSize and numLayers must be positive; got {inputSize}, {hiddenSize}, {numLayers}.", nameof(inputSize));
        if (dropout is < 0 or > 1 || double.IsNaN(dropout))
            throw new ArgumentException($"dropout must be a probability in [0, 1]; got {dropout}.", nameof(dropout));
        (_gates, InputSize, HiddenSize, NumLayers, Bias, BatchFirst, Dropout, Bidirectional) =
            (gates, inputSize, hiddenSize, numLayers, bias, batchFirst, dropout, bidirectional);
        for (long layer = 0; layer < numLayers; layer++)
        {
            for (int direction = 0; direction < Directions; direction++)
            {
                string key = Key(layer, direction);
                ih.Add(key, nn.Linear(layer == 0 ? inputSize : hiddenSize * Directions, gates * hiddenSize, bias, device, dtype));
                hh.Add(key, nn.Linear(hiddenSize, gates * hiddenSize, bias, device, dtype));
            }
        }
        // libtorch initializes every weight and bias uniformly in [-1/sqrt(hidden), 1/sqrt(hidden)].
        double bound = 1.0 / Math.Sqrt(hiddenSize);
        using (no_grad())
            foreach (var p in ih.parameters().Concat(hh.parameters())) p.uniform_(-bound, bound);
        RegisterComponents();
    }

    /// <summary>Input features of the first layer.</summary>
    public long InputSize { get; }

    /// <summary>Hidden features per direction.</summary>
    public long HiddenSize { get; }

    /// <summary>Stacked layers.</summary>
    public long NumLayers { get; }

    /// <summary>Whether the projections have biases.</summary>
    public bool Bias { get; }

    /// <summary>Whether input and output are <c>[N, T, features]</c> (states are never batch-first).</summary>
    public bool BatchFirst { get; internal set; }

    /// <summary>Dropout probability on the outputs of every layer but the last, in training mode.</summary>
    public double Dropout { get; }

    /// <summary>Whether each layer also runs backward over the sequence (outputs concatenated: forward, then backward).</summary>
    public bool Bidirectional { get; }

    private int Directions => Bidirectional ? 2 : 1;

    /// <summary>The input-hidden projection of <paramref name="layer"/> (<c>ih.l{layer}</c> or <c>ih.l{layer}_reverse</c>).</summary>
    /// <param name="layer">Layer index.</param>
    /// <param name="reverse">The backward direction's projection.</param>
    /// <returns>A <see cref="Linear"/> until replaced.</returns>
    public nn.Module<Tensor, Tensor> InputProjection(long layer, bool reverse = false) => ih[Key(layer, reverse ? 1 : 0)];

    /// <summary>The hidden-hidden projection of <paramref name="layer"/> (<c>hh.l{layer}</c> or <c>hh.l{layer}_reverse</c>).</summary>
    /// <param name="layer">Layer index.</param>
    /// <param name="reverse">The backward direction's projection.</param>
    /// <returns>A <see cref="Linear"/> until replaced.</returns>
    public nn.Module<Tensor, Tensor> HiddenProjection(long layer, bool reverse = false) => hh[Key(layer, reverse ? 1 : 0)];

    private string Key(long layer, int direction)
    {
        if (layer < 0 || layer >= NumLayers) throw new ArgumentOutOfRangeException(nameof(layer), $"layer must be in [0, {NumLayers}); got {layer}.");
        if (direction >= Directions) throw new ArgumentException("This module is not bidirectional: it has no reverse projections.", nameof(direction));
        return direction == 0 ? $"l{layer}" : $"l{layer}_reverse";
    }

    /// <summary>One time step: the input projection of this step <c>[N, gates * hidden]</c>, the states <c>[N, hidden]</c>
    /// (the hidden state first) and the hidden-hidden projection; returns the new states, hidden state first.</summary>
    private protected abstract Tensor[] Step(Tensor projectedInput, Tensor[] states, nn.Module<Tensor, Tensor> hiddenProjection);

    /// <summary>Runs the stack; <paramref name="initial"/> holds one tensor per state kind (or null for zeros).</summary>
    private protected (Tensor Output, Tensor[] Final) Run(Tensor input, Tensor[]? initial)
    {
        bool batched = CheckInput(input);
        var x = !batched ? input.unsqueeze(1) : BatchFirst ? input.transpose(0, 1) : input;
        long steps = x.shape[0], batch = x.shape[1], cells = NumLayers * Directions;
        long[] stateShape = batched ? [cells, batch, HiddenSize] : [cells, HiddenSize];
        foreach (var s in initial ?? [])
        {
            if (!s.shape.SequenceEqual(stateShape))
                throw new ArgumentException(
                    $"initial states must be [{string.Join(", ", stateShape)}] (layers * directions, {(batched ? "batch, " : "")}hidden; never batch-first); " +
                    $"got [{string.Join(", ", s.shape)}].", "h0");
        }
        var states = initial?.Select(s => batched ? s : s.unsqueeze(1)).ToArray();
        var finals = new Tensor[StateCount][];
        for (int k = 0; k < StateCount; k++) finals[k] = new Tensor[cells];
        for (long layer = 0; layer < NumLayers; layer++)
        {
            var outputs = new Tensor[Directions];
            for (int direction = 0; direction < Directions; direction++)
            {
                long cell = layer * Directions + direction;
                string key = Key(layer, direction);
                var projected = ih[key].call(x);
                var hidden = hh[key];
                var state = Enumerable.Range(0, StateCount)
                    .Select(k => states?[k][cell] ?? zeros([batch, HiddenSize], x.dtype, x.device)).ToArray();
                var perStep = new Tensor[steps];
                for (long i = 0; i < steps; i++)
                {
                    long t = direction == 0 ? i : steps - 1 - i;
                    state = Step(projected[t], state, hidden);
                    perStep[t] = state[0];
                }
                outputs[direction] = stack(perStep);
                for (int k = 0; k < StateCount; k++) finals[k][cell] = state[k];
            }
            x = Directions == 1 ? outputs[0] : cat(outputs, 2);
            if (Dropout > 0 && training && layer < NumLayers - 1) x = nn.functional.dropout(x, Dropout, true);
        }
        var output = !batched ? x.squeeze(1) : BatchFirst ? x.transpose(0, 1) : x;
        return (output, finals.Select(f => batched ? stack(f) : stack(f).squeeze(1)).ToArray());
    }

    /// <summary>State kinds: 2 for the LSTM (h, c), 1 for the GRU (h).</summary>
    private protected abstract int StateCount { get; }

    private bool CheckInput(Tensor input)
    {
        string layout = BatchFirst ? "[batch, steps, features]" : "[steps, batch, features]";
        if (input.dim() is not (2 or 3) || input.shape[^1] != InputSize)
            throw new ArgumentException($"input must be {layout} or unbatched [steps, features] with {InputSize} features; got [{string.Join(", ", input.shape)}].", nameof(input));
        bool batched = input.dim() == 3;
        if (input.shape[batched && BatchFirst ? 1 : 0] == 0)
            throw new ArgumentException("input has no time steps: the sequence length must be at least 1.", nameof(input));
        return batched;
    }
}
