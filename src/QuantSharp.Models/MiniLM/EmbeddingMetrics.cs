namespace QuantSharp.Models.MiniLM;

/// <summary>How close two sets of sentence embeddings are (row i of both is sentence i).</summary>
public static class EmbeddingMetrics
{
    /// <summary>Mean and minimum cosine similarity of row i of <paramref name="a"/> with row i of <paramref name="b"/>.</summary>
    public static (double Mean, double Min) Cosine(IReadOnlyList<float[]> a, IReadOnlyList<float[]> b)
    {
        CheckPair(a, b);
        double sum = 0, min = double.PositiveInfinity;
        for (int i = 0; i < a.Count; i++)
        {
            double c = CosineOf(a[i], b[i]);
            sum += c;
            min = Math.Min(min, c);
        }
        return (sum / a.Count, min);
    }

    /// <summary>
    /// Top-k neighbour agreement: for each sentence, the share of its <paramref name="k"/> nearest other sentences
    /// (by cosine similarity) under <paramref name="reference"/> that are also among its k nearest under
    /// <paramref name="candidate"/>, averaged over the sentences: a fraction in [0, 1].
    /// </summary>
    public static double TopKAgreement(IReadOnlyList<float[]> reference, IReadOnlyList<float[]> candidate, int k = 10)
    {
        CheckPair(reference, candidate);
        if (k < 1 || k >= reference.Count)
            throw new ArgumentOutOfRangeException(nameof(k), $"k must be between 1 and the number of sentences minus one ({reference.Count - 1}); got {k}.");
        double total = 0;
        for (int i = 0; i < reference.Count; i++)
        {
            var r = Nearest(reference, i, k);
            var c = Nearest(candidate, i, k);
            total += (double)r.Intersect(c).Count() / k;
        }
        return total / reference.Count;
    }

    private static int[] Nearest(IReadOnlyList<float[]> set, int i, int k) =>
        Enumerable.Range(0, set.Count).Where(j => j != i)
            .OrderByDescending(j => CosineOf(set[i], set[j])).ThenBy(j => j)
            .Take(k).ToArray();

    private static double CosineOf(float[] x, float[] y)
    {
        double dot = 0, nx = 0, ny = 0;
        for (int d = 0; d < x.Length; d++)
        {
            dot += (double)x[d] * y[d];
            nx += (double)x[d] * x[d];
            ny += (double)y[d] * y[d];
        }
        return dot / Math.Sqrt(nx * ny);
    }

    private static void CheckPair(IReadOnlyList<float[]> a, IReadOnlyList<float[]> b)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        if (a.Count == 0 || a.Count != b.Count)
            throw new ArgumentException($"Both sets need the same, non-zero number of embeddings; got {a.Count} and {b.Count}.");
        for (int i = 0; i < a.Count; i++)
        {
            if (a[i].Length != b[i].Length)
                throw new ArgumentException($"Embedding {i} has {a[i].Length} dimensions in one set and {b[i].Length} in the other.");
        }
    }
}
