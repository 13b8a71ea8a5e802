namespace QuantSharp;

/// <summary>Which elements share one scale and zero point.</summary>
public abstract record Granularity
{
    private protected Granularity() { }

    /// <summary>One scale for the whole tensor.</summary>
    public static PerTensor Tensor { get; } = new();

    /// <summary>Parses <c>per-tensor</c>, <c>per-channel</c> (axis 0), <c>per-channel:N</c>, <c>group:G</c>.</summary>
    public static Granularity Parse(string text)
    {
        string t = text.Trim().ToLowerInvariant();
        if (t is "per-tensor" or "tensor") return Tensor;
        if (t is "per-channel" or "channel") return new PerAxis(0);
        if (t.StartsWith("per-channel:", StringComparison.Ordinal) && int.TryParse(t["per-channel:".Length..], out int axis))
            return new PerAxis(axis);
        if (t.StartsWith("group:", StringComparison.Ordinal) && int.TryParse(t["group:".Length..], out int g))
            return g > 0 ? new PerGroup(g)
                : throw new ArgumentException($"Granularity '{text}': the group size must be positive, got {g} (e.g. group:128).", nameof(text));
        throw new ArgumentException(
            $"Unknown granularity '{text}'. Use per-tensor, per-channel, per-channel:AXIS or group:SIZE (e.g. group:128).", nameof(text));
    }
}

/// <summary>One scale and zero point for the whole tensor.</summary>
public sealed record PerTensor : Granularity
{
    /// <inheritdoc/>
    public override string ToString() => "per-tensor";
}

/// <summary>One scale and zero point per index along <paramref name="Axis"/> (per-channel).</summary>
/// <param name="Axis">The channel axis (0 for the output channels of Linear/Conv weights).</param>
public sealed record PerAxis(int Axis) : Granularity
{
    /// <inheritdoc/>
    public override string ToString() => Axis == 0 ? "per-channel" : $"per-channel:{Axis}";
}

/// <summary>
/// One scale and zero point per group of <paramref name="GroupSize"/> consecutive elements along the last
/// dimension (the reduction axis of a Linear weight).
/// </summary>
/// <param name="GroupSize">Elements per group; must divide the last dimension.</param>
public sealed record PerGroup(int GroupSize) : Granularity
{
    /// <inheritdoc/>
    public override string ToString() => $"group:{GroupSize}";
}
