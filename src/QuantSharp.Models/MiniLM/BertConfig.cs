namespace QuantSharp.Models.MiniLM;

/// <summary>Sizes of a BERT encoder (Hugging Face <c>BertConfig</c> names). <see cref="MiniLML6"/> is all-MiniLM-L6-v2.</summary>
/// <param name="VocabSize">Rows of the word embedding table.</param>
/// <param name="HiddenSize">Width of the hidden states and of the sentence embedding.</param>
/// <param name="Layers">Encoder layers.</param>
/// <param name="Heads">Attention heads per layer (must divide <paramref name="HiddenSize"/>).</param>
/// <param name="IntermediateSize">Width of the feed-forward layer.</param>
/// <param name="MaxPositions">Rows of the position embedding table (longest input in tokens).</param>
/// <param name="TypeVocabSize">Rows of the token type embedding table.</param>
/// <param name="LayerNormEps">Epsilon of every LayerNorm.</param>
public sealed record BertConfig(
    int VocabSize, int HiddenSize, int Layers, int Heads, int IntermediateSize, int MaxPositions, int TypeVocabSize, double LayerNormEps)
{
    /// <summary>all-MiniLM-L6-v2: 30,522 tokens, hidden 384, 6 layers, 12 heads, feed-forward 1,536, 512 positions.</summary>
    public static BertConfig MiniLML6 { get; } = new(30522, 384, 6, 12, 1536, 512, 2, 1e-12);

    /// <summary>Width of one attention head.</summary>
    public int HeadSize => HiddenSize / Heads;
}
