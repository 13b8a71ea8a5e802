using System.Diagnostics;
using QuantSharp.Tensors;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Bench;

/// <summary>Times the steps the checkpoint quantizer runs on one chunk (4M bf16 values): <c>-- chunk-profile</c>.</summary>
internal static class ChunkProfile
{
    public static int Run()
    {
        torch.set_num_threads(Environment.ProcessorCount);
        using var x = torch.randn([1024, 4096]).to(ScalarType.BFloat16);
        var spec8 = new QuantSpec(QuantType.Int8, QuantScheme.Symmetric, new PerAxis(0));
        var spec4 = new QuantSpec(QuantType.Int4, QuantScheme.Symmetric, new PerGroup(128));
        for (int rep = 0; rep < 2; rep++)
        {
            Time("to float32", () => { using var f = x.to(ScalarType.Float32); });
            using var xf = x.to(ScalarType.Float32);
            Time("nonfinite", () => TensorChecks.NonFiniteCount(xf));
            foreach (var spec in new[] { spec8, spec4 })
            {
                Time($"{spec} quantize", () => { using var q = QuantizedTensor.Quantize(xf, spec); });
                using var q = QuantizedTensor.Quantize(xf, spec);
                Time($"{spec} dequantize", () => { using var d = q.Dequantize(); });
                Time($"{spec} check parts", () => TensorChecks.CheckParts("x", spec.Type, spec.Range, q.Data, q.Scale, q.ZeroPoint));
                using var d = q.Dequantize();
                using var xf32 = x.to(ScalarType.Float32);
                Time($"{spec} sqnr (spans)", () => new SqnrAccumulator().Add(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(xf32.bytes), System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(d.bytes)));
                Time($"{spec} data bytes", () => { using var c = q.Data.contiguous(); _ = c.bytes.Length; });
            }
        }
        return 0;
    }

    private static void Time(string what, Action a)
    {
        var sw = Stopwatch.StartNew();
        a();
        Console.WriteLine($"{what}: {sw.Elapsed.TotalMilliseconds:0.0} ms");
    }
}
