using QuantSharp.Serialization;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Checkpoints;

/// <summary>Bad input gives a precise message, the input is never modified and nothing appears under the output name.</summary>
public class CheckpointErrorTests
{
    private static void AssertNothingWritten(TempDir dir, params string[] expectedEntries)
        => Assert.Equal(expectedEntries.Order(), Directory.GetFileSystemEntries(dir.Path).Select(Path.GetFileName).Order());

    [Fact]
    public void MalformedAndTruncatedInputs()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir["garbage.safetensors"], "this is not a safetensors file at all"u8.ToArray());
        var ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(dir["garbage.safetensors"], dir["out.safetensors"]));
        Assert.Contains("garbage.safetensors", ex.Message);

        string good = SyntheticCheckpoint.WriteFile(dir["good.safetensors"], ScalarType.Float32);
        var bytes = File.ReadAllBytes(good);
        File.WriteAllBytes(dir["cut.safetensors"], bytes[..^100]);
        ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(dir["cut.safetensors"], dir["out.safetensors"]));
        Assert.Contains("cut.safetensors", ex.Message);
        Assert.IsType<SafetensorsFormatException>(ex.InnerException);
        AssertNothingWritten(dir, "garbage.safetensors", "good.safetensors", "cut.safetensors");

        ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(dir["missing.safetensors"], dir["out.safetensors"]));
        Assert.Contains("missing.safetensors", ex.Message);
    }

    [Fact]
    public void NonFloatTensorAskedFor()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        var ex = Assert.Throws<CheckpointQuantizationException>(() =>
            CheckpointQuantizer.Quantize(input, dir["out.safetensors"], new QuantizationRecipe { Include = ["model.*"], Granularity = Granularity.Tensor }));
        Assert.Contains("'model.position_ids'", ex.Message);
        Assert.Contains("I64", ex.Message);
        Assert.Contains("not a floating-point tensor", ex.Message);
        AssertNothingWritten(dir, "in.safetensors");
    }

    [Fact]
    public void NaNAndInfinityNameTheTensor()
    {
        using var dir = new TempDir();
        var tensors = SyntheticCheckpoint.Make(ScalarType.BFloat16);
        try
        {
            var up = tensors.Single(t => t.Name == "model.layers.1.mlp.up_proj.weight").Tensor;
            up[3, 5].fill_(float.NaN);
            up[7, 1].fill_(float.PositiveInfinity);
            SafetensorsWriter.Save(dir["in.safetensors"], tensors);
        }
        finally { foreach (var (_, t) in tensors) t.Dispose(); }
        var before = SyntheticCheckpoint.HashTree(dir["in.safetensors"]);
        foreach (var gran in new Granularity[] { Granularity.Tensor, new PerAxis(0), new PerGroup(32) })
        {
            var ex = Assert.Throws<CheckpointQuantizationException>(() =>
                CheckpointQuantizer.Quantize(dir["in.safetensors"], dir["out.safetensors"], new QuantizationRecipe { Granularity = gran }));
            Assert.Contains("'model.layers.1.mlp.up_proj.weight'", ex.Message);
            Assert.Contains("2 NaN or infinite", ex.Message);
        }
        AssertNothingWritten(dir, "in.safetensors");
        Assert.Equal(before, SyntheticCheckpoint.HashTree(dir["in.safetensors"]));
    }

    [Fact]
    public void GroupSizeThatDoesNotDivideFallsBackOrIsRefusedWhenStrict()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        var g96 = new QuantizationRecipe { Type = QuantType.Int4, Granularity = new PerGroup(96) };
        var ex = Assert.Throws<RecipeException>(() =>
            CheckpointQuantizer.Quantize(input, dir["out.safetensors"], g96 with { StrictGroupSize = true }));
        Assert.Contains("'model.embed_tokens.weight'", ex.Message);
        Assert.Contains("[256, 128]", ex.Message);
        Assert.Contains("96", ex.Message);
        AssertNothingWritten(dir, "in.safetensors");

        // Without StrictGroupSize each tensor falls back on its own: reduction 128 -> group 64 (largest even divisor <= 96),
        // reduction 256 (down_proj) -> group 64 too; every fallback is a warning of the report.
        var r = CheckpointQuantizer.Quantize(input, dir["out.safetensors"], g96);
        Assert.True(r.Written);
        Assert.All(r.Layers.Where(t => t.Quantized), t => Assert.Equal(new PerGroup(64), t.Spec!.Granularity));
        Assert.Equal(SyntheticCheckpoint.QuantizedByDefault.Length, r.Warnings.Count);
        Assert.Contains(r.Warnings, w => w.Contains("'model.embed_tokens.weight' [256, 128]: group size 96 does not divide the reduction length 128"));
        using var ckpt = QuantizedCheckpoint.Load(dir["out.safetensors"]);
        Assert.Equal(new PerGroup(64), ckpt.Layers["lm_head.weight"].Granularity);
    }

    [Fact]
    public void UnknownTypesAndObserversAreRefused()
    {
        var ex = Assert.Throws<ArgumentException>(() => QuantTypeInfo.Parse("int3"));
        Assert.Contains("Unknown quantization type 'int3'", ex.Message);
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        Exception e2 = Assert.Throws<RecipeException>(() =>
            CheckpointQuantizer.Quantize(input, dir["out.safetensors"], new QuantizationRecipe { WeightObserver = "bogus" }));
        Assert.Contains("unknown observer 'bogus'", e2.Message);
        // The histogram observers are per-tensor: asking for them per-channel names the tensor.
        e2 = Assert.Throws<CheckpointQuantizationException>(() =>
            CheckpointQuantizer.Quantize(input, dir["out.safetensors"], new QuantizationRecipe { WeightObserver = "histogram" }));
        Assert.Contains("'model.embed_tokens.weight'", e2.Message);
        AssertNothingWritten(dir, "in.safetensors");
    }

    [Fact]
    public void OutputEqualToInputIsRefused()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        var before = SyntheticCheckpoint.HashTree(input);
        var ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(input, Path.Combine(dir.Path, ".", "in.safetensors")));
        Assert.Contains("is the input", ex.Message);
        Assert.Equal(before, SyntheticCheckpoint.HashTree(input));

        string folder = SyntheticCheckpoint.WriteSharded(dir["sharded"], ScalarType.Float32);
        ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(folder, folder + "/"));
        Assert.Contains("is the input", ex.Message);
        ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(folder, dir["in.safetensors"]));
        Assert.Contains("must be a folder", ex.Message);
        Directory.CreateDirectory(dir["full"]);
        File.WriteAllText(Path.Combine(dir["full"], "x.txt"), "x");
        ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(folder, dir["full"]));
        Assert.Contains("not empty", ex.Message);
        ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(input, dir["full"]));
        Assert.Contains("is a folder", ex.Message);
        // A single-file input to "new/" (no such folder yet): the same advice, nothing written.
        string slash = dir["new"] + Path.DirectorySeparatorChar;
        ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(input, slash));
        Assert.Contains($"The output '{slash}' names a folder; for a single-file input give an output file name, e.g. '{Path.Combine(slash, "in.safetensors")}'", ex.Message);
        Assert.False(Path.Exists(dir["new"]));
    }

    [Fact]
    public void FullDiskLeavesNothingBehind()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        File.WriteAllText(dir["out.safetensors"], "previous output"); // an earlier file under the final name survives
        SafetensorsStreamWriter.StreamFactoryForTests = p => new FullDiskStream(new FileStream(p, FileMode.CreateNew, FileAccess.ReadWrite), 200_000);
        try
        {
            var ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(input, dir["out.safetensors"], overwrite: true));
            Assert.Contains("disk is full", ex.Message);
            Assert.Contains("Free some space", ex.Message);
            Assert.Contains("temporary files were removed", ex.Message);
            Assert.IsAssignableFrom<IOException>(ex.InnerException);
        }
        finally { SafetensorsStreamWriter.StreamFactoryForTests = null; }
        AssertNothingWritten(dir, "in.safetensors", "out.safetensors");
        Assert.Equal("previous output", File.ReadAllText(dir["out.safetensors"]));
    }

    [Fact]
    public void ValidationFailurePolicies()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        var strict = new QuantizationRecipe
        {
            Type = QuantType.Int4,
            Validation = new ValidationPolicy { SqnrThresholdsDb = new Dictionary<QuantType, double> { [QuantType.Int4] = 45 } },
        };
        var ex = Assert.Throws<CheckpointValidationException>(() => CheckpointQuantizer.Quantize(input, dir["out.safetensors"], strict));
        Assert.Contains("below the int4 threshold 45 dB", ex.Message);
        Assert.IsAssignableFrom<QuantizationException>(ex);
        Assert.Equal(SyntheticCheckpoint.QuantizedByDefault.Length, ex.Report.Problems.Count);
        Assert.False(ex.Report.Written);
        AssertNothingWritten(dir, "in.safetensors");

        var warn = CheckpointQuantizer.Quantize(input, dir["out.safetensors"], strict with { Validation = strict.Validation with { OnFailure = ValidationFailureMode.Warn } });
        Assert.True(warn.Written);
        Assert.False(warn.Passed);
        Assert.True(File.Exists(dir["out.safetensors"]));

        var skip = CheckpointQuantizer.Quantize(input, dir["out2.safetensors"], strict with { Validation = strict.Validation with { Enabled = false } });
        Assert.True(skip.Passed);
        Assert.All(skip.Layers, t => Assert.Null(t.WeightSqnrDb));
    }

    [Fact]
    public void AlreadyQuantizedInputAndNameClashesAreRefused()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        CheckpointQuantizer.Quantize(input, dir["q.safetensors"]);
        var ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(dir["q.safetensors"], dir["qq.safetensors"]));
        Assert.Contains("already a QuantSharp quantized checkpoint", ex.Message);

        using (var a = torch.randn(64, 64))
        using (var b = torch.ones(64))
            SafetensorsWriter.Save(dir["clash.safetensors"], [("w.weight", a), ("w.weight.scale", b)]);
        ex = Assert.Throws<CheckpointQuantizationException>(() => CheckpointQuantizer.Quantize(dir["clash.safetensors"], dir["c.safetensors"]));
        Assert.Contains("'w.weight.scale'", ex.Message);
    }

    [Fact]
    public void ReloadTestCatchesBytesThatDifferFromWhatWasWritten()
    {
        using var dir = new TempDir();
        string input = SyntheticCheckpoint.WriteFile(dir["in.safetensors"], ScalarType.Float32);
        // A disk that silently flips one bit of the 100,000th byte written.
        SafetensorsStreamWriter.StreamFactoryForTests = p => new BitFlipStream(new FileStream(p, FileMode.CreateNew, FileAccess.ReadWrite), 100_000);
        CheckpointValidationException ex;
        try { ex = Assert.Throws<CheckpointValidationException>(() => CheckpointQuantizer.Quantize(input, dir["out.safetensors"])); }
        finally { SafetensorsStreamWriter.StreamFactoryForTests = null; }
        Assert.Single(ex.Report.Problems);
        Assert.Contains("reload: the bytes of", ex.Report.Problems[0]);
        AssertNothingWritten(dir, "in.safetensors");
    }

    /// <summary>A file stream whose writes go through <see cref="WriteThrough"/>; everything else passes to the file.</summary>
    private abstract class InterceptingStream(FileStream inner) : Stream
    {
        protected FileStream Inner => inner;
        public override bool CanRead => inner.CanRead;
        public override bool CanSeek => inner.CanSeek;
        public override bool CanWrite => true;
        public override long Length => inner.Length;
        public override long Position { get => inner.Position; set => inner.Position = value; }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, count);
        public override long Seek(long offset, SeekOrigin origin) => inner.Seek(offset, origin);
        public override void SetLength(long value) => inner.SetLength(value);
        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));
        public override void Write(ReadOnlySpan<byte> buffer) => WriteThrough(buffer);
        protected abstract void WriteThrough(ReadOnlySpan<byte> buffer);
        protected override void Dispose(bool disposing) { if (disposing) inner.Dispose(); base.Dispose(disposing); }
    }

    /// <summary>A file stream that flips one bit of the byte written at offset <c>at</c>.</summary>
    private sealed class BitFlipStream(FileStream inner, long at) : InterceptingStream(inner)
    {
        private long _written;
        protected override void WriteThrough(ReadOnlySpan<byte> buffer)
        {
            if (_written <= at && at < _written + buffer.Length)
            {
                var copy = buffer.ToArray();
                copy[at - _written] ^= 0x10;
                Inner.Write(copy);
            }
            else Inner.Write(buffer);
            _written += buffer.Length;
        }
    }

    /// <summary>A file stream that fails like a full disk (ENOSPC) after <c>limit</c> bytes.</summary>
    private sealed class FullDiskStream(FileStream inner, long limit) : InterceptingStream(inner)
    {
        private long _written;
        protected override void WriteThrough(ReadOnlySpan<byte> buffer)
        {
            if (_written + buffer.Length > limit) throw new IOException("No space left on device : '" + Inner.Name + "'", 28);
            _written += buffer.Length;
            Inner.Write(buffer);
        }
    }
}
