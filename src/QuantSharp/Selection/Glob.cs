using System.Text;
using System.Text.RegularExpressions;

namespace QuantSharp.Selection;

/// <summary>
/// A shell-style wildcard pattern over tensor or module names, with Python <c>fnmatch.fnmatchcase</c> rules
/// (as optimum-quanto's <c>include</c>/<c>exclude</c>): <c>*</c> matches any run of characters including
/// <c>.</c>, <c>?</c> one character, <c>[abc]</c>/<c>[a-z]</c> one character of a set, <c>[!abc]</c> one
/// character outside it. Matching is case-sensitive and covers the whole name.
/// </summary>
public sealed class Glob
{
    private readonly Regex _regex;

    /// <summary>Compiles a pattern.</summary>
    /// <param name="pattern">The pattern, e.g. <c>model.layers.*.mlp.*</c> or <c>lm_head.weight</c>.</param>
    /// <exception cref="ArgumentException">The pattern is empty or has an unclosed <c>[</c>.</exception>
    public Glob(string pattern)
    {
        ArgumentNullException.ThrowIfNull(pattern);
        if (pattern.Length == 0) throw new ArgumentException("A glob pattern cannot be empty.", nameof(pattern));
        Pattern = pattern;
        _regex = new Regex(ToRegex(pattern), RegexOptions.CultureInvariant | RegexOptions.Singleline);
    }

    /// <summary>The pattern text.</summary>
    public string Pattern { get; }

    /// <summary>True when the whole <paramref name="name"/> matches the pattern.</summary>
    public bool IsMatch(string name) => _regex.IsMatch(name);

    /// <summary>True when <paramref name="name"/> matches at least one of <paramref name="patterns"/>.</summary>
    public static bool MatchesAny(IEnumerable<Glob> patterns, string name) => patterns.Any(p => p.IsMatch(name));

    /// <summary>
    /// The include/exclude rule: selected when <paramref name="include"/> is empty or one of its patterns matches,
    /// and none of <paramref name="exclude"/> matches (exclude wins).
    /// </summary>
    public static bool IsSelected(string name, IReadOnlyCollection<Glob> include, IEnumerable<Glob> exclude)
        => (include.Count == 0 || MatchesAny(include, name)) && !MatchesAny(exclude, name);

    /// <inheritdoc/>
    public override string ToString() => Pattern;

    private static string ToRegex(string pattern)
    {
        var sb = new StringBuilder("^");
        for (int i = 0; i < pattern.Length; i++)
        {
            char c = pattern[i];
            switch (c)
            {
                case '*':
                    while (i + 1 < pattern.Length && pattern[i + 1] == '*') i++;
                    sb.Append(".*");
                    break;
                case '?':
                    sb.Append('.');
                    break;
                case '[':
                    int j = i + 1;
                    if (j < pattern.Length && pattern[j] == '!') j++;
                    if (j < pattern.Length && pattern[j] == ']') j++;
                    while (j < pattern.Length && pattern[j] != ']') j++;
                    if (j >= pattern.Length)
                        throw new ArgumentException($"Glob pattern '{pattern}' has an unclosed '[' at position {i}.", nameof(pattern));
                    string set = pattern[(i + 1)..j];
                    i = j;
                    var cls = new StringBuilder("[");
                    int k = 0;
                    if (set.StartsWith('!')) { cls.Append('^'); k = 1; }
                    for (; k < set.Length; k++)
                    {
                        char s = set[k];
                        if (s == '\\' || s == '[' || s == ']' || s == '^') cls.Append('\\');
                        cls.Append(s);
                    }
                    sb.Append(cls).Append(']');
                    break;
                default:
                    sb.Append(Regex.Escape(c.ToString()));
                    break;
            }
        }
        return sb.Append(@"\z").ToString();
    }
}
