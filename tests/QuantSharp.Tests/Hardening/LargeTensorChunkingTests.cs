using System.Text;
using QuantSharp.Observers;
using QuantSharp.Pipeline;
using QuantSharp.Primitives;
using QuantSharp.Serialization;
using QuantSharp.Tests.Checkpoints;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Hardening;

/// <summary>
/// Issue 8, tensors of any size: observers and the checkpoint path read a tensor in chunks (observers in two passes:
/// range, then histogram), so no span over the whole tensor is needed. The chunking is tested with small chunk sizes,
/// whose results must equal the unchunked ones bit for bit; one opt-in test (QUANTSHARP_LARGE_TESTS=1) quantizes a
/// real 2^29-element (2 GiB) tensor.
/// </summary>
public class LargeTensorChunkingTests
{
    private static float[] Data(int n, int seed)
    {
        var r = new Random(seed);
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(r.NextDouble() * 2 - 1) * (i % 97 == 0 ? 40f : 1f); // outliers for the histograms
        return x;
    }

    public static TheoryData<string, int?, int?, HistogramMethod, QuantScheme> ObserverCases() => new()
    {
        { "minmax", null, null, HistogramMethod.Entropy, QuantScheme.Affine },
        { "minmax", 0, null, HistogramMethod.Entropy, QuantScheme.Symmetric },
        { "minmax", 1, null, HistogramMethod.Entropy, QuantScheme.Affine },
        { "minmax", null, 16, HistogramMethod.Entropy, QuantScheme.Symmetric },
        { "moving-average", null, null, HistogramMethod.Entropy, QuantScheme.Affine },
        { "moving-average", 1, null, HistogramMethod.Entropy, QuantScheme.Symmetric },
        { "histogram", null, null, HistogramMethod.Entropy, QuantScheme.Affine },
        { "histogram", null, null, HistogramMethod.L2, QuantScheme.Affine },
        { "percentile", null, null, HistogramMethod.Entropy, QuantScheme.Symmetric },
        { "percentile", null, null, HistogramMethod.Entropy, QuantScheme.Affine },
    };

    [Theory]
    [MemberData(nameof(ObserverCases))]
    public void ObserversGiveTheSameParametersForAnyChunkSize(string name, int? axis, int? group, HistogramMethod method, QuantScheme scheme)
    {
        long[] shape = [37, 48];
        float[] x = Data(37 * 48, 5);
        var options = new ObserverOptions { Axis = axis, GroupSize = group, Method = method, Scheme = scheme, MergeBatches = true };
        ObserverResult Run(int? chunk)
        {
            FloatChunks.ChunkElementsForTests = chunk;
            try
            {
                var o = (ObserverBase)ObserverFactory.Create(name, options);
                o.ObserveValues(x, shape);
                o.ObserveValues(x.Select(v => v * 1.5f).ToArray(), shape); // a second batch: merging is per observation, not per chunk
                return o.ComputeQParams();
            }
            finally { FloatChunks.ChunkElementsForTests = null; }
        }
        var whole = Run(null);
        foreach (int chunk in new[] { 1, 7, 48, 100, 1000 })
        {
            var part = Run(chunk);
            Assert.Equal(Bits(whole.Scale), Bits(part.Scale));
            Assert.Equal(whole.ZeroPoint, part.ZeroPoint);
            Assert.Equal(Bits(whole.Min), Bits(part.Min));
            Assert.Equal(Bits(whole.Max), Bits(part.Max));
            Assert.Equal(whole.Threshold is null ? null : Bits(whole.Threshold), part.Threshold is null ? null : Bits(part.Threshold));
        }
        // The parameters are those of the data, not defaults: one channel's range is checked by hand.
        if (name == "minmax" && axis == 1)
        {
            var column = Enumerable.Range(0, 37).Select(r => x[r * 48 + 5]).Concat(Enumerable.Range(0, 37).Select(r => x[r * 48 + 5] * 1.5f)).ToArray();
            Assert.Equal(column.Min(), whole.Min[5]);
            Assert.Equal(column.Max(), whole.Max[5]);
        }
    }

    [Fact]
    public void ANonFiniteValueIsNamedWithItsIndexInAnyChunk()
    {
        float[] x = Data(1000, 1);
        x[777] = float.NaN;
        FloatChunks.ChunkElementsForTests = 100;
        try
        {
            var o = (ObserverBase)ObserverFactory.Create("histogram");
            var ex = Assert.Throws<ArgumentException>(() => o.ObserveValues(x, [10, 100]));
            Assert.Contains("flat index 777", ex.Message);
        }
        finally { FloatChunks.ChunkElementsForTests = null; }
    }

    public static TheoryData<string, string, string, ScalarType> CheckpointCases() => new()
    {
        { "minmax", "per-channel:1", "int8", ScalarType.Float32 },
        { "minmax", "per-tensor", "uint8", ScalarType.BFloat16 },
        { "minmax", "per-channel", "int8", ScalarType.Float16 },
        { "minmax", "group:32", "int4", ScalarType.Float32 },
        { "moving-average", "per-channel", "int8", ScalarType.Float32 },
        { "moving-average", "per-channel:1", "uint4", ScalarType.BFloat16 },
        { "histogram", "per-tensor", "uint8", ScalarType.Float32 },
        { "percentile", "per-tensor", "int8", ScalarType.Float64 },
        { "minmax", "per-tensor", "float16", ScalarType.Float32 },
    };

    [Theory]
    [MemberData(nameof(CheckpointCases))]
    public void CheckpointPathsGiveTheSameFileForAnyChunkSize(string observer, string granularity, string qtype, ScalarType dtype)
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], dtype);
        var recipe = new QuantizationRecipe
        {
            Type = QuantTypeInfo.Parse(qtype),
            Scheme = qtype.StartsWith('u') ? QuantScheme.Affine : QuantScheme.Symmetric,
            Granularity = Granularity.Parse(granularity),
            WeightObserver = observer,
        };
        var unchunked = CheckpointQuantizer.Quantize(input, dir["whole.safetensors"], recipe);
        Assert.True(unchunked.Passed, string.Join("\n", unchunked.Problems));
        CheckpointChunks.ChunkElementsForTests = 1000; // 7 rows of 128 or 3 of 256 per chunk, rows split unevenly
        FloatChunks.ChunkElementsForTests = 777;          // observer passes cut rows in the middle
        try
        {
            CheckpointQuantizer.Quantize(input, dir["chunked.safetensors"], recipe);
            // validate reads both files in the same row chunks: the same SQNR as quantize measured on the whole tensor.
            var validation = CheckpointValidator.Compare(input, dir["whole.safetensors"]);
            foreach (var t in unchunked.Layers.Where(t => t.Quantized))
                Assert.Equal(t.WeightSqnrDb!.Value, validation.Layers.Single(v => v.Name == t.Name).WeightSqnrDb!.Value, 9);
        }
        finally
        {
            CheckpointChunks.ChunkElementsForTests = null;
            FloatChunks.ChunkElementsForTests = null;
        }
        Assert.Equal(File.ReadAllBytes(dir["whole.safetensors"]), File.ReadAllBytes(dir["chunked.safetensors"]));

        // And both equal the model path's one-shot quantization of the whole weight (observer fed the tensor at once).
        using var source = SafetensorsFile.Open(input);
        using var output = SafetensorsFile.Open(dir["chunked.safetensors"]);
        const string name = "model.layers.1.mlp.down_proj.weight";
        using var w = source.ReadTensor(name);
        var spec = unchunked.Layers.Single(t => t.Name == name).Spec!;
        using var q = WeightQuantization.Quantize(w, spec, observer, name);
        Assert.Equal(SyntheticCheckpoint.Bytes(q.Data), output.ReadBytes(name));
        if (q.Scale is not null) Assert.Equal(SyntheticCheckpoint.Bytes(q.Scale), output.ReadBytes(name + QuantizedCheckpoint.ScaleSuffix));
    }

    [Fact]
    public void ARowOver2GiBIsRefusedByNameBeforeAnyWork()
    {
        // A sparse file: a [2, 2^29] F16 tensor (2 GiB of data that takes no disk space) and a small bias.
        using var dir = new TempDir();
        string path = dir["huge-row.safetensors"];
        long cols = 1L << 29, bytes = 2 * cols * 2;
        string header = $"{{\"b\":{{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}},\"wide.weight\":{{\"dtype\":\"F16\",\"shape\":[2,{cols}],\"data_offsets\":[8,{8 + bytes}]}}}}";
        header = header.PadRight((header.Length + 7) / 8 * 8);
        using (var f = new FileStream(path, FileMode.CreateNew))
        {
            f.Write(BitConverter.GetBytes((ulong)header.Length));
            f.Write(Encoding.UTF8.GetBytes(header));
            f.SetLength(8 + header.Length + 8 + bytes);
        }
        var ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(path, dir["out.safetensors"]));
        Assert.Contains("'wide.weight'", ex.Message);
        Assert.Contains("536,870,911 elements", ex.Message);
        Assert.Contains("--exclude 'wide.weight'", ex.Message);
        Assert.Equal(["huge-row.safetensors"], Directory.GetFileSystemEntries(dir.Path).Select(Path.GetFileName));
    }

    private static int[] Bits(float[] values) => values.Select(BitConverter.SingleToInt32Bits).ToArray();

    /// <summary>
    /// Opt-in (QUANTSHARP_LARGE_TESTS=1; writes a 2 GiB file and reads it several times): a [2^15, 2^14] float32 weight,
    /// 2^29 elements, quantized per-channel along axis 1 and with the histogram observer, whose parameters span the
    /// whole tensor. Column j holds ((i * 7919 + j * 104729) mod 2001 - 1000) / 1000 * (1 + j mod 3): its range is
    /// exactly +-(1 + j mod 3).
    /// </summary>
    [Fact]
    public void ATensorOf2To29ElementsIsQuantizedOnWholeTensorPaths()
    {
        if (Environment.GetEnvironmentVariable("QUANTSHARP_LARGE_TESTS") != "1") return;
        const int Rows = 1 << 15, Cols = 1 << 14;
        using var dir = new TempDir();
        string input = dir["big.safetensors"];
        WriteBig(input, Rows, Cols);

        var report = CheckpointQuantizer.Quantize(input, dir["axis1.safetensors"], new QuantizationRecipe { Granularity = new PerAxis(1) });
        Assert.True(report.Passed, string.Join("\n", report.Problems));
        Assert.InRange(report.Layers.Single().WeightSqnrDb!.Value, 35, 60);
        using (var q = SafetensorsFile.Open(dir["axis1.safetensors"]))
        {
            var scales = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(q.ReadBytes("big.weight" + QuantizedCheckpoint.ScaleSuffix));
            Assert.Equal(Cols, scales.Length);
            for (int j = 0; j < Cols; j += 1021)
            {
                float k = 1 + j % 3;
                Assert.Equal(QParams.Choose(-k, k, QuantRange.For(QuantType.Int8, false), QuantScheme.Symmetric).Scale, scales[j]);
            }
        }
        File.Delete(dir["axis1.safetensors"]);

        report = CheckpointQuantizer.Quantize(input, dir["hist.safetensors"], new QuantizationRecipe
        {
            Type = QuantType.UInt8, Scheme = QuantScheme.Affine, Granularity = Granularity.Tensor, WeightObserver = "histogram",
        });
        Assert.True(report.Passed, string.Join("\n", report.Problems));
        Assert.InRange(report.Layers.Single().WeightSqnrDb!.Value, 20, 60);
    }

    private static void WriteBig(string path, int rows, int cols)
    {
        long bytes = (long)rows * cols * 4;
        string header = $"{{\"big.weight\":{{\"dtype\":\"F32\",\"shape\":[{rows},{cols}],\"data_offsets\":[0,{bytes}]}}}}";
        header = header.PadRight((header.Length + 7) / 8 * 8);
        using var f = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
        f.Write(BitConverter.GetBytes((ulong)header.Length));
        f.Write(Encoding.UTF8.GetBytes(header));
        var row = new float[cols];
        for (int i = 0; i < rows; i++)
        {
            for (int j = 0; j < cols; j++)
                row[j] = ((int)(((long)i * 7919 + (long)j * 104729) % 2001) - 1000) / 1000f * (1 + j % 3);
            f.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(row.AsSpan()));
        }
    }
}
