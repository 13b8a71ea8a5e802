using System.Security.Cryptography;
using QuantSharp.Serialization;
using TorchSharp;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Checkpoints;

/// <summary>A temporary folder deleted on dispose.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir() => Directory.CreateDirectory(Path);
    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "qs-ckpt-" + Guid.NewGuid().ToString("N"));
    public string this[string name] => System.IO.Path.Combine(Path, name);
    public void Dispose() { try { Directory.Delete(Path, true); } catch (IOException) { } }
}

/// <summary>A small transformer-shaped checkpoint made in the test (seeded): embedding, attention q/k/v/o, MLP
/// gate/up/down, norms, a bias, an integer buffer, a final norm and the LM head.</summary>
internal static class SyntheticCheckpoint
{
    public const int Hidden = 128, Ffn = 256, Vocab = 256, Layers = 2;

    public static readonly string[] QuantizedByDefault = BuildDefaultQuantized();

    private static string[] BuildDefaultQuantized()
    {
        var list = new List<string> { "model.embed_tokens.weight" };
        for (int i = 0; i < Layers; i++)
        {
            foreach (var p in new[] { "q_proj", "k_proj", "v_proj", "o_proj" }) list.Add($"model.layers.{i}.self_attn.{p}.weight");
            foreach (var p in new[] { "gate_proj", "up_proj", "down_proj" }) list.Add($"model.layers.{i}.mlp.{p}.weight");
        }
        list.Add("lm_head.weight");
        return list.ToArray();
    }

    /// <summary>Name -> tensor (float32 values; <paramref name="dtype"/> applied to floating tensors).</summary>
    public static List<(string Name, Tensor Tensor)> Make(ScalarType dtype, int seed = 7)
    {
        var g = new torch.Generator((ulong)seed);
        var list = new List<(string, Tensor)>();
        Tensor W(long o, long i) => (torch.randn([o, i], generator: g) * (1.0 / Math.Sqrt(i))).to(dtype);
        Tensor N(long n) => (1 + 0.1 * torch.randn([n], generator: g)).to(dtype);
        list.Add(("model.embed_tokens.weight", W(Vocab, Hidden)));
        for (int i = 0; i < Layers; i++)
        {
            string p = $"model.layers.{i}.";
            list.Add((p + "input_layernorm.weight", N(Hidden)));
            list.Add((p + "self_attn.q_proj.weight", W(Hidden, Hidden)));
            list.Add((p + "self_attn.q_proj.bias", N(Hidden)));
            list.Add((p + "self_attn.k_proj.weight", W(Hidden, Hidden)));
            list.Add((p + "self_attn.v_proj.weight", W(Hidden, Hidden)));
            list.Add((p + "self_attn.o_proj.weight", W(Hidden, Hidden)));
            list.Add((p + "post_attention_layernorm.weight", N(Hidden)));
            list.Add((p + "mlp.gate_proj.weight", W(Ffn, Hidden)));
            list.Add((p + "mlp.up_proj.weight", W(Ffn, Hidden)));
            list.Add((p + "mlp.down_proj.weight", W(Hidden, Ffn)));
        }
        list.Add(("model.position_ids", torch.arange(64, dtype: ScalarType.Int64)));
        list.Add(("model.norm.weight", N(Hidden)));
        list.Add(("lm_head.weight", W(Vocab, Hidden)));
        return list;
    }

    /// <summary>Writes the checkpoint as one file with the reference writer of branch st.</summary>
    public static string WriteFile(string path, ScalarType dtype, int seed = 7)
    {
        var tensors = Make(dtype, seed);
        try { SafetensorsWriter.Save(path, tensors, new Dictionary<string, string> { ["format"] = "pt" }); }
        finally { foreach (var (_, t) in tensors) t.Dispose(); }
        return path;
    }

    /// <summary>Writes the checkpoint as shards (with an index) into <paramref name="folder"/>.</summary>
    public static string WriteSharded(string folder, ScalarType dtype, long maxShardBytes = 100_000, int seed = 7)
    {
        Directory.CreateDirectory(folder);
        var tensors = Make(dtype, seed);
        try { ShardedCheckpoint.Save(folder, tensors, maxShardBytes, new Dictionary<string, string> { ["format"] = "pt" }); }
        finally { foreach (var (_, t) in tensors) t.Dispose(); }
        File.WriteAllText(System.IO.Path.Combine(folder, "config.json"), "{\"model_type\": \"synthetic\"}");
        return folder;
    }

    /// <summary>SHA-256 of every file under a path (to prove the input is never modified).</summary>
    public static Dictionary<string, string> HashTree(string path)
    {
        var files = File.Exists(path) ? [path] : Directory.GetFiles(path, "*", SearchOption.AllDirectories);
        return files.ToDictionary(f => f, f => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))));
    }

    /// <summary>Raw bytes of a tensor.</summary>
    public static byte[] Bytes(Tensor t) => t.contiguous().bytes.ToArray();
}
