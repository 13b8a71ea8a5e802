using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using QuantSharp.Serialization;
using TorchSharp;

namespace QuantSharp.Bench.Serialization;

/// <summary>
/// Safetensors reading and writing of a 64 MiB float32 tensor against plain file I/O of the same bytes:
/// <c>dotnet run -c Release --project bench/QuantSharp.Bench -- --filter '*Safetensors*'</c>.
/// </summary>
[Config(typeof(InProcessShortConfig))]
[MemoryDiagnoser]
public class SafetensorsBenchmarks
{
    // In process: the generated out-of-process project would miss the patched native TorchSharp library (build/).
    private sealed class InProcessShortConfig : ManualConfig
    {
        public InProcessShortConfig() => AddJob(Job.ShortRun.WithToolchain(InProcessEmitToolchain.Instance));
    }

    private const int Elements = 16 << 20; // 64 MiB of float32
    private string _dir = "";
    private string _file = "";
    private string _out = "";
    private torch.Tensor _tensor = null!;
    private byte[] _raw = [];

    /// <summary>Writes the input file once.</summary>
    [GlobalSetup]
    public void Setup()
    {
        _dir = Path.Combine(Path.GetTempPath(), "qs-bench-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(_dir);
        _file = Path.Combine(_dir, "in.safetensors");
        _out = Path.Combine(_dir, "out.safetensors");
        _tensor = torch.rand(Elements);
        _raw = _tensor.bytes.ToArray();
        SafetensorsWriter.Save(_file, [("w", _tensor)]);
    }

    /// <summary>Removes the files.</summary>
    [GlobalCleanup]
    public void Cleanup()
    {
        _tensor.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    /// <summary>Baseline: read the whole file into an array.</summary>
    [Benchmark(Baseline = true)]
    public int ReadAllBytes() => File.ReadAllBytes(_file).Length;

    /// <summary>Open (header only, mapped) and close.</summary>
    [Benchmark]
    public int OpenHeaderOnly()
    {
        using var f = SafetensorsFile.Open(_file);
        return f.Tensors.Count;
    }

    /// <summary>Open and copy the tensor into a new TorchSharp tensor.</summary>
    [Benchmark]
    public long ReadTensor()
    {
        using var f = SafetensorsFile.Open(_file);
        using var t = f.ReadTensor("w");
        return t.NumberOfElements;
    }

    /// <summary>Open and sum the bytes through the zero-copy span.</summary>
    [Benchmark]
    public long SpanSumBytes()
    {
        using var f = SafetensorsFile.Open(_file);
        long s = 0;
        foreach (byte b in f.GetSpan("w")) s += b;
        return s;
    }

    /// <summary>Plain write of the same bytes (no header, no flush to disk, not atomic).</summary>
    [Benchmark]
    public void WriteAllBytes() => File.WriteAllBytes(_out, _raw);

    /// <summary>Atomic safetensors write (temporary file, fsync, rename).</summary>
    [Benchmark]
    public void SafetensorsSave() => SafetensorsWriter.Save(_out, [("w", _tensor)]);
}
