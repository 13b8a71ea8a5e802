using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace QuantSharp.Cli.Demo;

/// <summary>The quantized variants the demo compares with float32.</summary>
internal static class DemoVariants
{
    /// <summary>float16, int8 per-channel, int4 group-32 and W8A8 (calibrated).</summary>
    public static IReadOnlyList<DemoVariant> All { get; } = [];
}
