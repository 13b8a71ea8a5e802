using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Modules.Managed;

/// <summary>
/// Settings of native TorchSharp modules that cannot be read back from them. TorchSharp exposes a native module's
/// parameters but not its construction options: the number of attention heads, the encoder activation,
/// <c>add_zero_attn</c> and <c>batch_first</c> are therefore detected by running the native module and the candidate
/// managed module on a small random probe input (in eval mode, without gradients) and keeping the one setting that
/// reproduces the native output. A value given here replaces the detection (and is still checked the same way).
/// </summary>
public sealed record NativeConversionOptions
{
    /// <summary>Attention heads of every converted attention layer; null detects them (divisors of the model dimension).</summary>
    public long? NumHeads { get; init; }

    /// <summary>Feed-forward activation of converted encoder layers; null detects it (ReLU or GELU).</summary>
    public nn.Activations? Activation { get; init; }

    /// <summary>Whether converted attention layers append a zero key/value (<c>add_zero_attn</c>); null detects it.</summary>
    public bool? AddZeroAttn { get; init; }

    /// <summary>Whether converted LSTM/GRU layers take batch-first input; null detects it.</summary>
    public bool? BatchFirst { get; init; }

    /// <summary>
    /// Dropout probability of the managed modules (attention weights, encoder branches, between recurrent layers).
    /// It cannot be read from the native module nor detected (it only acts in training mode): default 0, which is exact
    /// for inference; set the native value before training the converted model.
    /// </summary>
    public double Dropout { get; init; }
}

/// <summary>A native module that <see cref="ManagedModules.ReplaceNative"/> replaced by its managed counterpart.</summary>
/// <param name="Name">Dotted name in the model (e.g. <c>encoder.attn</c>).</param>
/// <param name="NativeType">Type name of the native module.</param>
/// <param name="Managed">The managed module now in the model.</param>
public sealed record NativeModuleReplacement(string Name, string NativeType, nn.Module Managed);

/// <summary>A native module that stays in the model, and why.</summary>
/// <param name="Name">Dotted name in the model (empty for the model itself).</param>
/// <param name="NativeType">Type name of the native module.</param>
/// <param name="Reason">Why it could not be replaced, and how to make it replaceable.</param>
public sealed record NativeModuleKept(string Name, string NativeType, string Reason);

/// <summary>Outcome of <see cref="ManagedModules.ReplaceNative"/>.</summary>
/// <param name="Replaced">Native modules replaced by managed ones, in model order.</param>
/// <param name="Kept">Native modules left in place (declared type too narrow, no managed counterpart, or settings not detectable).</param>
public sealed record NativeConversionResult(IReadOnlyList<NativeModuleReplacement> Replaced, IReadOnlyList<NativeModuleKept> Kept);
