using BenchmarkDotNet.Running;

namespace QuantSharp.Bench;

/// <summary>Runs the benchmarks: <c>dotnet run -c Release --project bench/QuantSharp.Bench -- --filter '*'</c>.</summary>
public static class Program
{
    public static int Main(string[] args)
    {
        // QUANTSHARP_BENCH_POOL=workers runs the kernels on QuantSharp's own workers instead of libtorch's OpenMP team
        // (KernelThreads.UseOpenMP), to compare the two in one build.
        if (Environment.GetEnvironmentVariable("QUANTSHARP_BENCH_POOL") == "workers") QuantSharp.Kernels.KernelThreads.UseOpenMP = false;
        if (args.Length > 0 && args[0] == "checkpoint") return CheckpointBench.Run(args[1..]); // end-to-end checkpoint run, see CheckpointBench
        if (args.Length > 0 && args[0] == "chunk-profile") return ChunkProfile.Run();
        if (args.Length > 0 && args[0] == "small-linear") return SmallLinearProbe.Run(args[1..]); // small and medium Linear layers vs float32, see SmallLinearProbe
        if (args.Length > 0 && args[0] == "conv") return ConvBench.Run(args[1..]); // quantized vs float32 convolutions, see ConvBench
        if (args.Length > 0 && args[0] == "bf16-probe") return BFloat16Probe.Run(); // libtorch's bfloat16 conv/linear against float32, see BFloat16Probe
        if (args.Length > 0 && args[0] == "cores-probe") return CoresProbe.Run(args[1..]); // two threads of pure arithmetic against one, window by window, see CoresProbe
        if (args.Length > 0 && args[0] == "int-gemm-profile") return IntegerGemmProfile.Run(args[1..]); // W8A8 GEMM vs bf16 Linear, see IntegerGemmProfile
        if (args.Length > 0 && args[0] == "mechanisms") return MechanismBench.Run(); // replaced vs materialized layers, see MechanismBench
        if (args.Length > 0 && args[0] == "pack-probe") return PackProbe.Run(args[1..]); // Im2Col.PackStrip alone, see PackProbe
        if (args.Length > 0 && args[0] == "micro-probe") return MicroProbe.Run(args[1..]); // the float micro-kernel alone, operands in L1, see MicroProbe
        if (args.Length > 0 && args[0] == "dequant-probe") return DequantProbe.Run(args[1..]); // dequantize + libtorch in parts, see DequantProbe
        if (args.Length > 0 && args[0] == "stream-probe") return StreamProbe.Run(args[1..]); // the cold and warm sum of a weight's bytes, see StreamProbe
        if (args.Length > 0 && args[0] == "row-kernels") return RowKernelProbe.Run(args[1..]); // batch-1/8 kernels on 1 and 2 threads, see RowKernelProbe
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        return 0;
    }
}
