using System.CommandLine;
using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using QuantSharp.Pipeline;
using QuantSharp.Serialization;
using QuantSharp.Tests.Checkpoints;
using QuantSharp.Validation;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Hardening;

/// <summary>
/// Issue 8: seeded mutation fuzzing of whole runs, not just the header parser. Valid files, quantized files, configs
/// and sharded folders are mutated (bit flips, truncation, splices, random JSON edits, odd names and sizes) and fed to
/// the library's entry points (open, load, quantize, validate) and to the CLI's commands, in process. Every case must
/// end in a result or a documented error type (CLI: exit 0, 1 or 2 with an "error:" line and no stack trace), within a
/// time limit, leaving the input unchanged and nothing but the output in the case folder.
/// Cases: <c>QUANTSHARP_FUZZ_CASES</c> (default 2,000; more for a long run), seed <c>QUANTSHARP_FUZZ_SEED</c>.
/// </summary>
public sealed class EntryPointFuzzTests : IDisposable
{
    private static readonly TimeSpan CaseLimit = TimeSpan.FromSeconds(30);
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    /// <summary>The errors an entry point may end in: the library's exception family (docs/QUANTIZER.md) and, for a path that
    /// does not exist, the .NET I/O errors. Nothing else (no InvalidDataException, ArgumentException, IOException...).</summary>
    private static readonly Type[] Documented =
    [
        typeof(CheckpointQuantizationException), typeof(CheckpointValidationException), typeof(SafetensorsFormatException),
        typeof(QuantizedFileException), typeof(RecipeException), typeof(FileNotFoundException), typeof(DirectoryNotFoundException),
    ];

    [Fact]
    public void DocumentedErrorsAreTheExceptionFamilyAndMissingPaths()
    {
        foreach (var t in Documented)
            Assert.True(t.IsSubclassOf(typeof(QuantizationException)) || t == typeof(FileNotFoundException) || t == typeof(DirectoryNotFoundException), t.Name);
    }

    private static readonly string[] OddNames =
        ["", " ", "../escape", "/etc/passwd", "a/b", "__metadata__", "w.weight.scale", "é.weight", "\u00e9\u0301", "x.weight\n", new string('n', 5000), "*", "[", "model.safetensors"];

    private static readonly string[] OddJson =
        ["null", "true", "-1", "0", "1e400", "-1e400", "1.5", "9223372036854775808", "\"\"", "\"int3\"", "\"group:0\"", "\"group:-8\"", "\"per-channel:7\"",
         "[]", "{}", "[1,2]", "\"*\"", "\"[\"", "{\"pattern\": 1}", "[{\"pattern\": \"*\", \"qtype\": \"float16\", \"granularity\": \"group:32\"}]"];

    private sealed record Seed(string Kind, byte[] Bytes);

    [Fact]
    public async Task MutatedInputsEndInAResultOrADocumentedError()
    {
        int cases = int.TryParse(Environment.GetEnvironmentVariable("QUANTSHARP_FUZZ_CASES"), out int n) ? n : 2000;
        int seed = int.TryParse(Environment.GetEnvironmentVariable("QUANTSHARP_FUZZ_SEED"), out int s) ? s : 8;
        var seeds = MakeSeeds();
        var random = new Random(seed);
        var outcomes = new Dictionary<string, int>();
        var findings = new List<string>();
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < cases; i++)
        {
            string caseDir = Path.Combine(_dir.Path, $"case{i}");
            Directory.CreateDirectory(caseDir);
            string description = $"case {i} (seed {seed})";
            try
            {
                int caseSeed = random.Next();
                string outcome = await Task.Run(() => RunCase(caseSeed, caseDir, seeds)).WaitAsync(CaseLimit);
                outcomes[outcome] = outcomes.GetValueOrDefault(outcome) + 1;
            }
            catch (TimeoutException)
            {
                findings.Add($"{description}: no result within {CaseLimit.TotalSeconds} s (hang)");
            }
            catch (Xunit.Sdk.XunitException x)
            {
                findings.Add($"{description}: {x.Message}");
            }
            finally
            {
                try { Directory.Delete(caseDir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            }
            // Nothing outside the case folder either (beside it: only the seeds).
            var stray = Directory.GetFileSystemEntries(_dir.Path).Select(Path.GetFileName).Where(n => n != "seeds").ToList();
            if (stray.Count > 0)
            {
                findings.Add($"{description}: wrote {string.Join(", ", stray)} beside the case folder");
                foreach (var e in stray) { try { if (Directory.Exists(Path.Combine(_dir.Path, e!))) Directory.Delete(Path.Combine(_dir.Path, e!), true); else File.Delete(Path.Combine(_dir.Path, e!)); } catch (IOException) { } }
            }
        }
        Assert.True(findings.Count == 0, $"{findings.Count} finding(s):\n" + string.Join("\n", findings.Take(30)));
        // The harness must reach the deep paths, not only the header parser.
        Assert.True(outcomes.Keys.Count(k => k.EndsWith(":ok", StringComparison.Ordinal) || k.EndsWith(":exit0", StringComparison.Ordinal)) >= 6,
            string.Join(", ", outcomes.Select(kv => $"{kv.Key}={kv.Value}")));
        Assert.Contains(outcomes.Keys, k => k.StartsWith("quantize:ok", StringComparison.Ordinal));
        Assert.Contains(outcomes.Keys, k => k.StartsWith("cli-quantize:exit0", StringComparison.Ordinal));
        Assert.Contains(outcomes.Keys, k => k.StartsWith("cli-observe:exit0", StringComparison.Ordinal));
        Console.WriteLine($"fuzz: {cases} cases in {sw.Elapsed.TotalSeconds:0.0} s: {string.Join(", ", outcomes.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key}={kv.Value}"))}");
    }

    private Dictionary<string, Seed[]> MakeSeeds()
    {
        string dir = Path.Combine(_dir.Path, "seeds");
        Directory.CreateDirectory(dir);
        var g = new torch.Generator(8);
        using var w = torch.randn([48, 64], generator: g);
        using var w2 = torch.randn([32, 48], generator: g).to(ScalarType.BFloat16);
        using var bias = torch.randn([48], generator: g);
        using var ids = torch.arange(8, dtype: ScalarType.Int64);
        string plain = Path.Combine(dir, "plain.safetensors");
        SafetensorsWriter.Save(plain, [("layer.weight", w), ("proj.weight", w2), ("layer.bias", bias), ("ids", ids)], new Dictionary<string, string> { ["format"] = "pt" });
        // Odd sizes: rank 3, an empty weight, a 1x1 weight, a scalar, a long bfloat16 row, float64.
        string odd = Path.Combine(dir, "odd.safetensors");
        using (var r3 = torch.randn([3, 5, 7], generator: g))
        using (var empty = torch.empty([0, 64]))
        using (var one = torch.ones([1, 1]))
        using (var scalar = torch.tensor(2.5f))
        using (var longRow = torch.randn([2, 3000], generator: g).to(ScalarType.BFloat16))
        using (var f64 = torch.randn([16, 24], generator: g).to(ScalarType.Float64))
            SafetensorsWriter.Save(odd, [("odd.weight", r3), ("empty.weight", empty), ("one.weight", one), ("scalar", scalar), ("long.weight", longRow), ("f64.weight", f64)]);
        string quantized = Path.Combine(dir, "q.safetensors");
        CheckpointQuantizer.Quantize(plain, quantized, new QuantizationRecipe { MinElements = 16 });
        string sharded = Path.Combine(dir, "sharded");
        Directory.CreateDirectory(sharded);
        ShardedCheckpoint.Save(sharded, [("layer.weight", w), ("proj.weight", w2), ("layer.bias", bias)], 8_000);
        var shards = Directory.GetFiles(sharded).Order(StringComparer.Ordinal).Select(f => new Seed(Path.GetFileName(f), File.ReadAllBytes(f))).ToArray();
        return new()
        {
            ["plain"] = [new("plain.safetensors", File.ReadAllBytes(plain)), new("odd.safetensors", File.ReadAllBytes(odd))],
            ["quantized"] = [new("q.safetensors", File.ReadAllBytes(quantized))],
            ["sharded"] = shards,
            ["config"] =
            [
                new("cfg.json", """{ "qtype": "int8", "granularity": "per-channel", "min_elements": 16 }"""u8.ToArray()),
                new("cfg.json", """{ "qtype": "int4", "granularity": "group:16", "exclude": ["ids"], "overrides": [ { "pattern": "proj.*", "qtype": "float16" } ], "sqnr_thresholds_db": { "int4": 5 } }"""u8.ToArray()),
                new("cfg.json", """{ "observer": "histogram", "granularity": "per-tensor", "on_failure": "warn", "include": ["*.weight"] }"""u8.ToArray()),
            ],
        };
    }

    /// <summary>One case: builds a mutated input in <paramref name="caseDir"/>, runs one entry point, checks the rules; returns "entry:outcome".</summary>
    private static string RunCase(int caseSeed, string caseDir, Dictionary<string, Seed[]> seeds)
    {
        var random = new Random(caseSeed);
        string input;
        string[] inputFiles;
        int shape = random.Next(4);
        if (shape == 0)
        {
            // A sharded folder: one file (a shard or the index) mutated, or an odd name in the index.
            input = Path.Combine(caseDir, "in");
            Directory.CreateDirectory(input);
            var files = seeds["sharded"];
            int target = random.Next(files.Length);
            for (int f = 0; f < files.Length; f++)
            {
                byte[] bytes = f == target ? (files[f].Kind.EndsWith(".json", StringComparison.Ordinal) ? MutateJson(files[f].Bytes, random) : MutateBinary(files[f].Bytes, random)) : files[f].Bytes;
                File.WriteAllBytes(Path.Combine(input, files[f].Kind), bytes);
            }
            inputFiles = Directory.GetFiles(input);
        }
        else
        {
            var pool = shape == 1 ? seeds["quantized"] : seeds["plain"];
            var seed = pool[random.Next(pool.Length)];
            input = Path.Combine(caseDir, "in.safetensors");
            File.WriteAllBytes(input, random.Next(5) == 0 ? MutateHeaderJson(seed.Bytes, random) : MutateBinary(seed.Bytes, random));
            inputFiles = [input];
        }
        string config = Path.Combine(caseDir, "cfg.json");
        var cfgs = seeds["config"];
        File.WriteAllBytes(config, MutateJson(cfgs[random.Next(cfgs.Length)].Bytes, random));
        var before = inputFiles.ToDictionary(f => f, File.ReadAllBytes);
        string output = Path.Combine(caseDir, Directory.Exists(input) ? "out" : "out.safetensors");

        string[] entries = Directory.Exists(input)
            ? ["quantize", "cli-quantize", "cli-inspect"]
            : ["open", "load", "quantize", "validate", "cli-quantize", "cli-inspect", "cli-validate", "cli-observe"];
        string entry = entries[random.Next(entries.Length)];
        // Half the cases cut tensors into small chunks (rows, and observer passes in the middle of rows).
        bool small = random.Next(2) == 0;
        CheckpointChunks.ChunkElementsForTests = small ? random.Next(1, 3000) : null;
        QuantSharp.Observers.FloatChunks.ChunkElementsForTests = small ? random.Next(1, 3000) : null;
        string outcome;
        try
        {
        outcome = entry switch
        {
            "open" => Library(() => { using var f = SafetensorsFile.Open(input); foreach (var t in f.Tensors) _ = f.ReadBytes(t.Name); }),
            "load" => Library(() => { using var q = QuantizedCheckpoint.Load(input); foreach (var name in q.Names) q.GetFloat(name).Dispose(); }),
            "quantize" => Library(() => CheckpointQuantizer.Quantize(input, output, new QuantizationRecipe { MinElements = 16 })),
            "validate" => Library(() => CheckpointValidator.Compare(input, input)),
            "cli-quantize" => Cli(random.Next(3) switch
            {
                0 => ["quantize", input, output, "--config", config],
                1 => ["quantize", input, output, "--min-elements", "16", "--exclude", OddNames[random.Next(OddNames.Length)]],
                2 => ["quantize", input, output, "--min-elements", "16", "--no-validate", "--json"],
                _ => ["quantize", input, output, "--include", "*.weight", "--qtype", Pick(random, "int8", "uint8", "int4", "float16"),
                      "--granularity", Pick(random, "per-tensor", "per-channel", "per-channel:1", "group:16", "group:7"),
                      "--observer", Pick(random, "minmax", "moving-average", "histogram", "percentile"), random.Next(4) == 0 ? "--strict" : "--json"],
            }),
            "cli-inspect" => Cli(["inspect", input, "--json"]),
            "cli-observe" => Cli(["observe", input, "--tensor", Pick(random, "layer.weight", "proj.weight", "odd.weight", "long.weight", "scalar", "ids", "f64.weight"),
                "--observer", Pick(random, "minmax", "moving-average", "histogram", "percentile"), "--dtype", Pick(random, "int8", "uint4"),
                "--scheme", Pick(random, "affine", "symmetric"), "--json"]),
            _ => Cli(["validate", input, input]),
        };
        }
        finally
        {
            CheckpointChunks.ChunkElementsForTests = null;
            QuantSharp.Observers.FloatChunks.ChunkElementsForTests = null;
        }

        foreach (var (file, bytes) in before)
            Assert.True(File.ReadAllBytes(file).AsSpan().SequenceEqual(bytes), $"{entry}: the input '{Path.GetFileName(file)}' was modified");
        var allowed = new HashSet<string>(inputFiles.Append(config).Append(output), StringComparer.Ordinal);
        foreach (string e in Directory.EnumerateFileSystemEntries(caseDir, "*", SearchOption.AllDirectories))
        {
            bool underAllowed = allowed.Contains(e) || e.StartsWith(output + Path.DirectorySeparatorChar, StringComparison.Ordinal)
                || (Directory.Exists(input) && e == input);
            Assert.True(underAllowed, $"{entry}: wrote '{Path.GetRelativePath(caseDir, e)}' outside the output path");
        }
        return $"{entry}:{outcome}";
    }

    private static string Pick(Random random, params string[] choices) => choices[random.Next(choices.Length)];

    private static string Library(Action run)
    {
        try
        {
            run();
            return "ok";
        }
        catch (Exception e) when (Documented.Contains(e.GetType()))
        {
            Assert.False(string.IsNullOrWhiteSpace(e.Message));
            Assert.DoesNotContain(" (Parameter '", e.Message);
            return e.GetType().Name;
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            Assert.Fail($"undocumented {e.GetType().Name}: {e.Message}\n{e.StackTrace}");
            return "";
        }
    }

    private static string Cli(string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code;
        try
        {
            code = QuantSharp.Cli.Program.BuildRoot().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error, EnableDefaultExceptionHandler = false });
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            Assert.Fail($"'{string.Join(' ', args.Select(a => a.Length > 60 ? a[..60] + "..." : a))}' threw {e.GetType().Name}: {e.Message}\n{e.StackTrace}");
            return "";
        }
        string err = error.ToString();
        Assert.True(code is 0 or 1 or 2, $"exit {code}: {err}");
        Assert.DoesNotContain("   at ", err);
        Assert.DoesNotContain(" (Parameter '", err);
        if (code == 2) Assert.Contains("error: ", err);
        return $"exit{code}";
    }

    private static byte[] MutateBinary(byte[] original, Random random)
    {
        var b = original.ToList();
        switch (random.Next(6))
        {
            case 0: // bit flips
                for (int k = random.Next(1, 9); k > 0 && b.Count > 0; k--)
                {
                    int at = random.Next(Math.Min(b.Count, random.Next(2) == 0 ? 4096 : b.Count));
                    b[at] ^= (byte)(1 << random.Next(8));
                }
                break;
            case 1: // truncation
            {
                int keep = random.Next(b.Count);
                b.RemoveRange(keep, b.Count - keep);
                break;
            }
            case 2: // splice: copy a run over another place
            {
                int from = random.Next(b.Count), to = random.Next(b.Count), len = Math.Min(random.Next(1, 256), Math.Min(b.Count - from, b.Count - to));
                var run = b.GetRange(from, len);
                for (int k = 0; k < len; k++) b[to + k] = run[k];
                break;
            }
            case 3: // random bytes appended or inserted
                b.InsertRange(random.Next(b.Count + 1), Enumerable.Range(0, random.Next(1, 64)).Select(_ => (byte)random.Next(256)));
                break;
            case 4: // the header length word
            {
                ulong n = BitConverter.ToUInt64(original, 0);
                ulong[] choices = [0, 1, n - 1, n + 8, 100_000_001, ulong.MaxValue, (ulong)original.Length];
                var word = BitConverter.GetBytes(choices[random.Next(choices.Length)]);
                for (int k = 0; k < 8; k++) b[k] = word[k];
                break;
            }
            default:
                return MutateHeaderJson(original, random);
        }
        return [.. b];
    }

    /// <summary>Edits the header JSON (keeping the file's framing valid), so that mutations reach past the parser.</summary>
    private static byte[] MutateHeaderJson(byte[] original, Random random)
    {
        long n = (long)BitConverter.ToUInt64(original, 0);
        if (n <= 0 || 8 + n > original.Length) return original;
        byte[] header = MutateJson(original.AsSpan(8, (int)n).ToArray(), random);
        int padded = (header.Length + 7) / 8 * 8;
        var result = new byte[8 + padded + (original.Length - 8 - n)];
        BitConverter.GetBytes((ulong)padded).CopyTo(result, 0);
        header.CopyTo(result, 8);
        result.AsSpan(8 + header.Length, padded - header.Length).Fill((byte)' ');
        original.AsSpan((int)(8 + n)).CopyTo(result.AsSpan(8 + padded));
        return result;
    }

    /// <summary>A random edit of a JSON document: a value replaced by an odd one, a key removed, renamed or duplicated, or raw text damage.</summary>
    private static byte[] MutateJson(byte[] original, Random random)
    {
        JsonNode? root;
        try { root = JsonNode.Parse(original); }
        catch (System.Text.Json.JsonException) { root = null; }
        int kind = random.Next(6);
        if (root is null || kind == 5)
        {
            string text = Encoding.UTF8.GetString(original);
            int at = random.Next(text.Length + 1);
            return Encoding.UTF8.GetBytes(random.Next(3) switch
            {
                0 => text[..at],
                1 => text.Insert(at, OddJson[random.Next(OddJson.Length)]),
                _ => text.Length > 2 ? text[..Math.Max(1, at - 1)] + "," + text[Math.Max(1, at - 1)..] : text,
            });
        }
        var objects = new List<JsonObject>();
        Collect(root, objects);
        var obj = objects[random.Next(objects.Count)];
        var keys = obj.Select(kv => kv.Key).ToList();
        string? key = keys.Count > 0 ? keys[random.Next(keys.Count)] : null;
        switch (kind)
        {
            case 0 when key is not null:
                obj[key] = JsonNode.Parse(OddJson[random.Next(OddJson.Length)]);
                break;
            case 1 when key is not null:
                obj.Remove(key);
                break;
            case 2 when key is not null:
                var value = obj[key]?.DeepClone();
                obj.Remove(key);
                obj[OddNames[random.Next(OddNames.Length)]] = value;
                break;
            case 3 when key is not null:
                // A duplicated key (not expressible through JsonObject): text surgery on the serialized form.
                string json = root.ToJsonString();
                string inner = obj.ToJsonString();
                string withDup = inner.Length > 2 ? inner[..^1] + $",\"{key}\":{obj[key]?.ToJsonString() ?? "null"}}}" : inner;
                return Encoding.UTF8.GetBytes(json.Replace(inner, withDup, StringComparison.Ordinal));
            default:
                obj[OddNames[random.Next(OddNames.Length)]] = JsonNode.Parse(OddJson[random.Next(OddJson.Length)]);
                break;
        }
        return Encoding.UTF8.GetBytes(root.ToJsonString());
    }

    private static void Collect(JsonNode? node, List<JsonObject> objects)
    {
        if (node is JsonObject o)
        {
            objects.Add(o);
            foreach (var kv in o) Collect(kv.Value, objects);
        }
        else if (node is JsonArray a)
        {
            foreach (var item in a) Collect(item, objects);
        }
    }
}
