using System.Buffers.Binary;
using System.Text;
using QuantSharp.Serialization;

namespace QuantSharp.Tests.Serialization;

/// <summary>
/// Bounded, seeded mutation fuzzing of the corpus files: byte flips, truncations, appended bytes, header edits.
/// Every case must end with a readable file or a <see cref="SafetensorsFormatException"/>: no other exception
/// type, no hang, no allocation driven by the header.
/// </summary>
public sealed class SafetensorsFuzzTests : IDisposable
{
    private readonly string _dir = SafetensorsTestUtil.NewTempDir();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly string[] s_numbers =
        ["0", "1", "-1", "16", "4.0", "1e3", "9223372036854775807", "9223372036854775808", "18446744073709551616", "1099511627776", "-0", "99999999999999999999999"];

    private static readonly string[] s_tokens =
        ["{", "}", "[", "]", "\"", ",", ":", " ", "\\", "\\u0000", "\\ud800", "null", "true", "\"F32\"", "\"BOOL\"", "\"C64\"", "\"__metadata__\"", "\0", "é", "[0,0]", "[]"];

    private static readonly string[] s_dtypes = Enum.GetNames<SafetensorsDType>().Append("F7").Append("f32").ToArray();

    [Fact]
    public void MutatedCorpusFilesEndInAValueOrAFormatException()
    {
        var files = Directory.GetFiles(Reference.CorpusDir, "*.safetensors").Order(StringComparer.Ordinal).ToArray();
        var seeds = files.Select(File.ReadAllBytes).ToArray();
        // Half of the cases start from a file the reference accepts, so that mutations also reach the later checks.
        var validSeeds = files.Where(f => !Path.GetFileName(f).StartsWith("bad_", StringComparison.Ordinal)).Select(File.ReadAllBytes).ToArray();
        var random = new Random(20261126);
        string path = Path.Combine(_dir, "case.safetensors");
        int accepted = 0, refused = 0;
        var rules = new HashSet<SafetensorsRule>();
        const int cases = 3000;
        for (int i = 0; i < cases; i++)
        {
            var original = random.Next(2) == 0 ? validSeeds[random.Next(validSeeds.Length)] : seeds[random.Next(seeds.Length)];
            int kind = random.Next(9);
            byte[] mutated = Mutate(original, kind, random);
            File.WriteAllBytes(path, mutated);
            long allocatedBefore = GC.GetAllocatedBytesForCurrentThread();
            try
            {
                using var f = SafetensorsFile.Open(path);
                Assert.True(GC.GetAllocatedBytesForCurrentThread() - allocatedBefore < (1 << 20) + 16L * mutated.Length,
                    $"case {i} (mutation {kind}) allocated too much");
                // Accepted: the tensors tile the data buffer exactly, and every read path works.
                Assert.Equal(mutated.Length - f.DataStart, f.Tensors.Sum(t => t.ByteLength));
                foreach (var t in f.Tensors)
                {
                    var bytes = f.ReadBytes(t.Name);
                    Assert.Equal(t.ByteLength, bytes.Length);
                    Assert.True(f.GetSpan(t.Name).SequenceEqual(bytes));
                    using (var s = f.OpenRead(t.Name))
                        Assert.Equal(t.ByteLength, s.Length);
                    if (t.DType.ToScalarType() is not null)
                    {
                        using var tensor = f.ReadTensor(t.Name);
                        Assert.Equal(t.Shape, tensor.shape);
                    }
                }
                accepted++;
            }
            catch (SafetensorsFormatException e)
            {
                Assert.True(GC.GetAllocatedBytesForCurrentThread() - allocatedBefore < (1 << 20) + 64L * mutated.Length,
                    $"case {i} (mutation {kind}) allocated too much before refusing");
                Assert.Equal(path, e.FilePath);
                Assert.Contains(e.Rule.ToString(), e.Message);
                rules.Add(e.Rule);
                refused++;
            }
            catch (Exception e) when (e is not Xunit.Sdk.XunitException)
            {
                Assert.Fail($"case {i} (mutation {kind}, {Convert.ToHexString(mutated)}): {e.GetType().Name}: {e.Message}");
            }
        }
        Assert.Equal(cases, accepted + refused);
        Assert.True(accepted > 100, $"only {accepted} mutated files accepted");
        Assert.True(rules.Count >= 12, $"only rules {string.Join(", ", rules)} seen");
    }

    /// <summary>Mutated sharded-checkpoint indexes: a checkpoint or an InvalidIndex refusal, nothing else.</summary>
    [Fact]
    public void MutatedIndexesEndInACheckpointOrAFormatException()
    {
        using (var a = TorchSharp.torch.ones(4))
        using (var b = TorchSharp.torch.zeros(3, dtype: TorchSharp.torch.ScalarType.Int8))
        using (var c = TorchSharp.torch.ones(2, dtype: TorchSharp.torch.ScalarType.Float64))
            ShardedCheckpoint.Save(_dir, [("a", a), ("b.weight", b), ("c", c)], maxShardBytes: 16);
        string indexPath = Path.Combine(_dir, ShardedCheckpoint.DefaultIndexFileName);
        byte[] index = File.ReadAllBytes(indexPath);
        var random = new Random(42);
        int opened = 0, refused = 0;
        for (int i = 0; i < 600; i++)
        {
            byte[] mutated = (i % 3) switch
            {
                0 => Flip(index, random),
                1 => index[..random.Next(index.Length + 1)],
                _ => Encoding.UTF8.GetBytes(Splice(Encoding.UTF8.GetString(index), random.Next(index.Length), random.Next(3), s_tokens[random.Next(s_tokens.Length)])),
            };
            File.WriteAllBytes(indexPath, mutated);
            try
            {
                using var ckpt = ShardedCheckpoint.Open(_dir);
                Assert.Equal(3, ckpt.Tensors.Count);
                opened++;
            }
            catch (SafetensorsFormatException e)
            {
                Assert.Equal(SafetensorsRule.InvalidIndex, e.Rule);
                refused++;
            }
            catch (Exception e) when (e is not Xunit.Sdk.XunitException)
            {
                Assert.Fail($"case {i} ({Encoding.UTF8.GetString(mutated)}): {e.GetType().Name}: {e.Message}");
            }
        }
        Assert.True(opened > 10 && refused > 100, $"{opened} opened, {refused} refused");
    }

    private static byte[] Flip(byte[] original, Random random)
    {
        var b = (byte[])original.Clone();
        b[random.Next(b.Length)] = (byte)random.Next(256);
        return b;
    }

    private static byte[] Mutate(byte[] original, int kind, Random random)
    {
        var b = (byte[])original.Clone();
        int headerEnd = b.Length >= 8 ? (int)Math.Clamp(BinaryPrimitives.ReadInt64LittleEndian(b) + 8, 8, b.Length) : b.Length;
        switch (kind)
        {
            case 0: // random bytes
                for (int k = random.Next(1, 5); k > 0 && b.Length > 0; k--) b[random.Next(b.Length)] = (byte)random.Next(256);
                return b;
            case 1: // one bit
                if (b.Length > 0) b[random.Next(b.Length)] ^= (byte)(1 << random.Next(8));
                return b;
            case 2: // truncation
                return b[..random.Next(b.Length + 1)];
            case 3: // appended bytes
                var extra = new byte[random.Next(1, 17)];
                random.NextBytes(extra);
                return [.. b, .. extra];
            case 4: // length field
            {
                if (b.Length < 8) return b;
                long n = BinaryPrimitives.ReadInt64LittleEndian(b);
                long[] choices = [n + random.Next(-9, 10), 0, 100_000_000, 100_000_001, long.MaxValue, -1, b.Length - 8, random.NextInt64()];
                BinaryPrimitives.WriteInt64LittleEndian(b, choices[random.Next(choices.Length)]);
                return b;
            }
            default: // header text edits, keeping the length field consistent
            {
                if (headerEnd <= 8) return b;
                string header = Encoding.UTF8.GetString(b, 8, headerEnd - 8);
                string edited = kind switch
                {
                    5 => ReplaceRandomMatch(header, @"-?\d+", s_numbers[random.Next(s_numbers.Length)], random),
                    6 => ReplaceRandomMatch(header, "\"(" + string.Join('|', s_dtypes) + ")\"", "\"" + s_dtypes[random.Next(s_dtypes.Length)] + "\"", random),
                    7 => Splice(header, random.Next(header.Length + 1), random.Next(3), s_tokens[random.Next(s_tokens.Length)]),
                    _ => Splice(header, random.Next(header.Length + 1), random.Next(1, 6), ""),
                };
                byte[] h = Encoding.UTF8.GetBytes(edited);
                var result = new byte[8 + h.Length + (b.Length - headerEnd)];
                BinaryPrimitives.WriteInt64LittleEndian(result, h.Length);
                h.CopyTo(result, 8);
                b.AsSpan(headerEnd).CopyTo(result.AsSpan(8 + h.Length));
                return result;
            }
        }
    }

    private static string ReplaceRandomMatch(string text, string pattern, string replacement, Random random)
    {
        var matches = System.Text.RegularExpressions.Regex.Matches(text, pattern);
        if (matches.Count == 0) return text;
        var m = matches[random.Next(matches.Count)];
        return text[..m.Index] + replacement + text[(m.Index + m.Length)..];
    }

    private static string Splice(string text, int at, int remove, string insert)
    {
        remove = Math.Min(remove, text.Length - at);
        return text[..at] + insert + text[(at + remove)..];
    }
}
