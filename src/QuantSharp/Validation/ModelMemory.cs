using static TorchSharp.torch;

namespace QuantSharp.Validation;

/// <summary>Memory held by a model's parameters and buffers.</summary>
public static class ModelMemory
{
    /// <summary>
    /// Sum of <c>numel * element_size</c> over the parameters and buffers of <paramref name="model"/> (recursively),
    /// each tensor counted once (a parameter shared by two layers, as tied weights are in TorchSharp, counts once).
    /// </summary>
    /// <param name="model">The model.</param>
    public static long Bytes(nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var seen = new HashSet<IntPtr>();
        long total = 0;
        foreach (var t in model.parameters().Cast<Tensor>().Concat(model.buffers()))
        {
            if (t is null || !seen.Add(t.Handle)) continue;
            total += t.numel() * t.element_size();
        }
        return total;
    }
}
