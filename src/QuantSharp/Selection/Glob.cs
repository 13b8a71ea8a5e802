namespace QuantSharp.Selection;

/// <summary>
/// A shell-style wildcard pattern over tensor or module names, with Python <c>fnmatch.fnmatchcase</c> rules
/// (as optimum-quanto's <c>include</c>/<c>exclude</c>): <c>*</c> matches any run of characters including
/// <c>.</c>, <c>?</c> one character, <c>[abc]</c>/<c>[a-z]</c> one character of a set, <c>[!abc]</c> one
/// character outside it. Matching is case-sensitive, covers the whole name and counts characters as Unicode
/// code points (as Python does).
/// </summary>
/// <remarks>
/// Matching takes at most (name length × pattern length) steps, never more: every token but <c>*</c> consumes
/// exactly one character, so on a mismatch only the most recent <c>*</c> needs to take one more character
/// (the classic wildcard algorithm). A regular-expression translation can backtrack exponentially on
/// patterns such as <c>*a*a*a*b</c>.
/// </remarks>
internal sealed class Glob
{
    private readonly Token[] _tokens;

    /// <summary>Compiles a pattern.</summary>
    /// <param name="pattern">The pattern, e.g. <c>model.layers.*.mlp.*</c> or <c>lm_head.weight</c>.</param>
    /// <exception cref="ArgumentException">The pattern is empty or has an unclosed <c>[</c>.</exception>
    public Glob(string pattern) : this(pattern, characterSets: true) { }

    private Glob(string pattern, bool characterSets)
    {
        ArgumentNullException.ThrowIfNull(pattern);
        if (pattern.Length == 0) throw new ArgumentException("A glob pattern cannot be empty.", nameof(pattern));
        Pattern = pattern;
        _tokens = Parse(pattern, characterSets);
    }

    /// <summary>The pattern text.</summary>
    public string Pattern { get; }

    /// <summary>True when the whole <paramref name="name"/> matches the pattern.</summary>
    public bool IsMatch(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        int t = 0, n = 0, starToken = -1, starName = 0;
        while (n < name.Length)
        {
            if (t < _tokens.Length && _tokens[t].Kind == TokenKind.Star)
            {
                starToken = t++;
                starName = n;
                continue;
            }
            int c = CodePointAt(name, n, out int width);
            if (t < _tokens.Length && _tokens[t].Matches(c))
            {
                t++;
                n += width;
            }
            else if (starToken >= 0)
            {
                // Let the last '*' take one more character and retry the tokens after it.
                t = starToken + 1;
                CodePointAt(name, starName, out int starWidth);
                starName += starWidth;
                n = starName;
            }
            else return false;
        }
        while (t < _tokens.Length && _tokens[t].Kind == TokenKind.Star) t++;
        return t == _tokens.Length;
    }

    /// <summary>True when <paramref name="name"/> matches at least one of <paramref name="patterns"/>.</summary>
    public static bool MatchesAny(IEnumerable<Glob> patterns, string name) => patterns.Any(p => p.IsMatch(name));

    /// <summary>
    /// The include/exclude rule: selected when <paramref name="include"/> is empty or one of its patterns matches,
    /// and none of <paramref name="exclude"/> matches (exclude wins).
    /// </summary>
    public static bool IsSelected(string name, IReadOnlyCollection<Glob> include, IEnumerable<Glob> exclude)
        => (include.Count == 0 || MatchesAny(include, name)) && !MatchesAny(exclude, name);

    /// <summary>A pattern with only <c>*</c> and <c>?</c> as wildcards (<c>[</c> is an ordinary character), for module names.</summary>
    internal static Glob WildcardsOnly(string pattern) => new(pattern, characterSets: false);

    /// <inheritdoc/>
    public override string ToString() => Pattern;

    private enum TokenKind { Star, Any, Literal, Set }

    private readonly record struct Token(TokenKind Kind, int Char = 0, (int Low, int High)[]? Ranges = null, bool Negated = false)
    {
        public bool Matches(int c) => Kind switch
        {
            TokenKind.Any => true,
            TokenKind.Literal => c == Char,
            TokenKind.Set => Ranges!.Any(r => r.Low <= c && c <= r.High) != Negated,
            _ => false,
        };
    }

    private static Token[] Parse(string pattern, bool characterSets)
    {
        int[] p = CodePoints(pattern);
        var tokens = new List<Token>();
        for (int i = 0; i < p.Length; i++)
        {
            switch (p[i])
            {
                case '*':
                    if (tokens.Count == 0 || tokens[^1].Kind != TokenKind.Star) tokens.Add(new(TokenKind.Star));
                    break;
                case '?':
                    tokens.Add(new(TokenKind.Any));
                    break;
                case '[' when characterSets:
                    int j = i + 1;
                    if (j < p.Length && p[j] == '!') j++;
                    if (j < p.Length && p[j] == ']') j++;
                    while (j < p.Length && p[j] != ']') j++;
                    if (j >= p.Length)
                        throw new ArgumentException($"Glob pattern '{pattern}' has an unclosed '[' at position {i}.", nameof(pattern));
                    tokens.Add(ParseSet(p, i + 1, j));
                    i = j;
                    break;
                default:
                    tokens.Add(new(TokenKind.Literal, p[i]));
                    break;
            }
        }
        return [.. tokens];
    }

    /// <summary>
    /// The set between <c>[</c> and <c>]</c> (<paramref name="start"/> inclusive, <paramref name="end"/> exclusive),
    /// following <c>fnmatch.translate</c>: a leading <c>!</c> negates, a <c>-</c> between two characters is a range
    /// (never the first character after <c>[</c>/<c>[!</c>, nor the last), a reversed range such as <c>z-a</c> is empty.
    /// </summary>
    private static Token ParseSet(int[] p, int start, int end)
    {
        // Split at the range hyphens exactly as fnmatch.translate does, then drop reversed ranges.
        var chunks = new List<List<int>>();
        int i = start;
        int k = p[start] == '!' ? start + 2 : start + 1;
        while (true)
        {
            k = Array.IndexOf(p, (int)'-', Math.Min(k, end), end - Math.Min(k, end));
            if (k < 0) break;
            chunks.Add(p[i..k].ToList());
            i = k + 1;
            k += 3;
        }
        if (i < end) chunks.Add(p[i..end].ToList());
        else chunks[^1].Add('-');
        for (int c = chunks.Count - 1; c > 0; c--)
        {
            if (chunks[c - 1].Count == 0 || chunks[c].Count == 0 || chunks[c - 1][^1] <= chunks[c][0]) continue;
            chunks[c - 1].RemoveAt(chunks[c - 1].Count - 1);
            chunks[c - 1].AddRange(chunks[c].Skip(1));
            chunks.RemoveAt(c);
        }

        // The class reads as chunks joined by range hyphens; '!' first negates.
        var items = new List<(int Char, bool RangeDash)>();
        for (int c = 0; c < chunks.Count; c++)
        {
            if (c > 0) items.Add(('-', true));
            items.AddRange(chunks[c].Select(ch => (ch, false)));
        }
        bool negated = items.Count > 0 && items[0] == ((int)'!', false);
        if (negated) items.RemoveAt(0);
        var ranges = new List<(int, int)>();
        for (int a = 0; a < items.Count; a++)
        {
            int low = items[a].Char;
            if (a + 2 < items.Count && items[a + 1].RangeDash)
            {
                int high = items[a + 2].Char;
                if (low <= high) ranges.Add((low, high));
                a += 2;
            }
            else ranges.Add((low, low));
        }
        return new(TokenKind.Set, Ranges: [.. ranges], Negated: negated);
    }

    private static int[] CodePoints(string s)
    {
        var result = new List<int>(s.Length);
        for (int i = 0; i < s.Length;)
        {
            result.Add(CodePointAt(s, i, out int width));
            i += width;
        }
        return [.. result];
    }

    /// <summary>The code point at <paramref name="index"/> (a surrogate pair is one; a lone surrogate stands for itself).</summary>
    private static int CodePointAt(string s, int index, out int width)
    {
        if (char.IsHighSurrogate(s[index]) && index + 1 < s.Length && char.IsLowSurrogate(s[index + 1]))
        {
            width = 2;
            return char.ConvertToUtf32(s[index], s[index + 1]);
        }
        width = 1;
        return s[index];
    }
}
