using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Bench;

/// <summary>
/// Is libtorch's bfloat16 arithmetic right on this CPU? <c>dotnet run -c Release --project bench/QuantSharp.Bench --
/// bf16-probe</c> runs libtorch's bfloat16 <c>conv2d</c> on inputs <c>[3, C, 9, 11]</c> (C = 1-32) with 1x1 to 5x5
/// kernels and 10, 16 and 32 output channels, and its bfloat16 <c>linear</c> on 1-512 rows, against the same operation in
/// float32 on the same (bfloat16-rounded) values, and prints every case whose largest difference exceeds 2% of the
/// largest float32 output, the largest difference between a bfloat16 call and the same call on copies of its inputs,
/// and the linear cases; all of that is libtorch alone, what <c>Modules.BFloat16Check</c> guards against (docs/ACCURACY.md,
/// "bfloat16 compute"). Last, the check's own verdicts.
/// </summary>
internal static class BFloat16Probe
{
    public static int Run()
    {
        using var noGrad = no_grad();
        torch.manual_seed(41);
        int bad = 0, cases = 0;
        foreach (int c in new[] { 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 32 })
            foreach (var (kh, kw) in new[] { (1, 1), (3, 3), (3, 4), (1, 4), (5, 5) })
                foreach (int oc in new[] { 10, 16, 32 })
                {
                    using var scope = NewDisposeScope();
                    var x = torch.randn(3, c, 9, 11).to(ScalarType.BFloat16);
                    var w = torch.randn(oc, c, kh, kw).to(ScalarType.BFloat16);
                    double e = Relative(nn.functional.conv2d(x, w), nn.functional.conv2d(x.to(ScalarType.Float32), w.to(ScalarType.Float32)));
                    cases++;
                    if (e <= 0.02) continue;
                    bad++;
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"conv2d C={c} {kh}x{kw} out={oc}: max |bf16 - f32| {e:F2} of the largest output"));
                }
        Console.WriteLine($"conv2d: {bad} of {cases} cases off by more than 2% of the largest output");
        {
            using var scope = NewDisposeScope();
            var x = torch.randn(3, 6, 9, 11).to(ScalarType.BFloat16);
            var w = torch.randn(10, 6, 3, 4).to(ScalarType.BFloat16);
            var a = nn.functional.conv2d(x, w).to(ScalarType.Float32);
            double largest = 0;
            for (int i = 0; i < 8; i++)
            {
                // Again, on copies of the same inputs (new memory).
                var b = nn.functional.conv2d(x.clone(), w.clone()).to(ScalarType.Float32);
                largest = Math.Max(largest, (a - b).abs().max().item<float>());
            }
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"conv2d C=6 3x4 out=10 again on copies of its inputs, 8 times: max difference {largest:F2}, largest output {a.abs().max().item<float>():F2}"));
        }
        foreach (var (m, k, n) in new[] { (1, 64, 10), (8, 72, 10), (64, 100, 10), (512, 64, 10), (512, 64, 1000), (3, 6, 1), (100, 100, 100), (512, 4096, 4096) })
        {
            using var scope = NewDisposeScope();
            var x = torch.randn(m, k).to(ScalarType.BFloat16);
            var w = torch.randn(n, k).to(ScalarType.BFloat16);
            double e = Relative(nn.functional.linear(x, w), nn.functional.linear(x.to(ScalarType.Float32), w.to(ScalarType.Float32)));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"linear {m}x{k} by {n}x{k}: max |bf16 - f32| {e:F4} of the largest output"));
        }
        Console.WriteLine($"QuantSharp's BFloat16Check: convolutions {(Modules.BFloat16Check.ConvolutionsAgree() ? "pass" : "fail")}, linear {(Modules.BFloat16Check.MatMulsAgree() ? "pass" : "fail")}");
        return 0;
    }

    /// <summary>max |a - b| / max |b|, in float64.</summary>
    private static double Relative(Tensor a, Tensor b)
    {
        using var scope = NewDisposeScope();
        var d = a.to(ScalarType.Float64) - b.to(ScalarType.Float64);
        return (d.abs().max() / b.to(ScalarType.Float64).abs().max()).item<double>();
    }
}
