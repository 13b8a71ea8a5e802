using BenchmarkDotNet.Attributes;
using QuantSharp.Modules.Managed;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Bench;

/// <summary>
/// Forward pass (eval, float32, no_grad) of TorchSharp's native modules against their managed counterparts, which
/// quantized layers can be swapped into: what a user pays for making these layers quantizable. Attention and encoder
/// layer: E = 384, 8 heads, feed-forward 1536, sequence 128, batch 8. LSTM/GRU: input 256, hidden 256, one layer,
/// sequence 64, batch 8. Run: <c>dotnet run -c Release --project bench/QuantSharp.Bench -- --filter '*ManagedModules*'</c>.
/// </summary>
[Config(typeof(InProcessConfig))]
[MemoryDiagnoser]
public class ManagedModulesBenchmark
{
    private Func<float> _native = null!;
    private Func<float> _managed = null!;

    /// <summary>The module type.</summary>
    [Params("MultiheadAttention", "TransformerEncoderLayer", "LSTM", "GRU")]
    public string Module { get; set; } = "MultiheadAttention";

    [GlobalSetup]
    public void Setup()
    {
        torch.manual_seed(1);
        switch (Module)
        {
            case "MultiheadAttention":
            {
                var native = nn.MultiheadAttention(384, 8);
                var managed = ManagedModules.FromNative(native);
                var x = randn(128, 8, 384);
                _native = () => First(native.call(x, x, x, null, false, null).Item1);
                _managed = () => First(managed.call(x, x, x, null, false, null).Item1);
                break;
            }
            case "TransformerEncoderLayer":
            {
                var native = nn.TransformerEncoderLayer(384, 8, 1536, 0.1);
                native.eval();
                var managed = ManagedModules.FromNative(native);
                var x = randn(128, 8, 384);
                _native = () => First(native.call(x));
                _managed = () => First(managed.call(x));
                break;
            }
            case "LSTM":
            {
                var native = nn.LSTM(256, 256);
                var managed = ManagedModules.FromNative(native);
                var x = randn(64, 8, 256);
                _native = () => First(native.call(x).Item1);
                _managed = () => First(managed.call(x).Item1);
                break;
            }
            case "GRU":
            {
                var native = nn.GRU(256, 256);
                var managed = ManagedModules.FromNative(native);
                var x = randn(64, 8, 256);
                _native = () => First(native.call(x).Item1);
                _managed = () => First(managed.call(x).Item1);
                break;
            }
            default:
                throw new ArgumentException(Module);
        }
    }

    private static float First(Tensor t) => t[0, 0, 0].item<float>();

    [Benchmark(Baseline = true)]
    public float Native() => Run(_native, grad: false);

    [Benchmark]
    public float Managed() => Run(_managed, grad: false);

    /// <summary>The native module with gradients enabled: for the float32 LSTM the path that computes correct values (see TORCHSHARP notes in docs/BENCHMARKS.md).</summary>
    [Benchmark]
    public float NativeWithGrad() => Run(_native, grad: true);

    private static float Run(Func<float> forward, bool grad = false)
    {
        using var scope = NewDisposeScope();
        using var mode = set_grad_enabled(grad);
        return forward();
    }
}
