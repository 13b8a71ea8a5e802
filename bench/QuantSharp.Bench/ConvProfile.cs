using System.Diagnostics;
using QuantSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;
namespace QuantSharp.Bench;
internal static class ConvProfile
{
    public static int Run(string[] args)
    {
        int threads = int.Parse(args[0]);
    torch.set_num_threads(threads);
    QuantSharp.Kernels.KernelThreads.Count = threads;
    using var ng = no_grad();
    foreach (var (cin, cout, hw, b) in new[] { (64, 64, 56, 1), (64, 64, 56, 8), (128,128,28,1), (16,32,13,64) })
    {
        var conv = nn.Conv2d(cin, cout, 3, padding: 1);
        var x = torch.randn(b, cin, hw, hw);
        var q = (QuantizedConv)QuantizedModules.Quantize(conv, QuantizationRecipe.Int8WeightOnly().BaseWeights);
        double T(Func<Tensor> f) { double best = 1e9; for (int i = 0; i < 7; i++) { var sw = Stopwatch.StartNew(); using (f()) { } best = Math.Min(best, sw.Elapsed.TotalMilliseconds); } return best; }
        double tf = T(() => conv.call(x));
        double tu = T(() => nn.functional.unfold(x, (3, 3), (1, 1), (1, 1), (1, 1)));
        var cols = nn.functional.unfold(x, (3, 3), (1, 1), (1, 1), (1, 1));
        double tk = T(() => q.Forward(x, ConvolutionRoute.Kernel));
        double tr = T(() => q.Forward(x, ConvolutionRoute.Reference));
        double tdq = T(() => q.DequantizeWeight());
        Console.WriteLine($"{cin}->{cout} {hw} b{b} t{threads}: float {tf:F2} unfold {tu:F2} gemm {tk:F2} ref {tr:F2} dequant {tdq:F3}");
    }
    
        return 0;
    }
}
