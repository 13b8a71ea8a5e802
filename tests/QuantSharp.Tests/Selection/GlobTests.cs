using QuantSharp.Selection;

namespace QuantSharp.Tests.Selection;

// Expectations follow Python's fnmatch.fnmatchcase rules (the semantics optimum-quanto's include/exclude use),
// derived from its definition: '*' any run (also '.'), '?' one char, [seq], [!seq], whole-name, case-sensitive.
public class GlobTests
{
    [Theory]
    [InlineData("*.weight", "model.layers.0.mlp.up_proj.weight", true)]
    [InlineData("*.weight", "model.layers.0.mlp.up_proj.bias", false)]
    [InlineData("*.weight", "weight", false)]
    [InlineData("lm_head.weight", "lm_head.weight", true)]
    [InlineData("lm_head.weight", "lm_headXweight", false)]
    [InlineData("lm_head.weight", "model.lm_head.weight", false)]
    [InlineData("model.layers.*.mlp.*", "model.layers.11.mlp.down_proj.weight", true)]
    [InlineData("model.layers.?.mlp.*", "model.layers.11.mlp.down_proj.weight", false)]
    [InlineData("model.layers.?.mlp.*", "model.layers.1.mlp.down_proj.weight", true)]
    [InlineData("model.layers.[0-2].*", "model.layers.2.x", true)]
    [InlineData("model.layers.[0-2].*", "model.layers.3.x", false)]
    [InlineData("model.layers.[!0-2].*", "model.layers.3.x", true)]
    [InlineData("*norm*", "model.layers.0.input_layernorm.weight", true)]
    [InlineData("*NORM*", "model.layers.0.input_layernorm.weight", false)]
    [InlineData("a+b(c)", "a+b(c)", true)]
    [InlineData("a+b(c)", "aab(c)", false)]
    [InlineData("**", "anything.at.all", true)]
    [InlineData("x[]]y", "x]y", true)]
    // Set corner cases, each checked with CPython 3.11's fnmatch.fnmatchcase.
    [InlineData("[z-a]", "a", false)]
    [InlineData("[!z-a]", "q", true)]
    [InlineData("[a-c-e]", "-", true)]
    [InlineData("[a-c-e]", "d", false)]
    [InlineData("[a-c-e]", "e", true)]
    [InlineData("[z-a-c]", "-", true)]
    [InlineData("[z-a-c]", "c", true)]
    [InlineData("[z-a-c]", "b", false)]
    [InlineData("[!-a]", "-", false)]
    [InlineData("[!-a]", "b", true)]
    [InlineData("[-a]", "-", true)]
    [InlineData("[a-]", "-", true)]
    [InlineData("[!]]", "]", false)]
    [InlineData("[!]]", "x", true)]
    [InlineData("[]-a]", "b", false)]
    [InlineData("[]-a]", "]", true)]
    [InlineData("[\\]", "\\", true)]
    [InlineData("[a\\-z]", "\\", true)]
    [InlineData("[a\\-z]", "b", true)]
    [InlineData("[!z-ab]", "b", false)]
    [InlineData("[!z-ab]", "c", true)]
    [InlineData("a?c", "a\U0001F600c", true)]
    [InlineData("*\n", "x\n", true)]
    [InlineData("x*", "x\ny", true)]
    [InlineData("[^a]", "^", true)]
    [InlineData("[^a]", "b", false)]
    [InlineData("[a&&b]", "&", true)]
    [InlineData("[[]", "[", true)]
    [InlineData("[a-b-c]", "-", true)]
    [InlineData("[a-b-c]", "c", true)]
    [InlineData("[--0]", "/", true)]
    public void MatchesLikeFnmatch(string pattern, string name, bool expected)
        => Assert.Equal(expected, new Glob(pattern).IsMatch(name));

    // Regression (issue 8): a regex translation backtracked exponentially; a 3,000-character name did not finish in
    // 120 s and a 120 KB name took 19 s. Matching is now bounded by name length x pattern length.
    [Theory]
    [InlineData("*a*a*a*b", 3_000)]
    [InlineData("*a*a*a*b", 120_000)]
    [InlineData("*a*a*a*a*a*a*a*a*a*a*b", 120_000)]
    [InlineData("*?*?*?*?*?*b*", 120_000)]
    public async Task AdversarialPatternsOnLongNamesFinish(string pattern, int length)
    {
        string name = new('a', length);
        var glob = new Glob(pattern);
        // A hang guard, not a speed target: the regex translation took minutes here.
        var result = await Task.Run(() => (glob.IsMatch(name), glob.IsMatch(name + "b"), glob.IsMatch(name + "ab")))
            .WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal((false, true, true), result); // no 'b' / ends in "b" / ends in "ab"
    }

    [Fact]
    public void AgreesWithABacktrackingReferenceOnSmallInputs()
    {
        string[] pieces = ["a", "b", ".", "*", "?", "[ab]", "[!a]", "[a-b]"];
        var random = new Random(8);
        int compared = 0;
        for (int c = 0; c < 20_000; c++)
        {
            string pattern = string.Concat(Enumerable.Range(0, random.Next(1, 7)).Select(_ => pieces[random.Next(pieces.Length)]));
            string name = new(Enumerable.Range(0, random.Next(0, 9)).Select(_ => "ab."[random.Next(3)]).ToArray());
            Assert.True(Reference(pattern, 0, name, 0) == new Glob(pattern).IsMatch(name), $"'{pattern}' on '{name}'");
            compared++;
        }
        Assert.Equal(20_000, compared);
    }

    // fnmatch by definition, trying every split at each '*' (exponential; small inputs only).
    private static bool Reference(string p, int i, string n, int j)
    {
        if (i == p.Length) return j == n.Length;
        if (p[i] == '*') return Enumerable.Range(j, n.Length - j + 1).Any(k => Reference(p, i + 1, n, k));
        if (j == n.Length) return false;
        if (p[i] == '[')
        {
            int close = p.IndexOf(']', i + 2);
            string set = p[(i + 1)..close];
            bool negated = set.StartsWith('!');
            if (negated) set = set[1..];
            bool inSet = set.Length == 3 && set[1] == '-' ? set[0] <= n[j] && n[j] <= set[2] : set.Contains(n[j]);
            return inSet != negated && Reference(p, close + 1, n, j + 1);
        }
        return (p[i] == '?' || p[i] == n[j]) && Reference(p, i + 1, n, j + 1);
    }

    [Fact]
    public void ExcludeWinsOverInclude()
    {
        var include = new[] { new Glob("*.weight") };
        var exclude = new[] { new Glob("lm_head.*") };
        Assert.True(Glob.IsSelected("a.weight", include, exclude));
        Assert.False(Glob.IsSelected("lm_head.weight", include, exclude));
        Assert.True(Glob.IsSelected("anything", [], []));
        Assert.False(Glob.IsSelected("anything", [], exclude.Append(new Glob("any*")).ToArray()));
    }

    [Fact]
    public void BadPatternsAreRefusedWithTheirPosition()
    {
        var ex = Assert.Throws<ArgumentException>(() => new Glob("layers.[0-2"));
        Assert.Contains("unclosed '['", ex.Message);
        Assert.Throws<ArgumentException>(() => new Glob(""));
    }
}
