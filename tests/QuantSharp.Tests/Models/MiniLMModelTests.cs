using System.Globalization;
using System.Text;
using System.Text.Json;
using QuantSharp.Models.Data;
using QuantSharp.Models.MiniLM;
using QuantSharp.Serialization;
using static TorchSharp.torch;

namespace QuantSharp.Tests.Models;

/// <summary>The float32 TorchSharp all-MiniLM-L6-v2 against ONNX Runtime, its tokenizer, and its safetensors round trip.</summary>
public sealed class MiniLMModelTests(MiniLMFixture fx) : IClassFixture<MiniLMFixture>
{
    [Fact]
    public void Float32_reproduces_onnx_runtime_embeddings()
    {
        Assert.Equal(226, fx.Sentences.Count);
        Assert.All(fx.OnnxRuntime, e => Assert.Equal(384, e.Length));
        var (mean, min) = EmbeddingMetrics.Cosine(fx.Float32, fx.OnnxRuntime);
        Assert.True(mean >= 0.99999, $"mean cosine {mean:F7} < 0.99999");
        Assert.True(min >= 0.9999, $"min cosine {min:F7} < 0.9999");
    }

    [Fact]
    public void Float32_reproduces_the_package_encoder_where_its_tokenizer_agrees()
    {
        // The package's own tokenizer does not split on non-ASCII punctuation (don’t -> don ##’ ##t; BERT: don ’ t);
        // on the sentences without any, its whole pipeline (tokenizer, ONNX Runtime, pooling) is the reference.
        var plain = Enumerable.Range(0, fx.Sentences.Count).Where(i => !fx.Sentences[i].Any(IsNonAsciiPunctuation)).ToList();
        Assert.Equal(142, plain.Count);
        var package = MiniLMPackage.EncodeWithOnnxRuntime(plain.Select(i => fx.Sentences[i]).ToList());
        var (mean, min) = EmbeddingMetrics.Cosine(plain.Select(i => fx.Float32[i]).ToList(), package);
        Assert.True(mean >= 0.99999, $"mean cosine {mean:F7} < 0.99999");
        Assert.True(min >= 0.9999, $"min cosine {min:F7} < 0.9999");
    }

    [Fact]
    public void Token_ids_equal_the_packages_tokenizer()
    {
        var sentences = fx.Sentences;
        var reference = MiniLMPackage.ReferenceTokenIds(sentences);
        // Identical on every sentence without non-ASCII punctuation (142 of 226) ...
        var plain = Enumerable.Range(0, sentences.Count).Where(i => !sentences[i].Any(IsNonAsciiPunctuation)).ToList();
        Assert.Equal(142, plain.Count);
        Assert.All(plain, i => Assert.True(reference[i].SequenceEqual(fx.Tokenizer.TokenIds(sentences[i])), $"sentence {i}: '{sentences[i]}'"));
        // ... and on all of them once such marks stand alone as BERT's tokenizer treats them (split off as punctuation),
        // which changes nothing for our tokenizer: the only difference is the package's.
        var spaced = sentences.Select(SpaceOutNonAsciiPunctuation).ToList();
        var referenceSpaced = MiniLMPackage.ReferenceTokenIds(spaced);
        for (int i = 0; i < sentences.Count; i++)
        {
            var ours = fx.Tokenizer.TokenIds(sentences[i]);
            Assert.True(ours.SequenceEqual(fx.Tokenizer.TokenIds(spaced[i])), $"sentence {i}: '{sentences[i]}'");
            Assert.True(ours.SequenceEqual(referenceSpaced[i]), $"sentence {i}: '{sentences[i]}'");
        }
    }

    [Fact]
    public void Quotes_are_split_into_calibration_and_evaluation()
    {
        Assert.Equal(326, InspirationalQuotes.All.Count);
        Assert.Equal(100, InspirationalQuotes.Calibration.Count);
        Assert.Equal("The only people who never fail are those who never try.", InspirationalQuotes.Calibration[0]);
        Assert.Equal("Ilka Chase", InspirationalQuotes.All[0].From);
        Assert.Equal(InspirationalQuotes.All[100].Text, fx.Sentences[0]);
    }

    [Fact]
    public void Exported_safetensors_has_hugging_face_names_and_reloads_with_identical_outputs()
    {
        string dir = Directory.CreateTempSubdirectory("minilm-").FullName;
        try
        {
            string path = Path.Combine(dir, "model.safetensors");
            fx.Model.SaveSafetensors(path);

            // Parsed by hand (8-byte length, JSON header), as any safetensors reader does.
            var bytes = File.ReadAllBytes(path);
            long headerLength = BitConverter.ToInt64(bytes, 0);
            using var header = JsonDocument.Parse(Encoding.UTF8.GetString(bytes, 8, (int)headerLength));
            var tensors = header.RootElement.EnumerateObject().Where(p => p.Name != "__metadata__").ToDictionary(p => p.Name, p => p.Value);
            Assert.Equal(101, tensors.Count); // 5 embedding tensors + 6 layers x 16
            Assert.All(tensors.Values, t => Assert.Equal("F32", t.GetProperty("dtype").GetString()));
            Assert.Equal([384, 384], Shape(tensors["encoder.layer.0.attention.self.query.weight"]));
            Assert.Equal([1536, 384], Shape(tensors["encoder.layer.5.intermediate.dense.weight"])); // [out, in]
            Assert.Equal([384, 1536], Shape(tensors["encoder.layer.5.output.dense.weight"]));
            Assert.Equal([30522, 384], Shape(tensors["embeddings.word_embeddings.weight"]));
            Assert.Equal([384], Shape(tensors["encoder.layer.3.output.LayerNorm.bias"]));
            long end = tensors.Values.Max(t => t.GetProperty("data_offsets")[1].GetInt64());
            Assert.Equal(bytes.Length, 8 + headerLength + end);

            using var reloaded = MiniLMModel.LoadSafetensors(path);
            var (ids, mask) = fx.Tokenizer.Tokenize(fx.Sentences.Take(16).ToList());
            using var _ = no_grad();
            using var a = fx.Model.Encode(ids, mask);
            using var b = reloaded.Encode(ids, mask);
            Assert.True(a.equal(b).all().item<bool>(), "reloaded embeddings differ");
            ids.Dispose();
            mask.Dispose();
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Loading_a_checkpoint_without_a_weight_names_it()
    {
        string dir = Directory.CreateTempSubdirectory("minilm-").FullName;
        try
        {
            string path = Path.Combine(dir, "partial.safetensors");
            using (var t = zeros(384)) SafetensorsWriter.Save(path, [("embeddings.LayerNorm.bias", t)]);
            var e = Assert.Throws<InvalidDataException>(() => MiniLMModel.LoadSafetensors(path));
            Assert.Contains("embeddings.word_embeddings.weight", e.Message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static long[] Shape(JsonElement t) => t.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()).ToArray();

    private static bool IsNonAsciiPunctuation(char c) => c > 127 && char.GetUnicodeCategory(c) is
        UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation or UnicodeCategory.OpenPunctuation or
        UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation or UnicodeCategory.FinalQuotePunctuation or
        UnicodeCategory.OtherPunctuation;

    private static string SpaceOutNonAsciiPunctuation(string s) =>
        string.Concat(s.Select(c => IsNonAsciiPunctuation(c) ? $" {c} " : c.ToString()));
}
