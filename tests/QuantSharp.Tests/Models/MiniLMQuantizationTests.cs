using QuantSharp.Models.MiniLM;

namespace QuantSharp.Tests.Models;

/// <summary>Quantized all-MiniLM-L6-v2 keeps its embeddings: the bounds on the 226 bundled evaluation quotes.</summary>
public sealed class MiniLMQuantizationTests(MiniLMFixture fx) : IClassFixture<MiniLMFixture>
{
    [Fact]
    public void Int8_per_channel_weight_only_keeps_embeddings_and_neighbours()
    {
        var (mean, top10, result) = QuantizeAndCompare(QuantizationRecipe.Int8WeightOnly());
        // Every Linear (36) and Embedding (3) layer is quantized; only the LayerNorms stay float.
        Assert.Equal(39, result.Layers.Count);
        Assert.All(result.Skipped, s => Assert.Equal("LayerNorm", s.ModuleType));
        Assert.True(mean >= 0.999, $"mean cosine {mean:F6} < 0.999");
        Assert.True(top10 >= 0.95, $"top-10 agreement {top10:P1} < 95%");
        Assert.True(result.Report!.QuantizedBytes < 0.3 * result.Report.FloatBytes, $"{result.Report.QuantizedBytes} of {result.Report.FloatBytes} bytes");
    }

    [Fact]
    public void Float16_keeps_mean_cosine_above_0_9999()
    {
        var (mean, _, _) = QuantizeAndCompare(QuantizationRecipe.Float16());
        Assert.True(mean >= 0.9999, $"mean cosine {mean:F6} < 0.9999");
    }

    private (double Mean, double Top10, QuantizationResult<MiniLMModel> Result) QuantizeAndCompare(QuantizationRecipe config)
    {
        // The bounds under test are the embeddings'; the per-layer SQNR gates (e.g. token_type_embeddings, 2 rows: 29.3 dB) only warn.
        var result = Quantizer.Quantize(fx.Model, config, factory: () => new MiniLMModel(), onFailure: ValidationFailureMode.Warn);
        using var quantized = result.Model;
        var embeddings = quantized.Encode(fx.Tokenizer, fx.Sentences);
        var (mean, _) = EmbeddingMetrics.Cosine(embeddings, fx.Float32);
        return (mean, EmbeddingMetrics.TopKAgreement(fx.Float32, embeddings, 10), result);
    }
}
