using static TorchSharp.torch;

namespace QuantSharp.Validation;

/// <summary>Memory held by a model's parameters and buffers.</summary>
public static class ModelMemory
{
    /// <summary>
    /// Sum of <c>numel * element_size</c> over the parameters and buffers of <paramref name="model"/> (recursively),
    /// each storage counted once (a weight tied between two layers counts once, whichever tensor objects refer to it).
    /// </summary>
    /// <param name="model">The model.</param>
    public static long Bytes(nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var seen = new HashSet<(nint, long, ScalarType)>();
        long total = 0;
        foreach (var t in model.parameters().Cast<Tensor>().Concat(model.buffers()))
        {
            if (t is null) continue;
            if (QuantSharp.Modules.ModuleQuantization.StorageKey(t) is { } key && !seen.Add(key)) continue;
            total += t.numel() * t.element_size();
        }
        return total;
    }
}
